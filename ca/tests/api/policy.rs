//! Policy in the server: decisions with registry facts, reloads that never replace a good
//! set with a bad one, Git commits becoming the active version without a restart, the
//! decision log under a burst, shadow mode, and the signed bundle.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vouch_ca::app::PolicyConfig;
use vouch_ca::authz::signed::{self, BundleError};
use vouch_ca::ids::TrustDomain;
use vouch_ca::tokens::Role;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies")
}

/// A copy of the example policy repository in a fresh temporary directory.
fn copy_example() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["policies", "tests"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    for entry in walk(&example()) {
        let rel = entry.strip_prefix(example()).unwrap();
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

fn policy_config(dir: &Path) -> PolicyConfig {
    PolicyConfig {
        dir: Some(dir.to_path_buf()),
        shadow_dir: None,
        poll: None,
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
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
        .current_dir(dir)
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
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

fn telemetry(principal: &str, target: Value, protocol: &str, tls: bool) -> Value {
    json!({
        "principal": principal,
        "action": "send",
        "resource": target,
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

async fn active_version(app: &TestApp) -> String {
    status(app).await["active"]["version"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn decision_count(app: &TestApp) -> i64 {
    app.server.state.registry.decision_count().await.unwrap()
}

#[tokio::test]
async fn decisions_see_the_registry_and_name_the_version() {
    let repo = copy_example();
    let app = spawn_app_with_policies(Db::Sqlite, policy_config(repo.path())).await;
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let cloud = app.enroll("cloud").await;
    let version = active_version(&app).await;
    assert!(version.starts_with("sha256:"), "{version}");

    let to_gateway = telemetry(
        sensor.device_id(),
        json!({"device": gateway.device_id()}),
        "mqtt",
        false,
    );
    let d = authorize(&app, &to_gateway).await;
    assert_eq!(d["decision"], "allow", "{d}");
    assert_eq!(d["policies"], json!(["sensor-to-gateway"]));
    assert_eq!(d["policy_version"], version.as_str());

    let to_cloud = telemetry(
        sensor.device_id(),
        json!({"device": cloud.device_id()}),
        "mqtt",
        true,
    );
    let d = authorize(&app, &to_cloud).await;
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["policies"], json!([]));

    // The gateway rule carries its rate limit for the enforcer.
    let regional = app.enroll("regional").await;
    let metrics = json!({
        "principal": gateway.device_id(), "action": "send",
        "resource": {"device": regional.device_id()},
        "context": {"data_type": "aggregated_metrics", "protocol": "https", "tls": true, "mtls": true, "size": 10}
    });
    let d = authorize(&app, &metrics).await;
    assert_eq!(d["decision"], "allow");
    assert_eq!(
        d["annotations"],
        json!([{"policy": "gateway-to-regional", "key": "rate_limit", "value": "1000/min"}])
    );

    // Revocation reaches decisions at once: the quarantine forbid denies everything.
    let r = app
        .post(
            &format!("/v1/devices/{}/revoke", sensor.device_id()),
            Some(&app.admin),
            &json!({"reason": "stolen"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let d = authorize(&app, &to_gateway).await;
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["policies"], json!(["quarantine"]));

    // Every answered decision is in the log, newest first, with the caller and version.
    assert_eq!(decision_count(&app).await, 4);
    let r = app
        .get(
            &format!(
                "/v1/policy/decisions?principal={}&limit=1",
                sensor.device_id()
            ),
            Some(&app.token_for(Role::Auditor)),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let page: Value = r.json().await.unwrap();
    let last = &page["decisions"][0];
    assert_eq!(last["decision"], "deny");
    assert_eq!(last["policies"], json!(["quarantine"]));
    assert_eq!(last["caller"], "operator:test-admin");
    assert_eq!(last["policy_version"], version.as_str());
    assert_eq!(last["context"]["protocol"], "mqtt");
    let older = page["next_cursor"].as_i64().unwrap();
    let r = app
        .get(
            &format!(
                "/v1/policy/decisions?principal={}&cursor={older}",
                sensor.device_id()
            ),
            Some(&app.admin),
        )
        .await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["decisions"].as_array().unwrap().len(), 2);
    assert!(page["next_cursor"].is_null());
}

#[tokio::test]
async fn devices_ask_only_about_themselves_and_nobody_else_asks_unauthenticated() {
    let repo = copy_example();
    let app = spawn_app_with_policies(Db::Sqlite, policy_config(repo.path())).await;
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let other = app.enroll("sensors").await;
    let device = client_for(&app.root_pem(), Some(&sensor.identity_pem()));

    // As principal (egress check) and as resource (ingress check on the receiving side).
    let egress = telemetry(
        sensor.device_id(),
        json!({"device": gateway.device_id()}),
        "mqtt",
        false,
    );
    let r = device_authorize(&app, &device, &egress).await;
    assert_eq!(r.status(), StatusCode::OK);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["decision"], "allow");
    let ingress = telemetry(
        other.device_id(),
        json!({"device": sensor.device_id()}),
        "mqtt",
        false,
    );
    let r = device_authorize(&app, &device, &ingress).await;
    assert_eq!(r.status(), StatusCode::OK);

    // About two other devices: refused, and not logged.
    let before = decision_count(&app).await;
    let foreign = telemetry(
        other.device_id(),
        json!({"device": gateway.device_id()}),
        "mqtt",
        false,
    );
    let r = device_authorize(&app, &device, &foreign).await;
    let (status, p) = problem(r).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(p["code"], "forbidden_request");

    // No credentials, or a bootstrap token as bearer: refused.
    let r = app.post("/v1/authorize", None, &egress).await;
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    let token = app.bootstrap_token("sensors").await;
    let r = app.post("/v1/authorize", Some(&token), &egress).await;
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    // The decision log and the status are for operators only.
    let r = device
        .get(app.url("/v1/policy/decisions"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    let r = device
        .get(app.url("/v1/policy/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(decision_count(&app).await, before);
}

#[tokio::test]
async fn hostile_decision_requests_get_problems_and_log_nothing() {
    let repo = copy_example();
    let app = spawn_app_with_policies(Db::Sqlite, policy_config(repo.path())).await;
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let good = telemetry(
        sensor.device_id(),
        json!({"device": gateway.device_id()}),
        "mqtt",
        false,
    );

    let mut unknown_field = good.clone();
    unknown_field["extra"] = json!(1);
    let mut unknown_context = good.clone();
    unknown_context["context"]["firmware"] = json!("1.0");
    let mut bad_target = good.clone();
    bad_target["resource"] = json!({"robot": "x"});
    let mut unknown_action = good.clone();
    unknown_action["action"] = json!("teleport");
    let mut unknown_device = good.clone();
    unknown_device["principal"] = json!("0123456789abcdef0123456789abcdef");
    let mut long_id = good.clone();
    long_id["principal"] = json!("x".repeat(10_000));
    let mut wrong_type = good.clone();
    wrong_type["context"]["size"] = json!("large");

    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "unknown field",
            unknown_field,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "unknown context field",
            unknown_context,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "bad resource",
            bad_target,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "wrong type",
            wrong_type,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "action not in the schema",
            unknown_action,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "unknown device",
            unknown_device,
            StatusCode::NOT_FOUND,
            "device_unknown",
        ),
        (
            "oversized id",
            long_id,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
    ];
    for (name, body, want_status, want_code) in cases {
        let r = app.post("/v1/authorize", Some(&app.admin), &body).await;
        let (status, p) = problem(r).await;
        assert_eq!(status, want_status, "{name}: {p}");
        assert_eq!(p["code"], want_code, "{name}: {p}");
    }
    let r = app
        .client
        .post(app.url("/v1/authorize"))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body("{\"principal\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.1["code"], "malformed_json");
    let r = app
        .client
        .post(app.url("/v1/authorize"))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body(vec![b' '; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    let r = app
        .get("/v1/policy/decisions?limit=0", Some(&app.admin))
        .await;
    assert_eq!(problem(r).await.1["code"], "invalid_query");
    assert_eq!(decision_count(&app).await, 0);
}

#[tokio::test]
async fn a_bad_reload_leaves_the_previous_set_active_and_visible() {
    let repo = copy_example();
    let app = spawn_app_with_policies(Db::Sqlite, policy_config(repo.path())).await;
    let sensor = app.enroll("sensors").await;
    let cloud = app.enroll("cloud").await;
    let before = active_version(&app).await;

    // A syntax error and a schema violation in two files.
    std::fs::write(
        repo.path().join("policies/broken.cedar"),
        "permit (principal, action, resource) when { principal.firmware == \"1\" };\n\
         permit (principal action, resource);\n",
    )
    .unwrap();
    let r = app
        .post(
            "/v1/policy/reload",
            Some(&app.token_for(Role::Auditor)),
            &json!({}),
        )
        .await;
    assert_eq!(problem(r).await.0, StatusCode::FORBIDDEN);
    let r = app
        .post("/v1/policy/reload", Some(&app.admin), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["active"]["outcome"], "failed");
    let problems = body["active"]["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("policies/broken.cedar:2:")),
        "{problems:?}"
    );

    let s = status(&app).await;
    assert_eq!(s["active"]["version"]["id"], before.as_str());
    assert_eq!(s["active"]["policies"], 4);
    assert!(!s["active"]["last_error"]["problems"]
        .as_array()
        .unwrap()
        .is_empty());
    let d = authorize(
        &app,
        &telemetry(
            sensor.device_id(),
            json!({"device": cloud.device_id()}),
            "mqtt",
            true,
        ),
    )
    .await;
    assert_eq!(d["policy_version"], before.as_str());

    // Fixed: the next reload swaps, clears the error and is audited.
    std::fs::write(repo.path().join("policies/broken.cedar"), SENSOR_TO_CLOUD).unwrap();
    let r = app
        .post("/v1/policy/reload", Some(&app.admin), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["active"]["outcome"], "loaded");
    assert_eq!(body["active"]["previous"], before.as_str());
    let after = body["active"]["version"].as_str().unwrap().to_owned();
    assert_ne!(after, before);
    let s = status(&app).await;
    assert!(s["active"]["last_error"].is_null());
    let d = authorize(
        &app,
        &telemetry(
            sensor.device_id(),
            json!({"device": cloud.device_id()}),
            "mqtt",
            true,
        ),
    )
    .await;
    assert_eq!(d["decision"], "allow");
    assert_eq!(d["policy_version"], after.as_str());
    let audit = app.server.state.registry.recent_audit(5).await.unwrap();
    assert!(audit.iter().any(|a| a.action == "policy.loaded"
        && a.subject == after
        && a.actor == "operator:test-admin"));

    // Reloading the same content changes nothing.
    let r = app
        .post("/v1/policy/reload", Some(&app.admin), &json!({}))
        .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["active"]["outcome"], "unchanged");
}

#[tokio::test]
async fn a_git_commit_becomes_the_active_version_without_restart() {
    let repo = copy_example();
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "fleet policies"]);
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    let app = spawn_app_with_policies(
        Db::Sqlite,
        PolicyConfig {
            poll: Some(Duration::from_millis(100)),
            ..policy_config(repo.path())
        },
    )
    .await;
    let s = status(&app).await;
    assert_eq!(s["active"]["version"]["id"], first.as_str());
    assert_eq!(s["active"]["version"]["commit"], first.as_str());
    let sensor = app.enroll("sensors").await;
    let cloud = app.enroll("cloud").await;
    let to_cloud = telemetry(
        sensor.device_id(),
        json!({"device": cloud.device_id()}),
        "mqtt",
        true,
    );
    let d = authorize(&app, &to_cloud).await;
    assert_eq!(
        (d["decision"].as_str(), d["policy_version"].as_str()),
        (Some("deny"), Some(first.as_str()))
    );

    std::fs::write(repo.path().join("policies/cloud.cedar"), SENSOR_TO_CLOUD).unwrap();
    git(repo.path(), &["add", "."]);
    git(
        repo.path(),
        &["commit", "-q", "-m", "sensors may reach the cloud"],
    );
    let second = git(repo.path(), &["rev-parse", "HEAD"]);
    assert_ne!(first, second);

    // The watcher picks the commit up; nobody calls reload.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(&app).await;
        if s["active"]["version"]["id"] == second.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "commit not picked up: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = authorize(&app, &to_cloud).await;
    assert_eq!(d["decision"], "allow");
    assert_eq!(d["policies"], json!(["sensor-to-cloud"]));
    assert_eq!(d["policy_version"], second.as_str());

    // A commit that breaks the set is never activated; the watcher reports it in the status.
    std::fs::write(repo.path().join("policies/cloud.cedar"), "permit (").unwrap();
    git(repo.path(), &["commit", "-q", "-am", "oops"]);
    let third = git(repo.path(), &["rev-parse", "HEAD"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(&app).await;
        if s["active"]["last_error"]["commit"] == third.as_str() {
            assert_eq!(s["active"]["version"]["id"], second.as_str());
            break;
        }
        assert!(Instant::now() < deadline, "failure not reported: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = authorize(&app, &to_cloud).await;
    assert_eq!(d["policy_version"], second.as_str());
}

#[tokio::test]
async fn shadow_mode_logs_differences_without_enforcing_them() {
    let active = copy_example();
    let candidate = copy_example();
    std::fs::write(
        candidate.path().join("policies/cloud.cedar"),
        SENSOR_TO_CLOUD,
    )
    .unwrap();
    let app = spawn_app_with_policies(
        Db::Sqlite,
        PolicyConfig {
            shadow_dir: Some(candidate.path().to_path_buf()),
            ..policy_config(active.path())
        },
    )
    .await;
    let s = status(&app).await;
    let shadow_version = s["shadow"]["version"]["id"].as_str().unwrap().to_owned();
    assert_ne!(s["active"]["version"]["id"], shadow_version.as_str());

    let sensor = app.enroll("sensors").await;
    let cloud = app.enroll("cloud").await;
    let gateway = app.enroll("edge").await;
    let to_cloud = telemetry(
        sensor.device_id(),
        json!({"device": cloud.device_id()}),
        "mqtt",
        true,
    );
    let d = authorize(&app, &to_cloud).await;
    assert_eq!(d["decision"], "deny", "the candidate set is not enforced");
    let same = telemetry(
        sensor.device_id(),
        json!({"device": gateway.device_id()}),
        "mqtt",
        false,
    );
    assert_eq!(authorize(&app, &same).await["decision"], "allow");

    let r = app
        .get("/v1/policy/decisions?shadow_differs=true", Some(&app.admin))
        .await;
    let page: Value = r.json().await.unwrap();
    let differing = page["decisions"].as_array().unwrap();
    assert_eq!(differing.len(), 1, "{page}");
    assert_eq!(differing[0]["decision"], "deny");
    assert_eq!(differing[0]["shadow"]["decision"], "allow");
    assert_eq!(
        differing[0]["shadow"]["policies"],
        json!(["sensor-to-cloud"])
    );
    assert_eq!(
        differing[0]["shadow"]["policy_version"],
        shadow_version.as_str()
    );
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("vouch_policy_shadow_differences_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_bundle_is_signed_and_verifies_against_the_trust_bundle_only() {
    let repo = copy_example();
    let app = spawn_app_with_policies(Db::Sqlite, policy_config(repo.path())).await;
    let sensor = app.enroll("sensors").await;
    let device = client_for(&app.root_pem(), Some(&sensor.identity_pem()));
    let r = device
        .get(app.url("/v1/policy/bundle"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/jose");
    let jws = r.text().await.unwrap();
    let r = app.get("/v1/policy/bundle", None).await;
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);

    let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
    let root = pem::parse(app.root_pem()).unwrap().contents().to_vec();
    use vouch_ca::clock::Clock;
    let now = app.clock.unix();
    let claims = signed::verify(&jws, &root, &td, now).unwrap();
    let s = status(&app).await;
    assert_eq!(
        claims.version,
        s["active"]["version"]["id"].as_str().unwrap()
    );
    // What an agent does next: load the files it received, offline.
    let bundle = vouch_policy::bundle::load_files(claims.files.clone()).unwrap();
    assert_eq!(bundle.policies.policies().count(), 4);
    assert_eq!(bundle.content_hash, claims.content_hash);

    // A changed payload, another CA's root, another trust domain, or later than the
    // signer's lifetime: refused.
    let parts: Vec<&str> = jws.split('.').collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["files"]["policies/quarantine.cedar"] = json!("");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(serde_json::to_vec(&payload).unwrap()),
        parts[2]
    );
    assert!(matches!(
        signed::verify(&forged, &root, &td, now),
        Err(BundleError::BadSignature)
    ));
    let other = spawn_app(Db::Sqlite).await;
    let other_root = pem::parse(other.root_pem()).unwrap().contents().to_vec();
    assert!(matches!(
        signed::verify(&jws, &other_root, &td, now),
        Err(BundleError::UntrustedSigner(_))
    ));
    let other_td = TrustDomain::parse("other.example").unwrap();
    assert!(matches!(
        signed::verify(&jws, &root, &other_td, now),
        Err(BundleError::UntrustedSigner(_))
    ));
    assert!(matches!(
        signed::verify(&jws, &root, &td, now + signed::SIGNER_LIFETIME_SECS + 3600),
        Err(BundleError::UntrustedSigner(_))
    ));
    for junk in ["", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", &"x".repeat(100)] {
        assert!(signed::verify(junk, &root, &td, now).is_err(), "{junk}");
    }
    // A device certificate cannot sign bundles: it lacks the code-signing usage.
    let header = json!({"alg": "ES256", "x5c": [
        base64::engine::general_purpose::STANDARD.encode(
            pem::parse(sensor.body["certificate_pem"].as_str().unwrap()).unwrap().contents())
    ]});
    let impostor = format!(
        "{}.{}.{}",
        b64.encode(serde_json::to_vec(&header).unwrap()),
        parts[1],
        parts[2]
    );
    assert!(matches!(
        signed::verify(&impostor, &root, &td, now),
        Err(BundleError::UntrustedSigner(_))
    ));
}

#[tokio::test]
async fn without_a_policy_directory_everything_is_denied() {
    let app = spawn_app(Db::Sqlite).await;
    let a = app.enroll("sensors").await;
    let b = app.enroll("edge").await;
    let d = authorize(
        &app,
        &telemetry(
            a.device_id(),
            json!({"device": b.device_id()}),
            "mqtt",
            true,
        ),
    )
    .await;
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["policy_version"], "none");
    let r = app.get("/v1/policy/bundle", Some(&app.admin)).await;
    assert_eq!(problem(r).await.1["code"], "no_policy");
}

/// Acceptance: the decision log keeps every decision of a burst of 100,000 (SQLite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_keeps_every_decision_of_a_burst() {
    const N: usize = 100_000;
    const CLIENTS: usize = 64;
    let repo = copy_example();
    let app = Arc::new(spawn_app_with_policies(Db::Sqlite, policy_config(repo.path())).await);
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let allow = telemetry(
        sensor.device_id(),
        json!({"device": gateway.device_id()}),
        "mqtt",
        false,
    );
    let deny = telemetry(
        sensor.device_id(),
        json!({"device": gateway.device_id()}),
        "https",
        true,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let allowed = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (app, next, allowed) = (app.clone(), next.clone(), allowed.clone());
        let (allow, deny) = (allow.clone(), deny.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= N {
                    break;
                }
                let body = if i % 2 == 0 { &allow } else { &deny };
                let r = app.post("/v1/authorize", Some(&app.admin), body).await;
                assert_eq!(r.status(), StatusCode::OK);
                let d: Value = r.json().await.unwrap();
                if d["decision"] == "allow" {
                    allowed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    assert_eq!(allowed.load(Ordering::Relaxed), N / 2);
    // Every answered decision was committed before it was answered: count them.
    assert_eq!(decision_count(&app).await, N as i64);
    let r = app
        .get(
            &format!(
                "/v1/policy/decisions?principal={}&limit=1000",
                sensor.device_id()
            ),
            Some(&app.admin),
        )
        .await;
    let page: Value = r.json().await.unwrap();
    let ids: Vec<i64> = page["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 1000);
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first, no duplicates"
    );
}

/// The decision log on PostgreSQL, and append-only on both backends.
#[tokio::test]
async fn the_decision_log_is_append_only_on_both_backends() {
    for db in [Db::Sqlite, Db::Postgres] {
        let repo = copy_example();
        let app = spawn_app_with_policies(db, policy_config(repo.path())).await;
        let a = app.enroll("sensors").await;
        let b = app.enroll("edge").await;
        let body = telemetry(
            a.device_id(),
            json!({"device": b.device_id()}),
            "coap",
            false,
        );
        for _ in 0..3 {
            assert_eq!(authorize(&app, &body).await["decision"], "allow");
        }
        assert_eq!(decision_count(&app).await, 3, "{db:?}");
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&app.database_url)
            .await
            .unwrap();
        for sql in [
            "UPDATE decision_log SET decision = 'deny'",
            "DELETE FROM decision_log",
        ] {
            assert!(
                sqlx::query(sql).execute(&mut conn).await.is_err(),
                "{db:?}: {sql} must be refused"
            );
        }
        assert_eq!(decision_count(&app).await, 3, "{db:?}");
    }
}
