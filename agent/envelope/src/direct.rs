//! COSE_Encrypt (tag 96) with exactly one recipient using direct key agreement, ECDH-SS +
//! HKDF-256 (RFC 9053 §6.3), and AES-GCM content (RFC 9053 §4.1).
//!
//! This is the envelope's inner layer, and the one code path that derives keys and decrypts:
//! [`crate::SignedEnvelope::decrypt`] ends in [`DirectEncrypt::open`], and the COSE working group
//! examples are run through the same function. [`DirectEncrypt::parse`] accepts the general form
//! (A128GCM or A256GCM, static key or static key id, optional nonces); the envelope adds its own,
//! narrower profile on top.

use crate::cache::SharedSecretCache;
use crate::cbor::{self, Item};
use crate::kdf::{self, KdfContext, PartyInfo};
use crate::keys::{parse_public_key, KeyAgreementKey, SEC1_UNCOMPRESSED_LEN};
use crate::labels;
use crate::EnvelopeError;
use coset::cbor::value::Value;
use coset::iana::EnumI64;
use coset::{
    iana, Algorithm, AsCborValue, CborSerializable, CoseEncrypt, CoseKey, CoseRecipient, Header,
    Label, ProtectedHeader, RegisteredLabel, RegisteredLabelWithPrivate, TaggedCborSerializable,
};
use ring::aead;

/// The content encryption algorithms this crate decrypts. The envelope seals with A256GCM only;
/// A128GCM exists so that the COSE working group's 128-bit example runs through the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentAlgorithm {
    /// AES-GCM with a 128-bit key, COSE id 1.
    A128Gcm,
    /// AES-GCM with a 256-bit key, COSE id 3.
    A256Gcm,
}

impl ContentAlgorithm {
    /// The COSE algorithm id: `AlgorithmID` in the KDF context.
    pub fn id(self) -> i64 {
        match self {
            ContentAlgorithm::A128Gcm => iana::Algorithm::A128GCM as i64,
            ContentAlgorithm::A256Gcm => iana::Algorithm::A256GCM as i64,
        }
    }

    /// Key length in bits: `keyDataLength` in the KDF context.
    pub fn key_bits(self) -> u16 {
        match self {
            ContentAlgorithm::A128Gcm => 128,
            ContentAlgorithm::A256Gcm => 256,
        }
    }

    fn aead(self) -> &'static aead::Algorithm {
        match self {
            ContentAlgorithm::A128Gcm => &aead::AES_128_GCM,
            ContentAlgorithm::A256Gcm => &aead::AES_256_GCM,
        }
    }

    fn from_header(alg: &Option<Algorithm>) -> Result<Self, EnvelopeError> {
        match alg {
            Some(Algorithm::Assigned(iana::Algorithm::A128GCM)) => Ok(ContentAlgorithm::A128Gcm),
            Some(Algorithm::Assigned(iana::Algorithm::A256GCM)) => Ok(ContentAlgorithm::A256Gcm),
            Some(_) => Err(EnvelopeError::UnsupportedAlgorithm(
                "content's protected header",
            )),
            None => Err(EnvelopeError::Malformed("content algorithm missing")),
        }
    }
}

/// PartyU or PartyV information as carried in the recipient's headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Party {
    identity: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
    other: Option<Vec<u8>>,
}

impl Party {
    /// The identity (-21 / -24), if present.
    pub fn identity(&self) -> Option<&[u8]> {
        self.identity.as_deref()
    }

    /// The nonce (-22 / -25), if present.
    pub fn nonce(&self) -> Option<&[u8]> {
        self.nonce.as_deref()
    }

    /// The other information (-23 / -26), if present.
    pub fn other(&self) -> Option<&[u8]> {
        self.other.as_deref()
    }

    fn info(&self) -> PartyInfo<'_> {
        PartyInfo {
            identity: self.identity(),
            nonce: self.nonce(),
            other: self.other(),
        }
    }
}

