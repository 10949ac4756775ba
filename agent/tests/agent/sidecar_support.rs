//! What the sidecar tests share: a real MQTT broker, `vouch-agent run` processes and their
//! options, and a device sealing messages by hand past its sidecar.

use crate::server::*;
use crate::support::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vouch_agent::client::HttpApi;
use vouch_agent::lifecycle::{Api, ClientIdentity};
use vouch_agent::messaging::deliver;
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

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) struct Sidecar {
    pub(crate) process: AgentProcess,
    pub(crate) state: PathBuf,
    socket: PathBuf,
    /// `run --server … --state-dir …`, to start it again.
    run: Vec<String>,
    _base: tempfile::TempDir,
}

impl Sidecar {
    pub(crate) async fn start(server: &RealServer, zone: &str, extra: &[String]) -> Self {
        let token = server.token(json!({ "zone": zone })).await;
        Self::launch(server, &token, None, extra).ready().await
    }

    pub(crate) async fn start_with_socket(
        server: &RealServer,
        zone: &str,
        socket: &Path,
        extra: &[String],
    ) -> Self {
        let token = server.token(json!({ "zone": zone })).await;
        Self::launch(server, &token, Some(socket), extra)
            .ready()
            .await
    }

    pub(crate) async fn start_with_token(
        server: &RealServer,
        token: &str,
        extra: &[String],
    ) -> Self {
        Self::launch(server, token, None, extra).ready().await
    }

    /// Starts the agent (enrolling with `token`), without waiting for it.
    pub(crate) fn launch(
        server: &RealServer,
        token: &str,
        socket: Option<&Path>,
        extra: &[String],
    ) -> Self {
        Self::launch_via(&server.base, token, socket, extra)
    }

    /// [`Self::launch`], reaching the server at `server_url`.
    pub(crate) fn launch_via(
        server_url: &str,
        token: &str,
        socket: Option<&Path>,
        extra: &[String],
    ) -> Self {
        let base = tempfile::tempdir().unwrap();
        let state = state_dir(&base);
        let run = vec![
            "run".to_owned(),
            "--server".to_owned(),
            server_url.to_owned(),
            "--state-dir".to_owned(),
            state.display().to_string(),
        ];
        let socket = socket.map_or_else(|| state.join("agent.sock"), Path::to_path_buf);
        let mut args = run.clone();
        args.extend(["--join-token".into(), token.to_owned()]);
        Self::with_options(&mut args, &socket, extra);
        let process = AgentProcess::spawn(args, base.path());
        Self {
            process,
            state,
            socket,
            run,
            _base: base,
        }
    }

    pub(crate) fn with_options(args: &mut Vec<String>, socket: &Path, extra: &[String]) {
        if !extra.iter().any(|a| a == "--refresh") {
            args.extend(["--refresh".into(), "1s".into()]);
        }
        args.extend(["--socket".into(), socket.display().to_string()]);
        args.extend(extra.iter().cloned());
    }

    /// Stops the agent and starts it again on the same state with `extra`, without waiting.
    pub(crate) fn restart(self, extra: &[String]) -> Self {
        let Self {
            process,
            state,
            socket,
            run,
            _base,
        } = self;
        let _ = process.terminate();
        let _ = std::fs::remove_file(&socket);
        let mut args = run.clone();
        Self::with_options(&mut args, &socket, extra);
        let process = AgentProcess::spawn(args, _base.path());
        Self {
            process,
            state,
            socket,
            run,
            _base,
        }
    }

