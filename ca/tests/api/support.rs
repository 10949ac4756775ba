//! `spawn_app`: a real server on a loopback port with a fresh SQLite file or a fresh
//! PostgreSQL database, an injected clock, and HTTPS clients that trust its root.

use reqwest::{Client, Identity, Response, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use tempfile::TempDir;
use vouch_ca::api::Settings;
use vouch_ca::app::{self, PolicyConfig, RunningServer, ServeConfig};
use vouch_ca::clock::ManualClock;
use vouch_ca::datadir::{DataDir, DataFile};
use vouch_ca::ids::TrustDomain;
use vouch_ca::store::SweepOutcome;
use vouch_ca::tokens::Role;
use vouch_proto::ProblemCode;

pub const TRUST_DOMAIN: &str = "fleet.example";

/// Which registry backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server the tests use: `VOUCH_TEST_POSTGRES_URL`, by default the role that
/// `tests/postgres.sh` creates. Each test gets a fresh database with a random name.
pub fn postgres_admin_url() -> String {
    std::env::var("VOUCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://vouch:vouch@127.0.0.1:5432/postgres".into())
}

/// Creates a fresh PostgreSQL database and returns its URL.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    // Tests that open `sqlx::Any` connections of their own may run before any registry has
    // installed the drivers (a test run alone, say).
    sqlx::any::install_default_drivers();
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is needed for this test (run tests/postgres.sh): {admin}: {e}")
        });
    let name = format!("vouch_test_{}", random_hex(8));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap();
    format!("{base}/{name}")
}

pub fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    hex::encode(b)
}

pub struct TestApp {
    pub server: RunningServer,
    pub dir: TempDir,
    pub clock: ManualClock,
    pub base: String,
    pub client: Client,
    pub admin: String,
    pub database_url: String,
}

/// The tests' settings. Their software TPMs have no manufacturer certificates, so TPM
/// enrollment takes EKs on first use (the lab-only switch); the tests of EK trust configure
/// roots or an allowlist, and `tpm_enrollment.rs` shows the default refusing every EK.
pub fn settings() -> Settings {
    Settings {
        crl_url: "https://localhost/v1/crl".into(),
        tpm_trust_on_first_use: true,
        // Tests ask for decisions in bursts; the limit has its own test (policy::limits).
        decisions_per_second: 0,
        ..Settings::default()
    }
}

pub async fn spawn_app(db: Db) -> TestApp {
    spawn_app_with(db, settings()).await
}

pub async fn spawn_app_with(db: Db, settings: Settings) -> TestApp {
    spawn_app_full(db, settings, PolicyConfig::default()).await
}

/// A server with policy directories.
pub async fn spawn_app_with_policies(db: Db, policy: PolicyConfig) -> TestApp {
    spawn_app_full(db, settings(), policy).await
}

/// A server whose policies are the example repository, read in place.
pub async fn spawn_app_with_example_policies(db: Db) -> TestApp {
    spawn_app_with_policies(db, policy_config(&example_policy_dir())).await
}

pub async fn spawn_app_full(db: Db, settings: Settings, policy: PolicyConfig) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = DataDir::new(dir.path().join("data"));
    let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
    let clock = ManualClock::starting_now();
    use vouch_ca::clock::Clock;
    app::init_ca(&data_dir, &td, clock.now()).unwrap();
    let database_url = match db {
        Db::Sqlite => app::default_database_url(&data_dir),
        Db::Postgres => fresh_postgres_database().await,
    };
    let config = ServeConfig {
        data_dir: data_dir.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        public_url: None,
        database_url: database_url.clone(),
        hostnames: vec!["localhost".into(), "127.0.0.1".into()],
        max_connections: 8,
        settings,
        policy,
        sweep_every: std::time::Duration::from_secs(3600),
    };
    let server = app::start(&config, Arc::new(clock.clone())).await.unwrap();
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let root = std::fs::read(data_dir.file(DataFile::RootCert)).unwrap();
    let client = client_for(&root, None);
    let admin =
        app::mint_operator_token(&data_dir, Role::Admin, "test-admin", 3600, clock.unix()).unwrap();
    TestApp {
        server,
        dir,
        clock,
        base,
        client,
        admin,
        database_url,
    }
}

/// An HTTPS client trusting `root_pem`, optionally presenting a client identity
/// (certificate chain and key, PEM).
pub fn client_for(root_pem: &[u8], identity_pem: Option<&[u8]>) -> Client {
    let mut b = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem).unwrap());
    if let Some(id) = identity_pem {
        b = b.identity(Identity::from_pem(id).unwrap());
    }
    b.build().unwrap()
}

/// The example policy repository, `examples/policies`.
pub fn example_policy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies")
}

/// Policies loaded from `dir` alone: no shadow set, no polling.
pub fn policy_config(dir: &Path) -> PolicyConfig {
    PolicyConfig {
        dir: Some(dir.to_path_buf()),
        shadow_dir: None,
        poll: None,
    }
}

