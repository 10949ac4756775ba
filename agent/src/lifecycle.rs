//! The agent's life: enroll once, then keep the identity alive: renew at about half the
//! certificate's lifetime, attest every `--attest-every` with the TPM, and ride out server
//! outages for as long as the certificate is valid.
//!
//! The server is reached through the narrow [`Api`] trait (HTTPS in [`crate::client`]), so
//! the schedule and the reactions to each answer are tested against a fake server too.

use crate::client::{ApiError, HttpApi};
use crate::credentials::CredentialError;
use crate::schedule::{renewal_time, until, Backoff, Clock, Random, RetryPolicy};
use crate::state::{rfc3339, Enrolled, LastAttestation, StateDir, StateError};
use crate::token::{JoinToken, TokenError};
use crate::tpm_helper::{HelperError, Request, TpmHelper};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use vouch_proto::attest::{AttestChallenge, AttestOutcome, QuoteSubmission};
use vouch_proto::enroll::{
    EnrollRequest, EnrollResponse, RenewRequest, TpmChallenge, TpmEnrollStart,
};
use vouch_proto::ProblemCode;

/// Longest single sleep: the loop wakes at least this often to re-read the wall clock (a
/// suspended device or a clock step must not make it miss a renewal).
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Attempts at a step in `--once` mode before giving up.
const ONCE_ATTEMPTS: u32 = 3;

/// The device's client certificate (with its chain) and key, for mutual TLS.
#[derive(Clone)]
pub struct ClientIdentity {
    /// Certificate then issuing CA, PEM.
    pub cert_pem: String,
    /// PKCS#8 key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity { .. }")
    }
}

impl From<&Enrolled> for ClientIdentity {
    fn from(e: &Enrolled) -> Self {
        Self {
            cert_pem: e.cert_pem.clone(),
            key_pem: e.key_pem.clone(),
        }
    }
}

/// The calls the agent makes to the server (`docs/agent-protocol.md`).
pub trait Api: Send + Sync {
    /// Fetches the root CA without verifying the server, accepts it only if its SHA-256 is
    /// `ca_sha256`, and from then on trusts it alone. Returns the root, PEM.
    fn pin_root(
        &self,
        ca_sha256: &[u8; 32],
    ) -> impl Future<Output = Result<String, ApiError>> + Send;
    /// Trusts `root_pem` alone (the root pinned at enrollment).
    fn trust_root(&self, root_pem: &str) -> Result<(), ApiError>;
    /// `POST /v1/enroll`.
    fn enroll(
        &self,
        req: &EnrollRequest,
    ) -> impl Future<Output = Result<EnrollResponse, ApiError>> + Send;
    /// `POST /v1/enroll/tpm`.
    fn enroll_tpm(
        &self,
        req: &TpmEnrollStart,
    ) -> impl Future<Output = Result<TpmChallenge, ApiError>> + Send;
    /// `POST /v1/renew` (mTLS).
    fn renew(
        &self,
        identity: &ClientIdentity,
        req: &RenewRequest,
    ) -> impl Future<Output = Result<EnrollResponse, ApiError>> + Send;
    /// `POST /v1/attest/challenge` (mTLS).
    fn attest_challenge(
        &self,
        identity: &ClientIdentity,
    ) -> impl Future<Output = Result<AttestChallenge, ApiError>> + Send;
    /// `POST /v1/attest/quote` (mTLS).
    fn attest_quote(
        &self,
        identity: &ClientIdentity,
        req: &QuoteSubmission,
    ) -> impl Future<Output = Result<AttestOutcome, ApiError>> + Send;
}

