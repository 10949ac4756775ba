//! Reloads: a bad set never replaces a good one; a Git commit becomes active without a
//! restart; a shadow set is evaluated but never enforced.

use super::*;
use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use vouch_ca::app::PolicyConfig;
use vouch_ca::tokens::Role;

#[tokio::test]
async fn a_bad_reload_leaves_the_previous_set_active_and_visible() {
    let (app, repo) = spawn_app_with_example_copy(Db::Sqlite).await;
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
    let r = app.reload_policies().await;
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
    let d = authorize(&app, &telemetry(&sensor, &cloud, "mqtt", true)).await;
    assert_eq!(d["policy_version"], before.as_str());

    // Fixed: the next reload swaps, clears the error and is audited.
    std::fs::write(repo.path().join("policies/broken.cedar"), SENSOR_TO_CLOUD).unwrap();
    let r = app.reload_policies().await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["active"]["outcome"], "loaded");
    assert_eq!(body["active"]["previous"], before.as_str());
    let after = body["active"]["version"].as_str().unwrap().to_owned();
    assert_ne!(after, before);
    let s = status(&app).await;
    assert!(s["active"]["last_error"].is_null());
    let d = authorize(&app, &telemetry(&sensor, &cloud, "mqtt", true)).await;
    assert_eq!(d["decision"], "allow");
    assert_eq!(d["policy_version"], after.as_str());
    let audit = app.server.state.registry.recent_audit(5).await.unwrap();
    assert!(audit.iter().any(|a| a.action == "policy.loaded"
        && a.subject == after
        && a.actor == "operator:test-admin"));

    // Reloading the same content changes nothing.
    let r = app.reload_policies().await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["active"]["outcome"], "unchanged");
}

/// The example policies committed to a new Git repository, its first commit, and a server
/// watching the work tree every 100 ms.
async fn committed_example_watched() -> (tempfile::TempDir, String, TestApp) {
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
    (repo, first, app)
}

#[tokio::test]
async fn a_git_commit_becomes_the_active_version_without_restart() {
    let (repo, first, app) = committed_example_watched().await;
    let s = status(&app).await;
    assert_eq!(s["active"]["version"]["id"], first.as_str());
    assert_eq!(s["active"]["version"]["commit"], first.as_str());
    let sensor = app.enroll("sensors").await;
    let cloud = app.enroll("cloud").await;
    let to_cloud = telemetry(&sensor, &cloud, "mqtt", true);
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
    wait_for_status(&app, "commit not picked up", |s| {
        s["active"]["version"]["id"] == second.as_str()
    })
    .await;
    let d = authorize(&app, &to_cloud).await;
    assert_eq!(d["decision"], "allow");
    assert_eq!(d["policies"], json!(["sensor-to-cloud"]));
    assert_eq!(d["policy_version"], second.as_str());

    // A commit that breaks the set is never activated; the watcher reports it in the status.
    std::fs::write(repo.path().join("policies/cloud.cedar"), "permit (").unwrap();
    git(repo.path(), &["commit", "-q", "-am", "oops"]);
    let third = git(repo.path(), &["rev-parse", "HEAD"]);
    let s = wait_for_status(&app, "failure not reported", |s| {
        s["active"]["last_error"]["commit"] == third.as_str()
    })
    .await;
    assert_eq!(s["active"]["version"]["id"], second.as_str());
    let d = authorize(&app, &to_cloud).await;
    assert_eq!(d["policy_version"], second.as_str());
}

