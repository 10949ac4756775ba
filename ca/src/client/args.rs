//! Command-line options of the operator commands (see the module above).

use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

/// How to print answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Tables and plain lines for a person.
    #[default]
    Table,
    /// The server's JSON answer, unchanged (one document per command), for scripts.
    Json,
}

/// Where the server is and how to talk to it; every operator command takes these.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The server's base URL, e.g. `https://vouch.example:8443`.
    #[arg(long, env = "VOUCH_SERVER")]
    pub server: Option<String>,
    /// PEM file of the CA that verifies the server: the data directory's `root.pem` or the
    /// trust bundle (`GET /v1/trust-bundle`, checked against a token's `ca_sha256`).
    #[arg(long, env = "VOUCH_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Operator token (`vouch admin-token`). Prefer the environment or the config file to
    /// this flag: other users can read a process's arguments.
    #[arg(long, env = "VOUCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Config file with `server`, `ca_file` and `token` (what `vouch login` writes).
    /// Default: `$XDG_CONFIG_HOME/vouch/config.toml`, else `~/.config/vouch/config.toml`.
    #[arg(long, env = "VOUCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// `table` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

/// `vouch login`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  vouch login --server https://vouch.example:8443 \\\n      --ca-file vouch-data/root.pem --token \"$(vouch admin-token --role operator --ttl 8h)\""
)]
pub struct LoginArgs {
    /// Where and as whom.
    #[command(flatten)]
    pub remote: Remote,
}

/// `vouch token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a one-time bootstrap token for a device to enroll with. The token is shown
    /// only in this answer.
    #[command(
        after_help = "Example:\n  vouch token create --zone sensors --device-class sensor --label line=a --ttl 24h"
    )]
    Create(TokenCreateArgs),
}

/// `vouch token create`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Zone the device joins.
    #[arg(long)]
    pub zone: String,
    /// Device class (chooses the attestation reference values).
    #[arg(long)]
    pub device_class: Option<String>,
    /// A label the device carries, `KEY=VALUE` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Lifetime, e.g. `1h`, `7d` (the server's default if absent).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Re-enroll this existing device (a TPM device whose disk was wiped).
    #[arg(long, value_name = "DEVICE_ID")]
    pub reenroll: Option<String>,
    /// Connection.
    #[command(flatten)]
    pub remote: Remote,
}

/// `vouch device` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List devices (every page), optionally of one zone or status.
    #[command(
        after_help = "Example:\n  vouch device list --zone sensors --status active\n  vouch device list --output json | jq -r '.devices[].id'"
    )]
    List(DeviceListArgs),
    /// Show one device.
    #[command(after_help = "Example:\n  vouch device show 3f0c6a2e9b1d4c7f8a5e2b0d1c3f4a6b")]
    Show(DeviceIdArgs),
    /// Revoke a device: its certificates go on the CRL at once and it cannot renew.
    #[command(
        after_help = "Example:\n  vouch device revoke 3f0c6a2e9b1d4c7f8a5e2b0d1c3f4a6b --reason \"stolen from site 4\""
    )]
    Revoke(DeviceReasonArgs),
    /// Release a quarantined or stale device back to service (audited).
    #[command(
        after_help = "Example:\n  vouch device release 3f0c6a2e9b1d4c7f8a5e2b0d1c3f4a6b --reason \"firmware 2.1 approved\""
    )]
    Release(DeviceReasonArgs),
    /// A device's attestation history, newest first.
    #[command(after_help = "Example:\n  vouch device history 3f0c6a2e9b1d4c7f8a5e2b0d1c3f4a6b")]
    History(DeviceIdArgs),
    /// Mint a bootstrap token for every row of a CSV file (a fleet's pre-registration).
    /// Columns, named in a header row: `zone` (required), `name`, `device_class`, `labels`
    /// (`key=value;key=value`), `ttl`. Bad rows are reported by line number and the good
    /// ones land; the tokens go to `--out` (a new file, owner-only). Exits 1 if any row was
    /// bad.
    #[command(
        after_help = "Example:\n  printf 'name,zone,device_class,labels,ttl\\ns-0001,sensors,sensor,line=a;site=4,7d\\n' > fleet.csv\n  vouch device import fleet.csv --out tokens.csv"
    )]
    Import(ImportArgs),
}

/// `vouch device import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The CSV file.
    pub file: PathBuf,
    /// Where the tokens go: a CSV of line, name, zone, token_id, expires_at, token (created
    /// new with mode 0600: the tokens are credentials).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Connection.
    #[command(flatten)]
    pub remote: Remote,
}

/// `vouch device list`.
#[derive(Debug, Args)]
pub struct DeviceListArgs {
    /// Only devices of this zone.
    #[arg(long)]
    pub zone: Option<String>,
    /// Only devices with this status: `active` or `revoked`.
    #[arg(long)]
    pub status: Option<String>,
    /// Connection.
    #[command(flatten)]
    pub remote: Remote,
}

/// A command on one device.
#[derive(Debug, Args)]
pub struct DeviceIdArgs {
    /// The device id (32 hex digits).
    pub device_id: String,
    /// Connection.
    #[command(flatten)]
    pub remote: Remote,
}

/// A command on one device that records why.
#[derive(Debug, Args)]
pub struct DeviceReasonArgs {
    /// The device id (32 hex digits).
    pub device_id: String,
    /// Why (recorded in the registry and the audit log).
    #[arg(long)]
    pub reason: String,
    /// Connection.
    #[command(flatten)]
    pub remote: Remote,
}

/// `vouch policy decisions`.
#[derive(Debug, Args)]
pub struct DecisionsArgs {
    /// Only decisions about this principal (an entity uid, e.g. `Vouch::Device::"<id>"`).
    #[arg(long)]
    pub principal: Option<String>,
    /// How many decisions, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Connection.
    #[command(flatten)]
    pub remote: Remote,
}

/// `vouch crl` subcommands.
#[derive(Debug, Subcommand)]
pub enum CrlCommand {
    /// Fetch the current CRL and show its number, validity and revoked serials.
    #[command(
        after_help = "Example:\n  vouch crl show\n  vouch crl show --output json | jq '.revoked | length'"
    )]
    Show(RemoteOnly),
}

/// A command that needs only the connection.
#[derive(Debug, Args)]
pub struct RemoteOnly {
    /// Connection.
    #[command(flatten)]
    pub remote: Remote,
}
