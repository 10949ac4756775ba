//! The committed test vectors (`testdata/vectors.json`): they still open with the current code,
//! and sealing their inputs with their random bytes gives the same envelope up to the signature
//! (ring's ECDSA signing draws its nonce from the system generator). `generate_vectors` writes
//! the file; run it on purpose, see docs/envelope.md.

use crate::support::*;
use ring::digest;
use serde_json::{json, Value};
use vouch_envelope::{seal, Envelope, SealRequest, SharedSecretCache};

pub const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/vectors.json");

/// The inputs of each vector: name, data type, sequence number, payload, include_chain.
fn inputs() -> Vec<(&'static str, &'static str, u64, Vec<u8>, bool)> {
    vec![
        (
            "short-text",
            "telemetry.temperature",
            1,
            b"21.5 C".to_vec(),
            false,
        ),
        ("1-kib-with-chain", "camera.frame", 2, pattern(1024), true),
        ("empty-payload", "control.heartbeat", 3, Vec::new(), false),
    ]
}

/// 44 bytes (claim id, salt, IV) derived from the vector's name.
fn rng_bytes(name: &str) -> Vec<u8> {
    let block = |i: u8| {
        let mut input = format!("vouch-envelope vectors rng {name} ").into_bytes();
        input.push(i);
        digest::digest(&digest::SHA256, &input).as_ref().to_vec()
    };
    let mut bytes = block(0);
    bytes.extend(block(1));
    bytes.truncate(44);
    bytes
}

fn device_json(d: &Device) -> Value {
    json!({
        "spiffe_id": d.spiffe_id,
        "device_key_pem": pem_encode("PRIVATE KEY", &d.device_key),
        "device_public_key_hex": hex::encode(d.device_public_key()),
        "device_certificate_pem": pem_encode("CERTIFICATE", &d.device_cert),
        "key_agreement_key_pem": pem_encode("PRIVATE KEY", &d.ka_key),
        "key_agreement_public_key_hex": hex::encode(d.ka_public_key()),
        "key_agreement_certificate_pem": pem_encode("CERTIFICATE", &d.ka_cert),
    })
}

pub fn device_from_json(v: &Value) -> Device {
    let text = |k: &str| v[k].as_str().unwrap().to_owned();
    Device {
        spiffe_id: text("spiffe_id"),
        device_key: pem_decode(&text("device_key_pem")),
        device_cert: pem_decode(&text("device_certificate_pem")),
        ka_key: pem_decode(&text("key_agreement_key_pem")),
        ka_cert: pem_decode(&text("key_agreement_certificate_pem")),
    }
}

pub struct Vector {
    pub name: String,
    pub data_type: String,
    pub session_id: [u8; 16],
    pub seq: u64,
    pub iat: u64,
    pub exp: u64,
    pub now: u64,
    pub include_chain: bool,
    pub payload: Vec<u8>,
    pub rng: Vec<u8>,
    pub envelope: Vec<u8>,
}

pub fn load() -> (Device, Device, Vec<Vector>) {
    let file: Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    let vectors = file["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let hex_of = |k: &str| hex::decode(v[k].as_str().unwrap()).unwrap();
            Vector {
                name: v["name"].as_str().unwrap().to_owned(),
                data_type: v["data_type"].as_str().unwrap().to_owned(),
                session_id: hex_of("session_id_hex").try_into().unwrap(),
                seq: v["seq"].as_u64().unwrap(),
                iat: v["iat"].as_u64().unwrap(),
                exp: v["exp"].as_u64().unwrap(),
                now: v["now"].as_u64().unwrap(),
                include_chain: v["include_chain"].as_bool().unwrap(),
                payload: hex_of("payload_hex"),
                rng: hex_of("rng_hex"),
                envelope: hex_of("envelope_hex"),
            }
        })
        .collect();
    (
        device_from_json(&file["sender"]),
        device_from_json(&file["recipient"]),
        vectors,
    )
}

