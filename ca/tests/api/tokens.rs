//! Acceptance 2: a used, expired, tampered or wrong-signature bootstrap token is refused with
//! 401/403 and a clear code, and nothing is written. Single use under concurrency.

use crate::support::*;
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use vouch_ca::tokens::{BootstrapClaims, Role, TokenKey};
use vouch_proto::ProblemCode;

async fn enroll_with(app: &TestApp, token: &str) -> reqwest::Response {
    app.enroll_with_csr(token, &rcgen_csr().0).await
}

async fn assert_refused(app: &TestApp, token: &str, status: StatusCode, code: ProblemCode) {
    let before = app.counts().await;
    assert_problem(enroll_with(app, token).await, status, code).await;
    assert_eq!(
        app.counts().await,
        before,
        "a refused enrollment wrote nothing"
    );
}

fn claims_of(token: &str) -> BootstrapClaims {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn used_token_is_refused() {
    let app = spawn_app(Db::Sqlite).await;
    let token = app.bootstrap_token("factory-1").await;
    assert_eq!(
        enroll_with(&app, &token).await.status(),
        StatusCode::CREATED
    );
    assert_refused(&app, &token, StatusCode::FORBIDDEN, ProblemCode::TokenUsed).await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    let app = spawn_app(Db::Sqlite).await;
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let r = app
            .post(
                "/v1/bootstrap-tokens",
                Some(&app.admin),
                &json!({"zone": "z1", "ttl_seconds": 120}),
            )
            .await;
        tokens.push(
            r.json::<Value>().await.unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Past expiry but within the allowed clock skew (60 s): accepted.
    app.clock.advance(120 + 30);
    assert_eq!(
        enroll_with(&app, &tokens[0]).await.status(),
        StatusCode::CREATED
    );
    // Past expiry plus skew: refused.
    app.clock.advance(31);
    assert_refused(
        &app,
        &tokens[1],
        StatusCode::UNAUTHORIZED,
        ProblemCode::TokenExpired,
    )
    .await;
}

#[tokio::test]
async fn tampered_token_is_refused() {
    let app = spawn_app(Db::Sqlite).await;
    let token = app.bootstrap_token("factory-1").await;
    let mut claims = claims_of(&token);
    claims.zone = "cloud".into();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&claims).unwrap());
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
    assert_refused(
        &app,
        &tampered,
        StatusCode::UNAUTHORIZED,
        ProblemCode::TokenInvalid,
    )
    .await;
    // The genuine token is untouched by the attempt.
    assert_eq!(
        enroll_with(&app, &token).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn token_signed_with_another_key_is_refused() {
    let app = spawn_app(Db::Sqlite).await;
    let token = app.bootstrap_token("factory-1").await;
    let (other, _) = TokenKey::generate(&ring::rand::SystemRandom::new()).unwrap();
    let forged = other.sign(&claims_of(&token)).unwrap();
    // An operator token is not a bootstrap token either, nor is junk.
    let admin = app.admin.clone();
    for not_ours in [forged, admin, "not-a-jwt".into(), "a".repeat(5000)] {
        assert_refused(
            &app,
            &not_ours,
            StatusCode::UNAUTHORIZED,
            ProblemCode::TokenInvalid,
        )
        .await;
    }
}

#[tokio::test]
async fn token_response_pins_the_root_ca() {
    let app = spawn_app(Db::Sqlite).await;
    let token = app.bootstrap_token("factory-1").await;
    let claims = claims_of(&token);
    let root_der = pem::parse(app.root_pem()).unwrap().into_contents();
    let fp = hex::encode(ring::digest::digest(&ring::digest::SHA256, &root_der));
    assert_eq!(claims.ca_sha256, fp);
    assert_eq!(claims.trust_domain, TRUST_DOMAIN);
    assert_eq!(claims.zone, "factory-1");
}

/// Two concurrent enrollments with one token give exactly one device.
pub async fn race_one_token(apps: &[&TestApp], token: &str, attempts: usize) -> usize {
    let mut tasks = Vec::new();
    for i in 0..attempts {
        let client = apps[i % apps.len()].client.clone();
        let url = apps[i % apps.len()].url("/v1/enroll");
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let (csr, _) = rcgen_csr();
            client
                .post(url)
                .json(&json!({"token": token, "csr_pem": csr}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut created = 0;
    for t in tasks {
        let status = t.await.unwrap();
        if status == StatusCode::CREATED {
            created += 1;
        } else {
            assert_eq!(status, StatusCode::FORBIDDEN);
        }
    }
    created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enrollments_with_one_token_give_one_device() {
    let app = spawn_app(Db::Sqlite).await;
    for _ in 0..5 {
        let token = app.bootstrap_token("factory-1").await;
        assert_eq!(race_one_token(&[&app], &token, 8).await, 1);
    }
    assert_eq!(app.counts().await.devices, 5);
}

/// An admin revokes an operator token by its id before it expires (issue 11, finding 9):
/// from then on it is refused (`401 token_revoked`) for reads and writes alike; only admins
/// may revoke; a second revocation says it was revoked already; the audit log records it.
async fn an_operator_token_can_be_revoked_before_it_expires(db: Db) {
    use vouch_ca::clock::Clock;
    let app = &spawn_app(db).await;
    let now = vouch_ca::clock::SystemClock.unix();
    let mint = |role| {
        vouch_ca::app::mint_operator_token_with_id(&app.data_dir(), role, "leaked", 3600, now)
            .unwrap()
    };
    let (leaked, leaked_id) = mint(Role::Operator);
    let (admin, _) = mint(Role::Admin);
    let devices = |token: String| async move { app.get("/v1/devices", Some(&token)).await };
    assert_eq!(devices(leaked.clone()).await.status(), StatusCode::OK);

    let revoke = |token: String, id: &str| {
        let body = json!({"token_id": id});
        async move {
            app.post("/v1/operator-tokens/revoke", Some(&token), &body)
                .await
        }
    };
    // Not by an operator (not even of its own token), nor with a malformed id.
    assert_problem(
        revoke(leaked.clone(), &leaked_id).await,
        StatusCode::FORBIDDEN,
        ProblemCode::ForbiddenRole,
    )
    .await;
    assert_problem(
        revoke(admin.clone(), "not-an-id").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        ProblemCode::InvalidBody,
    )
    .await;
    assert_eq!(devices(leaked.clone()).await.status(), StatusCode::OK);

    let r = revoke(admin.clone(), &leaked_id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"token_id": leaked_id, "newly_revoked": true}));
    assert_problem(
        devices(leaked.clone()).await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::TokenRevoked,
    )
    .await;
    assert_problem(
        app.post(
            "/v1/bootstrap-tokens",
            Some(&leaked),
            &json!({"zone": "lab"}),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::TokenRevoked,
    )
    .await;
    // Other tokens are untouched; revoking again changes nothing.
    assert_eq!(devices(admin.clone()).await.status(), StatusCode::OK);
    let again: Value = revoke(admin.clone(), &leaked_id)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["newly_revoked"], false);
    let audit = app.server.state.registry.recent_audit(5).await.unwrap();
    let revoked: Vec<_> = audit
        .iter()
        .filter(|a| a.action == "operator_token.revoked")
        .collect();
    assert_eq!(revoked.len(), 1, "{audit:?}");
    assert_eq!(revoked[0].subject, leaked_id);
}

#[tokio::test]
async fn an_operator_token_can_be_revoked_before_it_expires_sqlite() {
    an_operator_token_can_be_revoked_before_it_expires(Db::Sqlite).await;
}

#[tokio::test]
async fn an_operator_token_can_be_revoked_before_it_expires_postgres() {
    an_operator_token_can_be_revoked_before_it_expires(Db::Postgres).await;
}
