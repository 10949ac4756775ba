//! The two COSE "to be signed / to be authenticated" structures, written directly (one copy of
//! the payload, no intermediate value tree), and typed readers of decoded CBOR values.

use coset::cbor::value::Value;

/// Appends a CBOR head (major type and argument) in its shortest form (RFC 8949 §3).
fn head(out: &mut Vec<u8>, major: u8, argument: u64) {
    let major = major << 5;
    if argument < 24 {
        // INVARIANT: argument < 24 fits in the low five bits.
        out.push(major | argument as u8);
    } else if let Ok(a) = u8::try_from(argument) {
        out.push(major | 24);
        out.push(a);
    } else if let Ok(a) = u16::try_from(argument) {
        out.push(major | 25);
        out.extend_from_slice(&a.to_be_bytes());
    } else if let Ok(a) = u32::try_from(argument) {
        out.push(major | 26);
        out.extend_from_slice(&a.to_be_bytes());
    } else {
        out.push(major | 27);
        out.extend_from_slice(&argument.to_be_bytes());
    }
}

fn bstr(out: &mut Vec<u8>, bytes: &[u8]) {
    head(out, 2, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn tstr(out: &mut Vec<u8>, text: &str) {
    head(out, 3, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// `Sig_structure` for a COSE_Sign1 with empty external AAD (RFC 9052 §4.4):
/// `["Signature1", body_protected, h'', payload]`.
pub(crate) fn sig_structure1(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(protected.len() + payload.len() + 32);
    head(&mut out, 4, 4);
    tstr(&mut out, "Signature1");
    bstr(&mut out, protected);
    bstr(&mut out, &[]);
    bstr(&mut out, payload);
    out
}

/// `Enc_structure` for a COSE_Encrypt (RFC 9052 §5.3): `["Encrypt", protected, external_aad]`.
pub(crate) fn enc_structure(protected: &[u8], external_aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(protected.len() + external_aad.len() + 16);
    head(&mut out, 4, 3);
    tstr(&mut out, "Encrypt");
    bstr(&mut out, protected);
    bstr(&mut out, external_aad);
    out
}

/// The bytes of a `bstr`, or `None` for any other type.
pub(crate) fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::Bytes(b) => Some(b),
        _ => None,
    }
}

/// The bytes of a `bstr` of exactly `N` bytes.
pub(crate) fn fixed_bytes<const N: usize>(value: Value) -> Option<[u8; N]> {
    bytes(value).and_then(|b| <[u8; N]>::try_from(b.as_slice()).ok())
}

/// The text of a `tstr`, or `None` for any other type.
pub(crate) fn text(value: Value) -> Option<String> {
    match value {
        Value::Text(t) => Some(t),
        _ => None,
    }
}

/// An unsigned integer, or `None` for any other type (negative integers included).
pub(crate) fn unsigned(value: &Value) -> Option<u64> {
    match value {
        Value::Integer(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

/// A signed integer that fits in `i64`, or `None`.
pub(crate) fn signed(value: &Value) -> Option<i64> {
    match value {
        Value::Integer(i) => i64::try_from(*i).ok(),
        _ => None,
    }
}

/// A `COSE_X509` value (RFC 9360): one certificate as a `bstr`, or two or more in an array.
pub(crate) fn certificates(value: Value) -> Option<Vec<Vec<u8>>> {
    match value {
        Value::Bytes(b) if !b.is_empty() => Some(vec![b]),
        Value::Array(items) if items.len() >= 2 => items
            .into_iter()
            .map(|v| bytes(v).filter(|b| !b.is_empty()))
            .collect(),
        _ => None,
    }
}

/// The `COSE_X509` value for `certs`: a `bstr` for one, an array for more.
pub(crate) fn certificates_value(mut certs: Vec<Vec<u8>>) -> Value {
    if certs.len() == 1 {
        if let Some(one) = certs.pop() {
            return Value::Bytes(one);
        }
    }
    Value::Array(certs.into_iter().map(Value::Bytes).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use coset::{
        enc_structure_data, sig_structure_data, EncryptionContext, Header, ProtectedHeader,
        SignatureContext,
    };

    fn protected(bytes: &[u8]) -> ProtectedHeader {
        ProtectedHeader {
            original_data: Some(bytes.to_vec()),
            header: Header::default(),
        }
    }

    #[test]
    fn structures_match_coset_for_every_length_class() {
        for len in [0usize, 1, 23, 24, 255, 256, 65_535, 65_536, 70_000] {
            let payload = vec![0xa5; len];
            let prot = vec![0xa1, 0x01, 0x26];
            assert_eq!(
                sig_structure1(&prot, &payload),
                sig_structure_data(
                    SignatureContext::CoseSign1,
                    protected(&prot),
                    None,
                    &[],
                    &payload
                )
            );
            assert_eq!(
                enc_structure(&prot, &payload),
                enc_structure_data(EncryptionContext::CoseEncrypt, protected(&prot), &payload)
            );
        }
    }
}
