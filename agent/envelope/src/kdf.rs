//! The COSE key derivation of RFC 9053 §5: HKDF-SHA-256 over the ECDH shared secret, with the
//! `COSE_KDF_Context` as `info`. Used alike by the envelope and by [`crate::direct`] for the COSE
//! working group examples.

use crate::EnvelopeError;
use coset::cbor::value::Value;
use ring::hkdf;
use zeroize::Zeroizing;

/// `PartyInfo` of the KDF context: `[identity, nonce, other]`, each `nil` when absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartyInfo<'a> {
    /// The party's identity (header -21 or -24).
    pub identity: Option<&'a [u8]>,
    /// A nonce (header -22 or -25; only the `bstr` form is supported).
    pub nonce: Option<&'a [u8]>,
    /// Other information (header -23 or -26).
    pub other: Option<&'a [u8]>,
}

impl PartyInfo<'_> {
    fn to_value(self) -> Value {
        let item = |v: Option<&[u8]>| v.map_or(Value::Null, |b| Value::Bytes(b.to_vec()));
        Value::Array(vec![
            item(self.identity),
            item(self.nonce),
            item(self.other),
        ])
    }
}

/// `COSE_KDF_Context` (RFC 9053 §5.2) without `SuppPrivInfo` and without `SuppPubInfo.other`:
/// `[AlgorithmID, PartyUInfo, PartyVInfo, [keyDataLength, protected]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfContext<'a> {
    /// The algorithm the derived key is for (3 = A256GCM, 1 = A128GCM, ...).
    pub algorithm_id: i64,
    /// Length of the derived key in bits (a multiple of 8).
    pub key_bits: u16,
    /// PartyU: the sender.
    pub party_u: PartyInfo<'a>,
    /// PartyV: the recipient.
    pub party_v: PartyInfo<'a>,
    /// The recipient structure's serialized protected header (empty when it has none).
    pub recipient_protected: &'a [u8],
}

impl KdfContext<'_> {
    /// The context's CBOR encoding: HKDF's `info`.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let value = Value::Array(vec![
            Value::Integer(self.algorithm_id.into()),
            self.party_u.to_value(),
            self.party_v.to_value(),
            Value::Array(vec![
                Value::Integer(self.key_bits.into()),
                Value::Bytes(self.recipient_protected.to_vec()),
            ]),
        ]);
        let mut out = Vec::with_capacity(64 + self.recipient_protected.len());
        coset::cbor::ser::into_writer(&value, &mut out)
            .map_err(|_| EnvelopeError::EncodingFailed)?;
        Ok(out)
    }
}

struct OutputLen(usize);

impl hkdf::KeyType for OutputLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA-256 (RFC 5869) of `shared_secret` with `salt` (none: HashLen zero bytes) and the
/// encoded `context` as `info`; `context.key_bits / 8` bytes of output.
pub fn derive_key(
    shared_secret: &[u8],
    salt: Option<&[u8]>,
    context: &KdfContext<'_>,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    if context.key_bits == 0 || context.key_bits % 8 != 0 {
        return Err(EnvelopeError::InvalidRequest(
            "key length must be a positive multiple of 8 bits",
        ));
    }
    let info = context.encode()?;
    let len = usize::from(context.key_bits / 8);
    // An empty HMAC key is the same as HashLen zero bytes (the RFC 5869 default salt).
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt.unwrap_or(&[])).extract(shared_secret);
    let info = [info.as_slice()];
    let okm = prk
        .expand(&info, OutputLen(len))
        .map_err(|_| EnvelopeError::InvalidRequest("key length too long for HKDF-SHA-256"))?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    okm.fill(&mut out)
        .map_err(|_| EnvelopeError::InvalidRequest("key length too long for HKDF-SHA-256"))?;
    Ok(out)
}
