//! Acceptance 3: malformed, oversized, wrong-algorithm or bad-signature CSRs, malformed JSON
//! and unknown fields get 4xx problem responses; no panic, no row written, and the token is
//! still good afterwards.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::json;
use vouch_proto::ProblemCode;

/// Sends `body` (raw bytes, JSON content type) to `/v1/enroll` and checks the problem, that
/// nothing was written, and that the server still answers.
async fn refused_raw(
    app: &TestApp,
    body: Vec<u8>,
    content_type: Option<&str>,
    status: StatusCode,
    code: ProblemCode,
) {
    let before = app.counts().await;
    let mut r = app.client.post(app.url("/v1/enroll")).body(body);
    if let Some(ct) = content_type {
        r = r.header("content-type", ct);
    }
    assert_problem(r.send().await.unwrap(), status, code).await;
    assert_eq!(app.counts().await, before);
    assert_eq!(app.get("/healthz", None).await.status(), StatusCode::OK);
}

async fn refused_csr(app: &TestApp, token: &str, csr: &str, status: StatusCode, code: ProblemCode) {
    let body = serde_json::to_vec(&json!({"token": token, "csr_pem": csr})).unwrap();
    refused_raw(app, body, Some("application/json"), status, code).await;
}

fn der_to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.to_vec()))
}

#[tokio::test]
async fn hostile_csrs_are_refused_and_write_nothing() {
    let app = spawn_app(Db::Sqlite).await;
    let dir = app.dir.path();
    let token = app.bootstrap_token("factory-1").await;
    let (good, _) = openssl_csr(dir, "ec", &["ec_paramgen_curve:P-256"]);
    let good_der = pem::parse(&good).unwrap().into_contents();

    // Not PEM, wrong label, two blocks, garbage DER, truncated DER, trailing bytes.
    let mut trailing = good_der.clone();
    trailing.extend_from_slice(b"\0\0");
    let malformed = [
        "hello".to_owned(),
        pem::encode(&pem::Pem::new("CERTIFICATE", good_der.clone())),
        format!("{good}{good}"),
        der_to_pem(b"\x30\x82\xff\xff garbage"),
        der_to_pem(&good_der[..good_der.len() / 2]),
        der_to_pem(&trailing),
    ];
    for csr in &malformed {
        refused_csr(
            &app,
            &token,
            csr,
            StatusCode::BAD_REQUEST,
            ProblemCode::CsrMalformed,
        )
        .await;
    }

    // Oversized CSR inside an acceptable body; oversized body.
    let big = format!("{good}{}", "A".repeat(20 * 1024));
    refused_csr(
        &app,
        &token,
        &big,
        StatusCode::PAYLOAD_TOO_LARGE,
        ProblemCode::CsrTooLarge,
    )
    .await;
    let huge =
        serde_json::to_vec(&json!({"token": token, "csr_pem": "A".repeat(100 * 1024)})).unwrap();
    refused_raw(
        &app,
        huge,
        Some("application/json"),
        StatusCode::PAYLOAD_TOO_LARGE,
        ProblemCode::BodyTooLarge,
    )
    .await;

    // Wrong algorithm or key size: RSA-1024, P-521, P-256 signed with SHA-384.
    let (rsa1024, _) = openssl_csr(dir, "rsa:1024", &[]);
    let (p521, _) = openssl_csr(dir, "ec", &["ec_paramgen_curve:P-521"]);
    for csr in [&rsa1024, &p521] {
        refused_csr(
            &app,
            &token,
            csr,
            StatusCode::BAD_REQUEST,
            ProblemCode::CsrUnsupportedKey,
        )
        .await;
    }
    let key = write(
        dir,
        "k.pem",
        openssl_csr(dir, "ec", &["ec_paramgen_curve:P-256"])
            .1
            .as_bytes(),
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-sha384",
            "-subj",
            "/CN=x",
            "-out",
            "sha384.csr",
        ],
    );
    let sha384 = std::fs::read_to_string(dir.join("sha384.csr")).unwrap();
    refused_csr(
        &app,
        &token,
        &sha384,
        StatusCode::BAD_REQUEST,
        ProblemCode::CsrUnsupportedAlgorithm,
    )
    .await;

    // Bad signature: change one byte of the signed subject, keep the signature.
    let mut tampered = good_der.clone();
    let at = tampered.windows(7).position(|w| w == b"ignored").unwrap();
    tampered[at] = b'J';
    refused_csr(
        &app,
        &token,
        &der_to_pem(&tampered),
        StatusCode::BAD_REQUEST,
        ProblemCode::CsrBadSignature,
    )
    .await;

    // Every refusal left the token usable.
    let r = app.enroll_with_csr(&token, &good).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn malformed_json_and_unknown_fields_are_refused() {
    let app = spawn_app(Db::Sqlite).await;
    let token = app.bootstrap_token("factory-1").await;
    let json_body = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let cases = [
        (
            b"{\"token\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            ProblemCode::MalformedJson,
        ),
        (
            b"\xff\xfe".to_vec(),
            StatusCode::BAD_REQUEST,
            ProblemCode::MalformedJson,
        ),
        (
            json_body(json!({"token": token, "generate_key": true, "admin": true})),
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody,
        ),
        (
            json_body(json!({"token": 5, "generate_key": true})),
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody,
        ),
        (
            json_body(json!({"token": token, "generate_key": true, "csr_pem": "x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody,
        ),
        (
            json_body(json!({"token": token})),
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody,
        ),
    ];
    for (body, status, code) in cases {
        refused_raw(&app, body, Some("application/json"), status, code).await;
    }
    let ok = json_body(json!({"token": token, "generate_key": true}));
    refused_raw(
        &app,
        ok,
        None,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ProblemCode::UnsupportedMediaType,
    )
    .await;

    // Operator bodies too.
    let before = app.counts().await;
    for body in [
        json!({"zone": "z", "extra": 1}),
        json!({"zone": "Bad Zone"}),
        json!({"zone": "z", "ttl_seconds": 10}),
        json!({"zone": "z", "labels": {"k": "v\n"}}),
        json!({"zone": "z", "device_class": "x/y"}),
    ] {
        let (s, p) = problem(
            app.post("/v1/bootstrap-tokens", Some(&app.admin), &body)
                .await,
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body} {p}");
    }
    assert_eq!(app.counts().await, before);
    assert_problem(
        app.get("/v1/devices?limit=0", Some(&app.admin)).await,
        StatusCode::BAD_REQUEST,
        ProblemCode::InvalidQuery,
    )
    .await;
    let (s, _) = problem(app.get("/v1/devices?cursor=../x", Some(&app.admin)).await).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = problem(app.get("/v1/devices/not-an-id", Some(&app.admin)).await).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = problem(app.get("/no/such/route", None).await).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
