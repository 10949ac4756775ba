//! What the agent's benchmarks share: a real server in the bench's process, `vouch-agent run`
//! processes beside it, HTTP/1.1 connections to their workload sockets, and the figures.
// Each bench uses a part of these.
#![allow(dead_code)]

use axum::body::{Body, Bytes};
use axum::http::{header, Method, Request};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpStream, UnixStream};
use vouch_ca::app;
use vouch_ca::clock::SystemClock;
use vouch_ca::config::{Cli, Command as ServerCommand};
use vouch_ca::datadir::{DataDir, DataFile};
use vouch_ca::tokens::Role;
use vouch_proto::workload::SendResponse;

/// The `vouch-agent` binary the benches run: `VOUCH_BENCH_AGENT` if set (scripts/benchmarks.sh
/// sets it to the `dist` build, the one devices run), else the bench profile's build.
pub fn agent() -> String {
    std::env::var("VOUCH_BENCH_AGENT")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_vouch-agent").to_string())
}

/// The name of the threads of a server started by [`Server::start_apart`].
pub const SERVER_THREAD: &str = "bench-server";

/// The benches' one policy: edge may send to regional, with no `@rate_limit` to throttle
/// them.
pub const POLICY: &str = r#"@id("bench-edge-to-regional")
permit (
  principal in Zone::"edge",
  action == Action::"send",
  resource in Zone::"regional"
);
"#;

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn b64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

/// One kept HTTP/1.1 connection, as a workload holds it: requests go one after another.
pub struct Connection(pub SendRequest<Body>);

impl Connection {
    pub async fn over<S>(io: S) -> Result<Self, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(Self(sender))
    }

    pub async fn unix(path: &Path) -> Result<Self, String> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| format!("`{}`: {e}", path.display()))?;
        Self::over(stream).await
    }

    pub async fn tcp(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Self::over(stream).await
    }

    pub async fn request(
        &mut self,
        method: Method,
        uri: &str,
        body: Bytes,
    ) -> Result<(u16, Bytes), String> {
        self.0.ready().await.map_err(|e| e.to_string())?;
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "localhost")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .map_err(|e| e.to_string())?;
        let response = self
            .0
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(Body::new(response.into_body()), 64 << 20)
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, bytes))
    }

    /// One `POST /v1/send` of `body`; the message id of a direct delivery with a receipt.
    pub async fn send(&mut self, body: &Bytes) -> Result<String, String> {
        let (status, answer) = self.request(Method::POST, "/v1/send", body.clone()).await?;
        if status != 200 {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&answer)));
        }
        let sent: SendResponse = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
        if sent.via != "https" || sent.receipt.is_none() {
            return Err(format!("not delivered directly with a receipt: {sent:?}"));
        }
        Ok(sent.message_id)
    }
}

/// A server on a loopback port, in this process, and an admin's client.
pub struct Server {
    pub _running: app::RunningServer,
    pub base: String,
    pub admin: String,
    pub client: reqwest::Client,
}

