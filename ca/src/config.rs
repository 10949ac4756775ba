//! The `vouch` command line, and validation of `serve` options into a [`ServeConfig`].
//!
//! Every option is a plain string until [`ServeArgs::validate`], which checks all of them and
//! reports every problem at once, before any file is written or port bound. `vouch` exits
//! with code 64 (EX_USAGE) on a bad configuration.

use crate::api::Settings;
use crate::app::{default_database_url, PolicyConfig, ServeConfig};
use crate::datadir::DataDir;
use crate::ids::TrustDomain;
use crate::tokens::Role;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Exit code for a bad configuration or usage (sysexits EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

/// Vouch: registration CA, device registry and provisioning API for edge fleets.
#[derive(Debug, Parser)]
#[command(
    name = "vouch",
    version,
    about,
    long_about = None,
    after_help = "Operator commands (login, token, device, policy status|decisions|reload, crl) reach a \
server over its API: --server, --ca-file and --token, or VOUCH_SERVER, VOUCH_CA_FILE and \
VOUCH_TOKEN, or the config file `vouch login` writes (~/.config/vouch/config.toml).\n\n\
Exit codes:\n  0   done\n  1   the server refused (its problem code is printed), or a check failed\n  \
64  bad usage or configuration\n  69  the server cannot be reached or is not ready\n  \
77  the operator token was refused, or its role may not do this"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `vouch` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the provisioning API server (HTTPS). On first start with `--trust-domain` and an
    /// empty data directory it creates the CA.
    #[command(
        after_help = "Example:\n  vouch serve --data-dir /var/lib/vouch --trust-domain fleet.example \\\n      --listen 0.0.0.0:8443 --public-url https://vouch.example:8443 \\\n      --hostname vouch.example --policy-dir /etc/vouch/policies"
    )]
    Serve(Box<ServeArgs>),
    /// Manage the certificate authority in a data directory.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Mint an operator token (a JWT for `Authorization: Bearer`) from the data directory's
    /// operator key. Whoever can read the data directory can do this.
    #[command(
        after_help = "Example:\n  vouch admin-token --data-dir /var/lib/vouch --role operator --ttl 8h --subject alice"
    )]
    AdminToken(AdminTokenArgs),
    /// Check the server's configuration (a `--config` file, flags, `VOUCH_*` variables)
    /// without starting it: every problem is printed, all at once.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Policy: check and test a directory locally; a server's status, decisions and reload.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Save the server URL, CA file and operator token for the other operator commands
    /// (checked against the server first; written owner-only).
    Login(crate::client::args::LoginArgs),
    /// Bootstrap tokens for devices to enroll with.
    #[command(subcommand)]
    Token(crate::client::args::TokenCommand),
    /// Devices in the registry: list, show, revoke, release, attestation history.
    #[command(subcommand)]
    Device(crate::client::args::DeviceCommand),
    /// The certificate revocation list.
    #[command(subcommand)]
    Crl(crate::client::args::CrlCommand),
    /// Back up a data directory (CA certificates and keys, token keys) and a consistent
    /// copy of its SQLite registry into a new directory, owner-only, with a SHA-256
    /// manifest. Safe while the server runs. A PostgreSQL registry: use `pg_dump` too.
    #[command(
        after_help = "Example:\n  vouch backup --data-dir /var/lib/vouch /srv/backups/vouch-$(date +%F)"
    )]
    Backup(BackupArgs),
    /// Restore a backup into a new (or empty) data directory, every file checked against
    /// the backup's manifest first. Then start `vouch serve` on it.
    #[command(
        after_help = "Example:\n  vouch restore /srv/backups/vouch-2026-12-01 --data-dir /var/lib/vouch"
    )]
    Restore(RestoreArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  vouch completions bash > /etc/bash_completion.d/vouch\n  vouch completions zsh > \"${fpath[1]}/_vouch\"\n  vouch completions fish > ~/.config/fish/completions/vouch.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `vouch config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check what `vouch serve` with the same options would run with: reads the file, the
    /// flags and the environment, checks every option, binds no port and writes nothing.
    /// Exits 0 if the configuration is usable, 64 with every problem otherwise.
    #[command(after_help = "Example:\n  vouch config check --config /etc/vouch/vouch.toml")]
    Check(Box<ServeArgs>),
}

