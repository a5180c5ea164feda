//! Request bodies: at most [`MAX_BODY`] bytes of JSON, refused with the
//! field and the rule when they are not what the endpoint expects.

use axum::body::Body;

use super::error::ApiError;

/// Most a request body may hold (DESIGN §3: 413 above).
pub const MAX_BODY: usize = 16 * 1024;

/// Reads a JSON body of at most `MAX_BODY` bytes: 413 above, 400 when it is
/// not the expected JSON (the message names the field and the rule).
pub async fn read_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large(MAX_BODY))?;
    // serde_path_to_error names the field of a type error ("client_id:
    // invalid type ..."), which serde_json alone does not.
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::bad_request(format!("request body: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("request body: {path}: {}", e.inner()))
        }
    })?;
    // One JSON value and nothing after it but whitespace: bytes after the
    // object would otherwise be accepted unread, and a body that is two
    // requests run together must not pass as the first.
    de.end().map_err(|e| {
        ApiError::bad_request(format!(
            "request body: one JSON value and nothing after it ({e})"
        ))
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use serde_json::Value;

    use super::*;

    async fn read(text: &'static str) -> Result<Value, ApiError> {
        read_json::<Value>(Body::from(text)).await
    }

    #[tokio::test]
    async fn one_json_value_with_surrounding_whitespace_is_read() {
        let v = read(" {\"alg\": \"ES384\"}\n").await.unwrap();
        assert_eq!(v["alg"], "ES384");
    }

    #[tokio::test]
    async fn bytes_after_the_json_value_are_refused_with_the_rule() {
        for text in [
            "{} x",
            "{}{}",
            "{\"alg\": \"ES384\"} {\"alg\": \"RS384\"}",
            "{}\n\0",
        ] {
            let e = read(text).await.unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{text:?}");
            assert!(
                e.message.contains("one JSON value and nothing after it"),
                "{text:?}: {}",
                e.message
            );
        }
    }

    #[tokio::test]
    async fn a_type_error_names_its_field() {
        let e = read_json::<Req>(Body::from(r#"{"n": "x"}"#))
            .await
            .unwrap_err();
        assert!(
            e.message.starts_with("request body: n: invalid type"),
            "{}",
            e.message
        );
    }

    #[derive(Debug, serde::Deserialize)]
    struct Req {
        #[allow(dead_code)]
        n: u32,
    }
}
