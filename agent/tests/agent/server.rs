//! A real `vouch serve` in-process on a loopback port (configured through its own command
//! line, so new server options keep their defaults), and the `vouch-agent` binary run
//! against it.

use reqwest::Client;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use tempfile::TempDir;
use vouch_ca::app::{self, RunningServer};
use vouch_ca::clock::SystemClock;
use vouch_ca::config::{Cli, Command as ServerCommand};
use vouch_ca::datadir::{DataDir, DataFile};
use vouch_ca::tokens::Role;

pub const AGENT: &str = env!("CARGO_BIN_EXE_vouch-agent");

pub struct RealServer {
    server: Option<RunningServer>,
    /// The data directory (kept by the first replica only).
    _dir: Option<TempDir>,
    config: app::ServeConfig,
    pub base: String,
    admin: String,
    client: Client,
}

impl RealServer {
    /// Starts a server with `extra` options (e.g. `--cert-lifetime 6s`).
    pub async fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut args: Vec<String> = [
            "vouch",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--trust-domain",
            "fleet.example",
            "--data-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(data.display().to_string());
        // The tests' software TPMs have no manufacturer certificates: take EKs on first use
        // (lab only), unless the test configures manufacturer roots.
        if !extra.contains(&"--tpm-roots") {
            args.push("--tpm-trust-on-first-use".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let cli = <Cli as clap::Parser>::try_parse_from(&args).unwrap();
        let ServerCommand::Serve(serve) = cli.command else {
            unreachable!()
        };
        let (config, td) = serve.validate().unwrap();
        let now = time::OffsetDateTime::now_utc();
        app::init_ca(&config.data_dir, &td.unwrap(), now).unwrap();
        let server = app::start(&config, Arc::new(SystemClock)).await.unwrap();
        let base = format!("https://127.0.0.1:{}", server.addr.port());
        let data_dir = DataDir::new(&data);
        let admin = app::mint_operator_token(
            &data_dir,
            Role::Admin,
            "agent-test",
            3600,
            now.unix_timestamp(),
        )
        .unwrap();
        let root = std::fs::read(data_dir.file(DataFile::RootCert)).unwrap();
        let client = Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&root).unwrap())
            .build()
            .unwrap();
        Self {
            server: Some(server),
            _dir: Some(dir),
            config,
            base,
            admin,
            client,
        }
    }

    /// Another replica of this server: the same data directory and database (share a
    /// database only on PostgreSQL: `--database-url`), on its own port. Keep `self` alive.
    pub async fn replica(&self) -> Self {
        let server = app::start(&self.config, Arc::new(SystemClock))
            .await
            .unwrap();
        Self {
            base: format!("https://127.0.0.1:{}", server.addr.port()),
            server: Some(server),
            _dir: None,
            config: self.config.clone(),
            admin: self.admin.clone(),
            client: self.client.clone(),
        }
    }

    /// Stops the server (an outage).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    /// Starts the stopped server again on the same data directory (on a new port: `base`
    /// changes).
    pub async fn restart(&mut self) {
        assert!(self.server.is_none(), "stop it first");
        let server = app::start(&self.config, Arc::new(SystemClock))
            .await
            .unwrap();
        self.base = format!("https://127.0.0.1:{}", server.addr.port());
        self.server = Some(server);
    }

    /// A bootstrap token (JWT) created by the admin with `body`.
    pub async fn token(&self, body: Value) -> String {
        let r = self
            .client
            .post(format!("{}/v1/bootstrap-tokens", self.base))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `POST path` with `body` as the admin; the answer's status and body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// The current CRL (DER).
    pub async fn crl(&self) -> Vec<u8> {
        let r = self
            .client
            .get(format!("{}/v1/crl", self.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        r.bytes().await.unwrap().to_vec()
    }

    /// `GET path` as the admin.
    pub async fn get(&self, path: &str) -> Value {
        serde_json::from_str(&self.get_text(path).await).unwrap()
    }

    /// `GET path` as the admin: the body as text.
    pub async fn get_text(&self, path: &str) -> String {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.text().await.unwrap()
    }
}

/// A plain token body for zone `lab`.
pub fn lab() -> Value {
    json!({"zone": "lab"})
}

/// Runs the agent binary to completion (off the runtime's threads: the server is on them).
pub async fn agent(args: Vec<String>, token: Option<&str>) -> Output {
    let token = token.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(AGENT);
        cmd.args(&args)
            .env("TSS2_LOG", "all+NONE")
            .env_remove("VOUCH_JOIN_TOKEN");
        if let Some(t) = token {
            cmd.env("VOUCH_JOIN_TOKEN", t);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap()
}

/// `run` arguments for `server` and `state`.
pub fn run_args(server: &RealServer, state: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "run".to_owned(),
        "--server".to_owned(),
        server.base.clone(),
        "--state-dir".to_owned(),
        state.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `identity.json` of `state`.
pub fn identity(state: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(state.join("identity.json")).unwrap()).unwrap()
}

/// Whether `identity.json` exists and satisfies `f` (a reader never sees a half-written one).
pub fn identity_is(state: &Path, f: impl Fn(&Value) -> bool) -> bool {
    std::fs::read(state.join("identity.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| f(&v))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn state_dir(base: &TempDir) -> PathBuf {
    base.path().join("state")
}

/// A policy directory: the example policies, and reference values for class `sensor`
/// accepting a boot of `fw-1` with `cfg-a` (reference set `v1`).
pub fn policies() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    vouch_attestor::testing::policy_dir_with_references(
        &examples,
        dir.path(),
        &[("v1", "fw-1", "cfg-a")],
    );
    dir
}

/// A running agent process (loop mode), its log in a file; SIGTERM stops it.
pub struct AgentProcess {
    child: std::process::Child,
    pub log: PathBuf,
}

impl AgentProcess {
    pub fn spawn(args: Vec<String>, log_dir: &Path) -> Self {
        let log = log_dir.join("agent.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(AGENT)
            .args(&args)
            .env("TSS2_LOG", "all+NONE")
            .env_remove("VOUCH_JOIN_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        if let Some(status) = self.child.try_wait().unwrap() {
            return status;
        }
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the agent gets no chance to finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
