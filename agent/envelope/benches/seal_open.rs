//! Envelope throughput, seal + open, against the raw cost of the one ECDSA P-256 signature and
//! the one verification every envelope needs, measured in the same run.
//!
//! ```text
//! cargo bench -p vouch-envelope --bench seal_open
//! VOUCH_BENCH_QUICK=1 cargo bench -p vouch-envelope --bench seal_open   # smoke run
//! VOUCH_BENCH_N=5000 VOUCH_BENCH_ROUNDS=9 cargo bench -p vouch-envelope --bench seal_open
//! ```
//!
//! Two devices (sender A, receiver B) are enrolled by a throwaway CA made with rcgen, each with
//! a device certificate and a key-agreement certificate. For 1 KiB and 64 KiB payloads, on one
//! core:
//!
//! 1. The floor: ring ECDSA P-256 SHA-256 (`FIXED`) sign + verify of a message as long as the
//!    envelope's signed bytes (its `Sig_structure`, so the SHA-256 of the payload is in it),
//!    and, labelled apart, of a 32-byte message (the curve operations alone).
//! 2. Seal, open, and seal + open in a loop. Open is the receiver's whole path in the steady
//!    state between two peers: parse, verify the signature, audience, freshness, decrypt with a
//!    warm `SharedSecretCache`. The sender's certificate chain is the caller's and not run
//!    here (the agent caches it per certificate).
//!
//! Each figure is the best of `VOUCH_BENCH_ROUNDS` samples of `VOUCH_BENCH_N` operations, the
//! samples of the floor and of the envelope interleaved so that both see the same machine.
//! The target is seal + open at >= 70% of the floor at the same size. Exits non-zero if any
//! open fails or gives back other bytes than were sealed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use coset::{CoseSign1, TaggedCborSerializable};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use std::hint::black_box;
use std::time::Instant;
use vouch_envelope::{
    seal, Envelope, KeyAgreementKey, RecipientKeys, RecipientOpen, SealRequest, SenderKeys,
    SharedSecretCache,
};

const MAX_LEN: usize = 256 * 1024;
const SKEW: u64 = 60;
const MAX_LIFETIME: u64 = 600;
const IAT: u64 = 1_800_000_000;
const EXP: u64 = IAT + 300;
const NOW: u64 = IAT + 10;
const SESSION: [u8; 16] = *b"bench-session-01";
const DATA_TYPE: &str = "telemetry.temperature";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fresh P-256 key, PKCS#8 DER, as ring makes it (readable by ring, rcgen and p256).
fn pkcs8(rng: &SystemRandom) -> Vec<u8> {
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng)
        .unwrap()
        .as_ref()
        .to_vec()
}

/// A device as the CA enrolls it: a signing key with its device certificate and a separate
/// key-agreement key with its key-agreement certificate, both naming the SPIFFE ID.
struct Device {
    spiffe_id: String,
    device_key: Vec<u8>,
    device_cert: Vec<u8>,
    ka_key: Vec<u8>,
    ka_cert: Vec<u8>,
}

impl Device {
    fn enroll(ca: &rcgen::Certificate, ca_key: &KeyPair, name: &str, rng: &SystemRandom) -> Self {
        let spiffe_id = format!("spiffe://fleet.example/device/{name}");
        let issue = |key: &[u8], usage: KeyUsagePurpose| {
            let key = KeyPair::try_from(key).unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, spiffe_id.as_str());
            params.subject_alt_names = vec![SanType::URI(spiffe_id.clone().try_into().unwrap())];
            params.key_usages = vec![usage];
            params.signed_by(&key, ca, ca_key).unwrap().der().to_vec()
        };
        let (device_key, ka_key) = (pkcs8(rng), pkcs8(rng));
        Device {
            device_cert: issue(&device_key, KeyUsagePurpose::DigitalSignature),
            ka_cert: issue(&ka_key, KeyUsagePurpose::KeyAgreement),
            spiffe_id,
            device_key,
            ka_key,
        }
    }

    fn signing_key(&self) -> EcdsaKeyPair {
        EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &self.device_key,
            &SystemRandom::new(),
        )
        .unwrap()
    }

    fn ka(&self) -> KeyAgreementKey {
        KeyAgreementKey::from_pkcs8_der(&self.ka_key).unwrap()
    }
}

