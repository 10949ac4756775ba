//! Strict parsers for the TPM 2.0 structures a quote travels in (TPM 2.0 Library, Part 2):
//! `TPMS_ATTEST` (of a quote), `TPML_PCR_SELECTION`, `TPMT_SIGNATURE` and `TPMT_PUBLIC`
//! (ECC P-256 and RSA keys), and object names. Only what a verifier needs is accepted;
//! anything else is a clear error, never a guess.

use crate::wire::Reader;
use crate::ParseError;

/// `TPM_GENERATED_VALUE`: the magic of every structure the TPM signs.
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000b;
/// `TPM_ALG_NULL`.
pub const ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_RSA`.
pub const ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_ECC`.
pub const ALG_ECC: u16 = 0x0023;
/// `TPM_ALG_ECDSA`.
pub const ALG_ECDSA: u16 = 0x0018;
/// `TPM_ALG_RSASSA` (PKCS#1 v1.5).
pub const ALG_RSASSA: u16 = 0x0014;
/// `TPM_ALG_RSAPSS`.
pub const ALG_RSAPSS: u16 = 0x0016;
/// `TPM_ECC_NIST_P256`.
pub const ECC_NIST_P256: u16 = 0x0003;

/// Largest structure accepted from the wire (a TPMS_ATTEST or TPMT_PUBLIC is a few hundred
/// bytes).
pub const MAX_STRUCTURE_BYTES: usize = 4096;
/// `TPM2B_NAME`: a hash algorithm and a digest of up to 64 bytes.
const MAX_NAME: usize = 2 + 64;
/// `TPM2B_DATA` (the nonce).
const MAX_DATA: usize = 64;
/// `TPM2B_DIGEST`.
const MAX_DIGEST: usize = 64;
/// Banks in a `TPML_PCR_SELECTION` (`HASH_COUNT`).
const MAX_BANKS: u32 = 16;
/// `PCR_SELECT_MAX`: 24 PCRs → 3 bytes; 4 allowed for 32-PCR TPMs.
const MAX_SELECT: u8 = 4;

/// Object attributes of an attestation key (TPMA_OBJECT bits).
pub mod attr {
    /// The key cannot leave this TPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// The key cannot move to another parent.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// The TPM made the key's secret.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// Restricted: signs only what the TPM itself produced (quotes), never outside digests
    /// that start with `TPM_GENERATED`.
    pub const RESTRICTED: u32 = 1 << 16;
    /// Decryption key.
    pub const DECRYPT: u32 = 1 << 17;
    /// Signing key.
    pub const SIGN: u32 = 1 << 18;
}

/// PCRs selected in one hash bank.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PcrBank {
    /// The bank's hash algorithm (`TPM_ALG_*`).
    pub hash: u16,
    /// Selected PCR indices, ascending.
    pub pcrs: Vec<u8>,
}

/// A `TPML_PCR_SELECTION`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PcrSelection(pub Vec<PcrBank>);

impl PcrSelection {
    /// The SHA-256 bank with `pcrs`.
    pub fn sha256(pcrs: &[u8]) -> Self {
        let mut pcrs = pcrs.to_vec();
        pcrs.sort_unstable();
        pcrs.dedup();
        Self(vec![PcrBank {
            hash: ALG_SHA256,
            pcrs,
        }])
    }

    fn parse(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let count = r.u32_be("pcr selection count")?;
        if count > MAX_BANKS {
            return Err(ParseError::TooLarge {
                what: "pcr selection count",
                len: count as usize,
                max: MAX_BANKS as usize,
            });
        }
        let mut banks = Vec::new();
        for _ in 0..count {
            let hash = r.u16_be("pcr selection hash")?;
            let size = r.u8("pcr selection size")?;
            if size > MAX_SELECT {
                return Err(ParseError::TooLarge {
                    what: "pcr select bitmap",
                    len: usize::from(size),
                    max: usize::from(MAX_SELECT),
                });
            }
            let bitmap = r.take(usize::from(size), "pcr select bitmap")?;
            let mut pcrs = Vec::new();
            for (byte_index, byte) in bitmap.iter().enumerate() {
                for bit in 0..8u8 {
                    if byte & (1 << bit) != 0 {
                        // byte_index < 4, so the index fits in a u8.
                        pcrs.push(u8::try_from(byte_index).unwrap_or(0) * 8 + bit);
                    }
                }
            }
            banks.push(PcrBank { hash, pcrs });
        }
        Ok(Self(banks))
    }

