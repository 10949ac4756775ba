//! MakeCredential in software (TPM 2.0 Library Part 1, "Credential Protection"): the server
//! side of credential activation. A secret is wrapped so that only the TPM holding the
//! endorsement key (EK) can unwrap it, and only for an object with the given name (the AK):
//! a device that answers with the secret proves that its AK lives in the same TPM as its EK.
//!
//! - seed: random, the size of the EK's name digest (32 bytes for SHA-256);
//! - encrypted secret: RSA-OAEP-SHA256 of the seed to the EK, label `IDENTITY\0`;
//! - symmetric key: KDFa(SHA-256, seed, `STORAGE`, AK name, -, 128 bits);
//!   the credential (as a `TPM2B_DIGEST`) is encrypted with AES-128-CFB, zero IV;
//! - integrity: HMAC-SHA-256 keyed with KDFa(seed, `INTEGRITY`, -, -, 256 bits) over the
//!   encrypted credential and the AK name.
//!
//! RSA-OAEP comes from the `rsa` crate and AES-CFB from `aes`/`cfb-mode` (ring offers neither);
//! HMAC and SHA-256 from ring. KDFa is the TPM specification's counter-mode KDF (SP 800-108)
//! over ring's HMAC.

use crate::tpm::{Public, PublicKey, ALG_SHA256};
use ring::rand::SecureRandom;

/// Algorithm id of AES in `TPMT_SYM_DEF_OBJECT`.
pub const ALG_AES: u16 = 0x0006;
/// Algorithm id of CFB mode.
pub const ALG_CFB: u16 = 0x0043;
/// Longest credential (a `TPM2B_DIGEST` of SHA-256 size... up to 64 bytes).
pub const MAX_CREDENTIAL: usize = 64;

/// Why a credential could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The EK is not an RSA storage key with AES-128-CFB and a SHA-256 name.
    #[error("unsupported endorsement key: {0}")]
    UnsupportedEk(&'static str),
    /// The credential is empty or longer than a digest.
    #[error("credential must be 1 to {MAX_CREDENTIAL} bytes")]
    BadCredential,
    /// Randomness or RSA encryption failed.
    #[error("credential encryption failed")]
    Crypto,
}

/// What the device hands to `TPM2_ActivateCredential`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCredential {
    /// `TPM2B_ID_OBJECT`: size, then the integrity HMAC (as a `TPM2B_DIGEST`) and the
    /// encrypted credential.
    pub id_object: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET`: size, then the RSA-OAEP ciphertext of the seed.
    pub encrypted_secret: Vec<u8>,
}

/// KDFa (TPM 2.0 Part 1, 11.4.10.2) with HMAC-SHA-256: `bits` bits of key material from
/// `key`, `label` (a NUL is appended), `context_u` and `context_v`.
pub fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let bytes = (bits as usize).div_ceil(8);
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut ctx = ring::hmac::Context::with_key(&hmac_key);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        counter = counter.wrapping_add(1);
    }
    out.truncate(bytes);
    out
}

/// ring's system randomness as the RNG the `rsa` crate expects.
pub(crate) struct RingRng<'a>(pub(crate) &'a dyn SecureRandom);

impl rsa::rand_core::RngCore for RingRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // INVARIANT: ring's SystemRandom does not fail on Linux; a failure leaves zeros, which
        // `try_fill_bytes` reports instead for the callers that check.
        let _ = self.0.fill(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.0
            .fill(dest)
            .map_err(|_| rsa::rand_core::Error::from(core::num::NonZeroU32::MIN))
    }
}

impl rsa::rand_core::CryptoRng for RingRng<'_> {}

/// Wraps `credential` for the AK named `ak_name` under the RSA EK `ek`.
pub fn make_credential(
    ek: &Public,
    ak_name: &[u8],
    credential: &[u8],
    rng: &dyn SecureRandom,
) -> Result<MadeCredential, CredentialError> {
    use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};
    let PublicKey::Rsa { modulus, exponent } = &ek.key else {
        return Err(CredentialError::UnsupportedEk("only RSA endorsement keys"));
    };
    if ek.name_alg != ALG_SHA256 {
        return Err(CredentialError::UnsupportedEk(
            "name algorithm must be SHA-256",
        ));
    }
    if ek.symmetric != Some((ALG_AES, 128, ALG_CFB)) {
        return Err(CredentialError::UnsupportedEk(
            "symmetric must be AES-128-CFB",
        ));
    }
    if credential.is_empty() || credential.len() > MAX_CREDENTIAL {
        return Err(CredentialError::BadCredential);
    }
    let mut seed = [0u8; 32];
    rng.fill(&mut seed).map_err(|_| CredentialError::Crypto)?;

    let key = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(modulus),
        rsa::BigUint::from(*exponent),
    )
    .map_err(|_| CredentialError::UnsupportedEk("RSA key is not usable"))?;
    let padding = rsa::Oaep::new_with_label::<sha2::Sha256, _>("IDENTITY\0");
    let ciphertext = key
        .encrypt(&mut RingRng(rng), padding, &seed)
        .map_err(|_| CredentialError::Crypto)?;

    let sym_key = kdfa(&seed, "STORAGE", ak_name, &[], 128);
    let mut enc_identity = Vec::with_capacity(2 + credential.len());
    enc_identity.extend_from_slice(&(credential.len() as u16).to_be_bytes());
    enc_identity.extend_from_slice(credential);
    let key_bytes: [u8; 16] = sym_key
        .as_slice()
        .try_into()
        .map_err(|_| CredentialError::Crypto)?;
    cfb_mode::Encryptor::<aes::Aes128>::new(&key_bytes.into(), &[0u8; 16].into())
        .encrypt(&mut enc_identity);

    let hmac_key = kdfa(&seed, "INTEGRITY", &[], &[], 256);
    let mut ctx =
        ring::hmac::Context::with_key(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &hmac_key));
    ctx.update(&enc_identity);
    ctx.update(ak_name);
    let integrity = ctx.sign();

    let mut body = Vec::new();
    body.extend_from_slice(&(integrity.as_ref().len() as u16).to_be_bytes());
    body.extend_from_slice(integrity.as_ref());
    body.extend_from_slice(&enc_identity);
    let mut id_object = (body.len() as u16).to_be_bytes().to_vec();
    id_object.extend_from_slice(&body);
    let mut encrypted_secret = (ciphertext.len() as u16).to_be_bytes().to_vec();
    encrypted_secret.extend_from_slice(&ciphertext);
    Ok(MadeCredential {
        id_object,
        encrypted_secret,
    })
}