/// `vouch policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse and validate a policy directory strictly against its schema. Prints every
    /// problem as `file:line:column: message` and exits 1 if there is any.
    #[command(after_help = "Example:\n  vouch policy check examples/policies")]
    Check {
        /// The policy directory.
        dir: PathBuf,
    },
    /// Validate a policy directory, then run its `tests/*.json` cases. Exits 1 if any case
    /// fails. This is what a policy repository's CI runs.
    #[command(after_help = "Example:\n  vouch policy test examples/policies")]
    Test {
        /// The policy directory.
        dir: PathBuf,
    },
    /// A server's active (and shadow) policy set: version, load time, last failed load.
    #[command(
        after_help = "Example:\n  vouch policy status\n  vouch policy status --output json | jq -r .active.version.id"
    )]
    Status(crate::client::args::RemoteOnly),
    /// A server's decision log, newest first.
    #[command(
        after_help = "Example:\n  vouch policy decisions --limit 20\n  vouch policy decisions --principal 'Vouch::Device::\"3f0c6a2e9b1d4c7f8a5e2b0d1c3f4a6b\"'"
    )]
    Decisions(crate::client::args::DecisionsArgs),
    /// Make a server re-read its policy directories now (as SIGHUP does).
    #[command(after_help = "Example:\n  vouch policy reload")]
    Reload(crate::client::args::RemoteOnly),
}

/// `vouch ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new root CA and issuing CA (ECDSA P-256) and the token keys.
    #[command(
        after_help = "Example:\n  vouch ca init --data-dir /var/lib/vouch --trust-domain fleet.example \\\n      --offline-root /media/offline/root.key"
    )]
    Init(CaInitArgs),
    /// Import an existing root certificate and issuing CA (certificate and key).
    #[command(
        after_help = "Example:\n  vouch ca import --data-dir /var/lib/vouch --trust-domain fleet.example \\\n      --root-cert root.pem --issuing-cert issuing.pem --issuing-key issuing.key"
    )]
    Import(CaImportArgs),
}

/// Options of `vouch ca init`.
#[derive(Debug, Args)]
pub struct CaInitArgs {
    /// Data directory (created with mode 0700).
    #[arg(long, env = "VOUCH_DATA_DIR", default_value = "vouch-data")]
    pub data_dir: PathBuf,
    /// SPIFFE trust domain, e.g. `fleet.example`.
    #[arg(long, env = "VOUCH_TRUST_DOMAIN")]
    pub trust_domain: String,
    /// Write the root CA's private key to FILE (mode 0600, outside the data directory)
    /// instead of into the data directory: an offline root. The server never needs it; keep
    /// it offline (see the README's root key ceremony). Without it, `root.key` is written
    /// into the data directory, online beside the server.
    #[arg(long, value_name = "FILE")]
    pub offline_root: Option<PathBuf>,
}

/// Options of `vouch ca import`.
#[derive(Debug, Args)]
pub struct CaImportArgs {
    /// Data directory (created with mode 0700).
    #[arg(long, env = "VOUCH_DATA_DIR", default_value = "vouch-data")]
    pub data_dir: PathBuf,
    /// SPIFFE trust domain, e.g. `fleet.example`.
    #[arg(long, env = "VOUCH_TRUST_DOMAIN")]
    pub trust_domain: String,
    /// Root CA certificate, PEM.
    #[arg(long)]
    pub root_cert: PathBuf,
    /// Issuing (intermediate) CA certificate, PEM, signed by the root.
    #[arg(long)]
    pub issuing_cert: PathBuf,
    /// Issuing CA private key, PKCS#8 PEM.
    #[arg(long)]
    pub issuing_key: PathBuf,
}

/// Options of `vouch backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The data directory to back up.
    #[arg(long, env = "VOUCH_DATA_DIR", default_value = "vouch-data")]
    pub data_dir: PathBuf,
    /// The registry, if not the data directory's `vouch.db` (a `sqlite://` URL is copied;
    /// a PostgreSQL one is left to `pg_dump`).
    #[arg(long, env = "VOUCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The backup directory to create (it must not exist).
    pub out: PathBuf,
}

/// Options of `vouch restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup directory (`vouch backup` made it).
    pub from: PathBuf,
    /// The data directory to restore into: new, or empty.
    #[arg(long, env = "VOUCH_DATA_DIR")]
    pub data_dir: PathBuf,
}

