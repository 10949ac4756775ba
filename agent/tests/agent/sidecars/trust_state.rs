//! How trust state reaches running sidecars: revocations and quarantines by long-poll,
//! across replicas on PostgreSQL, and from peer to peer while the server is unreachable.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_a_running_sidecar_by_long_poll() {
    let policies = policies();
    let server = RealServer::start(&["--policy-dir", &policies.path().display().to_string()]).await;
    let port = free_port();
    // The periodic refresh is an hour away: only the long-poll can bring the new CRL.
    let gateway = Sidecar::start(
        &server,
        "edge",
        &[&["--refresh".into(), "1h".into()][..], &listen_args(port)].concat(),
    )
    .await;
    let sensor = Sidecar::start(&server, "sensors", &[]).await;
    let forger = HandSealer::new(&sensor, &server, &gateway.device_id()).await;
    let endpoint = format!("https://127.0.0.1:{port}");
    // Before: not refused as revoked (policy refuses it: the sensors' zone speaks mqtt and
    // coap, and this is https).
    let (envelope, tls) = forger.seal("telemetry", b"before");
    let before = deliver::deliver(&endpoint, envelope, tls).await;
    assert!(
        !matches!(&before, Err(DeliveryError::Refused { detail, .. }) if detail.starts_with("revoked")),
        "{before:?}"
    );
    let (status, _) = server
        .post(
            &format!("/v1/devices/{}/revoke", sensor.device_id()),
            json!({"reason": "stolen"}),
        )
        .await;
    assert_eq!(status, 200);
    let revoked_at = std::time::Instant::now();
    refused_as_revoked(&forger, &endpoint, "telemetry", b"after", || {
        format!(
            "the gateway still does not know of the revocation: {}",
            gateway.process.log()
        )
    })
    .await;
    eprintln!(
        "revocation to refusal at the gateway: {} ms",
        revoked_at.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_reaches_the_peers_and_a_release_lifts_it() {
    use vouch_attestor::testing::{boot_events, measure};
    let policies = policies();
    let server = RealServer::start(&["--policy-dir", &policies.path().display().to_string()]).await;
    let broker = Mosquitto::start().await;
    let mqtt = format!("mqtt://127.0.0.1:{}", broker.port);
    let port = free_port();
    // The periodic refresh is an hour away: only the CRL long-poll brings news in time.
    let gateway = Sidecar::start(
        &server,
        "edge",
        &[
            "--refresh".into(),
            "1h".into(),
            "--mqtt".into(),
            mqtt.clone(),
            "--advertise".into(),
            mqtt.clone(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--advertise".into(),
            format!("https://127.0.0.1:{port}"),
        ],
    )
    .await;
    let tpm = SoftwareTpm::start();
    measure(&tpm, &boot_events("fw-1", "cfg-a"));
    let token = server
        .token(json!({"zone": "sensors", "device_class": "sensor"}))
        .await;
    let sensor_args = |tpm_args: &[String]| {
        let mut a = vec![
            "--mqtt".to_owned(),
            mqtt.clone(),
            "--advertise".into(),
            mqtt.clone(),
        ];
        a.extend(tpm_args.iter().cloned());
        a
    };
    let sensor = Sidecar::start_with_token(
        &server,
        &token,
        &sensor_args(&[
            "--tpm".into(),
            tpm.tcti(),
            "--attest-every".into(),
            "1s".into(),
        ]),
    )
    .await;
    // A TPM device is trusted as one once its first attestation passed.
    wait_for(Duration::from_secs(20), "the first attestation", || {
        identity_is(&sensor.state, |i| i["last_attestation"]["result"] == "pass")
    })
    .await;
    let telemetry = |text: &str| {
        json!({"to": gateway.device_id(), "data_type": "telemetry", "protocol": "mqtt",
               "payload": b64(text.as_bytes())})
    };
    let (status, sent) = call(&sensor.socket(), "POST", "/v1/send", Some(telemetry("ok"))).await;
    assert_eq!(status, 200, "{sent}");
    let (_, list) = call(&gateway.socket(), "GET", "/v1/messages?wait=20", None).await;
    assert_eq!(list["messages"].as_array().unwrap().len(), 1, "{list}");

    // The boot changes: the next attestation fails and the sensor is quarantined. Its keys,
    // used past its own sidecar, no longer get a message into the gateway: its certificate
    // is on hold in the CRL the gateway follows.
    let forger = HandSealer::new(&sensor, &server, &gateway.device_id()).await;
    let endpoint = format!("https://127.0.0.1:{port}");
    tpm.extend(0, &sha256(b"unsigned bootloader"));
    wait_for(Duration::from_secs(20), "a failed attestation", || {
        identity_is(&sensor.state, |i| i["last_attestation"]["result"] == "fail")
    })
    .await;
    let failed_at = std::time::Instant::now();
    refused_as_revoked(
        &forger,
        &endpoint,
        "telemetry",
        b"from a quarantined device",
        || {
            format!(
                "the gateway does not know of the quarantine: {}",
                gateway.process.log()
            )
        },
    )
    .await;
    eprintln!(
        "failed attestation to refusal at the gateway: {} ms",
        failed_at.elapsed().as_millis()
    );
    // Its own sidecar refuses to send for it too (its own standing is quarantined).
    let (status, refused) = call(
        &sensor.socket(),
        "POST",
        "/v1/send",
        Some(telemetry("quarantined")),
    )
    .await;
    assert_eq!(status, 403, "{refused}");

    // The operator releases it (it runs on without its TPM, so it does not attest again):
    // the gateway takes its messages again.
    let sensor = sensor.restart(&sensor_args(&[]));
    let (status, _) = server
        .post(
            &format!("/v1/devices/{}/release", sensor.device_id()),
            json!({"reason": "reflashed"}),
        )
        .await;
    assert_eq!(status, 200);
    let sensor = sensor.ready().await;
    let released_at = std::time::Instant::now();
    loop {
        let (status, sent) = call(
            &sensor.socket(),
            "POST",
            "/v1/send",
            Some(telemetry("released")),
        )
        .await;
        if status == 200 {
            let (_, list) = call(&gateway.socket(), "GET", "/v1/messages?wait=10", None).await;
            let messages = list["messages"].as_array().unwrap();
            assert_eq!(messages.len(), 1, "{list}\n{}", gateway.process.log());
            assert_eq!(messages[0]["message_id"], sent["message_id"]);
            break;
        }
        assert!(
            released_at.elapsed() < Duration::from_secs(20),
            "still refused after the release: {sent}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP relay to the server that the test can cut, as a network partition would.
struct Partitionable {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Partitionable {
    async fn to(server_base: &str) -> Self {
        let target = server_base.trim_start_matches("https://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (is_cut, kept) = (cut.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_cut.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                kept.lock().unwrap().push(task);
            }
        });
        Self {
            port,
            cut,
            connections,
        }
    }

    fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection, and refuses new ones from now on.
    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_from_the_server_sidecars_hand_each_other_the_newest_crl() {
    let policies = policies();
    let mut server =
        RealServer::start(&["--policy-dir", &policies.path().display().to_string()]).await;
    let port = free_port();
    // The regional node reaches the server through a link the test cuts.
    let link = Partitionable::to(&server.base).await;
    let token = server.token(json!({"zone": "regional"})).await;
    let regional = Sidecar::launch_via(&link.base(), &token, None, &listen_args(port))
        .ready()
        .await;
    let gateway = Sidecar::start(&server, "edge", &[]).await;
    let other = Sidecar::start(&server, "edge", &[]).await;
    let endpoint = format!("https://127.0.0.1:{port}");
    let metrics = |text: &str| {
        json!({"to": regional.device_id(), "data_type": "aggregated_metrics",
               "protocol": "https", "payload": b64(text.as_bytes())})
    };
    // Everyone knows everyone: the gateway and the other edge device (by hand, with its
    // keys) reach the regional node, which learns their standing from the directory.
    let (status, sent) = call(&gateway.socket(), "POST", "/v1/send", Some(metrics("1"))).await;
    assert_eq!(status, 200, "{sent}");
    let forger = HandSealer::new(&other, &server, &regional.device_id()).await;
    let (envelope, tls) = forger.seal("aggregated_metrics", b"from the other edge device");
    deliver::deliver(&endpoint, envelope, tls).await.unwrap();

    // The regional node is cut off; the other device is revoked; the gateway learns of it;
    // then the server stops.
    link.cut();
    let crl_of = |s: &Sidecar| {
        let socket = s.socket();
        async move { call(&socket, "GET", "/v1/identity", None).await.1["crl_number"].as_u64() }
    };
    let before = crl_of(&gateway).await.unwrap();
    let (status, _) = server
        .post(
            &format!("/v1/devices/{}/revoke", other.device_id()),
            json!({"reason": "stolen"}),
        )
        .await;
    assert_eq!(status, 200);
    let start = std::time::Instant::now();
    while crl_of(&gateway).await.unwrap() == before {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the gateway did not learn"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
    assert_eq!(crl_of(&regional).await, Some(before));

    // The regional node does not know: the revoked device still gets a message in.
    let (envelope, tls) = forger.seal("aggregated_metrics", b"before the news");
    deliver::deliver(&endpoint, envelope, tls).await.unwrap();
    // The gateway's next message carries the news (the regional node is behind: the gateway
    // hands it the CRL), and from then on the revoked device is refused there too.
    let (status, sent) = call(&gateway.socket(), "POST", "/v1/send", Some(metrics("2"))).await;
    assert_eq!(status, 200, "{sent}\n{}", gateway.process.log());
    assert!(
        crl_of(&regional).await.unwrap() > before,
        "{}",
        regional.process.log()
    );
    let (envelope, tls) = forger.seal("aggregated_metrics", b"after the news");
    match deliver::deliver(&endpoint, envelope, tls).await {
        Err(DeliveryError::Refused { detail, .. }) => {
            assert!(detail.starts_with("revoked"), "{detail}");
        }
        other => panic!("the regional node took a revoked device's message: {other:?}"),
    }
}

/// p50, p99 and max of `samples` (milliseconds), sorted.
fn distribution(mut samples: Vec<u128>) -> (u128, u128, u128) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    (at(0.5), at(0.99), *samples.last().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_reaches_a_sidecar_on_another_postgres() {
    let policies = policies();
    let database = fresh_postgres_database();
    let a = RealServer::start(&[
        "--database-url",
        &database,
        "--policy-dir",
        &policies.path().display().to_string(),
    ])
    .await;
    let b = a.replica().await;
    // The gateway talks to replica B only, and follows the CRL only by long-poll.
    let port = free_port();
    let token = a.token(json!({"zone": "edge"})).await;
    let gateway = Sidecar::launch_via(
        &b.base,
        &token,
        None,
        &[&["--refresh".into(), "1h".into()][..], &listen_args(port)].concat(),
    )
    .ready()
    .await;
    let endpoint = format!("https://127.0.0.1:{port}");
    let mut took = Vec::new();
    for _ in 0..20 {
        let device = crate::messaging::enroll(&a).await;
        let forger = HandSealer::for_device(&device, &a, &gateway.device_id()).await;
        // A live connection of the device to the gateway, held open.
        let (envelope, tls) = forger.seal("telemetry", b"before");
        let client = deliver::client(tls.clone()).unwrap();
        let before = deliver::deliver_with(&client, &endpoint, envelope).await;
        assert!(
            !matches!(&before, Err(DeliveryError::Refused { detail, .. }) if detail.starts_with("revoked")),
            "{before:?}"
        );
        let live = live_connection(&tls, port).await;
        // Revoked on replica A.
        let (status, _) = a
            .post(
                &format!("/v1/devices/{}/revoke", device.device_id()),
                json!({"reason": "stolen"}),
            )
            .await;
        assert_eq!(status, 200);
        let revoked_at = std::time::Instant::now();
        refused_as_revoked(&forger, &endpoint, "telemetry", b"after", || {
            format!(
                "the gateway on replica B does not know: {}",
                gateway.process.log()
            )
        })
        .await;
        took.push(revoked_at.elapsed().as_millis());
        // The device's open connection was closed by the gateway.
        assert_closed(live).await;
    }
    let (p50, p99, max) = distribution(took);
    eprintln!("revocation on replica A to refusal at a sidecar of replica B, 20 runs: p50 {p50} ms, p99 {p99} ms, max {max} ms");
}

/// A mutual-TLS connection to the delivery listener on `port`, open and idle.
async fn live_connection(
    tls: &rustls::ClientConfig,
    port: u16,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls.clone()));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    // One request on it, so that the server has taken the connection into service.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /v1/crl HTTP/1.1\r\nhost: peer\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(n > 0);
    // Read the rest of that answer (headers and the CRL body).
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        loop {
            if stream.read(&mut buf).await.unwrap_or(0) == 0 {
                break;
            }
        }
    })
    .await;
    stream
}

/// Waits until the server closes `stream` (a read sees the end or an error), sooner than
/// the listener would close an idle connection by itself (10 s without a request).
async fn assert_closed(mut stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the revoked device's connection is still open"
    );
}
