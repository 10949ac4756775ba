//! Signed receipts: the receiving sidecar's word that it accepted a message. A receipt is a
//! CWT (RFC 8392): a `COSE_Sign1` (ES256, the receiver's device key) over the claims `iss`
//! (the receiver's SPIFFE ID), `aud` (the sender's), `iat` and `cti` (the message's own
//! `cti`). The sender checks it with the receiver's device certificate, already verified
//! through the peer directory, so a receipt cannot be made by anyone but the peer meant.

use coset::cwt::{ClaimsSet, ClaimsSetBuilder, Timestamp};
use coset::{iana, CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

/// Largest receipt read, bytes.
pub const MAX_RECEIPT_BYTES: usize = 1024;

/// Why a receipt is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    /// Not a receipt.
    #[error("not a receipt: {0}")]
    Malformed(String),
    /// The signature does not verify with the peer's key.
    #[error("the receipt's signature does not verify")]
    BadSignature,
    /// It is about another message, from another device, or for another sender.
    #[error("the receipt does not match the message: {0}")]
    Mismatch(&'static str),
    /// Signing failed.
    #[error("the receipt cannot be signed")]
    Signing,
}

/// Signs a receipt for the message `cti` from `sender` (SPIFFE ID), by `me` at `now`.
pub fn sign(
    key: &EcdsaKeyPair,
    me: &str,
    sender: &str,
    cti: &[u8],
    now: i64,
) -> Result<Vec<u8>, ReceiptError> {
    let claims = ClaimsSetBuilder::new()
        .issuer(me.to_owned())
        .audience(sender.to_owned())
        .issued_at(Timestamp::WholeSeconds(now))
        .cwt_id(cti.to_vec())
        .build()
        .to_vec()
        .map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    let rng = SystemRandom::new();
    let mut failed = false;
    let sign1 = CoseSign1Builder::new()
        .protected(
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::ES256)
                .build(),
        )
        .payload(claims)
        .create_signature(b"", |data| match key.sign(&rng, data) {
            Ok(sig) => sig.as_ref().to_vec(),
            Err(_) => {
                failed = true;
                Vec::new()
            }
        })
        .build();
    if failed {
        return Err(ReceiptError::Signing);
    }
    sign1
        .to_vec()
        .map_err(|e| ReceiptError::Malformed(e.to_string()))
}

/// Checks `bytes` as the receipt of `peer` (SPIFFE ID, device public key as a SEC1 point)
/// for the message `cti` that `me` sent. Returns when the peer says it accepted it.
pub fn verify(
    bytes: &[u8],
    peer: &str,
    peer_public_key: &[u8],
    me: &str,
    cti: &[u8],
) -> Result<i64, ReceiptError> {
    if bytes.len() > MAX_RECEIPT_BYTES {
        return Err(ReceiptError::Malformed("too large".into()));
    }
    let sign1 = CoseSign1::from_slice(bytes).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    if sign1.protected.header.alg != Some(coset::Algorithm::Assigned(iana::Algorithm::ES256)) {
        return Err(ReceiptError::Malformed("the algorithm is not ES256".into()));
    }
    let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, peer_public_key);
    sign1
        .verify_signature(b"", |sig, data| key.verify(data, sig))
        .map_err(|_| ReceiptError::BadSignature)?;
    let payload = sign1
        .payload
        .ok_or_else(|| ReceiptError::Malformed("no claims".into()))?;
    let claims =
        ClaimsSet::from_slice(&payload).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    if claims.issuer.as_deref() != Some(peer) {
        return Err(ReceiptError::Mismatch("issued by another device"));
    }
    if claims.audience.as_deref() != Some(me) {
        return Err(ReceiptError::Mismatch("for another sender"));
    }
    if claims.cwt_id.as_deref() != Some(cti) {
        return Err(ReceiptError::Mismatch("about another message"));
    }
    match claims.issued_at {
        Some(Timestamp::WholeSeconds(at)) => Ok(at),
        _ => Err(ReceiptError::Malformed("no issue time".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn key() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    }

    #[test]
    fn a_receipt_verifies_only_for_its_message_peer_and_sender() {
        let (peer, other) = (key(), key());
        let public = peer.public_key().as_ref().to_vec();
        let r = sign(&peer, "spiffe://d/b", "spiffe://d/a", &[7; 16], 1000).unwrap();
        assert_eq!(
            verify(&r, "spiffe://d/b", &public, "spiffe://d/a", &[7; 16]),
            Ok(1000)
        );
        assert_eq!(
            verify(&r, "spiffe://d/b", &public, "spiffe://d/a", &[8; 16]),
            Err(ReceiptError::Mismatch("about another message"))
        );
        assert_eq!(
            verify(&r, "spiffe://d/b", &public, "spiffe://d/c", &[7; 16]),
            Err(ReceiptError::Mismatch("for another sender"))
        );
        assert_eq!(
            verify(&r, "spiffe://d/x", &public, "spiffe://d/a", &[7; 16]),
            Err(ReceiptError::Mismatch("issued by another device"))
        );
        let forged = sign(&other, "spiffe://d/b", "spiffe://d/a", &[7; 16], 1000).unwrap();
        assert_eq!(
            verify(&forged, "spiffe://d/b", &public, "spiffe://d/a", &[7; 16]),
            Err(ReceiptError::BadSignature)
        );
        let mut flipped = r.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            verify(&flipped, "spiffe://d/b", &public, "spiffe://d/a", &[7; 16]),
            Err(ReceiptError::BadSignature)
        );
        assert!(matches!(
            verify(b"\xa0", "spiffe://d/b", &public, "spiffe://d/a", &[7; 16]),
            Err(ReceiptError::Malformed(_))
        ));
    }
}
