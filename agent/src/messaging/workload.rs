//! The workload's local API: HTTP on a Unix socket (mode 0660) beside the sidecar. Only
//! processes that may open the socket can use it; each connection's peer uid and pid are
//! logged. `POST /v1/send` seals and delivers, `GET /v1/messages?wait=SECONDS` returns what
//! arrived (long-poll), `GET /v1/identity` and `GET /healthz` say who and how the sidecar is.

use super::deliver::problem;
use super::node::{MessagingError, Messenger};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};

use super::deliver::DeliveryError;
use super::node::Transport;
use super::receive::Delivered;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use vouch_proto::workload::{
    ArrivedMessage, MessageList, OpenRequest, SealRequest, SealResponse, SendRequest, SendResponse,
    MAX_PAYLOAD_BYTES,
};
use vouch_proto::ProblemCode;

/// Longest long-poll, seconds.
pub const MAX_WAIT_SECS: u64 = 60;

/// The problem answer for a message that was not sent or sealed.
fn not_sent(e: MessagingError) -> Response {
    match e {
        MessagingError::PolicyDenied(verdict) => {
            problem(ProblemCode::PolicyDenied, verdict.describe())
        }
        MessagingError::RateLimited { retry_after, .. } => {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0);
            let mut response = problem(ProblemCode::RateLimited, e.to_string());
            if let Ok(value) = HeaderValue::from_str(&format!("{seconds:.0}")) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        MessagingError::Delivery(DeliveryError::Refused { code, detail, .. }) => problem(
            ProblemCode::MessageRefused,
            format!("the peer refused it ({code}): {detail}"),
        ),
        MessagingError::StaleTrust(why) => problem(
            ProblemCode::NotReady,
            format!("this sidecar refuses every message: {why}"),
        ),
        MessagingError::Spool(why) => problem(ProblemCode::DecisionLogUnavailable, why.to_string()),
        MessagingError::Directory(ref api) if api.code().is_some() => {
            problem(ProblemCode::PeerUnreachable, e.to_string())
        }
        e => problem(ProblemCode::PeerUnreachable, e.to_string()),
    }
}

/// A bad request: its problem code and description.
type Bad = (ProblemCode, String);

/// The answer: `ok`, or the problem `bad` describes.
fn answer(result: Result<Response, Bad>) -> Response {
    result.unwrap_or_else(|(code, detail)| problem(code, detail))
}

/// The JSON body, or why it is not one.
fn decoded<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, Bad> {
    body.map(|Json(b)| b)
        .map_err(|e| (ProblemCode::InvalidBody, e.body_text()))
}

fn bad(code: ProblemCode, detail: &str) -> Bad {
    (code, detail.to_owned())
}

/// Decodes base64 `text` of at most `max` bytes decoded; `what` names the field.
fn base64_field(text: &str, max: usize, what: &str) -> Result<Vec<u8>, Bad> {
    if text.len() > max.div_ceil(3) * 4 {
        return Err((ProblemCode::BodyTooLarge, format!("`{what}` is too large")));
    }
    B64.decode(text)
        .map_err(|_| (ProblemCode::InvalidBody, format!("`{what}` is not base64")))
}

/// Decodes a base64 payload within the size limit and checks a data type.
fn payload_and_type(payload: &str, data_type: &str) -> Result<Vec<u8>, Bad> {
    let bytes = base64_field(payload, MAX_PAYLOAD_BYTES, "payload")?;
    if data_type.is_empty() || data_type.len() > 128 {
        return Err(bad(
            ProblemCode::InvalidBody,
            "a data type has 1 to 128 bytes",
        ));
    }
    Ok(bytes)
}

/// Checks a protocol name a workload gives.
fn protocol_name(protocol: &str) -> Result<(), Bad> {
    let ok = (1..=32).contains(&protocol.len())
        && protocol
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(bad(
            ProblemCode::InvalidBody,
            "a protocol is 1 to 32 lowercase letters, digits or `-`",
        ))
    }
}

async fn send(
    State(messenger): State<Arc<Messenger>>,
    body: Result<Json<SendRequest>, JsonRejection>,
) -> Response {
    answer(
        async {
            let req = decoded(body)?;
            let payload = payload_and_type(&req.payload, &req.data_type)?;
            if req
                .protocol
                .as_deref()
                .is_some_and(|p| !matches!(p, "https" | "mqtt"))
            {
                return Err(bad(
                    ProblemCode::InvalidBody,
                    "`protocol` is `https` or `mqtt`",
                ));
            }
            Ok(
                match messenger
                    .send(&req.to, &req.data_type, &payload, req.protocol.as_deref())
                    .await
                {
                    Ok(sent) => Json(SendResponse {
                        message_id: sent.message_id,
                        via: sent.via.to_owned(),
                        receipt: sent.receipt.map(|r| B64.encode(r)),
                        policies: sent.policies,
                        policy_version: Some(sent.policy_version),
                    })
                    .into_response(),
                    Err(e) => not_sent(e),
                },
            )
        }
        .await,
    )
}

