//! Devices bound to software attestation keys, written into a running server's registry: the
//! registry half of a TPM enrollment (the API half, credential activation, is tested against
//! swtpm). Each attests with quotes its [`SoftwareAk`] signs over the boot `fw-1`/`cfg-a`, which
//! the reference values of [`policy_dir`] accept. Shared by the attestation benchmark and the
//! fault scenarios (`#[path]` modules; each uses part of it), with the raw cost of verifying
//! one quote, the floor the attestation benchmarks measure against.
#![allow(dead_code)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use vouch_attestor::quote::{verify_quote, Evidence, Expected};
use vouch_attestor::reference::{evaluate, ReferenceValues};
use vouch_attestor::testing::{
    boot_events, ek_qualified_name, expected_pcrs, policy_dir_with_references, SoftwareAk, QUOTED,
};
use vouch_attestor::tpm::{PcrSelection, Public};
use vouch_ca::api::AppState;
use vouch_ca::app::RunningServer;
use vouch_ca::clock::{Clock, SystemClock};
use vouch_ca::ids::{DeviceId, Serial, Zone};
use vouch_ca::pki::profile::{issue_device_certificate, DeviceCertificateSpec};
use vouch_ca::store::{NewActivation, NewCertificate, NewDevice, TpmEnrollment};

/// A device with a software AK bound at enrollment, and its mTLS identity (PEM: certificate,
/// chain, key).
pub struct SeededDevice {
    pub ak: SoftwareAk,
    pub identity: Vec<u8>,
    pub device_id: String,
    pub serial: String,
}

/// Writes the example policies with reference values accepting `fw-1`/`cfg-a` into `dir`.
pub fn policy_dir(dir: &Path) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    policy_dir_with_references(&examples, dir, &[("fw-1", "fw-1", "cfg-a")]);
}

