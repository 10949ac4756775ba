//! The certificate authority core: plain functions over bytes and values, no I/O.
//!
//! - [`authority`]: the root and issuing CA (create, load, import).
//! - [`profile`]: what a device certificate contains.
//! - [`csr`]: strict PKCS#10 parsing and checks.
//! - [`crl`]: certificate revocation lists.
//! - [`extensions`]: the X.509 extensions written in exact DER where rcgen's are not.

pub mod authority;
pub mod crl;
pub mod csr;
pub mod extensions;
pub mod profile;

/// Errors from the certificate authority core.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not build or sign a certificate, CSR or CRL.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A CA certificate or key given to load or import is unusable.
    #[error("invalid CA material: {0}")]
    InvalidCa(String),
    /// The system random number generator failed.
    #[error("random number generator failed")]
    Random,
}

/// SHA-256 fingerprint of a DER certificate, lowercase hex (what a device pins).
pub(crate) fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}
