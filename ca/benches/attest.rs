//! Quote verification throughput: the raw verifier against the whole attestation over the API
//! on SQLite, measured in the same run.
//!
//! ```text
//! cargo bench -p vouch-ca --bench attest            # 5 rounds of 20,000 attestations
//! VOUCH_BENCH_N=2000 VOUCH_BENCH_ROUNDS=1 cargo bench -p vouch-ca --bench attest
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
//!    quote (signed in the load generator), submit. Each attestation is two HTTPS requests;
//!    the challenge writes nothing, the result is group-committed (history row with its
//!    nonce, device state).
//!
//!    The load generator shares the machine with the server (a fleet's agents run on their
//!    own devices), so it is kept lean: a minimal HTTP/1.1 client over tokio-rustls, one write
//!    per request. The server and the load generator run on runtimes of their own, and the
//!    CPU each used is reported per attestation (by thread: server, database, load
//!    generator), so the server's own cost is visible apart from the generator's.
//!    The end-to-end phase runs in rounds (`VOUCH_BENCH_ROUNDS`, 5) over the same connections,
//!    opened before the first; the median round stands for the run, and every round's rate
//!    is printed (this machine's neighbours make single runs vary by ±15%).
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
#[path = "../tests/common/tpm_fleet.rs"]
mod tpm_fleet;
use common::{
    cpu_seconds, cpu_seconds_by_thread, device_tls_config, env_usize, serve_config, LOAD_THREADS,
};

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use vouch_attestor::reference::ReferenceValues;
use vouch_attestor::testing::{boot_events, policy_dir_with_references, SoftwareAk};
use vouch_ca::api::Settings;
use vouch_ca::app::{self, PolicyConfig, ServeConfig};
use vouch_ca::clock::{Clock, SystemClock};
use vouch_ca::datadir::{DataDir, DataFile};
use vouch_ca::ids::TrustDomain;
use vouch_ca::tokens::Role;

/// The load generator's HTTP/1.1 client: one mTLS keep-alive connection, one write per
/// request, the answer read by its Content-Length. Agents run on their own devices; here they
/// share the server's two cores, so the load generator is kept as lean as a client can be
/// (reqwest's pool and layers cost more CPU per request than the server's HTTPS).
struct Connection {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: Vec<u8>,
}

impl Connection {
    async fn open(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        Self {
            tls,
            buf: Vec::with_capacity(8192),
        }
    }

    /// Sends one request and returns the status and body of its answer.
    async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut out = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        self.tls.write_all(&out).await.unwrap();
        self.tls.flush().await.unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        let (status, head_len, body_len) = loop {
            let n = self.tls.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) = response.parse(&self.buf).unwrap() {
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| {
                        std::str::from_utf8(h.value)
                            .unwrap()
                            .parse::<usize>()
                            .unwrap()
                    })
                    .expect("an answer with Content-Length");
                break (response.code.unwrap(), head_len, length);
            }
        };
        while self.buf.len() < head_len + body_len {
            let n = self.tls.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        (status, self.buf[head_len..head_len + body_len].to_vec())
    }
}

/// CPU seconds so far of the load generator, of the server's runtime, and of everything else
/// (the database: SQLite's connection threads and the group-commit writers).
fn cpu_split() -> Option<[f64; 3]> {
    let mut split = [0.0; 3];
    for (name, seconds) in cpu_seconds_by_thread()? {
        let i = if name.starts_with(LOAD_THREADS) {
            0
        } else if name.starts_with("vouch-server") {
            1
        } else {
            2
        };
        split[i] += seconds;
    }
    Some(split)
}

/// One round's figures.
struct Round {
    /// Attestations per second.
    rate: f64,
    /// Cores busy (server and load generator).
    cpu: Option<f64>,
    /// CPU seconds per attestation: load generator, server, database.
    split: Option<[f64; 3]>,
}

