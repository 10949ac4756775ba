//! The server keeps its layers: a handler (`ca/src/api`) decodes a request, calls one flow
//! (`ca/src/flows`) and encodes the answer. Handlers hold no SQL and no rules: they do not
//! touch the registry, the policy sets or the keys (authentication, in `auth.rs`, is the one
//! edge that reads the registry). Read from the source, so a handler that grows a rule fails
//! here.

use std::path::{Path, PathBuf};

fn api_sources() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "ca/src/api has its handler files");
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// Handlers that answer from the process alone: no request to decide, nothing to write.
/// (The fallbacks for unknown routes and methods, which only return a problem, are also
/// exempt: they are the handlers whose answer is a bare `ApiError`.)
const WITHOUT_FLOW: [&str; 4] = ["healthz", "trust_bundle", "metrics", "openapi"];

#[test]
fn handlers_hold_no_sql_and_reach_no_state_but_through_flows() {
    // What only a flow may use.
    let forbidden = [
        "sqlx",
        ".registry",
        "state.policy",
        "nonce_key",
        "bootstrap_key",
        "tpm_identities",
        "bundle_signing",
        "state.rng",
        "state.clock",
    ];
    for (name, source) in api_sources() {
        // auth.rs authenticates callers (it reads the registry); mod.rs declares the state.
        if ["auth.rs", "doc.rs", "mod.rs"].contains(&name.as_str()) {
            continue;
        }
        for word in forbidden {
            assert!(
                !source.contains(word),
                "ca/src/api/{name} uses `{word}`: that belongs in a flow"
            );
        }
    }
}

#[test]
fn every_handler_calls_exactly_one_flow() {
    let mut handlers = 0;
    for (name, source) in api_sources() {
        let mut rest = source.as_str();
        while let Some(at) = rest.find("pub async fn ") {
            let after = &rest[at + "pub async fn ".len()..];
            let fn_name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let end = after.find("\n}\n").map_or(after.len(), |e| e + 3);
            let body = &after[..end];
            rest = &after[end..];
            // Extractors (`from_request_parts`) are authentication, not handlers.
            if name == "auth.rs" || fn_name == "from_request_parts" {
                continue;
            }
            handlers += 1;
            let flows = body.matches("crate::flows::").count();
            let signature = body.split('{').next().unwrap_or_default();
            if WITHOUT_FLOW.contains(&fn_name.as_str())
                || signature.trim_end().ends_with("-> ApiError")
            {
                assert_eq!(flows, 0, "{name}: `{fn_name}` should need no flow");
            } else {
                assert_eq!(
                    flows, 1,
                    "ca/src/api/{name}: handler `{fn_name}` calls {flows} flows; a handler \
                     decodes, calls one flow and encodes"
                );
            }
        }
    }
    assert!(handlers >= 20, "found only {handlers} handlers");
}
