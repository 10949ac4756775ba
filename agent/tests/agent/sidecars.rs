//! Three real `vouch-agent` processes (a sensor, an edge gateway and a regional node) against
//! a real server with the example policies and a real MQTT broker (Debian's `mosquitto`):
//! the sensor's telemetry reaches the gateway through the broker, intact; the sensor's
//! message to the regional node is refused at the sender by policy; and the same message
//! sealed by hand and posted straight to the regional node is refused by the regional node's
//! own policy.

use crate::server::*;
use crate::support::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vouch_agent::client::HttpApi;
use vouch_agent::lifecycle::{Api, ClientIdentity};
use vouch_agent::messaging::deliver::{self, DeliveryError};
use vouch_agent::messaging::peers::verify_peer_record;
use vouch_agent::messaging::send::{Credentials, Outbox};
use vouch_agent::messaging::trust::TrustAnchors;

/// A mosquitto broker on a free loopback port, stopped on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let binary = ["/usr/sbin/mosquitto", "mosquitto"]
            .into_iter()
            .find(|b| Path::new(b).exists() || !b.starts_with('/'))
            .unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto) runs");
        wait_for(Duration::from_secs(10), "mosquitto to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Sidecar {
    process: AgentProcess,
    state: PathBuf,
    _base: tempfile::TempDir,
}