/// Files that differ from `HEAD` (edited, added, not yet committed) are never reported as
/// the commit: the version is `<commit>+dirty:sha256:<hash>`, a new one for each content, and
/// the commit id once the files are committed.
#[tokio::test]
async fn an_uncommitted_change_is_reported_dirty_with_its_content_hash() {
    let (repo, first, app) = committed_example_watched().await;
    let s = status(&app).await;
    assert_eq!(s["active"]["version"]["id"], first.as_str());
    let sensor = app.enroll("sensors").await;
    let cloud = app.enroll("cloud").await;
    let to_cloud = telemetry(&sensor, &cloud, "mqtt", true);

    // An untracked policy file: loaded, and the version says the tree is dirty.
    std::fs::write(repo.path().join("policies/cloud.cedar"), SENSOR_TO_CLOUD).unwrap();
    let dirty = |s: &Value| {
        let hash = s["active"]["version"]["content_hash"]
            .as_str()
            .unwrap_or("");
        s["active"]["version"]["id"] == format!("{first}+dirty:sha256:{hash}").as_str()
    };
    let s = wait_for_status(&app, "dirty tree not picked up", dirty).await;
    assert_eq!(
        s["active"]["version"]["commit"],
        format!("{first}+dirty").as_str()
    );
    let untracked = s["active"]["version"]["id"].as_str().unwrap().to_owned();
    let d = authorize(&app, &to_cloud).await;
    assert_eq!(d["decision"], "allow");
    assert_eq!(d["policy_version"], untracked.as_str());

    // Another uncommitted content is another version.
    git(repo.path(), &["add", "."]);
    git(
        repo.path(),
        &["commit", "-q", "-m", "sensors may reach the cloud"],
    );
    let second = git(repo.path(), &["rev-parse", "HEAD"]);
    wait_for_status(&app, "commit not picked up", |s| {
        s["active"]["version"]["id"] == second.as_str()
    })
    .await;
    let edited = SENSOR_TO_CLOUD.replace("sensor-to-cloud", "sensor-to-cloud-edited");
    std::fs::write(repo.path().join("policies/cloud.cedar"), edited).unwrap();
    let s = wait_for_status(&app, "edit not picked up", |s| {
        s["active"]["version"]["commit"] == format!("{second}+dirty").as_str()
    })
    .await;
    assert!(s["active"]["version"]["id"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{second}+dirty:sha256:")));
    let d = authorize(&app, &to_cloud).await;
    assert_eq!(d["policies"], json!(["sensor-to-cloud-edited"]));
    assert_eq!(d["policy_version"], s["active"]["version"]["id"]);

    // Committed: the commit id again.
    git(repo.path(), &["commit", "-q", "-am", "renamed"]);
    let third = git(repo.path(), &["rev-parse", "HEAD"]);
    let s = wait_for_status(&app, "commit not picked up", |s| {
        s["active"]["version"]["id"] == third.as_str()
    })
    .await;
    let loaded_hash = s["active"]["version"]["content_hash"].clone();

    // HEAD and the files disagree, as between the steps of a checkout: HEAD is moved back to
    // the second commit while the files are still the third's. HEAD's tree is compared with
    // the files actually read, so the version never names a commit whose files were not the
    // ones loaded: it is the second commit, dirty, with the hash of what was loaded.
    git(repo.path(), &["reset", "-q", "--soft", &second]);
    let s = wait_for_status(&app, "moved HEAD not picked up", |s| {
        s["active"]["version"]["commit"] == format!("{second}+dirty").as_str()
    })
    .await;
    assert_eq!(s["active"]["version"]["content_hash"], loaded_hash);
    assert_eq!(
        s["active"]["version"]["id"],
        format!("{second}+dirty:sha256:{}", loaded_hash.as_str().unwrap()).as_str()
    );
    let d = authorize(&app, &to_cloud).await;
    assert_eq!(d["policies"], json!(["sensor-to-cloud-edited"]));
    assert_eq!(d["policy_version"], s["active"]["version"]["id"]);
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
    let to_cloud = telemetry(&sensor, &cloud, "mqtt", true);
    let d = authorize(&app, &to_cloud).await;
    assert_eq!(d["decision"], "deny", "the candidate set is not enforced");
    let same = telemetry(&sensor, &gateway, "mqtt", false);
    assert_eq!(authorize(&app, &same).await["decision"], "allow");

    let page = decision_log_page(&app, &app.admin, "shadow_differs=true").await;
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
