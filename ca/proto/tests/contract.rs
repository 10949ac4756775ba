//! The contract holds in one place: every problem code keeps its wire spelling and status, and
//! no Rust source outside this crate spells a problem code as a string literal (server and
//! agent use [`ProblemCode`], so a renamed or removed code fails to compile instead of
//! drifting).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use vouch_proto::ProblemCode;

/// The wire spelling and status of every code, as released. A change here is a change of
/// the protocol: agents in the field act on these strings.
const RELEASED: &[(&str, u16)] = &[
    ("malformed_json", 400),
    ("invalid_body", 422),
    ("invalid_query", 400),
    ("bad_request", 400),
    ("body_too_large", 413),
    ("request_body_timeout", 408),
    ("unsupported_media_type", 415),
    ("not_found", 404),
    ("method_not_allowed", 405),
    ("internal", 500),
    ("not_ready", 503),
    ("unauthenticated", 401),
    ("forbidden_role", 403),
    ("device_not_found", 404),
    ("device_already_revoked", 409),
    ("device_not_quarantined", 409),
    ("device_has_no_tpm", 409),
    ("zone_mismatch", 409),
    ("token_invalid", 401),
    ("token_expired", 401),
    ("token_revoked", 401),
    ("token_used", 403),
    ("token_requires_tpm", 422),
    ("csr_malformed", 400),
    ("csr_unsupported_key", 400),
    ("csr_unsupported_algorithm", 400),
    ("csr_bad_signature", 400),
    ("csr_too_large", 413),
    ("tpm_enrollment_unconfigured", 403),
    ("tpm_structure_invalid", 422),
    ("not_an_attestation_key", 422),
    ("ek_certificate_required", 422),
    ("ek_certificate_invalid", 422),
    ("ek_already_enrolled", 409),
    ("activation_invalid", 403),
    ("ek_mismatch", 403),
    ("client_certificate_required", 401),
    ("client_certificate_invalid", 401),
    ("client_certificate_expired", 401),
    ("device_unknown", 403),
    ("device_revoked", 403),
    ("certificate_revoked", 403),
    ("device_quarantined", 403),
    ("device_stale", 403),
    ("no_attestation_key", 409),
    ("nonce_invalid", 403),
    ("attestation_failed", 422),
    ("invalid_request", 422),
    ("forbidden_request", 403),
    ("no_policy", 404),
    ("decision_log_unavailable", 503),
    ("rate_limited", 429),
    ("no_key_agreement_certificate", 404),
    ("peer_revoked", 410),
    ("message_refused", 403),
    ("peer_unreachable", 502),
    ("policy_denied", 403),
];

#[test]
fn every_code_keeps_its_wire_spelling_and_status() {
    let now: Vec<(&str, u16)> = ProblemCode::ALL
        .iter()
        .map(|c| (c.as_str(), c.status()))
        .collect();
    assert_eq!(now, RELEASED);
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "proto") {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The string literals `"..."` in `text` that are exactly a problem code.
fn code_literals(text: &str) -> Vec<&'static str> {
    ProblemCode::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|code| text.contains(&format!("\"{code}\"")))
        .collect()
}

#[test]
fn no_source_outside_the_protocol_crate_spells_a_problem_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for dir in ["ca", "agent", "attestor", "policy", "fuzz"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} Rust files", files.len());
    let offenders: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let found = code_literals(&text);
            (!found.is_empty()).then(|| format!("{}: {found:?}", f.display()))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "problem codes spelled as strings (use vouch_proto::ProblemCode):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_check_sees_a_spelled_code() {
    assert_eq!(
        code_literals(r#"assert_eq!(body["code"], "token_used");"#),
        ["token_used"]
    );
    assert!(code_literals("ProblemCode::TokenUsed.as_str()").is_empty());
}
