//! TLS session resumption (issue 14): a device that has been served once resumes its session
//! on its next connection, at this replica or another of the same data directory, without
//! a full handshake and without presenting its certificate again; the identity the session
//! carries is still checked on every request. The client is real `openssl s_client`.

use crate::support::*;
use reqwest::StatusCode;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

/// What one `openssl s_client` connection showed: whether the session was resumed, and the
/// HTTP status line of the answer.
struct Connection {
    reused: bool,
    status: Option<u16>,
}

/// Connects to `port` with `openssl s_client` (TLS 1.3, HTTP/1.1), presenting `identity`
/// (certificate and key in one PEM file) if given, resuming `session_in` if given and saving
/// the session it ends with to `session_out`, and asks `GET path`.
async fn connect(
    port: u16,
    root: &Path,
    identity: Option<&Path>,
    session_in: Option<&Path>,
    session_out: &Path,
    path: &str,
) -> Connection {
    let mut args: Vec<String> = [
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-tls1_3",
        "-alpn",
        "http/1.1",
        "-CAfile",
        root.to_str().unwrap(),
        "-verify_return_error",
        "-ign_eof",
        "-sess_out",
        session_out.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(identity) = identity {
        let identity = identity.to_str().unwrap().to_owned();
        args.extend(["-cert".into(), identity.clone(), "-key".into(), identity]);
    }
    if let Some(session) = session_in {
        args.extend(["-sess_in".into(), session.to_str().unwrap().to_owned()]);
    }
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    // On the blocking pool: the server answering runs on this test's runtime.
    let run = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("openssl")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl is installed by tests/run.sh");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(request.as_bytes()).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    });
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .expect("openssl s_client finished")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let reused = text.contains("Reused, TLSv1.3");
    assert!(
        reused || text.contains("New, TLSv1.3"),
        "no TLS 1.3 session in:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The answer may arrive between the dumps of the session tickets.
    let status = text
        .split_once("HTTP/1.1 ")
        .and_then(|(_, rest)| rest.get(..3))
        .and_then(|code| code.parse().ok());
    Connection { reused, status }
}

#[tokio::test]
async fn a_device_resumes_its_session_at_another_replica_and_is_still_checked() {
    let app = spawn_app_with_example_policies(Db::Sqlite).await;
    let device = app.enroll("sensors").await;
    let dir = tempfile::tempdir().unwrap();
    let root = write(dir.path(), "root.pem", &app.root_pem());
    let identity = write(dir.path(), "device.pem", &device.identity_pem());
    let session = |n: u32| dir.path().join(format!("session-{n}.pem"));
    // An endpoint for devices only.
    let own = "/v1/policy/bundle";
    let port = app.server.addr.port();

    // A full handshake with the device certificate.
    let first = connect(port, &root, Some(&identity), None, &session(1), own).await;
    assert!(!first.reused);
    assert_eq!(first.status, Some(200));

    // Without a certificate and without a session, the device endpoint refuses.
    let anonymous = connect(port, &root, None, None, &session(0), own).await;
    assert_eq!(anonymous.status, Some(401));

    // Another replica of the same data directory resumes the session: no certificate is
    // presented, and the session's identity is the device's.
    let replica = replica_of(&app).await;
    let resumed = connect(
        replica.addr.port(),
        &root,
        None,
        Some(&session(1)),
        &session(2),
        own,
    )
    .await;
    assert!(resumed.reused, "the replica did not resume the session");
    assert_eq!(resumed.status, Some(200));

    // A server of another data directory does not open the ticket.
    let other = spawn_app(Db::Sqlite).await;
    let elsewhere = connect(
        other.server.addr.port(),
        &root,
        None,
        Some(&session(2)),
        &session(3),
        own,
    )
    .await;
    assert!(
        !elsewhere.reused,
        "a ticket opened under another data directory's keys"
    );

    // Revoked: a resumed session's identity is checked like a full handshake's.
    let r = app.revoke(device.device_id(), "resumption test").await;
    assert_eq!(r.status(), StatusCode::OK);
    let after = connect(port, &root, None, Some(&session(2)), &session(4), own).await;
    assert!(after.reused);
    assert_eq!(
        after.status,
        Some(403),
        "a revoked device was served on a resumed session"
    );
}

/// The counter of resumed handshakes in `/metrics`.
async fn resumed(app: &TestApp) -> u64 {
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("vouch_tls_handshakes_total{kind=\"resumed\"} "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// A client built as the agent builds its own (reqwest over rustls, one client kept per
/// certificate) resumes on each new connection; `/metrics` counts the handshakes by kind.
#[tokio::test]
async fn a_kept_client_resumes_on_each_new_connection() {
    let app = spawn_app_with_example_policies(Db::Sqlite).await;
    let device = app.enroll("sensors").await;
    let identity = reqwest::Identity::from_pem(&device.identity_pem()).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&app.root_pem()).unwrap())
        .identity(identity)
        // Nothing kept open: each request is a new connection, as after a 30-minute pause.
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let before = resumed(&app).await;
    for _ in 0..3 {
        let r = client
            .get(app.url("/v1/policy/bundle"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // The first connection is a full handshake; the two after it resume.
    assert_eq!(resumed(&app).await - before, 2);
}

/// The TLS 1.3 cipher suite `openssl s_client` (which lists AES-256-GCM-SHA384 first, as
/// rustls clients do) is given by the server at `port`.
fn suite_chosen_for_openssl(port: u16, identity: Option<(&Path, &Path)>) -> String {
    let mut command = std::process::Command::new("openssl");
    command.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-tls1_3",
        "-ciphersuites",
        "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
        "-brief",
    ]);
    if let Some((cert, key)) = identity {
        command.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let out = command
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed by tests/run.sh");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix("Ciphersuite: "))
        .unwrap_or_else(|| panic!("no cipher suite in:\n{text}"))
        .trim()
        .to_owned()
}

#[tokio::test]
async fn the_server_chooses_aes_128_gcm_sha256_whatever_the_client_lists_first() {
    let app = spawn_app(Db::Sqlite).await;
    let port = app.server.addr.port();
    let suite = tokio::task::spawn_blocking(move || suite_chosen_for_openssl(port, None))
        .await
        .unwrap();
    // SHA-256 runs on the CPU's SHA instructions, SHA-384 does not (vouch_proto::tls).
    assert_eq!(suite, "TLS_AES_128_GCM_SHA256");
}
