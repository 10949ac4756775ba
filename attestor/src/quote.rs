//! Quote verification. A quote is accepted only if every check passes, in this order:
//! the key is an attestation key (restricted signing key made in and bound to its TPM), the
//! quote parses, the signature verifies with that key, the qualified signer is that key under
//! the enrolled EK, the nonce is the one issued, the PCR selection is the one requested, the
//! PCR values hash to the quoted digest, and the event log (if given) replays to those
//! values. Any failure is an error: nothing is ever half-accepted.

use crate::eventlog::EventLog;
use crate::tpm::{self, attr, PcrSelection, Public, PublicKey, Quote, Signature};
use crate::ParseError;
use std::collections::BTreeMap;

/// Why a quote is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A structure does not parse.
    #[error("malformed {what}: {source}")]
    Malformed {
        /// Which input.
        what: &'static str,
        /// Why.
        source: ParseError,
    },
    /// The key is not a restricted signing key bound to its TPM.
    #[error("the key is not an attestation key: {0}")]
    NotAnAttestationKey(&'static str),
    /// The signature does not verify with the enrolled attestation key.
    #[error("quote signature does not verify with the enrolled attestation key")]
    BadSignature,
    /// The quote names another signer.
    #[error("quote was signed by another key than the enrolled attestation key")]
    WrongSigner,
    /// `extraData` is not the nonce issued.
    #[error("quote does not carry the nonce issued for it")]
    NonceMismatch,
    /// The PCRs quoted are not the ones requested.
    #[error("quoted PCR selection differs from the one requested")]
    SelectionMismatch,
    /// The PCR values sent do not match the quote.
    #[error("PCR values do not match the quoted digest")]
    PcrDigestMismatch,
    /// The PCR values sent are not exactly the selected ones.
    #[error("PCR values sent do not match the selection: {0}")]
    PcrValuesIncomplete(String),
    /// The event log does not replay to the quoted values.
    #[error("event log does not replay to the quoted value of PCR {0}")]
    EventLogMismatch(u8),
}

/// What the verifier expects of a quote.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// The attestation key bound at enrollment.
    pub ak: &'a Public,
    /// The qualified name of the AK's parent (the enrolled EK's qualified name).
    pub parent_qualified_name: &'a [u8],
    /// The nonce issued for this quote.
    pub nonce: &'a [u8],
    /// The PCRs requested.
    pub selection: &'a PcrSelection,
}

/// What a device sends.
#[derive(Debug, Clone)]
pub struct Evidence<'a> {
    /// `TPMS_ATTEST` bytes.
    pub attest: &'a [u8],
    /// `TPMT_SIGNATURE` bytes.
    pub signature: &'a [u8],
    /// SHA-256 PCR values, by index: exactly the selected PCRs.
    pub pcr_values: &'a BTreeMap<u8, [u8; 32]>,
    /// The crypto-agile event log, if the device has one.
    pub event_log: Option<&'a [u8]>,
}

/// An accepted quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The parsed quote.
    pub quote: Quote,
    /// The quoted SHA-256 PCR values.
    pub pcrs: BTreeMap<u8, [u8; 32]>,
    /// The event log, if one was sent.
    pub event_log: Option<EventLog>,
}

/// Checks that `key` is fit to be an attestation key.
pub fn check_attestation_key(key: &Public) -> Result<(), VerifyError> {
    let required = attr::FIXED_TPM
        | attr::FIXED_PARENT
        | attr::SENSITIVE_DATA_ORIGIN
        | attr::RESTRICTED
        | attr::SIGN;
    if !key.has_attributes(required, attr::DECRYPT) {
        return Err(VerifyError::NotAnAttestationKey(
            "needs fixedTPM, fixedParent, sensitiveDataOrigin, restricted and sign, and not decrypt",
        ));
    }
    Ok(())
}

