//! The operator command line over the API (issue 13): the real `vouch` binary against a
//! real server on a loopback port — login and its config file, tokens, devices, policy,
//! the CRL, JSON output for scripts, exit codes, completions and the help's examples.

use crate::support::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use vouch_ca::tokens::Role;
use vouch_proto::ProblemCode;

/// `vouch ARGS` with a clean environment: no `VOUCH_*` variables, and `HOME` in `home`
/// (so no operator's real config file is read).
fn vouch_in(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    vouch_in_program(env!("CARGO_BIN_EXE_vouch"), home, args, env)
}

fn vouch_in_program(program: &str, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        command.env(k, v);
    }
    // The server under test runs on this test's runtime: let it go on while the command runs.
    tokio::task::block_in_place(|| command.output()).unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

fn json(o: &Output) -> Value {
    serde_json::from_str(&ok(o)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_saves_the_settings_and_every_operator_command_works_from_them() {
    let app = spawn_app_with_example_policies(Db::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let root = app.data_dir().file(vouch_ca::datadir::DataFile::RootCert);
    let admin = app.token_for(Role::Admin);
    let h = home.path();

    let login = vouch_in(
        h,
        &[
            "login",
            "--server",
            &app.base,
            "--ca-file",
            root.to_str().unwrap(),
        ],
        &[("VOUCH_TOKEN", &admin)],
    );
    assert!(ok(&login).contains("logged in to"));
    let config = h.join(".config/vouch/config.toml");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the config file holds a token");
    }
    let saved: toml::Value = toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(saved["server"].as_str(), Some(app.base.as_str()));
    assert_eq!(saved["token"].as_str(), Some(admin.as_str()));

    // A bootstrap token from the CLI enrolls a device.
    let token = json(&vouch_in(
        h,
        &[
            "token",
            "create",
            "--zone",
            "sensors",
            "--device-class",
            "sensor",
            "--label",
            "line=a",
            "--ttl",
            "2h",
            "--output",
            "json",
        ],
        &[],
    ));
    let (csr, key_pem) = rcgen_csr();
    let enrolled = app
        .enroll_with_csr(token["token"].as_str().unwrap(), &csr)
        .await;
    let status = enrolled.status();
    let enrolled: Value = enrolled.json().await.unwrap();
    assert_eq!(status, 201, "{enrolled}");
    let id = enrolled["device_id"].as_str().unwrap().to_owned();
    let serial = enrolled["serial"].as_str().unwrap().to_owned();
    let human = ok(&vouch_in(h, &["token", "create", "--zone", "edge"], &[]));
    assert!(
        human.starts_with("token ") && human.contains("\nexpires "),
        "{human}"
    );

    // Listing: a table for people, the registry's records for scripts.
    let table = ok(&vouch_in(h, &["device", "list"], &[]));
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("ATTESTATION"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("sensors")),
        "{table}"
    );
    let listed = json(&vouch_in(
        h,
        &["device", "list", "--zone", "sensors", "--output", "json"],
        &[],
    ));
    assert_eq!(listed["devices"].as_array().unwrap().len(), 1);
    assert_eq!(listed["devices"][0]["labels"]["line"], "a");
    let none = json(&vouch_in(
        h,
        &["device", "list", "--zone", "edge", "--output", "json"],
        &[],
    ));
    assert_eq!(none["devices"].as_array().unwrap().len(), 0);

    let shown = ok(&vouch_in(h, &["device", "show", &id], &[]));
    assert!(
        shown.contains(enrolled["spiffe_id"].as_str().unwrap()),
        "{shown}"
    );
    assert!(shown.contains("line=a"), "{shown}");

    // Policy: the active set, a decision in the log, a reload that changes nothing.
    let status = ok(&vouch_in(h, &["policy", "status"], &[]));
    assert!(status.starts_with("active"), "{status}");
    let status_json = json(&vouch_in(h, &["policy", "status", "--output", "json"], &[]));
    let version = status_json["active"]["version"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(status.contains(&version), "{status}");
    let gateway = app.enroll("edge").await;
    let sensor = Enrolled {
        body: enrolled.clone(),
        key_pem,
    };
    app.telemetry_decision(&sensor, &gateway).await;
    let decisions = ok(&vouch_in(h, &["policy", "decisions", "--limit", "5"], &[]));
    assert!(
        decisions
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains(&id) && l.contains(&version)),
        "{decisions}"
    );
    let logged = json(&vouch_in(
        h,
        &["policy", "decisions", "--limit", "5", "--output", "json"],
        &[],
    ));
    assert_eq!(logged["decisions"][0]["policy_version"], version.as_str());
    let reload = ok(&vouch_in(h, &["policy", "reload"], &[]));
    assert!(reload.contains("active: unchanged"), "{reload}");

    // Revocation: the serial is on the CRL `crl show` fetches and parses.
    let revoked = ok(&vouch_in(
        h,
        &["device", "revoke", &id, "--reason", "lost at site 4"],
        &[],
    ));
    assert!(
        revoked.starts_with(&format!("revoked {id}")) && revoked.contains(&serial),
        "{revoked}"
    );
    let crl = json(&vouch_in(h, &["crl", "show", "--output", "json"], &[]));
    assert!(
        crl["revoked"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["serial"] == serial.as_str()),
        "{crl}"
    );
    assert!(ok(&vouch_in(h, &["crl", "show"], &[])).contains(&serial));
    let record = json(&vouch_in(
        h,
        &["device", "show", &id, "--output", "json"],
        &[],
    ));
    assert_eq!(record["status"], "revoked");
    assert_eq!(record["revocation_reason"], "lost at site 4");
    let history = json(&vouch_in(
        h,
        &["device", "history", &id, "--output", "json"],
        &[],
    ));
    assert_eq!(history["device"]["id"], id.as_str());

    // Refused a second time: the server's problem code, plainly, exit 1.
    let again = vouch_in(h, &["device", "revoke", &id, "--reason", "again"], &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains(&format!(
            "error: {}:",
            ProblemCode::DeviceAlreadyRevoked.as_str()
        )),
        "{}",
        stderr(&again)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_and_environment_override_the_config_file_and_failures_have_their_exit_codes() {
    let app = spawn_app(Db::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let root = app.data_dir().file(vouch_ca::datadir::DataFile::RootCert);
    let root = root.to_str().unwrap();
    let admin = app.token_for(Role::Admin);
    let auditor = app.token_for(Role::Auditor);

    // Nothing configured: every missing setting named at once, exit 64.
    let bare = vouch_in(h, &["device", "list"], &[]);
    assert_eq!(bare.status.code(), Some(64), "{}", stderr(&bare));
    assert!(
        stderr(&bare).contains("no server") && stderr(&bare).contains("no CA file"),
        "{}",
        stderr(&bare)
    );
    let http = vouch_in(
        h,
        &[
            "device",
            "list",
            "--server",
            "http://127.0.0.1:1",
            "--ca-file",
            root,
        ],
        &[],
    );
    assert_eq!(http.status.code(), Some(64));
    assert!(stderr(&http).contains("https://"), "{}", stderr(&http));

    // The environment alone is enough.
    let env = [
        ("VOUCH_SERVER", app.base.as_str()),
        ("VOUCH_CA_FILE", root),
        ("VOUCH_TOKEN", admin.as_str()),
    ];
    ok(&vouch_in(h, &["device", "list"], &env));

    // A config file with the auditor's token; a flag overrides it for one command.
    let config = h.join("auditor.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"{}\"\nca_file = \"{root}\"\ntoken = \"{auditor}\"\n",
            app.base
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    ok(&vouch_in(h, &["--help"], &[]));
    ok(&vouch_in(h, &["device", "list", "--config", c], &[]));
    let forbidden = vouch_in(
        h,
        &["token", "create", "--zone", "edge", "--config", c],
        &[],
    );
    assert_eq!(forbidden.status.code(), Some(77), "{}", stderr(&forbidden));
    assert!(stderr(&forbidden).contains(ProblemCode::ForbiddenRole.as_str()));
    ok(&vouch_in(
        h,
        &[
            "token", "create", "--zone", "edge", "--config", c, "--token", &admin,
        ],
        &[],
    ));
    let via_env = vouch_in(
        h,
        &["token", "create", "--zone", "edge"],
        &[("VOUCH_CONFIG", c), ("VOUCH_TOKEN", &admin)],
    );
    ok(&via_env);

    // A token the server does not accept: 77, the code printed.
    let bad = vouch_in(
        h,
        &["policy", "status", "--config", c, "--token", "not.a.token"],
        &[],
    );
    assert_eq!(bad.status.code(), Some(77));
    assert!(
        stderr(&bad).contains(ProblemCode::TokenInvalid.as_str()),
        "{}",
        stderr(&bad)
    );

    // An unknown device: exit 1 with the code; a malformed id never reaches the server.
    let missing = vouch_in(h, &["device", "show", &random_hex(16), "--config", c], &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains(ProblemCode::DeviceNotFound.as_str()),
        "{}",
        stderr(&missing)
    );
    let malformed = vouch_in(
        h,
        &["device", "show", "3f0c6a2e/v1/crl", "--config", c],
        &[],
    );
    assert_eq!(malformed.status.code(), Some(64));

    // Nobody listening, or a server the CA file does not vouch for: 69.
    let closed = vouch_in(
        h,
        &[
            "device",
            "list",
            "--config",
            c,
            "--server",
            "https://127.0.0.1:1",
        ],
        &[],
    );
    assert_eq!(closed.status.code(), Some(69), "{}", stderr(&closed));
    let other = spawn_app(Db::Sqlite).await;
    let other_root = other.data_dir().file(vouch_ca::datadir::DataFile::RootCert);
    let untrusted = vouch_in(
        h,
        &[
            "device",
            "list",
            "--config",
            c,
            "--ca-file",
            other_root.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(untrusted.status.code(), Some(69), "{}", stderr(&untrusted));

    // A config file that is not ours: 64, the file named.
    std::fs::write(&config, "server = 1\n").unwrap();
    let broken = vouch_in(h, &["device", "list", "--config", c], &[]);
    assert_eq!(broken.status.code(), Some(64));
    assert!(
        stderr(&broken).contains("auditor.toml"),
        "{}",
        stderr(&broken)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn completions_cover_the_commands_and_every_command_has_an_example() {
    let home = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&vouch_in(home.path(), &["completions", shell], &[]));
        for word in ["device", "revoke", "output", "login"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let bash = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bash.path(),
        ok(&vouch_in(home.path(), &["completions", "bash"], &[])),
    )
    .unwrap();
    let sourced = Command::new("bash")
        .args([
            "-c",
            &format!("source {} && complete -p vouch", bash.path().display()),
        ])
        .output()
        .unwrap();
    assert!(
        sourced.status.success(),
        "{}",
        String::from_utf8_lossy(&sourced.stderr)
    );

    // Every leaf command's help shows an example.
    let missing = crate::help_examples::leaves_without_an_example(
        &<vouch_ca::config::Cli as clap::CommandFactory>::command(),
    );
    assert!(
        missing.is_empty(),
        "commands without an example in --help: {missing:?}"
    );
    let help = ok(&vouch_in(home.path(), &["device", "revoke", "--help"], &[]));
    assert!(help.contains("Example:\n  vouch device revoke"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_ten_thousand_rows_imports_with_progress_and_bad_rows_reported_by_line() {
    let app = spawn_app(Db::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let root = app.data_dir().file(vouch_ca::datadir::DataFile::RootCert);
    let admin = app.token_for(Role::Admin);
    let env = [
        ("VOUCH_SERVER", app.base.as_str()),
        ("VOUCH_CA_FILE", root.to_str().unwrap()),
        ("VOUCH_TOKEN", admin.as_str()),
    ];

    // 10,000 data rows (lines 2 to 10001); the bad ones, by line: found here, or refused by
    // the server (a lifetime beyond its --max-token-ttl of 30 days).
    let mut csv = String::from("name,zone,device_class,labels,ttl\n");
    let mut expected_bad = Vec::new();
    for i in 0..10_000u32 {
        let line = i + 2;
        let row = match i {
            17 => format!("s-{i},Sensors,sensor,line=a,24h"),
            4_242 => format!("s-{i},sensors,sensor,line,24h"),
            6_000 => format!("s-{i},sensors,sensor"),
            9_999 => format!("s-{i},sensors,sensor,line=a,90d"),
            _ => format!("s-{i},sensors,sensor,line=a;batch={},7d", i / 1000),
        };
        if matches!(i, 17 | 4_242 | 6_000 | 9_999) {
            expected_bad.push(line);
        }
        csv.push_str(&row);
        csv.push('\n');
    }
    let file = h.join("fleet.csv");
    std::fs::write(&file, csv).unwrap();
    let out = h.join("tokens.csv");

    // On a terminal (a pseudo-terminal from `script`), the progress bar is drawn.
    let command = format!(
        "{} device import {} --out {}",
        env!("CARGO_BIN_EXE_vouch"),
        file.display(),
        out.display()
    );
    let run = vouch_script(h, &command, &env);
    let shown = String::from_utf8_lossy(&run.stdout).into_owned();
    assert_eq!(run.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("importing [") && shown.contains("/10000 rows"),
        "no progress bar: {shown}"
    );
    assert!(shown.contains("9996 tokens minted"), "{shown}");
    for line in &expected_bad {
        assert!(
            shown.contains(&format!("line {line}: ")),
            "line {line} not reported: {shown}"
        );
    }
    assert!(
        shown.contains(ProblemCode::InvalidBody.as_str()) || shown.contains("ttl"),
        "{shown}"
    );

    // The good rows landed: every token in the output file, owner-only, names its line.
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let tokens = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<&str> = tokens.lines().skip(1).collect();
    assert_eq!(rows.len(), 9_996);
    let mut lines: Vec<u32> = rows
        .iter()
        .map(|r| r.split(',').next().unwrap().parse().unwrap())
        .collect();
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(lines.len(), 9_996);
    assert!(expected_bad.iter().all(|b| lines.binary_search(b).is_err()));
    // A minted token enrolls a device that carries the row's name and labels.
    let first = rows.iter().find(|r| r.starts_with("2,")).unwrap();
    let token = first.rsplit(',').next().unwrap();
    let (csr, _) = rcgen_csr();
    let enrolled: Value = app.enroll_with_csr(token, &csr).await.json().await.unwrap();
    let device = app
        .device_json(enrolled["device_id"].as_str().unwrap())
        .await;
    assert_eq!(device["labels"]["name"], "s-0");
    assert_eq!(device["labels"]["batch"], "0");

    // An existing output file is never overwritten (its tokens would be lost).
    let again = vouch_in(
        h,
        &[
            "device",
            "import",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(again.status.code(), Some(64), "{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), tokens);
}

/// Runs a shell command line under `script`, so it has a pseudo-terminal.
fn vouch_script(home: &Path, command: &str, env: &[(&str, &str)]) -> Output {
    let mut env = env.to_vec();
    env.push(("TERM", "xterm"));
    vouch_in_program("script", home, &["-qec", command, "/dev/null"], &env)
}