fn reseal(sender: &Device, recipient: &Device, v: &Vector) -> (Vec<u8>, usize) {
    let rng = FixedBytes::new(v.rng.clone());
    let bytes = seal(
        &SealRequest {
            sender: &sender.sender_keys(),
            recipient: &recipient.recipient_keys(),
            data_type: &v.data_type,
            session_id: &v.session_id,
            seq: v.seq,
            iat: v.iat,
            exp: v.exp,
            payload: &v.payload,
            include_chain: v.include_chain,
        },
        &rng,
        &SharedSecretCache::new(1),
    )
    .unwrap();
    (bytes, rng.used())
}

#[test]
#[ignore = "writes testdata/vectors.json; run on purpose and commit the result"]
fn generate_vectors() {
    let f = fleet();
    let vectors: Vec<Value> = inputs()
        .into_iter()
        .map(|(name, data_type, seq, payload, include_chain)| {
            let mut v = Vector {
                name: name.to_owned(),
                data_type: data_type.to_owned(),
                session_id: SESSION,
                seq,
                iat: IAT,
                exp: EXP,
                now: NOW,
                include_chain,
                payload,
                rng: rng_bytes(name),
                envelope: Vec::new(),
            };
            v.envelope = reseal(&f.a, &f.b, &v).0;
            json!({
                "name": v.name,
                "data_type": v.data_type,
                "session_id_hex": hex::encode(v.session_id),
                "seq": v.seq,
                "iat": v.iat,
                "exp": v.exp,
                "now": v.now,
                "include_chain": v.include_chain,
                "payload_hex": hex::encode(&v.payload),
                "rng_hex": hex::encode(&v.rng),
                "envelope_hex": hex::encode(&v.envelope),
            })
        })
        .collect();
    let file = json!({
        "about": "Vouch envelope test vectors (docs/envelope.md). Keys are PKCS#8, certificates DER, both PEM; \
                  public keys are uncompressed SEC1 points. rng_hex is what the random source gave, in order: \
                  cti (16 bytes), HKDF salt (16), AES-GCM IV (12). The ECDSA signature (the last 64 bytes) \
                  is randomized. 'now' is a receiver time at which each envelope is fresh.",
        "regenerate": "cargo test -p vouch-envelope --test envelope -- --ignored generate_vectors",
        "ca_certificate_pem": pem_encode("CERTIFICATE", &f.ca.der()),
        "sender": device_json(&f.a),
        "recipient": device_json(&f.b),
        "vectors": vectors,
    });
    std::fs::write(VECTORS, serde_json::to_string_pretty(&file).unwrap() + "\n").unwrap();
}

#[test]
fn committed_vectors_open_with_current_code() {
    let (sender, recipient, vectors) = load();
    assert_eq!(vectors.len(), 3);
    for v in &vectors {
        assert_eq!(
            receive(&v.envelope, &recipient, &sender, v.now).unwrap(),
            v.payload,
            "{}",
            v.name
        );
        let header = Envelope::parse(&v.envelope, MAX_LEN)
            .unwrap()
            .header()
            .clone();
        assert_eq!(header.data_type(), v.data_type);
        assert_eq!((header.seq(), header.session_id()), (v.seq, &v.session_id));
        assert_eq!(header.claims().cti().to_vec(), v.rng[..16].to_vec());
    }
}

#[test]
fn sealing_reproduces_committed_vectors_except_the_signature() {
    let (sender, recipient, vectors) = load();
    for v in &vectors {
        let (bytes, used) = reseal(&sender, &recipient, v);
        assert_eq!(used, 44, "{}: random bytes drawn", v.name);
        assert_eq!(bytes.len(), v.envelope.len(), "{}", v.name);
        let unsigned = bytes.len() - 64;
        // The signature is the Sign1's last item: bstr(64) = 0x58 0x40, then r || s.
        assert_eq!(v.envelope[unsigned - 2..unsigned], [0x58, 0x40]);
        assert_eq!(bytes[..unsigned], v.envelope[..unsigned], "{}", v.name);
        assert_eq!(
            receive(&bytes, &recipient, &sender, v.now).unwrap(),
            v.payload
        );
    }
}
