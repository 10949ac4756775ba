//! The stale sweep over a large registry (SQLite): how long one period's sweep takes with
//! N registered devices (default 100,000), half of them silent, against the raw cost of one
//! bare `UPDATE` of the same rows in an identical database, measured in the same run.
//!
//! ```text
//! cargo bench -p vouch-ca --bench sweep             # 100,000 devices
//! VOUCH_BENCH_DEVICES=10000 cargo bench -p vouch-ca --bench sweep
//! ```
//! Exits non-zero if the sweep does not mark exactly the silent half stale.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use sqlx::any::AnyPoolOptions;
use std::time::Instant;
use vouch_ca::store::{Registry, SweepOutcome};

const PERIOD: i64 = 1800;
const GRACE: i64 = 300;
const NOW: i64 = 1_900_000_000;

/// Inserts `n` active devices; the even ones attested long ago (silent), the odd ones now.
async fn fill(url: &str, n: usize) {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|i| {
                let last = if i % 2 == 0 {
                    NOW - 10 * PERIOD
                } else {
                    NOW - 10
                };
                format!(
                    "('{i:032x}', 'spiffe://b/device/{i:032x}', 'z', NULL, '{{}}', 'active', 0, 0, \
                     '{i:032x}', {NOW}, 'active', {last})"
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO devices (id, spiffe_id, zone, device_class, labels, status, created_at, \
             updated_at, current_serial, current_not_after, attestation, last_attested) VALUES {}",
            rows.join(", ")
        );
        sqlx::query(&sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    pool.close().await;
}

fn main() {
    let n: usize = std::env::var("VOUCH_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let url = |name: &str| format!("sqlite://{}?mode=rwc", dir.path().join(name).display());

        // The sweep, through the registry.
        let registry = Registry::connect(&url("sweep.db"), 4).await.unwrap();
        fill(&url("sweep.db"), n).await;
        let t = Instant::now();
        let outcome = registry.sweep_stale(NOW, PERIOD, GRACE, "bench").await.unwrap();
        let sweep = t.elapsed().as_secs_f64();
        assert_eq!(
            outcome,
            SweepOutcome::Ran {
                period: NOW / PERIOD,
                stale: (n as u64).div_ceil(2)
            }
        );

        // Raw: one bare UPDATE of the same rows (no claim, history or audit).
        let raw_registry = Registry::connect(&url("raw.db"), 4).await.unwrap();
        fill(&url("raw.db"), n).await;
        let pool = AnyPoolOptions::new().max_connections(1).connect(&url("raw.db")).await.unwrap();
        let t = Instant::now();
        let done = sqlx::query(
            "UPDATE devices SET attestation = 'stale' WHERE attestation = 'active' AND last_attested < $1",
        )
        .bind(NOW - PERIOD - GRACE)
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
        let raw = t.elapsed().as_secs_f64();
        assert_eq!(done, (n as u64).div_ceil(2));
        raw_registry.close().await;

        println!("stale sweep (SQLite, {n} devices, {} silent)", n.div_ceil(2));
        println!("  sweep (claim + history rows + update + audit): {:.1} ms", sweep * 1e3);
        println!("  raw bare UPDATE of the same rows:              {:.1} ms", raw * 1e3);
        println!("  ratio sweep / raw:                             {:.1}x", sweep / raw);
        println!(
            "RESULT\tsweep\tstale sweep of {n} devices ({} silent), SQLite\t{:.1} ms\t{:.1} ms bare UPDATE of the same rows\t{:.1}x\t-",
            n.div_ceil(2),
            sweep * 1e3,
            raw * 1e3,
            sweep / raw
        );
    });
}
