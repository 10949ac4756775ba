//! The interoperability tier: what a real server produces, checked by tools that are not ours.
//!
//! - Every kind of certificate Vouch issues (root, issuing CA, device SVID, server, policy
//!   signer) and its CRL: exact DER here, then pyca/cryptography (parsing, signatures and its
//!   RFC 5280 path validation) and py-spiffe (the X.509-SVID rules) in
//!   `tests/interop/check_certificates.py`.
//! - `/openapi.json`: openapi-spec-validator, then a bounded schemathesis run against the live
//!   server (`tests/interop/schemathesis.sh`).
//! - `/metrics` in both exposition formats: the Prometheus Python client and `promtool`.
//!
//! The Python tools come from `tests/interop/requirements.txt`; `tests/run.sh` installs them in
//! a virtual environment and names its interpreter in `VOUCH_PYTHON` (default `python3`).
//! These tests fail, rather than skip, when a tool is missing.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use vouch_ca::datadir::DataFile;
use vouch_proto::ProblemCode;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Runs `program` with `args`; fails the test with its output unless it exits 0.
fn run_tool(program: &str, args: &[&str], hint: &str) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e}); {hint}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`{program} {args:?}` failed:\n{text}\n({hint})"
    );
    text
}

/// Runs one of `tests/interop/*.py` with the interop interpreter.
fn python(script: &str, args: &[&str]) -> String {
    let python = std::env::var("VOUCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = repo_file(&format!("tests/interop/{script}"));
    let mut all = vec![script.to_str().unwrap()];
    all.extend_from_slice(args);
    run_tool(
        &python,
        &all,
        "the interop tools come from `pip install -r tests/interop/requirements.txt`; \
         tests/run.sh installs them and sets VOUCH_PYTHON",
    )
}

fn pem_blocks(text: &str) -> Vec<Vec<u8>> {
    pem::parse_many(text)
        .unwrap()
        .into_iter()
        .map(|p| p.contents().to_vec())
        .collect()
}

/// Every certificate kind the server issues, DER, plus a device key and the CRL.
struct Issued {
    root: Vec<u8>,
    issuing: Vec<u8>,
    device: Vec<u8>,
    device_key_pem: String,
    device_spiffe_id: String,
    server: Vec<u8>,
    policy_signer: Vec<u8>,
    crl: Vec<u8>,
}

async fn collect_issued(app: &TestApp) -> Issued {
    // A device whose key the server generates (so that py-spiffe gets a key to load too).
    let body = app.enroll_with_server_key("sensors").await;
    let device = pem_blocks(body["certificate_pem"].as_str().unwrap()).remove(0);
    let identity = format!(
        "{}{}{}",
        body["certificate_pem"].as_str().unwrap(),
        body["ca_chain_pem"].as_str().unwrap(),
        body["private_key_pem"].as_str().unwrap()
    );

    // The policy signer's certificate rides in the bundle's `x5c` header.
    let r = client_for(&app.root_pem(), Some(identity.as_bytes()))
        .get(app.url("/v1/policy/bundle"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let jws = r.text().await.unwrap();
    let header = jsonwebtoken::decode_header(&jws).unwrap();
    let policy_signer = header.x5c_der().unwrap().unwrap().remove(0);

    // The server's certificate, as a TLS client sees it.
    let port = app.server.addr.port().to_string();
    let shown = run_tool(
        "openssl",
        &[
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-showcerts",
        ],
        "openssl is installed by tests/run.sh",
    );
    let server = pem_blocks(&shown).remove(0);

    // A CRL that lists something.
    let victim = app.enroll("sensors").await;
    let r = app.revoke(victim.device_id(), "interop test").await;
    assert_eq!(r.status(), StatusCode::OK);
    let crl = app
        .get("/v1/crl", None)
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();

    let data = app.data_dir();
    let read = |f| pem_blocks(&std::fs::read_to_string(data.file(f)).unwrap()).remove(0);
    Issued {
        root: read(DataFile::RootCert),
        issuing: read(DataFile::IssuingCert),
        device,
        device_key_pem: body["private_key_pem"].as_str().unwrap().to_owned(),
        device_spiffe_id: body["spiffe_id"].as_str().unwrap().to_owned(),
        server,
        policy_signer,
        crl,
    }
}

/// Walks DER and reports what DER forbids and BER allows: long-form lengths where the short
/// form fits, lengths with leading zero octets, indefinite lengths, non-minimal INTEGERs, and
/// BOOLEANs that are not `FF` or that say FALSE (every BOOLEAN in a certificate or CRL has
/// DEFAULT FALSE, so FALSE spelled out is never DER). OCTET STRINGs are not opened.
fn der_problems(der: &[u8], at: &str, out: &mut Vec<String>) {
    let mut rest = der;
    while !rest.is_empty() {
        let [tag, first, tail @ ..] = rest else {
            out.push(format!("{at}: truncated element"));
            return;
        };
        let (len, header) = match *first {
            n if n < 0x80 => (usize::from(n), 2),
            0x80 => {
                out.push(format!("{at}: indefinite length"));
                return;
            }
            n => {
                let count = usize::from(n & 0x7f);
                let Some(bytes) = tail.get(..count) else {
                    out.push(format!("{at}: truncated length"));
                    return;
                };
                let len = bytes.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b));
                if bytes.first() == Some(&0) || len < 0x80 {
                    out.push(format!("{at}: length {len} not in its shortest form"));
                }
                (len, 2 + count)
            }
        };
        let Some(content) = rest.get(header..header + len) else {
            out.push(format!("{at}: content runs past the end"));
            return;
        };
        match tag {
            0x01 if content != [0xff] => {
                out.push(format!("{at}: BOOLEAN {content:02x?} (FALSE is a DEFAULT and must be left out; TRUE is FF)"))
            }
            0x02 if matches!(content, [0x00, b, ..] if b & 0x80 == 0)
                || matches!(content, [0xff, b, ..] if b & 0x80 != 0) =>
            {
                out.push(format!("{at}: INTEGER {content:02x?} not minimal"))
            }
            t if t & 0x20 != 0 => der_problems(content, at, out),
            _ => {}
        }
        rest = &rest[header + len..];
    }
}

/// The exact DER of every extension we write ourselves, and the DER rules over the whole
/// certificate and over each extension's value.
fn check_certificate(name: &str, der: &[u8], expected: &[(&str, bool, &[u8])]) -> Vec<String> {
    let mut problems = Vec::new();
    der_problems(der, name, &mut problems);
    let (rest, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    assert!(rest.is_empty(), "{name}: trailing bytes");
    for ext in cert.extensions() {
        der_problems(
            ext.value,
            &format!("{name} extension {}", ext.oid),
            &mut problems,
        );
        if ext.oid.to_id_string() == KEY_USAGE && !minimal_named_bits(ext.value) {
            problems.push(format!(
                "{name}: keyUsage {:02x?} has trailing zero bits (DER drops them)",
                ext.value
            ));
        }
    }
    for (oid, critical, value) in expected {
        match cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == *oid)
        {
            None => problems.push(format!("{name}: no extension {oid}")),
            Some(e) => {
                if e.critical != *critical || e.value != *value {
                    problems.push(format!(
                        "{name}: extension {oid} is {:02x?} (critical {}), expected {value:02x?} (critical {critical})",
                        e.value, e.critical
                    ));
                }
            }
        }
    }
    problems
}

/// Whether a BIT STRING holding a named bit list (X.690 11.2.2) ends in its last set bit.
fn minimal_named_bits(bit_string: &[u8]) -> bool {
    match bit_string {
        [0x03, 0x01, 0x00] => true,
        [0x03, _, unused, .., last] => *unused < 8 && *last != 0 && last & (1 << unused) != 0,
        _ => false,
    }
}

const BASIC_CONSTRAINTS: &str = "2.5.29.19";
const KEY_USAGE: &str = "2.5.29.15";

// The server runs on the test's runtime while a tool talks to it: a second worker serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_certificate_and_the_crl_are_der_exact() {
    // The example policies make it sign policy bundles.
    let app = spawn_app_with_example_policies(Db::Sqlite).await;
    let issued = collect_issued(&app).await;
    // basicConstraints of an end entity: an empty SEQUENCE (cA FALSE is the DEFAULT); keyUsage
    // digitalSignature as one bit, not nine.
    let end_entity: &[(&str, bool, &[u8])] = &[
        (BASIC_CONSTRAINTS, true, &[0x30, 0x00]),
        (KEY_USAGE, true, &[0x03, 0x02, 0x07, 0x80]),
    ];
    // The CAs: cA TRUE with a path length (1 for the root, 0 below it).
    let root: &[(&str, bool, &[u8])] = &[
        (
            BASIC_CONSTRAINTS,
            true,
            &[0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x01],
        ),
        (KEY_USAGE, true, &[0x03, 0x02, 0x01, 0x06]),
    ];
    let issuing_ca: &[(&str, bool, &[u8])] = &[
        (
            BASIC_CONSTRAINTS,
            true,
            &[0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x00],
        ),
        (KEY_USAGE, true, &[0x03, 0x02, 0x01, 0x86]),
    ];
    let mut problems = Vec::new();
    for (name, der, expected) in [
        ("device", &issued.device, end_entity),
        ("server", &issued.server, end_entity),
        ("policy signer", &issued.policy_signer, end_entity),
        ("root", &issued.root, root),
        ("issuing CA", &issued.issuing, issuing_ca),
    ] {
        problems.extend(check_certificate(name, der, expected));
    }
    der_problems(&issued.crl, "CRL", &mut problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The device certificate's subject key identifier is RFC 7093 method 1 of its key.
    let (_, device) = x509_parser::parse_x509_certificate(&issued.device).unwrap();
    let key_bits = device.public_key().subject_public_key.data.to_vec();
    let digest = ring::digest::digest(&ring::digest::SHA256, &key_bits);
    let ski = device
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "2.5.29.14")
        .expect("a subject key identifier");
    assert_eq!(ski.value.get(2..), digest.as_ref().get(..20));
}

