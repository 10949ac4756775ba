//! A request id for every API request: generated here (never taken from the client, whose
//! value could forge or confuse log lines), returned as `X-Request-Id`, and carried by
//! every log line written while the request is handled (a tracing span). The answer's line
//! is logged at `info` for errors and at `debug` otherwise (`RUST_LOG=vouch_ca::api=debug`
//! is an access log), so a busy fleet does not flood the log.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use ring::rand::SecureRandom;
use tracing::Instrument;

/// The response header that carries the id.
pub const HEADER: &str = "x-request-id";

/// 16 hex digits from the system's random source.
fn new_id() -> String {
    let mut bytes = [0u8; 8];
    // A failing system random source leaves the id zero: the request is served anyway.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    hex::encode(bytes)
}

/// The middleware: a span with the id, method and path around the rest of the stack.
pub(crate) async fn tag(request: Request, next: Next) -> Response {
    let id = new_id();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let started = std::time::Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if status >= 400 {
            tracing::info!(status, elapsed_ms, "answered");
        } else {
            tracing::debug!(status, elapsed_ms, "answered");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}
