//! X.509 extensions that Vouch writes itself, because rcgen's encoding of them is not DER.
//!
//! DER (X.690 11.5, 11.2.2) leaves out a field that has its DEFAULT value and drops trailing
//! zero bits of a named bit list. rcgen 0.13 writes an end entity's basicConstraints as
//! `30 03 01 01 00` (cA FALSE spelled out) and every keyUsage as nine bits (`03 03 07 80 00`
//! for digitalSignature), which strict parsers (pyca/cryptography, and with it every Python
//! SPIFFE library) refuse. The extensions here are given to rcgen as finished bytes, so they
//! are exactly as written below; `tests` pins every byte.

use rcgen::CustomExtension;

/// `id-ce-basicConstraints` (2.5.29.19).
const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
/// `id-ce-keyUsage` (2.5.29.15).
const KEY_USAGE: &[u64] = &[2, 5, 29, 15];
/// `id-ce-subjectKeyIdentifier` (2.5.29.14).
const SUBJECT_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 14];

/// One bit of the keyUsage named bit list (RFC 5280 4.2.1.3), by its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyUsageBit {
    /// Bit 0: signatures other than on certificates and CRLs.
    DigitalSignature = 0,
    /// Bit 4: key agreement (ECDH).
    KeyAgreement = 4,
    /// Bit 5: signing certificates.
    KeyCertSign = 5,
    /// Bit 6: signing CRLs.
    CrlSign = 6,
}

/// basicConstraints of an end entity, critical: an empty SEQUENCE (cA takes its DEFAULT,
/// FALSE, and so is absent). X.509-SVIDs must carry the extension with cA false.
pub(crate) fn end_entity_basic_constraints() -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(BASIC_CONSTRAINTS, vec![0x30, 0x00]);
    ext.set_criticality(true);
    ext
}

/// keyUsage with exactly `bits`, critical, as a minimal named bit list.
pub(crate) fn key_usage(bits: &[KeyUsageBit]) -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(KEY_USAGE, key_usage_der(bits));
    ext.set_criticality(true);
    ext
}

/// The DER BIT STRING of a keyUsage: bits up to the highest one set, no trailing zero bits.
fn key_usage_der(bits: &[KeyUsageBit]) -> Vec<u8> {
    // Bit n of the list is bit (7 - n % 8) of octet n / 8.
    let mut octets = [0u8; 2];
    let mut highest = 0usize;
    for bit in bits {
        let n = *bit as usize;
        if let Some(octet) = octets.get_mut(n / 8) {
            *octet |= 0x80 >> (n % 8);
        }
        highest = highest.max(n);
    }
    let used_octets = highest / 8 + 1;
    let unused_bits = (7 - highest % 8) as u8;
    let mut der = vec![0x03, (used_octets + 1) as u8, unused_bits];
    der.extend(octets.iter().take(used_octets));
    der
}

/// subjectKeyIdentifier, not critical: the leftmost 160 bits of the SHA-256 of the
/// subjectPublicKey bits (RFC 7093 section 2, method 1).
pub(crate) fn subject_key_identifier(subject_public_key: &[u8]) -> CustomExtension {
    let digest = ring::digest::digest(&ring::digest::SHA256, subject_public_key);
    let mut der = vec![0x04, 20];
    der.extend(digest.as_ref().iter().take(20));
    CustomExtension::from_oid_content(SUBJECT_KEY_IDENTIFIER, der)
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeyUsageBit::*;

    #[test]
    fn key_usage_is_a_minimal_named_bit_list() {
        assert_eq!(key_usage_der(&[DigitalSignature]), [0x03, 0x02, 0x07, 0x80]);
        assert_eq!(key_usage_der(&[KeyAgreement]), [0x03, 0x02, 0x03, 0x08]);
        assert_eq!(
            key_usage_der(&[KeyCertSign, CrlSign]),
            [0x03, 0x02, 0x01, 0x06]
        );
        assert_eq!(
            key_usage_der(&[KeyCertSign, CrlSign, DigitalSignature]),
            [0x03, 0x02, 0x01, 0x86]
        );
    }

    #[test]
    fn end_entity_basic_constraints_leave_out_ca_false() {
        let ext = end_entity_basic_constraints();
        assert_eq!(ext.content(), [0x30, 0x00]);
        assert!(ext.criticality());
    }

    #[test]
    fn subject_key_identifier_is_twenty_octets() {
        let ext = subject_key_identifier(&[4; 65]);
        assert_eq!(ext.content().len(), 22);
        assert_eq!(ext.content().get(..2), Some(&[0x04, 20][..]));
    }
}
