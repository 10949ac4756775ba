//! Sealing: building the outer protected header, encrypting under it, then signing.

use crate::cache::SharedSecretCache;
use crate::cbor;
use crate::direct::{self, DirectSeal};
use crate::keys::{RecipientKeys, SenderKeys};
use crate::labels::{self, CTI_LEN, IV_LEN, MAX_DATA_TYPE_LEN, SALT_LEN, SESSION_ID_LEN};
use crate::random::RandomSource;
use crate::EnvelopeError;
use coset::cbor::value::Value;
use coset::{
    iana, Algorithm, ContentType, CoseSign1, Header, Label, ProtectedHeader,
    RegisteredLabelWithPrivate,
};

/// Everything one envelope says. Time and the session id come from the caller; the claim id,
/// salt and IV from the [`RandomSource`] given to [`seal`].
#[derive(Debug, Clone, Copy)]
pub struct SealRequest<'a> {
    /// The sender's identity and keys.
    pub sender: &'a SenderKeys,
    /// The target's identity and key-agreement key.
    pub recipient: &'a RecipientKeys,
    /// The data type policy knows the payload by (1 to 128 bytes).
    pub data_type: &'a str,
    /// The sender's session id: random, chosen once per sender process start.
    pub session_id: &'a [u8; SESSION_ID_LEN],
    /// The sequence number within the session.
    pub seq: u64,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds; must be after `iat`.
    pub exp: u64,
    /// The plaintext.
    pub payload: &'a [u8],
    /// Whether to send the device certificate (and its issuers) in `x5chain` and the
    /// key-agreement certificate in `x5chain-sender`, for a first contact or a broker.
    pub include_chain: bool,
}

fn check(request: &SealRequest<'_>) -> Result<(), EnvelopeError> {
    if request.data_type.is_empty() || request.data_type.len() > MAX_DATA_TYPE_LEN {
        return Err(EnvelopeError::InvalidRequest(
            "the data type must have 1 to 128 bytes",
        ));
    }
    if request.exp <= request.iat {
        return Err(EnvelopeError::InvalidRequest("`exp` must be after `iat`"));
    }
    Ok(())
}

/// The outer protected header, serialized once: what is signed and what the content's
/// `Enc_structure` takes as external AAD.
fn outer_protected(
    request: &SealRequest<'_>,
    cti: &[u8; CTI_LEN],
) -> Result<ProtectedHeader, EnvelopeError> {
    let int = |i: i64| Value::Integer(i.into());
    let claims = Value::Map(vec![
        (
            int(labels::CLAIM_ISS),
            Value::Text(request.sender.spiffe_id().to_owned()),
        ),
        (
            int(labels::CLAIM_AUD),
            Value::Text(request.recipient.spiffe_id().to_owned()),
        ),
        (int(labels::CLAIM_EXP), Value::Integer(request.exp.into())),
        (int(labels::CLAIM_IAT), Value::Integer(request.iat.into())),
        (int(labels::CLAIM_CTI), Value::Bytes(cti.to_vec())),
    ]);
    let x5t = Value::Array(vec![
        int(labels::SHA_256),
        Value::Bytes(request.sender.device_certificate_sha256().to_vec()),
    ]);
    let header = Header {
        alg: Some(Algorithm::Assigned(iana::Algorithm::ES256)),
        crit: vec![
            RegisteredLabelWithPrivate::Assigned(iana::HeaderParameter::CwtClaims),
            RegisteredLabelWithPrivate::PrivateUse(labels::DATA_TYPE),
            RegisteredLabelWithPrivate::PrivateUse(labels::SESSION_ID),
            RegisteredLabelWithPrivate::PrivateUse(labels::SEQUENCE),
        ],
        content_type: Some(ContentType::Assigned(iana::CoapContentFormat::CoseEncrypt)),
        rest: vec![
            (Label::Int(labels::CWT_CLAIMS), claims),
            (Label::Int(labels::X5T), x5t),
            (
                Label::Int(labels::DATA_TYPE),
                Value::Text(request.data_type.to_owned()),
            ),
            (
                Label::Int(labels::SESSION_ID),
                Value::Bytes(request.session_id.to_vec()),
            ),
            (
                Label::Int(labels::SEQUENCE),
                Value::Integer(request.seq.into()),
            ),
        ],
        ..Header::default()
    };
    direct::serialized(header)
}