impl Sidecar {
    async fn start(server: &RealServer, zone: &str, extra: &[String]) -> Self {
        let token = server.token(json!({ "zone": zone })).await;
        let base = tempfile::tempdir().unwrap();
        let state = state_dir(&base);
        let mut args = run_args(server, &state, &["--refresh", "1s", "--join-token", &token]);
        args.extend(extra.iter().cloned());
        let process = AgentProcess::spawn(args, base.path());
        let sidecar = Self {
            process,
            state,
            _base: base,
        };
        // Ready when it has verified a CRL and the policy bundle.
        let socket = sidecar.socket();
        let start = std::time::Instant::now();
        loop {
            if socket.exists() {
                let (status, id) = call(&socket, "GET", "/v1/identity", None).await;
                if status == 200 && !id["policy_version"].is_null() && !id["crl_number"].is_null() {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the {zone} sidecar did not get ready: {}",
                sidecar.process.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sidecar
    }

    fn socket(&self) -> PathBuf {
        self.state.join("agent.sock")
    }

    fn device_id(&self) -> String {
        identity(&self.state)["device_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.state.join(file)).unwrap()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_deliver_over_mqtt_and_refuse_what_policy_forbids_at_both_ends() {
    let policies = policies();
    let server = RealServer::start(&["--policy-dir", &policies.path().display().to_string()]).await;
    let broker = Mosquitto::start().await;
    let mqtt = format!("mqtt://127.0.0.1:{}", broker.port);
    let (gateway_port, regional_port) = (free_port(), free_port());
    let sensor = Sidecar::start(
        &server,
        "sensors",
        &[
            "--mqtt".into(),
            mqtt.clone(),
            "--advertise".into(),
            mqtt.clone(),
        ],
    )
    .await;
    let gateway = Sidecar::start(
        &server,
        "edge",
        &[
            "--mqtt".into(),
            mqtt.clone(),
            "--advertise".into(),
            mqtt.clone(),
            "--listen".into(),
            format!("127.0.0.1:{gateway_port}"),
            "--advertise".into(),
            format!("https://127.0.0.1:{gateway_port}"),
        ],
    )
    .await;
    let regional = Sidecar::start(
        &server,
        "regional",
        &[
            "--listen".into(),
            format!("127.0.0.1:{regional_port}"),
            "--advertise".into(),
            format!("https://127.0.0.1:{regional_port}"),
        ],
    )
    .await;

    // 1. Sensor → gateway telemetry over MQTT: delivered intact.
    let payload = b64(b"temperature=21.5;humidity=40");
    let (status, sent) = call(
        &sensor.socket(),
        "POST",
        "/v1/send",
        Some(json!({"to": gateway.device_id(), "data_type": "telemetry",
                    "protocol": "mqtt", "payload": payload})),
    )
    .await;
    assert_eq!(status, 200, "{sent}\n{}", sensor.process.log());
    assert_eq!(sent["via"], "mqtt");
    assert_eq!(sent["policies"], json!(["sensor-to-gateway"]));
    let (status, list) = call(&gateway.socket(), "GET", "/v1/messages?wait=20", None).await;
    assert_eq!(status, 200);
    let messages = list["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{list}\n{}", gateway.process.log());
    assert_eq!(messages[0]["from"], sensor.device_id());
    assert_eq!(messages[0]["data_type"], "telemetry");
    assert_eq!(messages[0]["payload"], payload.as_str());
    assert_eq!(messages[0]["message_id"], sent["message_id"]);

    // 2. Sensor → regional: refused at the sender (no policy lets sensors reach regional).
    let (status, refused) = call(
        &sensor.socket(),
        "POST",
        "/v1/send",
        Some(json!({"to": regional.device_id(), "data_type": "telemetry", "payload": payload})),
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        refused["code"],
        vouch_proto::ProblemCode::PolicyDenied.as_str()
    );
    assert!(
        refused["detail"].as_str().unwrap().contains("default deny"),
        "{refused}"
    );

    // 3. The same message sealed by hand with the sensor's own keys and posted straight to
    //    the regional node over mutual TLS: the regional node's policy refuses it.
    let (cert_pem, key_pem) = (sensor.read("cert.pem"), sensor.read("key.pem"));
    let (ka_key_pem, ka_cert_pem) = (sensor.read("ka-key.pem"), sensor.read("ka-cert.pem"));
    let ca_pem = sensor.read("ca.pem");
    let root = vouch_agent::credentials::certificates(&ca_pem)[0].clone();
    let issuing = vouch_agent::credentials::certificates(&cert_pem)[1].clone();
    let anchors = TrustAnchors::new(
        &pem::encode(&pem::Pem::new("CERTIFICATE", issuing)),
        &root,
        "fleet.example",
    )
    .unwrap();
    let api = HttpApi::new(&server.base);
    api.trust_root(&ca_pem).unwrap();
    let me = ClientIdentity {
        cert_pem: cert_pem.clone(),
        key_pem: key_pem.clone(),
    };
    let regional_id = regional.device_id();
    let record = api.peer(&me, &regional_id).await.unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let peer = verify_peer_record(&anchors, &record, &regional_id, now).unwrap();
    let spiffe_id = identity(&sensor.state)["spiffe_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let outbox = Outbox::new(&Credentials {
        spiffe_id: &spiffe_id,
        key_pem: &key_pem,
        cert_pem: &cert_pem,
        ka_key_pem: &ka_key_pem,
        ka_cert_pem: &ka_cert_pem,
    })
    .unwrap();
    let envelope = outbox
        .seal(
            &peer,
            "telemetry",
            b"forged past the sender",
            u64::try_from(now).unwrap(),
            true,
        )
        .unwrap();
    let tls =
        deliver::client_config(&cert_pem, &key_pem, &anchors, &peer.device.spiffe_id).unwrap();
    let endpoint = format!("https://127.0.0.1:{regional_port}");
    match deliver::deliver(&endpoint, envelope, tls).await {
        Err(DeliveryError::Refused {
            status,
            code,
            detail,
        }) => {
            assert_eq!(status, 403);
            assert_eq!(code, vouch_proto::ProblemCode::MessageRefused.as_str());
            assert!(detail.starts_with("policy_denied"), "{detail}");
        }
        other => panic!("the regional node took a forged message: {other:?}"),
    }
    let (_, list) = call(&regional.socket(), "GET", "/v1/messages", None).await;
    assert_eq!(list["messages"], json!([]));
    let log = regional.process.log();
    assert!(
        log.contains("message refused") && log.contains("policy_denied"),
        "{log}"
    );
}
