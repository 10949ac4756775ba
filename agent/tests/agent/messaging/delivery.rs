//! Direct delivery over mutual TLS: B serves `/v1/deliver`, A posts to it.
use super::*;
use std::sync::{Arc, Mutex};
use vouch_agent::messaging::deliver::{self, DeliveryError, Inbound};

/// B's receiving sidecar, in-process: its inbox and what it accepted.
async fn receiving(
    server: &RealServer,
    b: Device,
) -> (
    String,
    Arc<Mutex<Vec<Delivered>>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let tls = deliver::server_config(
        &format!(
            "{}{}",
            b.body["certificate_pem"].as_str().unwrap(),
            ::pem::encode(&::pem::Pem::new("CERTIFICATE", b.issuing_ca()))
        ),
        &b.key_pem,
        &b.root(),
    )
    .unwrap();
    let inbox = Arc::new(Inbox::new(server, b).await);
    let replay = Arc::new(Mutex::new(ReplayGuard::in_memory()));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let kept = accepted.clone();
    let inbound: Inbound = Arc::new(move |bytes| {
        let mut replay = replay.lock().unwrap();
        let answer = match inbox.open(&bytes, &mut replay) {
            Ok(d) => {
                let message_id = d.message_id.clone();
                kept.lock().unwrap().push(d);
                Ok(deliver::Receipt {
                    message_id,
                    receipt: String::new(),
                    crl_number: None,
                })
            }
            Err(e) => Err((e.reason(), e.to_string())),
        };
        Box::pin(async move { answer })
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("https://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(deliver::serve(listener, tls, inbound, 1024 * 1024, async {
        let _ = stopped.await;
    }));
    (endpoint, accepted, stop)
}

fn sender_tls(a: &Device, anchors: &TrustAnchors, to: &str) -> rustls::ClientConfig {
    deliver::client_config(
        &format!(
            "{}{}",
            a.body["certificate_pem"].as_str().unwrap(),
            ::pem::encode(&::pem::Pem::new("CERTIFICATE", a.issuing_ca()))
        ),
        &a.key_pem,
        anchors,
        to,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_crosses_mutual_tls_once_and_only_to_the_peer_meant() {
    let server = RealServer::start(&[]).await;
    let (a, b, c) = (
        enroll(&server).await,
        enroll(&server).await,
        enroll(&server).await,
    );
    let anchors = TrustAnchors::new(&a.chain_pem, &a.root(), "fleet.example").unwrap();
    let (api, identity) = a.api(&server);
    let b_id = b.device_id().to_owned();
    let b_spiffe = b.spiffe_id.clone();
    let record = api.peer(&identity, &b_id).await.unwrap();
    let peer = verify_peer_record(&anchors, &record, &b_id, now()).unwrap();
    let (endpoint, accepted, _stop) = receiving(&server, b).await;

    let outbox = Outbox::new(&a.credentials()).unwrap();
    let envelope = outbox
        .seal(&peer, "telemetry", b"t=21.5", now() as u64, true)
        .unwrap()
        .envelope;
    let receipt = deliver::deliver(
        &endpoint,
        envelope.clone(),
        sender_tls(&a, &anchors, &b_spiffe),
    )
    .await
    .unwrap();
    {
        let accepted = accepted.lock().unwrap();
        assert_eq!(accepted.len(), 1);
        assert_eq!(accepted[0].payload, b"t=21.5");
        assert_eq!(accepted[0].message_id, receipt.message_id);
        assert_eq!(accepted[0].sender.spiffe_id, a.spiffe_id);
    }

    // The same envelope again: refused by the receiver, with its reason.
    match deliver::deliver(&endpoint, envelope, sender_tls(&a, &anchors, &b_spiffe)).await {
        Err(DeliveryError::Refused {
            status,
            code,
            detail,
            ..
        }) => {
            assert_eq!(status, 403);
            assert_eq!(code, vouch_proto::ProblemCode::MessageRefused.as_str());
            assert!(detail.starts_with("replayed"), "{detail}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A sender that means C does not talk to B: the handshake fails, nothing is sent.
    let to_c = outbox
        .seal(&peer, "telemetry", b"t=22", now() as u64, true)
        .unwrap()
        .envelope;
    let wrong = deliver::deliver(&endpoint, to_c, sender_tls(&a, &anchors, &c.spiffe_id)).await;
    assert!(
        matches!(wrong, Err(DeliveryError::Unreachable(_))),
        "{wrong:?}"
    );
    // A client without a device certificate is refused at the handshake.
    let anonymous = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .post(format!("{endpoint}/v1/deliver"))
        .header("content-type", deliver::CONTENT_TYPE)
        .body(vec![0u8; 16])
        .send()
        .await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    assert_eq!(accepted.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_server_chooses_aes_128_gcm_sha256_whatever_the_client_lists_first() {
    let server = RealServer::start(&[]).await;
    let (a, b) = (enroll(&server).await, enroll(&server).await);
    let (endpoint, _accepted, _stop) = receiving(&server, b).await;
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("a.pem");
    let key = dir.path().join("a.key");
    std::fs::write(&cert, a.body["certificate_pem"].as_str().unwrap()).unwrap();
    std::fs::write(&key, &a.key_pem).unwrap();
    let address = endpoint.trim_start_matches("https://").to_owned();
    // OpenSSL lists AES-256-GCM-SHA384 first, as rustls clients do.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("openssl")
            .args(["s_client", "-connect", &address, "-tls1_3", "-brief"])
            .args([
                "-ciphersuites",
                "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
            ])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl is installed by tests/run.sh")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let suite = text
        .lines()
        .find_map(|line| line.strip_prefix("Ciphersuite: "))
        .unwrap_or_else(|| panic!("no cipher suite in:\n{text}"));
    // SHA-256 runs on the CPU's SHA instructions, SHA-384 does not (vouch_proto::tls).
    assert_eq!(suite.trim(), "TLS_AES_128_GCM_SHA256");
}
