//! Revocation to refusal across a fleet (issue 12, acceptance 6): 100 revocations with 50
//! connected sidecars on loopback.
//!
//! ```text
//! cargo bench -p vouch-agent --bench revocation                      # 50 agents, 100 revocations
//! VOUCH_BENCH_QUICK=1 cargo bench -p vouch-agent --bench revocation  # a smoke run (5 agents, 5)
//! VOUCH_BENCH_AGENTS=20 VOUCH_BENCH_REVOCATIONS=40 cargo bench -p vouch-agent --bench revocation
//! ```
//!
//! A real server runs in this process (policy: zone `edge` may send to zone `regional`).
//! The agents are `vouch-agent run` processes in zone `regional`, each taking direct
//! deliveries on a loopback port and following the CRL by long-poll as shipped. The revoked
//! devices are 100 more devices of zone `edge`, enrolled by `vouch-agent run --once`; this
//! process seals messages with their keys, each to one agent (device i to agent i mod 50),
//! and first checks that the agent takes one.
//!
//! Then, one after another: the admin revokes device i (`POST /v1/devices/{id}/revoke`),
//! and this process delivers device i's next message to its agent again and again (every
//! 5 ms) until it is refused as revoked. Two figures per run:
//! - **refusal**: from the revocation's request to the first refusal, per revocation;
//! - **reach**: from the revocation's request to the moment each of the 50 agents put the new
//!   CRL in use (the `CRL in use` line of its log, which is written before any message is
//!   checked against it), per revocation and agent: 5,000 samples.
//!
//! Beside them, measured in the same run, the floor of the refusal figure: one delivery of
//! a message (a new mutual-TLS connection, as the probe makes each time) that is accepted.
//! The target (p99 ≤ 1 s) is printed beside the figures, not asserted. Exits non-zero if a
//! revocation is not refused within 10 s.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};
use vouch_agent::client::HttpApi;
use vouch_agent::lifecycle::{Api, ClientIdentity};
use vouch_agent::messaging::deliver::{self, DeliveryError};
use vouch_agent::messaging::peers::{verify_peer_record, Peer};
use vouch_agent::messaging::send::{Credentials, Outbox};
use vouch_agent::messaging::trust::TrustAnchors;

/// Longest wait for one refusal.
const GIVE_UP: Duration = Duration::from_secs(10);

/// A device enrolled by `vouch-agent run --once`, sealing by hand to one agent.
struct Device {
    device_id: String,
    outbox: Outbox,
    peer: Peer,
    tls: rustls::ClientConfig,
    endpoint: String,
}

fn read(state: &Path, file: &str) -> String {
    std::fs::read_to_string(state.join(file)).unwrap()
}

