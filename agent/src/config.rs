//! The command line and the config file. The file is TOML with the flags' names as keys
//! (`server`, `state-dir`, `join-token`, `tpm`, `tpm-helper`, `attest-every`, `event-log`,
//! `max-retry-delay`, `once`, `advertise`, `listen`, `socket`, `workload-port`, `mqtt`,
//! `refresh`, `max-crl-age`, `max-policy-age`, `decision-spool-max`, `when-spool-full`);
//! a flag given on the command line wins over the file. Every problem is collected and
//! reported at once, before anything starts.

use crate::lifecycle::Settings;
use crate::schedule::RetryPolicy;
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default time between attestations.
pub const DEFAULT_ATTEST_EVERY: &str = "30m";
/// Default ceiling of retry delays.
pub const DEFAULT_MAX_RETRY_DELAY: &str = "60s";

/// Vouch device agent: enrolls the device with a Vouch server, keeps its certificate
/// renewed and, with a TPM, proves the device's boot state by remote attestation.
///
/// Logs go to stderr (filter with RUST_LOG, e.g. `RUST_LOG=debug`); libtss2's own logging
/// is off unless TSS2_LOG is set. Exit codes: 0 done, 1 failure, 64 bad command line or
/// config.
#[derive(Debug, Parser)]
#[command(name = "vouch-agent", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll (first start) and keep the identity alive: renew at about half the
    /// certificate's lifetime, attest on schedule with a TPM, retry through outages.
    #[command(
        after_help = "Example:\n  VOUCH_JOIN_TOKEN=eyJ... vouch-agent run --server https://vouch.example:8443 \\\n      --state-dir /var/lib/vouch-agent --tpm device:/dev/tpmrm0 \\\n      --listen 0.0.0.0:7443 --advertise https://sensor-17.site4.example:7443\n  vouch-agent run --config /etc/vouch/agent.toml"
    )]
    Run(Box<RunArgs>),
    /// Print the device's identity, certificate expiry and last attestation.
    #[command(
        after_help = "Example:\n  vouch-agent status --state-dir /var/lib/vouch-agent\n  vouch-agent status --state-dir /var/lib/vouch-agent --output json | jq .certificate"
    )]
    Status(StatusArgs),
    /// Check the agent's configuration (`--config` file and flags) without starting it.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `vouch-agent config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check what `vouch-agent run` with the same options would run with: every problem in
    /// the file and the flags is printed, all at once; nothing starts. Exits 0 if the
    /// configuration is usable, 64 otherwise.
    #[command(after_help = "Example:\n  vouch-agent config check --config /etc/vouch/agent.toml")]
    Check(Box<RunArgs>),
}

/// How `status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Lines for a person.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

