//! A fake Vouch server behind the agent's `Api` trait: it issues certificates from its own
//! CA, wraps credentials with the attestor's MakeCredential and verifies quotes with the
//! attestor, so the agent's TPM flow runs against a real swtpm before the real server's TPM
//! endpoints exist. Tests steer it (outages, refusals, quarantine) through `Inner`.

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use time::OffsetDateTime;
use tokio::sync::Notify;
use vouch_agent::client::ApiError;
use vouch_agent::credentials::CertificateInfo;
use vouch_agent::lifecycle::{Api, ClientIdentity};
use vouch_agent::schedule::{Clock, TokioClock};
use vouch_attestor::credential::make_credential;
use vouch_attestor::quote::{check_attestation_key, verify_quote, Evidence, Expected};
use vouch_attestor::tpm::{qualified_name, PcrSelection, Public, RH_ENDORSEMENT};
use vouch_proto::attest::{AttestChallenge, AttestOutcome, QuoteSubmission};
use vouch_proto::device::AttestationState;
use vouch_proto::encoding::{base64, from_base64};
use vouch_proto::enroll::{
    EnrollRequest, EnrollResponse, RenewRequest, TpmChallenge, TpmEnrollStart,
};
use vouch_proto::ProblemCode;

pub const QUOTED: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 8];

/// What the fake remembers and what tests steer.
#[derive(Default)]
pub struct Inner {
    /// Every call fails as if the server were unreachable.
    pub down: bool,
    /// The next this-many calls fail as if unreachable.
    pub fail_next: u32,
    /// Calls that failed as if unreachable.
    pub unreachable: u32,
    /// Renewals are refused with this code.
    pub refuse_renewal: Option<ProblemCode>,
    pub token_used: bool,
    pub enrolls: u32,
    pub tpm_enrolls: u32,
    pub renewals: u32,
    /// Renewals refused.
    pub refused: u32,
    pub quotes: u32,
    /// Device by certificate serial.
    pub serials: HashMap<String, String>,
    /// Activation id → (secret, EK, AK).
    pub activations: HashMap<String, (Vec<u8>, Public, Public)>,
    /// Device → (EK, AK).
    pub keys: HashMap<String, (Public, Public)>,
    /// Nonce → device.
    pub nonces: HashMap<Vec<u8>, String>,
    /// Accepted PCR values; `None`: the first passing quote sets them.
    pub reference: Option<BTreeMap<u8, [u8; 32]>>,
    pub quarantined: bool,
    /// When each quote and each renewal arrived (the fake's clock).
    pub quote_times: Vec<OffsetDateTime>,
    pub renewal_times: Vec<OffsetDateTime>,
}

pub struct Server {
    ca_key: KeyPair,
    ca: rcgen::Certificate,
    pub ca_pem: String,
    pub token: String,
    pub lifetime: time::Duration,
    /// The time: tokio's, so tests with paused time control it.
    pub clock: TokioClock,
    inner: Mutex<Inner>,
    /// Signalled after every call, for [`Server::wait_until`].
    called: Notify,
}

/// The agent's handle on the fake.
#[derive(Clone)]
pub struct Fake(pub Arc<Server>);

fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    SystemRandom::new().fill(&mut b).unwrap();
    b
}

fn problem(code: ProblemCode, detail: &str) -> ApiError {
    ApiError::Problem {
        status: code.status(),
        code: code.as_str().into(),
        detail: detail.into(),
    }
}

/// The quote submission's fields, decoded as the real server does (less strictly).
struct Submission {
    nonce: Vec<u8>,
    quote: Vec<u8>,
    signature: Vec<u8>,
    pcr_values: BTreeMap<u8, [u8; 32]>,
}

fn decode(req: &QuoteSubmission) -> Submission {
    Submission {
        nonce: hex::decode(&req.nonce).unwrap(),
        quote: from_base64(&req.quote).unwrap(),
        signature: from_base64(&req.signature).unwrap(),
        pcr_values: req
            .pcr_values
            .iter()
            .map(|(k, v)| {
                (
                    k.parse().unwrap(),
                    hex::decode(v).unwrap().try_into().unwrap(),
                )
            })
            .collect(),
    }
}

/// A join token (a JWT whose signature nobody checks here) pinning `ca_sha256`.
pub fn join_token(ca_sha256: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let payload = serde_json::json!({"ca_sha256": hex::encode(ca_sha256), "zone": "lab"});
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode(b"not checked by the agent")
    )
}

impl Server {
    pub fn new(lifetime: time::Duration) -> Arc<Self> {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fake root");
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_pem = ca.pem();
        let token = join_token(ring::digest::digest(&ring::digest::SHA256, ca.der()).as_ref());
        Arc::new(Self {
            ca_key,
            ca,
            ca_pem,
            token,
            lifetime,
            clock: TokioClock::starting_now(),
            inner: Mutex::new(Inner::default()),
            called: Notify::new(),
        })
    }