/// The recipient structure of a direct ECDH-SS + HKDF-256 COSE_Encrypt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectRecipient {
    protected: Vec<u8>,
    key_id: Option<Vec<u8>>,
    static_key: Option<[u8; SEC1_UNCOMPRESSED_LEN]>,
    static_key_id: Option<Vec<u8>>,
    salt: Option<Vec<u8>>,
    party_u: Party,
    party_v: Party,
    sender_certificates: Vec<Vec<u8>>,
}

impl DirectRecipient {
    /// The serialized protected header (`{1: -27}`): `SuppPubInfo.protected` in the KDF context.
    pub fn protected(&self) -> &[u8] {
        &self.protected
    }

    /// `kid` (4): names the recipient's key; not used by the envelope.
    pub fn key_id(&self) -> Option<&[u8]> {
        self.key_id.as_deref()
    }

    /// Static key (-2): the sender's public key, uncompressed SEC1; not used by the envelope.
    pub fn static_key(&self) -> Option<&[u8; SEC1_UNCOMPRESSED_LEN]> {
        self.static_key.as_ref()
    }

    /// Static key id (-3): in the envelope, SHA-256 of the sender's key-agreement certificate.
    pub fn static_key_id(&self) -> Option<&[u8]> {
        self.static_key_id.as_deref()
    }

    /// HKDF salt (-20).
    pub fn salt(&self) -> Option<&[u8]> {
        self.salt.as_deref()
    }

    /// PartyU (the sender).
    pub fn party_u(&self) -> &Party {
        &self.party_u
    }

    /// PartyV (the recipient).
    pub fn party_v(&self) -> &Party {
        &self.party_v
    }

    /// `x5chain-sender` (-29): the sender's key-agreement certificate first; empty when absent.
    pub fn sender_certificates(&self) -> &[Vec<u8>] {
        &self.sender_certificates
    }
}

/// A parsed COSE_Encrypt with one direct ECDH-SS + HKDF-256 recipient; nothing decrypted yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectEncrypt {
    algorithm: ContentAlgorithm,
    protected: Vec<u8>,
    iv: [u8; labels::IV_LEN],
    ciphertext: Vec<u8>,
    recipient: DirectRecipient,
}

/// True if `header` sets nothing but what `allowed` lets through (coset keeps the core
/// parameters in fields and the rest in `rest`).
fn only(header: &Header, alg: bool, iv: bool, key_id: bool) -> bool {
    (alg || header.alg.is_none())
        && header.content_type.is_none()
        && (iv || header.iv.is_empty())
        && header.partial_iv.is_empty()
        && (key_id || header.key_id.is_empty())
        && header.counter_signatures.is_empty()
}

/// A header label as text, for error messages.
pub(crate) fn label_text(label: &RegisteredLabelWithPrivate<iana::HeaderParameter>) -> String {
    match label {
        RegisteredLabelWithPrivate::Assigned(p) => p.to_i64().to_string(),
        RegisteredLabelWithPrivate::PrivateUse(i) => i.to_string(),
        RegisteredLabelWithPrivate::Text(t) => t.clone(),
    }
}

/// Refuses any `crit` in a header of the inner layer: nothing there may be critical.
fn no_critical(header: &Header) -> Result<(), EnvelopeError> {
    match header.crit.first() {
        Some(label) => Err(EnvelopeError::UnknownCriticalHeader(label_text(label))),
        None => Ok(()),
    }
}

fn protected_bytes(header: &ProtectedHeader) -> Result<Vec<u8>, EnvelopeError> {
    header
        .original_data
        .clone()
        .ok_or(EnvelopeError::Malformed("protected header missing"))
}

