//! Enrollment as a fleet makes it (issue 14): every device on new TLS connections, as
//! `vouch-agent` does (a new client per call: the trust-bundle fetch, then the enrollment,
//! HTTP/2 where ALPN offers it), against the cryptographic floor of that work measured in
//! the same run.
//!
//! ```text
//! cargo bench -p vouch-ca --bench enroll_fresh            # 5,000 enrollments
//! VOUCH_BENCH_N=300 cargo bench -p vouch-ca --bench enroll_fresh
//! ```
//!
//! 1. Floor, on one core: what the server must compute per enrollment — two TLS 1.3
//!    handshakes' asymmetric crypto (an X25519 key pair and agreement, and an ECDSA P-256
//!    signature with the server's key, each) plus the CSR check (parse + ECDSA verify) and the
//!    certificate signature.
//! 2. End to end: a real server on a loopback port with a SQLite registry; `VOUCH_BENCH_N`
//!    devices (`VOUCH_BENCH_CONCURRENCY` at a time) each fetch the trust bundle on a new
//!    connection without trusting it (then pin it by hash, as the agent does), and enroll on
//!    another new connection that trusts only that root. The server and the load generator
//!    run on runtimes of their own and the CPU of each is read per thread, so the server's
//!    CPU per enrollment is reported apart from the generator's, with the capacity it
//!    implies on this machine's cores.
//!
//! 3. TPM enrollment the same way (issue 14, target 3): per device, the trust bundle, then
//!    `POST /v1/enroll/tpm` with its EK and AK, credential activation answered in software
//!    (`vouch_attestor::testing::SoftwareTpmIdentity`: the TPM's own computation, without a
//!    TPM's latency), and `POST /v1/enroll` with the recovered secret and a CSR: three new
//!    connections. Its floor adds a third handshake and MakeCredential (RSA-OAEP to the EK).
//!
//! Exits non-zero if any enrollment fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::{
    authority, csr, env_usize, issue_cost, per_op, result, runtime, serve_config, timed,
    LOAD_THREADS,
};

use ring::signature::KeyPair;
use serde_json::{json, Value};
use std::sync::Arc;
use vouch_attestor::testing::{rsa_ek_key, SoftwareTpmIdentity};
use vouch_ca::api::Settings;
use vouch_ca::app;
use vouch_ca::clock::{Clock, SystemClock};
use vouch_ca::datadir::{DataDir, DataFile};
use vouch_ca::ids::TrustDomain;
use vouch_ca::pki::authority::Authority;
use vouch_ca::tokens::Role;

/// The floor's parts, seconds each: (handshake crypto, CSR check + certificate signature).
fn floor(ca: &Authority, csrs: &[String], td: &TrustDomain) -> (f64, f64) {
    use ring::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, X25519};
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let server_key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let peer = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
    let peer_public = peer.compute_public_key().unwrap().as_ref().to_vec();
    let transcript = [0x5au8; 130];
    let handshake = per_op(|_| {
        let mine = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
        std::hint::black_box(mine.compute_public_key().unwrap());
        agree_ephemeral(mine, &UnparsedPublicKey::new(&X25519, &peer_public), |k| {
            std::hint::black_box(k.len())
        })
        .unwrap();
        std::hint::black_box(server_key.sign(&rng, &transcript).unwrap());
    });
    std::hint::black_box(server_key.public_key());
    let issue = issue_cost(ca, csrs, td);
    (handshake, issue)
}

/// A new client trusting only `root` (PEM), as the agent builds for each call.
fn pinned_client(root: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root).unwrap())
        .build()
        .unwrap()
}

/// First contact, as the agent makes it: the trust bundle from a server not yet trusted, on
/// a new connection, pinned by the token's hash.
async fn trust_bundle(base: &str, ca_sha256: &str) -> Vec<u8> {
    let first = reqwest::Client::builder()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let bundle = first
        .get(format!("{base}/v1/trust-bundle"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let root = pem::parse(&bundle).unwrap();
    let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, root.contents()));
    assert_eq!(sha, ca_sha256, "the trust bundle is the token's CA");
    bundle.to_vec()
}

