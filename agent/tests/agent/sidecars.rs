//! Three real `vouch-agent` processes (a sensor, an edge gateway and a regional node) against
//! a real server with the example policies and a real MQTT broker (Debian's `mosquitto`):
//! the sensor's telemetry reaches the gateway through the broker, intact; the sensor's
//! message to the regional node is refused at the sender by policy; and the same message
//! sealed by hand and posted straight to the regional node is refused by the regional node's
//! own policy.

use crate::server::*;
use crate::sidecar_support::*;
use crate::support::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use vouch_agent::messaging::deliver::{self, DeliveryError};
use vouch_proto::ProblemCode;

mod trust_state;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_deliver_over_mqtt_and_refuse_what_policy_forbids_at_both_ends() {
    let policies = policies();
    let server = RealServer::start(&["--policy-dir", &policies.path().display().to_string()]).await;
    let broker = Mosquitto::start().await;
    let mqtt = format!("mqtt://127.0.0.1:{}", broker.port);
    let (gateway_port, regional_port) = (free_port(), free_port());
    let sensor = Sidecar::start(
        &server,
        "sensors",
        &[
            "--mqtt".into(),
            mqtt.clone(),
            "--advertise".into(),
            mqtt.clone(),
        ],
    )
    .await;
    let gateway = Sidecar::start(
        &server,
        "edge",
        &[
            "--mqtt".into(),
            mqtt.clone(),
            "--advertise".into(),
            mqtt.clone(),
            "--listen".into(),
            format!("127.0.0.1:{gateway_port}"),
            "--advertise".into(),
            format!("https://127.0.0.1:{gateway_port}"),
        ],
    )
    .await;
    let regional = Sidecar::start(
        &server,
        "regional",
        &[
            "--listen".into(),
            format!("127.0.0.1:{regional_port}"),
            "--advertise".into(),
            format!("https://127.0.0.1:{regional_port}"),
        ],
    )
    .await;

    // `vouch-agent status` asks the running sidecar.
    let out = agent(
        vec![
            "status".into(),
            "--json".into(),
            "--state-dir".into(),
            sensor.state.display().to_string(),
        ],
        None,
    )
    .await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["messaging"], "ok", "{status}");

    // 1. Sensor → gateway telemetry over MQTT: delivered intact.
    let payload = b64(b"temperature=21.5;humidity=40");
    let (status, sent) = call(
        &sensor.socket(),
        "POST",
        "/v1/send",
        Some(json!({"to": gateway.device_id(), "data_type": "telemetry",
                    "protocol": "mqtt", "payload": payload})),
    )
    .await;
    assert_eq!(status, 200, "{sent}\n{}", sensor.process.log());
    assert_eq!(sent["via"], "mqtt");
    assert_eq!(sent["policies"], json!(["sensor-to-gateway"]));
    let (status, list) = call(&gateway.socket(), "GET", "/v1/messages?wait=20", None).await;
    assert_eq!(status, 200);
    let messages = list["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{list}\n{}", gateway.process.log());
    assert_eq!(messages[0]["from"], sensor.device_id());
    assert_eq!(messages[0]["data_type"], "telemetry");
    assert_eq!(messages[0]["payload"], payload.as_str());
    assert_eq!(messages[0]["message_id"], sent["message_id"]);

    // 2. Sensor → regional: refused at the sender (no policy lets sensors reach regional).
    let (status, refused) = call(
        &sensor.socket(),
        "POST",
        "/v1/send",
        Some(json!({"to": regional.device_id(), "data_type": "telemetry", "payload": payload})),
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        refused["code"],
        vouch_proto::ProblemCode::PolicyDenied.as_str()
    );
    assert!(
        refused["detail"].as_str().unwrap().contains("default deny"),
        "{refused}"
    );

    // 3. The same message sealed by hand with the sensor's own keys and posted straight to
    //    the regional node over mutual TLS: the regional node's policy refuses it.
    let forger = HandSealer::new(&sensor, &server, &regional.device_id()).await;
    let endpoint = format!("https://127.0.0.1:{regional_port}");
    let (envelope, tls) = forger.seal("telemetry", b"forged past the sender");
    match deliver::deliver(&endpoint, envelope, tls).await {
        Err(DeliveryError::Refused {
            status,
            code,
            detail,
            ..
        }) => {
            assert_eq!(status, 403);
            assert_eq!(code, vouch_proto::ProblemCode::MessageRefused.as_str());
            assert!(
                detail.starts_with(ProblemCode::PolicyDenied.as_str()),
                "{detail}"
            );
        }
        other => panic!("the regional node took a forged message: {other:?}"),
    }
    let (_, list) = call(&regional.socket(), "GET", "/v1/messages", None).await;
    assert_eq!(list["messages"], json!([]));
    let log = regional.process.log();
    assert!(
        log.contains("message refused") && log.contains(ProblemCode::PolicyDenied.as_str()),
        "{log}"
    );
}

