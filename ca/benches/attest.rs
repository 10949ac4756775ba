//! Quote verification throughput: the raw verifier against the whole attestation over the API
//! on SQLite, measured in the same run.
//!
//! ```text
//! cargo bench -p vouch-ca --bench attest            # 20,000 attestations
//! VOUCH_BENCH_N=2000 cargo bench -p vouch-ca --bench attest
//! ```
//!
//! 1. Raw: one verification as the server does it (parse the quote, signature and key, check
//!    the ECDSA P-256 signature, the qualified signer, nonce and selection, hash the PCR
//!    values, replay the event log, meet the reference values), in a loop on one core; the
//!    machine's ceiling is that rate times the number of cores.
//! 2. End to end: a real server on a loopback port with a SQLite registry and reference
//!    values loaded from a policy directory; devices enrolled with software attestation keys
//!    (`vouch_attestor::testing::SoftwareAk`: a real TPM would measure the TPM, ~9 ms a quote
//!    on swtpm) each attest repeatedly over their own mTLS keep-alive connection: challenge,
//!    quote (signed in the load generator), submit. Each attestation is two HTTPS requests and
//!    three registry writes (nonce issued, nonce used, result and history).
//!
//! 3. The transport floor: two `GET /healthz` per attestation over the same connections, to
//!    show how much of the machine HTTPS and the load generator take by themselves.
//!
//! Exits non-zero if any attestation does not pass.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::{cpu_seconds, env_usize};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vouch_attestor::quote::{verify_quote, Evidence, Expected};
use vouch_attestor::reference::{evaluate, ReferenceValues};
use vouch_attestor::testing::{
    boot_events, ek_qualified_name, expected_pcrs, policy_dir_with_references, SoftwareAk, QUOTED,
};
use vouch_attestor::tpm::{PcrSelection, Public};
use vouch_ca::api::Settings;
use vouch_ca::app::{self, PolicyConfig, ServeConfig};
use vouch_ca::clock::{Clock, SystemClock};
use vouch_ca::datadir::{DataDir, DataFile};
use vouch_ca::ids::{system_rng, DeviceId, Serial, TrustDomain, Zone};
use vouch_ca::pki::authority::{Authority, CaFiles};
use vouch_ca::pki::profile::{issue_device_certificate, DeviceCertificateSpec};
use vouch_ca::store::{NewActivation, NewCertificate, NewDevice, TpmEnrollment};
use vouch_ca::tokens::Role;

/// Seconds per verification (everything the server checks in a quote) on one core.
fn raw_cost(references: &ReferenceValues, log: &[u8]) -> f64 {
    let soft = SoftwareAk::new();
    let (ak, ek) = (
        Public::parse(&soft.ak_public).unwrap(),
        Public::parse(&soft.ek_public).unwrap(),
    );
    let parent = ek_qualified_name(&ek);
    let values = expected_pcrs("fw-1", "cfg-a");
    let nonce = [7u8; 32];
    let (attest, signature) = soft.quote(&nonce, &values);
    let class = &references.device_classes["sensor"];
    let mut ops = 0usize;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) || ops < 1000 {
        // As the server does it: the keys come from the registry row as bytes.
        let ak = Public::parse(&ak.raw).unwrap();
        let selection = PcrSelection::sha256(&QUOTED);
        let verified = verify_quote(
            &Expected {
                ak: &ak,
                parent_qualified_name: &parent,
                nonce: &nonce,
                selection: &selection,
            },
            &Evidence {
                attest: &attest,
                signature: &signature,
                pcr_values: &values,
                event_log: Some(log),
            },
        )
        .unwrap();
        assert_eq!(evaluate(class, &verified).unwrap(), "fw-1");
        ops += 1;
    }
    start.elapsed().as_secs_f64() / ops as f64
}

/// A device with a software AK bound at enrollment, and its mTLS identity (PEM).
struct Device {
    ak: SoftwareAk,
    identity: Vec<u8>,
}