    /// The selection in wire form (`TPML_PCR_SELECTION`, 3-byte bitmaps).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for bank in &self.0 {
            out.extend_from_slice(&bank.hash.to_be_bytes());
            let mut bitmap = [0u8; 3];
            for &pcr in &bank.pcrs {
                if let Some(b) = bitmap.get_mut(usize::from(pcr / 8)) {
                    *b |= 1 << (pcr % 8);
                }
            }
            out.push(3);
            out.extend_from_slice(&bitmap);
        }
        out
    }
}

/// A parsed `TPMS_ATTEST` of type quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// Qualified name of the signing key.
    pub qualified_signer: Vec<u8>,
    /// The caller's nonce (`extraData`).
    pub extra_data: Vec<u8>,
    /// TPM clock, milliseconds.
    pub clock: u64,
    /// TPM resets since manufacture.
    pub reset_count: u32,
    /// TPM restarts since the last reset.
    pub restart_count: u32,
    /// Whether the clock is known to be safe (never rolled back).
    pub safe: bool,
    /// The TPM vendor's firmware version.
    pub firmware_version: u64,
    /// The PCRs quoted.
    pub selection: PcrSelection,
    /// The digest of the quoted PCR values.
    pub pcr_digest: Vec<u8>,
}

impl Quote {
    /// Parses a `TPMS_ATTEST` that must be a quote, with nothing after it.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        bounded(bytes, "quote")?;
        let mut r = Reader::new(bytes);
        let magic = r.u32_be("magic")?;
        if magic != TPM_GENERATED {
            return Err(ParseError::BadMagic(magic));
        }
        let kind = r.u16_be("attestation type")?;
        if kind != ST_ATTEST_QUOTE {
            return Err(ParseError::Unsupported {
                what: "attestation type (only quotes)",
                value: u32::from(kind),
            });
        }
        let qualified_signer = r.tpm2b(MAX_NAME, "qualified signer")?.to_vec();
        let extra_data = r.tpm2b(MAX_DATA, "extra data")?.to_vec();
        let clock = r.u64_be("clock")?;
        let reset_count = r.u32_be("reset count")?;
        let restart_count = r.u32_be("restart count")?;
        let safe = match r.u8("safe")? {
            0 => false,
            1 => true,
            other => {
                return Err(ParseError::Unsupported {
                    what: "clock safe flag",
                    value: u32::from(other),
                })
            }
        };
        let firmware_version = r.u64_be("firmware version")?;
        let selection = PcrSelection::parse(&mut r)?;
        let pcr_digest = r.tpm2b(MAX_DIGEST, "pcr digest")?.to_vec();
        r.finish("quote")?;
        Ok(Self {
            qualified_signer,
            extra_data,
            clock,
            reset_count,
            restart_count,
            safe,
            firmware_version,
            selection,
            pcr_digest,
        })
    }
}

/// A parsed `TPMT_SIGNATURE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// ECDSA: `r` and `s`, big-endian.
    Ecdsa {
        /// The digest algorithm.
        hash: u16,
        /// r.
        r: Vec<u8>,
        /// s.
        s: Vec<u8>,
    },
    /// RSASSA-PKCS1-v1_5.
    RsaSsa {
        /// The digest algorithm.
        hash: u16,
        /// The signature.
        sig: Vec<u8>,
    },
    /// RSASSA-PSS.
    RsaPss {
        /// The digest algorithm.
        hash: u16,
        /// The signature.
        sig: Vec<u8>,
    },
}

