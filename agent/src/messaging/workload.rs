//! The workload's local API: HTTP on a Unix socket (mode 0660) beside the sidecar. Only
//! processes that may open the socket can use it; each connection's peer uid and pid are
//! logged. `POST /v1/send` seals and delivers, `GET /v1/messages?wait=SECONDS` returns what
//! arrived (long-poll), `GET /v1/identity` and `GET /healthz` say who and how the sidecar is.

use super::deliver::problem;
use super::node::{MessagingError, Messenger};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};

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
    ArrivedMessage, MessageList, SendRequest, SendResponse, MAX_PAYLOAD_BYTES,
};
use vouch_proto::ProblemCode;

/// Longest long-poll, seconds.
pub const MAX_WAIT_SECS: u64 = 60;

async fn send(
    State(messenger): State<Arc<Messenger>>,
    body: Result<Json<SendRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(body) => body,
        Err(e) => return problem(ProblemCode::InvalidBody, e.body_text()),
    };
    if req.payload.len() > MAX_PAYLOAD_BYTES * 4 / 3 + 4 {
        return problem(ProblemCode::BodyTooLarge, "the payload is too large");
    }
    let Ok(payload) = B64.decode(&req.payload) else {
        return problem(ProblemCode::InvalidBody, "`payload` is not base64");
    };
    if req.data_type.is_empty() || req.data_type.len() > 128 {
        return problem(ProblemCode::InvalidBody, "a data type has 1 to 128 bytes");
    }
    match messenger.send(&req.to, &req.data_type, &payload).await {
        Ok(receipt) => Json(SendResponse {
            message_id: receipt.message_id,
        })
        .into_response(),
        Err(MessagingError::Delivery(super::deliver::DeliveryError::Refused {
            detail, ..
        })) => problem(ProblemCode::MessageRefused, detail),
        Err(e @ MessagingError::Directory(_)) => {
            problem(ProblemCode::PeerUnreachable, e.to_string())
        }
        Err(e) => problem(ProblemCode::PeerUnreachable, e.to_string()),
    }
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
        .map(|d| ArrivedMessage {
            from: d.sender.device_id,
            from_spiffe_id: d.sender.spiffe_id,
            data_type: d.data_type,
            payload: B64.encode(d.payload),
            sent_at: d.sent_at,
            message_id: d.message_id,
        })
        .collect();
    Json(MessageList { messages }).into_response()
}

async fn identity(State(messenger): State<Arc<Messenger>>) -> Response {
    Json(serde_json::json!({"spiffe_id": messenger.spiffe_id()})).into_response()
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

/// Serves the workload API on `listener` (see [`bind`]) until the process ends.
pub async fn serve(listener: UnixListener, messenger: Arc<Messenger>) {
    let router = Router::new()
        .route("/v1/send", post(send))
        .route("/v1/messages", get(messages))
        .route("/v1/identity", get(identity))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_PAYLOAD_BYTES * 2))
        .with_state(messenger);
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
        let router = router.clone();
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
}