/// Options of `vouch admin-token`.
#[derive(Debug, Args)]
pub struct AdminTokenArgs {
    /// Data directory.
    #[arg(long, env = "VOUCH_DATA_DIR", default_value = "vouch-data")]
    pub data_dir: PathBuf,
    /// Role: `admin`, `operator` or `auditor` (read only).
    #[arg(long)]
    pub role: String,
    /// Lifetime, e.g. `1h`, `30m`; at most `7d`. The token id is printed on stderr: an admin
    /// revokes the token early with `POST /v1/operator-tokens/revoke`.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Who the token is for (recorded in the audit log).
    #[arg(long, default_value = "cli")]
    pub subject: String,
}

/// Options of `vouch serve` (and of `vouch config check`). Also read from a TOML file
/// (`--config`, see [`crate::config_file`]), whose keys are these fields' names.
#[derive(Debug, Args, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file of these options (keys are the option names with `_` for `-`; see
    /// `deploy/vouch.toml`). Flags and `VOUCH_*` variables override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory: CA keys (0600), token keys and the default SQLite database.
    #[arg(long, env = "VOUCH_DATA_DIR", default_value = "vouch-data")]
    pub data_dir: PathBuf,
    /// Address to listen on (HTTPS).
    #[arg(long, env = "VOUCH_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// Database URL: `sqlite://PATH?mode=rwc` or `postgres://USER:PASS@HOST/DB`.
    /// Default: `vouch.db` in the data directory.
    #[arg(long, env = "VOUCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Trust domain; with an empty data directory the CA is created for it.
    #[arg(long, env = "VOUCH_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Base URL devices use to reach this server; the CRL URL in certificates derives from
    /// it. Default: `https://localhost:<port>`.
    #[arg(long, env = "VOUCH_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// DNS name or IP address for the server's TLS certificate (repeatable).
    #[arg(long = "hostname", default_values = ["localhost", "127.0.0.1"])]
    pub hostnames: Vec<String>,
    /// Lifetime of device certificates.
    #[arg(long, default_value = "24h")]
    pub cert_lifetime: String,
    /// Default lifetime of bootstrap tokens.
    #[arg(long, default_value = "1h")]
    pub token_ttl: String,
    /// Longest lifetime a bootstrap token may be given.
    #[arg(long, default_value = "30d")]
    pub max_token_ttl: String,
    /// Clock skew tolerated on every expiry check.
    #[arg(long, default_value = "60s")]
    pub clock_skew: String,
    /// Validity of each CRL.
    #[arg(long, default_value = "24h")]
    pub crl_validity: String,
    /// Database connection pool size.
    #[arg(long, default_value_t = 8)]
    pub db_max_connections: u32,
    /// How often every device attests. A device whose last passing attestation is older
    /// than the period plus `--attestation-grace` becomes `stale`.
    #[arg(long, default_value = "30m")]
    pub attestation_period: String,
    /// Grace after the attestation period before a silent device is `stale`.
    #[arg(long, default_value = "5m")]
    pub attestation_grace: String,
    /// Most client connections served at once; beyond it new connections wait (in the
    /// kernel's backlog) until one closes.
    #[arg(long, default_value_t = 4096)]
    pub max_client_connections: usize,
    /// How long a client may take to finish the TLS handshake after connecting; a silent
    /// connection is closed then.
    #[arg(long, default_value = "10s")]
    pub handshake_timeout: String,
    /// How long a client connection may stay open with no request in flight (HTTP/1
    /// keep-alive and HTTP/2 alike); then the server closes it.
    #[arg(long, default_value = "60s")]
    pub idle_timeout: String,
    /// How long a request body may take to arrive in full after its headers; a slower body
    /// is answered with an error and the connection closed.
    #[arg(long, default_value = "10s")]
    pub request_body_timeout: String,
    /// Decisions each caller may ask for per second (`POST /v1/authorize`); 0 turns the
    /// limit off. Bursts of twice as many are allowed.
    #[arg(long, default_value_t = 100)]
    pub decision_rate: u32,
    /// How often this replica tries the stale sweep; across replicas each period is swept
    /// once (coordinated through the database).
    #[arg(long, default_value = "1m")]
    pub sweep_every: String,
    /// PEM file of TPM manufacturer CA certificates (roots and intermediates). A TPM device
    /// must present an EK certificate that chains to one of them, or have its EK on
    /// `--tpm-ek-allowlist`. With neither option, TPM enrollment is refused.
    #[arg(long, value_name = "FILE")]
    pub tpm_roots: Option<PathBuf>,
    /// File of endorsement keys allowed without a certificate: one SHA-256 (hex) of an EK's
    /// public area per line (as `ek_sha256` in device records), `#` comments. With it or
    /// `--tpm-roots`, every TPM must be on the list or present a certificate that chains.
    #[arg(long, value_name = "FILE")]
    pub tpm_ek_allowlist: Option<PathBuf>,
    /// LAB ONLY: enroll any TPM's endorsement key without a manufacturer certificate or an
    /// allowlist entry (trust on first use). Anyone with a bootstrap token can then bind any
    /// RSA key as a "TPM" and get `high` trust. Logged as a warning at start and at every
    /// such enrollment; cannot be combined with `--tpm-roots` or `--tpm-ek-allowlist`.
    #[arg(long, env = "VOUCH_TPM_TRUST_ON_FIRST_USE")]
    pub tpm_trust_on_first_use: bool,
    /// Policy directory (`schema.cedarschema`, `fleet.json`, `policies/*.cedar`), usually a
    /// Git work tree. Loaded at start (the server does not start if it does not load) and
    /// reloaded on change, on SIGHUP and on `POST /v1/policy/reload`. Without it every
    /// decision is a deny.
    #[arg(long, env = "VOUCH_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,
    /// Candidate policy directory evaluated beside the active one in shadow mode: its
    /// decisions are logged and differences counted, never enforced.
    #[arg(long, env = "VOUCH_POLICY_SHADOW_DIR")]
    pub policy_shadow_dir: Option<PathBuf>,
    /// How often the policy directories are checked for changes (a new commit or edited
    /// files); `0s` turns the watcher off.
    #[arg(long, default_value = "5s")]
    pub policy_poll: String,
    /// Log lines on stderr: `human`, or `json` (one object per line, with the request id of
    /// the API request it belongs to). Filter with `RUST_LOG`.
    #[arg(long, env = "VOUCH_LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,
}