/// A device's credentials after enrollment.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub body: Value,
    pub key_pem: String,
}

impl Enrolled {
    pub fn device_id(&self) -> &str {
        self.body["device_id"].as_str().unwrap()
    }
    pub fn serial(&self) -> &str {
        self.body["serial"].as_str().unwrap()
    }
    pub fn identity_pem(&self) -> Vec<u8> {
        format!(
            "{}{}{}",
            self.body["certificate_pem"].as_str().unwrap(),
            self.body["ca_chain_pem"].as_str().unwrap(),
            self.key_pem
        )
        .into_bytes()
    }
}

impl TestApp {
    pub fn data_dir(&self) -> DataDir {
        DataDir::new(self.dir.path().join("data"))
    }

    pub fn root_pem(&self) -> Vec<u8> {
        std::fs::read(self.data_dir().file(DataFile::RootCert)).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn token_for(&self, role: Role) -> String {
        use vouch_ca::clock::Clock;
        app::mint_operator_token(&self.data_dir(), role, "test", 3600, self.clock.unix()).unwrap()
    }

    pub async fn post(&self, path: &str, bearer: Option<&str>, body: &Value) -> Response {
        let mut r = self.client.post(self.url(path)).json(body);
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Response {
        let mut r = self.client.get(self.url(path));
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }

    /// An HTTPS client presenting `device`'s certificate.
    pub fn device_client(&self, device: &Enrolled) -> Client {
        client_for(&self.root_pem(), Some(&device.identity_pem()))
    }

    /// `GET path` over mTLS as `device`.
    pub async fn get_as(&self, device: &Enrolled, path: &str) -> Response {
        self.device_client(device)
            .get(self.url(path))
            .send()
            .await
            .unwrap()
    }

    /// Creates a bootstrap token for `zone` as admin.
    pub async fn bootstrap_token(&self, zone: &str) -> String {
        let r = self
            .post(
                "/v1/bootstrap-tokens",
                Some(&self.admin),
                &json!({"zone": zone, "labels": {"line": "a"}, "device_class": "sensor"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// `POST /v1/enroll` with `token` and `csr_pem`.
    pub async fn enroll_with_csr(&self, token: &str, csr_pem: &str) -> Response {
        self.post(
            "/v1/enroll",
            None,
            &json!({"token": token, "csr_pem": csr_pem}),
        )
        .await
    }

    /// Enrolls a device in `zone` with a fresh P-256 CSR.
    pub async fn enroll(&self, zone: &str) -> Enrolled {
        let token = self.bootstrap_token(zone).await;
        let (csr, key_pem) = rcgen_csr();
        let r = self.enroll_with_csr(&token, &csr).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        Enrolled {
            body: r.json().await.unwrap(),
            key_pem,
        }
    }

    /// Enrolls a device in `zone` with a key the server generates; the response body, which
    /// holds that key (`private_key_pem`).
    pub async fn enroll_with_server_key(&self, zone: &str) -> Value {
        let token = self.bootstrap_token(zone).await;
        let r = self
            .post(
                "/v1/enroll",
                None,
                &json!({"token": token, "generate_key": true}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    }

    /// An admin revokes device `id` for `reason`.
    pub async fn revoke(&self, id: &str, reason: &str) -> Response {
        self.post(
            &format!("/v1/devices/{id}/revoke"),
            Some(&self.admin),
            &json!({"reason": reason}),
        )
        .await
    }

    /// An admin asks the server to reload its policies.
    pub async fn reload_policies(&self) -> Response {
        self.post("/v1/policy/reload", Some(&self.admin), &json!({}))
            .await
    }

    /// The device record of `id`, as an operator reads it.
    pub async fn device_json(&self, id: &str) -> Value {
        let r = self
            .get(&format!("/v1/devices/{id}"), Some(&self.admin))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// The attestation history of device `id`, newest first.
    pub async fn attestation_history(&self, id: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/v1/devices/{id}/attestations"), Some(&self.admin))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        body["attestations"].as_array().unwrap().clone()
    }

    /// The attestation state (`none`, `active`, `quarantined`, `stale`) of `device`, as an
    /// operator reads it.
    pub async fn attestation_state(&self, device: &Enrolled) -> Value {
        self.device_json(device.device_id()).await["attestation"].clone()
    }

    /// `device` renews over mTLS with a fresh CSR.
    pub async fn renew(&self, device: &Enrolled) -> Response {
        self.renew_over(&self.device_client(device)).await
    }

    /// Checks that `device` may not renew: 403 with `code`.
    pub async fn assert_renewal_forbidden(&self, device: &Enrolled, code: ProblemCode) {
        assert_problem(self.renew(device).await, StatusCode::FORBIDDEN, code).await;
    }

    /// A renewal with a fresh CSR sent by `client` (whatever identity it presents, if any).
    pub async fn renew_over(&self, client: &Client) -> Response {
        let (csr, _) = rcgen_csr();
        client
            .post(self.url("/v1/renew"))
            .json(&json!({"csr_pem": csr}))
            .send()
            .await
            .unwrap()
    }

    /// May `sensor` send telemetry over mqtt to `gateway`? (Allowed by the example policies
    /// unless the sensor is quarantined, stale or revoked.) Asked with a token minted now:
    /// tests move the clock by hours.
    pub async fn telemetry_decision(&self, sensor: &Enrolled, gateway: &Enrolled) -> Value {
        let admin = self.token_for(Role::Admin);
        let r = self
            .post(
                "/v1/authorize",
                Some(&admin),
                &json!({"principal": sensor.device_id(), "action": "send",
                        "resource": {"device": gateway.device_id()},
                        "context": {"data_type": "telemetry", "protocol": "mqtt", "tls": false, "mtls": false, "size": 1}}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// Runs the staleness sweep as `replica` and checks that it ran this period and made
    /// `stale` devices stale.
    pub async fn assert_sweep_made_stale(&self, replica: &str, stale: u64) {
        let outcome = app::run_sweep(&self.server.state, replica).await.unwrap();
        assert!(
            matches!(outcome, SweepOutcome::Ran { stale: n, .. } if n == stale),
            "expected {stale} stale: {outcome:?}"
        );
    }

    pub async fn counts(&self) -> vouch_ca::store::TableCounts {
        self.server.state.registry.counts().await.unwrap()
    }
}

/// A P-256 CSR and its key (PKCS#8 PEM), made with rcgen.
pub fn rcgen_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec!["ignored.example".into()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (csr, key.serialize_pem())
}

/// Runs `command` and returns its output; fails the test, showing that output, unless it
/// exits 0.
pub fn run_successfully(command: &mut Command) -> std::process::Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `openssl` with `args` in `dir`, returning stdout; fails the test on a non-zero exit.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = run_successfully(Command::new("openssl").args(args).current_dir(dir));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes the certificate and CA chain of an enrollment response `body` to `device.pem` and
/// `chain.pem` in `dir`, for [`openssl_verify_device`].
pub fn write_device_certificate(dir: &Path, body: &Value) {
    write(
        dir,
        "device.pem",
        body["certificate_pem"].as_str().unwrap().as_bytes(),
    );
    write(
        dir,
        "chain.pem",
        body["ca_chain_pem"].as_str().unwrap().as_bytes(),
    );
}

/// `openssl verify` (with `options`, such as `-purpose sslclient`) of `device.pem` through
/// `chain.pem` to `root.pem`, all in `dir`; returns what it prints.
pub fn openssl_verify_device(dir: &Path, options: &[&str]) -> String {
    let mut args = vec!["verify"];
    args.extend_from_slice(options);
    args.extend_from_slice(&[
        "-CAfile",
        "root.pem",
        "-untrusted",
        "chain.pem",
        "device.pem",
    ]);
    openssl(dir, &args)
}

/// An openssl-made CSR for a key of `newkey` (e.g. `ec`, `rsa:2048`) with extra `-pkeyopt`s.
/// Returns (CSR PEM, key PEM).
pub fn openssl_csr(dir: &Path, newkey: &str, pkeyopts: &[&str]) -> (String, String) {
    let name = random_hex(4);
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let mut args = vec!["req", "-new", "-newkey", newkey];
    for o in pkeyopts {
        args.push("-pkeyopt");
        args.push(o);
    }
    args.extend_from_slice(&[
        "-nodes",
        "-keyout",
        &key,
        "-subj",
        "/CN=ignored",
        "-out",
        &csr,
    ]);
    openssl(dir, &args);
    (
        std::fs::read_to_string(dir.join(&csr)).unwrap(),
        std::fs::read_to_string(dir.join(&key)).unwrap(),
    )
}

pub async fn problem(r: Response) -> (StatusCode, Value) {
    let status = r.status();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert_eq!(ct, "application/problem+json", "status {status}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"].as_u64(), Some(u64::from(status.as_u16())));
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
    (status, v)
}

/// The problem document of `r`, checked (see [`problem`]) to have `status` and `code`.
pub async fn assert_problem(r: Response, status: StatusCode, code: ProblemCode) -> Value {
    let (s, p) = problem(r).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (status, Some(code.as_str())),
        "{p}"
    );
    p
}

pub fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// A second server process-in-a-test on the same database and data directory.
pub async fn replica_of(app: &TestApp) -> app::RunningServer {
    let config = ServeConfig {
        data_dir: app.data_dir(),
        listen: "127.0.0.1:0".parse().unwrap(),
        public_url: None,
        database_url: app.database_url.clone(),
        hostnames: vec!["127.0.0.1".into()],
        max_connections: 4,
        settings: settings(),
        policy: policy_config(&example_policy_dir()),
        sweep_every: std::time::Duration::from_secs(3600),
    };
    app::start(&config, Arc::new(app.clock.clone()))
        .await
        .unwrap()
}