#[test]
fn the_der_checker_refuses_what_rcgen_used_to_write() {
    // basicConstraints with cA FALSE spelled out, and keyUsage digitalSignature in nine bits
    // (BIT STRING 07 80 00: the trailing zero octet is what the checker in
    // `check_certificate` compares against).
    let mut problems = Vec::new();
    der_problems(&[0x30, 0x03, 0x01, 0x01, 0x00], "cA FALSE", &mut problems);
    der_problems(&[0x02, 0x02, 0x00, 0x01], "INTEGER 00 01", &mut problems);
    der_problems(&[0x04, 0x81, 0x01, 0x00], "long form", &mut problems);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(!minimal_named_bits(&[0x03, 0x03, 0x07, 0x80, 0x00]));
    assert!(!minimal_named_bits(&[0x03, 0x02, 0x00, 0x80]));
    assert!(minimal_named_bits(&[0x03, 0x02, 0x07, 0x80]));
    assert!(minimal_named_bits(&[0x03, 0x02, 0x01, 0x86]));
    let mut none = Vec::new();
    der_problems(
        &[0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x00],
        "CA",
        &mut none,
    );
    assert!(none.is_empty(), "{none:?}");
}

// The server runs on the test's runtime while a tool talks to it: a second worker serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyca_cryptography_and_py_spiffe_accept_every_certificate_and_the_crl() {
    // The example policies make it sign policy bundles.
    let app = spawn_app_with_example_policies(Db::Sqlite).await;
    let issued = collect_issued(&app).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = |der: &[u8]| vouch_ca::pki::authority::cert_pem(der).into_bytes();
    write(dir.path(), "root.pem", &pem(&issued.root));
    write(dir.path(), "issuing.pem", &pem(&issued.issuing));
    write(dir.path(), "device.pem", &pem(&issued.device));
    write(dir.path(), "device.key", issued.device_key_pem.as_bytes());
    write(dir.path(), "server.pem", &pem(&issued.server));
    write(dir.path(), "policy-signer.pem", &pem(&issued.policy_signer));
    write(dir.path(), "crl.der", &issued.crl);
    let out = python(
        "check_certificates.py",
        &[dir.path().to_str().unwrap(), &issued.device_spiffe_id],
    );
    assert!(out.contains("accept every certificate"), "{out}");
}