fn seconds(name: &str, value: &str, errors: &mut Vec<String>) -> i64 {
    match humantime::parse_duration(value) {
        Ok(d) if d.as_secs() > 0 => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Ok(_) => {
            errors.push(format!("--{name} must be at least one second"));
            0
        }
        Err(e) => {
            errors.push(format!("--{name} `{value}`: {e}"));
            0
        }
    }
}

fn duration(name: &str, value: &str, errors: &mut Vec<String>) -> std::time::Duration {
    std::time::Duration::from_secs(seconds(name, value, errors).unsigned_abs())
}

/// Parses a duration option such as `1h` into seconds.
pub fn parse_seconds(name: &str, value: &str) -> Result<i64, String> {
    let mut errors = Vec::new();
    let s = seconds(name, value, &mut errors);
    errors.pop().map_or(Ok(s), Err)
}

/// Parses a role name.
pub fn parse_role(value: &str) -> Result<Role, String> {
    Role::parse(value)
        .ok_or_else(|| format!("--role `{value}` must be `admin`, `operator` or `auditor`"))
}

impl ServeArgs {
    /// Checks every option and returns the configuration, or every problem found.
    pub fn validate(&self) -> Result<(ServeConfig, Option<TrustDomain>), Vec<String>> {
        let mut errors = Vec::new();
        let listen: Option<SocketAddr> = match self.listen.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!(
                    "--listen `{}` is not an address like `127.0.0.1:8443`",
                    self.listen
                ));
                None
            }
        };
        let trust_domain = match self.trust_domain.as_deref().map(TrustDomain::parse) {
            None => None,
            Some(Ok(td)) => Some(td),
            Some(Err(e)) => {
                errors.push(format!("--trust-domain: {e}"));
                None
            }
        };
        if let Some(url) = &self.database_url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres:")
                || url.starts_with("postgresql:"))
            {
                errors.push("--database-url must start with `sqlite:` or `postgres:`".into());
            }
        }
        let public_url = self.public_url.as_ref().map(|u| {
            let u = u.trim_end_matches('/').to_owned();
            if !u.starts_with("https://") || u.len() > 200 {
                errors.push(
                    "--public-url must be an `https://` URL of at most 200 characters".into(),
                );
            }
            u
        });
        if self.hostnames.is_empty() {
            errors.push("at least one --hostname is needed".into());
        }
        let settings = Settings {
            cert_lifetime_secs: seconds("cert-lifetime", &self.cert_lifetime, &mut errors),
            default_token_ttl_secs: seconds("token-ttl", &self.token_ttl, &mut errors),
            max_token_ttl_secs: seconds("max-token-ttl", &self.max_token_ttl, &mut errors),
            clock_skew_secs: match humantime::parse_duration(&self.clock_skew) {
                Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                Err(e) => {
                    errors.push(format!("--clock-skew `{}`: {e}", self.clock_skew));
                    0
                }
            },
            // Set by `app::start` from the public URL or the address actually bound.
            crl_url: String::new(),
            crl_validity_secs: seconds("crl-validity", &self.crl_validity, &mut errors),
            attestation_period_secs: seconds(
                "attestation-period",
                &self.attestation_period,
                &mut errors,
            ),
            attestation_grace_secs: seconds(
                "attestation-grace",
                &self.attestation_grace,
                &mut errors,
            ),
            tpm_roots: match &self.tpm_roots {
                None => Vec::new(),
                Some(path) => match read_tpm_roots(path) {
                    Ok(roots) => roots,
                    Err(e) => {
                        errors.push(format!("--tpm-roots {}: {e}", path.display()));
                        Vec::new()
                    }
                },
            },
            tpm_trust_on_first_use: self.tpm_trust_on_first_use,
            decisions_per_second: self.decision_rate,
            decision_burst: self.decision_rate.saturating_mul(2),
            max_decision_page_bytes: Settings::default().max_decision_page_bytes,
            max_client_connections: self.max_client_connections,
            handshake_timeout: duration("handshake-timeout", &self.handshake_timeout, &mut errors),
            idle_timeout: duration("idle-timeout", &self.idle_timeout, &mut errors),
            request_body_timeout: duration(
                "request-body-timeout",
                &self.request_body_timeout,
                &mut errors,
            ),
            tpm_ek_allowlist: match &self.tpm_ek_allowlist {
                None => Default::default(),
                Some(path) => match read_ek_allowlist(path) {
                    Ok(list) => list,
                    Err(e) => {
                        errors.push(format!("--tpm-ek-allowlist {}: {e}", path.display()));
                        Default::default()
                    }
                },
            },
        };
        if self.tpm_trust_on_first_use
            && (self.tpm_roots.is_some() || self.tpm_ek_allowlist.is_some())
        {
            errors.push(
                "--tpm-trust-on-first-use cannot be combined with --tpm-roots or --tpm-ek-allowlist"
                    .into(),
            );
        }
        let sweep_every = seconds("sweep-every", &self.sweep_every, &mut errors);
        if settings.default_token_ttl_secs > settings.max_token_ttl_secs {
            errors.push("--token-ttl must not exceed --max-token-ttl".into());
        }
        let policy_poll = match humantime::parse_duration(&self.policy_poll) {
            Ok(d) if d.is_zero() => None,
            Ok(d) if d < std::time::Duration::from_millis(100) => {
                errors.push("--policy-poll must be 0s (off) or at least 100ms".into());
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                errors.push(format!("--policy-poll `{}`: {e}", self.policy_poll));
                None
            }
        };
        if self.policy_shadow_dir.is_some() && self.policy_dir.is_none() {
            errors.push("--policy-shadow-dir needs --policy-dir".into());
        }
        if self.max_client_connections == 0 {
            errors.push("--max-client-connections must be at least 1".into());
        }
        if self.db_max_connections == 0 {
            errors.push("--db-max-connections must be at least 1".into());
        }
        let data_dir = DataDir::new(&self.data_dir);
        match (errors.is_empty(), listen) {
            (true, Some(listen)) => Ok((
                ServeConfig {
                    database_url: self
                        .database_url
                        .clone()
                        .unwrap_or_else(|| default_database_url(&data_dir)),
                    data_dir,
                    listen,
                    public_url,
                    hostnames: self.hostnames.clone(),
                    max_connections: self.db_max_connections,
                    settings,
                    sweep_every: std::time::Duration::from_secs(
                        u64::try_from(sweep_every).unwrap_or(60),
                    ),
                    policy: PolicyConfig {
                        dir: self.policy_dir.clone(),
                        shadow_dir: self.policy_shadow_dir.clone(),
                        poll: policy_poll,
                    },
                },
                trust_domain,
            )),
            _ => Err(errors),
        }
    }
}

