//! pycose, an independent COSE implementation, opens Vouch envelopes and makes envelopes that
//! Vouch opens (tests/interop/cose_open.py and cose_seal.py). The interpreter is `$VOUCH_PYTHON`
//! (default `python3`); tests/run.sh installs pycose (tests/interop/requirements.txt) into a
//! virtual environment and sets it. A missing interpreter or pycose fails these tests.

use crate::support::*;
use crate::vectors::{load, Vector, VECTORS};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use vouch_envelope::Envelope;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// Runs `tests/interop/<script>` with the interop interpreter; fails on any error.
fn python(script: &str, args: &[&str]) -> String {
    let python = std::env::var("VOUCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let hint = "pycose comes from `pip install -r tests/interop/requirements.txt`; \
                tests/run.sh installs it and sets VOUCH_PYTHON";
    let out = Command::new(&python)
        .arg(repo_file(&format!("tests/interop/{script}")))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{python}`: {e} ({hint})"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{python} {script}` failed:\n{text}{}\n({hint})",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn check_opened(output: &str, vectors: &[Vector], sender: &Device, recipient: &Device) {
    let lines: Vec<Value> = output
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), vectors.len());
    for (opened, v) in lines.iter().zip(vectors) {
        assert_eq!(opened["name"], v.name.as_str());
        assert_eq!(opened["payload_hex"], hex::encode(&v.payload), "{}", v.name);
        assert_eq!(opened["iss"], sender.spiffe_id.as_str());
        assert_eq!(opened["aud"], recipient.spiffe_id.as_str());
        assert_eq!(opened["data_type"], v.data_type.as_str());
        assert_eq!(opened["session_id_hex"], hex::encode(v.session_id));
        assert_eq!(opened["seq"], v.seq);
    }
}

#[test]
fn pycose_opens_the_committed_vectors() {
    let (sender, recipient, vectors) = load();
    check_opened(
        &python("cose_open.py", &[VECTORS]),
        &vectors,
        &sender,
        &recipient,
    );
}

/// Envelopes sealed now (64 KiB with the chain, 1 KiB without), with the vectors' keys.
#[test]
fn pycose_opens_envelopes_sealed_now() {
    let (sender, recipient, _) = load();
    let mut file: Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    let mut fresh = Vec::new();
    let mut entries = Vec::new();
    for (name, len, include_chain) in [
        ("64-kib-with-chain", 64 * 1024, true),
        ("1-kib", 1024, false),
    ] {
        let payload = pattern(len);
        let envelope = seal_from(
            &sender,
            &recipient,
            &Message {
                payload: &payload,
                include_chain,
                ..Message::default()
            },
        );
        entries.push(serde_json::json!({"name": name, "envelope_hex": hex::encode(&envelope)}));
        fresh.push(Vector {
            name: name.into(),
            data_type: Message::default().data_type.into(),
            session_id: SESSION,
            seq: Message::default().seq,
            iat: IAT,
            exp: EXP,
            now: NOW,
            include_chain,
            payload,
            rng: Vec::new(),
            envelope,
        });
    }
    file["vectors"] = Value::Array(entries);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("envelope-fresh-vectors.json");
    std::fs::write(&path, file.to_string()).unwrap();
    let output = python("cose_open.py", &[path.to_str().unwrap()]);
    check_opened(&output, &fresh, &sender, &recipient);
}

#[test]
fn vouch_opens_envelopes_pycose_made() {
    let (sender, recipient, _) = load();
    let payload = pattern(3000);
    for include_chain in [false, true] {
        let (seq, iat, exp) = (42.to_string(), IAT.to_string(), EXP.to_string());
        let payload_hex = hex::encode(&payload);
        let mut args = vec![
            VECTORS,
            &payload_hex,
            "camera.frame",
            "000102030405060708090a0b0c0d0e0f",
            &seq,
            &iat,
            &exp,
        ];
        if include_chain {
            args.push("--chain");
        }
        let envelope = hex::decode(python("cose_seal.py", &args).trim()).unwrap();
        assert_eq!(
            receive(&envelope, &recipient, &sender, NOW).unwrap(),
            payload
        );
        let parsed = Envelope::parse(&envelope, MAX_LEN).unwrap();
        let header = parsed.header();
        assert_eq!(header.data_type(), "camera.frame");
        assert_eq!(header.seq(), 42);
        assert_eq!(header.session_id(), &core::array::from_fn(|i| i as u8));
        assert_eq!(header.claims().iss(), sender.spiffe_id);
        if include_chain {
            assert_eq!(
                parsed.certificates(),
                std::slice::from_ref(&sender.device_cert)
            );
            assert_eq!(
                parsed.sender_key_agreement_certificate(),
                Some(sender.ka_cert.as_slice())
            );
        } else {
            assert!(parsed.certificates().is_empty());
        }
    }
}