/// `vouch-agent run`.
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// Base URL of the Vouch server, e.g. `https://vouch.example:8443`.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Directory of the device's identity, keys and certificates (created 0700).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// One-time join (bootstrap) token for the first enrollment; ignored once enrolled.
    /// Prefer the environment variable or the config file: command lines are visible to
    /// other local users.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "VOUCH_JOIN_TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,
    /// Enroll with the TPM at this TCTI (e.g. `device:/dev/tpmrm0` or
    /// `swtpm:host=127.0.0.1,port=2321`) and attest with it: trust level high.
    /// Without it the device enrolls with a plain key: trust level low.
    #[arg(long, value_name = "TCTI")]
    pub tpm: Option<String>,
    /// The TPM helper that runs every TPM operation (with --tpm), so that the TSS and
    /// OpenSSL are never loaded into the agent itself [default: `vouch-agent-tpm` in the
    /// directory of this executable].
    #[arg(long, value_name = "FILE")]
    pub tpm_helper: Option<PathBuf>,
    /// Time between attestations (with --tpm), e.g. `30m`, `2s` [default: 30m].
    #[arg(long, value_name = "DURATION")]
    pub attest_every: Option<String>,
    /// The firmware's TCG event log, sent with every quote so the server replays it against
    /// the quoted PCRs (on Linux: `/sys/kernel/security/tpm0/binary_bios_measurements`).
    /// Without it the server checks the PCR values alone.
    #[arg(long, value_name = "FILE")]
    pub event_log: Option<PathBuf>,
    /// Longest wait between retries of a failed call (they back off from 1s,
    /// doubling, with full jitter) [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub max_retry_delay: Option<String>,
    /// Where peers deliver messages to this device, published with its key-agreement
    /// certificate (`https://HOST:PORT` for direct delivery, `mqtt://` or `mqtts://` for a
    /// broker); repeatable, at most 4.
    #[arg(long, value_name = "URL")]
    pub advertise: Vec<String>,
    /// Take direct deliveries from peers on this address (mutual TLS with device
    /// certificates), e.g. `0.0.0.0:7443`; advertise it with `--advertise https://HOST:PORT`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The workload API's Unix socket (mode 0660) [default: <state-dir>/agent.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Also serve the workload API on this loopback port; every request needs the header
    /// `X-Vouch-Workload: 1` (against browsers and server-side request forgery).
    #[arg(long, value_name = "PORT")]
    pub workload_port: Option<u16>,
    /// Send and take messages through this MQTT broker (`mqtt://HOST:PORT`); advertise it
    /// with `--advertise mqtt://HOST:PORT`.
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// Time between fetches of the CRL and the signed policy bundle [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub refresh: Option<String>,
    /// Refuse every message (both ways) once the CRL in use was last confirmed current by
    /// the server longer ago than this, or is past its nextUpdate [default: 4h].
    #[arg(long, value_name = "DURATION")]
    pub max_crl_age: Option<String>,
    /// Refuse every message (both ways) once the policy bundle in use was last confirmed by
    /// the server longer ago than this [default: 4h].
    #[arg(long, value_name = "DURATION")]
    pub max_policy_age: Option<String>,
    /// Most policy decisions kept in the state directory until the server's decision log
    /// takes them [default: 100000].
    #[arg(long, value_name = "N")]
    pub decision_spool_max: Option<usize>,
    /// When the decision spool is full: `refuse` new messages (nothing is lost), or
    /// `drop-oldest` decisions and count the loss [default: refuse].
    #[arg(long, value_name = "RULE")]
    pub when_spool_full: Option<String>,
    /// TOML file with any of these settings (keys named as the flags); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Do one pass and exit: enroll if needed, attest once (with --tpm), renew if due.
    /// Exits 0 if all of it succeeded (a failed attestation is recorded, then exits 1).
    #[arg(long)]
    pub once: bool,
}

/// `vouch-agent status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's state directory.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The sidecar's workload socket, if not `<state-dir>/agent.sock`.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// `table` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// The same as `--output json` (kept for scripts written before `--output`).
    #[arg(long, hide = true)]
    pub json: bool,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    /// `server`.
    pub server: Option<String>,
    /// `state-dir`.
    #[serde(alias = "state_dir")]
    pub state_dir: Option<PathBuf>,
    /// `join-token`.
    #[serde(alias = "join_token")]
    pub join_token: Option<String>,
    /// `tpm`.
    pub tpm: Option<String>,
    /// `tpm-helper`.
    #[serde(alias = "tpm_helper")]
    pub tpm_helper: Option<PathBuf>,
    /// `attest-every`.
    #[serde(alias = "attest_every")]
    pub attest_every: Option<String>,
    /// `event-log`.
    #[serde(alias = "event_log")]
    pub event_log: Option<PathBuf>,
    /// `max-retry-delay`.
    #[serde(alias = "max_retry_delay")]
    pub max_retry_delay: Option<String>,
    /// `once`.
    pub once: Option<bool>,
    /// `advertise`: a list of URLs.
    pub advertise: Option<Vec<String>>,
    /// `listen`.
    pub listen: Option<String>,
    /// `socket`.
    pub socket: Option<PathBuf>,
    /// `workload-port`.
    #[serde(alias = "workload_port")]
    pub workload_port: Option<u16>,
    /// `mqtt`.
    pub mqtt: Option<String>,
    /// `refresh`.
    pub refresh: Option<String>,
    /// `max-crl-age`.
    #[serde(alias = "max_crl_age")]
    pub max_crl_age: Option<String>,
    /// `max-policy-age`.
    #[serde(alias = "max_policy_age")]
    pub max_policy_age: Option<String>,
    /// `decision-spool-max`.
    #[serde(alias = "decision_spool_max")]
    pub decision_spool_max: Option<usize>,
    /// `when-spool-full`.
    #[serde(alias = "when_spool_full")]
    pub when_spool_full: Option<String>,
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config file `{}`: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config file `{}`: {e}", path.display()))
    }

    /// Parses TOML text; every key that is unknown or has a value of the wrong type is
    /// named, all of them in one message.
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        for (key, value) in &table {
            let mut one = toml::Table::new();
            one.insert(key.clone(), value.clone());
            if let Err(e) = Self::deserialize(one) {
                problems.push(format!("`{key}`: {}", e.message()));
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Self::deserialize(table).map_err(|e| e.message().to_owned())
    }
}

