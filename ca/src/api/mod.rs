//! The provisioning API: routes, shared state and the OpenAPI document.

mod attest;
pub mod auth;
mod devices;
pub mod doc;
mod enroll;
mod ops;
pub mod policy;
pub mod problem;
pub mod request_id;
mod tpm;

use crate::authz::signed::BundleSigning;
use crate::authz::PolicyService;
use crate::clock::SharedClock;
use crate::ids::TrustDomain;
use crate::metrics::Metrics;
use crate::pki::authority::Authority;
use crate::store::Registry;
use crate::tokens::TokenKey;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use ring::rand::SystemRandom;
use std::sync::Arc;

pub use crate::flows::attest::{TpmIdentities, TpmIdentity, IDENTITY_TTL_SECS, NONCE_TTL_SECS};

/// Largest request body accepted, in bytes.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// Settings the handlers need.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Lifetime of device certificates, seconds.
    pub cert_lifetime_secs: i64,
    /// Bootstrap token lifetime when the request gives none, seconds.
    pub default_token_ttl_secs: i64,
    /// Longest bootstrap token lifetime accepted, seconds.
    pub max_token_ttl_secs: i64,
    /// Clock skew tolerated on every expiry check, seconds.
    pub clock_skew_secs: i64,
    /// URL of the CRL, put into device certificates. `app::start` sets it from the public URL
    /// or the address it bound.
    pub crl_url: String,
    /// Validity of each CRL (nextUpdate - thisUpdate), seconds.
    pub crl_validity_secs: i64,
    /// How often every device attests, seconds (30 minutes).
    pub attestation_period_secs: i64,
    /// How long past the period a device may stay silent before it is stale, seconds.
    pub attestation_grace_secs: i64,
    /// TPM manufacturer CA certificates (DER; roots and intermediates) that EK certificates
    /// must chain to. With neither these nor an allowlist, TPM enrollment is refused (unless
    /// `tpm_trust_on_first_use`).
    pub tpm_roots: Vec<Vec<u8>>,
    /// EKs (SHA-256 of the public area, lowercase hex) enrolled without a certificate.
    pub tpm_ek_allowlist: std::collections::BTreeSet<String>,
    /// Lab only: with neither roots nor an allowlist, take any EK on first use. Off by
    /// default: then TPM enrollment is refused until roots or an allowlist are configured.
    pub tpm_trust_on_first_use: bool,
    /// Decisions (`POST /v1/authorize`) each caller may ask for per second, in bursts of
    /// `decision_burst` (0: no limit). Every decision is an append-only log row: the limit
    /// keeps one token from filling the log.
    pub decisions_per_second: u32,
    /// Largest burst of decisions per caller.
    pub decision_burst: u32,
    /// Most client connections served at once. Beyond it the server stops accepting
    /// (connections wait in the kernel's backlog) until one closes: back-pressure, not
    /// file-descriptor exhaustion.
    pub max_client_connections: usize,
    /// How long a client may take to finish the TLS handshake.
    pub handshake_timeout: std::time::Duration,
    /// How long a client connection may stay open with no request in flight.
    pub idle_timeout: std::time::Duration,
    /// How long a request body may take to arrive in full.
    pub request_body_timeout: std::time::Duration,
    /// Largest decision-log page (`GET /v1/policy/decisions`), in bytes of its records; a
    /// page ends early (with a cursor) rather than grow past it.
    pub max_decision_page_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cert_lifetime_secs: 24 * 3600,
            default_token_ttl_secs: 3600,
            max_token_ttl_secs: 30 * 24 * 3600,
            clock_skew_secs: 60,
            crl_url: "https://localhost:8443/v1/crl".into(),
            crl_validity_secs: 24 * 3600,
            attestation_period_secs: 30 * 60,
            attestation_grace_secs: 5 * 60,
            tpm_roots: Vec::new(),
            tpm_ek_allowlist: Default::default(),
            tpm_trust_on_first_use: false,
            decisions_per_second: 100,
            decision_burst: 200,
            max_decision_page_bytes: 4 * 1024 * 1024,
            max_client_connections: 4096,
            handshake_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(60),
            request_body_timeout: std::time::Duration::from_secs(10),
        }
    }
}

impl Settings {
    /// What the server trusts TPMs by, for [`vouch_attestor::endorsement::check_endorsement`].
    pub(crate) fn ek_trust(&self) -> vouch_attestor::endorsement::EkTrust {
        vouch_attestor::endorsement::EkTrust {
            roots: self.tpm_roots.clone(),
            allowlist: self.tpm_ek_allowlist.clone(),
            trust_on_first_use: self.tpm_trust_on_first_use,
        }
    }
}

/// Everything a handler may use; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

/// The contents of [`AppState`].
pub struct AppInner {
    /// The issuing CA.
    pub ca: Authority,
    /// The SPIFFE trust domain.
    pub trust_domain: TrustDomain,
    /// The registry.
    pub registry: Registry,
    /// The clock.
    pub clock: SharedClock,
    /// Randomness for ids and serials.
    pub rng: SystemRandom,
    /// Key of bootstrap tokens.
    pub bootstrap_key: TokenKey,
    /// Key of operator tokens.
    pub operator_key: TokenKey,
    /// Key of attestation nonces.
    pub nonce_key: crate::nonce::NonceKey,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Metrics,
    /// The policy sets (active and shadow).
    pub policy: PolicyService,
    /// What never changes of an attesting certificate, kept in memory.
    pub tpm_identities: TpmIdentities,
    /// Signs policy bundles for agents.
    pub bundle_signing: BundleSigning,
    /// Per-caller limit of decisions.
    pub decision_rate: crate::flows::rate::CallerBuckets,
    /// The newest CRL number known here, for `GET /v1/crl` long-polls.
    pub crl_feed: crate::flows::revoke::CrlFeed,
}

impl AppState {
    /// Wraps the parts.
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// The API's routes.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/bootstrap-tokens", post(enroll::create_bootstrap_token))
        .route(
            "/v1/operator-tokens/revoke",
            post(enroll::revoke_operator_token),
        )
        .route("/v1/enroll", post(enroll::enroll))
        .route("/v1/enroll/tpm", post(tpm::enroll_tpm_start))
        .route("/v1/attest/challenge", post(attest::challenge))
        .route(
            "/v1/attest/quote",
            post(attest::quote).layer(DefaultBodyLimit::max(attest::MAX_QUOTE_BODY_BYTES)),
        )
        .route("/v1/renew", post(enroll::renew))
        .route("/v1/devices", get(devices::list_devices))
        .route("/v1/devices/{id}", get(devices::get_device))
        .route("/v1/devices/{id}/revoke", post(devices::revoke_device))
        .route("/v1/devices/{id}/release", post(devices::release))
        .route("/v1/devices/{id}/attestations", get(devices::history))
        .route("/v1/peers/{id}", get(devices::peer))
        .route("/v1/authorize", post(policy::authorize))
        .route("/v1/policy/status", get(policy::status))
        .route("/v1/policy/reload", post(policy::reload))
        .route("/v1/policy/bundle", get(policy::bundle))
        .route(
            "/v1/policy/decisions",
            get(policy::decisions)
                .post(policy::upload_decisions)
                .layer(DefaultBodyLimit::max(
                    crate::flows::agent_decisions::MAX_UPLOAD_BODY_BYTES,
                )),
        )
        .route("/v1/crl", get(ops::crl))
        .route("/v1/trust-bundle", get(ops::trust_bundle))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(request_id::tag))
        .with_state(state)
}
