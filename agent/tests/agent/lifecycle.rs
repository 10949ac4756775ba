//! The agent's lifecycle against the fake server (and a real swtpm for the TPM flow):
//! enrollment, restarts without the token, renewal at half-life, outages, refusals,
//! attestation results recorded.

use crate::fake::{join_token, Fake, Server};
use crate::support::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use vouch_agent::lifecycle::{Agent, AgentError, Settings};
use vouch_agent::schedule::{Clock, RetryPolicy, SystemRandom};
use vouch_agent::state::{StateDir, AK, IDENTITY};
use vouch_proto::ProblemCode;

fn settings(server: &Server, dir: &Path, tpm: Option<String>, once: bool) -> Settings {
    Settings {
        server: "https://fake.invalid".into(),
        state_dir: dir.to_owned(),
        join_token: Some(server.token.clone()),
        tpm,
        tpm_helper: env!("CARGO_BIN_EXE_vouch-agent-tpm").into(),
        attest_every: Duration::from_secs(1),
        event_log: None,
        advertise: Vec::new(),
        retry: RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(300),
        },
        once,
        sidecar: Default::default(),
    }
}

fn agent(server: &Arc<Server>, settings: Settings) -> Agent<Fake> {
    let state = StateDir::open(&settings.state_dir).unwrap();
    Agent::new(
        Fake(server.clone()),
        state,
        settings,
        Arc::new(server.clock),
        Arc::new(SystemRandom::default()),
    )
}

async fn once(server: &Arc<Server>, dir: &Path, tpm: Option<String>) -> Result<(), AgentError> {
    agent(server, settings(server, dir, tpm, true))
        .start()
        .await
}

