//! A small HTTP/1.1 client over the daemon's Unix socket, for the CLI.

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Why a socket request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the daemon at {path}: {source} (is `jwksd serve` running? --socket)"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("socket request failed: {0}")]
    Http(String),
    #[error("the daemon answered {status}: {code}: {message}")]
    Refused {
        status: StatusCode,
        code: String,
        message: String,
    },
}

/// Sends one request and returns the JSON answer of a 2xx response.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let body = fetch(socket, method, path, body).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ClientError::Http(format!("answer is not JSON ({e})")))
}

/// Sends one request and returns the body of a 2xx response as it came
/// (a picture, say); any other status is the API's JSON error.
pub async fn fetch(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Bytes, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "jwksd")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Http(format!("answer is not JSON ({e})")))?;
        return Err(ClientError::Refused {
            status,
            code: value["error"].as_str().unwrap_or("unknown").to_owned(),
            message: value["message"].as_str().unwrap_or("").to_owned(),
        });
    }
    Ok(body)
}