/// One device's enrollment as the agent makes it: two new clients, two new connections.
async fn enroll_like_an_agent(base: &str, token: &str, csr: &str, ca_sha256: &str) {
    let bundle = trust_bundle(base, ca_sha256).await;
    let r = pinned_client(&bundle)
        .post(format!("{base}/v1/enroll"))
        .json(&json!({"token": token, "csr_pem": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let _ = r.bytes().await.unwrap();
}

/// One TPM device's enrollment as the agent makes it: three new clients and connections,
/// credential activation in between.
async fn enroll_tpm_like_an_agent(
    base: &str,
    token: &str,
    csr: &str,
    ca_sha256: &str,
    device: &SoftwareTpmIdentity,
) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let bundle = trust_bundle(base, ca_sha256).await;
    let r = pinned_client(&bundle)
        .post(format!("{base}/v1/enroll/tpm"))
        .json(
            &json!({"token": token, "ek_public": b64.encode(&device.ak.ek_public),
                      "ak_public": b64.encode(&device.ak.ak_public)}),
        )
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 201, "{body}");
    let challenge: vouch_proto::enroll::TpmChallenge = serde_json::from_str(&body).unwrap();
    let (id_object, encrypted_secret) = challenge.credential().unwrap();
    let secret = device.activate(&id_object, &encrypted_secret).unwrap();
    let r = pinned_client(&bundle)
        .post(format!("{base}/v1/enroll"))
        .json(&json!({"token": token, "csr_pem": csr,
                      "tpm": {"activation_id": challenge.activation_id, "secret": b64.encode(&secret)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let _ = r.bytes().await.unwrap();
}

fn main() {
    let n = env_usize("VOUCH_BENCH_N", 5_000);
    let concurrency = env_usize("VOUCH_BENCH_CONCURRENCY", 64).min(n).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let server_runtime = runtime("vouch-server");
    let load_runtime = runtime(LOAD_THREADS);

    let dir = tempfile::tempdir().unwrap();
    let data_dir = DataDir::new(dir.path().join("data"));
    let td = TrustDomain::parse("bench.example").unwrap();
    app::init_ca(&data_dir, &td, SystemClock.now()).unwrap();
    eprintln!("preparing {n} CSRs...");
    let csrs: Vec<String> = (0..n).map(|_| csr()).collect();
    let ca = authority(&data_dir);
    let (handshake, issue) = floor(&ca, &csrs, &td);
    let floor_per_enrollment = 2.0 * handshake + issue;
    let make_credential = {
        let sample = SoftwareTpmIdentity::new(rsa_ek_key(), u64::MAX);
        let ek = vouch_attestor::tpm::Public::parse(&sample.ak.ek_public).unwrap();
        let name = sample.ak.ak_name();
        let rng = ring::rand::SystemRandom::new();
        per_op(|_| {
            std::hint::black_box(
                vouch_attestor::credential::make_credential(&ek, &name, &[7u8; 32], &rng).unwrap(),
            );
        })
    };
    let tpm_floor = 3.0 * handshake + make_credential + issue;

    let server = server_runtime.block_on(async {
        // Software TPMs have no manufacturer EK certificate.
        let config = serve_config(
            &data_dir,
            Settings {
                tpm_trust_on_first_use: true,
                ..Settings::default()
            },
        );
        app::start(&config, Arc::new(SystemClock)).await.unwrap()
    });
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let root = std::fs::read(data_dir.file(DataFile::RootCert)).unwrap();
    let admin = app::mint_operator_token(&data_dir, Role::Admin, "bench", 3600, SystemClock.unix())
        .unwrap();

    let tpm_n = env_usize("VOUCH_BENCH_TPM_N", n / 2).max(1);
    eprintln!("preparing {tpm_n} software TPM identities...");
    let ek_keys: Vec<_> = (0..4).map(|_| rsa_ek_key()).collect();
    let identities: Vec<SoftwareTpmIdentity> = (0..tpm_n)
        .map(|i| SoftwareTpmIdentity::new(ek_keys[i % ek_keys.len()].clone(), i as u64))
        .collect();
    let tpm_csrs: Vec<String> = (0..tpm_n).map(|_| csr()).collect();

    let ((rate, split), (tpm_rate, tpm_split)) = load_runtime.block_on(async {
        let operator = pinned_client(&root);
        let tokens = |count: usize, zone: &'static str| {
            let (operator, base, admin) = (operator.clone(), base.clone(), admin.clone());
            async move {
                let mut tokens = Vec::with_capacity(count);
                let mut ca_sha256 = String::new();
                for _ in 0..count {
                    let r: Value = operator
                        .post(format!("{base}/v1/bootstrap-tokens"))
                        .bearer_auth(&admin)
                        .json(&json!({"zone": zone}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    ca_sha256 = r["ca_sha256"].as_str().unwrap().to_owned();
                    tokens.push(r["token"].as_str().unwrap().to_owned());
                }
                (tokens, Arc::new(ca_sha256))
            }
        };
        eprintln!("creating {n} bootstrap tokens...");
        let (csr_tokens, ca_sha256) = tokens(n, "bench").await;
        eprintln!("enrolling {n} devices, {concurrency} at a time, each on new connections...");
        let work: Vec<(String, String)> = csr_tokens.into_iter().zip(csrs).collect();
        let (b, sha) = (base.clone(), ca_sha256.clone());
        let csr_phase = timed(work, concurrency, move |work, i| {
            let (b, sha) = (b.clone(), sha.clone());
            async move {
                let (token, csr) = &work[i];
                enroll_like_an_agent(&b, token, csr, &sha).await;
            }
        })
        .await;

        eprintln!("creating {tpm_n} bootstrap tokens for TPM devices...");
        let (tpm_tokens, ca_sha256) = tokens(tpm_n, "sensors").await;
        eprintln!(
            "enrolling {tpm_n} TPM devices (credential activation), {concurrency} at a time..."
        );
        let work: Vec<(String, String, SoftwareTpmIdentity)> = tpm_tokens
            .into_iter()
            .zip(tpm_csrs)
            .zip(identities)
            .map(|((t, c), d)| (t, c, d))
            .collect();
        let b = base.clone();
        let tpm_phase = timed(work, concurrency, move |work, i| {
            let (b, sha) = (b.clone(), ca_sha256.clone());
            async move {
                let (token, csr, device) = &work[i];
                enroll_tpm_like_an_agent(&b, token, csr, &sha, device).await;
            }
        })
        .await;
        (csr_phase, tpm_phase)
    });
    let counts = server_runtime
        .block_on(server.state.registry.counts())
        .unwrap();
    assert_eq!(
        counts.devices,
        (n + tpm_n) as i64,
        "every enrollment is in the registry"
    );
    server_runtime.block_on(server.stop());

    println!(
        "enroll_fresh benchmark ({cores} cores, SQLite, each device on new TLS connections: trust bundle + enrollment, {concurrency} at a time, N={n})"
    );
    println!(
        "  floor on one core: TLS 1.3 handshake crypto {:.0} us (X25519 + ECDSA P-256 sign) x 2 + CSR check and signature {:.0} us = {:.0} us per enrollment",
        handshake * 1e6,
        issue * 1e6,
        floor_per_enrollment * 1e6
    );
    println!(
        "  end-to-end enrollments:                {rate:.0} /s (load generator on the same cores)"
    );
    if let Some((load, server_cpu)) = split {
        println!(
            "  CPU per enrollment: server {:.0} us = {:.1}x the floor (capacity {:.0} /s on {cores} cores), load generator {:.0} us",
            server_cpu * 1e6,
            server_cpu / floor_per_enrollment,
            cores as f64 / server_cpu,
            load * 1e6
        );
        result(
            "enroll_fresh",
            "server CPU per enrollment, each device on new TLS connections (trust bundle + enroll)",
            &format!(
                "{:.0} us ({:.0} /s on {cores} cores)",
                server_cpu * 1e6,
                cores as f64 / server_cpu
            ),
            &format!(
                "{:.0} us: 2 handshakes' crypto + CSR check + signature",
                floor_per_enrollment * 1e6
            ),
            &format!("{:.1}x", server_cpu / floor_per_enrollment),
            &format!(
                "<= 2x the floor: {}",
                if server_cpu <= 2.0 * floor_per_enrollment {
                    "met"
                } else {
                    "NOT met"
                }
            ),
        );
    }
    result(
        "enroll_fresh",
        "enrollments end to end on new connections (load generator on the same cores)",
        &format!("{rate:.0} /s"),
        &format!(
            "{:.0} /s floor ceiling on {cores} cores",
            cores as f64 / floor_per_enrollment
        ),
        &format!("{:.1}%", 100.0 * rate * floor_per_enrollment / cores as f64),
        "-",
    );
    println!(
        "  TPM enrollment floor: 3 handshakes + MakeCredential {:.0} us + CSR check and signature = {:.0} us",
        make_credential * 1e6,
        tpm_floor * 1e6
    );
    println!("  end-to-end TPM enrollments (credential activation round trip): {tpm_rate:.0} /s");
    if let Some((load, server_cpu)) = tpm_split {
        println!(
            "  CPU per TPM enrollment: server {:.0} us = {:.1}x the floor (capacity {:.0} /s on {cores} cores), load generator {:.0} us",
            server_cpu * 1e6,
            server_cpu / tpm_floor,
            cores as f64 / server_cpu,
            load * 1e6
        );
        result(
            "enroll_fresh",
            "server CPU per TPM enrollment (trust bundle, enroll/tpm, activation, enroll; new connections)",
            &format!("{:.0} us ({:.0} /s on {cores} cores)", server_cpu * 1e6, cores as f64 / server_cpu),
            &format!("{:.0} us: 3 handshakes' crypto + MakeCredential + CSR check + signature", tpm_floor * 1e6),
            &format!("{:.1}x", server_cpu / tpm_floor),
            "-",
        );
    }
    result(
        "enroll_fresh",
        "TPM enrollments end to end (credential activation round trip, load generator on the same cores)",
        &format!("{tpm_rate:.0} /s"),
        &format!("{:.0} /s floor ceiling on {cores} cores", cores as f64 / tpm_floor),
        &format!("{:.1}%", 100.0 * tpm_rate * tpm_floor / cores as f64),
        &format!(">= 1,000/s: {}", if tpm_rate >= 1000.0 { "met" } else { "NOT met" }),
    );
}
