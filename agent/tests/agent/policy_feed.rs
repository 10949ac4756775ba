//! A policy change reaches running sidecars by long-poll (`GET /v1/policy/bundle?after=V&wait=S`),
//! not at their next periodic refresh: what the new version allows is allowed at both ends
//! within moments of the server's reload.

use crate::server::*;
use crate::sidecar_support::{b64, free_port, listen_args, Sidecar};
use crate::support::*;
use serde_json::json;
use std::time::{Duration, Instant};

const EDGE_TELEMETRY: &str = r#"@id("edge-telemetry-to-regional")
permit (
  principal in Zone::"edge",
  action == Action::"send",
  resource in Zone::"regional"
)
when { context.data_type == DataType::"telemetry" && context.tls };
"#;

async fn policy_version(sidecar: &Sidecar) -> String {
    let (_, id) = call(&sidecar.socket(), "GET", "/v1/identity", None).await;
    id["policy_version"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_policy_reaches_running_sidecars_by_long_poll() {
    let policies = policies();
    let server = RealServer::start(&["--policy-dir", &policies.path().display().to_string()]).await;
    let port = free_port();
    // An hour between periodic refreshes: only the long-poll can bring the change.
    let mut options = vec!["--refresh".to_owned(), "1h".into()];
    options.extend(listen_args(port));
    let regional = Sidecar::start(&server, "regional", &options).await;
    let gateway = Sidecar::start(&server, "edge", &["--refresh".into(), "1h".into()]).await;
    let before = policy_version(&gateway).await;
    assert_eq!(before, policy_version(&regional).await);
    let send = json!({"to": regional.device_id(), "data_type": "telemetry",
                      "payload": b64(b"t=1")});
    let (status, refused) = call(&gateway.socket(), "POST", "/v1/send", Some(send.clone())).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        refused["code"],
        vouch_proto::ProblemCode::PolicyDenied.as_str()
    );

    std::fs::write(
        policies.path().join("policies/edge-telemetry.cedar"),
        EDGE_TELEMETRY,
    )
    .unwrap();
    let reloaded = Instant::now();
    let (status, answer) = server.post("/v1/policy/reload", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let mut reached = Vec::new();
    for sidecar in [&gateway, &regional] {
        loop {
            if policy_version(sidecar).await != before {
                reached.push(reloaded.elapsed());
                break;
            }
            assert!(
                reloaded.elapsed() < Duration::from_secs(20),
                "the new policy did not reach the sidecar:\n{}",
                sidecar.process.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!("reload to new policy in use at the sidecars: {reached:?}");
    let (status, sent) = call(&gateway.socket(), "POST", "/v1/send", Some(send)).await;
    assert_eq!(status, 200, "{sent}\n{}", gateway.process.log());
    assert!(sent["policies"]
        .as_array()
        .unwrap()
        .contains(&json!("edge-telemetry-to-regional")));
}

/// The root certificate (DER) and trust domain bundles are verified with.
async fn trust(server: &RealServer) -> Vec<u8> {
    let pem = server.get_text("/v1/trust-bundle").await;
    pem::parse(pem.as_bytes()).unwrap().contents().to_vec()
}

/// A bundle numbered below the one a sidecar holds is refused, although it was signed later:
/// here a replica that has not reloaded signs its (older) set after another replica signed
/// the new one, as an attacker replaying an old bundle could too. A rollback to old files
/// is a new activation, numbered higher, and taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_numbered_below_the_one_held_is_refused_though_signed_later_postgres() {
    use vouch_agent::messaging::policy::{BundlePolicy, Decider, Loaded};
    let policies = policies();
    let database = crate::sidecars::fresh_postgres_database();
    let dir = policies.path().display().to_string();
    // No watcher: each replica loads a change only when asked to reload.
    let options = [
        "--database-url",
        &database,
        "--policy-dir",
        &dir,
        "--policy-poll",
        "0s",
    ];
    let lagging = RealServer::start(&options).await;
    let current = lagging.replica().await;
    std::fs::write(
        policies.path().join("policies/edge-telemetry.cedar"),
        EDGE_TELEMETRY,
    )
    .unwrap();
    let (status, answer) = current.post("/v1/policy/reload", json!({})).await;
    assert_eq!(status, 200, "{answer}");

    let root = trust(&current).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let load = |jws: &str| Loaded::verify(jws, &root, "fleet.example", now).unwrap();
    let claims = |jws: &str| {
        vouch_proto::bundle::verify(
            jws,
            &root,
            &vouch_proto::ids::TrustDomain::parse("fleet.example").unwrap(),
            now,
        )
        .unwrap()
    };
    // The new set first, then the lagging replica's old set (signed now, after it).
    let new = current.get_text("/v1/policy/bundle").await;
    let old = lagging.get_text("/v1/policy/bundle").await;
    let (new_claims, old_claims) = (claims(&new), claims(&old));
    assert_ne!(new_claims.version, old_claims.version);
    assert!(
        old_claims.iat >= new_claims.iat,
        "the old set was signed later"
    );
    assert!(old_claims.sequence < new_claims.sequence);
    // At least the activation time in milliseconds (a registry restored from a backup still
    // numbers above what agents hold).
    assert!(
        new_claims.sequence >= (now - 600) * 1000,
        "{}",
        new_claims.sequence
    );

    let held = BundlePolicy::default();
    assert!(held.install(load(&new)));
    assert!(
        !held.install(load(&old)),
        "an older set replaced a newer one"
    );
    assert_eq!(held.version().as_deref(), Some(new_claims.version.as_str()));

    // A rollback: the old files again, activated after the new ones, are numbered higher.
    std::fs::remove_file(policies.path().join("policies/edge-telemetry.cedar")).unwrap();
    let (status, answer) = current.post("/v1/policy/reload", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let rolled_back = current.get_text("/v1/policy/bundle").await;
    let rolled_back_claims = claims(&rolled_back);
    assert_eq!(rolled_back_claims.content_hash, old_claims.content_hash);
    assert!(rolled_back_claims.sequence > new_claims.sequence);
    assert!(held.install(load(&rolled_back)));
}