impl Signature {
    /// Parses a `TPMT_SIGNATURE`, with nothing after it.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        bounded(bytes, "signature")?;
        let mut r = Reader::new(bytes);
        let alg = r.u16_be("signature algorithm")?;
        let sig = match alg {
            ALG_ECDSA => Self::Ecdsa {
                hash: r.u16_be("signature hash")?,
                r: r.tpm2b(66, "signature r")?.to_vec(),
                s: r.tpm2b(66, "signature s")?.to_vec(),
            },
            ALG_RSASSA | ALG_RSAPSS => {
                let hash = r.u16_be("signature hash")?;
                let sig = r.tpm2b(512, "rsa signature")?.to_vec();
                if alg == ALG_RSASSA {
                    Self::RsaSsa { hash, sig }
                } else {
                    Self::RsaPss { hash, sig }
                }
            }
            other => {
                return Err(ParseError::Unsupported {
                    what: "signature algorithm",
                    value: u32::from(other),
                })
            }
        };
        r.finish("signature")?;
        Ok(sig)
    }
}

/// The public part of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// ECC NIST P-256: the affine coordinates, 32 bytes each.
    EccP256 {
        /// x.
        x: [u8; 32],
        /// y.
        y: [u8; 32],
    },
    /// RSA: the modulus and public exponent.
    Rsa {
        /// Modulus, big-endian.
        modulus: Vec<u8>,
        /// Public exponent.
        exponent: u32,
    },
}

/// A parsed `TPMT_PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    /// The name algorithm.
    pub name_alg: u16,
    /// `TPMA_OBJECT` bits.
    pub attributes: u32,
    /// The signing scheme the key is bound to (`TPM_ALG_NULL` if none).
    pub scheme: u16,
    /// The symmetric algorithm of a storage key (algorithm, key bits, mode), e.g. the EK's
    /// AES-128-CFB; `None` for signing keys.
    pub symmetric: Option<(u16, u16, u16)>,
    /// The key.
    pub key: PublicKey,
    /// The structure as it was on the wire: what the name hashes.
    pub raw: Vec<u8>,
}

fn scheme_with_hash(r: &mut Reader<'_>, what: &'static str) -> Result<u16, ParseError> {
    let scheme = r.u16_be(what)?;
    if scheme != ALG_NULL {
        r.u16_be(what)?;
    }
    Ok(scheme)
}

/// A `TPMT_SYM_DEF_OBJECT`: `None` for `TPM_ALG_NULL`, else (algorithm, key bits, mode).
fn symmetric(r: &mut Reader<'_>) -> Result<Option<(u16, u16, u16)>, ParseError> {
    let alg = r.u16_be("symmetric algorithm")?;
    if alg == ALG_NULL {
        return Ok(None);
    }
    Ok(Some((
        alg,
        r.u16_be("symmetric key bits")?,
        r.u16_be("symmetric mode")?,
    )))
}

fn pad32(v: &[u8], what: &'static str) -> Result<[u8; 32], ParseError> {
    let trimmed = {
        let first = v.iter().position(|&b| b != 0).unwrap_or(v.len());
        v.get(first..).unwrap_or(&[])
    };
    if trimmed.len() > 32 {
        return Err(ParseError::TooLarge {
            what,
            len: trimmed.len(),
            max: 32,
        });
    }
    let mut out = [0u8; 32];
    let start = 32 - trimmed.len();
    if let Some(dst) = out.get_mut(start..) {
        dst.copy_from_slice(trimmed);
    }
    Ok(out)
}

