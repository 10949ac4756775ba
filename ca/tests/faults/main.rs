//! Faults and load (issue 11): real `vouch serve` processes on loopback, real SQLite and
//! PostgreSQL, clients that act as devices do. Nothing may be lost or written twice.
//!
//! - `kill -9` at random moments during concurrent enrollments (each token also replayed),
//!   renewals and attestations (each quote also resubmitted); the server must start cleanly
//!   every time, and afterwards every certificate a client received has its registry row and
//!   audit record, every certificate in the registry has its audit record, no token enrolled
//!   twice, no nonce recorded twice, and every attestation a client saw pass is recorded.
//! - PostgreSQL stopped and started under load: while it is down, answers are `503` with
//!   `Retry-After` (no other 5xx), and they come quickly; afterwards requests succeed and the
//!   same registry checks hold.
//! - An enrollment storm: N devices enroll at once, each on a new TLS connection, retrying
//!   after `429`/`503` as `Retry-After` says (connection errors after a second); every answer
//!   is a success or one of those two, and every device is enrolled once.
//!
//! The suite runs small versions (`cargo test -p vouch-ca --test faults`); `tests/faults.sh`
//! runs the full ones (100 kills on each database, 10,000 devices, the PostgreSQL restart)
//! and prints their figures. Sizes: `VOUCH_FAULT_KILLS` (3), `VOUCH_STORM_DEVICES` (200),
//! `VOUCH_PG_RESTART=1` (off: it stops the machine's PostgreSQL cluster, `VOUCH_PG_CLUSTER`,
//! default `15 main`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../common/server_process.rs"]
mod server_process;
#[path = "../api/support.rs"]
#[allow(dead_code)]
mod support;
#[path = "../common/tpm_fleet.rs"]
mod tpm_fleet;

use serde_json::{json, Value};
use server_process::ServerProcess;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{client_for, fresh_postgres_database, rcgen_csr, Db};
use tpm_fleet::{QuoteParts, SeededDevice};
use vouch_ca::app::{self, PolicyConfig, ServeConfig};
use vouch_ca::clock::{Clock, SystemClock};
use vouch_ca::datadir::{DataDir, DataFile};
use vouch_ca::ids::TrustDomain;
use vouch_ca::tokens::Role;

const VOUCH: &str = env!("CARGO_BIN_EXE_vouch");
const TRUST_DOMAIN: &str = "faults.example";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A CA, a policy directory with reference values, a registry (SQLite in the data directory
/// or a fresh PostgreSQL database) and TPM devices seeded into it.
struct Fleet {
    _dir: tempfile::TempDir,
    data: DataDir,
    policies: PathBuf,
    log: PathBuf,
    database_url: String,
    root: Vec<u8>,
    admin: String,
    tpm_devices: Vec<SeededDevice>,
}

impl Fleet {
    async fn new(db: Db, tpm_devices: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().join("data"));
        let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
        app::init_ca(&data, &td, SystemClock.now()).unwrap();
        let policies = dir.path().join("policies");
        tpm_fleet::policy_dir(&policies);
        let database_url = match db {
            Db::Sqlite => app::default_database_url(&data),
            Db::Postgres => fresh_postgres_database().await,
        };
        let root = std::fs::read(data.file(DataFile::RootCert)).unwrap();
        let admin =
            app::mint_operator_token(&data, Role::Admin, "faults", 24 * 3600, SystemClock.unix())
                .unwrap();
        // Seeded by an in-process server on the same registry, stopped before the real one.
        let config = ServeConfig {
            data_dir: data.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            public_url: None,
            database_url: database_url.clone(),
            hostnames: vec!["127.0.0.1".into()],
            max_connections: 4,
            settings: Default::default(),
            policy: PolicyConfig {
                dir: Some(policies.clone()),
                shadow_dir: None,
                poll: None,
            },
            sweep_every: Duration::from_secs(3600),
        };
        let seeder = app::start(&config, Arc::new(SystemClock)).await.unwrap();
        let base = format!("https://127.0.0.1:{}", seeder.addr.port());
        let client = client_for(&root, None);
        let seeded = tpm_fleet::seed(&seeder, &client, &base, &admin, tpm_devices).await;
        seeder.stop().await;
        Self {
            log: dir.path().join("server.log"),
            _dir: dir,
            data,
            policies,
            database_url,
            root,
            admin,
            tpm_devices: seeded,
        }
    }

    /// Starts `vouch serve` and waits (at most a minute) for its `listening on` line; the
    /// error carries the end of its log.
    fn start(&self, extra: &[&str]) -> Result<ServerProcess, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(VOUCH);
        command
            .env("RUST_LOG", "warn")
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data.path())
            .args(["--listen", "127.0.0.1:0", "--hostname", "127.0.0.1"])
            .args(["--database-url", &self.database_url])
            .arg("--policy-dir")
            .arg(&self.policies)
            .args(["--policy-poll", "0s"])
            .args(extra)
            .stderr(log);
        ServerProcess::start(command).ok_or_else(|| {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail = log.len().saturating_sub(3000);
            format!(
                "the server did not start:\n{}",
                log.get(tail..).unwrap_or(&log)
            )
        })
    }

    /// A new bootstrap token for zone `sensors`: its JWT and id.
    async fn token(&self, client: &reqwest::Client, base: &str) -> Option<(String, String)> {
        let r = client
            .post(format!("{base}/v1/bootstrap-tokens"))
            .bearer_auth(&self.admin)
            .json(&json!({"zone": "sensors"}))
            .send()
            .await
            .ok()?;
        if r.status() != 201 {
            return None;
        }
        let body: Value = r.json().await.ok()?;
        Some((
            body["token"].as_str()?.to_owned(),
            body["token_id"].as_str()?.to_owned(),
        ))
    }

    async fn registry(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url)
            .await
            .unwrap()
    }
}

