//! The one place where errors become HTTP: RFC 9457 problem documents with a stable `code`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
pub use vouch_proto::Problem;
use vouch_proto::ProblemCode;

/// An error answered to a client: a stable code (which fixes the HTTP status) and a detail
/// for people.
#[derive(Debug)]
pub struct ApiError {
    /// Stable machine-readable code, e.g. `token_used`.
    pub code: ProblemCode,
    /// Human-readable detail.
    pub detail: String,
    /// Seconds after which the call may be tried again (`Retry-After`), if known.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A problem with `code` and `detail`.
    pub fn new(code: ProblemCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// The same problem, telling the client to retry after `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The HTTP status of the code.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// A generic 500. The cause is logged here and not sent to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ProblemCode::Internal, "internal error; see the server log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Problem {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            code: self.code.as_str().to_owned(),
            detail: self.detail,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            bytes,
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            return Self::new(
                ProblemCode::NotReady,
                "the database is unavailable; retry shortly",
            )
            .retry_after(1);
        }
        Self::internal(&e)
    }
}

/// A JSON body whose rejections are problem documents: malformed JSON is 400, a body that
/// does not fit the schema (unknown or missing fields, wrong types) is 422, a missing
/// content type is 415 and an oversized body is 413.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    let detail = bounded(&rejection.body_text(), 300);
    match rejection {
        JsonRejection::JsonDataError(_) => ApiError::new(ProblemCode::InvalidBody, detail),
        JsonRejection::JsonSyntaxError(_) => ApiError::new(ProblemCode::MalformedJson, detail),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ProblemCode::UnsupportedMediaType,
            "request body must be `application/json`",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            ProblemCode::BodyTooLarge,
            format!(
                "request body is larger than {} bytes",
                super::MAX_BODY_BYTES
            ),
        ),
        _ if came_from_a_slow_body(rejection) => ApiError::new(
            ProblemCode::RequestBodyTimeout,
            "the request body did not arrive in time",
        ),
        _ => ApiError::new(ProblemCode::BadRequest, detail),
    }
}

/// Whether reading the body failed because it missed the server's deadline.
fn came_from_a_slow_body(rejection: &JsonRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = cause {
        if error.is::<crate::server::BodyTooSlow>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Cuts `text` to at most `max` characters, so echoed input stays small.
pub fn bounded(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max).collect();
        cut.push('…');
        cut
    }
}