fn static_key(value: Value) -> Result<[u8; SEC1_UNCOMPRESSED_LEN], EnvelopeError> {
    let key = CoseKey::from_cbor_value(value)
        .map_err(|_| EnvelopeError::Malformed("static key is not a COSE_Key"))?;
    let p256 = key.params.iter().any(|(label, value)| {
        *label == Label::Int(iana::Ec2KeyParameter::Crv as i64)
            && cbor::signed(value) == Some(iana::EllipticCurve::P_256 as i64)
    });
    if key.kty != RegisteredLabel::Assigned(iana::KeyType::EC2) || !p256 {
        return Err(EnvelopeError::UnsupportedAlgorithm("static key"));
    }
    let sec1 = key
        .to_sec1_octet_string()
        .map_err(|_| EnvelopeError::Malformed("static key has no usable coordinates"))?;
    parse_public_key(&sec1).map_err(|_| EnvelopeError::Malformed("static key is not on P-256"))?;
    <[u8; SEC1_UNCOMPRESSED_LEN]>::try_from(sec1.as_slice())
        .map_err(|_| EnvelopeError::Malformed("static key is not an uncompressed point"))
}

fn nonempty_bytes(value: Value, what: &'static str) -> Result<Vec<u8>, EnvelopeError> {
    cbor::bytes(value)
        .filter(|b| !b.is_empty())
        .ok_or(EnvelopeError::Malformed(what))
}

impl DirectRecipient {
    fn from_cose(r: CoseRecipient) -> Result<Self, EnvelopeError> {
        if !r.recipients.is_empty() {
            return Err(EnvelopeError::Malformed(
                "recipient has recipients of its own",
            ));
        }
        if !matches!(r.ciphertext.as_deref(), Some([])) {
            return Err(EnvelopeError::Malformed(
                "direct key agreement needs an empty recipient ciphertext",
            ));
        }
        no_critical(&r.protected.header)?;
        no_critical(&r.unprotected)?;
        match r.protected.header.alg {
            Some(Algorithm::Assigned(iana::Algorithm::ECDH_SS_HKDF_256)) => {}
            Some(_) => return Err(EnvelopeError::UnsupportedAlgorithm("recipient")),
            None => return Err(EnvelopeError::Malformed("recipient algorithm missing")),
        }
        if !only(&r.protected.header, true, false, false) || !r.protected.header.rest.is_empty() {
            return Err(EnvelopeError::Malformed(
                "unexpected parameter in the recipient's protected header",
            ));
        }
        if !only(&r.unprotected, false, false, true) {
            return Err(EnvelopeError::Malformed(
                "unexpected parameter in the recipient's unprotected header",
            ));
        }
        let mut out = DirectRecipient {
            protected: protected_bytes(&r.protected)?,
            key_id: Some(r.unprotected.key_id).filter(|k| !k.is_empty()),
            static_key: None,
            static_key_id: None,
            salt: None,
            party_u: Party::default(),
            party_v: Party::default(),
            sender_certificates: Vec::new(),
        };
        // coset refuses duplicate labels, so each arm runs at most once.
        for (label, value) in r.unprotected.rest {
            let Label::Int(label) = label else {
                return Err(EnvelopeError::Malformed(
                    "text label in the recipient's header",
                ));
            };
            match label {
                labels::STATIC_KEY => out.static_key = Some(static_key(value)?),
                labels::STATIC_KEY_ID => {
                    out.static_key_id = Some(nonempty_bytes(value, "static key id is not a bstr")?)
                }
                labels::SALT => out.salt = Some(nonempty_bytes(value, "salt is not a bstr")?),
                labels::PARTY_U_IDENTITY => {
                    out.party_u.identity =
                        Some(nonempty_bytes(value, "PartyU identity is not a bstr")?)
                }
                labels::PARTY_U_NONCE => {
                    out.party_u.nonce = Some(nonempty_bytes(value, "PartyU nonce is not a bstr")?)
                }
                labels::PARTY_U_OTHER => {
                    out.party_u.other = Some(nonempty_bytes(value, "PartyU other is not a bstr")?)
                }
                labels::PARTY_V_IDENTITY => {
                    out.party_v.identity =
                        Some(nonempty_bytes(value, "PartyV identity is not a bstr")?)
                }
                labels::PARTY_V_NONCE => {
                    out.party_v.nonce = Some(nonempty_bytes(value, "PartyV nonce is not a bstr")?)
                }
                labels::PARTY_V_OTHER => {
                    out.party_v.other = Some(nonempty_bytes(value, "PartyV other is not a bstr")?)
                }
                labels::X5CHAIN_SENDER => {
                    out.sender_certificates = cbor::certificates(value).ok_or(
                        EnvelopeError::Malformed("x5chain-sender is not a COSE_X509"),
                    )?
                }
                _ => {
                    return Err(EnvelopeError::Malformed(
                        "unexpected parameter in the recipient's unprotected header",
                    ))
                }
            }
        }
        if out.static_key.is_none() && out.static_key_id.is_none() {
            return Err(EnvelopeError::Malformed(
                "ECDH-SS needs a static key or a static key id",
            ));
        }
        Ok(out)
    }
}