fn duration(name: &str, value: &str, errors: &mut Vec<String>) -> Duration {
    match humantime::parse_duration(value) {
        Ok(d) if d >= Duration::from_secs(1) => d,
        Ok(_) => {
            errors.push(format!("`{name}` must be at least 1s, got `{value}`"));
            Duration::from_secs(1)
        }
        Err(e) => {
            errors.push(format!("`{name}` is not a duration (`{value}`): {e}"));
            Duration::from_secs(1)
        }
    }
}

/// The run settings from the flags and the config file, or every problem found.
pub fn settings(args: RunArgs) -> Result<Settings, Vec<String>> {
    let mut errors = Vec::new();
    let file = match &args.config {
        Some(path) => ConfigFile::read(path).unwrap_or_else(|e| {
            errors.push(e);
            ConfigFile::default()
        }),
        None => ConfigFile::default(),
    };
    let server = args.server.or(file.server).unwrap_or_else(|| {
        errors.push("`server` is required (--server URL)".into());
        String::new()
    });
    if !server.is_empty() && !server.starts_with("https://") {
        errors.push(format!("`server` must be an https:// URL, got `{server}`"));
    }
    let state_dir = args.state_dir.or(file.state_dir).unwrap_or_else(|| {
        errors.push("`state-dir` is required (--state-dir DIR)".into());
        PathBuf::new()
    });
    let join_token = args
        .join_token
        .or(file.join_token)
        .filter(|t| !t.trim().is_empty());
    let tpm = args.tpm.or(file.tpm).filter(|t| !t.is_empty());
    let tpm_helper = args
        .tpm_helper
        .or(file.tpm_helper)
        .unwrap_or_else(crate::tpm_helper::default_path);
    if tpm.is_some() && !tpm_helper.is_file() {
        errors.push(format!(
            "`tpm-helper`: {} is not a file (the TPM helper, vouch-agent-tpm, is installed \
             beside vouch-agent; --tpm-helper FILE gives another place)",
            tpm_helper.display()
        ));
    }
    let attest_every = args
        .attest_every
        .or(file.attest_every)
        .unwrap_or_else(|| DEFAULT_ATTEST_EVERY.into());
    let attest_every = duration("attest-every", &attest_every, &mut errors);
    let event_log = args.event_log.or(file.event_log);
    if event_log.is_some() && tpm.is_none() {
        errors.push("`event-log` needs `tpm`: only a TPM's quotes are checked against it".into());
    }
    let max_delay = args
        .max_retry_delay
        .or(file.max_retry_delay)
        .unwrap_or_else(|| DEFAULT_MAX_RETRY_DELAY.into());
    let max = duration("max-retry-delay", &max_delay, &mut errors);
    let once = args.once || file.once.unwrap_or(false);
    let advertise = if args.advertise.is_empty() {
        file.advertise.unwrap_or_default()
    } else {
        args.advertise
    };
    if let Err(e) = vouch_proto::peer::check_endpoints(&advertise) {
        errors.push(format!("`advertise`: {e}"));
    }
    let listen = args.listen.or(file.listen).and_then(|a| {
        a.parse::<std::net::SocketAddr>()
            .map_err(|_| {
                errors.push(format!(
                    "`listen` is not an address (HOST:PORT with an IP), got `{a}`"
                ))
            })
            .ok()
    });
    let mqtt = args.mqtt.or(file.mqtt);
    if let Some(url) = &mqtt {
        if let Err(e) = crate::messaging::mqtt::broker_address(url) {
            errors.push(format!("`mqtt`: {e}"));
        }
    }
    let refresh = args
        .refresh
        .or(file.refresh)
        .map(|r| duration("refresh", &r, &mut errors));
    let max_crl_age = args
        .max_crl_age
        .or(file.max_crl_age)
        .map(|r| duration("max-crl-age", &r, &mut errors));
    let max_policy_age = args
        .max_policy_age
        .or(file.max_policy_age)
        .map(|r| duration("max-policy-age", &r, &mut errors));
    let spool_max = args.decision_spool_max.or(file.decision_spool_max);
    if spool_max == Some(0) {
        errors.push("`decision-spool-max` must be at least 1".into());
    }
    let when_spool_full = args
        .when_spool_full
        .or(file.when_spool_full)
        .map(|r| {
            r.parse()
                .map_err(|e| errors.push(format!("`when-spool-full`: {e}")))
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let sidecar = crate::messaging::sidecar::SidecarSettings {
        max_crl_age,
        max_policy_age,
        spool_max,
        when_spool_full,
        listen,
        socket: args.socket.or(file.socket),
        workload_port: args.workload_port.or(file.workload_port),
        mqtt,
        refresh,
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Settings {
        server,
        state_dir,
        join_token,
        tpm,
        tpm_helper,
        attest_every,
        event_log,
        advertise,
        retry: RetryPolicy {
            initial: RetryPolicy::default().initial.min(max),
            max,
        },
        once,
        sidecar,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "server = \"https://file:1\"\nstate-dir = \"/var/lib/vouch\"\njoin_token = \"t\"\nattest-every = \"5m\"\nonce = true\n",
        )
        .unwrap();
        let s = settings(RunArgs {
            server: Some("https://flag:2".into()),
            config: Some(path),
            ..RunArgs::default()
        })
        .unwrap();
        assert_eq!(s.server, "https://flag:2");
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/vouch"));
        assert_eq!(s.join_token.as_deref(), Some("t"));
        assert_eq!(s.attest_every, Duration::from_secs(300));
        assert_eq!(s.retry, RetryPolicy::default());
        assert!(s.once);
        assert_eq!(s.tpm, None);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors = settings(RunArgs {
            server: Some("http://plain".into()),
            attest_every: Some("soon".into()),
            max_retry_delay: Some("10ms".into()),
            event_log: Some("/sys/kernel/security/tpm0/binary_bios_measurements".into()),
            ..RunArgs::default()
        })
        .unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("`event-log` needs `tpm`")));
        let errors = settings(RunArgs::default()).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn sidecar_settings_are_checked_and_the_file_fills_them_in() {
        let errors = settings(RunArgs {
            server: Some("https://h".into()),
            state_dir: Some("/s".into()),
            listen: Some("gateway:7443".into()),
            mqtt: Some("mqtts://broker:8883".into()),
            refresh: Some("0s".into()),
            max_policy_age: Some("soon".into()),
            decision_spool_max: Some(0),
            when_spool_full: Some("drop-newest".into()),
            ..RunArgs::default()
        })
        .unwrap_err();
        assert_eq!(errors.len(), 6, "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("`listen`")));
        assert!(errors.iter().any(|e| e.starts_with("`mqtt`")));
        assert!(errors.iter().any(|e| e.contains("max-policy-age")));
        assert!(errors.iter().any(|e| e.starts_with("`decision-spool-max`")));
        assert!(errors.iter().any(|e| e.starts_with("`when-spool-full`")));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "server = \"https://h\"\nstate-dir = \"/s\"\nlisten = \"127.0.0.1:7443\"\nmqtt = \"mqtt://broker:1883\"\nworkload-port = 7000\nrefresh = \"5s\"\nmax-policy-age = \"2h\"\ndecision-spool-max = 10\nwhen-spool-full = \"drop-oldest\"\n",
        )
        .unwrap();
        let s = settings(RunArgs {
            config: Some(path),
            ..RunArgs::default()
        })
        .unwrap();
        assert_eq!(s.sidecar.listen, Some("127.0.0.1:7443".parse().unwrap()));
        assert_eq!(s.sidecar.mqtt.as_deref(), Some("mqtt://broker:1883"));
        assert_eq!(s.sidecar.workload_port, Some(7000));
        assert_eq!(s.sidecar.refresh, Some(Duration::from_secs(5)));
        assert_eq!(s.sidecar.socket, None);
        assert_eq!(s.sidecar.max_policy_age, Some(Duration::from_secs(7200)));
        assert_eq!(s.sidecar.spool_max, Some(10));
        assert_eq!(
            s.sidecar.when_spool_full,
            crate::messaging::spool::WhenFull::DropOldest
        );
    }

    #[test]
    fn unknown_keys_and_bad_files_are_errors() {
        assert!(ConfigFile::parse("servr = \"x\"").is_err());
        assert!(ConfigFile::parse("server = [").is_err());
        assert!(ConfigFile::parse("once = \"yes\"").is_err());
        let errors = settings(RunArgs {
            config: Some("/nonexistent/agent.toml".into()),
            server: Some("https://h".into()),
            state_dir: Some("/tmp/x".into()),
            ..RunArgs::default()
        })
        .unwrap_err();
        assert!(errors[0].contains("/nonexistent/agent.toml"), "{errors:?}");
    }

    #[test]
    fn the_cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "vouch-agent",
            "run",
            "--server",
            "https://h",
            "--state-dir",
            "/s",
            "--once",
            "--attest-every",
            "2s",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Run(args) if args.once));
    }
}
