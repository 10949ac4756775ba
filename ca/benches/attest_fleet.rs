//! Attestation as a fleet makes it (issue 14, target 2): a registry of a million devices of
//! which a subset attests, each cycle on a new connection as `vouch-agent` makes it after its
//! 30-minute sleep (the TLS session resumed from the ticket it kept, HTTP/2 negotiated, the
//! challenge and the quote on that one connection), against the cryptographic floor of that
//! work measured in the same run.
//!
//! ```text
//! cargo bench -p vouch-ca --bench attest_fleet        # 1,000,000 rows, 4,000 attesting
//! VOUCH_BENCH_REGISTRY=20000 VOUCH_BENCH_DEVICES=200 cargo bench -p vouch-ca --bench attest_fleet
//! ```
//!
//! 1. Floor, on one core: a resumed TLS 1.3 handshake's asymmetric crypto (an X25519 key pair
//!    and agreement; no certificate, no signature) plus one quote's verification as the
//!    server does it (`tpm_fleet::raw_verification_cost`). A full handshake adds the server's
//!    ECDSA signature and three ECDSA verifications (the client's chain of two and its
//!    CertificateVerify); it is printed for the first contact.
//! 2. `VOUCH_BENCH_DEVICES` devices bound to software attestation keys are enrolled through
//!    the registry, and the registry is filled with attested TPM devices (a row in
//!    `devices`, `certificates` and `attestations` each) up to `VOUCH_BENCH_REGISTRY` rows.
//! 3. First contact: every device attests once on a new connection with a full handshake; its
//!    rustls client keeps the session ticket (as the agent's kept client does).
//! 4. The server is stopped and started again on the same data directory: its identity cache
//!    is empty, the tickets still open (their key comes from the data directory). Every device
//!    attests on a new, resumed connection (cold cycle), then once more (warm cycle).
//!
//! The server and the load generator run on runtimes of their own; the server's CPU (its
//! runtime and SQLite's threads) is read per thread, so its CPU per attestation, the capacity
//! that implies on this machine's cores, and the ratio to the floor are reported apart from the
//! load generator's. Exits non-zero if an attestation fails, a cycle does not use HTTP/2, or
//! a returning device is not resumed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[path = "../tests/common/tpm_fleet.rs"]
mod tpm_fleet;
use common::{device_tls_config, env_usize, per_op, result, runtime, serve_config, timed};

use std::sync::Arc;
use std::time::Instant;
use vouch_attestor::reference::ReferenceValues;
use vouch_ca::api::{AppState, Settings};
use vouch_ca::app::{self, PolicyConfig, RunningServer, ServeConfig};
use vouch_ca::clock::{Clock, SystemClock};
use vouch_ca::datadir::{DataDir, DataFile};
use vouch_ca::ids::TrustDomain;
use vouch_ca::tokens::Role;

/// The floor's parts on one core, seconds each.
struct Floor {
    /// A resumed handshake: X25519 key pair and agreement.
    resumed_handshake: f64,
    /// A full handshake with a client certificate: the resumed part, the server's ECDSA P-256
    /// signature and three ECDSA P-256 verifications.
    full_handshake: f64,
    /// One quote verified as the server does it.
    verification: f64,
}

fn floor(references: &ReferenceValues) -> Floor {
    use ring::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, X25519};
    use ring::signature::{
        EcdsaKeyPair, KeyPair, UnparsedPublicKey as Verifier, ECDSA_P256_SHA256_ASN1,
        ECDSA_P256_SHA256_ASN1_SIGNING,
    };
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let peer = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
    let peer_public = peer.compute_public_key().unwrap().as_ref().to_vec();
    let transcript = [0x5au8; 130];
    let resumed_handshake = per_op(|_| {
        let mine = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
        std::hint::black_box(mine.compute_public_key().unwrap());
        agree_ephemeral(mine, &UnparsedPublicKey::new(&X25519, &peer_public), |k| {
            std::hint::black_box(k.len())
        })
        .unwrap();
    });
    let sign = per_op(|_| {
        std::hint::black_box(key.sign(&rng, &transcript).unwrap());
    });
    let signature = key.sign(&rng, &transcript).unwrap();
    let public = Verifier::new(&ECDSA_P256_SHA256_ASN1, key.public_key().as_ref().to_vec());
    let verify = per_op(|_| {
        public.verify(&transcript, signature.as_ref()).unwrap();
    });
    let log =
        vouch_attestor::eventlog::write_log(&vouch_attestor::testing::boot_events("fw-1", "cfg-a"));
    Floor {
        resumed_handshake,
        full_handshake: resumed_handshake + sign + 3.0 * verify,
        verification: tpm_fleet::raw_verification_cost(references, &log),
    }
}