impl DirectEncrypt {
    /// Strictly decodes a tagged COSE_Encrypt: AES-GCM content with a 12-byte IV in the
    /// unprotected header, one ECDH-SS + HKDF-256 recipient with its algorithm protected, an
    /// empty recipient ciphertext, only known header parameters, no trailing bytes. The caller
    /// bounds the input's size ([`crate::Envelope::parse`] does for the envelope).
    pub fn parse(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let malformed = || EnvelopeError::Malformed("not a tagged COSE_Encrypt");
        // As coset's `from_tagged_slice`, with the ciphertext copied once (exactly sized).
        let [protected, unprotected, ciphertext, recipients] =
            cbor::tagged_array::<4>(bytes, CoseEncrypt::TAG).ok_or_else(malformed)?;
        let Item::Other(Value::Array(recipients)) = recipients else {
            return Err(malformed());
        };
        let encrypt = CoseEncrypt {
            protected: ProtectedHeader::from_cbor_bstr(protected.into_value())
                .map_err(|_| malformed())?,
            unprotected: Header::from_cbor_value(unprotected.into_value())
                .map_err(|_| malformed())?,
            ciphertext: match ciphertext {
                Item::Bytes(c) => Some(c.to_vec()),
                Item::Other(Value::Null) => None,
                Item::Other(_) => return Err(malformed()),
            },
            recipients: recipients
                .into_iter()
                .map(CoseRecipient::from_cbor_value)
                .collect::<Result<_, _>>()
                .map_err(|_| malformed())?,
        };
        Self::from_cose(encrypt)
    }

    fn from_cose(encrypt: CoseEncrypt) -> Result<Self, EnvelopeError> {
        no_critical(&encrypt.protected.header)?;
        no_critical(&encrypt.unprotected)?;
        let algorithm = ContentAlgorithm::from_header(&encrypt.protected.header.alg)?;
        if !only(&encrypt.protected.header, true, false, false)
            || !encrypt.protected.header.rest.is_empty()
        {
            return Err(EnvelopeError::Malformed(
                "unexpected parameter in the content's protected header",
            ));
        }
        if !only(&encrypt.unprotected, false, true, false) || !encrypt.unprotected.rest.is_empty() {
            return Err(EnvelopeError::Malformed(
                "unexpected parameter in the content's unprotected header",
            ));
        }
        let iv = <[u8; labels::IV_LEN]>::try_from(encrypt.unprotected.iv.as_slice())
            .map_err(|_| EnvelopeError::Malformed("IV is not 12 bytes"))?;
        let ciphertext = encrypt
            .ciphertext
            .filter(|c| c.len() >= aead::MAX_TAG_LEN)
            .ok_or(EnvelopeError::Malformed(
                "ciphertext missing or shorter than a tag",
            ))?;
        let protected = protected_bytes(&encrypt.protected)?;
        let mut recipients = encrypt.recipients.into_iter();
        let (Some(recipient), None) = (recipients.next(), recipients.next()) else {
            return Err(EnvelopeError::Malformed("not exactly one recipient"));
        };
        Ok(DirectEncrypt {
            algorithm,
            protected,
            iv,
            ciphertext,
            recipient: DirectRecipient::from_cose(recipient)?,
        })
    }

