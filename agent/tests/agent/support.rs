//! Shared helpers: the software TPM (a fresh swtpm per test, from `vouch-attestor`'s
//! `testing` feature) opened through the agent's own TPM code, and polling with a deadline.

use std::path::Path;
use std::time::{Duration, Instant};
use vouch_agent::tpm::Tpm;
pub use vouch_attestor::testing::{sha256, SoftwareTpm};

/// Opens `tpm` through the agent's quoter. (libtss2 logs the errors of the tests that
/// provoke them on stderr: the environment is not changed from a multi-threaded test.)
pub fn open(tpm: &SoftwareTpm) -> Tpm {
    Tpm::open(&tpm.tcti()).unwrap()
}

/// Waits (polling) until `cond` holds, at most `limit`.
pub async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One HTTP/1.1 request on the Unix socket at `path`; status and JSON body.
pub async fn call(
    path: &Path,
    method: &str,
    uri: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let (status, bytes) = call_bytes(path, method, uri, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// A `GET` on the Unix socket at `path`; status and body text.
pub async fn get_text(path: &Path, uri: &str) -> (u16, String) {
    let (status, bytes) = call_bytes(path, "GET", uri, None).await;
    (status, String::from_utf8(bytes).unwrap())
}

async fn call_bytes(
    path: &Path,
    method: &str,
    uri: &str,
    body: Option<serde_json::Value>,
) -> (u16, Vec<u8>) {
    let stream = tokio::net::UnixStream::connect(path).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        ))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 20)
        .await
        .unwrap();
    (status, bytes.to_vec())
}
