//! The device's TPM: the RSA-2048 endorsement key (EK), an ECC P-256 attestation key (AK)
//! under it, credential activation and quotes.
//!
//! Nothing is kept loaded between operations: each call recreates the EK (a primary key is
//! derived from the TPM's seed, so it is the same key every time), loads the AK from its
//! blobs, does its work and flushes every object and session it loaded, on every path, errors
//! included. A TPM without a resource manager (swtpm, `/dev/tpm0`) has only a few slots, and
//! a handle left behind would outlive this process.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;
use tss_esapi::abstraction::{ak, ek, pcr, AsymmetricAlgorithmSelection};
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, PcrHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Data, Digest, DigestValues, EncryptedSecret, IdObject, PcrSelectionList,
    PcrSlot, Private, Public, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;

/// First handle of transient objects (`TPM_HT_TRANSIENT`).
const TRANSIENT_FIRST: u32 = 0x8000_0000;
/// First handle of loaded sessions (`TPM_HT_LOADED_SESSION`).
const LOADED_SESSION_FIRST: u32 = 0x0200_0000;
/// NV index of the RSA-2048 EK certificate (TCG EK Credential Profile).
const RSA_EK_CERT_NV_INDEX: u32 = 0x01c0_0002;
/// Highest PCR index a quote may select (a 3-byte selection bitmap).
pub const MAX_PCR: u8 = 23;
/// Longest nonce (qualifying data) a TPM accepts: a SHA-512 digest.
pub const MAX_NONCE: usize = 64;
/// Times a quote is retaken when a PCR changed between reading the values and quoting.
const QUOTE_ATTEMPTS: usize = 3;

/// Why a TPM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI string does not parse.
    #[error("invalid TPM connection `{0}`: {1}")]
    Tcti(String, tss_esapi::Error),
    /// A TPM command (or the TSS around it) failed.
    #[error("TPM {what} failed: {source}")]
    Command {
        /// The operation.
        what: &'static str,
        /// The TSS error (a TPM response code or a wrapper error).
        source: tss_esapi::Error,
    },
    /// An input was refused before it reached the TPM.
    #[error("invalid {0}")]
    Input(&'static str),
    /// The PCR values kept changing while a quote was taken.
    #[error("PCR values changed during every quote attempt")]
    PcrsUnstable,
}

/// A TPM result with the operation's name attached to the error.
trait Context2<T> {
    fn during(self, what: &'static str) -> Result<T, TpmError>;
}

impl<T> Context2<T> for Result<T, tss_esapi::Error> {
    fn during(self, what: &'static str) -> Result<T, TpmError> {
        self.map_err(|source| TpmError::Command { what, source })
    }
}

/// The endorsement key's public parts, as sent at enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endorsement {
    /// Marshalled `TPMT_PUBLIC` of the RSA-2048 EK (no size prefix).
    #[serde(with = "b64")]
    pub public: Vec<u8>,
    /// The EK certificate (DER) from NV, if the manufacturer provisioned one.
    #[serde(with = "b64_option")]
    pub certificate: Option<Vec<u8>>,
}

/// The attestation key as the TPM wrapped it: reloadable under the same EK, useless elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AkBlobs {
    /// `TPM2B_PRIVATE` buffer contents (encrypted by the TPM under the EK).
    #[serde(with = "b64")]
    pub private: Vec<u8>,
    /// Marshalled `TPMT_PUBLIC` (no size prefix).
    #[serde(with = "b64")]
    pub public: Vec<u8>,
}

/// A quote with the PCR values it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quoted {
    /// Marshalled `TPMS_ATTEST` (no size prefix).
    #[serde(with = "b64")]
    pub attest: Vec<u8>,
    /// Marshalled `TPMT_SIGNATURE`.
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
    /// The SHA-256 values of the quoted PCRs, by index.
    pub pcr_values: BTreeMap<u8, [u8; 32]>,
}

/// An open connection to a TPM.
pub struct Tpm {
    ctx: Context,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tpm")
    }
}

