//! Tests of the real `vouch` binary: two replicas on one PostgreSQL (acceptance 6), key files
//! and logs (acceptance 7), configuration errors, and policy reload on SIGHUP.

use crate::server_process::ServerProcess;
use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use vouch_proto::ProblemCode;

const VOUCH: &str = env!("CARGO_BIN_EXE_vouch");

/// Starts `vouch serve` on port 0 and waits for its `listening on` line.
fn start_server(data_dir: &Path, extra: &[&str], stderr: Stdio, rust_log: &str) -> ServerProcess {
    start_server_via(Command::new(VOUCH), data_dir, extra, stderr, rust_log)
}

/// `start_server` with `command` as the program (`vouch`, or a wrapper that runs it).
fn start_server_via(
    mut command: Command,
    data_dir: &Path,
    extra: &[&str],
    stderr: Stdio,
    rust_log: &str,
) -> ServerProcess {
    command
        .env("RUST_LOG", rust_log)
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stderr(stderr);
    ServerProcess::start(command).expect("server printed `listening on`")
}

fn vouch(args: &[&str]) -> std::process::Output {
    Command::new(VOUCH).args(args).output().unwrap()
}

fn admin_token(data_dir: &Path, role: &str) -> String {
    let data_dir = data_dir.to_str().unwrap();
    let out = vouch(&["admin-token", "--data-dir", data_dir, "--role", role]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn create_token(client: &reqwest::Client, base: &str, admin: &str) -> String {
    let r = client
        .post(format!("{base}/v1/bootstrap-tokens"))
        .bearer_auth(admin)
        .json(&json!({"zone": "z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn enroll(client: &reqwest::Client, base: &str, token: &str) -> reqwest::Response {
    let (csr, _) = rcgen_csr();
    client
        .post(format!("{base}/v1/enroll"))
        .json(&json!({"token": token, "csr_pem": csr}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_behave_as_one_ca() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = vouch(&[
        "ca",
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--trust-domain",
        TRUST_DOMAIN,
    ]);
    assert!(out.status.success(), "{out:?}");
    let url = fresh_postgres_database().await;
    let a = start_server(&data, &["--database-url", &url], Stdio::null(), "warn");
    let b = start_server(&data, &["--database-url", &url], Stdio::null(), "warn");
    let root = std::fs::read(data.join("root.pem")).unwrap();
    let client = client_for(&root, None);
    let admin = admin_token(&data, "admin");

    // A token made on A and consumed on A is refused on B.
    let token = create_token(&client, &a.base, &admin).await;
    assert_eq!(
        enroll(&client, &a.base, &token).await.status(),
        StatusCode::CREATED
    );
    assert_problem(
        enroll(&client, &b.base, &token).await,
        StatusCode::FORBIDDEN,
        ProblemCode::TokenUsed,
    )
    .await;

    // Requests alternate between the replicas.
    let replica = |i: usize| [&a.base, &b.base][i % 2].clone();

    // One token raced across both replicas gives one device.
    for _ in 0..5 {
        let token = create_token(&client, &b.base, &admin).await;
        let mut tasks = Vec::new();
        for i in 0..6 {
            let base = replica(i);
            let (client, token) = (client.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                enroll(&client, &base, &token).await.status()
            }));
        }
        let mut created = 0;
        for t in tasks {
            if t.await.unwrap() == StatusCode::CREATED {
                created += 1;
            }
        }
        assert_eq!(created, 1);
    }

    // Concurrent issuance across both: serials unique, registry agrees.
    let mut tokens = Vec::new();
    for _ in 0..20 {
        tokens.push(create_token(&client, &a.base, &admin).await);
    }
    let mut tasks = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let base = replica(i);
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let r = enroll(&client, &base, &token).await;
            assert_eq!(r.status(), StatusCode::CREATED);
            r.json::<Value>().await.unwrap()["serial"]
                .as_str()
                .unwrap()
                .to_owned()
        }));
    }
    let mut serials = HashSet::new();
    for t in tasks {
        assert!(serials.insert(t.await.unwrap()));
    }
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT serial) FROM certificates")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1 + 5 + 20);
    // Both replicas list the same registry.
    let list = |base: String| {
        let (client, admin) = (client.clone(), admin.clone());
        async move {
            let v: Value = client
                .get(format!("{base}/v1/devices?limit=1000"))
                .bearer_auth(admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["devices"].as_array().unwrap().len()
        }
    };
    assert_eq!(list(a.base.clone()).await, 26);
    assert_eq!(list(b.base.clone()).await, 26);
}

#[tokio::test]
async fn key_files_are_0600_and_logs_hold_no_key_material() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = start_server(
        &data,
        &["--trust-domain", TRUST_DOMAIN],
        Stdio::from(log),
        "debug",
    );
    let root = std::fs::read(data.join("root.pem")).unwrap();
    let client = client_for(&root, None);
    let admin = admin_token(&data, "admin");

    let keygen_token = create_token(&client, &server.base, &admin).await;
    let r = client
        .post(format!("{}/v1/enroll", server.base))
        .json(&json!({"token": keygen_token, "generate_key": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    let device_key = body["private_key_pem"].as_str().unwrap().to_owned();
    let csr_token = create_token(&client, &server.base, &admin).await;
    assert_eq!(
        enroll(&client, &server.base, &csr_token).await.status(),
        StatusCode::CREATED
    );
    let r = client
        .post(format!(
            "{}/v1/devices/{}/revoke",
            server.base,
            body["device_id"].as_str().unwrap()
        ))
        .bearer_auth(&admin)
        .json(&json!({"reason": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let _ = server.child.kill();
    let _ = server.child.wait();

    // Key files are 0600, the directory 0700.
    let dir_mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let mut secrets = vec![device_key];
    for name in [
        "root.key",
        "issuing.key",
        "bootstrap-token.key",
        "operator-token.key",
    ] {
        let path = data.join(name);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
        secrets.push(std::fs::read_to_string(&path).unwrap());
    }

    // The debug log says what happened, and holds no key or token.
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.contains("device enrolled"), "{logs}");
    assert!(logs.contains("device revoked"));
    assert!(!logs.contains("PRIVATE KEY"));
    for secret in secrets {
        for line in secret
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        {
            assert!(!logs.contains(line), "key material in the log");
        }
    }
    for token in [&admin, &keygen_token, &csr_token] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a token in the log");
    }
}

#[test]
fn bad_configuration_exits_64_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let out = vouch(&[
        "serve",
        "--data-dir",
        data_dir,
        "--listen",
        "nowhere",
        "--cert-lifetime",
        "forever",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--listen") && err.contains("--cert-lifetime"),
        "{err}"
    );
    // Nothing was created.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let out = vouch(&["admin-token", "--data-dir", data_dir, "--role", "root"]);
    assert_eq!(out.status.code(), Some(64));
    // An operator token lives at most a week, even though an admin can revoke it (POST
    // /v1/operator-tokens/revoke): a leaked one nobody notices must not stay good for long.
    let out = vouch(&[
        "admin-token",
        "--data-dir",
        data_dir,
        "--role",
        "admin",
        "--ttl",
        "30d",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ttl"));
    let out = vouch(&[
        "serve",
        "--data-dir",
        dir.path().join("empty").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(64), "no CA and no trust domain");
}

#[tokio::test]
async fn an_openssl_made_ca_can_be_imported_and_issues_verifiable_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A root and an intermediate made by openssl, the way an existing PKI would hand them over.
    write(d, "ext.cnf", b"[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nO = Acme\nCN = Acme Root\n[v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n[v3_int]\nbasicConstraints = critical,CA:TRUE,pathlen:0\nkeyUsage = critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n");
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "root.key",
            "-out",
            "root.pem",
            "-days",
            "30",
            "-config",
            "ext.cnf",
            "-extensions",
            "v3_ca",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "int.key",
            "-out",
            "int.csr",
            "-subj",
            "/O=Acme/CN=Acme Devices CA",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "int.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-out",
            "int.pem",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
            "-extensions",
            "v3_int",
        ],
    );
    let data = d.join("data");
    let s = |p: &str| d.join(p).to_str().unwrap().to_owned();

    // A key that does not belong to the certificate is refused, and nothing is written.
    let import = |issuing_key: &str| {
        vouch(&[
            "ca",
            "import",
            "--data-dir",
            data.to_str().unwrap(),
            "--trust-domain",
            "acme.example",
            "--root-cert",
            &s("root.pem"),
            "--issuing-cert",
            &s("int.pem"),
            "--issuing-key",
            &s(issuing_key),
        ])
    };
    let out = import("root.key");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match"),
        "{out:?}"
    );
    assert!(!data.join("issuing.pem").exists());

    let out = import("int.key");
    assert!(out.status.success(), "{out:?}");
    assert!(
        !data.join("root.key").exists(),
        "the root key stays where it was"
    );

    let server = start_server(&data, &[], Stdio::null(), "warn");
    let client = client_for(&std::fs::read(d.join("root.pem")).unwrap(), None);
    let admin = admin_token(&data, "operator");
    let token = create_token(&client, &server.base, &admin).await;
    let r = enroll(&client, &server.base, &token).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert!(body["spiffe_id"]
        .as_str()
        .unwrap()
        .starts_with("spiffe://acme.example/device/"));
    write_device_certificate(d, &body);
    let out = openssl_verify_device(d, &[]);
    assert!(out.contains("device.pem: OK"));
}

/// `vouch ca init --offline-root FILE` (the README's root key ceremony): the root key goes
/// to FILE (0600) and nowhere else; the server runs without it; later the offline key signs
/// a new issuing CA with openssl, which `vouch ca import` takes. A FILE inside the data
/// directory is refused, and nothing is written.
#[tokio::test]
async fn an_offline_root_key_stays_out_of_the_data_directory_and_signs_the_next_issuing_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let offline = d.join("offline");
    std::fs::create_dir(&offline).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let init = |key: &Path| {
        vouch(&[
            "ca",
            "init",
            "--data-dir",
            &s(&data),
            "--trust-domain",
            TRUST_DOMAIN,
            "--offline-root",
            &s(key),
        ])
    };
    let out = init(&data.join("root.key"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("outside the data directory"),
        "{out:?}"
    );
    assert!(!data.join("root.key").exists() && !data.join("issuing.pem").exists());

    let key = offline.join("root.key");
    let out = init(&key);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !data.join("root.key").exists(),
        "the root key is not online"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // It is the root certificate's key.
    let root = s(&data.join("root.pem"));
    assert_eq!(
        openssl(d, &["pkey", "-in", &s(&key), "-pubout"]),
        openssl(d, &["x509", "-in", &root, "-pubkey", "-noout"])
    );
    // A second init neither overwrites the key nor the CA.
    let before = std::fs::read(&key).unwrap();
    assert!(!init(&key).status.success());
    assert_eq!(std::fs::read(&key).unwrap(), before);

    // The server issues without the root key.
    let server = start_server(&data, &[], Stdio::null(), "warn");
    let client = client_for(&std::fs::read(&root).unwrap(), None);
    let admin = admin_token(&data, "operator");
    let token = create_token(&client, &server.base, &admin).await;
    assert_eq!(
        enroll(&client, &server.base, &token).await.status(),
        StatusCode::CREATED
    );
    drop(server);

    // The ceremony: a new issuing CA signed by the offline root, imported into a new data
    // directory (the commands the README shows).
    write(d, "int.cnf", b"[v3_int]\nbasicConstraints = critical,CA:TRUE,pathlen:0\nkeyUsage = critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n");
    openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "issuing-2.key",
            "-out",
            "issuing-2.csr",
            "-subj",
            "/CN=Vouch issuing CA 2",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "issuing-2.csr",
            "-CA",
            &root,
            "-CAkey",
            &s(&key),
            "-CAcreateserial",
            "-out",
            "issuing-2.pem",
            "-days",
            "365",
            "-extfile",
            "int.cnf",
            "-extensions",
            "v3_int",
        ],
    );
    let next = d.join("data-2");
    let out = vouch(&[
        "ca",
        "import",
        "--data-dir",
        &s(&next),
        "--trust-domain",
        TRUST_DOMAIN,
        "--root-cert",
        &root,
        "--issuing-cert",
        &s(&d.join("issuing-2.pem")),
        "--issuing-key",
        &s(&d.join("issuing-2.key")),
    ]);
    assert!(out.status.success(), "{out:?}");
    let server = start_server(&next, &[], Stdio::null(), "warn");
    let admin = admin_token(&next, "operator");
    let token = create_token(&client, &server.base, &admin).await;
    let r = enroll(&client, &server.base, &token).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    write_device_certificate(d, &r.json().await.unwrap());
    std::fs::copy(&root, d.join("root.pem")).unwrap();
    assert!(openssl_verify_device(d, &[]).contains("device.pem: OK"));
}

/// Silent clients cannot take the server's file descriptors for good (issue 11, finding 4):
/// under a limit of 64 descriptors, a hundred clients that finish the TLS handshake and then
/// send nothing push `accept` into EMFILE; the server backs off, closes them when they have
/// been idle for `--idle-timeout`, and answers `/healthz` again. Before idle timeouts they were
/// held as long as the clients kept them, and `/healthz` waited with them.
#[tokio::test]
async fn silent_connections_beyond_the_descriptor_limit_do_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = vouch(&[
        "ca",
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--trust-domain",
        TRUST_DOMAIN,
    ]);
    assert!(out.status.success(), "{out:?}");
    let mut limited = Command::new("prlimit");
    limited.args(["--nofile=64:64", VOUCH]);
    let server = start_server_via(
        limited,
        &data,
        &["--idle-timeout", "1s", "--handshake-timeout", "1s"],
        Stdio::null(),
        "error",
    );
    let root = std::fs::read(data.join("root.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut root.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = server.base.trim_start_matches("https://").to_owned();
    let silent = futures_util::future::join_all((0..100).map(|_| {
        let (connector, addr) = (connector.clone(), addr.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.ok()?;
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let handshake = connector.connect(name, tcp);
            tokio::time::timeout(Duration::from_secs(5), handshake)
                .await
                .ok()?
                .ok()
        }
    }))
    .await;
    let held = silent.iter().filter(|c| c.is_some()).count();
    assert!(held >= 30, "only {held} silent TLS connections were made");
    // The server is out of descriptors while they are held: it answers once it has closed them.
    let client = client_for(&root, None);
    let healthz = client.get(format!("{}/healthz", server.base)).send();
    let answer = tokio::time::timeout(Duration::from_secs(60), healthz)
        .await
        .expect("/healthz was never answered while silent clients held their connections");
    assert_eq!(answer.unwrap().status(), StatusCode::OK);
    drop(silent);
}

#[test]
fn policy_check_and_test_commands() {
    let example = example_policy_dir();
    let out = vouch(&["policy", "check", example.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: 4 policies"));
    let out = vouch(&["policy", "test", example.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("policy tests: 12 passed, 0 failed"));

    // A broken copy: check names the file, line and column, and both commands fail.
    let dir = copy_of_example_policies(&["", "policies", "tests"]);
    std::fs::write(
        dir.path().join("policies/bad.cedar"),
        "permit (principal, action, resource)\nwhen { context.tls && };\n",
    )
    .unwrap();
    for cmd in ["check", "test"] {
        let out = vouch(&["policy", cmd, dir.path().to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("policies/bad.cedar:2:23:"),
            "{out:?}"
        );
    }
}

/// A copy of the files in the example policy repository's directories `subdirs` (`""` for
/// the top).
fn copy_of_example_policies(subdirs: &[&str]) -> tempfile::TempDir {
    let example = example_policy_dir();
    let dir = tempfile::tempdir().unwrap();
    for sub in subdirs {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for e in std::fs::read_dir(example.join(sub)).unwrap().flatten() {
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), dir.path().join(sub).join(e.file_name())).unwrap();
            }
        }
    }
    dir
}

#[tokio::test]
async fn sighup_reloads_policies_and_a_broken_directory_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policies = copy_of_example_policies(&["", "policies"]);
    let policy_dir = policies.path().to_str().unwrap();

    // A directory that does not load: the server does not start, and says where.
    std::fs::write(policies.path().join("policies/bad.cedar"), "permit (\n").unwrap();
    let out = Command::new(VOUCH)
        .args(["serve", "--data-dir", data.to_str().unwrap()])
        .args(["--trust-domain", "fleet.example", "--listen", "127.0.0.1:0"])
        .args(["--policy-dir", policy_dir])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policies/bad.cedar:"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    std::fs::remove_file(policies.path().join("policies/bad.cedar")).unwrap();

    let server = start_server(
        &data,
        &["--policy-dir", policy_dir, "--policy-poll", "0s"],
        Stdio::null(),
        "info",
    );
    let admin = admin_token(&data, "auditor");
    let client = client_for(&std::fs::read(data.join("root.pem")).unwrap(), None);
    let version = || async {
        let r = client
            .get(format!("{}/v1/policy/status", server.base))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let s: Value = r.json().await.unwrap();
        s["active"]["version"]["id"].as_str().unwrap().to_owned()
    };
    let first = version().await;
    std::fs::write(
        policies.path().join("policies/extra.cedar"),
        "@id(\"extra\")\nforbid (principal, action, resource) when { context.size > 1000000 };\n",
    )
    .unwrap();
    // The watcher is off: nothing changes until the signal.
    assert_eq!(version().await, first);
    let kill = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while version().await == first {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
