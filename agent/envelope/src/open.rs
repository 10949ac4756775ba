//! Receiving: strict parsing, then signature, audience, freshness and decryption as separate
//! steps, so the caller can run its own checks (chain, revocation, replay, policy) in between.

use crate::cache::SharedSecretCache;
use crate::cbor::{self, Item};
use crate::direct::{label_text, ContentAlgorithm, DirectEncrypt};
use crate::keys::{certificate_sha256, KeyAgreementKey, SEC1_UNCOMPRESSED_LEN};
use crate::labels::{
    self, CERT_HASH_LEN, CTI_LEN, MAX_DATA_TYPE_LEN, MAX_SPIFFE_ID_LEN, SALT_LEN, SESSION_ID_LEN,
};
use crate::EnvelopeError;
use coset::cbor::value::Value;
use coset::{
    iana, Algorithm, AsCborValue, ContentType, CoseSign1, Header, Label, ProtectedHeader,
    RegisteredLabelWithPrivate, TaggedCborSerializable,
};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

/// The CWT claims of the outer protected header (RFC 8392 keys, RFC 9597 header 15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    iss: String,
    aud: String,
    iat: u64,
    exp: u64,
    cti: [u8; CTI_LEN],
}

impl Claims {
    /// `iss`: the sender's SPIFFE ID. The caller must check that the verified device
    /// certificate carries it.
    pub fn iss(&self) -> &str {
        &self.iss
    }

    /// `aud`: the target's SPIFFE ID.
    pub fn aud(&self) -> &str {
        &self.aud
    }

    /// `iat`: issued at, unix seconds.
    pub fn iat(&self) -> u64 {
        self.iat
    }

    /// `exp`: expires at, unix seconds (always after `iat`).
    pub fn exp(&self) -> u64 {
        self.exp
    }

    /// `cti`: the message id, 16 random bytes.
    pub fn cti(&self) -> &[u8; CTI_LEN] {
        &self.cti
    }
}

/// Everything the outer protected header says (signed, once the signature is verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHeader {
    claims: Claims,
    data_type: String,
    session_id: [u8; SESSION_ID_LEN],
    seq: u64,
    sender_certificate_sha256: [u8; CERT_HASH_LEN],
}

impl EnvelopeHeader {
    /// The CWT claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// The payload's data type, for policy.
    pub fn data_type(&self) -> &str {
        &self.data_type
    }

    /// The sender's session id, for replay detection.
    pub fn session_id(&self) -> &[u8; SESSION_ID_LEN] {
        &self.session_id
    }

    /// The sequence number within the session, for replay detection.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// `x5t`: SHA-256 of the sender's device certificate DER, the certificate whose key must
    /// verify the signature.
    pub fn sender_certificate_sha256(&self) -> &[u8; CERT_HASH_LEN] {
        &self.sender_certificate_sha256
    }
}

/// Entry point of the receiving side.
#[derive(Debug, Clone, Copy)]
pub struct Envelope;

impl Envelope {
    /// Refuses `bytes` longer than `max_len` before decoding anything, then strictly decodes the
    /// envelope: a tagged COSE_Sign1 with ES256, every required header and claim present with
    /// the right type and length, nothing unknown (critical or not), no trailing bytes, and a
    /// tagged COSE_Encrypt payload in this format's profile. Checks that the key-agreement
    /// identities equal `iss` and `aud`, and that certificates sent along hash to the values the
    /// signed headers name. Verifies no signature.
    pub fn parse(bytes: &[u8], max_len: usize) -> Result<ParsedEnvelope, EnvelopeError> {
        if bytes.len() > max_len {
            return Err(EnvelopeError::TooLarge {
                len: bytes.len(),
                max: max_len,
            });
        }
        let malformed = || EnvelopeError::Malformed("not a tagged COSE_Sign1");
        // The payload stays in `bytes` until it is copied once, into the Sig_structure.
        let [protected, unprotected, payload, signature] =
            cbor::tagged_array::<4>(bytes, CoseSign1::TAG).ok_or_else(malformed)?;
        let protected =
            ProtectedHeader::from_cbor_bstr(protected.into_value()).map_err(|_| malformed())?;
        let unprotected =
            Header::from_cbor_value(unprotected.into_value()).map_err(|_| malformed())?;
        let payload = match payload {
            Item::Bytes(payload) => Some(payload),
            Item::Other(Value::Null) => None,
            Item::Other(_) => return Err(malformed()),
        };
        let Item::Bytes(signature) = signature else {
            return Err(malformed());
        };
        let protected_bytes = protected
            .original_data
            .filter(|p| !p.is_empty())
            .ok_or(EnvelopeError::Malformed("protected header missing"))?;
        let header = outer_header(protected.header)?;
        let certificates = outer_unprotected(unprotected)?;
        let payload = payload.ok_or(EnvelopeError::Malformed("payload missing"))?;
        let signature = <[u8; 64]>::try_from(signature)
            .map_err(|_| EnvelopeError::Malformed("signature is not 64 bytes"))?;
        let inner = DirectEncrypt::parse(payload)?;
        let sender_key_agreement_key_id = inner_profile(&inner)?;
        let parsed = ParsedEnvelope {
            to_be_signed: cbor::sig_structure1(&protected_bytes, payload),
            header,
            protected: protected_bytes,
            signature,
            certificates,
            inner,
            sender_key_agreement_key_id,
        };
        parsed.check_bindings()?;
        if let Some(leaf) = parsed.certificates.first() {
            if certificate_sha256(leaf) != parsed.header.sender_certificate_sha256 {
                return Err(EnvelopeError::KeyMismatch(
                    "the first x5chain certificate is not the one x5t names",
                ));
            }
        }
        if let Some(cert) = parsed.sender_key_agreement_certificate() {
            if certificate_sha256(cert) != parsed.sender_key_agreement_key_id {
                return Err(EnvelopeError::KeyMismatch(
                    "the x5chain-sender certificate is not the one the static key id names",
                ));
            }
        }
        Ok(parsed)
    }
}

