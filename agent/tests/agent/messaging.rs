//! The receiver's checks against real certificates: devices enrolled at a real server (each
//! with a key-agreement certificate), the server's CRL, and envelopes sealed by
//! `vouch_envelope`. Each attack is refused with its reason, and nothing is handed over.

use crate::server::{lab, RealServer};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use vouch_agent::client::{ApiError, HttpApi};
use vouch_agent::credentials::{certificates, csr_pem, new_key};
use vouch_agent::lifecycle::{Api, ClientIdentity};
use vouch_agent::messaging::peers::verify_peer_record;
use vouch_agent::messaging::receive::{Delivered, Limits, Receiver, Refusal};
use vouch_agent::messaging::replay::ReplayGuard;
use vouch_agent::messaging::revocation::RevocationList;
use vouch_agent::messaging::send::{Credentials, Outbox};
use vouch_agent::messaging::trust::{TrustAnchors, VerifiedDevice};
use vouch_envelope::{
    certificate_sha256, seal, KeyAgreementKey, RecipientKeys, SealRequest, SenderKeys,
    SharedSecretCache,
};
use vouch_proto::ProblemCode;

/// A device enrolled with a key-agreement key.
pub(crate) struct Device {
    spiffe_id: String,
    key_pkcs8: Vec<u8>,
    cert: Vec<u8>,
    ka_pkcs8: Vec<u8>,
    ka_cert: Vec<u8>,
    chain_pem: String,
    /// The enrollment answer.
    pub(crate) body: Value,
    key_pem: String,
    ka_key_pem: String,
}

pub(crate) async fn enroll(server: &RealServer) -> Device {
    enroll_advertising(server, &[]).await
}

/// Enrolls a device with a key-agreement key, advertising `endpoints`.
async fn enroll_advertising(server: &RealServer, endpoints: &[&str]) -> Device {
    enroll_with(server, lab(), endpoints).await
}

/// Enrolls a device in `zone`.
pub(crate) async fn enroll_in(server: &RealServer, zone: &str) -> Device {
    enroll_with(server, json!({ "zone": zone }), &[]).await
}

