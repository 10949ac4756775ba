//! Two real sidecars on loopback (issue 16, acceptance 5): send→deliver latency over mutual
//! TLS against a plain loopback HTTP round trip measured in the same run, and the receiving
//! agent's resident memory while it takes a sustained rate and then a 10× burst.
//!
//! ```text
//! cargo bench -p vouch-agent --bench sidecar                     # the full run (~2 min)
//! VOUCH_BENCH_QUICK=1 cargo bench -p vouch-agent --bench sidecar # a smoke run
//! VOUCH_BENCH_N=5000 VOUCH_BENCH_RATE=2000 cargo bench -p vouch-agent --bench sidecar
//! VOUCH_BENCH_BURST_CONNECTIONS=128 cargo bench -p vouch-agent --bench sidecar
//! ```
//!
//! A real server runs in this process, on a runtime of its own (policy: one rule letting
//! zone `edge` send to zone `regional`, no rate limit); sender A (`edge`) and receiver B (`regional`, `--listen` on a
//! loopback port) are `vouch-agent run` processes, their logs in files. The workload is this
//! process, speaking HTTP/1.1 on the sidecars' Unix sockets over kept connections; a task
//! long-polls B's inbox throughout and counts what arrives.
//!
//! 1. Latency: 50 warm-up sends, then N (default 2,000) sequential `POST /v1/send` of a
//!    1 KiB payload to B, each timed from request to answer (direct delivery answers after
//!    B has checked the message and signed its receipt, and A has checked the receipt).
//!    This runs twice: with the server's threads at the sidecars' priority, then with them
//!    at `SCHED_IDLE` (`chrt --idle`), standing for a server on another machine: its work on
//!    the decisions the sidecars upload then takes idle time instead of delaying messages.
//!    The target is judged on the second; both are printed. Then the same request bodies, N
//!    times, to a trivial server on loopback TCP (same HTTP stack, kept connection,
//!    `TCP_NODELAY` on both ends): the transport floor. Added = sidecar − plain, per
//!    percentile.
//! 2. Memory: B's `VmRSS` (and its anonymous and file-mapped parts) and `VmHWM` from
//!    `/proc/<pid>/status`, after start, every second while A sends at a paced rate (default
//!    1,000/s for 60 s, from 4 connections), in a 10× burst (5 s, from 32 connections), and
//!    for 10 s after; with the rate achieved and the cores A and B kept busy.
//!
//! Targets are printed beside the figures, not asserted. Exits non-zero if a send fails or a
//! message A sent is not received by B.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;

use axum::body::Bytes;
use axum::http::Method;
use axum::routing::post;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use vouch_proto::workload::MessageList;

const WARM_UP: usize = 50;
const PAYLOAD_BYTES: usize = 1024;
/// Connections the paced phases send over, at the sustained rate and in the burst. (A
/// sidecar keeps at most 32 sends in flight, half the receiver's replay window, so the burst
/// may use more connections than the window without a message refused as a replay.)
const SUSTAIN_CONNECTIONS: usize = 4;
const BURST_CONNECTIONS: usize = 64;

/// What B's workload has taken from its inbox: message ids, and how many came twice.
#[derive(Default)]
struct Received {
    ids: HashSet<String>,
    duplicates: usize,
}

/// Long-polls B's inbox until `stop`, recording what arrives.
async fn drain(socket: PathBuf, received: Arc<Mutex<Received>>, stop: Arc<AtomicBool>) {
    let mut conn = Connection::unix(&socket).await.unwrap();
    while !stop.load(Ordering::Relaxed) {
        let (status, body) = match conn
            .request(Method::GET, "/v1/messages?wait=1", Bytes::new())
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                eprintln!("draining B's inbox: {e}; reconnecting");
                tokio::time::sleep(Duration::from_millis(100)).await;
                conn = Connection::unix(&socket).await.unwrap();
                continue;
            }
        };
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let list: MessageList = serde_json::from_slice(&body).unwrap();
        let mut received = received.lock().unwrap();
        for m in list.messages {
            if !received.ids.insert(m.message_id) {
                received.duplicates += 1;
            }
        }
    }
}