    /// Waits until `cond` holds, re-checking after every call the agent makes. It sets no
    /// timer, so with tokio's time paused only the agent's own waits move the clock (a real
    /// TPM's work takes no virtual time). A watchdog thread ends the test process if `cond`
    /// does not hold within a minute of real time.
    pub async fn wait_until(&self, what: &str, mut cond: impl FnMut(&Inner) -> bool) {
        let _watchdog = Watchdog::start(what);
        loop {
            let notified = self.called.notified();
            if cond(&self.inner()) {
                return;
            }
            notified.await;
        }
    }

    pub fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// Fails the call if the server is "down".
    fn reachable(&self) -> Result<Call<'_>, ApiError> {
        let mut inner = Call {
            inner: self.inner(),
            called: &self.called,
        };
        if inner.down {
            inner.unreachable += 1;
            return Err(ApiError::Transport("connection refused".into()));
        }
        if inner.fail_next > 0 {
            inner.fail_next -= 1;
            inner.unreachable += 1;
            return Err(ApiError::Transport("connection reset".into()));
        }
        Ok(inner)
    }

    fn issue(
        &self,
        inner: &mut Inner,
        device: &str,
        csr_pem: &str,
    ) -> Result<EnrollResponse, ApiError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|_| problem(ProblemCode::CsrMalformed, "bad CSR"))?;
        let now = self.clock.now();
        let serial = random(16);
        csr.params.serial_number = Some(serial.clone().into());
        csr.params.not_before = now - time::Duration::seconds(1);
        csr.params.not_after = now + self.lifetime;
        let cert = csr.signed_by(&self.ca, &self.ca_key).unwrap();
        let serial = hex::encode(&serial);
        inner.serials.insert(serial.clone(), device.to_owned());
        Ok(EnrollResponse {
            device_id: device.to_owned(),
            spiffe_id: format!("spiffe://fleet.example/device/{device}"),
            zone: "lab".into(),
            serial,
            certificate_pem: cert.pem(),
            ca_chain_pem: self.ca_pem.clone(),
            not_after: String::new(),
            private_key_pem: None,
            // As a server from before key-agreement certificates answers.
            key_agreement_certificate_pem: None,
        })
    }

    /// The device presenting `identity`, as mTLS would establish it (expired: no handshake).
    fn caller(&self, inner: &Inner, identity: &ClientIdentity) -> Result<String, ApiError> {
        let cert = CertificateInfo::from_pem(&identity.cert_pem, "client certificate").unwrap();
        if cert.not_after < self.clock.now() {
            return Err(ApiError::Transport(
                "tls handshake: certificate expired".into(),
            ));
        }
        assert!(
            cert.matches_key(&identity.key_pem),
            "mTLS with a key that is not the certificate's"
        );
        inner
            .serials
            .get(&cert.serial)
            .cloned()
            .ok_or_else(|| problem(ProblemCode::DeviceUnknown, "unknown certificate"))
    }
}

impl Api for Fake {
    async fn pin_root(&self, ca_sha256: &[u8; 32]) -> Result<String, ApiError> {
        drop(self.0.reachable()?);
        let found = vouch_agent::credentials::fingerprint(&self.0.ca_pem).unwrap();
        if &found != ca_sha256 {
            return Err(ApiError::PinMismatch {
                found: hex::encode(found),
                pinned: hex::encode(ca_sha256),
            });
        }
        Ok(self.0.ca_pem.clone())
    }

    fn trust_root(&self, root_pem: &str) -> Result<(), ApiError> {
        assert_eq!(root_pem, self.0.ca_pem);
        Ok(())
    }

    async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ApiError> {
        let mut inner = self.0.reachable()?;
        if req.token != self.0.token {
            return Err(problem(ProblemCode::TokenInvalid, "unknown token"));
        }
        if inner.token_used {
            return Err(problem(ProblemCode::TokenUsed, "token already used"));
        }
        let device = format!("dev-{}", hex::encode(random(4)));
        if let Some(tpm) = &req.tpm {
            let Some((secret, ek, ak)) = inner.activations.remove(&tpm.activation_id) else {
                return Err(problem(
                    ProblemCode::ActivationInvalid,
                    "unknown activation",
                ));
            };
            if base64(&secret) != tpm.secret {
                return Err(problem(ProblemCode::ActivationInvalid, "wrong secret"));
            }
            inner.keys.insert(device.clone(), (ek, ak));
        }
        let csr = req.csr_pem.as_deref().unwrap_or_default();
        let resp = self.0.issue(&mut inner, &device, csr)?;
        inner.token_used = true;
        inner.enrolls += 1;
        Ok(resp)
    }

