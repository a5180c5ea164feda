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
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::bad_request(format!("request body: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("request body: {path}: {}", e.inner()))
        }
    })
}
