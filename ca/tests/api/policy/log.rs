//! The decision log: every decision of a burst, append-only on both backends.

use super::*;
use crate::support::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Acceptance: the decision log keeps every decision of a burst of 100,000 (SQLite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_keeps_every_decision_of_a_burst() {
    const N: usize = 100_000;
    const CLIENTS: usize = 64;
    let (app, _repo) = spawn_app_with_example_copy(Db::Sqlite).await;
    let app = Arc::new(app);
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let allow = telemetry(&sensor, &gateway, "mqtt", false);
    let deny = telemetry(&sensor, &gateway, "https", true);
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
    let query = format!("principal={}&limit=1000", sensor.device_id());
    let page = decision_log_page(&app, &app.admin, &query).await;
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
        let (app, _repo) = spawn_app_with_example_copy(db).await;
        let a = app.enroll("sensors").await;
        let b = app.enroll("edge").await;
        let body = telemetry(&a, &b, "coap", false);
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
