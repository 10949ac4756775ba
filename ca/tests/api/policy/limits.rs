//! Bounds on the decision log (issue 11, finding 5): each caller's decisions are rate-limited
//! (a token's burst cannot fill the append-only log), and a page of the log is bounded in
//! bytes as well as in records.

use super::*;
use crate::support::*;
use reqwest::StatusCode;
use vouch_ca::tokens::Role;
use vouch_proto::ProblemCode;

async fn limited_app(settings: vouch_ca::api::Settings) -> TestApp {
    spawn_app_full(Db::Sqlite, settings, policy_config(&example_policy_dir())).await
}

#[tokio::test]
async fn each_caller_gets_its_rate_of_decisions_and_a_refusal_logs_nothing() {
    let app = limited_app(vouch_ca::api::Settings {
        decisions_per_second: 2,
        decision_burst: 3,
        ..settings()
    })
    .await;
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let body = telemetry(&sensor, &gateway, "mqtt", false);
    for _ in 0..3 {
        authorize(&app, &body).await;
    }
    let before = decision_count(&app).await;
    let r = app.post("/v1/authorize", Some(&app.admin), &body).await;
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, ProblemCode::RateLimited).await;
    assert_eq!(
        decision_count(&app).await,
        before,
        "a refusal is not a decision"
    );
    // Another caller has its own allowance.
    let auditor = app.token_for(Role::Auditor);
    let r = app.post("/v1/authorize", Some(&auditor), &body).await;
    assert_eq!(r.status(), StatusCode::OK);
    // A second later (the injected clock), two more for the first caller, then no more.
    app.clock.advance(1);
    authorize(&app, &body).await;
    authorize(&app, &body).await;
    let r = app.post("/v1/authorize", Some(&app.admin), &body).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_decision_log_page_ends_at_its_byte_bound_and_the_cursor_goes_on() {
    let app = limited_app(vouch_ca::api::Settings {
        max_decision_page_bytes: 1,
        ..settings()
    })
    .await;
    let sensor = app.enroll("sensors").await;
    let gateway = app.enroll("edge").await;
    let body = telemetry(&sensor, &gateway, "mqtt", false);
    for _ in 0..3 {
        authorize(&app, &body).await;
    }
    // Every record is larger than the bound: each page holds one, and says where to go on.
    let mut seen = Vec::new();
    let mut query = "limit=1000".to_owned();
    loop {
        let page = decision_log_page(&app, &app.admin, &query).await;
        let decisions = page["decisions"].as_array().unwrap();
        assert_eq!(decisions.len(), 1, "{page}");
        seen.push(decisions[0]["id"].as_i64().unwrap());
        match page["next_cursor"].as_i64() {
            Some(cursor) => query = format!("limit=1000&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3);
    assert!(seen.windows(2).all(|w| w[0] > w[1]));
}
