//! The operator's side of the `vouch` command line: commands that talk to a running server
//! over its API (`vouch login`, `token`, `device`, `policy status|decisions|reload`, `crl`).
//!
//! Where to connect comes from flags, then `VOUCH_*` environment variables, then the config
//! file `vouch login` writes (`$XDG_CONFIG_HOME/vouch/config.toml`, else
//! `~/.config/vouch/config.toml`). Answers print as human tables, or with `--output json` as
//! the server's JSON, unchanged, for scripts. Problems print as `error: <code>: <detail>`.
//!
//! Exit codes ([`ClientError::exit_code`]): 0 done; 1 the server refused (its problem `code`
//! printed); 64 usage or configuration; 69 the server cannot be reached or is not ready;
//! 77 the token was refused (401) or its role may not do this (403).

pub mod args;
pub mod commands;
mod import;
mod output;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vouch_proto::problem::Problem;

pub use args::Remote;

/// Exit code when the server refused the request with a problem.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code for a usage or configuration error (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code when the server cannot be reached or is not ready (sysexits EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code when the operator token is refused or lacks the role (sysexits EX_NOPERM).
pub const EXIT_NOPERM: u8 = 77;

/// Largest answer read from the server (a page of decisions is bounded well below it).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Why an operator command failed.
#[derive(Debug)]
pub enum ClientError {
    /// Bad flags or configuration.
    Usage(Vec<String>),
    /// The server could not be reached, or answered 503.
    Unavailable(String),
    /// The server answered with a problem document (or an unreadable error).
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem `code`.
        code: String,
        /// The problem `detail`.
        detail: String,
    },
    /// Something else: an answer that does not parse, a file that cannot be written.
    Other(String),
}

impl ClientError {
    /// The process exit code for this failure (see the module documentation).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::Unavailable(_) => EXIT_UNAVAILABLE,
            Self::Refused {
                status: 401 | 403, ..
            } => EXIT_NOPERM,
            Self::Refused { status: 503, .. } => EXIT_UNAVAILABLE,
            Self::Refused { .. } | Self::Other(_) => EXIT_REFUSED,
        }
    }

    /// The lines to print on stderr.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Usage(errors) => errors.clone(),
            Self::Unavailable(e) => vec![format!("the server cannot be reached: {e}")],
            Self::Refused {
                status,
                code,
                detail,
            } => vec![format!("error: {code}: {detail} (HTTP {status})")],
            Self::Other(e) => vec![e.clone()],
        }
    }
}

/// The config file `vouch login` writes: where the server is, the CA to trust for it, and
/// the operator token (so the file is written owner-only, 0600).
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Base URL, `https://host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// PEM file of the CA certificates that verify the server (its data directory's
    /// `root.pem`, or the trust bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Operator token (`vouch admin-token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 64 << 10;

impl ClientConfig {
    /// The default path: `$XDG_CONFIG_HOME/vouch/config.toml`, else
    /// `$HOME/.config/vouch/config.toml`.
    pub fn default_path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".config"))
            })?;
        Some(base.join("vouch").join("config.toml"))
    }

    /// Reads `path`; a missing file is an empty configuration.
    pub fn read(path: &Path) -> Result<Self, ClientError> {
        use std::io::Read;
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(usage(format!("config file `{}`: {e}", path.display()))),
        };
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| usage(format!("config file `{}`: {e}", path.display())))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(usage(format!(
                "config file `{}` is larger than {MAX_CONFIG_BYTES} bytes",
                path.display()
            )));
        }
        toml::from_str(&text).map_err(|e| usage(format!("config file `{}`: {e}", path.display())))
    }

    /// Writes the file owner-only (0600), creating its directory (0700) if needed; the
    /// token in it is a credential.
    pub fn write(&self, path: &Path) -> Result<(), ClientError> {
        let text = toml::to_string(self).map_err(|e| ClientError::Other(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::datadir::create_private_dir(dir)
                .map_err(|e| ClientError::Other(e.to_string()))?;
        }
        crate::datadir::replace_secret(path, text.as_bytes())
            .map_err(|e| ClientError::Other(e.to_string()))
    }
}