/// Kills with SIGKILL, and reaps.
fn kill9(server: ServerProcess) {
    drop(server);
}

/// What clients were told, to be held against the registry afterwards.
#[derive(Default)]
struct Ledger {
    /// Certificates received: serial → device id.
    certificates: BTreeMap<String, String>,
    /// Enrollments answered 201, by token id.
    enrollments_by_token: BTreeMap<String, usize>,
    /// Attestations answered 200 (pass), by nonce.
    passes_by_nonce: BTreeMap<String, usize>,
    /// Devices enrolled here, with their identity (PEM), for renewals.
    identities: Vec<(String, String)>,
    /// Answers by status.
    statuses: BTreeMap<u16, usize>,
    /// Requests that got no answer (connection refused or cut by the kill).
    unanswered: usize,
    /// Why the storm's requests got no answer, by the innermost error's text.
    transport_errors: BTreeMap<String, usize>,
    /// What must not happen.
    violations: Vec<String>,
}

impl Ledger {
    fn answered(&mut self, status: u16) {
        *self.statuses.entry(status).or_default() += 1;
        if status >= 500 && status != 503 {
            self.violations.push(format!("answered {status}"));
        }
    }
}

type Shared = Arc<Mutex<Ledger>>;

fn note(ledger: &Shared, f: impl FnOnce(&mut Ledger)) {
    f(&mut ledger.lock().unwrap());
}

/// Enrolls with a new token, then replays the token: the replay must not enroll again.
async fn enroll_and_replay(fleet: &Fleet, client: &reqwest::Client, base: &str, ledger: &Shared) {
    let Some((token, jti)) = fleet.token(client, base).await else {
        return note(ledger, |l| l.unanswered += 1);
    };
    let (csr, key) = rcgen_csr();
    for attempt in 0..2 {
        let sent = client
            .post(format!("{base}/v1/enroll"))
            .json(&json!({"token": token, "csr_pem": csr}))
            .send()
            .await;
        let Ok(r) = sent else {
            return note(ledger, |l| l.unanswered += 1);
        };
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        note(ledger, |l| {
            l.answered(status);
            if status == 201 {
                let uses = l.enrollments_by_token.entry(jti.clone()).or_default();
                *uses += 1;
                if *uses > 1 {
                    l.violations.push(format!("token {jti} enrolled twice"));
                }
                let (serial, device) = (body["serial"].as_str(), body["device_id"].as_str());
                if let (Some(serial), Some(device)) = (serial, device) {
                    l.certificates.insert(serial.to_owned(), device.to_owned());
                    let identity = format!(
                        "{}{}{key}",
                        body["certificate_pem"].as_str().unwrap_or_default(),
                        body["ca_chain_pem"].as_str().unwrap_or_default()
                    );
                    l.identities.push((device.to_owned(), identity));
                }
            } else if attempt == 0 {
                // A first use may be refused only as busy.
                if status != 503 && status != 429 {
                    l.violations
                        .push(format!("first use of a token answered {status}: {body}"));
                }
            }
        });
    }
}

