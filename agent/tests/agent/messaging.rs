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
        .unwrap()
        .envelope;
    let second = outbox
        .seal(&peer, "telemetry", b"t=2", now() as u64, false)
        .unwrap()
        .envelope;
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

mod delivery;
mod workload;
