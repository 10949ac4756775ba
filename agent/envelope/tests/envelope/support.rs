//! Fixtures: devices with a device certificate and a key-agreement certificate from one CA,
//! a random source fed fixed bytes, the full receiving chain, and re-signing for attacks.

use base64::Engine;
use coset::{CborSerializable, CoseSign1, TaggedCborSerializable};
use p256::pkcs8::EncodePrivateKey;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::cell::Cell;
use std::sync::OnceLock;
use vouch_envelope::{
    seal, Envelope, EnvelopeError, KeyAgreementKey, RandomSource, RecipientKeys, RecipientOpen,
    SealRequest, SenderKeys, SharedSecretCache,
};

pub const TRUST_DOMAIN: &str = "spiffe://fleet.example";
pub const MAX_LEN: usize = 256 * 1024;
pub const SKEW: u64 = 60;
pub const MAX_LIFETIME: u64 = 600;
pub const IAT: u64 = 1_800_000_000;
pub const EXP: u64 = IAT + 300;
pub const NOW: u64 = IAT + 10;
pub const SESSION: [u8; 16] = *b"session-id-0001!";

/// A private P-256 key derived from a label: the same label gives the same key, so the
/// committed vectors keep their keys when they are regenerated.
pub fn derived_pkcs8(label: &str) -> Vec<u8> {
    let scalar = digest::digest(&digest::SHA256, label.as_bytes());
    let secret = p256::SecretKey::from_slice(scalar.as_ref()).unwrap();
    secret.to_pkcs8_der().unwrap().as_bytes().to_vec()
}

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

pub fn pem_decode(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

pub struct Ca {
    key: KeyPair,
    cert: Certificate,
}

impl Ca {
    pub fn new(label: &str) -> Ca {
        let key = KeyPair::try_from(derived_pkcs8(label).as_slice()).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Vouch test issuing CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca { key, cert }
    }

    pub fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    fn issue(&self, spiffe_id: &str, key: &KeyPair, usage: KeyUsagePurpose) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, spiffe_id);
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
        params.key_usages = vec![usage];
        params
            .signed_by(key, &self.cert, &self.key)
            .unwrap()
            .der()
            .to_vec()
    }
}

/// A device as the CA enrolls it: a signing key with its device certificate, and a separate
/// key-agreement key with its key-agreement certificate, both naming the SPIFFE ID.
#[derive(Clone)]
pub struct Device {
    pub spiffe_id: String,
    pub device_key: Vec<u8>,
    pub device_cert: Vec<u8>,
    pub ka_key: Vec<u8>,
    pub ka_cert: Vec<u8>,
}

impl Device {
    pub fn enroll(ca: &Ca, name: &str) -> Device {
        let spiffe_id = format!("{TRUST_DOMAIN}/device/{name}");
        let device_key = derived_pkcs8(&format!("vouch-envelope test device key {name}"));
        let ka_key = derived_pkcs8(&format!("vouch-envelope test key-agreement key {name}"));
        let device_cert = ca.issue(
            &spiffe_id,
            &KeyPair::try_from(device_key.as_slice()).unwrap(),
            KeyUsagePurpose::DigitalSignature,
        );
        let ka_cert = ca.issue(
            &spiffe_id,
            &KeyPair::try_from(ka_key.as_slice()).unwrap(),
            KeyUsagePurpose::KeyAgreement,
        );
        Device {
            spiffe_id,
            device_key,
            device_cert,
            ka_key,
            ka_cert,
        }
    }

    pub fn signing_key(&self) -> EcdsaKeyPair {
        EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &self.device_key,
            &SystemRandom::new(),
        )
        .unwrap()
    }

    pub fn device_public_key(&self) -> Vec<u8> {
        self.signing_key().public_key().as_ref().to_vec()
    }

    pub fn ka(&self) -> KeyAgreementKey {
        KeyAgreementKey::from_pkcs8_der(&self.ka_key).unwrap()
    }

    pub fn ka_public_key(&self) -> Vec<u8> {
        self.ka().public_key().to_vec()
    }

    pub fn sender_keys(&self) -> SenderKeys {
        SenderKeys::new(
            self.spiffe_id.clone(),
            self.signing_key(),
            self.device_cert.clone(),
            self.ka(),
            self.ka_cert.clone(),
        )
        .unwrap()
    }

    pub fn recipient_keys(&self) -> RecipientKeys {
        RecipientKeys::new(self.spiffe_id.clone(), &self.ka_public_key()).unwrap()
    }
}

/// Sensor A sends to gateway B; C is another valid device of the same fleet (an insider).
pub struct Fleet {
    pub ca: Ca,
    pub a: Device,
    pub b: Device,
    pub c: Device,
}

pub fn fleet() -> &'static Fleet {
    static FLEET: OnceLock<Fleet> = OnceLock::new();
    FLEET.get_or_init(|| {
        let ca = Ca::new("vouch-envelope test CA key");
        let a = Device::enroll(&ca, "sensor-a");
        let b = Device::enroll(&ca, "gateway-b");
        let c = Device::enroll(&ca, "insider-c");
        Fleet { ca, a, b, c }
    })
}