/// Creates `path` new, owner-only (0600 on Unix): for files that hold tokens.
pub(crate) fn new_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn usage(e: String) -> ClientError {
    ClientError::Usage(vec![e])
}

/// A connection to a server: its base URL, a client that trusts only the given CA, and the
/// operator token.
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    /// Builds a client from the resolved settings, checking every one and reporting every
    /// problem at once.
    pub fn new(
        server: Option<&str>,
        ca_file: Option<&Path>,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        let mut errors = Vec::new();
        let base = match server {
            None => {
                errors.push(
                    "no server: give --server URL, set VOUCH_SERVER, or run `vouch login`"
                        .to_owned(),
                );
                None
            }
            Some(s) => match reqwest::Url::parse(s) {
                Ok(url) if url.scheme() == "https" && url.host().is_some() => {
                    Some(s.trim_end_matches('/').to_owned())
                }
                Ok(_) => {
                    errors.push(format!(
                        "--server `{s}` must be an https:// URL with a host"
                    ));
                    None
                }
                Err(e) => {
                    errors.push(format!("--server `{s}`: {e}"));
                    None
                }
            },
        };
        let roots = match ca_file {
            None => {
                errors.push("no CA file: give --ca-file FILE (the server's root.pem or trust bundle), set VOUCH_CA_FILE, or run `vouch login`".to_owned());
                Vec::new()
            }
            Some(path) => match read_certificates(path) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(e);
                    Vec::new()
                }
            },
        };
        if token.is_some_and(|t| t.is_empty() || t.len() > 8192 || t.contains(char::is_whitespace))
        {
            errors.push(
                "the operator token is empty, longer than 8192 bytes or has spaces".to_owned(),
            );
        }
        let Some(base) = base.filter(|_| errors.is_empty()) else {
            return Err(ClientError::Usage(errors));
        };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .https_only(true)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("vouch/", env!("CARGO_PKG_VERSION")));
        for cert in roots {
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Other(format!("cannot build the HTTPS client: {e}")))?;
        Ok(Self {
            base,
            http,
            token: token.map(str::to_owned),
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and returns the answer's body when the status is a success.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .query(query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let mut answer = request
            .send()
            .await
            .map_err(|e| ClientError::Unavailable(format!("{}: {}", self.base, error_chain(&e))))?;
        let status = answer.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|e| ClientError::Unavailable(error_chain(&e)))?
        {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(ClientError::Other(format!(
                    "the answer to {path} is larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok((status, bytes));
        }
        Err(match serde_json::from_slice::<Problem>(&bytes) {
            Ok(p) => ClientError::Refused {
                status: status.as_u16(),
                code: p.code,
                detail: p.detail,
            },
            Err(_) => ClientError::Refused {
                status: status.as_u16(),
                code: "unreadable_answer".to_owned(),
                detail: String::from_utf8_lossy(bytes.get(..200).unwrap_or(&bytes)).into_owned(),
            },
        })
    }

    /// `GET path?query`, the answer as JSON.
    pub async fn get_json(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<serde_json::Value, ClientError> {
        let (_, bytes) = self.send(Method::GET, path, query, None).await?;
        decode(path, &bytes)
    }

    /// `GET path`, the answer's bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        Ok(self.send(Method::GET, path, &[], None).await?.1)
    }

    /// `POST path` with a JSON body, the answer as JSON.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let (_, bytes) = self.send(Method::POST, path, &[], Some(body)).await?;
        decode(path, &bytes)
    }
}

/// Decodes an answer into JSON.
fn decode(path: &str, bytes: &[u8]) -> Result<serde_json::Value, ClientError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ClientError::Other(format!("the answer to {path} is not JSON: {e}")))
}

/// Reads a typed answer out of a JSON value (the server's wire types, from `vouch-proto`).
pub fn typed<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ClientError> {
    T::deserialize(value)
        .map_err(|e| ClientError::Other(format!("the server's answer does not parse: {e}")))
}

/// The certificates of a PEM file, for the client's trust.
fn read_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("CA file `{}`: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("CA file `{}`: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "CA file `{}` holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// An error and its causes, on one line (reqwest hides the TLS reason in its sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