/// Enrolls `n` sensors bound to software AKs into `server` (zone `sensors`, class `sensor`),
/// each with a bootstrap token the admin creates over `base`.
pub async fn seed(
    server: &RunningServer,
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    n: usize,
) -> Vec<SeededDevice> {
    let mut fleet = Vec::with_capacity(n);
    for _ in 0..n {
        let r = client
            .post(format!("{base}/v1/bootstrap-tokens"))
            .bearer_auth(admin)
            .json(&json!({"zone": "sensors", "device_class": "sensor"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let jti = r.json::<Value>().await.unwrap()["token_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let now = SystemClock.now();
        fleet.push(enroll_soft(&server.state, &jti, now, time::Duration::hours(24)).await);
    }
    fleet
}

/// Enrolls one sensor bound to a new software AK with the bootstrap token `jti` (zone
/// `sensors`, class `sensor`), straight into the registry of `state`, at `now`, with a
/// certificate living `lifetime`.
pub async fn enroll_soft(
    state: &AppState,
    jti: &str,
    now: time::OffsetDateTime,
    lifetime: time::Duration,
) -> SeededDevice {
    let ak = SoftwareAk::new();
    let secret = [9u8; 32];
    let mut secret_sha256 = [0u8; 32];
    secret_sha256.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &secret).as_ref());
    let unix = now.unix_timestamp();
    let activation = NewActivation {
        id: DeviceId::random(&state.rng).unwrap().as_str().to_owned(),
        token_jti: jti.to_owned(),
        ek_public: ak.ek_public.clone(),
        ak_public: ak.ak_public.clone(),
        secret_sha256,
        created_at: unix,
        expires_at: unix + 300,
    };
    state.registry.create_activation(&activation).await.unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let (device_id, serial) = (
        DeviceId::random(&state.rng).unwrap(),
        Serial::random(&state.rng).unwrap(),
    );
    let issued = issue_device_certificate(
        &state.ca,
        &DeviceCertificateSpec {
            device_id: &device_id,
            trust_domain: &state.trust_domain,
            zone: &Zone::parse("sensors").unwrap(),
            serial: &serial,
            now,
            lifetime,
            crl_url: "https://localhost/v1/crl",
        },
        &key,
    )
    .unwrap();
    let enrolled = state
        .registry
        .enroll_tpm(&TpmEnrollment {
            jti,
            activation_id: &activation.id,
            secret: &secret,
            device: &NewDevice {
                id: device_id.as_str().to_owned(),
                spiffe_id: device_id.spiffe_id(&state.trust_domain),
                zone: "sensors".into(),
                device_class: Some("sensor".into()),
                labels: Default::default(),
            },
            reenroll: None,
            cert: &NewCertificate {
                serial: serial.to_hex(),
                not_before: issued.not_before.unix_timestamp(),
                not_after: issued.not_after.unix_timestamp(),
                key_agreement: None,
            },
            now: unix,
            skew: 60,
        })
        .await
        .unwrap();
    assert!(enrolled.is_ok(), "{enrolled:?}");
    let identity = format!(
        "{}{}{}",
        issued.pem,
        state.ca.chain_pem(),
        key.serialize_pem()
    );
    SeededDevice {
        ak,
        identity: identity.into_bytes(),
        device_id: device_id.as_str().to_owned(),
        serial: serial.to_hex(),
    }
}

/// The parts of a quote submission that do not depend on the nonce: the PCR values (JSON)
/// and the event log (base64) of the boot `fw-1`/`cfg-a`.
pub struct QuoteParts {
    pub pcr_values: String,
    pub event_log: String,
    values: std::collections::BTreeMap<u8, [u8; 32]>,
}

impl QuoteParts {
    pub fn new() -> Self {
        let log = vouch_attestor::eventlog::write_log(&boot_events("fw-1", "cfg-a"));
        let values = expected_pcrs("fw-1", "cfg-a");
        let pcr_values: serde_json::Map<String, Value> = values
            .iter()
            .map(|(p, v)| (p.to_string(), json!(hex::encode(v))))
            .collect();
        Self {
            pcr_values: serde_json::to_string(&pcr_values).unwrap(),
            event_log: B64.encode(&log),
            values,
        }
    }

    /// The body of `POST /v1/attest/quote` for the challenge's `nonce` (hex), quoted by `ak`.
    pub fn submission(&self, ak: &SoftwareAk, nonce_hex: &str) -> String {
        let nonce = hex::decode(nonce_hex).unwrap();
        let (attest, signature) = ak.quote(&nonce, &self.values);
        format!(
            r#"{{"nonce":"{}","quote":"{}","signature":"{}","pcr_values":{},"event_log":"{}"}}"#,
            nonce_hex,
            B64.encode(attest),
            B64.encode(signature),
            self.pcr_values,
            self.event_log
        )
    }
}

/// Seconds per verification (everything the server checks in a quote) on one core.
pub fn raw_verification_cost(references: &ReferenceValues, log: &[u8]) -> f64 {
    let soft = SoftwareAk::new();
    let (ak, ek) = (
        Public::parse(&soft.ak_public).unwrap(),
        Public::parse(&soft.ek_public).unwrap(),
    );
    let parent = ek_qualified_name(&ek);
    let values = expected_pcrs("fw-1", "cfg-a");
    let nonce = [7u8; 32];
    let (attest, signature) = soft.quote(&nonce, &values);
    let class = &references.device_classes["sensor"];
    let mut ops = 0usize;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) || ops < 1000 {
        // As the server does it: the keys come from the registry row as bytes.
        let ak = Public::parse(&ak.raw).unwrap();
        let selection = PcrSelection::sha256(&QUOTED);
        let verified = verify_quote(
            &Expected {
                ak: &ak,
                parent_qualified_name: &parent,
                nonce: &nonce,
                selection: &selection,
            },
            &Evidence {
                attest: &attest,
                signature: &signature,
                pcr_values: &values,
                event_log: Some(log),
            },
        )
        .unwrap();
        assert_eq!(evaluate(class, &verified).unwrap(), "fw-1");
        ops += 1;
    }
    start.elapsed().as_secs_f64() / ops as f64
}