/// A random source fed fixed bytes, in order; fails when they run out. ECDSA's nonce still
/// comes from the system (ring's generator trait is sealed), so signatures differ per run.
pub struct FixedBytes {
    bytes: Vec<u8>,
    used: Cell<usize>,
    system: SystemRandom,
}

impl FixedBytes {
    pub fn new(bytes: Vec<u8>) -> FixedBytes {
        FixedBytes {
            bytes,
            used: Cell::new(0),
            system: SystemRandom::new(),
        }
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }
}

impl RandomSource for FixedBytes {
    fn fill(&self, dest: &mut [u8]) -> Result<(), EnvelopeError> {
        let start = self.used.get();
        let chunk = self
            .bytes
            .get(start..start + dest.len())
            .ok_or(EnvelopeError::RandomFailed)?;
        dest.copy_from_slice(chunk);
        self.used.set(start + dest.len());
        Ok(())
    }

    fn signing_rng(&self) -> &dyn SecureRandom {
        &self.system
    }
}

pub struct Message<'a> {
    pub data_type: &'a str,
    pub seq: u64,
    pub iat: u64,
    pub exp: u64,
    pub payload: &'a [u8],
    pub include_chain: bool,
}

impl Default for Message<'_> {
    fn default() -> Self {
        Message {
            data_type: "telemetry.temperature",
            seq: 7,
            iat: IAT,
            exp: EXP,
            payload: b"21.5 C",
            include_chain: false,
        }
    }
}

/// Seals `message` from `from` to `to` with the system random source.
pub fn seal_from(from: &Device, to: &Device, message: &Message<'_>) -> Vec<u8> {
    seal_to_keys(from, &to.recipient_keys(), message)
}

pub fn seal_to_keys(from: &Device, to: &RecipientKeys, message: &Message<'_>) -> Vec<u8> {
    let sender = from.sender_keys();
    seal(
        &SealRequest {
            sender: &sender,
            recipient: to,
            data_type: message.data_type,
            session_id: &SESSION,
            seq: message.seq,
            iat: message.iat,
            exp: message.exp,
            payload: message.payload,
            include_chain: message.include_chain,
        },
        &SystemRandom::new(),
        &SharedSecretCache::new(8),
    )
    .unwrap()
}

/// The receiver's whole chain, in the required order, with `sender`'s keys looked up by the
/// caller (here: given). Chain, revocation, replay and policy are the caller's and not run.
pub fn receive(
    bytes: &[u8],
    me: &Device,
    sender: &Device,
    now: u64,
) -> Result<Vec<u8>, EnvelopeError> {
    let parsed = Envelope::parse(bytes, MAX_LEN)?;
    let signed = parsed.verify_signature(&sender.device_public_key())?;
    signed.check_audience(&me.spiffe_id)?;
    signed.check_fresh(now, SKEW, MAX_LIFETIME)?;
    signed.decrypt(
        &RecipientOpen {
            my_spiffe_id: &me.spiffe_id,
            my_key: &me.ka(),
            sender_key_agreement_certificate: &sender.ka_cert,
            sender_key_agreement_public_key: &sender.ka_public_key(),
        },
        &SharedSecretCache::new(8),
    )
}

/// Decodes an envelope, lets `edit` change it, and signs it again with `signer`'s device key
/// (as an attacker holding a valid device key would). An edited protected header must have its
/// `original_data` cleared so that it is serialized again.
pub fn resign(bytes: &[u8], signer: &Device, edit: impl FnOnce(&mut CoseSign1)) -> Vec<u8> {
    let mut sign1 = CoseSign1::from_tagged_slice(bytes).unwrap();
    edit(&mut sign1);
    let to_be_signed = sign1.tbs_data(b"");
    sign1.signature = signer
        .signing_key()
        .sign(&SystemRandom::new(), &to_be_signed)
        .unwrap()
        .as_ref()
        .to_vec();
    sign1.to_tagged_vec().unwrap()
}

/// Rewrites the inner COSE_Encrypt of a decoded Sign1.
pub fn edit_inner(sign1: &mut CoseSign1, edit: impl FnOnce(&mut coset::CoseEncrypt)) {
    let mut inner =
        coset::CoseEncrypt::from_tagged_slice(sign1.payload.as_deref().unwrap()).unwrap();
    edit(&mut inner);
    sign1.payload = Some(inner.to_tagged_vec().unwrap());
}

pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, bytes).as_ref().to_vec()
}

pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

pub fn reason<T: std::fmt::Debug>(result: Result<T, EnvelopeError>) -> &'static str {
    result.unwrap_err().reason()
}

pub fn untagged(bytes: &[u8]) -> Vec<u8> {
    CoseSign1::from_tagged_slice(bytes)
        .unwrap()
        .to_vec()
        .unwrap()
}
