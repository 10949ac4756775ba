//! What the benchmarks share: their size from the environment, the CPU the process used,
//! runtimes, CSRs, the raw cost of issuing a certificate, and running operations at a set
//! concurrency with the CPU they took by side (load generator, server).
// Each benchmark uses some of these.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vouch_ca::api::Settings;
use vouch_ca::app::{self, ServeConfig};
use vouch_ca::clock::{Clock, SystemClock};
use vouch_ca::datadir::{DataDir, DataFile};
use vouch_ca::ids::{system_rng, DeviceId, Serial, TrustDomain, Zone};
use vouch_ca::pki::authority::{Authority, CaFiles};
use vouch_ca::pki::csr::check_csr_pem;
use vouch_ca::pki::profile::{issue_device_certificate, DeviceCertificateSpec};

/// `name` from the environment as a number, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) used by this process so far, from `/proc/self/stat`.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime) are 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds used so far by each of this process's threads, by thread name, from
/// `/proc/self/task/*/stat` (threads that have ended are not counted).
pub fn cpu_seconds_by_thread() -> Option<Vec<(String, f64)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let (head, after_name) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        threads.push((name.to_owned(), ticks / 100.0));
    }
    Some(threads)
}

/// One figure for BENCHMARKS.md (`scripts/benchmarks.sh` collects these lines): the
/// benchmark, what was measured, its value, the floor measured in the same run, the figure's
/// ratio to that floor, and the target with whether it is met.
pub fn result(bench: &str, figure: &str, value: &str, floor: &str, ratio: &str, target: &str) {
    println!("RESULT\t{bench}\t{figure}\t{value}\t{floor}\t{ratio}\t{target}");
}

/// A multi-threaded runtime whose threads are named `name` (so their CPU can be told apart).
pub fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(name)
        .build()
        .unwrap()
}

/// A PKCS#10 CSR for a new P-256 key, PEM.
pub fn csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

/// The issuing CA of a data directory.
pub fn authority(data_dir: &DataDir) -> Authority {
    let read = |f| std::fs::read_to_string(data_dir.file(f)).unwrap();
    Authority::load(&CaFiles {
        root_cert_pem: read(DataFile::RootCert),
        root_key_pem: None,
        issuing_cert_pem: read(DataFile::IssuingCert),
        issuing_key_pem: read(DataFile::IssuingKey),
    })
    .unwrap()
}

/// Seconds per call of `op` on one core (at least one second and 200 calls, after a warm-up).
pub fn per_op(mut op: impl FnMut(usize)) -> f64 {
    for i in 0..20 {
        op(i);
    }
    let mut ops = 0usize;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) || ops < 200 {
        op(ops);
        ops += 1;
    }
    start.elapsed().as_secs_f64() / ops as f64
}

/// Seconds per (CSR check + certificate signature) on one core.
pub fn issue_cost(ca: &Authority, csrs: &[String], td: &TrustDomain) -> f64 {
    let zone = Zone::parse("bench").unwrap();
    let device_id = DeviceId::random(&system_rng()).unwrap();
    let now = SystemClock.now();
    per_op(|i| {
        let key = check_csr_pem(&csrs[i % csrs.len()]).unwrap();
        let serial = Serial::random(&system_rng()).unwrap();
        let spec = DeviceCertificateSpec {
            device_id: &device_id,
            trust_domain: td,
            zone: &zone,
            serial: &serial,
            now,
            lifetime: time::Duration::hours(24),
            crl_url: "https://localhost/v1/crl",
        };
        std::hint::black_box(issue_device_certificate(ca, &spec, &key).unwrap());
    })
}

/// A server on a loopback port of its own over the data directory's SQLite registry, with
/// `settings`, no policy directory and no sweep during the run.
pub fn serve_config(data_dir: &DataDir, settings: Settings) -> ServeConfig {
    ServeConfig {
        data_dir: data_dir.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        public_url: None,
        database_url: app::default_database_url(data_dir),
        hostnames: vec!["127.0.0.1".into()],
        max_connections: 8,
        settings,
        policy: Default::default(),
        sweep_every: Duration::from_secs(3600),
    }
}

/// Name of the load generator's threads (its runtime's, see [`runtime`]).
pub const LOAD_THREADS: &str = "load-gen";

/// CPU seconds so far of the load generator and of everything else (the server: its
/// runtime, SQLite's threads and the group-commit writer).
pub fn cpu_split() -> Option<(f64, f64)> {
    let mut split = (0.0, 0.0);
    for (name, seconds) in cpu_seconds_by_thread()? {
        if name.starts_with(LOAD_THREADS) {
            split.0 += seconds;
        } else {
            split.1 += seconds;
        }
    }
    Some(split)
}

/// Runs `work` (one operation per item) `concurrency` at a time on the load generator's
/// runtime; the rate and the CPU per item (load generator, server).
pub async fn timed<T: Send + Sync + 'static, F, Fut>(
    work: Vec<T>,
    concurrency: usize,
    one: F,
) -> (f64, Option<(f64, f64)>)
where
    F: Fn(Arc<Vec<T>>, usize) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = ()> + Send,
{
    let n = work.len();
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_start = cpu_split();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (work, next, one) = (work.clone(), next.clone(), one.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= work.len() {
                    break;
                }
                one(work.clone(), i).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let split = cpu_start
        .zip(cpu_split())
        .map(|(a, b)| ((b.0 - a.0) / n as f64, (b.1 - a.1) / n as f64));
    (n as f64 / elapsed, split)
}

/// A device's TLS client settings: the CA's root (PEM), its certificate, chain and key (PEM),
/// and the ALPN protocols it offers. Clones share one session store (its tickets).
pub fn device_tls_config(
    root_pem: &[u8],
    identity_pem: &[u8],
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &root_pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<_> = rustls_pemfile::certs(&mut &identity_pem[..])
        .map(Result::unwrap)
        .collect();
    let key = rustls_pemfile::private_key(&mut &identity_pem[..])
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}