/// `n` attestations by the devices over their open connections; returns the figures and the
/// connections for the next round.
async fn attest_round(
    peers: Vec<(Connection, SoftwareAk)>,
    n: usize,
    parts: Arc<tpm_fleet::QuoteParts>,
) -> (Round, Vec<(Connection, SoftwareAk)>) {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let split_start = cpu_split();
    let mut tasks = Vec::new();
    for (mut connection, ak) in peers {
        let (next, parts) = (next.clone(), parts.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let (status, body) = connection
                    .request("POST", "/v1/attest/challenge", b"{}")
                    .await;
                assert_eq!(status, 201);
                let challenge: Challenge = serde_json::from_slice(&body).unwrap();
                let submission = parts.submission(&ak, &challenge.nonce);
                let (status, body) = connection
                    .request("POST", "/v1/attest/quote", submission.as_bytes())
                    .await;
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            }
            (connection, ak)
        }));
    }
    let mut back = Vec::new();
    for t in tasks {
        back.push(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let round = Round {
        rate: n as f64 / elapsed,
        cpu: cpu_start.zip(cpu_seconds()).map(|(a, b)| (b - a) / elapsed),
        split: split_start
            .zip(cpu_split())
            .map(|(a, b)| [0, 1, 2].map(|i| (b[i] - a[i]) / n as f64)),
    };
    (round, back)
}

/// The part of a challenge the load generator reads.
#[derive(serde::Deserialize)]
struct Challenge {
    nonce: String,
}

fn main() {
    let n = env_usize("VOUCH_BENCH_N", 20_000);
    let devices = env_usize("VOUCH_BENCH_DEVICES", 256).min(n).max(1);
    let rounds_n = env_usize("VOUCH_BENCH_ROUNDS", 5).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    // The server and the load generator run on runtimes of their own, so that the CPU each
    // takes can be told apart by thread name.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vouch-server")
        .build()
        .unwrap();
    let load_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(LOAD_THREADS)
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
    let raw = tpm_fleet::raw_verification_cost(&references, &log);
    let raw_per_core = 1.0 / raw;
    let ceiling = raw_per_core * cores as f64;

    let (server, fleet, root) = server_runtime.block_on(async {
        let config = ServeConfig {
            policy: PolicyConfig {
                dir: Some(policies.clone()),
                shadow_dir: None,
                poll: None,
            },
            ..serve_config(&data_dir, Settings::default())
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
        let fleet = tpm_fleet::seed(&server, &admin_client, &base, &admin, devices).await;
        (server, fleet, root)
    });
    let addr = server.addr;

    let (rounds, floor) = load_runtime.block_on(async {
        // Every device opens its mTLS connection first (handshakes are not measured).
        let mut opening = Vec::new();
        for device in fleet {
            let config = Arc::new(device_tls_config(&root, &device.identity, &[b"http/1.1"]));
            opening.push(tokio::spawn(async move {
                (Connection::open(addr, config).await, device.ak)
            }));
        }
        let mut peers = Vec::new();
        for t in opening {
            peers.push(t.await.unwrap());
        }
        // The PCR values never change here; the quote is made over each fresh nonce.
        let body = Arc::new(tpm_fleet::QuoteParts::new());
        let mut rounds = Vec::new();
        for round in 1..=rounds_n {
            eprintln!("round {round}/{rounds_n}: {n} attestations by {devices} devices...");
            let (measured, back) = attest_round(peers, n, body.clone()).await;
            peers = back;
            rounds.push(measured);
        }

        // The transport floor: two requests that do nothing (GET /healthz) per attestation,
        // over the same mTLS connections.
        let next = Arc::new(AtomicUsize::new(0));
        let floor_start = Instant::now();
        let mut tasks = Vec::new();
        for (mut connection, _) in peers {
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    for _ in 0..2 {
                        let (status, _) = connection.request("GET", "/healthz", b"").await;
                        assert_eq!(status, 200);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let floor = n as f64 / floor_start.elapsed().as_secs_f64();
        (rounds, floor)
    });
    server_runtime.block_on(server.stop());

    println!("attest benchmark ({cores} cores, SQLite, HTTPS keep-alive with mTLS, {devices} devices, N={n} per round)");
    println!(
        "  raw verification (parse + ECDSA + signer + PCR digest + event-log replay + reference): {:.1} us = {:.0} /s per core",
        raw * 1e6,
        raw_per_core
    );
    println!("  raw ceiling on {cores} cores:                 {ceiling:.0} verifications/s");
    // The median round (by rate) stands for the run; every round is shown.
    let mut order: Vec<usize> = (0..rounds.len()).collect();
    order.sort_by(|&a, &b| rounds[a].rate.total_cmp(&rounds[b].rate));
    let median = &rounds[order[order.len() / 2]];
    let all: Vec<String> = rounds.iter().map(|r| format!("{:.0}", r.rate)).collect();
    println!(
        "  end-to-end attestations (challenge + quote): median {:.0} /s of {} rounds ({} /s)",
        median.rate,
        rounds.len(),
        all.join(", ")
    );
    println!(
        "  ratio end-to-end (median) / raw ceiling:    {:.1}%",
        100.0 * median.rate / ceiling
    );
    println!(
        "  target 5,000 /s end to end:                 {}",
        if median.rate >= 5000.0 {
            "met (median round)"
        } else {
            "NOT met (median round)"
        }
    );
    println!("  HTTPS floor (2 x GET /healthz per attestation, same connections): {floor:.0} /s");
    common::result(
        "attest",
        &format!("attestations (challenge + quote) end to end, keep-alive mTLS, {devices} devices, median round"),
        &format!("{:.0} /s", median.rate),
        &format!("{ceiling:.0} /s raw verification ceiling on {cores} cores"),
        &format!("{:.1}%", 100.0 * median.rate / ceiling),
        &format!(
            ">= 5,000/s: {}",
            if median.rate >= 5000.0 { "met" } else { "NOT met" }
        ),
    );
    if let Some([_, serving, database]) = median.split {
        let server = serving + database;
        common::result(
            "attest",
            "server CPU per attestation (median round)",
            &format!("{:.0} us", server * 1e6),
            &format!("{:.0} us raw verification", raw * 1e6),
            &format!("{:.1}x", server / raw),
            "-",
        );
    }
    if let Some([load, serving, database]) = median.split {
        let server = serving + database;
        println!(
            "  CPU per attestation (median round): server {:.0} us (HTTPS + verification {:.0} us, database {:.0} us; = {:.0} /s on {cores} cores), load generator {:.0} us",
            server * 1e6,
            serving * 1e6,
            database * 1e6,
            cores as f64 / server,
            load * 1e6
        );
    }
    if let Some(cpu) = median.cpu {
        println!(
            "  CPU busy (median round, server + load generator): {:.0}% of {cores} cores",
            100.0 * cpu / cores as f64
        );
    }
}