impl Server {
    /// Starts as the agent's end-to-end tests do, with `policy_dir`.
    pub async fn start(dir: &Path, policy_dir: &Path) -> Self {
        let data = dir.join("data");
        let args = [
            "vouch",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--trust-domain",
            "fleet.example",
            "--data-dir",
            &data.display().to_string(),
            "--tpm-trust-on-first-use",
            "--policy-dir",
            &policy_dir.display().to_string(),
        ]
        .map(str::to_owned);
        let cli = <Cli as clap::Parser>::try_parse_from(args).unwrap();
        let ServerCommand::Serve(serve) = cli.command else {
            unreachable!()
        };
        let (config, td) = serve.validate().unwrap();
        let now = time::OffsetDateTime::now_utc();
        app::init_ca(&config.data_dir, &td.unwrap(), now).unwrap();
        let running = app::start(&config, Arc::new(SystemClock)).await.unwrap();
        let base = format!("https://127.0.0.1:{}", running.addr.port());
        let data_dir = DataDir::new(&data);
        let admin =
            app::mint_operator_token(&data_dir, Role::Admin, "bench", 3600, now.unix_timestamp())
                .unwrap();
        let root = std::fs::read(data_dir.file(DataFile::RootCert)).unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&root).unwrap())
            .build()
            .unwrap();
        Self {
            _running: running,
            base,
            admin,
            client,
        }
    }

    /// Starts the server on a runtime of its own whose threads are named [`SERVER_THREAD`]
    /// (SQLite's worker threads are sqlx's `sqlx-sqlite-worker-N`), so that a bench can tell
    /// them from its own and lower their priority with [`Server::idle_priority`]. The runtime lives
    /// until the process ends.
    pub async fn start_apart(dir: &Path, policy_dir: &Path) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(SERVER_THREAD)
            .enable_all()
            .build()
            .unwrap();
        let runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(runtime));
        let (dir, policy_dir) = (dir.to_owned(), policy_dir.to_owned());
        runtime
            .spawn(async move { Self::start(&dir, &policy_dir).await })
            .await
            .unwrap()
    }

    /// Moves every thread of a server started by [`Server::start_apart`] (its runtime's
    /// and SQLite's; threads they start later inherit it) to `SCHED_IDLE` with `chrt`: they
    /// run only when nothing else wants these cores, as if the server were another
    /// machine. How many threads.
    pub fn idle_priority(&self) -> usize {
        let mut threads = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap();
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.starts_with(SERVER_THREAD) || comm.starts_with("sqlx-sqlite") {
                threads.push(task.file_name().to_string_lossy().into_owned());
            }
        }
        assert!(!threads.is_empty(), "no server thread found");
        for thread in &threads {
            let status = Command::new("chrt")
                .args(["--idle", "-p", "0", thread])
                .stdout(Stdio::null())
                .status()
                .expect("chrt (util-linux) runs");
            assert!(status.success(), "chrt failed");
        }
        threads.len()
    }

    pub async fn token(&self, zone: &str) -> String {
        let r = self
            .client
            .post(format!("{}/v1/bootstrap-tokens", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({ "zone": zone }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// The policy directory: the example schema and fleet, and `policy`.
pub fn policy_dir(into: &Path, policy: &str) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    std::fs::create_dir_all(into.join("policies")).unwrap();
    for name in ["schema.cedarschema", "fleet.json"] {
        std::fs::copy(examples.join(name), into.join(name)).unwrap();
    }
    std::fs::write(into.join("policies/bench.cedar"), policy).unwrap();
}

/// A `vouch-agent run` process, its log in a file; killed on drop.
pub struct Sidecar {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Sidecar {
    pub async fn start(server: &Server, zone: &str, dir: &Path, listen: Option<u16>) -> Self {
        Self::start_with(server, zone, dir, listen, &[]).await
    }

    /// [`Self::start`] with more `extra` options.
    pub async fn start_with(
        server: &Server,
        zone: &str,
        dir: &Path,
        listen: Option<u16>,
        extra: &[String],
    ) -> Self {
        let token = server.token(zone).await;
        std::fs::create_dir_all(dir).unwrap();
        let state = dir.join("state");
        let log = dir.join("agent.log");
        let mut args = vec![
            "run".to_owned(),
            "--server".to_owned(),
            server.base.clone(),
            "--state-dir".to_owned(),
            state.display().to_string(),
            "--join-token".to_owned(),
            token,
        ];
        if let Some(port) = listen {
            args.extend([
                "--listen".to_owned(),
                format!("127.0.0.1:{port}"),
                "--advertise".to_owned(),
                format!("https://127.0.0.1:{port}"),
            ]);
        }
        args.extend(extra.iter().cloned());
        let child = Command::new(agent())
            .args(&args)
            .env("TSS2_LOG", "all+NONE")
            .env_remove("VOUCH_JOIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let sidecar = Self {
            child,
            socket: state.join("agent.sock"),
            log,
        };
        sidecar.ready(zone).await;
        sidecar
    }

    /// Waits until the sidecar has verified a CRL and the policy bundle.
    pub async fn ready(&self, zone: &str) {
        let start = Instant::now();
        loop {
            if let Some(id) = self.identity().await {
                if !id["policy_version"].is_null() && !id["crl_number"].is_null() {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the {zone} sidecar did not get ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn identity(&self) -> Option<Value> {
        let mut conn = Connection::unix(&self.socket).await.ok()?;
        let (status, body) = conn
            .request(Method::GET, "/v1/identity", Bytes::new())
            .await
            .ok()?;
        (status == 200).then(|| serde_json::from_slice(&body).ok())?
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its memory now, from `/proc/<pid>/status`.
    pub fn memory(&self) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(f64::NAN, |kb| kb / 1024.0)
        };
        Memory {
            rss: field("VmRSS:"),
            hwm: field("VmHWM:"),
            anon: field("RssAnon:"),
            file: field("RssFile:"),
        }
    }

    /// MiB of its RSS that are pages of its own binary (code, read-only data), from
    /// `/proc/<pid>/smaps`; the rest of `file` is shared libraries.
    pub fn binary_rss(&self) -> f64 {
        let smaps =
            std::fs::read_to_string(format!("/proc/{}/smaps", self.child.id())).unwrap_or_default();
        let binary = std::fs::canonicalize(agent()).unwrap_or_default();
        let mut in_binary = false;
        let mut kib = 0.0;
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or_default();
            if first == "Rss:" && in_binary {
                kib += words
                    .next()
                    .and_then(|kb| kb.parse::<f64>().ok())
                    .unwrap_or(0.0);
            } else if !first.ends_with(':') {
                // A mapping's header: range, permissions, offset, device, inode, path.
                in_binary = words.nth(4).map(std::path::Path::new) == Some(binary.as_path());
            }
        }
        kib / 1024.0
    }

    /// CPU seconds (user + system) it has used, from `/proc/<pid>/stat`.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15 of the file, 12 and 13 after the name.
        let ticks = |i: usize| fields.get(i).and_then(|t| t.parse::<f64>().ok());
        match (ticks(11), ticks(12)) {
            (Some(user), Some(system)) => (user + system) / 100.0,
            _ => f64::NAN,
        }
    }
}

/// A process's resident memory, MiB: `rss` (`VmRSS`) is `anon` (heap, stacks) plus `file`
/// (mapped pages of the binary and libraries, shared with every process that maps them);
/// `hwm` is the peak `rss`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss: f64,
    pub hwm: f64,
    pub anon: f64,
    pub file: f64,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// p50, p99 and max of `samples` (ms), sorted.
pub fn summary(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    (
        percentile(samples, 0.5),
        percentile(samples, 0.99),
        samples.last().copied().unwrap_or(f64::NAN),
    )
}

/// One figure for BENCHMARKS.md (`scripts/benchmarks.sh` collects these lines): the
/// benchmark, what was measured, its value, the floor measured in the same run, the figure's
/// ratio to that floor, and the target with whether it is met.
pub fn result(bench: &str, figure: &str, value: &str, floor: &str, ratio: &str, target: &str) {
    println!("RESULT\t{bench}\t{figure}\t{value}\t{floor}\t{ratio}\t{target}");
}