    /// Waits until it has verified a CRL and the policy bundle.
    pub(crate) async fn ready(self) -> Self {
        let start = std::time::Instant::now();
        loop {
            if self.socket.exists() {
                let (status, id) = call(&self.socket, "GET", "/v1/identity", None).await;
                if status == 200 && !id["policy_version"].is_null() && !id["crl_number"].is_null() {
                    return self;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the sidecar did not get ready: {}",
                self.process.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    pub(crate) fn device_id(&self) -> String {
        identity(&self.state)["device_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub(crate) fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.state.join(file)).unwrap()
    }
}

/// The options of a sidecar taking direct deliveries on `port` of loopback.
pub(crate) fn listen_args(port: u16) -> [String; 4] {
    [
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--advertise".into(),
        format!("https://127.0.0.1:{port}"),
    ]
}

/// Waits until the sidecar's `/healthz` answers 503, and returns its detail.
pub(crate) async fn refusing_detail(sidecar: &Sidecar) -> String {
    let start = std::time::Instant::now();
    loop {
        let (status, body) = call(&sidecar.socket(), "GET", "/healthz", None).await;
        if status == 503 {
            return body["detail"].as_str().unwrap().to_owned();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "still healthy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

/// Seals messages by hand with a sidecar's own keys to one target, as an attacker holding
/// them would, bypassing the sidecar (and its policy).
pub(crate) struct HandSealer {
    outbox: Outbox,
    peer: vouch_agent::messaging::peers::Peer,
    tls: rustls::ClientConfig,
}

impl HandSealer {
    pub(crate) async fn new(from: &Sidecar, server: &RealServer, target: &str) -> Self {
        let cert_pem = from.read("cert.pem");
        let spiffe_id = identity(&from.state)["spiffe_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let credentials = Credentials {
            spiffe_id: &spiffe_id,
            key_pem: &from.read("key.pem"),
            cert_pem: &cert_pem,
            ka_key_pem: &from.read("ka-key.pem"),
            ka_cert_pem: &from.read("ka-cert.pem"),
        };
        Self::with(&credentials, &from.read("ca.pem"), &server.base, target).await
    }

    /// For a device enrolled by the test itself.
    pub(crate) async fn for_device(
        device: &crate::messaging::Device,
        server: &RealServer,
        target: &str,
    ) -> Self {
        let cert_pem = format!(
            "{}{}",
            device.body["certificate_pem"].as_str().unwrap(),
            pem::encode(&pem::Pem::new("CERTIFICATE", device.issuing_ca()))
        );
        let credentials = Credentials {
            cert_pem: &cert_pem,
            ..device.credentials()
        };
        let root = pem::encode(&pem::Pem::new("CERTIFICATE", device.root()));
        Self::with(&credentials, &root, &server.base, target).await
    }

    /// `credentials` (the certificate file with its issuing CA), the root `ca_pem`, and the
    /// directory's answer for `target` from `server`.
    pub(crate) async fn with(
        credentials: &Credentials<'_>,
        ca_pem: &str,
        server: &str,
        target: &str,
    ) -> Self {
        let root = vouch_agent::credentials::certificates(ca_pem)[0].clone();
        let issuing = vouch_agent::credentials::certificates(credentials.cert_pem)[1].clone();
        let anchors = TrustAnchors::new(
            &pem::encode(&pem::Pem::new("CERTIFICATE", issuing)),
            &root,
            "fleet.example",
        )
        .unwrap();
        let api = HttpApi::new(server);
        api.trust_root(ca_pem).unwrap();
        let me = ClientIdentity {
            cert_pem: credentials.cert_pem.to_owned(),
            key_pem: credentials.key_pem.to_owned(),
        };
        let record = api.peer(&me, target).await.unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let peer = verify_peer_record(&anchors, &record, target, now).unwrap();
        let outbox = Outbox::new(credentials).unwrap();
        let tls = deliver::client_config(
            credentials.cert_pem,
            credentials.key_pem,
            &anchors,
            &peer.device.spiffe_id,
        )
        .unwrap();
        Self { outbox, peer, tls }
    }

    /// A sealed message and the TLS to post it with.
    pub(crate) fn seal(&self, data_type: &str, payload: &[u8]) -> (Vec<u8>, rustls::ClientConfig) {
        let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap();
        let envelope = self
            .outbox
            .seal(&self.peer, data_type, payload, now, true)
            .unwrap()
            .envelope;
        (envelope, self.tls.clone())
    }
}
