//! The sidecar's delivery endpoint, `POST /v1/deliver`, and the receiver's checks behind it:
//! whatever the body and content type, the answer is a client error (never a panic, never a
//! server error), and nothing is accepted: a fuzzed envelope carries no valid signature of a
//! device of this fleet.
#![no_main]
use axum::body::Body;
use axum::http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use std::sync::{Arc, Mutex, OnceLock};
use tower::ServiceExt;
use vouch_agent::messaging::deliver::{self, Inbound, Receipt};
use vouch_agent::messaging::receive::{Limits, Receiver};
use vouch_agent::messaging::replay::ReplayGuard;
use vouch_agent::messaging::trust::TrustAnchors;
use vouch_envelope::{KeyAgreementKey, SharedSecretCache};

const ME: &str = "spiffe://fleet.example/device/00";
const NOW: i64 = 1_800_000_000;

struct Fixture {
    anchors: TrustAnchors,
    key: KeyAgreementKey,
    cache: SharedSecretCache,
    replay: Mutex<ReplayGuard>,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> Option<&'static Arc<Fixture>> {
    static FIXTURE: OnceLock<Option<Arc<Fixture>>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let ca = |name: &str| {
                let mut params = CertificateParams::new(Vec::<String>::new()).ok()?;
                params.distinguished_name.push(DnType::CommonName, name);
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
                Some(params)
            };
            let root_key = KeyPair::generate().ok()?;
            let root = ca("root")?.self_signed(&root_key).ok()?;
            let issuing_key = KeyPair::generate().ok()?;
            let issuing = ca("issuing")?.signed_by(&issuing_key, &root, &root_key).ok()?;
            let anchors = TrustAnchors::new(&issuing.pem(), root.der(), "fleet.example").ok()?;
            Some(Arc::new(Fixture {
                anchors,
                key: KeyAgreementKey::from_scalar(&[1; 32]).ok()?,
                cache: SharedSecretCache::new(4),
                replay: Mutex::new(ReplayGuard::in_memory()),
                runtime: tokio::runtime::Builder::new_current_thread().build().ok()?,
            }))
        })
        .as_ref()
}

fn receive(f: &Fixture, bytes: &[u8]) -> Result<Receipt, (&'static str, String)> {
    let receiver = Receiver {
        anchors: &f.anchors,
        crl: None,
        me: ME,
        my_key: &f.key,
        cache: &f.cache,
        known: &|_| None,
        limits: Limits::default(),
    };
    let mut replay = f.replay.lock().map_err(|_| ("lock", String::new()))?;
    let delivered = receiver
        .receive(bytes, NOW, &mut replay, &|_, _, _| Ok(()))
        .map_err(|e| (e.reason(), e.to_string()))?;
    Ok(Receipt {
        message_id: delivered.message_id,
        receipt: String::new(),
        crl_number: None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(f) = fixture() else { return };
    assert!(
        receive(f, data).is_err(),
        "a fuzzed envelope passed the receiver's checks"
    );
    // The first byte picks the content type; the rest is the body.
    let (content_type, body) = match data.split_first() {
        Some((0, rest)) => ("application/json", rest),
        Some((1, rest)) => ("APPLICATION/COSE", rest),
        Some((_, rest)) => (deliver::CONTENT_TYPE, rest),
        None => (deliver::CONTENT_TYPE, data),
    };
    let fixture = Arc::clone(f);
    let inbound: Inbound = Arc::new(move |bytes| {
        let answer = receive(&fixture, &bytes);
        Box::pin(async move { answer })
    });
    let Ok(request) = Request::post("/v1/deliver")
        .header("content-type", content_type)
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    let router = deliver::router(inbound, 64 * 1024);
    let Ok(response) = f.runtime.block_on(router.oneshot(request));
    let status = response.status();
    assert!(
        status.is_client_error(),
        "a fuzzed delivery was answered {status}"
    );
    assert_ne!(status, StatusCode::OK);
});