/// The server as the benchmark runs it: the data directory's SQLite registry and the policy
/// directory's reference values.
async fn start(data_dir: &DataDir, policies: &std::path::Path) -> RunningServer {
    let config = ServeConfig {
        policy: PolicyConfig {
            dir: Some(policies.to_path_buf()),
            shadow_dir: None,
            poll: None,
        },
        ..serve_config(data_dir, Settings::default())
    };
    app::start(&config, Arc::new(SystemClock)).await.unwrap()
}

/// Writes attested TPM devices into the registry (server stopped) until it holds `rows`
/// devices: for each, its device row (zone `sensors`, class `sensor`, bound to an EK, attested
/// now), its current certificate and one passed attestation. Returns the devices it wrote.
async fn fill_registry(data_dir: &DataDir, rows: usize) -> usize {
    use sqlx::Connection as _;
    let mut db = sqlx::SqliteConnection::connect(&app::default_database_url(data_dir))
        .await
        .unwrap();
    let (present,): (i64,) = sqlx::query_as("SELECT count(*) FROM devices")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let wanted = rows.saturating_sub(present as usize);
    let now = SystemClock.unix();
    let batch = 100_000usize;
    let mut written = 0usize;
    while written < wanted {
        let count = batch.min(wanted - written);
        let (first, last) = (written as i64, (written + count) as i64);
        let mut tx = db.begin().await.unwrap();
        // Filler ids start with 'f' and serials with '7f' (32 hex digits each); the real
        // devices' are random, so a clash is as likely as a random 124-bit collision.
        for statement in [
            "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2)
             INSERT INTO devices (id, spiffe_id, zone, device_class, labels, status, created_at,
                 updated_at, current_serial, current_not_after, attestation, last_attested,
                 ek_sha256, ek_public, ak_public, tpm_bound_at)
             SELECT printf('f%031x', i), 'spiffe://bench.example/device/' || printf('f%031x', i),
                 'sensors', 'sensor', '{}', 'active', ?3, ?3, printf('7f%030x', i), ?3 + 86400,
                 'active', ?3, printf('%064x', i), 'AA==', 'AA==', ?3 FROM n",
            "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2)
             INSERT INTO certificates (serial, device_id, not_before, not_after, issued_at)
             SELECT printf('7f%030x', i), printf('f%031x', i), ?3, ?3 + 86400, ?3 FROM n",
            "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2)
             INSERT INTO attestations (device_id, at, outcome, reason, reference_set, nonce)
             SELECT printf('f%031x', i), ?3, 'pass', 'quote verified', 'fw-1',
                 printf('%064x', i) FROM n",
        ] {
            sqlx::query(statement)
                .bind(first)
                .bind(last)
                .bind(now)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        written += count;
        eprintln!("  {} of {wanted} filler devices written", written);
    }
    db.close().await.unwrap();
    wanted
}

/// TLS handshakes the server completed so far: (full, resumed).
fn handshakes(state: &AppState) -> (u64, u64) {
    let text = state.metrics.encode().unwrap();
    let count = |kind: &str| {
        let prefix = format!("vouch_tls_handshakes_total{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
    };
    (count("full"), count("resumed"))
}

/// A device as the load generator holds it: its TLS settings (with the session store that
/// keeps its tickets) and its attestation key.
type Device = (rustls::ClientConfig, vouch_attestor::testing::SoftwareAk);

/// The part of a challenge the load generator reads.
#[derive(serde::Deserialize)]
struct Challenge {
    nonce: String,
}

/// One device's attestation cycle as the agent makes it: a new connection (resumed if its
/// client kept a ticket), HTTP/2, the challenge and the quote on it.
async fn attest_cycle(
    base: &str,
    tls: &rustls::ClientConfig,
    ak: &vouch_attestor::testing::SoftwareAk,
    parts: &tpm_fleet::QuoteParts,
) {
    // A new client on a clone of the device's TLS settings: a new connection that shares
    // the kept session tickets (the clone holds the same session store).
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls.clone())
        .build()
        .unwrap();
    let r = client
        .post(format!("{base}/v1/attest/challenge"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "HTTP/2 negotiated");
    let challenge: Challenge = r.json().await.unwrap();
    let r = client
        .post(format!("{base}/v1/attest/quote"))
        .header("content-type", "application/json")
        .body(parts.submission(ak, &challenge.nonce))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
}

/// One cycle's figures.
struct Cycle {
    name: &'static str,
    rate: f64,
    /// CPU seconds per attestation: (load generator, server).
    split: Option<(f64, f64)>,
    /// Handshakes during the cycle: (full, resumed).
    handshakes: (u64, u64),
}

fn main() {
    let registry_rows = env_usize("VOUCH_BENCH_REGISTRY", 1_000_000);
    let devices = env_usize("VOUCH_BENCH_DEVICES", 4_000)
        .min(registry_rows)
        .max(1);
    let concurrency = env_usize("VOUCH_BENCH_CONCURRENCY", 64).min(devices).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let server_runtime = runtime("vouch-server");
    let load_runtime = runtime(common::LOAD_THREADS);

    let dir = tempfile::tempdir().unwrap();
    let data_dir = DataDir::new(dir.path().join("data"));
    let td = TrustDomain::parse("bench.example").unwrap();
    app::init_ca(&data_dir, &td, SystemClock.now()).unwrap();
    let policies = dir.path().join("policies");
    tpm_fleet::policy_dir(&policies);
    let references =
        ReferenceValues::parse(&std::fs::read(policies.join("reference-values.json")).unwrap())
            .unwrap();
    let floor = floor(&references);
    let resumed_floor = floor.resumed_handshake + floor.verification;
    let full_floor = floor.full_handshake + floor.verification;

    let root = std::fs::read(data_dir.file(DataFile::RootCert)).unwrap();
    let server = server_runtime.block_on(start(&data_dir, &policies));
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let fleet = server_runtime.block_on(async {
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
        tpm_fleet::seed(&server, &admin_client, &base, &admin, devices).await
    });
    let work: Vec<Arc<Device>> = fleet
        .into_iter()
        .map(|d| {
            let tls = device_tls_config(&root, &d.identity, &[b"h2", b"http/1.1"]);
            Arc::new((tls, d.ak))
        })
        .collect();
    let parts = Arc::new(tpm_fleet::QuoteParts::new());

    let cycle = |name: &'static str, server: &RunningServer, work: Vec<Arc<Device>>| {
        eprintln!("{name}: {devices} attestations, {concurrency} at a time...");
        let before = handshakes(&server.state);
        let (b, parts) = (
            format!("https://127.0.0.1:{}", server.addr.port()),
            parts.clone(),
        );
        let (rate, split) = load_runtime.block_on(timed(work, concurrency, move |work, i| {
            let (b, parts) = (b.clone(), parts.clone());
            async move {
                let (tls, ak) = &*work[i];
                attest_cycle(&b, tls, ak, &parts).await;
            }
        }));
        let after = handshakes(&server.state);
        Cycle {
            name,
            rate,
            split,
            handshakes: (after.0 - before.0, after.1 - before.1),
        }
    };

    // Every cycle's connections are made from the same TLS settings, so each sees the
    // session tickets of the cycles before.
    let first = cycle("first contact (full handshakes)", &server, work.clone());
    server_runtime.block_on(server.stop());

    eprintln!("filling the registry to {registry_rows} devices...");
    let fill_start = Instant::now();
    let filled = server_runtime.block_on(fill_registry(&data_dir, registry_rows));
    let fill_seconds = fill_start.elapsed().as_secs_f64();

    let server = server_runtime.block_on(start(&data_dir, &policies));
    let counts = server_runtime
        .block_on(server.state.registry.counts())
        .unwrap();
    assert!(
        counts.devices as usize >= registry_rows,
        "the registry holds {registry_rows} devices"
    );
    let cold = cycle(
        "cold cycle (restarted server, resumed)",
        &server,
        work.clone(),
    );
    let warm = cycle("warm cycle (resumed)", &server, work);
    server_runtime.block_on(server.stop());

    for c in [&cold, &warm] {
        assert_eq!(
            c.handshakes,
            (0, devices as u64),
            "{}: every returning device resumes its session",
            c.name
        );
    }

    println!(
        "attest_fleet benchmark ({cores} cores, SQLite registry of {} devices ({filled} written in {fill_seconds:.0} s), {devices} attesting, {concurrency} at a time; new connection per cycle, HTTP/2)",
        counts.devices
    );
    println!(
        "  floor on one core: resumed handshake (X25519) {:.0} us, full handshake with client certificate {:.0} us, quote verification {:.0} us",
        floor.resumed_handshake * 1e6,
        floor.full_handshake * 1e6,
        floor.verification * 1e6
    );
    println!(
        "  floor per attestation: resumed {:.0} us, full {:.0} us",
        resumed_floor * 1e6,
        full_floor * 1e6
    );
    for c in [&first, &cold, &warm] {
        let floor = if c.handshakes.0 > 0 {
            full_floor
        } else {
            resumed_floor
        };
        print!(
            "  {}: {:.0} /s end to end; handshakes full {} resumed {}",
            c.name, c.rate, c.handshakes.0, c.handshakes.1
        );
        match c.split {
            Some((load, server_cpu)) => println!(
                "; server CPU {:.0} us = {:.1}x its floor (capacity {:.0} /s on {cores} cores), load generator {:.0} us",
                server_cpu * 1e6,
                server_cpu / floor,
                cores as f64 / server_cpu,
                load * 1e6
            ),
            None => println!(),
        }
    }
    if let Some((_, server_cpu)) = first.split {
        result(
            "attest_fleet",
            "server CPU per attestation, first contact (full mTLS handshake, HTTP/2)",
            &format!(
                "{:.0} us ({:.0} /s on {cores} cores)",
                server_cpu * 1e6,
                cores as f64 / server_cpu
            ),
            &format!(
                "{:.0} us: full handshake crypto + quote verification",
                full_floor * 1e6
            ),
            &format!("{:.1}x", server_cpu / full_floor),
            "-",
        );
    }
    for c in [&cold, &warm] {
        let Some((_, server_cpu)) = c.split else {
            continue;
        };
        let capacity = cores as f64 / server_cpu;
        let target = if c.name.starts_with("cold") {
            let met = server_cpu <= 2.0 * resumed_floor && capacity >= 5000.0;
            format!(
                "<= 2x the floor and >= 5,000/s capacity: {}",
                if met { "met" } else { "NOT met" }
            )
        } else {
            "-".to_owned()
        };
        result(
            "attest_fleet",
            &format!(
                "server CPU per attestation, {} of {} devices",
                c.name, counts.devices
            ),
            &format!(
                "{:.0} us ({capacity:.0} /s on {cores} cores)",
                server_cpu * 1e6
            ),
            &format!(
                "{:.0} us: resumed handshake crypto + quote verification",
                resumed_floor * 1e6
            ),
            &format!("{:.1}x", server_cpu / resumed_floor),
            &target,
        );
    }
    result(
        "attest_fleet",
        "attestations end to end, cold cycle (load generator on the same cores)",
        &format!("{:.0} /s", cold.rate),
        &format!(
            "{:.0} /s floor ceiling on {cores} cores",
            cores as f64 / resumed_floor
        ),
        &format!("{:.1}%", 100.0 * cold.rate * resumed_floor / cores as f64),
        "-",
    );
}
