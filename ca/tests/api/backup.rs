//! Backup and restore (issue 13): `vouch backup` beside a running server, then `vouch
//! restore` into a new data directory: the same CA, the devices and revocations of the
//! moment of the backup, and a device that renews against the restored server.

use crate::server_process::ServerProcess;
use crate::support::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const VOUCH: &str = env!("CARGO_BIN_EXE_vouch");

fn vouch(args: &[&str]) -> Output {
    Command::new(VOUCH)
        .args(args)
        .env_remove("VOUCH_DATA_DIR")
        .env_remove("VOUCH_DATABASE_URL")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn serve(data: &Path, extra: &[&str]) -> ServerProcess {
    let mut command = Command::new(VOUCH);
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .stderr(Stdio::null());
    ServerProcess::start(command).expect("the server starts")
}

struct Operator {
    client: reqwest::Client,
    base: String,
    admin: String,
}

impl Operator {
    fn new(server: &ServerProcess, data: &Path) -> Self {
        let admin = ok(&vouch(&[
            "admin-token",
            "--data-dir",
            data.to_str().unwrap(),
            "--role",
            "admin",
        ]))
        .trim()
        .to_owned();
        Self {
            client: client_for(&std::fs::read(data.join("root.pem")).unwrap(), None),
            base: server.base.clone(),
            admin,
        }
    }

    async fn enroll(&self) -> Enrolled {
        let token: Value = self
            .client
            .post(format!("{}/v1/bootstrap-tokens", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({"zone": "sensors"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (csr, key_pem) = rcgen_csr();
        let body: Value = self
            .client
            .post(format!("{}/v1/enroll", self.base))
            .json(&json!({"token": token["token"], "csr_pem": csr}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(body["device_id"].is_string(), "{body}");
        Enrolled { body, key_pem }
    }

    async fn revoke(&self, device: &Enrolled, reason: &str) {
        let r = self
            .client
            .post(format!(
                "{}/v1/devices/{}/revoke",
                self.base,
                device.device_id()
            ))
            .bearer_auth(&self.admin)
            .json(&json!({ "reason": reason }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn a_backup_taken_while_serving_restores_the_ca_and_the_registry_of_its_moment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let server = serve(&data, &["--trust-domain", "backup.example"]);
    let op = Operator::new(&server, &data);
    let kept = op.enroll().await;
    let revoked = op.enroll().await;
    op.revoke(&revoked, "lost").await;

    // Taken beside the running server.
    let backup = d.join("backup");
    let shown = ok(&vouch(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        backup.to_str().unwrap(),
    ]));
    assert!(
        shown.contains("consistent copy of the SQLite registry"),
        "{shown}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&backup), 0o700);
        for entry in std::fs::read_dir(&backup).unwrap() {
            assert_eq!(mode(&entry.unwrap().path()), 0o600, "files hold keys");
        }
    }
    let checked = Command::new("sha256sum")
        .args(["-c", "MANIFEST.sha256"])
        .current_dir(&backup)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    // An existing backup directory is never written into.
    let again = vouch(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        backup.to_str().unwrap(),
    ]);
    assert!(!again.status.success());

    // After the backup: not in it. A revocation after the backup takes the live CRL past
    // the backup's number.
    let later = op.enroll().await;
    let extra = op.enroll().await;
    op.revoke(&extra, "after the backup").await;
    let live_crl = crl_number(&op).await;
    drop(server);

    // A restore checks every file first, and never writes into a used data directory.
    let tampered = d.join("tampered");
    std::fs::create_dir(&tampered).unwrap();
    for entry in std::fs::read_dir(&backup).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tampered.join(entry.file_name())).unwrap();
    }
    std::fs::write(tampered.join("operator-token.key"), [0u8; 32]).unwrap();
    let refused = vouch(&[
        "restore",
        tampered.to_str().unwrap(),
        "--data-dir",
        d.join("t").to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("operator-token.key"));
    assert!(!d.join("t").exists(), "nothing written");
    // A backup that checks out but whose registry does not open: the restore fails after
    // copying, and leaves nothing behind, not even its staging directory.
    let broken = d.join("broken");
    std::fs::create_dir(&broken).unwrap();
    for entry in std::fs::read_dir(&backup).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), broken.join(entry.file_name())).unwrap();
    }
    let junk = b"not a SQLite database, but listed as one";
    std::fs::write(broken.join("vouch.db"), junk).unwrap();
    let manifest: String = std::fs::read_to_string(broken.join("MANIFEST.sha256"))
        .unwrap()
        .lines()
        .map(|l| {
            if l.ends_with("  vouch.db") {
                format!(
                    "{}  vouch.db\n",
                    hex::encode(ring::digest::digest(&ring::digest::SHA256, junk))
                )
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(broken.join("MANIFEST.sha256"), manifest).unwrap();
    let half = d.join("half");
    let failed = vouch(&[
        "restore",
        broken.to_str().unwrap(),
        "--data-dir",
        half.to_str().unwrap(),
    ]);
    assert!(!failed.status.success());
    assert!(!half.exists(), "a failed restore leaves no data directory");
    assert!(
        !d.join("half.restoring").exists(),
        "nor its staging directory"
    );

    let into_used = vouch(&[
        "restore",
        backup.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!into_used.status.success());

    let restored = d.join("restored");
    ok(&vouch(&[
        "restore",
        backup.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]));
    assert_eq!(
        std::fs::read(restored.join("root.pem")).unwrap(),
        std::fs::read(data.join("root.pem")).unwrap(),
        "the same CA"
    );
    let server = serve(&restored, &[]);
    let op = Operator::new(&server, &restored);
    let (status, device) = op.get(&format!("/v1/devices/{}", kept.device_id())).await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["status"], "active");
    let (_, device) = op
        .get(&format!("/v1/devices/{}", revoked.device_id()))
        .await;
    assert_eq!(device["status"], "revoked");
    let (status, _) = op.get(&format!("/v1/devices/{}", later.device_id())).await;
    assert_eq!(status, 404, "enrolled after the backup");
    // Sidecars that took the live server's last CRL take the restored server's: it
    // outnumbers it, and lists what the backup holds.
    let restored_crl = crl_number(&op).await;
    assert!(restored_crl > live_crl, "{restored_crl} <= {live_crl}");
    // The device enrolled before the backup renews with its certificate against the
    // restored server (the same issuing CA verifies it; its record is there).
    let device_client = client_for(
        &std::fs::read(restored.join("root.pem")).unwrap(),
        Some(&kept.identity_pem()),
    );
    let (csr, _) = rcgen_csr();
    let renewed = device_client
        .post(format!("{}/v1/renew", server.base))
        .json(&json!({"csr_pem": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), 201, "{}", renewed.text().await.unwrap());
    let refused = client_for(
        &std::fs::read(restored.join("root.pem")).unwrap(),
        Some(&revoked.identity_pem()),
    )
    .post(format!("{}/v1/renew", server.base))
    .json(&json!({"csr_pem": rcgen_csr().0}))
    .send()
    .await;
    assert!(
        refused.map_or(true, |r| r.status() != 200),
        "the revoked device stays revoked"
    );
}

/// The number of the CRL the server serves now.
async fn crl_number(op: &Operator) -> u64 {
    use x509_parser::prelude::FromDer;
    let der = op
        .client
        .get(format!("{}/v1/crl", op.base))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
    crl.crl_number()
        .unwrap()
        .to_u64_digits()
        .first()
        .copied()
        .unwrap_or(0)
}