/// The sender's side between two peers: keys built once, a warm shared-secret cache.
struct Sender {
    keys: SenderKeys,
    to: RecipientKeys,
    cache: SharedSecretCache,
    rng: SystemRandom,
}

impl Sender {
    fn seal(&self, seq: u64, payload: &[u8]) -> Vec<u8> {
        seal(
            &SealRequest {
                sender: &self.keys,
                recipient: &self.to,
                data_type: DATA_TYPE,
                session_id: &SESSION,
                seq,
                iat: IAT,
                exp: EXP,
                payload,
                include_chain: false,
            },
            &self.rng,
            &self.cache,
        )
        .unwrap()
    }
}

/// The receiver's side: its own key, and what it holds about the sender once the sender's
/// certificates were verified (device public key, key-agreement certificate and public key).
struct Receiver {
    spiffe_id: String,
    ka: KeyAgreementKey,
    sender_device_public_key: Vec<u8>,
    sender_ka_cert: Vec<u8>,
    sender_ka_public_key: Vec<u8>,
    cache: SharedSecretCache,
}

impl Receiver {
    /// Parse, signature, audience, freshness, decrypt: the order the crate requires.
    fn open(&self, bytes: &[u8]) -> Result<Vec<u8>, vouch_envelope::EnvelopeError> {
        let signed =
            Envelope::parse(bytes, MAX_LEN)?.verify_signature(&self.sender_device_public_key)?;
        signed.check_audience(&self.spiffe_id)?;
        signed.check_fresh(NOW, SKEW, MAX_LIFETIME)?;
        signed.decrypt(
            &RecipientOpen {
                my_spiffe_id: &self.spiffe_id,
                my_key: &self.ka,
                sender_key_agreement_certificate: &self.sender_ka_cert,
                sender_key_agreement_public_key: &self.sender_ka_public_key,
            },
            &self.cache,
        )
    }
}

fn open_or_exit(receiver: &Receiver, bytes: &[u8], payload: &[u8]) {
    match receiver.open(bytes) {
        Ok(plaintext) if plaintext == payload => {}
        Ok(_) => {
            eprintln!("open gave back other bytes than were sealed");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("open failed: {e}");
            std::process::exit(1);
        }
    }
}