#[tokio::test]
async fn a_server_on_port_zero_puts_its_real_port_in_certificates() {
    let app = spawn_app(Db::Sqlite).await;
    let device = app.enroll("sensors").await;
    let der = pem_blocks(device.body["certificate_pem"].as_str().unwrap()).remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let points = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::CRLDistributionPoints(p) => Some(p),
            _ => None,
        })
        .expect("a CRL distribution point");
    let urls: Vec<String> = points
        .points
        .iter()
        .flat_map(|p| match &p.distribution_point {
            Some(x509_parser::extensions::DistributionPointName::FullName(names)) => names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    let port = app.server.addr.port();
    assert_ne!(port, 0);
    assert_eq!(urls, vec![format!("https://localhost:{port}/v1/crl")]);
}

#[tokio::test]
async fn metrics_parse_in_both_formats_and_pass_promtool() {
    let app = spawn_app(Db::Sqlite).await;
    app.enroll("sensors").await;
    let fetch = |accept: Option<&'static str>| {
        let mut r = app.client.get(app.url("/metrics"));
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
            (ct, r.text().await.unwrap())
        }
    };
    let (ct_text, text) = fetch(Some("text/plain;version=0.0.4")).await;
    assert!(
        ct_text.starts_with("text/plain; version=0.0.4"),
        "{ct_text}"
    );
    let (ct_default, default) = fetch(None).await;
    assert_eq!(
        ct_default, ct_text,
        "a scraper that does not negotiate gets the text format"
    );
    assert_eq!(default, text);
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (ct_om, openmetrics) = fetch(Some(prometheus)).await;
    assert!(
        ct_om.starts_with("application/openmetrics-text; version=1.0.0"),
        "{ct_om}"
    );
    assert!(openmetrics.ends_with("# EOF\n"));
    assert!(
        text.contains("vouch_enrollments_total{outcome=\"issued\"} 1"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let text_file = write(dir.path(), "metrics.txt", text.as_bytes());
    let om_file = write(dir.path(), "metrics.om", openmetrics.as_bytes());
    let out = python(
        "check_metrics.py",
        &[text_file.to_str().unwrap(), om_file.to_str().unwrap()],
    );
    assert!(out.contains("each with help text"), "{out}");

    // promtool reads the metrics from standard input.
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is needed (Debian's `prometheus` package; tests/run.sh installs it): {e}"
            )
        });
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

