//! Acceptance 6 (first half): the same storage scenario on SQLite and on PostgreSQL.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use vouch_ca::store::DeviceStatus;

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
    let r: Value = app
        .get("/v1/devices?zone=north", Some(&app.admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["devices"].as_array().unwrap().len(), 3);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/devices?limit=2&cursor={c}"),
            None => "/v1/devices?limit=2".into(),
        };
        let page: Value = app.get(&path, Some(&app.admin)).await.json().await.unwrap();
        let ids: Vec<String> = page["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.len() <= 2);
        seen.extend(ids);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected: Vec<String> = devices.iter().map(|d| d.device_id().to_owned()).collect();
    expected.sort();
    assert_eq!(seen, expected, "pages cover every device once, in id order");

    // Renew one, revoke another.
    let client = client_for(&app.root_pem(), Some(&devices[0].identity_pem()));
    let (csr, _) = rcgen_csr();
    let r = client
        .post(app.url("/v1/renew"))
        .json(&json!({"csr_pem": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .post(
            &format!("/v1/devices/{}/revoke", devices[1].device_id()),
            Some(&app.admin),
            &json!({"reason": "decommissioned"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let revoked: Value = app
        .get("/v1/devices?status=revoked", Some(&app.admin))
        .await
        .json()
        .await
        .unwrap();
    let revoked = revoked["devices"].as_array().unwrap();
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
        assert!(
            sqlx::query("UPDATE audit_log SET actor = 'x'")
                .execute(&pool)
                .await
                .is_err(),
            "{db:?}"
        );
        assert!(
            sqlx::query("DELETE FROM audit_log")
                .execute(&pool)
                .await
                .is_err(),
            "{db:?}"
        );
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
