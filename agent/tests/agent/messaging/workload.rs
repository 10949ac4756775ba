//! A workload hands its sidecar a payload on the Unix socket; the other device's workload
//! reads it from its own sidecar's socket. Both sidecars are in-process `Messenger`s
//! talking to the real server and to each other over mutual TLS.
use super::*;
use crate::support::{call, get_text};
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use vouch_agent::messaging::deliver;
use vouch_agent::messaging::node::Messenger;
use vouch_agent::messaging::node::{DEFAULT_MAX_CRL_AGE, DEFAULT_MAX_POLICY_AGE};
use vouch_agent::messaging::policy::{Decider, Party, Verdict};
use vouch_agent::schedule::{Clock, SystemClock};
use vouch_policy::engine::Annotation;
use vouch_policy::model::MessageContext;

/// A test decider: allows what `allow` says, naming policy `test-<data type>`, with a
/// `rate_limit` of 2/min on `status`.
struct Decide(fn(&str) -> bool);

impl Decider for Decide {
    fn decide(&self, _: Party<'_>, _: Party<'_>, context: &MessageContext) -> Verdict {
        let policy = format!("test-{}", context.data_type);
        let annotations = if context.data_type == "status" {
            vec![Annotation {
                policy: policy.clone(),
                key: "rate_limit".into(),
                value: "2/min".into(),
            }]
        } else {
            Vec::new()
        };
        Verdict {
            allowed: (self.0)(&context.data_type),
            policies: vec![policy],
            annotations,
            version: "test".into(),
        }
    }
}