async fn seal(
    State(messenger): State<Arc<Messenger>>,
    body: Result<Json<SealRequest>, JsonRejection>,
) -> Response {
    answer(
        async {
            let req = decoded(body)?;
            let payload = payload_and_type(&req.payload, &req.data_type)?;
            protocol_name(&req.protocol)?;
            Ok(
                match messenger
                    .seal(&req.to, &req.data_type, &payload, &req.protocol)
                    .await
                {
                    Ok((envelope, message_id, verdict)) => Json(SealResponse {
                        envelope: B64.encode(envelope),
                        message_id,
                        policies: verdict.policies,
                        policy_version: Some(verdict.version),
                    })
                    .into_response(),
                    Err(e) => not_sent(e),
                },
            )
        }
        .await,
    )
}

async fn open(
    State(messenger): State<Arc<Messenger>>,
    body: Result<Json<OpenRequest>, JsonRejection>,
) -> Response {
    answer(
        async {
            let req = decoded(body)?;
            protocol_name(&req.protocol)?;
            let envelope = base64_field(&req.envelope, MAX_PAYLOAD_BYTES * 2, "envelope")?;
            let transport = Transport::carried(&req.protocol);
            let opened = messenger.open(&envelope, &transport).await;
            messenger.count_arrival(&opened, &transport);
            let opened = opened.map_err(|(reason, detail)| {
                (ProblemCode::MessageRefused, format!("{reason}: {detail}"))
            })?;
            Ok(Json(arrived(opened.0)).into_response())
        }
        .await,
    )
}

fn arrived(d: Delivered) -> ArrivedMessage {
    crate::messaging::node::Waiting::from(d).message
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    wait: Option<u64>,
}

async fn messages(
    State(messenger): State<Arc<Messenger>>,
    query: Result<Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return problem(ProblemCode::InvalidQuery, "`wait` is a number of seconds");
    };
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let messages = messenger
        .take_messages(wait)
        .await
        .into_iter()
        .map(|w| w.message)
        .collect();
    Json(MessageList { messages }).into_response()
}

async fn identity(State(messenger): State<Arc<Messenger>>) -> Response {
    Json(serde_json::json!({
        "spiffe_id": messenger.spiffe_id(),
        "device_id": messenger.device_id(),
        "trust_domain": messenger.trust_domain(),
        "policy_version": messenger.policy_version(),
        "crl_number": messenger.crl_number(),
        "refusing": messenger.trust_current().err(),
    }))
    .into_response()
}

/// `ok` while this sidecar sends and takes messages; else `503 not_ready` and why (no CRL
/// yet, or too old: it refuses everything until a current one arrives).
async fn healthz(State(messenger): State<Arc<Messenger>>) -> Response {
    match messenger.trust_current() {
        Ok(()) => "ok".into_response(),
        Err(why) => problem(
            ProblemCode::NotReady,
            format!("refusing every message: {why}"),
        ),
    }
}

/// `GET /metrics`: the sidecar's counters and state, Prometheus text format.
async fn metrics(State(messenger): State<Arc<Messenger>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        messenger.metrics(),
    )
        .into_response()
}

/// Binds the workload socket at `path` (replacing a stale socket file), mode 0660.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// The header a request on the loopback port must carry: browsers cannot send it cross-site
/// without a preflight the API never answers, and a server tricked into fetching a URL
/// (SSRF) does not add it.
pub const LOOPBACK_HEADER: &str = "x-vouch-workload";

fn router(messenger: Arc<Messenger>) -> Router {
    Router::new()
        .route("/v1/send", post(send))
        .route("/v1/seal", post(seal))
        .route("/v1/open", post(open))
        .route("/v1/messages", get(messages))
        .route("/v1/identity", get(identity))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_PAYLOAD_BYTES * 3))
        .with_state(messenger)
}

fn serve_one<S>(stream: S, router: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        let service = TowerToHyperService::new(router);
        if let Err(e) = Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!(error = %e, "workload connection ended with an error");
        }
    });
}

/// Serves the workload API on `listener` (see [`bind`]) until the process ends.
pub async fn serve(listener: UnixListener, messenger: Arc<Messenger>) {
    let router = router(messenger);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "workload API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = stream.peer_cred().ok();
        tracing::debug!(uid = ?peer.map(|c| c.uid()), pid = ?peer.and_then(|c| c.pid()),
            "workload connected");
        serve_one(stream, router.clone());
    }
}

/// Refuses requests without [`LOOPBACK_HEADER`] (`1`) or with an `Origin` (a browser's).
async fn loopback_guard(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let marked = request
        .headers()
        .get(LOOPBACK_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    if !marked || request.headers().contains_key(header::ORIGIN) {
        return problem(
            ProblemCode::ForbiddenRequest,
            format!("the workload API on the loopback port needs the `{LOOPBACK_HEADER}: 1` header and no `Origin`"),
        );
    }
    next.run(request).await
}

/// Serves the workload API on a loopback TCP `listener` until the process ends; every
/// request needs [`LOOPBACK_HEADER`].
pub async fn serve_loopback(listener: tokio::net::TcpListener, messenger: Arc<Messenger>) {
    let router = router(messenger).layer(axum::middleware::from_fn(loopback_guard));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "workload API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !peer.ip().is_loopback() {
            continue;
        }
        // Answers leave at once, not after the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        serve_one(stream, router.clone());
    }
}
