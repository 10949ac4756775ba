//! Enrollment throughput over HTTPS on SQLite, against the raw cost of the cryptography
//! underneath, measured in the same run.
//!
//! ```text
//! cargo bench -p vouch-ca --bench enroll            # 20,000 enrollments
//! VOUCH_BENCH_N=2000 cargo bench -p vouch-ca --bench enroll
//! ```
//!
//! 1. Raw: one CSR check (parse + ECDSA P-256 verify) plus one certificate signature, in a
//!    loop on one core; the machine's ceiling is that rate times the number of cores.
//! 2. End to end: a real server on a loopback port with a SQLite registry; N clients' worth
//!    of CSRs and single-use bootstrap tokens are prepared first, then enrolled by
//!    concurrent HTTPS requests (keep-alive connections). The load generator runs on the same
//!    cores as the server.
//!
//! 3. The transport floor: as many `GET /healthz` requests over the same connections, to
//!    show how much of the machine HTTPS and the load generator take by themselves.
//!
//! Exits non-zero if any enrollment fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::{authority, cpu_seconds, csr, env_usize, issue_cost, serve_config};

use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use vouch_ca::api::Settings;
use vouch_ca::app;
use vouch_ca::clock::{Clock, SystemClock};
use vouch_ca::datadir::{DataDir, DataFile};
use vouch_ca::ids::TrustDomain;
use vouch_ca::tokens::Role;

fn main() {
    let n = env_usize("VOUCH_BENCH_N", 20_000);
    let concurrency = env_usize("VOUCH_BENCH_CONCURRENCY", 256);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let data_dir = DataDir::new(dir.path().join("data"));
    let td = TrustDomain::parse("bench.example").unwrap();
    app::init_ca(&data_dir, &td, SystemClock.now()).unwrap();

    eprintln!("preparing {n} CSRs...");
    let csrs: Vec<String> = (0..n).map(|_| csr()).collect();

    let ca = authority(&data_dir);
    let raw = issue_cost(&ca, &csrs, &td);
    let raw_per_core = 1.0 / raw;
    let ceiling = raw_per_core * cores as f64;

    let rate = runtime.block_on(async {
        let config = serve_config(&data_dir, Settings::default());
        let server = app::start(&config, Arc::new(SystemClock)).await.unwrap();
        let base = format!("https://127.0.0.1:{}", server.addr.port());
        let root = std::fs::read(data_dir.file(DataFile::RootCert)).unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&root).unwrap())
            .pool_max_idle_per_host(concurrency)
            // One connection per client, as a fleet of devices has; HTTP/2 would multiplex
            // every request over a single TLS connection.
            .http1_only()
            .build()
            .unwrap();
        let admin =
            app::mint_operator_token(&data_dir, Role::Admin, "bench", 3600, SystemClock.unix())
                .unwrap();

        eprintln!("creating {n} bootstrap tokens...");
        let mut tokens = Vec::with_capacity(n);
        for _ in 0..n {
            let r = client
                .post(format!("{base}/v1/bootstrap-tokens"))
                .bearer_auth(&admin)
                .json(&json!({"zone": "bench"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            tokens.push(
                r.json::<Value>().await.unwrap()["token"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }

        let work: Arc<Vec<(String, String)>> = Arc::new(tokens.into_iter().zip(csrs).collect());
        let next = Arc::new(AtomicUsize::new(0));
        eprintln!("enrolling {n} devices with {concurrency} concurrent clients...");
        let start = Instant::now();
        let cpu_start = cpu_seconds();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (client, base, work, next) =
                (client.clone(), base.clone(), work.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((token, csr)) = work.get(i) else {
                        break;
                    };
                    let r = client
                        .post(format!("{base}/v1/enroll"))
                        .json(&json!({"token": token, "csr_pem": csr}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
                    let _ = r.bytes().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = cpu_start.zip(cpu_seconds()).map(|(a, b)| (b - a) / elapsed);
        let counts = server.state.registry.counts().await.unwrap();
        assert_eq!(
            counts.devices, n as i64,
            "every enrollment is in the registry"
        );

        // The transport floor: the same number of requests to an endpoint that does nothing
        // (GET /healthz) over the same client and connections.
        let next = Arc::new(AtomicUsize::new(0));
        let floor_start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (client, base, next) = (client.clone(), base.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    let _ = r.bytes().await.unwrap();
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
    let (rate, cpu, floor) = rate;

    println!("enroll benchmark ({cores} cores, SQLite, HTTPS keep-alive, {concurrency} concurrent clients, N={n})");
    println!(
        "  raw CSR check + certificate signature: {:.1} us/op = {:.0} ops/s per core",
        raw * 1e6,
        raw_per_core
    );
    println!("  raw ceiling on {cores} cores:            {ceiling:.0} ops/s");
    println!("  end-to-end enrollments:                {rate:.0} /s");
    println!(
        "  ratio end-to-end / raw ceiling:        {:.1}%",
        100.0 * rate / ceiling
    );
    println!("  HTTPS floor (GET /healthz, same client): {floor:.0} requests/s");
    let ratio = rate / ceiling;
    common::result(
        "enroll",
        &format!("CSR enrollments end to end, HTTPS keep-alive, {concurrency} clients, SQLite"),
        &format!("{rate:.0} /s"),
        &format!("{ceiling:.0} /s raw ceiling (CSR check + signature on {cores} cores)"),
        &format!("{:.1}%", 100.0 * ratio),
        &format!(
            ">= 5,000/s and >= 50%: {}",
            if rate >= 5000.0 && ratio >= 0.5 {
                "met"
            } else {
                "NOT met"
            }
        ),
    );
    if let Some(cpu) = cpu {
        println!(
            "  CPU busy during the run (server + load generator): {:.0}% of {cores} cores",
            100.0 * cpu / cores as f64
        );
    }
}