/// `device`'s sidecar: messaging, a delivery listener (advertised at enrollment by the
/// test), and the workload socket.
async fn sidecar(
    server: &RealServer,
    device: &Device,
    dir: &Path,
    listener: tokio::net::TcpListener,
    decider: Decide,
    clock: Arc<dyn Clock>,
) -> Arc<Messenger> {
    let (api, _) = device.api(server);
    let anchors = TrustAnchors::new(&device.chain_pem, &device.root(), "fleet.example").unwrap();
    let cert_pem = format!(
        "{}{}",
        device.body["certificate_pem"].as_str().unwrap(),
        ::pem::encode(&::pem::Pem::new("CERTIFICATE", device.issuing_ca()))
    );
    let credentials = Credentials {
        cert_pem: &cert_pem,
        ..device.credentials()
    };
    let messenger = Arc::new(
        Messenger::new(
            api,
            anchors,
            &credentials,
            ReplayGuard::load(dir.join("replay.json")).unwrap(),
            Arc::new(decider),
        )
        .unwrap()
        .with_clock(clock),
    );
    messenger.refresh_crl().await.unwrap();
    let tls = deliver::server_config(&cert_pem, &device.key_pem, &device.root()).unwrap();
    let accepting = messenger.clone();
    tokio::spawn(deliver::serve(
        listener,
        tls,
        accepting.inbound(),
        1 << 20,
        std::future::pending(),
    ));
    let socket = vouch_agent::messaging::workload::bind(&dir.join("agent.sock")).unwrap();
    tokio::spawn(vouch_agent::messaging::workload::serve(
        socket,
        messenger.clone(),
    ));
    messenger
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_sends_through_its_sidecar_and_the_peer_workload_reads_it() {
    let server = RealServer::start(&[]).await;
    let (la, lb) = (
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let a = enroll_advertising(&server, &[&format!("https://{}", la.local_addr().unwrap())]).await;
    let b = enroll_advertising(&server, &[&format!("https://{}", lb.local_addr().unwrap())]).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A's egress policy refuses `pii`; B's ingress policy takes telemetry and status.
    let _sa = sidecar(
        &server,
        &a,
        da.path(),
        la,
        Decide(|t| t != "pii"),
        Arc::new(SystemClock),
    )
    .await;
    let _sb = sidecar(
        &server,
        &b,
        db.path(),
        lb,
        Decide(|t| t == "telemetry" || t == "status"),
        Arc::new(SystemClock),
    )
    .await;
    let (sock_a, sock_b) = (da.path().join("agent.sock"), db.path().join("agent.sock"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock_a).unwrap().permissions().mode() & 0o777,
        0o660
    );

    let payload = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        b"temperature=21.5",
    );
    let (status, sent) = call(
        &sock_a,
        "POST",
        "/v1/send",
        Some(json!({"to": b.device_id(), "data_type": "telemetry", "payload": payload})),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["via"], "https");
    assert_eq!(sent["policies"], json!(["test-telemetry"]));
    // The receipt is B's signature over this message id, for A.
    let receipt = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        sent["receipt"].as_str().unwrap(),
    )
    .unwrap();
    let b_key = TrustAnchors::new(&b.chain_pem, &b.root(), "fleet.example")
        .unwrap()
        .verify_device(&b.cert, now())
        .unwrap()
        .public_key;
    let cti = hex::decode(sent["message_id"].as_str().unwrap()).unwrap();
    vouch_agent::messaging::receipt::verify(&receipt, &b.spiffe_id, &b_key, &a.spiffe_id, &cti)
        .unwrap();
    let (status, list) = call(&sock_b, "GET", "/v1/messages?wait=5", None).await;
    assert_eq!(status, 200);
    let messages = list["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{list}");
    assert_eq!(messages[0]["from"], a.device_id());
    assert_eq!(messages[0]["payload"], payload.as_str());
    assert_eq!(messages[0]["message_id"], sent["message_id"]);

    // B's ingress policy refuses another data type: A's workload hears why; B's reads
    // nothing.
    let (status, refused) = call(
        &sock_a,
        "POST",
        "/v1/send",
        Some(json!({"to": b.device_id(), "data_type": "video", "payload": payload})),
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        refused["code"],
        vouch_proto::ProblemCode::MessageRefused.as_str()
    );
    // The receiver's reason and its deciding policy reach the sending workload.
    let detail = refused["detail"].as_str().unwrap();
    assert!(
        detail.contains(ProblemCode::PolicyDenied.as_str()) && detail.contains("test-video"),
        "{detail}"
    );
    let (_, list) = call(&sock_b, "GET", "/v1/messages", None).await;
    assert_eq!(list["messages"], json!([]));
    // A's own egress policy refuses `pii` before anything is sealed, naming the policy.
    let (status, refused) = call(
        &sock_a,
        "POST",
        "/v1/send",
        Some(json!({"to": b.device_id(), "data_type": "pii", "payload": payload})),
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        refused["code"],
        vouch_proto::ProblemCode::PolicyDenied.as_str()
    );
    assert!(
        refused["detail"].as_str().unwrap().contains("test-pii"),
        "{refused}"
    );
    // `status` is limited to 2 a minute per peer: the third waits, told how long.
    for _ in 0..2 {
        let body = json!({"to": b.device_id(), "data_type": "status", "payload": payload});
        let (status, p) = call(&sock_a, "POST", "/v1/send", Some(body)).await;
        assert_eq!(status, 200, "{p}");
    }
    let body = json!({"to": b.device_id(), "data_type": "status", "payload": payload});
    let (status, p) = call(&sock_a, "POST", "/v1/send", Some(body)).await;
    assert_eq!(status, 429, "{p}");
    assert_eq!(p["code"], vouch_proto::ProblemCode::RateLimited.as_str());
    // A workload that carries envelopes itself: A seals (policy decides, with the protocol
    // it names), B opens (every check; a second open is a replay).
    let (status, sealed_env) = call(
        &sock_a,
        "POST",
        "/v1/seal",
        Some(
            json!({"to": b.device_id(), "data_type": "telemetry", "protocol": "coap",
                    "payload": payload}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{sealed_env}");
    assert_eq!(sealed_env["policies"], json!(["test-telemetry"]));
    let open = json!({"envelope": sealed_env["envelope"], "protocol": "coap"});
    let (status, opened) = call(&sock_b, "POST", "/v1/open", Some(open.clone())).await;
    assert_eq!(status, 200, "{opened}");
    assert_eq!(opened["from"], a.device_id());
    assert_eq!(opened["payload"], payload.as_str());
    assert_eq!(opened["message_id"], sealed_env["message_id"]);
    let (status, again) = call(&sock_b, "POST", "/v1/open", Some(open)).await;
    assert_eq!(status, 403, "{again}");
    assert!(
        again["detail"].as_str().unwrap().starts_with("replayed"),
        "{again}"
    );
    let (status, denied) = call(
        &sock_a,
        "POST",
        "/v1/seal",
        Some(
            json!({"to": b.device_id(), "data_type": "pii", "protocol": "coap",
                    "payload": payload}),
        ),
    )
    .await;
    assert_eq!(status, 403, "{denied}");
    assert_eq!(
        denied["code"],
        vouch_proto::ProblemCode::PolicyDenied.as_str()
    );
    for (path, body) in [
        ("/v1/open", json!({"envelope": "%%", "protocol": "coap"})),
        (
            "/v1/open",
            json!({"envelope": "AAAA", "protocol": "Not A Protocol"}),
        ),
        ("/v1/open", json!({"envelope": "AAAA", "protocol": "coap"})),
        (
            "/v1/seal",
            json!({"to": b.device_id(), "data_type": "telemetry", "payload": payload}),
        ),
    ] {
        let (status, p) = call(&sock_b, "POST", path, Some(body)).await;
        assert!((400..500).contains(&status), "{path}: {status} {p}");
    }
    // Hostile bodies are 4xx problems.
    for body in [
        json!({"to": b.device_id(), "data_type": "telemetry", "payload": "%%%"}),
        json!({"to": b.device_id(), "data_type": "", "payload": payload}),
        json!({"to": "x", "unknown": 1}),
    ] {
        let (status, p) = call(&sock_a, "POST", "/v1/send", Some(body)).await;
        assert!((400..500).contains(&status), "{status} {p}");
    }
    // A device that does not exist: the directory says so.
    let (status, p) = call(
        &sock_a,
        "POST",
        "/v1/send",
        Some(json!({"to": "0".repeat(32), "data_type": "telemetry", "payload": payload})),
    )
    .await;
    assert_eq!(status, 502, "{p}");
    assert_eq!(
        p["code"],
        vouch_proto::ProblemCode::PeerUnreachable.as_str()
    );
}

/// The wall clock moved forward by a settable offset.
#[derive(Clone, Default)]
struct Moved(Arc<Mutex<std::time::Duration>>);

impl Clock for Moved {
    fn now(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc() + *self.0.lock().unwrap()
    }
}

/// Whether `promtool check metrics` takes `text` (Prometheus's own linter).
fn promtool_accepts(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool (apt install prometheus): {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The value of the sample `series` (name and labels as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Two sidecars A and B that allow everything, with one clock the test moves.
struct TwoOnOneClock {
    _server: RealServer,
    a: Device,
    b: Device,
    sa: Arc<Messenger>,
    sb: Arc<Messenger>,
    da: tempfile::TempDir,
    db: tempfile::TempDir,
    clock: Moved,
}

impl TwoOnOneClock {
    async fn start() -> Self {
        let server = RealServer::start(&[]).await;
        let (la, lb) = (
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        let url = |l: &tokio::net::TcpListener| format!("https://{}", l.local_addr().unwrap());
        let a = enroll_advertising(&server, &[&url(&la)]).await;
        let b = enroll_advertising(&server, &[&url(&lb)]).await;
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let clock = Moved::default();
        let mut sidecars = Vec::new();
        for (d, dir, l) in [(&a, &da, la), (&b, &db, lb)] {
            let clock = Arc::new(clock.clone());
            sidecars.push(sidecar(&server, d, dir.path(), l, Decide(|_| true), clock).await);
        }
        let (sa, sb) = (sidecars[0].clone(), sidecars[1].clone());
        Self {
            _server: server,
            a,
            b,
            sa,
            sb,
            da,
            db,
            clock,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_maximum_policy_age_a_sidecar_refuses_everything_and_metrics_say_so() {
    let TwoOnOneClock {
        _server,
        a,
        b,
        sa,
        sb,
        da,
        db,
        clock,
    } = TwoOnOneClock::start().await;
    // Both policy bundles were last confirmed 10 minutes short of the maximum age.
    let then = clock.now().unix_timestamp()
        - i64::try_from(DEFAULT_MAX_POLICY_AGE.as_secs()).unwrap()
        + 600;
    sa.confirm_policy(Some(then));
    sb.confirm_policy(Some(then));
    let sock_a = da.path().join("agent.sock");
    let payload = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"t=1");
    let send = json!({"to": b.device_id(), "data_type": "telemetry", "payload": payload});
    for _ in 0..2 {
        let (status, p) = call(&sock_a, "POST", "/v1/send", Some(send.clone())).await;
        assert_eq!(status, 200, "{p}");
    }
    let replayed = sealed(
        &a.sender(),
        &b,
        &Message {
            seq: 1,
            ..Message::default()
        },
    );
    let transport = vouch_agent::messaging::node::Transport::direct();
    assert!(sb.accept(&replayed, &transport).await.is_ok());
    let (reason, _) = sb.accept(&replayed, &transport).await.unwrap_err();
    assert_eq!(reason, "replayed");

    // What the sidecars did, in Prometheus's text format, as promtool reads it.
    let (status, metrics) = get_text(&sock_a, "/metrics").await;
    assert_eq!(status, 200);
    promtool_accepts(&metrics).unwrap();
    assert_eq!(
        sample(&metrics, "vouch_agent_messages_sent_total{via=\"https\"}"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "vouch_agent_refusing"),
        Some(0.0),
        "{metrics}"
    );
    let crl = sa.crl_number().unwrap() as f64;
    assert_eq!(
        sample(&metrics, "vouch_agent_crl_number"),
        Some(crl),
        "{metrics}"
    );
    let age = sample(&metrics, "vouch_agent_policy_age_seconds").unwrap();
    assert!(
        (DEFAULT_MAX_POLICY_AGE.as_secs_f64() - 600.0 - age).abs() < 5.0,
        "{metrics}"
    );
    let (_, metrics_b) = get_text(&db.path().join("agent.sock"), "/metrics").await;
    assert_eq!(
        sample(
            &metrics_b,
            "vouch_agent_messages_received_total{protocol=\"https\"}"
        ),
        Some(3.0),
        "{metrics_b}"
    );
    assert_eq!(
        sample(
            &metrics_b,
            "vouch_agent_messages_refused_total{side=\"receiver\",reason=\"replayed\"}"
        ),
        Some(1.0),
        "{metrics_b}"
    );

    // 20 minutes later the policy bundles are past their maximum age (the CRL is not):
    // A refuses to send, B refuses what arrives, both say why.
    *clock.0.lock().unwrap() = std::time::Duration::from_secs(20 * 60);
    let (status, p) = call(&sock_a, "POST", "/v1/send", Some(send.clone())).await;
    assert_eq!(status, 503, "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("policy bundle was last confirmed"),
        "{p}"
    );
    assert_eq!(call(&sock_a, "GET", "/healthz", None).await.0, 503);
    let later = u64::try_from(clock.now().unix_timestamp()).unwrap();
    let envelope = sealed(
        &a.sender(),
        &b,
        &Message {
            seq: 9,
            iat: later,
            ..Message::default()
        },
    );
    let (reason, detail) = sb.accept(&envelope, &transport).await.unwrap_err();
    assert_eq!(reason, "stale_trust", "{detail}");
    assert!(detail.contains("policy bundle"), "{detail}");
    let (_, metrics) = get_text(&sock_a, "/metrics").await;
    assert_eq!(
        sample(&metrics, "vouch_agent_refusing"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "vouch_agent_messages_refused_total{side=\"sender\",reason=\"stale_trust\"}"
        ),
        Some(1.0),
        "{metrics}"
    );

    // The server confirms the bundles again: both take messages by themselves.
    sa.confirm_policy(None);
    sb.confirm_policy(None);
    let (status, p) = call(&sock_a, "POST", "/v1/send", Some(send)).await;
    assert_eq!(status, 200, "{p}");
    sb.accept(&envelope, &transport).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_more_concurrent_sends_than_the_replay_window_are_all_delivered() {
    let TwoOnOneClock {
        _server,
        b,
        sa,
        sb,
        da: _da,
        db: _db,
        ..
    } = TwoOnOneClock::start().await;
    // 400 sends to one peer at once: sequence numbers are given at sealing, and more
    // than a window (64) overtaken would be refused as replays at the receiver.
    let sends = (0..400).map(|i| {
        let (sa, to) = (sa.clone(), b.device_id().to_owned());
        tokio::spawn(async move {
            sa.send(&to, "telemetry", format!("m{i}").as_bytes(), None)
                .await
        })
    });
    let mut refused = Vec::new();
    for send in sends.collect::<Vec<_>>() {
        if let Err(e) = send.await.unwrap() {
            refused.push(e.to_string());
        }
    }
    assert!(
        refused.is_empty(),
        "{} refused: {:?}",
        refused.len(),
        refused.first()
    );
    let arrived = sb.take_messages(std::time::Duration::ZERO).await;
    assert_eq!(arrived.len(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_maximum_crl_age_a_sidecar_refuses_everything_until_a_fresh_crl() {
    let TwoOnOneClock {
        _server,
        a,
        b,
        sa,
        sb,
        da,
        db: _db,
        clock,
    } = TwoOnOneClock::start().await;
    let sock_a = da.path().join("agent.sock");
    let payload = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"t=1");
    let send = json!({"to": b.device_id(), "data_type": "telemetry", "payload": payload});
    let (status, p) = call(&sock_a, "POST", "/v1/send", Some(send.clone())).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(call(&sock_a, "GET", "/healthz", None).await.0, 200);

    // Both clocks pass the maximum age of the CRL's last confirmation (no server call
    // confirmed it since): A refuses to send, B refuses what arrives, both say why.
    *clock.0.lock().unwrap() = DEFAULT_MAX_CRL_AGE + std::time::Duration::from_secs(60);
    let (status, p) = call(&sock_a, "POST", "/v1/send", Some(send.clone())).await;
    assert_eq!(status, 503, "{p}");
    assert_eq!(p["code"], vouch_proto::ProblemCode::NotReady.as_str());
    assert!(
        p["detail"].as_str().unwrap().contains("last confirmed"),
        "{p}"
    );
    let (status, health) = call(&sock_a, "GET", "/healthz", None).await;
    assert_eq!(status, 503, "{health}");
    let (_, identity) = call(&sock_a, "GET", "/v1/identity", None).await;
    assert!(identity["refusing"].is_string(), "{identity}");
    let later = u64::try_from(clock.now().unix_timestamp()).unwrap();
    let envelope = sealed(
        &a.sender(),
        &b,
        &Message {
            seq: 9,
            iat: later,
            ..Message::default()
        },
    );
    let (reason, detail) = sb
        .accept(
            &envelope,
            &vouch_agent::messaging::node::Transport::direct(),
        )
        .await
        .unwrap_err();
    assert_eq!(reason, "stale_trust", "{detail}");

    // A fresh CRL from the server: both take messages again by themselves.
    sa.refresh_crl().await.unwrap();
    sb.refresh_crl().await.unwrap();
    assert_eq!(call(&sock_a, "GET", "/healthz", None).await.0, 200);
    let (status, p) = call(&sock_a, "POST", "/v1/send", Some(send)).await;
    assert_eq!(status, 200, "{p}");
    sb.accept(
        &envelope,
        &vouch_agent::messaging::node::Transport::direct(),
    )
    .await
    .unwrap();
}