/// Operations per second of `n` calls of `op`.
fn rate(n: usize, mut op: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        op(i);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The best rate of each measurement over `rounds` interleaved samples.
fn best_of<const M: usize>(rounds: usize, mut sample: impl FnMut() -> [f64; M]) -> [f64; M] {
    let mut best = [0.0f64; M];
    for _ in 0..rounds {
        for (b, r) in best.iter_mut().zip(sample()) {
            *b = b.max(r);
        }
    }
    best
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn main() {
    let quick = std::env::var("VOUCH_BENCH_QUICK").is_ok();
    let n = env_usize("VOUCH_BENCH_N", if quick { 100 } else { 2_000 });
    let rounds = env_usize("VOUCH_BENCH_ROUNDS", if quick { 1 } else { 5 }).max(1);

    let rng = SystemRandom::new();
    let ca_key = KeyPair::try_from(pkcs8(&rng).as_slice()).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Vouch bench issuing CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let a = Device::enroll(&ca, &ca_key, "sensor-a", &rng);
    let b = Device::enroll(&ca, &ca_key, "gateway-b", &rng);

    let sender = Sender {
        keys: SenderKeys::new(
            a.spiffe_id.clone(),
            a.signing_key(),
            a.device_cert.clone(),
            a.ka(),
            a.ka_cert.clone(),
        )
        .unwrap(),
        to: RecipientKeys::new(b.spiffe_id.clone(), b.ka().public_key()).unwrap(),
        cache: SharedSecretCache::new(16),
        rng: SystemRandom::new(),
    };
    let receiver = Receiver {
        spiffe_id: b.spiffe_id.clone(),
        ka: b.ka(),
        sender_device_public_key: a.signing_key().public_key().as_ref().to_vec(),
        sender_ka_cert: a.ka_cert.clone(),
        sender_ka_public_key: a.ka().public_key().to_vec(),
        cache: SharedSecretCache::new(16),
    };

    // The floor's own key pair, on the same curve, hash and implementation as the envelope's.
    let floor_key = a.signing_key();
    let floor_public = UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_FIXED,
        floor_key.public_key().as_ref().to_vec(),
    );
    let sign_verify = |message: &[u8]| {
        let signature = floor_key.sign(&rng, message).unwrap();
        floor_public
            .verify(message, signature.as_ref())
            .unwrap_or_else(|_| {
                eprintln!("the floor's own signature does not verify");
                std::process::exit(1);
            });
    };

    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "envelope seal + open on one core ({cores} cores present), best of {rounds} x {n} ops; \
         floor = ring ECDSA P-256 SHA-256 sign + verify"
    );
    println!(
        "{:>8} {:>10} {:>12} {:>12} {:>10} {:>10} {:>12} {:>12} {:>12}",
        "payload",
        "signed B",
        "floor@32B/s",
        "floor@size/s",
        "seal/s",
        "open/s",
        "seal+open/s",
        "vs floor@sz",
        "vs floor@32"
    );
    let mut met = true;
    for len in [1024usize, 64 * 1024] {
        let payload = pattern(len);
        // Warm both shared-secret caches and check the path once before timing.
        let sample = sender.seal(0, &payload);
        open_or_exit(&receiver, &sample, &payload);
        let signed_bytes = CoseSign1::from_tagged_slice(&sample).unwrap().tbs_data(b"");
        let sealed: Vec<Vec<u8>> = (0..n.min(64))
            .map(|i| sender.seal(i as u64, &payload))
            .collect();
        let tiny = [0x5au8; 32];

        let [floor_tiny, floor_sized, seal_rate, open_rate, round_rate] = best_of(rounds, || {
            [
                rate(n, |_| sign_verify(black_box(&tiny))),
                rate(n, |_| sign_verify(black_box(&signed_bytes))),
                rate(n, |i| {
                    black_box(sender.seal(i as u64, black_box(&payload)));
                }),
                rate(n, |i| {
                    let bytes = &sealed[i % sealed.len()];
                    open_or_exit(&receiver, black_box(bytes), &payload);
                }),
                rate(n, |i| {
                    let bytes = sender.seal(i as u64, black_box(&payload));
                    open_or_exit(&receiver, black_box(&bytes), &payload);
                }),
            ]
        });
        let (vs_sized, vs_tiny) = (round_rate / floor_sized, round_rate / floor_tiny);
        println!(
            "RESULT\tseal_open\tenvelope seal + open, {} KiB payload, one core\t{round_rate:.0} /s\t{floor_sized:.0} /s ECDSA sign + verify of the same signed bytes\t{:.1}%\t>= 70%: {}",
            len / 1024,
            100.0 * vs_sized,
            if vs_sized >= 0.70 { "met" } else { "NOT met" }
        );
        met &= vs_sized >= 0.70;
        println!(
            "{:>6} K {:>10} {:>12.0} {:>12.0} {:>10.0} {:>10.0} {:>12.0} {:>11.1}% {:>11.1}%",
            len / 1024,
            signed_bytes.len(),
            floor_tiny,
            floor_sized,
            seal_rate,
            open_rate,
            round_rate,
            100.0 * vs_sized,
            100.0 * vs_tiny
        );
    }
    if !quick {
        // Reported, not asserted: a timing is a figure to read, not a pass/fail test.
        println!(
            "target (seal + open >= 70% of the floor at the same signed size): {}",
            if met { "met" } else { "NOT met" }
        );
    }
}