impl Public {
    /// Parses a `TPMT_PUBLIC`, with nothing after it.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        bounded(bytes, "public area")?;
        let mut r = Reader::new(bytes);
        let kind = r.u16_be("key type")?;
        let name_alg = r.u16_be("name algorithm")?;
        if name_alg != ALG_SHA256 {
            return Err(ParseError::Unsupported {
                what: "name algorithm (only SHA-256)",
                value: u32::from(name_alg),
            });
        }
        let attributes = r.u32_be("object attributes")?;
        r.tpm2b(MAX_DIGEST, "auth policy")?;
        let (symmetric, scheme, key) = match kind {
            ALG_ECC => {
                let symmetric = symmetric(&mut r)?;
                let scheme = scheme_with_hash(&mut r, "ecc scheme")?;
                let curve = r.u16_be("ecc curve")?;
                if curve != ECC_NIST_P256 {
                    return Err(ParseError::Unsupported {
                        what: "ecc curve (only NIST P-256)",
                        value: u32::from(curve),
                    });
                }
                scheme_with_hash(&mut r, "ecc kdf")?;
                let x = pad32(r.tpm2b(66, "ecc x")?, "ecc x")?;
                let y = pad32(r.tpm2b(66, "ecc y")?, "ecc y")?;
                (symmetric, scheme, PublicKey::EccP256 { x, y })
            }
            ALG_RSA => {
                let symmetric = symmetric(&mut r)?;
                let scheme = scheme_with_hash(&mut r, "rsa scheme")?;
                let bits = r.u16_be("rsa key bits")?;
                if !(2048..=4096).contains(&bits) {
                    return Err(ParseError::Unsupported {
                        what: "rsa key size (2048 to 4096 bits)",
                        value: u32::from(bits),
                    });
                }
                let exponent = match r.u32_be("rsa exponent")? {
                    0 => 65537,
                    e => e,
                };
                let modulus = r.tpm2b(512, "rsa modulus")?.to_vec();
                if modulus.len() * 8 != usize::from(bits) {
                    return Err(ParseError::Unsupported {
                        what: "rsa modulus length",
                        value: modulus.len() as u32,
                    });
                }
                (symmetric, scheme, PublicKey::Rsa { modulus, exponent })
            }
            other => {
                return Err(ParseError::Unsupported {
                    what: "key type",
                    value: u32::from(other),
                })
            }
        };
        r.finish("public area")?;
        Ok(Self {
            name_alg,
            attributes,
            scheme,
            symmetric,
            key,
            raw: bytes.to_vec(),
        })
    }

    /// Parses a `TPM2B_PUBLIC` (a u16 size, then the `TPMT_PUBLIC`).
    pub fn parse_sized(bytes: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(bytes);
        let inner = r.tpm2b(MAX_STRUCTURE_BYTES, "public area")?;
        r.finish("sized public area")?;
        Self::parse(inner)
    }

    /// The object's name: the name algorithm, then the SHA-256 of the public area.
    pub fn name(&self) -> Vec<u8> {
        let mut name = self.name_alg.to_be_bytes().to_vec();
        name.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &self.raw).as_ref());
        name
    }

    /// Whether every bit of `required` is set and none of `forbidden`.
    pub fn has_attributes(&self, required: u32, forbidden: u32) -> bool {
        self.attributes & required == required && self.attributes & forbidden == 0
    }
}

/// The qualified name of an object whose parent has qualified name `parent_qn`
/// (TPM 2.0 Part 1, 16.6): `nameAlg || SHA-256(parent_qn || name)`. A hierarchy's qualified
/// name is its handle.
pub fn qualified_name(parent_qn: &[u8], name: &[u8]) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(parent_qn);
    ctx.update(name);
    let mut qn = ALG_SHA256.to_be_bytes().to_vec();
    qn.extend_from_slice(ctx.finish().as_ref());
    qn
}

/// `TPM_RH_ENDORSEMENT`, the qualified name of the endorsement hierarchy.
pub const RH_ENDORSEMENT: [u8; 4] = 0x4000_000bu32.to_be_bytes();

fn bounded(bytes: &[u8], what: &'static str) -> Result<(), ParseError> {
    if bytes.len() > MAX_STRUCTURE_BYTES {
        Err(ParseError::TooLarge {
            what,
            len: bytes.len(),
            max: MAX_STRUCTURE_BYTES,
        })
    } else {
        Ok(())
    }
}