impl Tpm {
    /// Connects through `tcti`, e.g. `swtpm:host=127.0.0.1,port=2321` or `device:/dev/tpmrm0`.
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|e| TpmError::Tcti(tcti.to_owned(), e))?;
        let ctx = Context::new(conf).during("connection")?;
        Ok(Self { ctx })
    }

    /// Recreates the RSA-2048 EK and returns its public area and certificate (if any).
    pub fn endorsement(&mut self) -> Result<Endorsement, TpmError> {
        let public = with_ek(&mut self.ctx, |ctx, ek| {
            let (public, _, _) = ctx.read_public(ek).during("reading the EK")?;
            public.marshall().during("marshalling the EK")
        })?;
        let certificate = self.ek_certificate()?;
        Ok(Endorsement {
            public,
            certificate,
        })
    }

    /// The RSA EK certificate from NV; `None` when the index is not defined.
    fn ek_certificate(&mut self) -> Result<Option<Vec<u8>>, TpmError> {
        let (data, _) = self
            .ctx
            .execute_without_session(|ctx| {
                ctx.get_capability(CapabilityType::Handles, RSA_EK_CERT_NV_INDEX, 1)
            })
            .during("listing NV indices")?;
        let defined = match data {
            CapabilityData::Handles(list) => {
                list.iter().any(|h| u32::from(*h) == RSA_EK_CERT_NV_INDEX)
            }
            _ => false,
        };
        if !defined {
            return Ok(None);
        }
        let cert = ek::retrieve_ek_pubcert(
            &mut self.ctx,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        )
        .during("reading the EK certificate")?;
        Ok(Some(cert))
    }

    /// Creates a new ECC P-256 ECDSA-SHA256 attestation key under the EK.
    pub fn create_ak(&mut self) -> Result<AkBlobs, TpmError> {
        with_ek(&mut self.ctx, |ctx, ek| {
            let created = ak::create_ak(
                ctx,
                ek,
                HashingAlgorithm::Sha256,
                SignatureSchemeAlgorithm::EcDsa,
                None,
                None,
            )
            .during("creating the AK")?;
            Ok(AkBlobs {
                private: created.out_private.value().to_vec(),
                public: created.out_public.marshall().during("marshalling the AK")?,
            })
        })
    }

    /// `TPM2_ActivateCredential`: recovers the secret a server wrapped for this AK under this
    /// EK. `id_object` and `encrypted_secret` are `TPM2B_ID_OBJECT` and
    /// `TPM2B_ENCRYPTED_SECRET`, each with its 2-byte size prefix.
    pub fn activate_credential(
        &mut self,
        ak_blobs: &AkBlobs,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let id_object = IdObject::try_from(strip_tpm2b(id_object, "credential id object")?)
            .map_err(|_| TpmError::Input("credential id object"))?;
        let secret = EncryptedSecret::try_from(strip_tpm2b(encrypted_secret, "encrypted secret")?)
            .map_err(|_| TpmError::Input("encrypted secret"))?;
        with_ak(&mut self.ctx, ak_blobs, |ctx, ek, ak| {
            // Session 1 authorizes the AK (empty auth, HMAC); session 2 the EK, whose policy is
            // PolicySecret(TPM_RH_ENDORSEMENT).
            let hmac = start_session(ctx, SessionType::Hmac)?;
            with_session(ctx, hmac, |ctx| {
                let policy = start_session(ctx, SessionType::Policy)?;
                with_session(ctx, policy, |ctx| {
                    let policy_session =
                        PolicySession::try_from(policy).during("starting the policy session")?;
                    ctx.execute_with_session(Some(hmac), |ctx| {
                        ctx.policy_secret(
                            policy_session,
                            AuthHandle::Endorsement,
                            Default::default(),
                            Default::default(),
                            Default::default(),
                            None,
                        )
                    })
                    .during("authorizing the EK")?;
                    let digest = ctx
                        .execute_with_sessions((Some(hmac), Some(policy), None), |ctx| {
                            ctx.activate_credential(ak, ek, id_object, secret)
                        })
                        .during("activating the credential")?;
                    Ok(digest.value().to_vec())
                })
            })
        })
    }

    /// Quotes the SHA-256 bank's `pcrs` with the AK, `nonce` as qualifying data, and returns
    /// the quote with the values it covers (read before and after; retaken if they moved).
    pub fn quote(
        &mut self,
        ak_blobs: &AkBlobs,
        nonce: &[u8],
        pcrs: &[u8],
    ) -> Result<Quoted, TpmError> {
        if nonce.len() > MAX_NONCE {
            return Err(TpmError::Input("nonce (longer than 64 bytes)"));
        }
        let selection = selection(pcrs)?;
        let data = Data::try_from(nonce.to_vec()).map_err(|_| TpmError::Input("nonce"))?;
        with_ak(&mut self.ctx, ak_blobs, |ctx, _ek, ak| {
            for _ in 0..QUOTE_ATTEMPTS {
                let before = read_pcrs(ctx, &selection, pcrs)?;
                let (attest, signature) = ctx
                    .execute_with_nullauth_session(|ctx| {
                        ctx.quote(ak, data.clone(), SignatureScheme::Null, selection.clone())
                    })
                    .during("quoting")?;
                let after = read_pcrs(ctx, &selection, pcrs)?;
                if before == after {
                    return Ok(Quoted {
                        attest: attest.marshall().during("marshalling the quote")?,
                        signature: signature.marshall().during("marshalling the signature")?,
                        pcr_values: after,
                    });
                }
            }
            Err(TpmError::PcrsUnstable)
        })
    }

    /// Extends SHA-256 PCR `pcr` with `digest` (what firmware does when it measures).
    pub fn pcr_extend(&mut self, pcr: u8, digest: &[u8; 32]) -> Result<(), TpmError> {
        if pcr > MAX_PCR {
            return Err(TpmError::Input("PCR index"));
        }
        let handle =
            PcrHandle::try_from(u32::from(pcr)).map_err(|_| TpmError::Input("PCR index"))?;
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(digest.to_vec()).map_err(|_| TpmError::Input("digest"))?,
        );
        self.ctx
            .execute_with_nullauth_session(|ctx| ctx.pcr_extend(handle, values))
            .during("extending a PCR")
    }

    /// How many transient objects and sessions are loaded in the TPM (all clients together):
    /// a health check that this code leaves nothing behind.
    pub fn loaded_handles(&mut self) -> Result<usize, TpmError> {
        let mut count = 0;
        for first in [TRANSIENT_FIRST, LOADED_SESSION_FIRST] {
            let (data, _) = self
                .ctx
                .execute_without_session(|ctx| {
                    ctx.get_capability(CapabilityType::Handles, first, 64)
                })
                .during("listing loaded handles")?;
            if let CapabilityData::Handles(list) = data {
                // The TPM lists handles from `first` upwards, in its own range only.
                count += list
                    .iter()
                    .filter(|h| u32::from(**h) >> 24 == first >> 24)
                    .count();
            }
        }
        Ok(count)
    }
}

