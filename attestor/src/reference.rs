//! Reference values: what a verified quote must show, per device class. A class accepts
//! several sets at once, so a fleet can roll from firmware N to N+1 without quarantining the
//! devices still on N; a quote passes if it meets every check of at least one set:
//!
//! - **firmware integrity**: the boot PCRs equal the set's values;
//! - **configuration compliance**: the configuration PCR holds one of the set's accepted
//!   configuration digests;
//! - **security patch level**: the TPM-reported firmware version is at least the set's
//!   minimum.
//!
//! The file (`reference-values.json`, kept in Git with the policies):
//! ```json
//! { "device_classes": { "sensor": { "pcrs": [0,1,2,3,4,5,6,7,8], "accepted": [
//!     { "name": "fw-2.1", "firmware": { "0": "<hex>", "1": "<hex>" },
//!       "config": { "pcr": 8, "digests": ["<hex>"] }, "min_firmware_version": 0 } ] } } }
//! ```

use crate::quote::Verified;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Largest reference file accepted.
pub const MAX_REFERENCE_BYTES: usize = 1024 * 1024;

/// Reference values of every device class.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceValues {
    /// By device class.
    pub device_classes: BTreeMap<String, ClassReference>,
}

/// One device class.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassReference {
    /// The SHA-256 PCRs to quote.
    pub pcrs: Vec<u8>,
    /// Accepted sets; the quote must meet one.
    pub accepted: Vec<AcceptedSet>,
}

/// One accepted set of values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptedSet {
    /// A name for reports, e.g. `fw-2.1`.
    pub name: String,
    /// Boot PCR index → SHA-256 value (hex).
    pub firmware: BTreeMap<u8, String>,
    /// The measured configuration.
    pub config: Option<ConfigReference>,
    /// Lowest accepted TPM firmware version.
    #[serde(default)]
    pub min_firmware_version: u64,
}

/// Accepted configuration digests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigReference {
    /// The PCR the configuration is measured into.
    pub pcr: u8,
    /// Accepted values of that PCR (hex).
    pub digests: Vec<String>,
}

/// Why reference values do not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Too large.
    #[error("reference values are larger than {MAX_REFERENCE_BYTES} bytes")]
    TooLarge,
    /// Not the expected JSON.
    #[error("reference values: {0}")]
    Invalid(String),
}

impl ReferenceValues {
    /// Parses and checks a reference file: hex digests of 32 bytes, PCRs below 24, and every
    /// checked PCR among the class's quoted PCRs.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReferenceError> {
        if bytes.len() > MAX_REFERENCE_BYTES {
            return Err(ReferenceError::TooLarge);
        }
        let values: Self =
            serde_json::from_slice(bytes).map_err(|e| ReferenceError::Invalid(e.to_string()))?;
        for (class, c) in &values.device_classes {
            let invalid = |m: String| ReferenceError::Invalid(format!("class `{class}`: {m}"));
            if c.pcrs.is_empty() || c.pcrs.iter().any(|&p| p >= 24) {
                return Err(invalid("`pcrs` must list PCRs 0 to 23".into()));
            }
            if c.accepted.is_empty() {
                return Err(invalid("no accepted set".into()));
            }
            for set in &c.accepted {
                let digests = set.firmware.iter().map(|(p, d)| (*p, d)).chain(
                    set.config
                        .iter()
                        .flat_map(|cfg| cfg.digests.iter().map(|d| (cfg.pcr, d))),
                );
                for (pcr, digest) in digests {
                    if !c.pcrs.contains(&pcr) {
                        return Err(invalid(format!(
                            "set `{}` checks PCR {pcr}, which is not quoted",
                            set.name
                        )));
                    }
                    if decode(digest).is_none() {
                        return Err(invalid(format!(
                            "set `{}`: `{digest}` is not 32 bytes of hex",
                            set.name
                        )));
                    }
                }
            }
        }
        Ok(values)
    }
}

fn decode(hex_text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_text).ok()?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

/// Which set a quote met, or why it met none.
pub fn evaluate(class: &ClassReference, verified: &Verified) -> Result<String, String> {
    let mut reasons = Vec::new();
    for set in &class.accepted {
        match check_set(set, verified) {
            Ok(()) => return Ok(set.name.clone()),
            Err(why) => reasons.push(format!("{}: {why}", set.name)),
        }
    }
    Err(reasons.join("; "))
}

fn check_set(set: &AcceptedSet, verified: &Verified) -> Result<(), String> {
    for (pcr, want) in &set.firmware {
        let got = verified.pcrs.get(pcr);
        if got.copied() != decode(want) {
            return Err(format!("firmware integrity: PCR {pcr} differs"));
        }
    }
    if let Some(cfg) = &set.config {
        let got = verified.pcrs.get(&cfg.pcr).copied();
        if !cfg
            .digests
            .iter()
            .any(|d| decode(d) == got && got.is_some())
        {
            return Err(format!(
                "configuration compliance: PCR {} is not an accepted configuration",
                cfg.pcr
            ));
        }
    }
    if verified.quote.firmware_version < set.min_firmware_version {
        return Err(format!(
            "security patch level: firmware version {:#x} is below {:#x}",
            verified.quote.firmware_version, set.min_firmware_version
        ));
    }
    Ok(())
}
