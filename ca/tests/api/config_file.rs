//! `vouch serve --config FILE` and `vouch config check` (issue 13, acceptance 3): the example
//! file is usable, a file with several mistakes has every one named, flags and `VOUCH_*`
//! variables override the file, and the server really runs from a file.

use crate::server_process::ServerProcess;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const VOUCH: &str = env!("CARGO_BIN_EXE_vouch");

fn check(file: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(VOUCH);
    command
        .args(["config", "check", "--config"])
        .arg(file)
        .args(args)
        .env_remove("VOUCH_LISTEN")
        .env_remove("VOUCH_DATA_DIR");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/vouch.toml")
}

#[test]
fn the_example_file_is_usable_and_checking_it_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = check(&example(), &["--data-dir", data.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let shown = text(&out.stdout);
    assert!(shown.contains("listen        127.0.0.1:8443"), "{shown}");
    assert!(shown.contains("the first start creates one"), "{shown}");
    assert!(!data.exists(), "a check creates nothing");
}

#[test]
fn a_file_with_three_mistakes_has_all_three_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vouch.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = \"{}\"\ntrust_domain = \"fleet.example\"\n\
             listen_address = \"0.0.0.0:8443\"\n\
             db_max_connections = \"eight\"\n\
             cert_lifetime = \"24 parsecs\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = check(&file, &[], &[]);
    assert_eq!(out.status.code(), Some(64));
    let err = text(&out.stderr);
    assert!(err.contains("unknown key `listen_address`"), "{err}");
    assert!(err.contains("`db_max_connections`"), "{err}");
    assert!(err.contains("--cert-lifetime `24 parsecs`"), "{err}");
    assert_eq!(err.lines().count(), 3, "{err}");

    // TOML that does not parse: its line named.
    std::fs::write(&file, "listen = \"127.0.0.1:8443\"\ncert_lifetime = 24h\n").unwrap();
    let out = check(&file, &[], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("line 2"),
        "{}",
        text(&out.stderr)
    );
    // A file that is not there.
    let out = check(&dir.path().join("missing.toml"), &[], &[]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn flags_and_environment_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vouch.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = \"{}\"\ntrust_domain = \"fleet.example\"\nlisten = \"127.0.0.1:1111\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let from_file = text(&check(&file, &[], &[]).stdout);
    assert!(from_file.contains("127.0.0.1:1111"), "{from_file}");
    let from_env = text(&check(&file, &[], &[("VOUCH_LISTEN", "127.0.0.1:2222")]).stdout);
    assert!(from_env.contains("127.0.0.1:2222"), "{from_env}");
    let from_flag = text(
        &check(
            &file,
            &["--listen", "127.0.0.1:3333"],
            &[("VOUCH_LISTEN", "127.0.0.1:2222")],
        )
        .stdout,
    );
    assert!(from_flag.contains("127.0.0.1:3333"), "{from_flag}");
}

#[tokio::test]
async fn the_server_runs_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("vouch.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = \"{}\"\ntrust_domain = \"file.example\"\nlisten = \"127.0.0.1:0\"\n\
             hostnames = [\"127.0.0.1\"]\ncert_lifetime = \"2h\"\n",
            data.display()
        ),
    )
    .unwrap();
    let mut command = Command::new(VOUCH);
    command
        .args(["serve", "--config"])
        .arg(&file)
        .env_remove("VOUCH_LISTEN")
        .env_remove("VOUCH_DATA_DIR")
        .stderr(Stdio::null());
    let server = ServerProcess::start(command).expect("the server starts from the file");
    // The file's trust domain made the CA.
    let root = std::fs::read_to_string(data.join("root.pem")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
        .build()
        .unwrap();
    let health = client
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(data.join("root.pem"))
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).contains("file.example"),
        "{}",
        text(&out.stdout)
    );
}
