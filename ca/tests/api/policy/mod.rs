//! Policy in the server: decisions with registry facts, reloads that never replace a good
//! set with a bad one, Git commits becoming the active version without a restart, the
//! decision log under a burst, shadow mode, and the signed bundle. Helpers here; the tests in
//! the submodules.

mod bundle;
mod decisions;
mod limits;
mod log;
mod reload;
mod uploads;

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A copy of the example policy repository in a fresh temporary directory.
fn copy_example() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["policies", "tests"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let example = example_policy_dir();
    for entry in walk(&example) {
        let rel = entry.strip_prefix(&example).unwrap();
        std::fs::copy(&entry, dir.path().join(rel)).unwrap();
    }
    dir
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A server (on `db`) whose policies are a fresh copy of the example repository; keep the
/// returned directory alive as long as the server.
async fn spawn_app_with_example_copy(db: Db) -> (TestApp, tempfile::TempDir) {
    let repo = copy_example();
    let app = spawn_app_with_policies(db, policy_config(repo.path())).await;
    (app, repo)
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = run_successfully(
        Command::new("git")
            .args([
                "-c",
                "user.name=Policy Author",
                "-c",
                "user.email=author@fleet.example",
                "-c",
                "commit.gpgsign=false",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Lets sensors send telemetry to the cloud: a change a test commits.
const SENSOR_TO_CLOUD: &str = r#"
@id("sensor-to-cloud")
permit (
  principal in Zone::"sensors",
  action == Action::"send",
  resource in Zone::"cloud"
)
when { context.data_type == DataType::"telemetry" };
"#;

/// A request to decide whether `from` may send telemetry to `to` over `protocol`, with (m)TLS
/// or without.
fn telemetry(from: &Enrolled, to: &Enrolled, protocol: &str, tls: bool) -> Value {
    json!({
        "principal": from.device_id(),
        "action": "send",
        "resource": {"device": to.device_id()},
        "context": {"data_type": "telemetry", "protocol": protocol, "tls": tls, "mtls": tls, "size": 256}
    })
}

async fn authorize(app: &TestApp, body: &Value) -> Value {
    let r = app.post("/v1/authorize", Some(&app.admin), body).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// `POST /v1/authorize` with a device's mTLS client.
async fn device_authorize(
    app: &TestApp,
    device: &reqwest::Client,
    body: &Value,
) -> reqwest::Response {
    device
        .post(app.url("/v1/authorize"))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn status(app: &TestApp) -> Value {
    let r = app.get("/v1/policy/status", Some(&app.admin)).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Polls the policy status until `done` holds (failing the test, with `what`, after 30 s);
/// returns that status.
async fn wait_for_status(app: &TestApp, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(app).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A page of the decision log (`query` is the query string), as the holder of `bearer`
/// reads it.
async fn decision_log_page(app: &TestApp, bearer: &str, query: &str) -> Value {
    let r = app
        .get(&format!("/v1/policy/decisions?{query}"), Some(bearer))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn active_version(app: &TestApp) -> String {
    status(app).await["active"]["version"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn decision_count(app: &TestApp) -> i64 {
    app.server.state.registry.decision_count().await.unwrap()
}