/// Renews one device enrolled earlier.
async fn renew(root: &[u8], base: &str, ledger: &Shared, pick: usize) {
    let chosen = {
        let l = ledger.lock().unwrap();
        (!l.identities.is_empty()).then(|| l.identities[pick % l.identities.len()].clone())
    };
    let Some((device, identity)) = chosen else {
        return;
    };
    let client = client_for(root, Some(identity.as_bytes()));
    let (csr, _) = rcgen_csr();
    let sent = client
        .post(format!("{base}/v1/renew"))
        .json(&json!({"csr_pem": csr}))
        .send()
        .await;
    let Ok(r) = sent else {
        return note(ledger, |l| l.unanswered += 1);
    };
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    note(ledger, |l| {
        l.answered(status);
        if status == 201 {
            if let Some(serial) = body["serial"].as_str() {
                l.certificates.insert(serial.to_owned(), device.clone());
            }
        }
    });
}

/// One attestation (challenge, quote), then the same quote again: the second must not pass.
async fn attest_and_resubmit(
    client: &reqwest::Client,
    base: &str,
    device: &SeededDevice,
    parts: &QuoteParts,
    ledger: &Shared,
) {
    let Ok(r) = client
        .post(format!("{base}/v1/attest/challenge"))
        .json(&json!({}))
        .send()
        .await
    else {
        return note(ledger, |l| l.unanswered += 1);
    };
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    note(ledger, |l| l.answered(status));
    let Some(nonce) = body["nonce"].as_str() else {
        return;
    };
    let submission = parts.submission(&device.ak, nonce);
    for _ in 0..2 {
        let sent = client
            .post(format!("{base}/v1/attest/quote"))
            .header("content-type", "application/json")
            .body(submission.clone())
            .send()
            .await;
        let Ok(r) = sent else {
            return note(ledger, |l| l.unanswered += 1);
        };
        let status = r.status().as_u16();
        note(ledger, |l| {
            l.answered(status);
            if status == 200 {
                let passes = l.passes_by_nonce.entry(nonce.to_owned()).or_default();
                *passes += 1;
                if *passes > 1 {
                    l.violations.push(format!("nonce {nonce} passed twice"));
                }
            }
        });
    }
}

/// Runs enrollers, renewers and attesters against `base` until `stop`.
fn load(
    fleet: &Arc<Fleet>,
    base: &str,
    ledger: &Shared,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let parts = Arc::new(QuoteParts::new());
    for worker in 0..4 {
        let (fleet, base, ledger, stop) =
            (fleet.clone(), base.to_owned(), ledger.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = client_for(&fleet.root, None);
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                enroll_and_replay(&fleet, &client, &base, &ledger).await;
                if n % 2 == 0 {
                    renew(&fleet.root, &base, &ledger, n).await;
                }
                n += 1;
            }
        }));
    }
    for i in 0..fleet.tpm_devices.len() {
        let (fleet, base, ledger, stop, parts) = (
            fleet.clone(),
            base.to_owned(),
            ledger.clone(),
            stop.clone(),
            parts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let device = &fleet.tpm_devices[i];
            let client = client_for(&fleet.root, Some(&device.identity));
            while !stop.load(Ordering::Relaxed) {
                attest_and_resubmit(&client, &base, device, &parts, &ledger).await;
            }
        }));
    }
    tasks
}