/// Sends that succeeded (their ids and times, ms) and that failed.
#[derive(Default)]
struct Tally {
    sent: Vec<String>,
    latencies_ms: Vec<f64>,
    failures: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.sent.extend(other.sent);
        self.latencies_ms.extend(other.latencies_ms);
        self.failures.extend(other.failures);
    }

    async fn send(&mut self, conn: &mut Connection, body: &Bytes) {
        let start = Instant::now();
        match conn.send(body).await {
            Ok(id) => {
                self.latencies_ms.push(start.elapsed().as_secs_f64() * 1e3);
                self.sent.push(id);
            }
            Err(e) => self.failures.push(e),
        }
    }
}

/// One run of sequential sends: the figures, and what was sent.
struct LatencyRun {
    tally: Tally,
    p50: f64,
    p99: f64,
    max: f64,
    /// Sends over 10 ms.
    slow: usize,
    /// CPU time of A and B per message, µs.
    cpu_per_message: (f64, f64),
}

/// `n` sequential sends of `body` on `conn`, each timed.
async fn latency_run(
    conn: &mut Connection,
    body: &Bytes,
    n: usize,
    a: &Sidecar,
    b: &Sidecar,
) -> LatencyRun {
    let mut tally = Tally::default();
    let cpu = (a.cpu_seconds(), b.cpu_seconds());
    for _ in 0..n {
        tally.send(conn, body).await;
    }
    let per_message_us = |cpu_now: f64, before: f64| (cpu_now - before) / n as f64 * 1e6;
    let cpu_per_message = (
        per_message_us(a.cpu_seconds(), cpu.0),
        per_message_us(b.cpu_seconds(), cpu.1),
    );
    let mut latencies = tally.latencies_ms.clone();
    let (p50, p99, max) = summary(&mut latencies);
    let slow = latencies.iter().filter(|&&ms| ms > 10.0).count();
    LatencyRun {
        tally,
        p50,
        p99,
        max,
        slow,
        cpu_per_message,
    }
}

/// A paced phase's outcome.
struct Paced {
    target: f64,
    achieved: f64,
    tally: Tally,
    /// B's memory, sampled every second and at the end.
    memory: Vec<Memory>,
    /// Cores A and B kept busy on average.
    cores: (f64, f64),
}

impl Paced {
    fn max(&self, f: impl Fn(&Memory) -> f64) -> f64 {
        self.memory.iter().map(f).fold(f64::NAN, f64::max)
    }

    fn last(&self) -> Memory {
        *self.memory.last().unwrap()
    }
}

