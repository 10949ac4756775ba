//! Acceptance 6 (first half): the same storage scenario on SQLite and on PostgreSQL.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::Value;
use vouch_ca::store::DeviceStatus;

/// The devices of one page of `GET /v1/devices?{query}`, as an admin lists them, and the
/// cursor to the next page.
async fn list_devices(app: &TestApp, query: &str) -> (Vec<Value>, Option<String>) {
    let page: Value = app
        .get(&format!("/v1/devices?{query}"), Some(&app.admin))
        .await
        .json()
        .await
        .unwrap();
    let next = page["next_cursor"].as_str().map(str::to_owned);
    (page["devices"].as_array().unwrap().clone(), next)
}

async fn storage_scenario(db: Db) {
    let app = spawn_app(db).await;
    // Five devices in two zones.
    let mut devices = Vec::new();
    for zone in ["north", "north", "north", "south", "south"] {
        devices.push(app.enroll(zone).await);
    }
    let counts = app.counts().await;
    assert_eq!(
        (counts.devices, counts.certificates, counts.used_tokens),
        (5, 5, 5)
    );
    // token.created + token.used + device.enrolled per device.
    assert_eq!(counts.audit_records, 15);

    // Filter by zone, and page through with a cursor.
    assert_eq!(list_devices(&app, "zone=north").await.0.len(), 3);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=2&cursor={c}"),
            None => "limit=2".into(),
        };
        let (page, next) = list_devices(&app, &query).await;
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|d| d["id"].as_str().unwrap().to_owned()));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut expected: Vec<String> = devices.iter().map(|d| d.device_id().to_owned()).collect();
    expected.sort();
    assert_eq!(seen, expected, "pages cover every device once, in id order");

    // Renew one, revoke another.
    assert_eq!(app.renew(&devices[0]).await.status(), StatusCode::CREATED);
    let r = app.revoke(devices[1].device_id(), "decommissioned").await;
    assert_eq!(r.status(), StatusCode::OK);
    let (revoked, _) = list_devices(&app, "status=revoked").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["id"].as_str(), Some(devices[1].device_id()));

    let registry = &app.server.state.registry;
    let d0 = registry
        .device(devices[0].device_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d0.status, DeviceStatus::Active);
    assert_ne!(d0.current_serial, devices[0].serial());
    let counts = app.counts().await;
    assert_eq!((counts.devices, counts.certificates), (5, 6));
    assert_eq!(counts.audit_records, 17);
    let audit = registry.recent_audit(2).await.unwrap();
    assert_eq!(audit[0].action, "device.revoked");
    assert_eq!(audit[1].action, "certificate.renewed");

    // The CRL lists the revoked device's serial.
    let crl = registry.latest_crl().await.unwrap().unwrap();
    let (_, parsed) = x509_parser::parse_x509_crl(&crl.der).unwrap();
    let listed: Vec<String> = parsed
        .iter_revoked_certificates()
        .map(|r| {
            vouch_ca::ids::Serial::from_der_bytes(r.raw_serial())
                .unwrap()
                .to_hex()
        })
        .collect();
    assert_eq!(listed, vec![devices[1].serial().to_owned()]);
}

#[tokio::test]
async fn storage_scenario_sqlite() {
    storage_scenario(Db::Sqlite).await;
}

#[tokio::test]
async fn storage_scenario_postgres() {
    storage_scenario(Db::Postgres).await;
}

#[tokio::test]
async fn audit_log_is_append_only_on_both_backends() {
    for db in [Db::Sqlite, Db::Postgres] {
        let app = spawn_app(db).await;
        app.enroll("z").await;
        let pool = sqlx::AnyPool::connect(&app.database_url).await.unwrap();
        for sql in ["UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"] {
            assert!(
                sqlx::query(sql).execute(&pool).await.is_err(),
                "{db:?}: {sql} must be refused"
            );
        }
        assert_eq!(app.counts().await.audit_records, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_token_on_postgres() {
    let app = spawn_app(Db::Postgres).await;
    for _ in 0..5 {
        let token = app.bootstrap_token("z").await;
        assert_eq!(crate::tokens::race_one_token(&[&app], &token, 8).await, 1);
    }
}

#[tokio::test]
async fn sqlite_connections_use_wal_and_normal_sync() {
    let app = spawn_app(Db::Sqlite).await;
    let registry = &app.server.state.registry;
    assert_eq!(registry.sqlite_pragma("journal_mode").await.unwrap(), "wal");
    assert_eq!(registry.sqlite_pragma("synchronous").await.unwrap(), "1");
    assert_eq!(registry.sqlite_pragma("foreign_keys").await.unwrap(), "1");
    assert_eq!(
        registry.sqlite_pragma("busy_timeout").await.unwrap(),
        "10000"
    );
    assert_eq!(
        registry.sqlite_pragma("wal_autocheckpoint").await.unwrap(),
        "8192"
    );
}