/// Whether a process running as `uid`:`gid` (no supplementary groups) may connect to the
/// Unix socket at `path`.
fn may_connect_as(uid: u32, gid: u32, path: &Path) -> bool {
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\n";
    // The system's Python: a user's (pyenv, venv) may not be readable by the other user.
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let status = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            python,
            "-c",
            script,
        ])
        .arg(path)
        .status()
        .expect("setpriv (util-linux) and python3 run");
    match status.code() {
        Some(0) => true,
        Some(13) => false,
        other => panic!("the connection attempt failed otherwise: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_api_refuses_other_users_and_unmarked_loopback_requests() {
    let policies = policies();
    let server = RealServer::start(&["--policy-dir", &policies.path().display().to_string()]).await;
    // The socket in a directory anyone may enter, so that only its own mode (0660) decides.
    let open_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        open_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let socket = open_dir.path().join("workload.sock");
    let port = free_port();
    let sidecar = Sidecar::start_with_socket(
        &server,
        "edge",
        &socket,
        &["--workload-port".into(), port.to_string()],
    )
    .await;
    assert!(sidecar.socket().exists());

    // The socket: its owner and its group may connect, anyone else is refused by the kernel.
    // (Only root can run a process as another user; as anyone else this part cannot be shown.)
    if running_as_root() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&socket).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert!(
            !may_connect_as(65534, 65534, &socket),
            "another user connected"
        );
        assert!(
            may_connect_as(65534, meta.gid(), &socket),
            "a member of the socket's group could not connect"
        );
    } else {
        eprintln!("not root: the other-user part of this test is skipped");
    }

    // The loopback port: only requests with the marker header and no Origin.
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/identity");
    let plain = client.get(&url).send().await.unwrap();
    assert_eq!(plain.status(), 403);
    let problem: serde_json::Value = plain.json().await.unwrap();
    assert_eq!(
        problem["code"],
        vouch_proto::ProblemCode::ForbiddenRequest.as_str()
    );
    let marked = client
        .get(&url)
        .header("X-Vouch-Workload", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(marked.status(), 200);
    let from_a_page = client
        .get(&url)
        .header("X-Vouch-Workload", "1")
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(from_a_page.status(), 403);
    let hostile = client
        .post(format!("http://127.0.0.1:{port}/v1/send"))
        .header("X-Vouch-Workload", "1")
        .header("content-type", "application/json")
        .body("{\"to\": 1")
        .send()
        .await
        .unwrap();
    assert!(hostile.status().is_client_error());
}

/// Whether this test runs as root (uid 0), read from `/proc/self/status`.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        .unwrap_or(false)
}