const UNEXPECTED_PROTECTED: &str = "unexpected parameter in the protected header";

/// Labels the outer protected header may mark critical: those a generic COSE library does not
/// know and must not ignore.
fn understood_critical(label: &RegisteredLabelWithPrivate<iana::HeaderParameter>) -> bool {
    match label {
        RegisteredLabelWithPrivate::Assigned(iana::HeaderParameter::CwtClaims)
        | RegisteredLabelWithPrivate::Assigned(iana::HeaderParameter::X5T) => true,
        RegisteredLabelWithPrivate::PrivateUse(l) => {
            [labels::DATA_TYPE, labels::SESSION_ID, labels::SEQUENCE].contains(l)
        }
        _ => false,
    }
}

fn outer_header(header: Header) -> Result<EnvelopeHeader, EnvelopeError> {
    if let Some(label) = header.crit.iter().find(|l| !understood_critical(l)) {
        return Err(EnvelopeError::UnknownCriticalHeader(label_text(label)));
    }
    match header.alg {
        Some(Algorithm::Assigned(iana::Algorithm::ES256)) => {}
        Some(_) => return Err(EnvelopeError::UnsupportedAlgorithm("signature")),
        None => return Err(EnvelopeError::Malformed("signature algorithm missing")),
    }
    if header.content_type != Some(ContentType::Assigned(iana::CoapContentFormat::CoseEncrypt)) {
        return Err(EnvelopeError::Malformed(
            "content type is not COSE_Encrypt (96)",
        ));
    }
    if !header.key_id.is_empty()
        || !header.iv.is_empty()
        || !header.partial_iv.is_empty()
        || !header.counter_signatures.is_empty()
    {
        return Err(EnvelopeError::Malformed(UNEXPECTED_PROTECTED));
    }
    let (mut claims, mut x5t, mut data_type, mut session_id, mut seq) =
        (None, None, None, None, None);
    // coset refuses duplicate labels, so each arm runs at most once.
    for (label, value) in header.rest {
        match label {
            Label::Int(labels::CWT_CLAIMS) => claims = Some(parse_claims(value)?),
            Label::Int(labels::X5T) => x5t = Some(parse_x5t(value)?),
            Label::Int(labels::DATA_TYPE) => {
                data_type = Some(
                    cbor::text(value)
                        .filter(|t| !t.is_empty() && t.len() <= MAX_DATA_TYPE_LEN)
                        .ok_or(EnvelopeError::Malformed(
                            "data type is not a text of 1 to 128 bytes",
                        ))?,
                )
            }
            Label::Int(labels::SESSION_ID) => {
                session_id = Some(
                    cbor::fixed_bytes::<SESSION_ID_LEN>(value)
                        .ok_or(EnvelopeError::Malformed("session id is not 16 bytes"))?,
                )
            }
            Label::Int(labels::SEQUENCE) => {
                seq = Some(
                    cbor::unsigned(&value)
                        .ok_or(EnvelopeError::Malformed("sequence number is not a uint"))?,
                )
            }
            _ => return Err(EnvelopeError::Malformed(UNEXPECTED_PROTECTED)),
        }
    }
    Ok(EnvelopeHeader {
        claims: claims.ok_or(EnvelopeError::Malformed("CWT claims missing"))?,
        sender_certificate_sha256: x5t.ok_or(EnvelopeError::Malformed("x5t missing"))?,
        data_type: data_type.ok_or(EnvelopeError::Malformed("data type missing"))?,
        session_id: session_id.ok_or(EnvelopeError::Malformed("session id missing"))?,
        seq: seq.ok_or(EnvelopeError::Malformed("sequence number missing"))?,
    })
}