/// Enrolls a device with a token made with `token_body`, advertising `endpoints`.
async fn enroll_with(server: &RealServer, token_body: Value, endpoints: &[&str]) -> Device {
    let token = server.token(token_body).await;
    let key = new_key().unwrap();
    let ka = new_key().unwrap();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let r = client
        .post(format!("{}/v1/enroll", server.base))
        .json(&json!({"token": token, "csr_pem": csr_pem(&key).unwrap(),
                      "key_agreement_csr_pem": csr_pem(&ka).unwrap(),
                      "advertise": endpoints}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let first = |field: &str| certificates(body[field].as_str().unwrap())[0].clone();
    Device {
        spiffe_id: body["spiffe_id"].as_str().unwrap().to_owned(),
        key_pkcs8: key.serialize_der(),
        cert: first("certificate_pem"),
        ka_pkcs8: ka.serialize_der(),
        ka_cert: first("key_agreement_certificate_pem"),
        chain_pem: body["ca_chain_pem"].as_str().unwrap().to_owned(),
        key_pem: key.serialize_pem(),
        ka_key_pem: ka.serialize_pem(),
        body,
    }
}

impl Device {
    fn sender(&self) -> SenderKeys {
        self.sender_with_ka_cert(self.ka_cert.clone())
    }

    /// This device's keys, presenting `ka_cert` as its key-agreement certificate.
    fn sender_with_ka_cert(&self, ka_cert: Vec<u8>) -> SenderKeys {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.key_pkcs8, &rng)
            .unwrap();
        let ka = KeyAgreementKey::from_pkcs8_der(&self.ka_pkcs8).unwrap();
        SenderKeys::new(&self.spiffe_id, key, self.cert.clone(), ka, ka_cert).unwrap()
    }

    fn recipient(&self) -> RecipientKeys {
        let ka = KeyAgreementKey::from_pkcs8_der(&self.ka_pkcs8).unwrap();
        RecipientKeys::new(&self.spiffe_id, ka.public_key()).unwrap()
    }

    pub(crate) fn root(&self) -> Vec<u8> {
        certificates(&self.chain_pem).last().unwrap().clone()
    }

    pub(crate) fn issuing_ca(&self) -> Vec<u8> {
        certificates(&self.chain_pem)[0].clone()
    }
}

struct Message {
    seq: u64,
    iat: u64,
    chain: bool,
    payload: Vec<u8>,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Default for Message {
    fn default() -> Self {
        Self {
            seq: 1,
            iat: now() as u64,
            chain: true,
            payload: b"temperature=21.5".to_vec(),
        }
    }
}

fn sealed(from: &SenderKeys, to: &Device, m: &Message) -> Vec<u8> {
    seal(
        &SealRequest {
            sender: from,
            recipient: &to.recipient(),
            data_type: "telemetry",
            session_id: &[7; 16],
            seq: m.seq,
            iat: m.iat,
            exp: m.iat + 120,
            payload: &m.payload,
            include_chain: m.chain,
        },
        &SystemRandom::new(),
        &SharedSecretCache::new(16),
    )
    .unwrap()
}

/// `me` receiving, with the server's current CRL and the certificates `known`.
struct Inbox {
    anchors: TrustAnchors,
    crl: RevocationList,
    me: Device,
    key: KeyAgreementKey,
    cache: SharedSecretCache,
    known: Vec<Vec<u8>>,
}

impl Inbox {
    async fn new(server: &RealServer, me: Device) -> Self {
        let anchors = TrustAnchors::new(&me.chain_pem, &me.root(), "fleet.example").unwrap();
        let crl = RevocationList::from_der(&server.crl().await, &me.issuing_ca()).unwrap();
        let key = KeyAgreementKey::from_pkcs8_der(&me.ka_pkcs8).unwrap();
        Self {
            anchors,
            crl,
            me,
            key,
            cache: SharedSecretCache::new(16),
            known: Vec::new(),
        }
    }

    fn open_at(
        &self,
        bytes: &[u8],
        at: i64,
        replay: &mut ReplayGuard,
        allow: bool,
    ) -> Result<Delivered, Refusal> {
        let known = |hash: &[u8; 32]| {
            self.known
                .iter()
                .find(|der| certificate_sha256(der) == *hash)
                .cloned()
        };
        let policy = |_: &VerifiedDevice, _: &str, _: usize| {
            if allow {
                Ok(())
            } else {
                Err("no policy permits `telemetry` from this sender".to_owned())
            }
        };
        Receiver {
            anchors: &self.anchors,
            crl: Some(&self.crl),
            me: &self.me.spiffe_id,
            my_key: &self.key,
            cache: &self.cache,
            known: &known,
            limits: Limits::default(),
        }
        .receive(bytes, at, replay, &policy)
    }

    fn open(&self, bytes: &[u8], replay: &mut ReplayGuard) -> Result<Delivered, Refusal> {
        self.open_at(bytes, now(), replay, true)
    }
}

fn reason(r: Result<Delivered, Refusal>) -> &'static str {
    match r {
        Ok(d) => panic!("delivered from {}", d.sender.device_id),
        Err(e) => e.reason(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_message_is_delivered_once_even_across_a_restart() {
    let server = RealServer::start(&[]).await;
    let (a, b) = (enroll(&server).await, enroll(&server).await);
    let inbox = Inbox::new(&server, b).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replay.json");
    let mut replay = ReplayGuard::load(path.clone()).unwrap();

    let bytes = sealed(&a.sender(), &inbox.me, &Message::default());
    let delivered = inbox.open(&bytes, &mut replay).unwrap();
    assert_eq!(delivered.payload, b"temperature=21.5");
    assert_eq!(delivered.sender.spiffe_id, a.spiffe_id);
    assert_eq!(delivered.data_type, "telemetry");
    assert_eq!(reason(inbox.open(&bytes, &mut replay)), "replayed");
    // The receiver restarts: the window was saved.
    drop(replay);
    let mut replay = ReplayGuard::load(path).unwrap();
    assert_eq!(reason(inbox.open(&bytes, &mut replay)), "replayed");
    let next = sealed(
        &a.sender(),
        &inbox.me,
        &Message {
            seq: 2,
            ..Message::default()
        },
    );
    inbox.open(&next, &mut replay).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_chain_the_sender_must_be_known() {
    let server = RealServer::start(&[]).await;
    let (a, b) = (enroll(&server).await, enroll(&server).await);
    let mut inbox = Inbox::new(&server, b).await;
    let mut replay = ReplayGuard::in_memory();
    let bytes = sealed(
        &a.sender(),
        &inbox.me,
        &Message {
            chain: false,
            ..Message::default()
        },
    );
    assert_eq!(reason(inbox.open(&bytes, &mut replay)), "unknown_sender");
    inbox.known = vec![a.cert.clone()];
    assert_eq!(reason(inbox.open(&bytes, &mut replay)), "key_agreement");
    inbox.known.push(a.ka_cert.clone());
    inbox.open(&bytes, &mut replay).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attack_is_refused_with_its_reason_and_nothing_is_delivered() {
    let server = RealServer::start(&[]).await;
    let (a, b, c) = (
        enroll(&server).await,
        enroll(&server).await,
        enroll(&server).await,
    );
    let inbox = Inbox::new(&server, b).await;
    let mut replay = ReplayGuard::in_memory();
    let good = sealed(&a.sender(), &inbox.me, &Message::default());

    // Tampered: a byte of the ciphertext (a 21-byte payload: a 37-byte ciphertext, CBOR
    // header 58 25), a byte of the protected header.
    let odd = sealed(
        &a.sender(),
        &inbox.me,
        &Message {
            payload: b"twenty-one byte text!".to_vec(),
            ..Message::default()
        },
    );
    let at = odd.windows(2).position(|w| w == [0x58, 0x25]).unwrap() + 2;
    let mut tampered = odd.clone();
    tampered[at + 5] ^= 1;
    assert_eq!(reason(inbox.open(&tampered, &mut replay)), "bad_signature");
    let mut header = good.clone();
    header[12] ^= 1;
    assert!(inbox.open(&header, &mut replay).is_err());

    // For another device.
    let for_c = sealed(&a.sender(), &c, &Message::default());
    assert_eq!(reason(inbox.open(&for_c, &mut replay)), "wrong_audience");

    // Expired; from the future; oversized.
    let at = now();
    assert_eq!(
        reason(inbox.open_at(&good, at + 120 + 61, &mut replay, true)),
        "not_fresh"
    );
    let future = sealed(
        &a.sender(),
        &inbox.me,
        &Message {
            iat: at as u64 + 3600,
            ..Message::default()
        },
    );
    assert_eq!(reason(inbox.open(&future, &mut replay)), "not_fresh");
    let big = sealed(
        &a.sender(),
        &inbox.me,
        &Message {
            payload: vec![0; 2 * 1024 * 1024],
            ..Message::default()
        },
    );
    assert_eq!(reason(inbox.open(&big, &mut replay)), "too_large");

    // A's envelope presenting C's key-agreement certificate (A has no key for it).
    let claims_c_key = sealed(
        &a.sender_with_ka_cert(c.ka_cert.clone()),
        &inbox.me,
        &Message::default(),
    );
    assert_eq!(
        reason(inbox.open(&claims_c_key, &mut replay)),
        "key_agreement"
    );
    // A key-agreement certificate A made itself, with A's SPIFFE ID.
    let ka_key = rcgen::KeyPair::try_from(a.ka_pkcs8.as_slice()).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(a.spiffe_id.clone().try_into().unwrap())];
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyAgreement];
    let self_made = params.self_signed(&ka_key).unwrap().der().to_vec();
    let self_signed = sealed(
        &a.sender_with_ka_cert(self_made),
        &inbox.me,
        &Message::default(),
    );
    assert_eq!(
        reason(inbox.open(&self_signed, &mut replay)),
        "key_agreement"
    );

    // Ingress policy says no: refused, and the window is not advanced by it.
    assert_eq!(
        reason(inbox.open_at(&good, now(), &mut replay, false)),
        ProblemCode::PolicyDenied.as_str()
    );
    // After all of that, the good message still opens, once.
    inbox.open(&good, &mut replay).unwrap();
    assert_eq!(reason(inbox.open(&good, &mut replay)), "replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_sender_another_fleet_and_a_stale_crl_are_refused() {
    let server = RealServer::start(&["--crl-validity", "1h"]).await;
    let other = RealServer::start(&[]).await;
    let (a, b) = (enroll(&server).await, enroll(&server).await);
    let stranger = enroll(&other).await;
    let mut replay = ReplayGuard::in_memory();

    // A device of another CA, even one with the same trust domain name.
    let inbox = Inbox::new(&server, b).await;
    let from_stranger = sealed(&stranger.sender(), &inbox.me, &Message::default());
    assert_eq!(
        reason(inbox.open(&from_stranger, &mut replay)),
        "untrusted_sender"
    );
    // A CRL past its nextUpdate (an hour here) accepts nothing, though the certificates are
    // still valid.
    let good = sealed(&a.sender(), &inbox.me, &Message::default());
    let later = sealed(
        &a.sender(),
        &inbox.me,
        &Message {
            iat: now() as u64 + 2 * 3600,
            ..Message::default()
        },
    );
    assert_eq!(
        reason(inbox.open_at(&later, now() + 2 * 3600, &mut replay, true)),
        "no_current_crl"
    );

    // A is revoked; with the new CRL its messages are refused.
    let id = a.spiffe_id.rsplit('/').next().unwrap();
    let (status, _) = server
        .post(
            &format!("/v1/devices/{id}/revoke"),
            json!({"reason": "stolen"}),
        )
        .await;
    assert_eq!(status, 200);
    let inbox = Inbox::new(&server, inbox.me).await;
    assert_eq!(reason(inbox.open(&good, &mut replay)), "revoked");
}

impl Device {
    pub(crate) fn device_id(&self) -> &str {
        self.body["device_id"].as_str().unwrap()
    }

    pub(crate) fn credentials(&self) -> Credentials<'_> {
        Credentials {
            spiffe_id: &self.spiffe_id,
            key_pem: &self.key_pem,
            cert_pem: self.body["certificate_pem"].as_str().unwrap(),
            ka_key_pem: &self.ka_key_pem,
            ka_cert_pem: self.body["key_agreement_certificate_pem"].as_str().unwrap(),
        }
    }

    /// The server's API as this device calls it over mutual TLS.
    fn api(&self, server: &RealServer) -> (HttpApi, ClientIdentity) {
        let api = HttpApi::new(&server.base);
        let root = ::pem::encode(&::pem::Pem::new("CERTIFICATE", self.root()));
        api.trust_root(&root).unwrap();
        let identity = ClientIdentity {
            cert_pem: format!(
                "{}{}",
                self.body["certificate_pem"].as_str().unwrap(),
                ::pem::encode(&::pem::Pem::new("CERTIFICATE", self.issuing_ca()))
            ),
            key_pem: self.key_pem.clone(),
        };
        (api, identity)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_seals_to_what_the_directory_says_and_the_receiver_opens_it() {
    let server = RealServer::start(&[]).await;
    let (a, b, c) = (
        enroll(&server).await,
        enroll(&server).await,
        enroll(&server).await,
    );
    let anchors = TrustAnchors::new(&a.chain_pem, &a.root(), "fleet.example").unwrap();
    let (api, identity) = a.api(&server);
    let record = api.peer(&identity, b.device_id()).await.unwrap();
    let peer = verify_peer_record(&anchors, &record, b.device_id(), now()).unwrap();
    assert_eq!(peer.device.spiffe_id, b.spiffe_id);

    let outbox = Outbox::new(&a.credentials()).unwrap();
    let first = outbox
        .seal(&peer, "telemetry", b"t=1", now() as u64, true)
        .unwrap();
    let second = outbox
        .seal(&peer, "telemetry", b"t=2", now() as u64, false)
        .unwrap();
    let mut inbox = Inbox::new(&server, b).await;
    let mut replay = ReplayGuard::in_memory();
    assert_eq!(inbox.open(&first, &mut replay).unwrap().payload, b"t=1");
    // The second, without certificates, opens once the sender is known.
    inbox.known = vec![a.cert.clone(), a.ka_cert.clone()];
    assert_eq!(inbox.open(&second, &mut replay).unwrap().payload, b"t=2");

    // A directory answer that does not fit the device asked for is refused: C's
    // certificates under B's name, or B's device certificate with C's key-agreement one.
    let c_record = api.peer(&identity, c.device_id()).await.unwrap();
    assert!(verify_peer_record(&anchors, &c_record, inbox.me.device_id(), now()).is_err());
    let mut mixed = record.clone();
    mixed.key_agreement_certificate_pem = c_record.key_agreement_certificate_pem.clone();
    assert!(verify_peer_record(&anchors, &mixed, inbox.me.device_id(), now()).is_err());
    // An unknown device, and a path that is not a device id, are errors, not panics.
    let unknown = api.peer(&identity, &"0".repeat(32)).await.unwrap_err();
    assert!(matches!(unknown, ApiError::Problem { .. }), "{unknown:?}");
    assert!(api.peer(&identity, "../etc").await.is_err());
}

mod delivery {
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
            .unwrap();
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
            .unwrap();
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
}

mod workload {
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
        let anchors =
            TrustAnchors::new(&device.chain_pem, &device.root(), "fleet.example").unwrap();
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
        let a =
            enroll_advertising(&server, &[&format!("https://{}", la.local_addr().unwrap())]).await;
        let b =
            enroll_advertising(&server, &[&format!("https://{}", lb.local_addr().unwrap())]).await;
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
}
