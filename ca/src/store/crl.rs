//! The CRL number sequence and the latest signed CRL, shared by every replica. On
//! PostgreSQL every new CRL is announced on the `vouch_crl` channel (NOTIFY, delivered at
//! commit), so replicas learn of it at once; SQLite has one process, which knows already.

use super::{col, Registry, StoreError};
use crate::ids::Serial;
use crate::pki::crl::RevokedEntry;
use time::OffsetDateTime;

/// The latest stored CRL.
#[derive(Debug, Clone)]
pub struct StoredCrl {
    /// CRL number.
    pub number: i64,
    /// When it was signed (Unix seconds).
    pub this_update: i64,
    /// DER bytes.
    pub der: Vec<u8>,
}

/// Every certificate a CRL lists at time `$1`, with when and whether it is only on hold:
/// revoked certificates (a key-agreement certificate with the device certificate it came
/// with), and, on hold (`certificateHold`), the current certificates of active devices whose
/// attestation failed (quarantined) or went silent (stale).
const LISTED: &str = "SELECT serial, revoked_at, CAST(0 AS BIGINT) AS hold FROM certificates \
     WHERE revoked_at IS NOT NULL AND not_after > $1 \
     UNION ALL SELECT k.serial, c.revoked_at, CAST(0 AS BIGINT) FROM key_agreement_certificates k \
     JOIN certificates c ON c.serial = k.device_serial \
     WHERE c.revoked_at IS NOT NULL AND c.not_after > $1 \
     UNION ALL SELECT c.serial, d.updated_at, CAST(1 AS BIGINT) FROM certificates c \
     JOIN devices d ON d.id = c.device_id \
     WHERE d.status = 'active' AND d.attestation IN ('quarantined', 'stale') \
     AND c.revoked_at IS NULL AND c.not_after > $1 \
     UNION ALL SELECT k.serial, d.updated_at, CAST(1 AS BIGINT) FROM key_agreement_certificates k \
     JOIN certificates c ON c.serial = k.device_serial JOIN devices d ON d.id = c.device_id \
     WHERE d.status = 'active' AND d.attestation IN ('quarantined', 'stale') \
     AND c.revoked_at IS NULL AND c.not_after > $1 \
     ORDER BY serial";

/// The PostgreSQL channel new CRL numbers are announced on.
const CRL_CHANNEL: &str = "vouch_crl";

impl Registry {
    /// Passes every CRL number another replica announces to `announce`, for as long as the
    /// process runs (reconnecting after a failure, and then reading the latest number, which
    /// may have been announced while away). Returns at once on SQLite.
    pub(crate) async fn follow_crl_numbers(&self, announce: impl Fn(i64) + Send) {
        let Some(url) = self
            .url
            .as_deref()
            .filter(|_| self.backend == super::Backend::Postgres)
        else {
            return;
        };
        loop {
            match sqlx::postgres::PgListener::connect(url).await {
                Ok(mut listener) => {
                    if let Err(e) = listener.listen(CRL_CHANNEL).await {
                        tracing::warn!(error = %e, "cannot LISTEN for new CRLs; retrying");
                    } else {
                        if let Ok(Some(latest)) = self.latest_crl().await {
                            announce(latest.number);
                        }
                        loop {
                            match listener.recv().await {
                                Ok(n) => {
                                    if let Ok(number) = n.payload().parse::<i64>() {
                                        announce(number);
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "lost the CRL announcements; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot connect for CRL announcements; retrying")
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// The serials (hex) a CRL signed at `now` would put on hold.
    pub(crate) async fn held_serials(&self, now: i64) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(LISTED)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, _, hold)| *hold != 0)
            .map(|(serial, _, _)| serial)
            .collect())
    }

    /// The latest stored CRL, if one was ever signed.
    pub async fn latest_crl(&self) -> Result<Option<StoredCrl>, StoreError> {
        let row = sqlx::query("SELECT crl_number, this_update, der FROM crl_state WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let der: Option<Vec<u8>> = col(&row, "der")?;
        let this_update: Option<i64> = col(&row, "this_update")?;
        Ok(match (der, this_update) {
            (Some(der), Some(this_update)) => Some(StoredCrl {
                number: col(&row, "crl_number")?,
                this_update,
                der,
            }),
            _ => None,
        })
    }

    /// Signs and stores a new CRL under the next CRL number. `sign` gets the number and the
    /// revoked, unexpired certificates; it runs inside the transaction that takes the number,
    /// so numbers increase in the order CRLs are stored, across replicas.
    pub(crate) async fn publish_crl<F, E>(
        &self,
        now: i64,
        sign: F,
    ) -> Result<Result<StoredCrl, E>, StoreError>
    where
        F: FnOnce(u64, &[RevokedEntry]) -> Result<Vec<u8>, E>,
    {
        let mut tx = self.begin_write().await?;
        let number: i64 = sqlx::query_scalar(
            "UPDATE crl_state SET crl_number = crl_number + 1 WHERE id = 1 RETURNING crl_number",
        )
        .fetch_one(&mut *tx)
        .await?;
        let rows: Vec<(String, i64, i64)> =
            sqlx::query_as(LISTED).bind(now).fetch_all(&mut *tx).await?;
        let mut revoked = Vec::with_capacity(rows.len());
        for (serial, at, hold) in rows {
            revoked.push(RevokedEntry {
                serial: Serial::from_hex(&serial)
                    .ok_or_else(|| StoreError::Corrupt(format!("serial `{serial}`")))?,
                revoked_at: OffsetDateTime::from_unix_timestamp(at)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                hold: hold != 0,
            });
        }
        let der = match sign(u64::try_from(number).unwrap_or(0), &revoked) {
            Ok(der) => der,
            Err(e) => {
                tx.rollback().await?;
                return Ok(Err(e));
            }
        };
        sqlx::query("UPDATE crl_state SET this_update = $1, der = $2 WHERE id = 1")
            .bind(now)
            .bind(der.clone())
            .execute(&mut *tx)
            .await?;
        if self.backend == super::Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CRL_CHANNEL)
                .bind(number.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Ok(StoredCrl {
            number,
            this_update: now,
            der,
        }))
    }
}