/// Holds the registry against what clients were told; returns the problems found.
async fn check_registry(fleet: &Fleet, ledger: &Ledger) -> Vec<String> {
    let db = fleet.registry().await;
    let mut problems = Vec::new();
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT serial, device_id FROM certificates")
        .fetch_all(&db)
        .await
        .unwrap();
    let certificates: BTreeMap<String, String> = rows.into_iter().collect();
    let audit: Vec<(String, String, String)> =
        sqlx::query_as("SELECT action, subject, detail FROM audit_log")
            .fetch_all(&db)
            .await
            .unwrap();
    let audited_serials: BTreeSet<String> = audit
        .iter()
        .filter_map(|(_, _, detail)| {
            serde_json::from_str::<Value>(detail).ok()?["serial"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    for (serial, device) in &ledger.certificates {
        match certificates.get(serial) {
            None => problems.push(format!(
                "certificate {serial} was handed out but has no registry row"
            )),
            Some(d) if d != device => {
                problems.push(format!("certificate {serial} belongs to {d}, not {device}"))
            }
            Some(_) => {}
        }
    }
    for serial in certificates.keys() {
        if !audited_serials.contains(serial) {
            problems.push(format!("certificate {serial} has no audit record"));
        }
    }
    let mut used: BTreeMap<&str, usize> = BTreeMap::new();
    for (action, subject, _) in &audit {
        if action == "token.used" {
            *used.entry(subject).or_default() += 1;
        }
    }
    for (token, n) in used.iter().filter(|(_, n)| **n > 1) {
        problems.push(format!("token {token} used {n} times"));
    }
    let nonces: Vec<(String, i64)> = sqlx::query_as(
        "SELECT nonce, COUNT(*) FROM attestations WHERE nonce IS NOT NULL GROUP BY nonce",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let recorded: BTreeMap<String, i64> = nonces.into_iter().collect();
    for (nonce, n) in &recorded {
        if *n > 1 {
            problems.push(format!("nonce {nonce} recorded {n} times"));
        }
    }
    for nonce in ledger.passes_by_nonce.keys() {
        if !recorded.contains_key(nonce) {
            problems.push(format!("attestation {nonce} passed but is not recorded"));
        }
    }
    db.close().await;
    problems
}

fn summary(what: &str, ledger: &Ledger) {
    eprintln!(
        "{what}: {} certificates handed out, {} tokens used, {} attestations passed, answers {:?}, {} unanswered",
        ledger.certificates.len(),
        ledger.enrollments_by_token.len(),
        ledger.passes_by_nonce.len(),
        ledger.statuses,
        ledger.unanswered
    );
}

/// A random number in `range` (how much work each server life sees before its kill).
fn random_in(range: std::ops::Range<usize>) -> usize {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    range.start + (u64::from_le_bytes(b) % (range.end - range.start) as u64) as usize
}

/// Requests the server has answered so far, of those `ledger` saw.
fn answers(ledger: &Shared) -> usize {
    ledger.lock().unwrap().statuses.values().sum()
}

/// Waits until the server has answered `n` more requests: the load's progress, not a wall
/// clock window, decides when the next step comes. Fails if none comes for a minute.
async fn until_answered(ledger: &Shared, n: usize) {
    let target = answers(ledger) + n;
    let mut seen = answers(ledger);
    let mut last_progress = Instant::now();
    while seen < target {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let now = answers(ledger);
        if now > seen {
            (seen, last_progress) = (now, Instant::now());
        }
        assert!(
            last_progress.elapsed() < Duration::from_secs(60),
            "the load made no progress"
        );
    }
}

async fn kill_during_load(db: Db) {
    let kills = env_usize("VOUCH_FAULT_KILLS", 3);
    let fleet = Arc::new(Fleet::new(db, 6).await);
    let ledger: Shared = Default::default();
    let mut starts = Vec::new();
    for round in 0..kills {
        let started = Instant::now();
        let server = fleet
            .start(&[])
            .unwrap_or_else(|e| panic!("start {round} after {round} kills: {e}"));
        starts.push(started.elapsed());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = load(&fleet, &server.base, &ledger, &stop);
        // Killed at a random point of its work: after 1 to 200 answers.
        until_answered(&ledger, random_in(1..200)).await;
        kill9(server);
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
    }
    // Once more, cleanly, and the registry is held against the ledger.
    let server = fleet
        .start(&[])
        .unwrap_or_else(|e| panic!("start after {kills} kills: {e}"));
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    summary(&format!("{kills} kills ({db:?})"), &ledger);
    starts.sort();
    eprintln!(
        "starts after a kill: median {:?}, slowest {:?}",
        starts[starts.len() / 2],
        starts[starts.len() - 1]
    );
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    assert!(!ledger.certificates.is_empty() && !ledger.passes_by_nonce.is_empty());
    let problems = check_registry(&fleet, &ledger).await;
    assert!(problems.is_empty(), "{problems:#?}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_enrollments_and_attestations_loses_nothing_sqlite() {
    kill_during_load(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_enrollments_and_attestations_loses_nothing_postgres() {
    kill_during_load(Db::Postgres).await;
}

/// Stops and starts the machine's PostgreSQL cluster under load (off unless
/// `VOUCH_PG_RESTART=1`: every other PostgreSQL test would fail meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_answers_503_then_recovers() {
    if std::env::var("VOUCH_PG_RESTART").as_deref() != Ok("1") {
        eprintln!("skipped: set VOUCH_PG_RESTART=1 (tests/faults.sh does)");
        return;
    }
    let cluster = std::env::var("VOUCH_PG_CLUSTER").unwrap_or_else(|_| "15 main".into());
    let pg = |action: &str| {
        let mut args: Vec<&str> = cluster.split_whitespace().collect();
        args.push(action);
        let status = Command::new("pg_ctlcluster")
            .args(&args[..2])
            .arg(action)
            .args(if action == "stop" {
                &["-m", "fast"][..]
            } else {
                &[][..]
            })
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctlcluster {cluster} {action}");
    };
    let fleet = Arc::new(Fleet::new(Db::Postgres, 4).await);
    let server = fleet.start(&[]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let before: Shared = Default::default();
    let tasks = load(&fleet, &server.base, &before, &stop);
    until_answered(&before, 200).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    // Down: every answer is 503 with Retry-After, and quick.
    pg("stop");
    let client = client_for(&fleet.root, None);
    let mut slowest = Duration::ZERO;
    let mut down_answers = BTreeMap::<u16, usize>::new();
    let mut problems = Vec::new();
    for _ in 0..10 {
        for path in ["/v1/bootstrap-tokens", "/readyz"] {
            let asked = Instant::now();
            let r = if path == "/readyz" {
                client.get(format!("{}{path}", server.base)).send().await
            } else {
                client
                    .post(format!("{}{path}", server.base))
                    .bearer_auth(&fleet.admin)
                    .json(&json!({"zone": "sensors"}))
                    .send()
                    .await
            };
            slowest = slowest.max(asked.elapsed());
            match r {
                Ok(r) => {
                    let status = r.status().as_u16();
                    *down_answers.entry(status).or_default() += 1;
                    if status != 503
                        || (path != "/readyz" && r.headers().get("retry-after").is_none())
                    {
                        problems.push(format!("{path} while down: {status}"));
                    }
                }
                Err(e) => problems.push(format!("{path} while down: no answer: {e}")),
            }
        }
    }
    pg("start");
    // Up again: requests succeed (the pool reconnects).
    let recovered = Instant::now();
    let after: Shared = Default::default();
    loop {
        enroll_and_replay(&fleet, &client, &server.base, &after).await;
        if !after.lock().unwrap().certificates.is_empty() {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(60),
            "no recovery: {:?}",
            after.lock().unwrap().statuses
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovery = recovered.elapsed();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&fleet, &server.base, &after, &stop);
    until_answered(&after, 200).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "PostgreSQL down: answers {down_answers:?}, slowest {slowest:?}; first enrollment {recovery:?} after the restart"
    );
    assert!(problems.is_empty(), "{problems:#?}");
    let mut ledger = Ledger::default();
    for part in [&before, &after] {
        let mut l = part.lock().unwrap();
        ledger.certificates.append(&mut l.certificates);
        ledger.passes_by_nonce.append(&mut l.passes_by_nonce);
        ledger.violations.append(&mut l.violations);
    }
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    let problems = check_registry(&fleet, &ledger).await;
    assert!(problems.is_empty(), "{problems:#?}");
}

/// What kind of failure left a request without an answer: connecting, timing out, or else,
/// with the innermost error's text (e.g. a reset while the TLS handshake was under way).
fn transport_error(e: &reqwest::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(source) = inner.source() {
        inner = source;
    }
    let stage = if e.is_connect() {
        "connect"
    } else if e.is_timeout() {
        "timeout"
    } else {
        "request"
    };
    format!("{stage}: {inner}")
}

/// N devices enroll at once, each on a new TLS connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_storm_on_new_connections_enrolls_everyone_once() {
    let devices = env_usize("VOUCH_STORM_DEVICES", 200);
    let fleet = Arc::new(Fleet::new(Db::Sqlite, 0).await);
    let server = fleet.start(&[]).unwrap();
    let base = server.base.clone();
    // The tokens first (an operator's batch), over one connection.
    let admin_client = client_for(&fleet.root, None);
    let mut tokens = Vec::with_capacity(devices);
    while tokens.len() < devices {
        if let Some(t) = fleet.token(&admin_client, &base).await {
            tokens.push(t);
        }
    }
    let csrs: Vec<String> = (0..devices).map(|_| rcgen_csr().0).collect();
    let ledger: Shared = Default::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for ((token, jti), csr) in tokens.into_iter().zip(csrs) {
        let (root, base, ledger) = (fleet.root.clone(), base.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            let mut attempts = 0u32;
            loop {
                attempts += 1;
                // A new client: a new TCP and TLS connection, as a device makes.
                let client = client_for(&root, None);
                let sent = client
                    .post(format!("{base}/v1/enroll"))
                    .json(&json!({"token": token, "csr_pem": csr}))
                    .timeout(Duration::from_secs(120))
                    .send()
                    .await;
                let r = match sent {
                    Ok(r) => r,
                    Err(e) => {
                        let why = transport_error(&e);
                        note(&ledger, |l| {
                            l.unanswered += 1;
                            *l.transport_errors.entry(why).or_default() += 1;
                        });
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let status = r.status().as_u16();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                let body: Value = r.json().await.unwrap_or(Value::Null);
                note(&ledger, |l| {
                    l.answered(status);
                    if status == 201 {
                        *l.enrollments_by_token.entry(jti.clone()).or_default() += 1;
                        if let (Some(s), Some(d)) =
                            (body["serial"].as_str(), body["device_id"].as_str())
                        {
                            l.certificates.insert(s.to_owned(), d.to_owned());
                        }
                    } else if !(status == 429 || status == 503) || retry.is_none() {
                        l.violations
                            .push(format!("answered {status} (Retry-After {retry:?}): {body}"));
                    }
                });
                match (status, retry) {
                    (201, _) => return attempts,
                    (429 | 503, Some(after)) => {
                        tokio::time::sleep(Duration::from_secs(after)).await
                    }
                    _ => return attempts,
                }
            }
        }));
    }
    let mut attempts = Vec::new();
    for t in tasks {
        attempts.push(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    attempts.sort_unstable();
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    summary(&format!("storm of {devices}"), &ledger);
    eprintln!(
        "storm: requests without an answer, by cause: {:?}",
        ledger.transport_errors
    );
    eprintln!(
        "storm: {devices} devices enrolled in {elapsed:.1?} ({:.0}/s); attempts per device: median {}, most {}",
        devices as f64 / elapsed.as_secs_f64(),
        attempts[attempts.len() / 2],
        attempts[attempts.len() - 1]
    );
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    assert_eq!(ledger.enrollments_by_token.len(), devices);
    assert!(ledger.enrollments_by_token.values().all(|n| *n == 1));
    let problems = check_registry(&fleet, &ledger).await;
    assert!(problems.is_empty(), "{problems:#?}");
    let db = fleet.registry().await;
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM devices")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(count as usize, devices);
    drop(server);
}