/// Sends `body` from `connections` connections on A's socket at `rate` a second for `secs`,
/// sampling B's memory every second. Sends that fall behind the pace are not made up.
async fn paced(
    a: &Sidecar,
    b: &Sidecar,
    body: &Bytes,
    rate: f64,
    secs: f64,
    connections: usize,
) -> Paced {
    let permits = Arc::new(Semaphore::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let mut conn = Connection::unix(&a.socket).await.unwrap();
        let (permits, body) = (Arc::clone(&permits), body.clone());
        workers.spawn(async move {
            let mut tally = Tally::default();
            while let Ok(permit) = permits.acquire().await {
                permit.forget();
                tally.send(&mut conn, &body).await;
            }
            tally
        });
    }
    let mut memory = Vec::new();
    let cpu = (a.cpu_seconds(), b.cpu_seconds());
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut issued, mut sampled) = (0u64, 0u64);
    loop {
        tick.tick().await;
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= secs {
            break;
        }
        let due = (elapsed * rate) as u64;
        if due > issued {
            permits.add_permits(usize::try_from(due - issued).unwrap());
            issued = due;
        }
        if elapsed as u64 > sampled {
            sampled = elapsed as u64;
            memory.push(b.memory());
        }
    }
    // Unused permits (the senders fell behind) are dropped; sends in flight finish.
    permits.close();
    let mut tally = Tally::default();
    while let Some(worker) = workers.join_next().await {
        tally.merge(worker.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    memory.push(b.memory());
    Paced {
        target: rate,
        achieved: tally.sent.len() as f64 / elapsed,
        tally,
        memory,
        cores: (
            (a.cpu_seconds() - cpu.0) / elapsed,
            (b.cpu_seconds() - cpu.1) / elapsed,
        ),
    }
}

/// The transport floor: a trivial handler on loopback TCP, served by the same stack as the
/// sidecars' (hyper through hyper-util's auto builder, axum router).
async fn plain_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route(
        "/v1/send",
        post(|body: Bytes| async move { format!("{{\"len\":{}}}", body.len()) }),
    );
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let service = TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn main() {
    let quick = std::env::var("VOUCH_BENCH_QUICK").is_ok();
    let settings = Settings {
        n: env_usize("VOUCH_BENCH_N", if quick { 200 } else { 2_000 }),
        rate: env_usize("VOUCH_BENCH_RATE", 1_000) as f64,
        sustain_secs: if quick { 3.0 } else { 60.0 },
        burst_secs: if quick { 1.0 } else { 5.0 },
        after_secs: if quick { 2 } else { 10 },
        burst_connections: env_usize("VOUCH_BENCH_BURST_CONNECTIONS", BURST_CONNECTIONS),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = runtime.block_on(run(&settings));
    drop(runtime);
    std::process::exit(code);
}

/// The run's size.
struct Settings {
    n: usize,
    rate: f64,
    sustain_secs: f64,
    burst_secs: f64,
    after_secs: u64,
    burst_connections: usize,
}

async fn run(settings: &Settings) -> i32 {
    let &Settings {
        n,
        rate,
        sustain_secs,
        burst_secs,
        after_secs,
        burst_connections,
    } = settings;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    policy_dir(&policies, POLICY);
    let server = Server::start_apart(dir.path(), &policies).await;
    eprintln!("starting sidecars A (edge) and B (regional)...");
    let a = Sidecar::start(&server, "edge", &dir.path().join("a"), None).await;
    let b = Sidecar::start(
        &server,
        "regional",
        &dir.path().join("b"),
        Some(free_port()),
    )
    .await;
    let to = b.identity().await.unwrap()["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = b.memory();

    let payload: Vec<u8> = (0..PAYLOAD_BYTES).map(|i| (i % 251) as u8).collect();
    let body = Bytes::from(
        json!({"to": to, "data_type": "aggregated_metrics", "protocol": "https",
               "payload": b64(&payload)})
        .to_string(),
    );
    let received = Arc::new(Mutex::new(Received::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = tokio::spawn(drain(
        b.socket.clone(),
        Arc::clone(&received),
        Arc::clone(&stop),
    ));

    // 1. Latency, sequential on one kept connection; then the plain round trip.
    eprintln!("latency: {WARM_UP} warm-up + {n} sends...");
    let mut all = Tally::default();
    let mut conn = Connection::unix(&a.socket).await.unwrap();
    let mut warm = Tally::default();
    for _ in 0..WARM_UP {
        warm.send(&mut conn, &body).await;
    }
    // First with the server's threads at the sidecars' priority, then at idle priority: the
    // server stands for another machine, and its work on the decisions both sidecars upload
    // (about a second of uploads every two seconds at this rate) should take these cores'
    // idle time, not delay the sidecars' messages.
    let mut shared = latency_run(&mut conn, &body, n, &a, &b).await;
    let reniced = server.idle_priority();
    let mut apart = latency_run(&mut conn, &body, n, &a, &b).await;
    let latency_failures =
        shared.tally.failures.len() + apart.tally.failures.len() + warm.failures.len();
    all.merge(warm);
    all.merge(std::mem::take(&mut shared.tally));
    all.merge(std::mem::take(&mut apart.tally));
    let after_latency = b.memory();

    let mut plain_conn = Connection::tcp(plain_server().await).await.unwrap();
    let mut plain = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
        let start = Instant::now();
        let (status, _) = plain_conn
            .request(Method::POST, "/v1/send", body.clone())
            .await
            .unwrap();
        assert_eq!(status, 200);
        if i >= WARM_UP {
            plain.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (p50, p99, pmax) = summary(&mut plain);

    // 2. Memory at a sustained rate, in a 10× burst, and after.
    eprintln!("sustained: {rate}/s for {sustain_secs}s from {SUSTAIN_CONNECTIONS} connections...");
    let mut sustain = paced(&a, &b, &body, rate, sustain_secs, SUSTAIN_CONNECTIONS).await;
    eprintln!(
        "burst: {}/s for {burst_secs}s from {burst_connections} connections...",
        rate * 10.0
    );
    let mut burst = paced(&a, &b, &body, rate * 10.0, burst_secs, burst_connections).await;
    let right_after = b.memory();
    let mut settling = Vec::new();
    for _ in 0..after_secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        settling.push(b.memory());
    }
    let settled = b.memory();

    // Every message A sent must have reached B's workload.
    let (u50, u99, _) = summary(&mut sustain.tally.latencies_ms);
    let (b50, b99, _) = summary(&mut burst.tally.latencies_ms);
    let (sustain_failures, burst_failures) =
        (sustain.tally.failures.len(), burst.tally.failures.len());
    all.merge(std::mem::take(&mut sustain.tally));
    all.merge(std::mem::take(&mut burst.tally));
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && received.lock().unwrap().ids.len() < all.sent.len() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    drainer.await.unwrap();
    let received = received.lock().unwrap();
    let lost = all
        .sent
        .iter()
        .filter(|id| !received.ids.contains(*id))
        .count();

    println!();
    println!("send→deliver latency, {PAYLOAD_BYTES}-byte payload, {n} sequential sends each (ms)");
    println!("{:<56} {:>8} {:>8} {:>8}", "", "p50", "p99", "max");
    for (run, label) in [
        (&shared, "sidecar A→B, server at the sidecars' priority"),
        (
            &apart,
            "sidecar A→B, server at idle priority (as if remote)",
        ),
    ] {
        println!(
            "{label:<56} {:>8.3} {:>8.3} {:>8.3}",
            run.p50, run.p99, run.max
        );
    }
    println!(
        "{:<56} {p50:>8.3} {p99:>8.3} {pmax:>8.3}",
        "plain HTTP/1.1 round trip on loopback"
    );
    let added99 = apart.p99 - p99;
    println!(
        "{:<56} {:>8.3} {added99:>8.3}            target p99 ≤ 1.000: {}",
        "added (server as if remote)",
        apart.p50 - p50,
        verdict(added99 <= 1.0)
    );
    println!(
        "{:<56} {:>8.3} {:>8.3}",
        "added (server at the sidecars' priority)",
        shared.p50 - p50,
        shared.p99 - p99,
    );
    println!(
        "sends over 10 ms: {}; CPU per message: A {:.0} µs, B {:.0} µs ({reniced} server threads at idle priority)",
        shared.slow + apart.slow,
        apart.cpu_per_message.0,
        apart.cpu_per_message.1
    );
    result(
        "sidecar",
        "send→deliver latency added by two sidecars, p99 (1 KiB, server at idle priority as if remote)",
        &format!("{added99:.3} ms"),
        &format!("{p99:.3} ms plain HTTP/1.1 round trip on loopback"),
        &format!("{:.1}x", apart.p99 / p99),
        &format!("added p99 <= 1 ms: {}", verdict(added99 <= 1.0)),
    );
    println!();
    println!("receiving agent B: resident memory (MiB; RSS = anon + file-mapped code)");
    // Most of the RSS is the binary's code, so which build ran matters (Cargo.toml, `dist`).
    let binary = agent();
    let mib = std::fs::metadata(&binary).map_or(f64::NAN, |m| m.len() as f64 / 1_048_576.0);
    println!("binary: {binary} ({mib:.1} MiB on disk)");
    println!(
        "{:<22} {:>8} {:>8} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8}",
        "phase",
        "target/s",
        "achieved",
        "failed",
        "RSS max",
        "anon mx",
        "RSS end",
        "A cores",
        "B cores",
        "p50 ms",
        "p99 ms"
    );
    let still = |name: &str, m: &Memory| {
        println!(
            "{name:<22} {:>8} {:>8} {:>6} {:>7} {:>7.2} {:>7.2}",
            "", "", "", "", m.anon, m.rss
        );
    };
    still("after start", &started);
    still("after latency phase", &after_latency);
    let phase = |name: String, p: &Paced, failed: usize, (p50, p99): (f64, f64)| {
        println!(
            "{name:<22} {:>8.0} {:>8.0} {failed:>6} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {p50:>7.2} {p99:>8.2}",
            p.target,
            p.achieved,
            p.max(|m| m.rss),
            p.max(|m| m.anon),
            p.last().rss,
            p.cores.0,
            p.cores.1,
        );
    };
    phase(
        format!("sustained {sustain_secs}s"),
        &sustain,
        sustain_failures,
        (u50, u99),
    );
    phase(
        format!("burst {burst_secs}s (10×)"),
        &burst,
        burst_failures,
        (b50, b99),
    );
    still("right after the burst", &right_after);
    let settling_max = settling.iter().map(|m| m.rss).fold(f64::NAN, f64::max);
    println!(
        "{:<22} {:>8} {:>8} {:>6} {settling_max:>7.2} {:>7.2} {:>7.2}",
        format!("{after_secs}s after the burst"),
        "",
        "",
        "",
        settled.anon,
        settled.rss
    );
    let sustain_max = sustain.max(|m| m.rss);
    let before_burst = sustain.last();
    result(
        "sidecar",
        &format!("receiver RSS at {:.0} messages/s", sustain.target),
        &format!("{sustain_max:.2} MiB"),
        &format!("{:.2} MiB after start", started.rss),
        &format!("{:.2}x", sustain_max / started.rss),
        &format!("<= 10 MiB: {}", verdict(sustain_max <= 10.0)),
    );
    println!(
        "target RSS ≤ 10 MiB while sustaining: {} ({sustain_max:.2} MiB; anon {:.2}, file {:.2} at the end, {:.2} of it the binary's own pages)",
        verdict(sustain_max <= 10.0),
        before_burst.anon,
        before_burst.file,
        b.binary_rss()
    );
    println!(
        "target back near baseline after the burst (≤ 1.1 × RSS before it): {} ({:.2} MiB, before {:.2}, after start {:.2}; peak VmHWM {:.2})",
        verdict(settled.rss <= before_burst.rss * 1.1),
        settled.rss,
        before_burst.rss,
        started.rss,
        settled.hwm
    );
    println!();
    println!(
        "messages: {} sent, {} failed (latency {latency_failures}, sustained {sustain_failures}, burst {burst_failures}), {} received by B ({} twice), {lost} lost",
        all.sent.len(),
        all.failures.len(),
        received.ids.len(),
        received.duplicates
    );
    for f in all.failures.iter().take(3) {
        println!("  failed: {f}");
    }
    if !all.failures.is_empty() || lost > 0 || received.duplicates > 0 {
        println!("logs: A {}, B {} (kept)", a.log.display(), b.log.display());
        // Kept for reading: the temporary directory is not removed.
        let _ = dir.keep();
        return 1;
    }
    0
}
