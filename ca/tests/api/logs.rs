//! Logs and metrics (issue 13): `--log-format json` writes one JSON object per line, every
//! API request gets an id, returned as `X-Request-Id` and carried by its log lines, and every
//! metric the server exports is documented in the README.

use crate::server_process::ServerProcess;
use serde_json::Value;
use std::process::{Command, Stdio};

#[tokio::test]
async fn json_logs_carry_the_request_id_the_answer_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_vouch"));
    command
        .args([
            "serve",
            "--trust-domain",
            "logs.example",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("VOUCH_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let server = ServerProcess::start(command).expect("the server starts");
    let root = std::fs::read(data.join("root.pem")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&root).unwrap())
        .build()
        .unwrap();

    // A client's own id is never taken: it could forge or confuse log lines.
    let ok = client
        .get(format!("{}/healthz", server.base))
        .header("x-request-id", "forged")
        .send()
        .await
        .unwrap();
    let ok_id = ok.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(ok_id, "forged");
    assert_eq!(ok.headers().get_all("x-request-id").iter().count(), 1);
    let refused = client
        .get(format!("{}/v1/devices", server.base))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let id = refused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 16);
    assert_ne!(id, ok_id, "each request has its own id");

    // The refusal's line (errors are logged at info) names the id, the method and path. It
    // is written before the answer leaves, so it is in the file now.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let line = lines
        .into_iter()
        .find(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["request_id"] == id.as_str()))
        })
        .unwrap_or_else(|| panic!("no line names request {id}:\n{text}"));
    assert_eq!(line["status"], 401, "{line}");

    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let names: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.len() >= 7, "{metrics}");
    for name in names {
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md does not document `{name}`"
        );
    }
    assert_eq!(line["spans"][0]["path"], "/v1/devices", "{line}");
    assert_eq!(line["spans"][0]["method"], "GET", "{line}");
    drop(server);
}