fn spiffe_id(value: Value, what: &'static str) -> Result<String, EnvelopeError> {
    cbor::text(value)
        .filter(|t| !t.is_empty() && t.len() <= MAX_SPIFFE_ID_LEN)
        .ok_or(EnvelopeError::Malformed(what))
}

fn parse_claims(value: Value) -> Result<Claims, EnvelopeError> {
    let Value::Map(entries) = value else {
        return Err(EnvelopeError::Malformed("CWT claims are not a map"));
    };
    let (mut iss, mut aud, mut iat, mut exp, mut cti) = (None, None, None, None, None);
    for (key, value) in entries {
        let key = cbor::signed(&key).ok_or(EnvelopeError::Malformed("claim key is not an int"))?;
        let duplicate = match key {
            labels::CLAIM_ISS => iss
                .replace(spiffe_id(value, "iss is not a text of 1 to 2048 bytes")?)
                .is_some(),
            labels::CLAIM_AUD => aud
                .replace(spiffe_id(value, "aud is not a text of 1 to 2048 bytes")?)
                .is_some(),
            labels::CLAIM_IAT => iat
                .replace(
                    cbor::unsigned(&value).ok_or(EnvelopeError::Malformed("iat is not a uint"))?,
                )
                .is_some(),
            labels::CLAIM_EXP => exp
                .replace(
                    cbor::unsigned(&value).ok_or(EnvelopeError::Malformed("exp is not a uint"))?,
                )
                .is_some(),
            labels::CLAIM_CTI => cti
                .replace(
                    cbor::fixed_bytes::<CTI_LEN>(value)
                        .ok_or(EnvelopeError::Malformed("cti is not 16 bytes"))?,
                )
                .is_some(),
            _ => return Err(EnvelopeError::Malformed("unexpected CWT claim")),
        };
        if duplicate {
            return Err(EnvelopeError::Malformed("duplicate CWT claim"));
        }
    }
    let claims = Claims {
        iss: iss.ok_or(EnvelopeError::Malformed("iss missing"))?,
        aud: aud.ok_or(EnvelopeError::Malformed("aud missing"))?,
        iat: iat.ok_or(EnvelopeError::Malformed("iat missing"))?,
        exp: exp.ok_or(EnvelopeError::Malformed("exp missing"))?,
        cti: cti.ok_or(EnvelopeError::Malformed("cti missing"))?,
    };
    if claims.exp <= claims.iat {
        return Err(EnvelopeError::Malformed("exp is not after iat"));
    }
    Ok(claims)
}

fn parse_x5t(value: Value) -> Result<[u8; CERT_HASH_LEN], EnvelopeError> {
    let Value::Array(items) = value else {
        return Err(EnvelopeError::Malformed("x5t is not an array"));
    };
    let mut items = items.into_iter();
    let (Some(alg), Some(hash), None) = (items.next(), items.next(), items.next()) else {
        return Err(EnvelopeError::Malformed("x5t is not [alg, hash]"));
    };
    if cbor::signed(&alg) != Some(labels::SHA_256) {
        return Err(EnvelopeError::UnsupportedAlgorithm("x5t"));
    }
    cbor::fixed_bytes::<CERT_HASH_LEN>(hash)
        .ok_or(EnvelopeError::Malformed("x5t hash is not 32 bytes"))
}

fn outer_unprotected(header: Header) -> Result<Vec<Vec<u8>>, EnvelopeError> {
    const UNEXPECTED: &str = "unexpected parameter in the unprotected header";
    if header.alg.is_some()
        || !header.crit.is_empty()
        || header.content_type.is_some()
        || !header.key_id.is_empty()
        || !header.iv.is_empty()
        || !header.partial_iv.is_empty()
        || !header.counter_signatures.is_empty()
    {
        return Err(EnvelopeError::Malformed(UNEXPECTED));
    }
    let mut certificates = Vec::new();
    for (label, value) in header.rest {
        match label {
            Label::Int(labels::X5CHAIN) => {
                certificates = cbor::certificates(value)
                    .ok_or(EnvelopeError::Malformed("x5chain is not a COSE_X509"))?
            }
            _ => return Err(EnvelopeError::Malformed(UNEXPECTED)),
        }
    }
    Ok(certificates)
}

