//! The decision spool end to end: decisions two sidecars make while the server is down reach
//! the server's decision log after it returns, each exactly once, although the sending agent
//! is killed (`kill -9`) in the middle of its upload: after the server recorded the batch and
//! before the agent saw the answer.

use crate::server::*;
use crate::sidecar_support::{b64, free_port, listen_args, Sidecar};
use crate::support::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP relay to the server whose target can change (a restarted server listens on a new
/// port) and that can hold back the server's answers to uploads (recorded by the server, not
/// yet seen by the agent). An upload is told by its size: a connection that has carried more
/// than [`UPLOAD_BYTES`] to the server (TLS handshakes and the agent's other calls carry a
/// few KiB; the upload here carries about 20).
struct Relay {
    port: u16,
    target: Arc<Mutex<String>>,
    hold: Arc<AtomicBool>,
}

impl Relay {
    async fn to(server_base: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(Mutex::new(address(server_base)));
        let hold = Arc::new(AtomicBool::new(false));
        let (to, held) = (target.clone(), hold.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target = to.lock().unwrap().clone();
                let held = held.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return; // the server is down: the connection closes
                    };
                    let (mut in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, mut out_write) = outbound.into_split();
                    let carried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                    let counted = carried.clone();
                    let up = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match in_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            counted.fetch_add(n, Ordering::SeqCst);
                            if out_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = out_write.shutdown().await;
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match out_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            while held.load(Ordering::SeqCst)
                                && carried.load(Ordering::SeqCst) > UPLOAD_BYTES
                            {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if in_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Self { port, target, hold }
    }

    fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn retarget(&self, server_base: &str) {
        *self.target.lock().unwrap() = address(server_base);
    }

    fn hold_answers(&self, hold: bool) {
        self.hold.store(hold, Ordering::SeqCst);
    }
}

/// More than this many bytes to the server on one connection: an upload.
const UPLOAD_BYTES: usize = 12 * 1024;

fn address(base: &str) -> String {
    base.trim_start_matches("https://").to_owned()
}

/// Every sidecar decision in the server's decision log: (origin, caller, decision).
async fn sidecar_decisions(server: &RealServer) -> Vec<(String, String, String)> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = server
            .get(&format!("/v1/policy/decisions?limit=1000{cursor}"))
            .await;
        for d in page["decisions"].as_array().unwrap() {
            if d["origin"] != "server" {
                let text = |k: &str| d[k].as_str().unwrap().to_owned();
                all.push((text("origin"), text("caller"), text("decision")));
            }
        }
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return all,
        }
    }
}

fn count(log: &[(String, String, String)], origin: &str, device: &str, decision: &str) -> usize {
    let caller = format!("device:{device}");
    log.iter()
        .filter(|(o, c, d)| o == origin && *c == caller && d == decision)
        .count()
}

/// Waits until `cond` holds of the server's sidecar decisions.
async fn wait_for_log(
    server: &RealServer,
    what: &str,
    cond: impl Fn(&[(String, String, String)]) -> bool,
) {
    let start = std::time::Instant::now();
    loop {
        let log = sidecar_decisions(server).await;
        if cond(&log) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: the log has {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the spool's cursor has reached the end of its file (everything uploaded).
fn spool_drained(sidecar: &Sidecar) -> bool {
    let len =
        std::fs::metadata(sidecar.state.join("decisions.jsonl")).map_or(u64::MAX, |m| m.len());
    let cursor: Value = std::fs::read_to_string(sidecar.state.join("decisions.sent.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    cursor["offset"].as_u64() == Some(len)
}

async fn send(from: &Sidecar, to: &str, data_type: &str, text: &str) -> (u16, Value) {
    call(
        &from.socket(),
        "POST",
        "/v1/send",
        Some(json!({"to": to, "data_type": data_type, "payload": b64(text.as_bytes())})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_made_offline_reach_the_log_once_although_the_agent_is_killed_mid_upload() {
    let policies = policies();
    let mut server =
        RealServer::start(&["--policy-dir", &policies.path().display().to_string()]).await;
    let relay = Relay::to(&server.base).await;
    let port = free_port();
    let listen = listen_args(port);
    let token = server.token(json!({ "zone": "regional" })).await;
    let regional = Sidecar::launch_via(&relay.base(), &token, None, &listen)
        .ready()
        .await;
    let token = server.token(json!({ "zone": "edge" })).await;
    let gateway = Sidecar::launch_via(&relay.base(), &token, None, &[])
        .ready()
        .await;
    let (g, r) = (gateway.device_id(), regional.device_id());

    // While the server is up: one message, both ends' decisions uploaded.
    let (status, sent) = send(&gateway, &r, "aggregated_metrics", "online").await;
    assert_eq!(status, 200, "{sent}\n{}", gateway.process.log());
    wait_for_log(&server, "the first decisions", |log| {
        count(log, "sender", &g, "allow") == 1 && count(log, "receiver", &r, "allow") == 1
    })
    .await;

    // The server goes away. The sidecars go on from their caches, and decide: 40 messages
    // allowed at both ends, 10 refused by the gateway's own policy (default deny).
    server.stop().await;
    for n in 0..40 {
        let (status, sent) =
            send(&gateway, &r, "aggregated_metrics", &format!("offline {n}")).await;
        assert_eq!(status, 200, "{sent}\n{}", gateway.process.log());
    }
    for n in 0..10 {
        let (status, refused) = send(&gateway, &r, "telemetry", &format!("refused {n}")).await;
        assert_eq!(status, 403, "{refused}");
        assert_eq!(
            refused["code"],
            vouch_proto::ProblemCode::PolicyDenied.as_str()
        );
    }

    // The server returns, but its answers are held back: the gateway's upload is recorded
    // and the gateway never sees the answer, because it is killed now.
    relay.hold_answers(true);
    server.restart().await;
    relay.retarget(&server.base);
    // The held upload may have been read while the offline decisions were still being
    // spooled (an attempt made while the server was away reaches it through the relay once
    // it is back): it holds some of them at least.
    wait_for_log(&server, "the gateway's offline decisions", |log| {
        count(log, "sender", &g, "allow") > 1
    })
    .await;
    let mut gateway = gateway;
    gateway.process.kill();
    assert!(
        !spool_drained(&gateway),
        "the killed agent must not have seen its upload confirmed"
    );
    relay.hold_answers(false);

    // Started again, it uploads the same batch; the server records none of it twice.
    let gateway = gateway.restart(&[]).ready().await;
    wait_for(
        Duration::from_secs(30),
        "the gateway's spool drained",
        || spool_drained(&gateway),
    )
    .await;
    wait_for_log(&server, "the regional node's decisions", |log| {
        count(log, "receiver", &r, "allow") == 41
    })
    .await;
    wait_for(
        Duration::from_secs(30),
        "the regional node's spool drained",
        || spool_drained(&regional),
    )
    .await;
    let log = sidecar_decisions(&server).await;
    assert_eq!(count(&log, "sender", &g, "allow"), 41, "{log:?}");
    assert_eq!(count(&log, "sender", &g, "deny"), 10, "{log:?}");
    assert_eq!(count(&log, "receiver", &r, "allow"), 41, "{log:?}");
    assert_eq!(log.len(), 92, "nothing else, nothing twice: {log:?}");
    // Which of the killed agent's uploads reached the server before the kill depends on the
    // relay's timing, so the counts above are the check: every decision once, none twice.
    // That the server answers a batch it has as already recorded is
    // `ca/tests/api/policy/uploads.rs::a_retried_upload_is_recorded_once_with_where_each_decision_was_made`.
}