    async fn enroll_tpm(&self, req: &TpmEnrollStart) -> Result<TpmChallenge, ApiError> {
        let mut inner = self.0.reachable()?;
        if req.token != self.0.token || inner.token_used {
            return Err(problem(ProblemCode::TokenInvalid, "bad token"));
        }
        let bad = |_| problem(ProblemCode::TpmStructureInvalid, "does not parse");
        let ek = Public::parse(&from_base64(&req.ek_public).unwrap()).map_err(bad)?;
        let ak = Public::parse(&from_base64(&req.ak_public).unwrap()).map_err(bad)?;
        check_attestation_key(&ak)
            .map_err(|e| problem(ProblemCode::NotAnAttestationKey, &e.to_string()))?;
        let secret = random(32);
        let made = make_credential(&ek, &ak.name(), &secret, &SystemRandom::new()).unwrap();
        let id = hex::encode(random(16));
        inner.activations.insert(id.clone(), (secret, ek, ak));
        inner.tpm_enrolls += 1;
        Ok(TpmChallenge {
            activation_id: id,
            id_object: base64(&made.id_object),
            encrypted_secret: base64(&made.encrypted_secret),
            expires_at: "2099-01-01T00:00:00Z".into(),
        })
    }

    async fn renew(
        &self,
        identity: &ClientIdentity,
        req: &RenewRequest,
    ) -> Result<EnrollResponse, ApiError> {
        let mut inner = self.0.reachable()?;
        let device = self.0.caller(&inner, identity)?;
        if let Some(code) = inner.refuse_renewal {
            inner.refused += 1;
            return Err(problem(code, "refused by the test"));
        }
        if inner.quarantined {
            inner.refused += 1;
            return Err(problem(ProblemCode::DeviceQuarantined, "quarantined"));
        }
        let resp = self.0.issue(&mut inner, &device, &req.csr_pem)?;
        inner.renewals += 1;
        let at = self.0.clock.now();
        inner.renewal_times.push(at);
        Ok(resp)
    }

    async fn attest_challenge(
        &self,
        identity: &ClientIdentity,
    ) -> Result<AttestChallenge, ApiError> {
        let mut inner = self.0.reachable()?;
        let device = self.0.caller(&inner, identity)?;
        if !inner.keys.contains_key(&device) {
            return Err(problem(
                ProblemCode::NoAttestationKey,
                "enrolled without a TPM",
            ));
        }
        let nonce = random(32);
        inner.nonces.insert(nonce.clone(), device);
        Ok(AttestChallenge {
            nonce: hex::encode(nonce),
            pcrs: QUOTED.to_vec(),
            hash: "sha256".into(),
            expires_at: "2099-01-01T00:00:00Z".into(),
        })
    }

    async fn attest_quote(
        &self,
        identity: &ClientIdentity,
        req: &QuoteSubmission,
    ) -> Result<AttestOutcome, ApiError> {
        let req = &decode(req);
        let mut inner = self.0.reachable()?;
        let device = self.0.caller(&inner, identity)?;
        if inner.nonces.remove(&req.nonce).as_ref() != Some(&device) {
            return Err(problem(ProblemCode::NonceInvalid, "unknown nonce"));
        }
        inner.quotes += 1;
        let at = self.0.clock.now();
        inner.quote_times.push(at);
        let (ek, ak) = inner.keys[&device].clone();
        let ek_qn = qualified_name(&RH_ENDORSEMENT, &ek.name());
        let selection = PcrSelection::sha256(&QUOTED);
        let verdict = verify_quote(
            &Expected {
                ak: &ak,
                parent_qualified_name: &ek_qn,
                nonce: &req.nonce,
                selection: &selection,
            },
            &Evidence {
                attest: &req.quote,
                signature: &req.signature,
                pcr_values: &req.pcr_values,
                event_log: None,
            },
        )
        .map_err(|e| e.to_string())
        .and_then(|_| match &inner.reference {
            Some(reference) if reference != &req.pcr_values => {
                Err("PCR values differ from the reference".to_owned())
            }
            _ => Ok(()),
        });
        match verdict {
            Ok(()) => {
                inner
                    .reference
                    .get_or_insert_with(|| req.pcr_values.clone());
                inner.quarantined = false;
                Ok(AttestOutcome {
                    result: "pass".into(),
                    attestation: AttestationState::Active,
                    reference_set: "golden".into(),
                })
            }
            Err(detail) => {
                inner.quarantined = true;
                Err(problem(ProblemCode::AttestationFailed, &detail))
            }
        }
    }
}

/// Ends the test process if it is not dropped within a minute of real time: a guard for
/// waits that set no timer.
struct Watchdog(Arc<std::sync::atomic::AtomicBool>);

impl Watchdog {
    fn start(what: &str) -> Self {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, what) = (done.clone(), what.to_owned());
        std::thread::spawn(move || {
            for _ in 0..600 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
            }
            eprintln!("timed out after 60 s of real time waiting for {what}");
            std::process::exit(101);
        });
        Self(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The fake's state for the length of one call; waiters of [`Server::wait_until`] re-check
/// when it ends.
struct Call<'a> {
    inner: MutexGuard<'a, Inner>,
    called: &'a Notify,
}

impl std::ops::Deref for Call<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl std::ops::DerefMut for Call<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.called.notify_waiters();
    }
}