#[tokio::test]
async fn the_openapi_document_is_valid() {
    let app = spawn_app(Db::Sqlite).await;
    let r = app.get("/openapi.json", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.unwrap();
    // What openapi-spec-validator refused before: query parameters declared in the path.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "path" {
                    let name = p["name"].as_str().unwrap();
                    assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{method} {path}: `{name}` is declared in the path but is not in it"
                    );
                }
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "openapi.json",
        &serde_json::to_vec(&doc).unwrap(),
    );
    let out = python("check_openapi.py", &[file.to_str().unwrap()]);
    assert!(out.contains("valid OpenAPI"), "{out}");
}

// The server runs on the test's runtime while a tool talks to it: a second worker serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_against_the_live_server() {
    // The example policies make it sign policy bundles.
    let app = spawn_app_with_example_policies(Db::Sqlite).await;
    // The device the device operations ask about.
    let device = app.enroll("sensors").await;
    let dir = tempfile::tempdir().unwrap();
    let root = write(dir.path(), "root.pem", &app.root_pem());
    let python = std::env::var("VOUCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = run_tool(
        "bash",
        &[
            repo_file("tests/interop/schemathesis.sh").to_str().unwrap(),
            &app.base,
            &app.admin,
            root.to_str().unwrap(),
            device.device_id(),
            &python,
        ],
        "schemathesis comes from tests/interop/requirements.txt",
    );
    println!("{out}");
}

#[tokio::test]
async fn errors_and_405_answers_are_problem_documents() {
    let app = spawn_app(Db::Sqlite).await;
    let r = app
        .client
        .delete(app.url("/v1/enroll"))
        .send()
        .await
        .unwrap();
    let allow = r
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_problem(
        r,
        StatusCode::METHOD_NOT_ALLOWED,
        ProblemCode::MethodNotAllowed,
    )
    .await;
    assert_eq!(allow.as_deref(), Some("POST"));
    let (status, _) = problem(app.get("/v1/devices?limit=0", Some(&app.admin)).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