impl Device {
    /// Enrolls a device with `token` in `dir` (a blocking call: a process runs).
    fn enroll(server_base: &str, token: &str, dir: &Path) -> PathBuf {
        let state = dir.join("state");
        let status = std::process::Command::new(agent())
            .args(["run", "--once", "--server", server_base, "--state-dir"])
            .arg(&state)
            .args(["--join-token", token])
            .env("TSS2_LOG", "all+NONE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "enrolling a device failed");
        state
    }

    /// The device in `state`, sealing to `target` (its device id) at `endpoint`.
    async fn sealing_to(server: &Server, state: &Path, target: &str, endpoint: String) -> Self {
        let identity: Value = serde_json::from_str(&read(state, "identity.json")).unwrap();
        let spiffe_id = identity["spiffe_id"].as_str().unwrap().to_owned();
        let (cert_pem, key_pem) = (read(state, "cert.pem"), read(state, "key.pem"));
        let (ka_key_pem, ka_cert_pem) = (read(state, "ka-key.pem"), read(state, "ka-cert.pem"));
        let ca_pem = read(state, "ca.pem");
        let credentials = Credentials {
            spiffe_id: &spiffe_id,
            key_pem: &key_pem,
            cert_pem: &cert_pem,
            ka_key_pem: &ka_key_pem,
            ka_cert_pem: &ka_cert_pem,
        };
        let root = vouch_agent::credentials::certificates(&ca_pem)[0].clone();
        let issuing = vouch_agent::credentials::certificates(&cert_pem)[1].clone();
        let anchors = TrustAnchors::new(
            &pem::encode(&pem::Pem::new("CERTIFICATE", issuing)),
            &root,
            "fleet.example",
        )
        .unwrap();
        let api = HttpApi::new(&server.base);
        api.trust_root(&ca_pem).unwrap();
        let me = ClientIdentity {
            cert_pem: cert_pem.clone(),
            key_pem: key_pem.clone(),
        };
        let record = api.peer(&me, target).await.unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let peer = verify_peer_record(&anchors, &record, target, now).unwrap();
        let tls =
            deliver::client_config(&cert_pem, &key_pem, &anchors, &peer.device.spiffe_id).unwrap();
        Self {
            device_id: identity["device_id"].as_str().unwrap().to_owned(),
            outbox: Outbox::new(&credentials).unwrap(),
            peer,
            tls,
            endpoint,
        }
    }

    /// Delivers one sealed message over a new mutual-TLS connection.
    async fn deliver(&self) -> Result<deliver::Receipt, DeliveryError> {
        let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap();
        let envelope = self
            .outbox
            .seal(&self.peer, "aggregated_metrics", b"probe", now, true)
            .unwrap()
            .envelope;
        deliver::deliver(&self.endpoint, envelope, self.tls.clone()).await
    }
}

fn revoked(result: &Result<deliver::Receipt, DeliveryError>) -> bool {
    matches!(result, Err(DeliveryError::Refused { detail, .. }) if detail.starts_with("revoked"))
}

/// The `CRL in use` lines of an agent's log: CRL number → when.
fn crl_installs(log: &str) -> HashMap<u64, SystemTime> {
    let mut installs = HashMap::new();
    for line in log.lines().filter(|l| l.contains("CRL in use")) {
        let Some(stamp) = line.split_whitespace().next() else {
            continue;
        };
        let Ok(at) =
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
        else {
            continue;
        };
        let number = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("crl_number="))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = number {
            installs.entry(n).or_insert_with(|| SystemTime::from(at));
        }
    }
    installs
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let quick = std::env::var("VOUCH_BENCH_QUICK").is_ok();
    let agents = env_usize("VOUCH_BENCH_AGENTS", if quick { 5 } else { 50 });
    let revocations = env_usize("VOUCH_BENCH_REVOCATIONS", if quick { 5 } else { 100 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = runtime.block_on(run(agents, revocations));
    drop(runtime);
    std::process::exit(code);
}

async fn run(agents: usize, revocations: usize) -> i32 {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    policy_dir(&policies, POLICY);
    let server = Server::start(dir.path(), &policies).await;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("revocation to refusal: {agents} agents, {revocations} revocations, {cores} cores");

    let started = Instant::now();
    let mut fleet = Vec::new();
    for k in 0..agents {
        let port = free_port();
        let at = dir.path().join(format!("agent-{k}"));
        let sidecar = Sidecar::start(&server, "regional", &at, Some(port)).await;
        fleet.push((sidecar, port, at.join("state")));
    }
    let mut devices = Vec::new();
    for chunk in (0..revocations).collect::<Vec<_>>().chunks(10) {
        let mut enrolling = Vec::new();
        for &i in chunk {
            let token = server.token("edge").await;
            let at = dir.path().join(format!("device-{i}"));
            let base = server.base.clone();
            enrolling.push(tokio::task::spawn_blocking(move || {
                Device::enroll(&base, &token, &at)
            }));
        }
        for task in enrolling {
            let state = task.await.unwrap();
            let k = devices.len() % agents;
            let (_, port, agent_state) = &fleet[k];
            let target: Value = serde_json::from_str(&read(agent_state, "identity.json")).unwrap();
            let device = Device::sealing_to(
                &server,
                &state,
                target["device_id"].as_str().unwrap(),
                format!("https://127.0.0.1:{port}"),
            )
            .await;
            devices.push(device);
        }
    }
    println!(
        "  set-up: {agents} agents started, {revocations} devices enrolled in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Each device's message is taken before its revocation; the same deliveries, timed,
    // are the floor of the probe.
    let mut floor = Vec::new();
    for device in &devices {
        let start = Instant::now();
        let taken = device.deliver().await;
        floor.push(ms(start.elapsed()));
        if let Err(e) = taken {
            eprintln!("a device's message was not taken before its revocation: {e}");
            return 1;
        }
    }

    let mut revoked_at = Vec::new();
    let mut refusal = Vec::new();
    for device in &devices {
        let at = SystemTime::now();
        let start = Instant::now();
        let r = server
            .client
            .post(format!(
                "{}/v1/devices/{}/revoke",
                server.base, device.device_id
            ))
            .bearer_auth(&server.admin)
            .json(&json!({"reason": "key_compromise"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "revoke: {}", r.text().await.unwrap());
        revoked_at.push(at);
        loop {
            if revoked(&device.deliver().await) {
                refusal.push(ms(start.elapsed()));
                break;
            }
            if start.elapsed() > GIVE_UP {
                eprintln!(
                    "device {} was not refused within {GIVE_UP:?} of its revocation",
                    device.device_id
                );
                return 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Let the last CRL reach every agent before the logs are read.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The CRL number of revocation i is the one after the previous revocation's: the logs
    // say which number each agent put in use when; the last revocation's number is the
    // largest one logged.
    let installs: Vec<HashMap<u64, SystemTime>> = fleet
        .iter()
        .map(|(sidecar, _, _)| crl_installs(&sidecar.log_text()))
        .collect();
    let last = installs
        .iter()
        .filter_map(|m| m.keys().max().copied())
        .max()
        .unwrap_or(0);
    let first = (last + 1).saturating_sub(revocations as u64);
    let mut reach = Vec::new();
    let mut missing = 0usize;
    for (i, at) in revoked_at.iter().enumerate() {
        for agent in &installs {
            // An agent that was behind may go straight from an older CRL to a newer one than
            // revocation i's: the revocation reached it when it first used any CRL numbered
            // at least i's.
            let reached = agent
                .iter()
                .filter(|(number, _)| **number >= first + i as u64)
                .map(|(_, t)| *t)
                .min();
            match reached {
                Some(t) => reach.push(ms(t.duration_since(*at).unwrap_or_default())),
                None => missing += 1,
            }
        }
    }

    let (f50, f99, fmax) = summary(&mut floor);
    let (r50, r99, rmax) = summary(&mut refusal);
    let (c50, c99, cmax) = summary(&mut reach);
    println!("  floor: one accepted delivery over a new mTLS connection: p50 {f50:.2} ms, p99 {f99:.2} ms, max {fmax:.2} ms");
    println!(
        "  refusal: revocation request to the first refused message ({} samples): p50 {r50:.1} ms, p99 {r99:.1} ms, max {rmax:.1} ms ({:.1}x the floor at p50); target p99 <= 1000 ms: {}",
        refusal.len(),
        r50 / f50,
        if r99 <= 1000.0 { "met" } else { "MISSED" }
    );
    println!(
        "  reach: revocation request to the new CRL in use at each agent ({} samples, {missing} not logged): p50 {c50:.1} ms, p99 {c99:.1} ms, max {cmax:.1} ms; target p99 <= 1000 ms: {}",
        reach.len(),
        if c99 <= 1000.0 && missing == 0 { "met" } else { "MISSED" }
    );
    result(
        "revocation",
        &format!("revocation request to the first refused message, p99 ({agents} agents)"),
        &format!("{r99:.1} ms"),
        &format!("{f50:.2} ms p50 one accepted delivery on a new mTLS connection"),
        &format!("{:.1}x at p50", r50 / f50),
        &format!(
            "p99 <= 1 s: {}",
            if r99 <= 1000.0 { "met" } else { "NOT met" }
        ),
    );
    result(
        "revocation",
        &format!(
            "revocation request to the new CRL in use at every agent, p99 ({} samples)",
            reach.len()
        ),
        &format!("{c99:.1} ms"),
        "-",
        "-",
        &format!(
            "p99 <= 1 s: {}",
            if c99 <= 1000.0 && missing == 0 {
                "met"
            } else {
                "NOT met"
            }
        ),
    );
    drop(fleet);
    if missing > 0 {
        eprintln!("{missing} (revocation, agent) pairs have no `CRL in use` line");
        return 1;
    }
    0
}