/// The EK fingerprints of an allowlist file: 64 hex digits a line; blank lines and `#`
/// comments are skipped; at most 1 MiB.
fn read_ek_allowlist(path: &std::path::Path) -> Result<std::collections::BTreeSet<String>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > 1024 * 1024 {
        return Err("larger than 1 MiB".into());
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut list = std::collections::BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        if entry.len() != 64 || !entry.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "line {}: not the SHA-256 (64 hex digits) of an EK",
                n + 1
            ));
        }
        list.insert(entry.to_ascii_lowercase());
    }
    Ok(list)
}

/// The certificates of a PEM file of TPM manufacturer CAs (at least one; at most 1 MiB).
fn read_tpm_roots(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > 1024 * 1024 {
        return Err("larger than 1 MiB".into());
    }
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let certs: Vec<Vec<u8>> = pem::parse_many(&text)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect();
    for der in &certs {
        use x509_parser::prelude::FromDer;
        x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| format!("a certificate does not parse: {e}"))?;
    }
    if certs.is_empty() {
        return Err("no CERTIFICATE in the file".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> ServeArgs {
        let mut all = vec!["vouch", "serve"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).unwrap().command {
            Command::Serve(s) => *s,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors = serve(&[
            "--listen",
            "nowhere",
            "--trust-domain",
            "Bad Domain",
            "--cert-lifetime",
            "forever",
            "--database-url",
            "mysql://x",
        ])
        .validate()
        .unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
    }

    #[test]
    fn policy_options_are_checked() {
        let errors = serve(&["--policy-poll", "1ms", "--policy-shadow-dir", "x"])
            .validate()
            .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        let (config, _) = serve(&["--policy-dir", "p", "--policy-poll", "0s"])
            .validate()
            .unwrap();
        assert_eq!(config.policy.poll, None);
        let (config, _) = serve(&[]).validate().unwrap();
        assert_eq!(config.policy.poll, Some(std::time::Duration::from_secs(5)));
        assert!(config.policy.dir.is_none());
    }

    #[test]
    fn tpm_trust_files_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("eks");
        let good = "ab".repeat(32);
        std::fs::write(
            &list,
            format!("# lab devices\n{}  # bench 3\n\n", good.to_uppercase()),
        )
        .unwrap();
        let (config, _) = serve(&["--tpm-ek-allowlist", list.to_str().unwrap()])
            .validate()
            .unwrap();
        assert_eq!(
            config
                .settings
                .tpm_ek_allowlist
                .into_iter()
                .collect::<Vec<_>>(),
            vec![good]
        );
        std::fs::write(&list, "not-a-digest\n").unwrap();
        let roots = dir.path().join("roots.pem");
        std::fs::write(&roots, "no certificates here").unwrap();
        let errors = serve(&[
            "--tpm-ek-allowlist",
            list.to_str().unwrap(),
            "--tpm-roots",
            roots.to_str().unwrap(),
        ])
        .validate()
        .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("line 1")), "{errors:?}");
    }

    #[test]
    fn trust_on_first_use_is_off_by_default_and_excludes_roots() {
        let (config, _) = serve(&[]).validate().unwrap();
        assert!(!config.settings.tpm_trust_on_first_use);
        let (config, _) = serve(&["--tpm-trust-on-first-use"]).validate().unwrap();
        assert!(config.settings.tpm_trust_on_first_use);
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("allow.txt");
        std::fs::write(&list, format!("{}\n", "ab".repeat(32))).unwrap();
        let errors = serve(&[
            "--tpm-trust-on-first-use",
            "--tpm-ek-allowlist",
            list.to_str().unwrap(),
        ])
        .validate()
        .unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("--tpm-trust-on-first-use")),
            "{errors:?}"
        );
    }

    #[test]
    fn defaults_are_valid() {
        let (config, td) = serve(&[]).validate().unwrap();
        assert_eq!(config.settings.cert_lifetime_secs, 24 * 3600);
        assert_eq!(config.public_url, None);
        assert_eq!(config.listen.port(), 8443);
        assert!(config.database_url.starts_with("sqlite://"));
        assert!(td.is_none());
    }
}