fn identity(dir: &Path) -> vouch_agent::state::Identity {
    StateDir::existing(dir)
        .unwrap()
        .identity()
        .unwrap()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn plain_enrollment_then_restarts_without_the_token() {
    let server = Server::new(time::Duration::hours(1));
    let dir = tempfile::tempdir().unwrap();
    once(&server, dir.path(), None).await.unwrap();
    let id = identity(dir.path());
    assert!(!id.tpm);
    assert!(id.last_attestation.is_none());
    assert!(!dir.path().join(AK).exists());
    // Later starts load the state: no token needed, no second enrollment, no renewal yet.
    let mut s = settings(&server, dir.path(), None, true);
    s.join_token = None;
    agent(&server, s).start().await.unwrap();
    assert_eq!(server.inner().enrolls, 1);
    assert_eq!(server.inner().renewals, 0);
    assert_eq!(identity(dir.path()), id);
}

#[tokio::test(start_paused = true)]
async fn tpm_enrollment_activates_the_credential_and_attests() {
    let tpm = SoftwareTpm::start();
    let server = Server::new(time::Duration::hours(1));
    let dir = tempfile::tempdir().unwrap();
    once(&server, dir.path(), Some(tpm.tcti())).await.unwrap();
    let id = identity(dir.path());
    assert!(id.tpm);
    let attested = id.last_attestation.unwrap();
    assert_eq!(attested.result, "pass");
    assert_eq!(attested.reference_set.as_deref(), Some("golden"));
    // The AK the server bound is the one saved.
    let blobs = StateDir::existing(dir.path())
        .unwrap()
        .ak()
        .unwrap()
        .unwrap();
    let (_, ak) = server.inner().keys[&id.device_id].clone();
    assert_eq!(ak.raw, blobs.public);
    // A restart reloads the AK under the recreated EK and attests again.
    once(&server, dir.path(), Some(tpm.tcti())).await.unwrap();
    assert_eq!(server.inner().quotes, 2);
    assert_eq!(server.inner().enrolls, 1);
    assert_eq!(open(&tpm).loaded_handles().unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_attestation_is_recorded_and_quarantine_is_not_fatal() {
    let tpm = SoftwareTpm::start();
    let server = Server::new(time::Duration::seconds(8));
    let dir = tempfile::tempdir().unwrap();
    once(&server, dir.path(), Some(tpm.tcti())).await.unwrap();
    // The boot changes: the next quote no longer matches the reference.
    open(&tpm).pcr_extend(3, &sha256(b"rootkit")).unwrap();
    let err = once(&server, dir.path(), Some(tpm.tcti()))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::AttestationFailed(_)), "{err}");
    let failed = identity(dir.path()).last_attestation.unwrap();
    assert_eq!(failed.result, "fail");
    assert!(failed
        .reason
        .unwrap()
        .contains(ProblemCode::AttestationFailed.as_str()));

    // Running on: renewals are refused (quarantined) and retried, attestations keep failing,
    // and the agent keeps its identity.
    let task = tokio::spawn({
        let a = agent(
            &server,
            settings(&server, dir.path(), Some(tpm.tcti()), false),
        );
        async move { a.start().await }
    });
    server
        .wait_until("two more failed quotes and a refused renewal", |inner| {
            inner.quotes >= 4 && inner.refused >= 1
        })
        .await;
    assert!(!task.is_finished());
    assert_eq!(server.inner().renewals, 0);
    // The reference changes to the new boot (an operator accepted it): the next quote
    // passes, quarantine ends, and the renewal goes through.
    server.inner().reference = None;
    server
        .wait_until("a renewal", |inner| inner.renewals >= 1)
        .await;
    assert_eq!(
        identity(dir.path()).last_attestation.unwrap().result,
        "pass"
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_life_and_rides_out_an_outage() {
    let server = Server::new(time::Duration::seconds(6));
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let task = tokio::spawn({
        let a = agent(&server, settings(&server, dir.path(), None, false));
        async move { a.start().await }
    });
    server
        .wait_until("a renewal", |inner| inner.renewals >= 1)
        .await;
    // Half of what was left of the certificate when it arrived (5 to 6 s: notAfter has
    // whole seconds), ±10 % jitter. Time is tokio's, paused: no scheduling slack to allow.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2250) && took <= Duration::from_millis(3300),
        "{took:?}"
    );
    let serial = identity(dir.path()).serial;
    assert_eq!(
        server.inner().serials.get(&serial).map(String::as_str),
        Some(identity(dir.path()).device_id.as_str())
    );

    // An outage shorter than the remaining validity: the agent retries and keeps going.
    server.inner().down = true;
    server
        .wait_until("renewal attempts during the outage", |inner| {
            inner.unreachable >= 2
        })
        .await;
    assert!(!task.is_finished());
    assert_eq!(
        identity(dir.path()).serial,
        serial,
        "no renewal during the outage"
    );
    server.inner().down = false;
    server
        .wait_until("a renewal after the outage", |inner| inner.renewals >= 2)
        .await;
    assert_ne!(identity(dir.path()).serial, serial);
    assert_eq!(server.inner().enrolls, 1);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn an_outage_past_the_certificate_expiry_stops_the_agent() {
    let server = Server::new(time::Duration::seconds(2));
    let dir = tempfile::tempdir().unwrap();
    once(&server, dir.path(), None).await.unwrap();
    server.inner().down = true;
    let a = agent(&server, settings(&server, dir.path(), None, false));
    let err = tokio::time::timeout(Duration::from_secs(5), a.start())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, AgentError::Expired(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_revoked_device_stops_and_a_stale_one_keeps_trying() {
    let server = Server::new(time::Duration::seconds(5));
    let dir = tempfile::tempdir().unwrap();
    once(&server, dir.path(), None).await.unwrap();
    server.inner().refuse_renewal = Some(ProblemCode::DeviceStale);
    let task = tokio::spawn({
        let a = agent(&server, settings(&server, dir.path(), None, false));
        async move { a.start().await }
    });
    server
        .wait_until("refused renewals", |inner| inner.refused >= 2)
        .await;
    assert!(!task.is_finished(), "a stale device is not a fatal error");
    server.inner().refuse_renewal = Some(ProblemCode::DeviceRevoked);
    let err = tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, AgentError::RenewalRefused(_)), "{err}");
    assert_eq!(err.code(), Some(ProblemCode::DeviceRevoked));
}

#[tokio::test(start_paused = true)]
async fn first_enrollment_retries_transient_failures_a_few_times_with_once() {
    let server = Server::new(time::Duration::hours(1));
    let dir = tempfile::tempdir().unwrap();
    server.inner().fail_next = 2;
    once(&server, dir.path(), None).await.unwrap();
    assert_eq!(server.inner().enrolls, 1);

    let server = Server::new(time::Duration::hours(1));
    let dir = tempfile::tempdir().unwrap();
    server.inner().fail_next = 10;
    let err = once(&server, dir.path(), None).await.unwrap_err();
    assert!(err.to_string().contains("cannot reach the server"), "{err}");
    assert!(!dir.path().join(IDENTITY).exists());
}

#[tokio::test(start_paused = true)]
async fn refusals_and_a_wrong_pin_are_final_and_save_nothing() {
    let server = Server::new(time::Duration::hours(1));
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&server, dir.path(), None, false);
    s.join_token = Some(join_token(&[7u8; 32]));
    let err = agent(&server, s).start().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("is not the one the join token pins"),
        "{err}"
    );

    server.inner().token_used = true;
    let err = agent(&server, settings(&server, dir.path(), None, false))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::EnrollmentRefused(_)), "{err}");
    assert_eq!(err.code(), Some(ProblemCode::TokenUsed));

    let mut s = settings(&server, dir.path(), None, true);
    s.join_token = None;
    let err = agent(&server, s).start().await.unwrap_err();
    assert!(matches!(err, AgentError::NoJoinToken), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// The production schedule, run in virtual time: a TPM device with a 24-hour certificate
/// attests every 30 minutes and renews at about half-life, for 28 hours. Tokio's time is
/// paused, so the 28 hours take as long as the swtpm's 57 quotes (a few seconds).
#[tokio::test(start_paused = true)]
async fn a_day_of_30_minute_attestations_and_half_life_renewals() {
    let tpm = SoftwareTpm::start();
    let server = Server::new(time::Duration::hours(24));
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&server, dir.path(), Some(tpm.tcti()), false);
    s.attest_every = Duration::from_secs(30 * 60);
    let started = server.clock.now();
    let task = tokio::spawn({
        let a = agent(&server, s);
        async move { a.start().await }
    });
    server
        .wait_until("28 hours of quotes", |inner| inner.quote_times.len() >= 57)
        .await;
    task.abort();
    let inner = server.inner();
    let half_hour = time::Duration::minutes(30);
    for pair in inner.quote_times.windows(2) {
        assert_eq!(pair[1] - pair[0], half_hour, "quotes at {pair:?}");
    }
    assert_eq!(
        inner.quote_times[0], started,
        "the first quote follows enrollment"
    );
    assert_eq!(inner.quote_times[56] - started, time::Duration::hours(28));
    // Renewal at half of the remaining lifetime, ±10 % jitter: 10.8 to 13.2 hours apart.
    let mut previous = started;
    for at in &inner.renewal_times {
        let gap = *at - previous;
        assert!(
            gap >= time::Duration::minutes(648) && gap <= time::Duration::minutes(792),
            "renewal {gap} after the previous certificate"
        );
        previous = *at;
    }
    // The second renewal is due by 26.4 hours, the third not before 32.4.
    assert_eq!(inner.renewal_times.len(), 2, "{:?}", inner.renewal_times);
    assert_eq!(inner.enrolls, 1);
}
