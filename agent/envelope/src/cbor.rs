//! The two COSE "to be signed / to be authenticated" structures, written directly (one copy of
//! the payload, no intermediate value tree), and typed readers of decoded CBOR values.

use crate::EnvelopeError;
use coset::cbor::value::Value;
use coset::TaggedCborSerializable;

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

/// One item of a structure read by [`tagged_array`].
#[derive(Debug)]
pub(crate) enum Item<'a> {
    /// A byte string of definite length, borrowed from the input.
    Bytes(&'a [u8]),
    /// Any other item, decoded.
    Other(Value),
}

impl Item<'_> {
    /// The item as coset's decoder gives it (byte strings copied).
    pub(crate) fn into_value(self) -> Value {
        match self {
            Item::Bytes(b) => Value::Bytes(b.to_vec()),
            Item::Other(v) => v,
        }
    }
}

/// Reads one head: major type and argument, definite lengths only.
fn read_head(input: &mut &[u8]) -> Option<(u8, u64)> {
    let (&first, rest) = input.split_first()?;
    let (major, info) = (first >> 5, first & 0x1f);
    let width = match info {
        0..=23 => 0,
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        // Reserved, or an indefinite length: not in an envelope.
        _ => return None,
    };
    let (argument_bytes, rest) = rest.split_at_checked(width)?;
    let argument = if width == 0 {
        u64::from(info)
    } else {
        argument_bytes
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    };
    *input = rest;
    Some((major, argument))
}

/// Reads `bytes` as CBOR tag `tag` around an array of exactly `N` items and nothing after it:
/// byte strings borrowed from `bytes` (a 64 KiB payload is not copied out of the message, as
/// decoding into a value tree would, in 4 KiB pieces), any other item decoded. `None` for
/// anything else: another tag or length, an indefinite length, truncation, trailing bytes.
pub(crate) fn tagged_array<const N: usize>(bytes: &[u8], tag: u64) -> Option<[Item<'_>; N]> {
    let mut input = bytes;
    if read_head(&mut input)? != (6, tag) || read_head(&mut input)? != (4, N as u64) {
        return None;
    }
    let mut items = Vec::with_capacity(N);
    for _ in 0..N {
        let first = *input.first()?;
        if first >> 5 == 2 {
            let (_, len) = read_head(&mut input)?;
            let (item, rest) = input.split_at_checked(usize::try_from(len).ok()?)?;
            items.push(Item::Bytes(item));
            input = rest;
        } else {
            // The decoder reads exactly one item and leaves `input` after it.
            let value: Value = coset::cbor::de::from_reader(&mut input).ok()?;
            items.push(Item::Other(value));
        }
    }
    if !input.is_empty() {
        return None;
    }
    items.try_into().ok()
}

/// `item` under its COSE tag, as coset's `to_tagged_vec` writes it, into a buffer made with
/// room for `capacity` bytes: coset's grows from empty, copying a 64 KiB payload again at each
/// doubling.
pub(crate) fn to_tagged_vec<T: TaggedCborSerializable>(
    item: T,
    capacity: usize,
) -> Result<Vec<u8>, EnvelopeError> {
    let value = item
        .to_cbor_value()
        .map_err(|_| EnvelopeError::EncodingFailed)?;
    let mut out = Vec::with_capacity(capacity);
    coset::cbor::ser::into_writer(&Value::Tag(T::TAG, Box::new(value)), &mut out)
        .map_err(|_| EnvelopeError::EncodingFailed)?;
    Ok(out)
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
    fn the_borrowing_reader_takes_definite_lengths_only_and_nothing_after() {
        // 18([h'a1', {}, h'0102', null])
        let good = [0xd2, 0x84, 0x41, 0xa1, 0xa0, 0x42, 0x01, 0x02, 0xf6];
        let [a, b, c, d] = tagged_array::<4>(&good, 18).unwrap();
        assert!(matches!(a, Item::Bytes([0xa1])));
        assert!(matches!(b, Item::Other(Value::Map(m)) if m.is_empty()));
        assert!(matches!(c, Item::Bytes([0x01, 0x02])));
        assert!(matches!(d, Item::Other(Value::Null)));
        // A non-shortest length is still a definite length, as coset reads it.
        let long_head = [0xd2, 0x84, 0x58, 0x01, 0xa1, 0xa0, 0x42, 0x01, 0x02, 0xf6];
        assert!(tagged_array::<4>(&long_head, 18).is_some());

        let refused: [&[u8]; 9] = [
            &[0xd3, 0x84, 0x41, 0xa1, 0xa0, 0x42, 0x01, 0x02, 0xf6], // another tag
            &[0x84, 0x41, 0xa1, 0xa0, 0x42, 0x01, 0x02, 0xf6],       // no tag
            &[0xd2, 0x83, 0x41, 0xa1, 0xa0, 0x42, 0x01, 0x02],       // three items
            &[0xd2, 0x9f, 0x41, 0xa1, 0xa0, 0x42, 0x01, 0x02, 0xf6, 0xff], // indefinite array
            &[
                0xd2, 0x84, 0x5f, 0x41, 0xa1, 0xff, 0xa0, 0x42, 0x01, 0x02, 0xf6,
            ], // indefinite bstr
            &[0xd2, 0x84, 0x41, 0xa1, 0xa0, 0x42, 0x01, 0x02, 0xf6, 0x00], // trailing byte
            &[0xd2, 0x84, 0x41, 0xa1, 0xa0, 0x43, 0x01, 0x02],       // truncated bstr
            &[
                0xd2, 0x84, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ], // 2^64-1 bytes
            &[0xd2, 0x84, 0x41, 0xa1, 0xa1],                         // truncated map
        ];
        for bytes in refused {
            assert!(tagged_array::<4>(bytes, 18).is_none(), "{bytes:02x?}");
        }
        for end in 0..good.len() {
            assert!(tagged_array::<4>(&good[..end], 18).is_none());
        }
    }

    #[test]
    fn tagged_serialization_matches_coset_whatever_the_capacity() {
        for len in [0usize, 23, 24, 65_536, 70_000] {
            let sign1 = coset::CoseSign1Builder::new()
                .protected(coset::HeaderBuilder::new().key_id(vec![7; 3]).build())
                .payload(vec![0x5a; len])
                .signature(vec![1; 64])
                .build();
            let theirs = sign1.clone().to_tagged_vec().unwrap();
            for capacity in [0, 16, len + 128] {
                assert_eq!(to_tagged_vec(sign1.clone(), capacity).unwrap(), theirs);
            }
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