/// What the agent is told to do.
#[derive(Clone)]
pub struct Settings {
    /// The server's base URL.
    pub server: String,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The join token; needed only until the device has enrolled.
    pub join_token: Option<String>,
    /// The TPM's TCTI; with it the device enrolls with its TPM and attests.
    pub tpm: Option<String>,
    /// The TPM helper (`vouch-agent-tpm`), which runs every TPM operation.
    pub tpm_helper: PathBuf,
    /// Time between attestations.
    pub attest_every: Duration,
    /// The firmware's event log, sent with every quote.
    pub event_log: Option<PathBuf>,
    /// Delivery endpoints published with the key-agreement certificate.
    pub advertise: Vec<String>,
    /// How failed calls are retried.
    pub retry: RetryPolicy,
    /// Do one pass (enroll if needed, attest once, renew if due) and return.
    pub once: bool,
    /// The sidecar's messaging settings.
    pub sidecar: crate::messaging::sidecar::SidecarSettings,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("server", &self.server)
            .field("state_dir", &self.state_dir)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .field("tpm", &self.tpm)
            .field("tpm_helper", &self.tpm_helper)
            .field("attest_every", &self.attest_every)
            .field("event_log", &self.event_log)
            .field("advertise", &self.advertise)
            .field("retry", &self.retry)
            .field("once", &self.once)
            .field("sidecar", &self.sidecar)
            .finish()
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Not enrolled, and no token to enroll with.
    #[error(
        "the device is not enrolled and no join token was given (--join-token or VOUCH_JOIN_TOKEN)"
    )]
    NoJoinToken,
    /// The token cannot be read.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The server refused to enroll the device.
    #[error("enrollment refused: {0}")]
    EnrollmentRefused(ApiError),
    /// The server refuses to renew this device for good (revoked or unknown).
    #[error("renewal refused: {0}")]
    RenewalRefused(ApiError),
    /// A call failed in a way retrying does not fix, or retries ran out (`--once`).
    #[error("{what}: {source}")]
    Api {
        /// The step.
        what: &'static str,
        /// The failure.
        source: ApiError,
    },
    /// The server refused the quote (`--once`; the result is recorded).
    #[error("attestation failed: {0}")]
    AttestationFailed(String),
    /// The state directory cannot be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// Keys or certificates.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The TPM failed, or its helper could not be run.
    #[error(transparent)]
    Tpm(#[from] HelperError),
    /// The certificate expired: mutual TLS can no longer prove who the device is.
    #[error("the device certificate expired at {0}; enroll again with a new join token and an empty state directory")]
    Expired(String),
    /// The server asks for something the agent does not do.
    #[error("{0}")]
    Unsupported(String),
    /// A TPM task died.
    #[error("TPM task failed: {0}")]
    Task(String),
    /// The event log cannot be read.
    #[error("event log `{path}`: {reason}")]
    EventLog {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl AgentError {
    /// Wraps a call failure with the step it failed in.
    pub(crate) fn api(what: &'static str) -> impl FnOnce(ApiError) -> Self {
        move |source| Self::Api { what, source }
    }

    /// Whether retrying may help: the server was not reached or failed on its side.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Api { source, .. } if source.is_transient())
    }

    /// The server's problem code, if the server answered with one.
    pub fn code(&self) -> Option<ProblemCode> {
        match self {
            Self::Api { source, .. }
            | Self::EnrollmentRefused(source)
            | Self::RenewalRefused(source) => source.code(),
            _ => None,
        }
    }
}

impl Settings {
    /// Runs one TPM operation on the TPM at `tcti`, in a helper process (see
    /// [`crate::tpm_helper`]).
    pub async fn tpm_call(
        &self,
        tcti: &str,
        request: Request,
    ) -> Result<crate::tpm_helper::Reply, AgentError> {
        let helper = TpmHelper {
            path: self.tpm_helper.clone(),
            tcti: tcti.to_owned(),
        };
        Ok(helper.call(request).await?)
    }
}

/// Starts the agent for real, over HTTPS: see [`Agent::start`]; beside it (unless
/// `--once`) the sidecar ([`crate::messaging::sidecar`]), once the device has an identity.
pub async fn run(settings: Settings) -> Result<(), AgentError> {
    let state = StateDir::open(&settings.state_dir)?;
    let api = HttpApi::new(&settings.server);
    let clock: Arc<dyn Clock> = Arc::new(crate::schedule::SystemClock);
    let rng: Arc<dyn Random> = Arc::new(crate::schedule::SystemRandom::default());
    let agent = Agent::new(api, state.clone(), settings.clone(), clock, rng);
    if settings.once {
        return agent.start().await;
    }
    let identities = agent.identities();
    tokio::select! {
        r = agent.start() => r,
        r = crate::messaging::sidecar::run(&settings, state, identities) => r,
    }
}

/// Retries transient failures with backoff: forever, or a few times in `--once` mode.
pub(crate) struct Retry {
    policy: RetryPolicy,
    attempts: Option<u32>,
}

impl Retry {
    pub(crate) fn new(settings: &Settings) -> Self {
        Self {
            policy: settings.retry,
            attempts: settings.once.then_some(ONCE_ATTEMPTS),
        }
    }

    pub(crate) async fn run<T, F, Fut>(
        &self,
        rng: &dyn Random,
        what: &str,
        mut f: F,
    ) -> Result<T, AgentError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AgentError>>,
    {
        let mut backoff = Backoff::new(self.policy);
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e)
                    if e.is_transient()
                        && self.attempts.is_none_or(|n| backoff.attempts() + 1 < n) =>
                {
                    let delay = backoff.next_delay(rng);
                    tracing::warn!(error = %e, retry_in = ?delay, "{what} failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The agent: the server, the state directory, the settings, a clock and randomness.
pub struct Agent<A> {
    pub(crate) api: A,
    pub(crate) state: StateDir,
    pub(crate) settings: Settings,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rng: Arc<dyn Random>,
    /// The identity in use, published at start and at every renewal (for the sidecar).
    published: tokio::sync::watch::Sender<Option<Enrolled>>,
}

impl<A: Api> Agent<A> {
    /// An agent talking to `api` and keeping its state in `state`.
    pub fn new(
        api: A,
        state: StateDir,
        settings: Settings,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Random>,
    ) -> Self {
        Self {
            api,
            state,
            settings,
            clock,
            rng,
            published: tokio::sync::watch::Sender::new(None),
        }
    }

    /// The identity in use: none before enrollment, then the current one after each
    /// renewal.
    pub fn identities(&self) -> tokio::sync::watch::Receiver<Option<Enrolled>> {
        self.published.subscribe()
    }

    /// Loads the state directory, or pins the CA from the join token and enrolls; then
    /// keeps the identity alive. Returns only in `--once` mode or on a fatal error.
    pub async fn start(&self) -> Result<(), AgentError> {
        if let Some(enrolled) = self.state.load()? {
            tracing::info!(device_id = %enrolled.identity.device_id,
                not_after = %enrolled.identity.not_after,
                "loaded the device identity; not enrolling again");
            self.api
                .trust_root(&enrolled.ca_pem)
                .map_err(AgentError::api("pinned root"))?;
            return self.maintain(enrolled).await;
        }
        let token = self
            .settings
            .join_token
            .clone()
            .ok_or(AgentError::NoJoinToken)?;
        let claims = JoinToken::read_unverified(&token)?;
        tracing::info!(server = %self.settings.server, zone = claims.zone.as_deref().unwrap_or("?"),
            ca_sha256 = %hex::encode(claims.ca_sha256), "not enrolled: pinning the CA");
        let ca_pem = Retry::new(&self.settings)
            .run(self.rng.as_ref(), "fetching the trust bundle", || async {
                self.api
                    .pin_root(&claims.ca_sha256)
                    .await
                    .map_err(AgentError::api("fetching the trust bundle"))
            })
            .await?;
        let enrolled = self.enroll(&token, &ca_pem).await?;
        self.maintain(enrolled).await
    }

    /// Keeps `enrolled` alive. Returns in `--once` mode after one pass, or on a fatal error.
    pub async fn maintain(&self, enrolled: Enrolled) -> Result<(), AgentError> {
        self.published.send_replace(Some(enrolled.clone()));
        if self.settings.once {
            self.once(enrolled).await
        } else {
            self.forever(enrolled).await
        }
    }

    /// One pass: attest (with a TPM), renew if due; a few retries each.
    async fn once(&self, mut enrolled: Enrolled) -> Result<(), AgentError> {
        let retry = Retry::new(&self.settings);
        let rng = self.rng.as_ref();
        if self.attesting(&enrolled) {
            let attested = retry
                .run(rng, "attestation", || self.attest(&enrolled))
                .await?;
            self.record(&mut enrolled, attested.record)?;
            if let Some(reason) = attested.failure {
                return Err(AgentError::AttestationFailed(reason));
            }
        }
        if self.renewal_of(&enrolled) <= self.clock.now() {
            retry.run(rng, "renewal", || self.renew(&enrolled)).await?;
        }
        Ok(())
    }

    /// The loop: renewals and attestations on their schedules, failures retried with
    /// backoff, until the certificate expires or the server refuses the device for good.
    async fn forever(&self, mut enrolled: Enrolled) -> Result<(), AgentError> {
        let attesting = self.attesting(&enrolled);
        let mut renew_at = self.renewal_of(&enrolled);
        let mut attest_at = attesting.then(|| self.first_attestation(&enrolled));
        let mut renew_backoff = Backoff::new(self.settings.retry);
        let mut attest_backoff = Backoff::new(self.settings.retry);
        loop {
            if self.clock.now() >= enrolled.certificate.not_after {
                return Err(AgentError::Expired(enrolled.identity.not_after.clone()));
            }
            if attest_at.is_some_and(|at| at <= self.clock.now()) {
                attest_at = match self.attest(&enrolled).await {
                    Ok(attested) => {
                        attest_backoff.reset();
                        self.record(&mut enrolled, attested.record)?;
                        attested.next
                    }
                    Err(e) => {
                        let delay = attest_backoff.next_delay(self.rng.as_ref());
                        tracing::warn!(error = %e, retry_in = ?delay, "attestation failed; retrying");
                        Some(self.clock.now() + delay)
                    }
                };
            }
            if renew_at <= self.clock.now() {
                match self.renew(&enrolled).await {
                    Ok(renewed) => {
                        enrolled = renewed;
                        self.published.send_replace(Some(enrolled.clone()));
                        renew_backoff.reset();
                        renew_at = self.renewal_of(&enrolled);
                    }
                    Err(e @ AgentError::RenewalRefused(_)) => return Err(e),
                    Err(e) => {
                        let delay = renew_backoff.next_delay(self.rng.as_ref());
                        if attesting && e.code() == Some(ProblemCode::DeviceStale) {
                            // A stale device becomes active again by attesting.
                            attest_at = Some(self.clock.now());
                        }
                        tracing::warn!(error = %e, retry_in = ?delay, not_after = %enrolled.identity.not_after,
                            "renewal failed; keeping the current certificate and retrying");
                        renew_at = self.clock.now() + delay;
                    }
                }
            }
            let mut next = renew_at.min(enrolled.certificate.not_after);
            if let Some(at) = attest_at {
                next = next.min(at);
            }
            tokio::time::sleep(until(self.clock.now(), next).min(MAX_SLEEP)).await;
        }
    }

    /// Records an attestation result in `identity.json`.
    fn record(&self, enrolled: &mut Enrolled, record: LastAttestation) -> Result<(), AgentError> {
        enrolled.identity.last_attestation = Some(record);
        Ok(self.state.save_identity(&enrolled.identity)?)
    }

    /// Whether this device attests: it enrolled with a TPM and has one now.
    fn attesting(&self, enrolled: &Enrolled) -> bool {
        match (&self.settings.tpm, enrolled.identity.tpm) {
            (Some(_), true) => true,
            (None, true) => {
                tracing::warn!(
                    "the device enrolled with a TPM but no --tpm was given: not attesting"
                );
                false
            }
            (Some(_), false) => {
                tracing::warn!(
                    "the device enrolled without a TPM: --tpm is ignored, not attesting"
                );
                false
            }
            (None, false) => false,
        }
    }

    fn renewal_of(&self, enrolled: &Enrolled) -> OffsetDateTime {
        let obtained = crate::state::parse_rfc3339(&enrolled.identity.obtained_at)
            .unwrap_or(enrolled.certificate.not_before);
        let at = renewal_time(
            enrolled.certificate.not_before,
            enrolled.certificate.not_after,
            obtained,
            self.rng.as_ref(),
        );
        tracing::info!(renew_at = %rfc3339(at), not_after = %enrolled.identity.not_after, "renewal scheduled");
        at
    }

    fn first_attestation(&self, enrolled: &Enrolled) -> OffsetDateTime {
        let now = self.clock.now();
        enrolled
            .identity
            .last_attestation
            .as_ref()
            .and_then(|a| crate::state::parse_rfc3339(&a.at))
            .map_or(now, |last| {
                (last + self.settings.attest_every).min(now + self.settings.attest_every)
            })
    }
}