/// Creates a fresh PostgreSQL database (the role `tests/postgres.sh` makes) with `psql`.
pub(crate) fn fresh_postgres_database() -> String {
    let admin = std::env::var("VOUCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://vouch:vouch@127.0.0.1:5432/postgres".into());
    let name = format!(
        "vouch_agent_test_{}",
        std::process::id() as u64 * 1000 + u64::from(free_port())
    );
    let status = Command::new("psql")
        .args([&admin, "-q", "-c", &format!("CREATE DATABASE {name}")])
        .status()
        .expect("psql runs (tests/postgres.sh sets PostgreSQL up)");
    assert!(status.success(), "cannot create a database at {admin}");
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_restarted_while_the_server_is_down_works_from_what_it_saved() {
    let policies = policies();
    let mut server =
        RealServer::start(&["--policy-dir", &policies.path().display().to_string()]).await;
    let port = free_port();
    let listen = listen_args(port);
    let regional = Sidecar::start(&server, "regional", &listen).await;
    let device = crate::messaging::enroll_in(&server, "edge").await;
    let forger = HandSealer::for_device(&device, &server, &regional.device_id()).await;
    let endpoint = format!("https://127.0.0.1:{port}");
    let (envelope, tls) = forger.seal("aggregated_metrics", b"while the server is up");
    deliver::deliver(&endpoint, envelope, tls).await.unwrap();
    // The directory's answer about the sender is saved at the next refresh (1 s here).
    wait_for(Duration::from_secs(10), "the saved peers", || {
        std::fs::read_to_string(regional.state.join("peers.json"))
            .is_ok_and(|t| t.contains(device.device_id()))
    })
    .await;
    for saved in ["crl.der", "policy-bundle.jws"] {
        assert!(regional.state.join(saved).exists(), "{saved}");
    }

    // The server goes away, and the sidecar restarts: the saved CRL, policy bundle and
    // peers check out again, and it takes the device's next message.
    server.stop().await;
    let regional = regional.restart(&listen).ready().await;
    let (envelope, tls) = forger.seal("aggregated_metrics", b"while the server is down");
    let receipt = deliver::deliver(&endpoint, envelope, tls).await;
    assert!(receipt.is_ok(), "{receipt:?}\n{}", regional.process.log());
    // Nothing receipted is lost: the message nobody had read before the restart is there,
    // then the new one; once read, a restart does not hand them over again.
    let (_, list) = call(&regional.socket(), "GET", "/v1/messages?wait=5", None).await;
    let payloads: Vec<&str> = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["payload"].as_str())
        .collect();
    assert_eq!(
        payloads,
        [
            b64(b"while the server is up").as_str(),
            b64(b"while the server is down").as_str()
        ],
        "{list}"
    );
    let regional = regional.restart(&listen).ready().await;
    let (_, list) = call(&regional.socket(), "GET", "/v1/messages", None).await;
    assert_eq!(list["messages"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_crl_age_on_the_command_line_makes_a_sidecar_refuse_once_passed() {
    let policies = policies();
    let server = RealServer::start(&["--policy-dir", &policies.path().display().to_string()]).await;
    // The long-poll confirms the CRL every 25 s at most: with a 1 s maximum age the sidecar
    // refuses between confirmations, and says so.
    let sidecar = Sidecar::start(
        &server,
        "edge",
        &[
            "--refresh".into(),
            "1h".into(),
            "--max-crl-age".into(),
            "1s".into(),
        ],
    )
    .await;
    wait_for(Duration::from_secs(10), "the sidecar to refuse", || {
        std::os::unix::net::UnixStream::connect(sidecar.socket()).is_ok()
    })
    .await;
    let detail = refusing_detail(&sidecar).await;
    assert!(
        detail.contains("CRL") && detail.contains("maximum age of 1s"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_policy_age_on_the_command_line_makes_a_sidecar_refuse_once_passed() {
    let policies = policies();
    let server = RealServer::start(&["--policy-dir", &policies.path().display().to_string()]).await;
    // The policy bundle is confirmed at start and then only at each refresh (an hour here):
    // with a 1 s maximum age the sidecar refuses soon after it started, and says so.
    let sidecar = Sidecar::start(
        &server,
        "edge",
        &[
            "--refresh".into(),
            "1h".into(),
            "--max-policy-age".into(),
            "1s".into(),
        ],
    )
    .await;
    let detail = refusing_detail(&sidecar).await;
    assert!(
        detail.contains("policy bundle") && detail.contains("maximum age of 1s"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_keep_flowing_through_both_sidecars_renewals() {
    let policies = policies();
    // Certificates of 8 s: each sidecar renews at about 4 s.
    let server = RealServer::start(&[
        "--cert-lifetime",
        "8s",
        "--policy-dir",
        &policies.path().display().to_string(),
    ])
    .await;
    let port = free_port();
    let regional = Sidecar::start(
        &server,
        "regional",
        &[
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--advertise".into(),
            format!("https://127.0.0.1:{port}"),
            "--max-retry-delay".into(),
            "1s".into(),
        ],
    )
    .await;
    let gateway = Sidecar::start(&server, "edge", &["--max-retry-delay".into(), "1s".into()]).await;
    let serial = |s: &Sidecar| identity(&s.state)["serial"].as_str().unwrap().to_owned();
    let (first_regional, first_gateway) = (serial(&regional), serial(&gateway));
    let send = json!({"to": regional.device_id(), "data_type": "aggregated_metrics",
                      "protocol": "https", "payload": b64(b"load=0.3")});
    let (status, p) = call(&gateway.socket(), "POST", "/v1/send", Some(send.clone())).await;
    assert_eq!(status, 200, "{p}");
    let expiry = |s: &Sidecar| {
        time::OffsetDateTime::parse(
            identity(&s.state)["not_after"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let first_expiry = expiry(&regional).max(expiry(&gateway));
    wait_for(Duration::from_secs(20), "both renewals", || {
        serial(&regional) != first_regional && serial(&gateway) != first_gateway
    })
    .await;
    // Both renewed, and the first certificates have expired: messages are sealed, signed,
    // delivered and receipted with the new credentials only.
    wait_for(
        Duration::from_secs(20),
        "the first certificates to expire",
        || time::OffsetDateTime::now_utc() > first_expiry + Duration::from_secs(1),
    )
    .await;
    let start = std::time::Instant::now();
    let mut refused = Vec::new();
    loop {
        let (status, p) = call(&gateway.socket(), "POST", "/v1/send", Some(send.clone())).await;
        if status == 200 {
            break;
        }
        refused.push(p);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no message after the renewals: {refused:?}\n{}",
            gateway.process.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, list) = call(&regional.socket(), "GET", "/v1/messages?wait=5", None).await;
    assert!(list["messages"].as_array().unwrap().len() >= 2, "{list}");
}

/// Seals `data_type` messages with `forger` and posts them to `endpoint` until one is refused
/// because its sender is revoked (or on hold); `why` says what the receiver should have
/// learned, for the failure after 20 s.
async fn refused_as_revoked(
    forger: &HandSealer,
    endpoint: &str,
    data_type: &str,
    payload: &[u8],
    why: impl Fn() -> String,
) {
    let start = std::time::Instant::now();
    loop {
        let (envelope, tls) = forger.seal(data_type, payload);
        if let Err(DeliveryError::Refused { detail, .. }) =
            deliver::deliver(endpoint, envelope, tls).await
        {
            if detail.starts_with("revoked") {
                return;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{}", why());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