    /// The content encryption algorithm.
    pub fn algorithm(&self) -> ContentAlgorithm {
        self.algorithm
    }

    /// The content's serialized protected header (`{1: alg}`).
    pub fn protected(&self) -> &[u8] {
        &self.protected
    }

    /// The AES-GCM IV.
    pub fn iv(&self) -> &[u8; labels::IV_LEN] {
        &self.iv
    }

    /// The ciphertext with its 16-byte tag.
    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }

    /// The one recipient.
    pub fn recipient(&self) -> &DirectRecipient {
        &self.recipient
    }

    /// The KDF context this message's content key is derived with.
    pub fn kdf_context(&self) -> KdfContext<'_> {
        KdfContext {
            algorithm_id: self.algorithm.id(),
            key_bits: self.algorithm.key_bits(),
            party_u: self.recipient.party_u.info(),
            party_v: self.recipient.party_v.info(),
            recipient_protected: &self.recipient.protected,
        }
    }

    /// Derives the content key from ECDH(`my_key`, `sender_public_key`) (through `cache`), the
    /// salt and the KDF context, and decrypts with `external_aad` in the `Enc_structure`.
    /// Which sender key to use is the caller's decision; nothing here checks identities.
    pub fn open(
        &self,
        my_key: &KeyAgreementKey,
        sender_public_key: &[u8],
        external_aad: &[u8],
        cache: &SharedSecretCache,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let secret = cache.shared_secret(my_key, sender_public_key)?;
        let cek = kdf::derive_key(&*secret, self.recipient.salt(), &self.kdf_context())?;
        let key = content_key(self.algorithm, &cek)?;
        let aad = cbor::enc_structure(&self.protected, external_aad);
        let mut buffer = self.ciphertext.clone();
        let plaintext_len = key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(self.iv),
                aead::Aad::from(aad.as_slice()),
                &mut buffer,
            )
            .map_err(|_| EnvelopeError::DecryptionFailed)?
            .len();
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }
}

fn content_key(
    algorithm: ContentAlgorithm,
    cek: &[u8],
) -> Result<aead::LessSafeKey, EnvelopeError> {
    aead::UnboundKey::new(algorithm.aead(), cek)
        .map(aead::LessSafeKey::new)
        .map_err(|_| EnvelopeError::InvalidKey("content key has the wrong length"))
}

/// What [`seal_a256gcm`] needs; every value is chosen by the envelope's sealing code.
pub(crate) struct DirectSeal<'a> {
    pub(crate) sender: &'a KeyAgreementKey,
    pub(crate) recipient_public_key: &'a [u8],
    pub(crate) static_key_id: &'a [u8],
    pub(crate) salt: &'a [u8],
    pub(crate) iv: [u8; labels::IV_LEN],
    pub(crate) party_u_identity: &'a [u8],
    pub(crate) party_v_identity: &'a [u8],
    pub(crate) sender_certificate: Option<&'a [u8]>,
    pub(crate) external_aad: &'a [u8],
    pub(crate) plaintext: &'a [u8],
}

/// `header` with its serialization kept: the exact bytes that are signed or authenticated.
pub(crate) fn serialized(header: Header) -> Result<ProtectedHeader, EnvelopeError> {
    let bytes = header
        .clone()
        .to_vec()
        .map_err(|_| EnvelopeError::EncodingFailed)?;
    Ok(ProtectedHeader {
        original_data: Some(bytes),
        header,
    })
}