fn main() {
    let n = env_usize("VOUCH_BENCH_N", 20_000);
    let devices = env_usize("VOUCH_BENCH_DEVICES", 256).min(n).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let data_dir = DataDir::new(dir.path().join("data"));
    let td = TrustDomain::parse("bench.example").unwrap();
    app::init_ca(&data_dir, &td, SystemClock.now()).unwrap();
    let policies = dir.path().join("policies");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    policy_dir_with_references(&examples, &policies, &[("fw-1", "fw-1", "cfg-a")]);
    let references =
        ReferenceValues::parse(&std::fs::read(policies.join("reference-values.json")).unwrap())
            .unwrap();
    let log = vouch_attestor::eventlog::write_log(&boot_events("fw-1", "cfg-a"));
    let raw = raw_cost(&references, &log);
    let raw_per_core = 1.0 / raw;
    let ceiling = raw_per_core * cores as f64;

    let files = CaFiles {
        root_cert_pem: std::fs::read_to_string(data_dir.file(DataFile::RootCert)).unwrap(),
        root_key_pem: None,
        issuing_cert_pem: std::fs::read_to_string(data_dir.file(DataFile::IssuingCert)).unwrap(),
        issuing_key_pem: std::fs::read_to_string(data_dir.file(DataFile::IssuingKey)).unwrap(),
    };
    let ca = Authority::load(&files).unwrap();

    let (rate, cpu, floor) = runtime.block_on(async {
        let config = ServeConfig {
            data_dir: data_dir.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: app::default_database_url(&data_dir),
            hostnames: vec!["127.0.0.1".into()],
            max_connections: 8,
            settings: Settings::default(),
            policy: PolicyConfig {
                dir: Some(policies.clone()),
                shadow_dir: None,
                poll: None,
            },
            sweep_every: Duration::from_secs(3600),
        };
        let server = app::start(&config, Arc::new(SystemClock)).await.unwrap();
        let base = format!("https://127.0.0.1:{}", server.addr.port());
        let root = std::fs::read(data_dir.file(DataFile::RootCert)).unwrap();
        let admin_client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&root).unwrap())
            .build()
            .unwrap();
        let admin =
            app::mint_operator_token(&data_dir, Role::Admin, "bench", 3600, SystemClock.unix())
                .unwrap();

        eprintln!("enrolling {devices} devices with software attestation keys...");
        let rng = system_rng();
        let zone = Zone::parse("sensors").unwrap();
        let mut fleet = Vec::with_capacity(devices);
        for _ in 0..devices {
            let r = admin_client
                .post(format!("{base}/v1/bootstrap-tokens"))
                .bearer_auth(&admin)
                .json(&json!({"zone": "sensors", "device_class": "sensor"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let jti = r.json::<Value>().await.unwrap()["token_id"]
                .as_str()
                .unwrap()
                .to_owned();
            // The registry half of a TPM enrollment; the API half (credential activation) is
            // exercised by the tests against swtpm.
            let ak = SoftwareAk::new();
            let secret = [9u8; 32];
            let mut secret_sha256 = [0u8; 32];
            secret_sha256
                .copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &secret).as_ref());
            let now = SystemClock.unix();
            let activation = NewActivation {
                id: vouch_ca::ids::DeviceId::random(&rng)
                    .unwrap()
                    .as_str()
                    .to_owned(),
                token_jti: jti.clone(),
                ek_public: ak.ek_public.clone(),
                ak_public: ak.ak_public.clone(),
                secret_sha256,
                created_at: now,
                expires_at: now + 300,
            };
            server
                .state
                .registry
                .create_activation(&activation)
                .await
                .unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let (device_id, serial) = (
                DeviceId::random(&rng).unwrap(),
                Serial::random(&rng).unwrap(),
            );
            let issued = issue_device_certificate(
                &ca,
                &DeviceCertificateSpec {
                    device_id: &device_id,
                    trust_domain: &td,
                    zone: &zone,
                    serial: &serial,
                    now: SystemClock.now(),
                    lifetime: time::Duration::hours(24),
                    crl_url: "https://localhost/v1/crl",
                },
                &key,
            )
            .unwrap();
            let enrolled = server
                .state
                .registry
                .enroll_tpm(&TpmEnrollment {
                    jti: &jti,
                    activation_id: &activation.id,
                    secret: &secret,
                    device: &NewDevice {
                        id: device_id.as_str().to_owned(),
                        spiffe_id: device_id.spiffe_id(&td),
                        zone: "sensors".into(),
                        device_class: Some("sensor".into()),
                        labels: Default::default(),
                    },
                    reenroll: None,
                    cert: &NewCertificate {
                        serial: serial.to_hex(),
                        not_before: issued.not_before.unix_timestamp(),
                        not_after: issued.not_after.unix_timestamp(),
                    },
                    now,
                    skew: 60,
                })
                .await
                .unwrap();
            assert!(enrolled.is_ok(), "{enrolled:?}");
            let identity = format!("{}{}{}", issued.pem, ca.chain_pem(), key.serialize_pem());
            fleet.push(Device {
                ak,
                identity: identity.into_bytes(),
            });
        }

        let next = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(B64.encode(&log));
        eprintln!("{n} attestations by {devices} devices...");
        let start = Instant::now();
        let cpu_start = cpu_seconds();
        let mut tasks = Vec::new();
        let mut clients = Vec::new();
        for device in fleet {
            let client = reqwest::Client::builder()
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&root).unwrap())
                .identity(reqwest::Identity::from_pem(&device.identity).unwrap())
                .http1_only()
                .build()
                .unwrap();
            clients.push(client.clone());
            let (base, next, log) = (base.clone(), next.clone(), log.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let r = client
                        .post(format!("{base}/v1/attest/challenge"))
                        .json(&json!({}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201);
                    let challenge: Value = r.json().await.unwrap();
                    let nonce = hex::decode(challenge["nonce"].as_str().unwrap()).unwrap();
                    let values = expected_pcrs("fw-1", "cfg-a");
                    let (attest, signature) = device.ak.quote(&nonce, &values);
                    let pcr_values: serde_json::Map<String, Value> = values
                        .iter()
                        .map(|(p, v)| (p.to_string(), json!(hex::encode(v))))
                        .collect();
                    let r = client
                        .post(format!("{base}/v1/attest/quote"))
                        .json(
                            &json!({"nonce": challenge["nonce"], "quote": B64.encode(attest),
                                      "signature": B64.encode(signature),
                                      "pcr_values": pcr_values, "event_log": *log}),
                        )
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
                    let _ = r.bytes().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = cpu_start.zip(cpu_seconds()).map(|(a, b)| (b - a) / elapsed);

        // The transport floor: two requests that do nothing (GET /healthz) per attestation,
        // over the same mTLS connections.
        let next = Arc::new(AtomicUsize::new(0));
        let floor_start = Instant::now();
        let mut tasks = Vec::new();
        for client in clients {
            let (base, next) = (base.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    for _ in 0..2 {
                        let r = client.get(format!("{base}/healthz")).send().await.unwrap();
                        assert_eq!(r.status(), 200);
                        let _ = r.bytes().await.unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let floor = n as f64 / floor_start.elapsed().as_secs_f64();
        server.stop().await;
        (n as f64 / elapsed, cpu, floor)
    });

    println!("attest benchmark ({cores} cores, SQLite, HTTPS keep-alive with mTLS, {devices} devices, N={n})");
    println!(
        "  raw verification (parse + ECDSA + signer + PCR digest + event-log replay + reference): {:.1} us = {:.0} /s per core",
        raw * 1e6,
        raw_per_core
    );
    println!("  raw ceiling on {cores} cores:                 {ceiling:.0} verifications/s");
    println!("  end-to-end attestations (challenge + quote): {rate:.0} /s");
    println!(
        "  ratio end-to-end / raw ceiling:             {:.1}%",
        100.0 * rate / ceiling
    );
    println!("  HTTPS floor (2 x GET /healthz per attestation, same connections): {floor:.0} /s");
    if let Some(cpu) = cpu {
        println!(
            "  CPU busy during the run (server + load generator): {:.0}% of {cores} cores",
            100.0 * cpu / cores as f64
        );
    }
}