/// Seals `request.payload` for `request.recipient`: a tagged COSE_Sign1 (ES256, the sender's
/// device key) whose payload is a tagged COSE_Encrypt (A256GCM, ECDH-SS + HKDF-256) bound to
/// the Sign1's protected header. Draws 44 bytes from `rng` (claim id, salt, IV, in that order)
/// plus ECDSA's nonce; uses `cache` for the ECDH shared secret.
pub fn seal(
    request: &SealRequest<'_>,
    rng: &dyn RandomSource,
    cache: &SharedSecretCache,
) -> Result<Vec<u8>, EnvelopeError> {
    seal_with_id(request, rng, cache).map(|(envelope, _)| envelope)
}

/// [`seal`], with the message's claim id (`cti`), which the sender needs to match the
/// receipt (saves parsing the envelope again).
pub fn seal_with_id(
    request: &SealRequest<'_>,
    rng: &dyn RandomSource,
    cache: &SharedSecretCache,
) -> Result<(Vec<u8>, [u8; CTI_LEN]), EnvelopeError> {
    check(request)?;
    let mut cti = [0u8; CTI_LEN];
    rng.fill(&mut cti)?;
    let mut salt = [0u8; SALT_LEN];
    rng.fill(&mut salt)?;
    let mut iv = [0u8; IV_LEN];
    rng.fill(&mut iv)?;

    // The outer protected header is built first: the content's AAD is its serialization.
    let protected = outer_protected(request, &cti)?;
    let protected_bytes = protected.original_data.clone().unwrap_or_default();
    let sender = request.sender;
    let inner = direct::seal_a256gcm(
        &DirectSeal {
            sender: sender.key_agreement_key(),
            recipient_public_key: request.recipient.key_agreement_public_key(),
            static_key_id: sender.key_agreement_certificate_sha256(),
            salt: &salt,
            iv,
            party_u_identity: sender.spiffe_id().as_bytes(),
            party_v_identity: request.recipient.spiffe_id().as_bytes(),
            sender_certificate: request
                .include_chain
                .then(|| sender.key_agreement_certificate()),
            external_aad: &protected_bytes,
            plaintext: request.payload,
        },
        cache,
    )?;

    let to_be_signed = cbor::sig_structure1(&protected_bytes, &inner);
    let signature = sender
        .signing_key()
        .sign(rng.signing_rng(), &to_be_signed)
        .map_err(|_| EnvelopeError::SigningFailed)?;
    if signature.as_ref().len() != 64 {
        // A key made for ASN.1 DER signatures: COSE needs r || s.
        return Err(EnvelopeError::SigningFailed);
    }

    let mut unprotected = Header::default();
    if request.include_chain {
        let mut chain = Vec::with_capacity(1 + sender.issuers().len());
        chain.push(sender.device_certificate().to_vec());
        chain.extend(sender.issuers().iter().cloned());
        unprotected
            .rest
            .push((Label::Int(labels::X5CHAIN), cbor::certificates_value(chain)));
    }
    let chain_len = if request.include_chain {
        sender.device_certificate().len() + sender.issuers().iter().map(Vec::len).sum::<usize>()
    } else {
        0
    };
    let capacity = inner.len() + protected_bytes.len() + chain_len + direct::ENCODING_OVERHEAD;
    cbor::to_tagged_vec(
        CoseSign1 {
            protected,
            unprotected,
            payload: Some(inner),
            signature: signature.as_ref().to_vec(),
        },
        capacity,
    )
    .map(|envelope| (envelope, cti))
}