/// Builds the tagged COSE_Encrypt of the envelope: A256GCM, the IV unprotected, one ECDH-SS +
/// HKDF-256 recipient `[{1: -27}, {-3, -20, -21, -24, ?-29}, h'']`.
pub(crate) fn seal_a256gcm(
    s: &DirectSeal<'_>,
    cache: &SharedSecretCache,
) -> Result<Vec<u8>, EnvelopeError> {
    let algorithm = ContentAlgorithm::A256Gcm;
    let content_protected = serialized(Header {
        alg: Some(Algorithm::Assigned(iana::Algorithm::A256GCM)),
        ..Header::default()
    })?;
    let recipient_protected = serialized(Header {
        alg: Some(Algorithm::Assigned(iana::Algorithm::ECDH_SS_HKDF_256)),
        ..Header::default()
    })?;
    let recipient_protected_bytes = recipient_protected
        .original_data
        .clone()
        .unwrap_or_default();
    let mut rest = vec![
        (
            Label::Int(labels::STATIC_KEY_ID),
            Value::Bytes(s.static_key_id.to_vec()),
        ),
        (Label::Int(labels::SALT), Value::Bytes(s.salt.to_vec())),
        (
            Label::Int(labels::PARTY_U_IDENTITY),
            Value::Bytes(s.party_u_identity.to_vec()),
        ),
        (
            Label::Int(labels::PARTY_V_IDENTITY),
            Value::Bytes(s.party_v_identity.to_vec()),
        ),
    ];
    if let Some(cert) = s.sender_certificate {
        rest.push((
            Label::Int(labels::X5CHAIN_SENDER),
            cbor::certificates_value(vec![cert.to_vec()]),
        ));
    }

    let context = KdfContext {
        algorithm_id: algorithm.id(),
        key_bits: algorithm.key_bits(),
        party_u: PartyInfo {
            identity: Some(s.party_u_identity),
            ..PartyInfo::default()
        },
        party_v: PartyInfo {
            identity: Some(s.party_v_identity),
            ..PartyInfo::default()
        },
        recipient_protected: &recipient_protected_bytes,
    };
    let secret = cache.shared_secret(s.sender, s.recipient_public_key)?;
    let cek = kdf::derive_key(&*secret, Some(s.salt), &context)?;
    let key = content_key(algorithm, &cek)?;
    let content_protected_bytes = content_protected.original_data.clone().unwrap_or_default();
    let aad = cbor::enc_structure(&content_protected_bytes, s.external_aad);
    // Room for the tag: appending it to an exactly-sized copy would copy the payload again.
    let mut ciphertext = Vec::with_capacity(s.plaintext.len() + key.algorithm().tag_len());
    ciphertext.extend_from_slice(s.plaintext);
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(s.iv),
        aead::Aad::from(aad.as_slice()),
        &mut ciphertext,
    )
    .map_err(|_| EnvelopeError::EncodingFailed)?;

    let encrypt = CoseEncrypt {
        protected: content_protected,
        unprotected: Header {
            iv: s.iv.to_vec(),
            ..Header::default()
        },
        ciphertext: Some(ciphertext),
        recipients: vec![CoseRecipient {
            protected: recipient_protected,
            unprotected: Header {
                rest,
                ..Header::default()
            },
            ciphertext: Some(Vec::new()),
            recipients: Vec::new(),
        }],
    };
    // The ciphertext plus headers, identities and the certificate: room for all of it.
    let capacity = s.plaintext.len()
        + s.external_aad.len()
        + s.party_u_identity.len()
        + s.party_v_identity.len()
        + s.sender_certificate.map_or(0, <[u8]>::len)
        + ENCODING_OVERHEAD;
    cbor::to_tagged_vec(encrypt, capacity)
}

/// More than the CBOR heads, labels, algorithm ids, key ids, salt, IV and tags of an envelope
/// take beyond its variable-length parts: a size hint, never a limit.
pub(crate) const ENCODING_OVERHEAD: usize = 512;
