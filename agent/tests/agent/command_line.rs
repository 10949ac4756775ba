//! The `vouch-agent` command line (issue 13, acceptances 2 and 3): every command's help has
//! an example, and `vouch-agent config check` names every mistake of a file at once.

use crate::server::AGENT;
use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(AGENT)
        .args(args)
        .env_remove("VOUCH_JOIN_TOKEN")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_command_has_help_with_an_example() {
    let missing = crate::help_examples::leaves_without_an_example(
        &<vouch_agent::config::Cli as clap::CommandFactory>::command(),
    );
    assert!(
        missing.is_empty(),
        "without an example in --help: {missing:?}"
    );
    for command in [
        &["run", "--help"][..],
        &["status", "--help"],
        &["config", "check", "--help"],
    ] {
        let out = agent(command);
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("Example:\n  "), "{command:?}");
    }
}

#[test]
fn config_check_names_every_mistake_and_passes_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "server = \"https://vouch.example:8443\"\nstate-dir = \"/var/lib/vouch-agent\"\n\
         attest_every = \"half an hour\"\nworkload-port = \"seven thousand\"\nadvertize = [\"https://a:7443\"]\n",
    )
    .unwrap();
    let out = agent(&["config", "check", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = text(&out.stderr);
    assert!(
        err.contains("`advertize`") && err.contains("unknown field"),
        "{err}"
    );
    assert!(err.contains("`workload-port`"), "{err}");
    // The file's two bad keys are one problem, the flag's bad duration another.
    let out = agent(&[
        "config",
        "check",
        "--config",
        file.to_str().unwrap(),
        "--max-retry-delay",
        "soon",
    ]);
    assert!(
        text(&out.stderr).contains("max-retry-delay"),
        "{}",
        text(&out.stderr)
    );

    // The mistakes in values are named too once the keys are right.
    std::fs::write(
        &file,
        "server = \"http://vouch.example\"\nstate-dir = \"/var/lib/vouch-agent\"\n\
         attest-every = \"half an hour\"\nlisten = \"gateway:7443\"\n",
    )
    .unwrap();
    let out = agent(&["config", "check", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 3, "{err}");
    assert!(
        err.contains("`server`") && err.contains("`attest-every`") && err.contains("`listen`"),
        "{err}"
    );

    std::fs::write(
        &file,
        "server = \"https://vouch.example:8443\"\nstate-dir = \"/var/lib/vouch-agent\"\n\
         tpm = \"device:/dev/tpmrm0\"\nlisten = \"0.0.0.0:7443\"\nadvertise = [\"https://sensor-17.example:7443\"]\n",
    )
    .unwrap();
    let out = agent(&["config", "check", "--config", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("device:/dev/tpmrm0"));
}