/// The envelope's profile of the inner COSE_Encrypt; returns the static key id.
fn inner_profile(inner: &DirectEncrypt) -> Result<[u8; CERT_HASH_LEN], EnvelopeError> {
    if inner.algorithm() != ContentAlgorithm::A256Gcm {
        return Err(EnvelopeError::UnsupportedAlgorithm("content"));
    }
    let r = inner.recipient();
    let unused = r.key_id().is_some()
        || r.static_key().is_some()
        || r.party_u().nonce().is_some()
        || r.party_u().other().is_some()
        || r.party_v().nonce().is_some()
        || r.party_v().other().is_some();
    if unused {
        return Err(EnvelopeError::Malformed(
            "unexpected parameter in the recipient's header",
        ));
    }
    if r.salt().map(<[u8]>::len) != Some(SALT_LEN) {
        return Err(EnvelopeError::Malformed("salt missing or not 16 bytes"));
    }
    if r.party_u().identity().is_none() || r.party_v().identity().is_none() {
        return Err(EnvelopeError::Malformed(
            "PartyU or PartyV identity missing",
        ));
    }
    if r.sender_certificates().len() > 1 {
        return Err(EnvelopeError::Malformed(
            "x5chain-sender holds more than the key-agreement certificate",
        ));
    }
    r.static_key_id()
        .and_then(|id| <[u8; CERT_HASH_LEN]>::try_from(id).ok())
        .ok_or(EnvelopeError::Malformed(
            "static key id missing or not 32 bytes",
        ))
}

/// A strictly parsed envelope whose signature is not verified yet: nothing in it is to be
/// trusted, except for choosing the certificate to verify it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEnvelope {
    header: EnvelopeHeader,
    protected: Vec<u8>,
    /// The COSE Sig_structure of the protected header and the payload: what the signature
    /// covers, and the only copy of the payload kept.
    to_be_signed: Vec<u8>,
    signature: [u8; 64],
    certificates: Vec<Vec<u8>>,
    inner: DirectEncrypt,
    sender_key_agreement_key_id: [u8; CERT_HASH_LEN],
}

impl ParsedEnvelope {
    /// The outer protected header's contents.
    pub fn header(&self) -> &EnvelopeHeader {
        &self.header
    }

    /// `x5chain`: the sender's device certificate, then its issuers (DER); empty when not sent.
    /// When present, the first one's SHA-256 equals `x5t` (checked by [`Envelope::parse`]).
    pub fn certificates(&self) -> &[Vec<u8>] {
        &self.certificates
    }

    /// The static key id: SHA-256 of the sender's key-agreement certificate.
    pub fn sender_key_agreement_key_id(&self) -> &[u8; CERT_HASH_LEN] {
        &self.sender_key_agreement_key_id
    }

    /// `x5chain-sender`: the sender's key-agreement certificate (DER), when sent. Its SHA-256
    /// equals the static key id (checked by [`Envelope::parse`]).
    pub fn sender_key_agreement_certificate(&self) -> Option<&[u8]> {
        self.inner
            .recipient()
            .sender_certificates()
            .first()
            .map(Vec::as_slice)
    }

    /// The serialized outer protected header: what is signed, and the content's external AAD.
    pub fn protected_header_bytes(&self) -> &[u8] {
        &self.protected
    }

    /// The inner COSE_Encrypt, parsed.
    pub fn inner(&self) -> &DirectEncrypt {
        &self.inner
    }

    /// PartyU identity must be the signed `iss` and PartyV identity the signed `aud`, so that
    /// the content key is bound to both identities the signature covers.
    fn check_bindings(&self) -> Result<(), EnvelopeError> {
        let r = self.inner.recipient();
        if r.party_u().identity() != Some(self.header.claims.iss.as_bytes()) {
            return Err(EnvelopeError::IdentityMismatch("iss"));
        }
        if r.party_v().identity() != Some(self.header.claims.aud.as_bytes()) {
            return Err(EnvelopeError::IdentityMismatch("aud"));
        }
        Ok(())
    }

