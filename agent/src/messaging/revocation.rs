//! The CRL as a receiver uses it: signed by this fleet's issuing CA (checked), not past its
//! nextUpdate (a stale CRL refuses everything: fail closed), and the set of revoked serials.
//! A key-agreement certificate is on it whenever its device certificate is.

use std::collections::HashSet;
use x509_parser::prelude::{CertificateRevocationList, FromDer, X509Certificate};

/// Largest CRL considered, bytes.
pub const MAX_CRL_BYTES: usize = 4 * 1024 * 1024;

/// Why a CRL is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    /// It does not parse, or is too large.
    #[error("the CRL does not parse: {0}")]
    Malformed(String),
    /// It is not signed by this fleet's issuing CA.
    #[error("the CRL is not signed by this fleet's issuing CA")]
    Untrusted,
    /// Past its nextUpdate: whom it does not list may have been revoked since.
    #[error("the CRL is out of date (past its nextUpdate)")]
    Stale,
}

/// A verified CRL.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    number: u64,
    next_update: i64,
    revoked: HashSet<Vec<u8>>,
}

impl RevocationList {
    /// Verifies `der` against the issuing CA certificate `issuing_ca` (DER).
    pub fn from_der(der: &[u8], issuing_ca: &[u8]) -> Result<Self, CrlError> {
        if der.len() > MAX_CRL_BYTES {
            return Err(CrlError::Malformed("too large".into()));
        }
        let (rest, crl) = CertificateRevocationList::from_der(der)
            .map_err(|e| CrlError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CrlError::Malformed("trailing bytes".into()));
        }
        let (_, ca) = X509Certificate::from_der(issuing_ca)
            .map_err(|e| CrlError::Malformed(e.to_string()))?;
        if crl.issuer().as_raw() != ca.subject().as_raw()
            || crl.verify_signature(ca.public_key()).is_err()
        {
            return Err(CrlError::Untrusted);
        }
        let next_update = crl
            .next_update()
            .map(|t| t.timestamp())
            .ok_or_else(|| CrlError::Malformed("no nextUpdate".into()))?;
        let number = crl
            .crl_number()
            .and_then(|n| u64::try_from(n.clone()).ok())
            .unwrap_or(0);
        Ok(Self {
            number,
            next_update,
            revoked: crl
                .iter_revoked_certificates()
                .map(|r| r.raw_serial().to_vec())
                .collect(),
        })
    }

    /// Its nextUpdate, Unix seconds.
    pub fn next_update(&self) -> i64 {
        self.next_update
    }

    /// The CRL number.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Whether `serial` is listed (revoked or on hold), whatever the list's age.
    pub fn lists(&self, serial: &[u8]) -> bool {
        self.revoked.contains(serial)
    }

    /// Whether the certificate with `serial` may be trusted at `now`: not listed, and the
    /// list itself current.
    pub fn check(&self, serial: &[u8], now: i64) -> Result<bool, CrlError> {
        if now >= self.next_update {
            return Err(CrlError::Stale);
        }
        Ok(!self.revoked.contains(serial))
    }
}