/// Removes the 2-byte size prefix of a `TPM2B`, checking that it matches the length.
fn strip_tpm2b<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a [u8], TpmError> {
    match bytes {
        [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => {
            Ok(rest)
        }
        _ => Err(TpmError::Input(what)),
    }
}

/// The SHA-256 selection of `pcrs`.
fn selection(pcrs: &[u8]) -> Result<PcrSelectionList, TpmError> {
    if pcrs.is_empty() {
        return Err(TpmError::Input("PCR selection (empty)"));
    }
    let slots = pcrs
        .iter()
        .map(|&p| {
            if p > MAX_PCR {
                return Err(TpmError::Input("PCR index"));
            }
            PcrSlot::try_from(1u32 << p).map_err(|_| TpmError::Input("PCR index"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionList::builder()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(|_| TpmError::Input("PCR selection"))
}

/// Reads the SHA-256 values of `pcrs` (all of them, in as many reads as the TPM needs).
fn read_pcrs(
    ctx: &mut Context,
    selection: &PcrSelectionList,
    pcrs: &[u8],
) -> Result<BTreeMap<u8, [u8; 32]>, TpmError> {
    let data = ctx
        .execute_without_session(|ctx| pcr::read_all(ctx, selection.clone()))
        .during("reading PCRs")?;
    let bank = data
        .pcr_bank(HashingAlgorithm::Sha256)
        .ok_or(TpmError::Input("PCR bank (no SHA-256 values returned)"))?;
    let mut values = BTreeMap::new();
    for &p in pcrs {
        let slot = PcrSlot::try_from(1u32 << p).map_err(|_| TpmError::Input("PCR index"))?;
        let digest = bank
            .get_digest(slot)
            .ok_or(TpmError::Input("PCR bank (a selected PCR is missing)"))?;
        let value = <[u8; 32]>::try_from(digest.value())
            .map_err(|_| TpmError::Input("PCR value (not 32 bytes)"))?;
        values.insert(p, value);
    }
    Ok(values)
}

/// Runs `f`, then flushes `handle` whatever `f` returned. `f`'s error wins over a flush error.
fn flushing<T>(
    ctx: &mut Context,
    handle: ObjectHandle,
    f: impl FnOnce(&mut Context) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let result = f(ctx);
    let flushed = ctx.flush_context(handle).during("flushing a handle");
    match (result, flushed) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e),
        (Ok(v), Ok(())) => Ok(v),
    }
}

/// Creates the EK, runs `f` with it, and flushes it.
fn with_ek<T>(
    ctx: &mut Context,
    f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let ek = ek::create_ek_object(ctx, AsymmetricAlgorithm::Rsa, None).during("creating the EK")?;
    flushing(ctx, ek.into(), |ctx| f(ctx, ek))
}

/// Creates the EK, loads the AK under it, runs `f` with both, and flushes both.
fn with_ak<T>(
    ctx: &mut Context,
    blobs: &AkBlobs,
    f: impl FnOnce(&mut Context, KeyHandle, KeyHandle) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let private =
        Private::try_from(blobs.private.clone()).map_err(|_| TpmError::Input("AK private blob"))?;
    let public =
        Public::unmarshall(&blobs.public).map_err(|_| TpmError::Input("AK public area"))?;
    with_ek(ctx, |ctx, ek| {
        let ak = ak::load_ak(ctx, ek, None, private, public).during("loading the AK")?;
        flushing(ctx, ak.into(), |ctx| f(ctx, ek, ak))
    })
}

/// Starts an unbound, unsalted session of `kind` (AES-128-CFB parameter encryption, SHA-256).
fn start_session(ctx: &mut Context, kind: SessionType) -> Result<AuthSession, TpmError> {
    ctx.start_auth_session(
        None,
        None,
        None,
        kind,
        SymmetricDefinition::AES_128_CFB,
        HashingAlgorithm::Sha256,
    )
    .during("starting a session")?
    .ok_or(TpmError::Command {
        what: "starting a session",
        source: tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
    })
}

/// Runs `f`, then flushes `session`.
fn with_session<T>(
    ctx: &mut Context,
    session: AuthSession,
    f: impl FnOnce(&mut Context) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    flushing(ctx, SessionHandle::from(session).into(), f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpm2b_prefixes_must_match_the_length() {
        assert_eq!(strip_tpm2b(&[0, 2, 7, 8], "x").ok(), Some(&[7u8, 8][..]));
        assert!(strip_tpm2b(&[0, 3, 7, 8], "x").is_err());
        assert!(strip_tpm2b(&[0, 1, 7, 8], "x").is_err());
        assert!(strip_tpm2b(&[0], "x").is_err());
        assert_eq!(strip_tpm2b(&[0, 0], "x").ok(), Some(&[][..]));
    }

    #[test]
    fn selections_refuse_empty_and_out_of_range_pcrs() {
        assert!(selection(&[]).is_err());
        assert!(selection(&[24]).is_err());
        assert!(selection(&[255]).is_err());
        assert!(selection(&[0, 7, 23]).is_ok());
    }

    #[test]
    fn ak_blobs_round_trip_through_json() {
        let blobs = AkBlobs {
            private: vec![1, 2, 3],
            public: vec![0, 0x23, 0xff],
        };
        let text = serde_json::to_string(&blobs).unwrap();
        assert_eq!(text, r#"{"private":"AQID","public":"ACP/"}"#);
        let back: AkBlobs = serde_json::from_str(&text).unwrap();
        assert_eq!(back, blobs);
    }
}

/// The AK blobs are kept in the state directory as standard base64 strings (and cross to
/// the TPM helper as such).
pub(crate) mod b64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&vouch_proto::encoding::base64(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        vouch_proto::encoding::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

/// An optional byte string as standard base64, or null.
pub(crate) mod b64_option {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => super::b64::serialize(bytes, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| vouch_proto::encoding::from_base64(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}