    /// Verifies the ES256 signature over the outer protected header and the payload with the
    /// sender's device public key (uncompressed SEC1, from the certificate the caller verified
    /// and found by `x5t`).
    pub fn verify_signature(
        self,
        sender_device_public_key: &[u8],
    ) -> Result<SignedEnvelope, EnvelopeError> {
        if sender_device_public_key.len() != SEC1_UNCOMPRESSED_LEN
            || sender_device_public_key.first() != Some(&0x04)
        {
            return Err(EnvelopeError::InvalidKey(
                "device public key is not an uncompressed P-256 point",
            ));
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, sender_device_public_key)
            .verify(&self.to_be_signed, &self.signature)
            .map_err(|_| EnvelopeError::BadSignature)?;
        Ok(SignedEnvelope { parsed: self })
    }
}

/// What the receiver holds to decrypt: its own identity and key-agreement key, and the
/// sender's key-agreement certificate (verified by the caller, found by the static key id or
/// sent in `x5chain-sender`) with its public key.
#[derive(Debug, Clone, Copy)]
pub struct RecipientOpen<'a> {
    /// This device's SPIFFE ID.
    pub my_spiffe_id: &'a str,
    /// This device's key-agreement key.
    pub my_key: &'a KeyAgreementKey,
    /// The sender's key-agreement certificate, DER; its SHA-256 must be the static key id.
    pub sender_key_agreement_certificate: &'a [u8],
    /// The public key of that certificate, uncompressed SEC1.
    pub sender_key_agreement_public_key: &'a [u8],
}

/// An envelope whose signature verified with the sender's device key: its header is the
/// sender's word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEnvelope {
    parsed: ParsedEnvelope,
}

impl SignedEnvelope {
    /// The signed outer protected header's contents.
    pub fn header(&self) -> &EnvelopeHeader {
        &self.parsed.header
    }

    /// The envelope as parsed.
    pub fn parsed(&self) -> &ParsedEnvelope {
        &self.parsed
    }

    /// Refuses an envelope whose `aud` is not `my_spiffe_id`.
    pub fn check_audience(&self, my_spiffe_id: &str) -> Result<(), EnvelopeError> {
        let aud = &self.parsed.header.claims.aud;
        if aud != my_spiffe_id {
            return Err(EnvelopeError::WrongAudience {
                expected: my_spiffe_id.to_owned(),
                found: aud.clone(),
            });
        }
        Ok(())
    }

    /// Refuses an envelope issued more than `max_skew_secs` in the future, expired more than
    /// `max_skew_secs` ago (`now >= exp + skew`), or whose lifetime `exp - iat` is longer than
    /// `max_lifetime_secs` (which bounds how long a replay cache must remember it).
    pub fn check_fresh(
        &self,
        now: u64,
        max_skew_secs: u64,
        max_lifetime_secs: u64,
    ) -> Result<(), EnvelopeError> {
        let claims = &self.parsed.header.claims;
        if claims.iat > now.saturating_add(max_skew_secs) {
            return Err(EnvelopeError::NotYetValid {
                iat: claims.iat,
                now,
            });
        }
        if now >= claims.exp.saturating_add(max_skew_secs) {
            return Err(EnvelopeError::Expired {
                exp: claims.exp,
                now,
            });
        }
        let lifetime = claims.exp.saturating_sub(claims.iat);
        if lifetime > max_lifetime_secs {
            return Err(EnvelopeError::LifetimeTooLong {
                lifetime,
                max: max_lifetime_secs,
            });
        }
        Ok(())
    }

    /// Decrypts the payload: checks again that the envelope is for `open.my_spiffe_id` and
    /// that PartyU/PartyV are the signed `iss`/`aud`, checks that the static key id is the
    /// SHA-256 of `open.sender_key_agreement_certificate`, then derives the key from
    /// ECDH(`open.my_key`, the sender's key-agreement key) and decrypts with the outer protected
    /// header as external AAD.
    pub fn decrypt(
        &self,
        open: &RecipientOpen<'_>,
        cache: &SharedSecretCache,
    ) -> Result<Vec<u8>, EnvelopeError> {
        self.check_audience(open.my_spiffe_id)?;
        self.parsed.check_bindings()?;
        if certificate_sha256(open.sender_key_agreement_certificate)
            != self.parsed.sender_key_agreement_key_id
        {
            return Err(EnvelopeError::KeyMismatch(
                "the sender's key-agreement certificate is not the one the static key id names",
            ));
        }
        self.parsed.inner.open(
            open.my_key,
            open.sender_key_agreement_public_key,
            &self.parsed.protected,
            cache,
        )
    }
}