fn verify_signature(key: &Public, message: &[u8], sig: &Signature) -> Result<(), VerifyError> {
    use ring::signature::{self as rs, UnparsedPublicKey};
    let ok = match (&key.key, sig) {
        (PublicKey::EccP256 { x, y }, Signature::Ecdsa { hash, r, s })
            if *hash == tpm::ALG_SHA256 =>
        {
            let pad = |v: &[u8]| -> Option<[u8; 32]> {
                let first = v.iter().position(|&b| b != 0).unwrap_or(v.len());
                let t = v.get(first..)?;
                let mut out = [0u8; 32];
                out.get_mut(32usize.checked_sub(t.len())?..)?
                    .copy_from_slice(t);
                Some(out)
            };
            let (Some(r), Some(s)) = (pad(r), pad(s)) else {
                return Err(VerifyError::BadSignature);
            };
            let mut point = vec![0x04];
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            let mut fixed = r.to_vec();
            fixed.extend_from_slice(&s);
            UnparsedPublicKey::new(&rs::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, &fixed)
                .is_ok()
        }
        (PublicKey::Rsa { modulus, exponent }, Signature::RsaSsa { hash, sig })
            if *hash == tpm::ALG_SHA256 =>
        {
            rs::RsaPublicKeyComponents {
                n: modulus.as_slice(),
                e: &exponent.to_be_bytes()[..],
            }
            .verify(&rs::RSA_PKCS1_2048_8192_SHA256, message, sig)
            .is_ok()
        }
        (PublicKey::Rsa { modulus, exponent }, Signature::RsaPss { hash, sig })
            if *hash == tpm::ALG_SHA256 =>
        {
            rs::RsaPublicKeyComponents {
                n: modulus.as_slice(),
                e: &exponent.to_be_bytes()[..],
            }
            .verify(&rs::RSA_PSS_2048_8192_SHA256, message, sig)
            .is_ok()
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

/// The digest a TPM quotes over `values` of the SHA-256 bank: SHA-256 of the values in
/// ascending PCR order.
pub fn pcr_digest(values: &BTreeMap<u8, [u8; 32]>) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for v in values.values() {
        ctx.update(v);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Verifies `evidence` against what was `expected`.
pub fn verify_quote(
    expected: &Expected<'_>,
    evidence: &Evidence<'_>,
) -> Result<Verified, VerifyError> {
    check_attestation_key(expected.ak)?;
    let quote = Quote::parse(evidence.attest).map_err(|source| VerifyError::Malformed {
        what: "quote",
        source,
    })?;
    let sig = Signature::parse(evidence.signature).map_err(|source| VerifyError::Malformed {
        what: "signature",
        source,
    })?;
    verify_signature(expected.ak, evidence.attest, &sig)?;
    let qualified = tpm::qualified_name(expected.parent_qualified_name, &expected.ak.name());
    if quote.qualified_signer != qualified {
        return Err(VerifyError::WrongSigner);
    }
    // The nonce is not a secret (it travelled to the device in the clear): plain equality.
    if quote.extra_data.as_slice() != expected.nonce {
        return Err(VerifyError::NonceMismatch);
    }
    if quote.selection != *expected.selection {
        return Err(VerifyError::SelectionMismatch);
    }
    // Only the SHA-256 bank is quoted and checked.
    let selected: Vec<u8> = match quote.selection.0.as_slice() {
        [bank] if bank.hash == tpm::ALG_SHA256 => bank.pcrs.clone(),
        _ => {
            return Err(VerifyError::PcrValuesIncomplete(
                "only a single SHA-256 bank can be verified".into(),
            ))
        }
    };
    let sent: Vec<u8> = evidence.pcr_values.keys().copied().collect();
    if sent != selected {
        return Err(VerifyError::PcrValuesIncomplete(format!(
            "selected {selected:?}, sent {sent:?}"
        )));
    }
    if pcr_digest(evidence.pcr_values).as_slice() != quote.pcr_digest.as_slice() {
        return Err(VerifyError::PcrDigestMismatch);
    }
    let event_log = match evidence.event_log {
        None => None,
        Some(bytes) => {
            let log = EventLog::parse(bytes).map_err(|source| VerifyError::Malformed {
                what: "event log",
                source,
            })?;
            let replayed = log.replay().map_err(|source| VerifyError::Malformed {
                what: "event log",
                source,
            })?;
            for (pcr, value) in evidence.pcr_values {
                let expected_value = replayed.get(pcr).copied().unwrap_or([0u8; 32]);
                if expected_value != *value {
                    return Err(VerifyError::EventLogMismatch(*pcr));
                }
            }
            Some(log)
        }
    };
    Ok(Verified {
        quote,
        pcrs: evidence.pcr_values.clone(),
        event_log,
    })
}
