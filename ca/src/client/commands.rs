//! The operator commands: each resolves where to connect, makes its calls, and prints the
//! answer as a table or as the server's JSON.

use super::args::{
    CrlCommand, DecisionsArgs, DeviceCommand, DeviceListArgs, LoginArgs, Output, Remote,
    TokenCommand, TokenCreateArgs,
};
use super::output::{or_dash, pairs, time, Table};
use super::{typed, Client, ClientConfig, ClientError};
use serde_json::{json, Value};
use std::path::PathBuf;
use vouch_proto::device::{AttestationHistory, DeviceList, DeviceRecord, RevokeResponse};
use vouch_proto::enroll::CreateTokenResponse;

/// What an operator command asks for.
pub enum Request {
    /// `vouch login`.
    Login(LoginArgs),
    /// `vouch token …`.
    Token(TokenCommand),
    /// `vouch device …`.
    Device(DeviceCommand),
    /// `vouch policy status`.
    PolicyStatus(Remote),
    /// `vouch policy decisions`.
    PolicyDecisions(DecisionsArgs),
    /// `vouch policy reload`.
    PolicyReload(Remote),
    /// `vouch crl …`.
    Crl(CrlCommand),
}

/// Runs an operator command and prints its answer.
pub fn run(request: Request) -> Result<(), ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Other(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(dispatch(request))
}

async fn dispatch(request: Request) -> Result<(), ClientError> {
    match request {
        Request::Login(args) => login(&args.remote).await,
        Request::Token(TokenCommand::Create(args)) => token_create(&args).await,
        Request::Device(DeviceCommand::List(args)) => device_list(&args).await,
        Request::Device(DeviceCommand::Import(args)) => super::import::import(&args).await,
        Request::Device(DeviceCommand::Show(args)) => {
            let client = connect(&args.remote)?;
            let answer = client
                .get_json(&device_path(&args.device_id, "")?, &[])
                .await?;
            print(args.remote.output, &answer, || {
                Ok(device_lines(&typed(&answer)?))
            })
        }
        Request::Device(DeviceCommand::Revoke(args)) => {
            let client = connect(&args.remote)?;
            let path = device_path(&args.device_id, "/revoke")?;
            let answer = client
                .post_json(&path, &json!({ "reason": args.reason }))
                .await?;
            print(args.remote.output, &answer, || {
                let r: RevokeResponse = typed(&answer)?;
                Ok(format!(
                    "revoked {}: serials {} are on CRL number {}\n",
                    r.device_id,
                    r.revoked_serials.join(", "),
                    r.crl_number
                ))
            })
        }
        Request::Device(DeviceCommand::Release(args)) => {
            let client = connect(&args.remote)?;
            let path = device_path(&args.device_id, "/release")?;
            let answer = client
                .post_json(&path, &json!({ "reason": args.reason }))
                .await?;
            print(args.remote.output, &answer, || {
                let d: DeviceRecord = typed(&answer)?;
                Ok(format!(
                    "released {}: attestation {}\n",
                    d.id,
                    d.attestation.as_str()
                ))
            })
        }
        Request::Device(DeviceCommand::History(args)) => {
            let client = connect(&args.remote)?;
            let path = device_path(&args.device_id, "/attestations")?;
            let answer = client.get_json(&path, &[]).await?;
            print(args.remote.output, &answer, || {
                let h: AttestationHistory = typed(&answer)?;
                let mut table = Table::new(vec!["AT", "OUTCOME", "REFERENCE SET", "REASON"]);
                for a in h.attestations {
                    table.row(vec![
                        time(a.at),
                        a.outcome,
                        or_dash(a.reference_set),
                        a.reason,
                    ]);
                }
                Ok(format!(
                    "{}: attestation {}\n{}",
                    h.device.id,
                    h.device.attestation.as_str(),
                    table.render()
                ))
            })
        }
        Request::PolicyStatus(remote) => {
            let client = connect(&remote)?;
            let answer = client.get_json("/v1/policy/status", &[]).await?;
            print(remote.output, &answer, || Ok(policy_status_lines(&answer)))
        }
        Request::PolicyDecisions(args) => policy_decisions(&args).await,
        Request::PolicyReload(remote) => {
            let client = connect(&remote)?;
            let answer = client.post_json("/v1/policy/reload", &json!({})).await?;
            print(remote.output, &answer, || {
                let mut text = String::new();
                for set in ["active", "shadow"] {
                    let outcome = answer.get(set).unwrap_or(&Value::Null);
                    let line = match at(outcome, "/outcome").as_str() {
                        Some("loaded") => format!(
                            "loaded {} (was {})",
                            str_of(at(outcome, "/version")),
                            str_of(at(outcome, "/previous"))
                        ),
                        Some("unchanged") => {
                            format!("unchanged: {}", str_of(at(outcome, "/version")))
                        }
                        Some("not_configured") => "not configured".to_owned(),
                        other => other.unwrap_or("?").to_owned(),
                    };
                    text.push_str(&format!("{set}: {line}\n"));
                }
                Ok(text)
            })
        }
        Request::Crl(CrlCommand::Show(args)) => crl_show(&args.remote).await,
    }
}

/// Resolves flags and environment over the config file into a client.
pub(super) fn connect(remote: &Remote) -> Result<Client, ClientError> {
    let (file, _) = config_file(remote)?;
    Client::new(
        remote.server.as_deref().or(file.server.as_deref()),
        remote.ca_file.as_deref().or(file.ca_file.as_deref()),
        remote.token.as_deref().or(file.token.as_deref()),
    )
}

/// The config file named by `--config`/`VOUCH_CONFIG`, else the default one, and its path.
fn config_file(remote: &Remote) -> Result<(ClientConfig, Option<PathBuf>), ClientError> {
    let path = remote.config.clone().or_else(ClientConfig::default_path);
    match &path {
        Some(p) => Ok((ClientConfig::read(p)?, path)),
        None => Ok((ClientConfig::default(), None)),
    }
}

/// Prints the answer as JSON, or as `human()` renders it.
fn print(
    output: Output,
    answer: &Value,
    human: impl FnOnce() -> Result<String, ClientError>,
) -> Result<(), ClientError> {
    match output {
        Output::Json => {
            let text = serde_json::to_string_pretty(answer)
                .map_err(|e| ClientError::Other(e.to_string()))?;
            println!("{text}");
        }
        Output::Table => print!("{}", human()?),
    }
    Ok(())
}

/// `/v1/devices/{id}{suffix}`, with the id checked first (it becomes part of a URL).
fn device_path(id: &str, suffix: &str) -> Result<String, ClientError> {
    if vouch_proto::ids::DeviceId::parse(id).is_none() {
        return Err(ClientError::Usage(vec![format!(
            "device id `{id}` must be 32 lowercase hex digits"
        )]));
    }
    Ok(format!("/v1/devices/{id}{suffix}"))
}

/// The value at a JSON pointer (`/a/b`), or null.
fn at<'v>(value: &'v Value, pointer: &str) -> &'v Value {
    value.pointer(pointer).unwrap_or(&Value::Null)
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_owned()
}

/// Checks the settings against the server (the policy status needs a valid operator token)
/// and saves them to the config file, owner-only.
async fn login(remote: &Remote) -> Result<(), ClientError> {
    let (mut file, path) = config_file(remote)?;
    let path = path.ok_or_else(|| {
        ClientError::Usage(vec![
            "no config file: give --config FILE (neither XDG_CONFIG_HOME nor HOME is set)"
                .to_owned(),
        ])
    })?;
    if let Some(server) = &remote.server {
        file.server = Some(server.clone());
    }
    if let Some(ca) = &remote.ca_file {
        // Stored absolute: later commands run from other directories.
        let absolute = std::path::absolute(ca)
            .map_err(|e| ClientError::Usage(vec![format!("--ca-file `{}`: {e}", ca.display())]))?;
        file.ca_file = Some(absolute);
    }
    if let Some(token) = &remote.token {
        file.token = Some(token.clone());
    }
    let client = Client::new(
        file.server.as_deref(),
        file.ca_file.as_deref(),
        file.token.as_deref(),
    )?;
    if file.token.is_none() {
        return Err(ClientError::Usage(vec![
            "no operator token: give --token or set VOUCH_TOKEN (`vouch admin-token` mints one)"
                .to_owned(),
        ]));
    }
    client.get_json("/v1/policy/status", &[]).await?;
    file.write(&path)?;
    println!(
        "logged in to {}; settings saved to {} (mode 0600)",
        client.base(),
        path.display()
    );
    Ok(())
}

async fn token_create(args: &TokenCreateArgs) -> Result<(), ClientError> {
    let mut errors = Vec::new();
    let mut labels = serde_json::Map::new();
    for label in &args.labels {
        match label.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                labels.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            _ => errors.push(format!("--label `{label}` must be KEY=VALUE")),
        }
    }
    let ttl = match &args.ttl {
        Some(t) => crate::config::parse_seconds("ttl", t)
            .map_err(|e| errors.push(e))
            .ok(),
        None => None,
    };
    if !errors.is_empty() {
        return Err(ClientError::Usage(errors));
    }
    let mut body = serde_json::Map::new();
    body.insert("zone".into(), json!(args.zone));
    body.insert("labels".into(), Value::Object(labels));
    if let Some(ttl) = ttl {
        body.insert("ttl_seconds".into(), json!(ttl));
    }
    if let Some(class) = &args.device_class {
        body.insert("device_class".into(), json!(class));
    }
    if let Some(device) = &args.reenroll {
        body.insert("reenroll_device".into(), json!(device));
    }
    let body = Value::Object(body);
    let client = connect(&args.remote)?;
    let answer = client.post_json("/v1/bootstrap-tokens", &body).await?;
    print(args.remote.output, &answer, || {
        let t: CreateTokenResponse = typed(&answer)?;
        Ok(pairs(&[
            ("token", t.token),
            ("token id", t.token_id),
            ("expires", t.expires_at),
            ("CA sha256", t.ca_sha256),
        ]))
    })
}

/// Most pages `device list` follows (at 1000 devices a page: ten million devices).
const MAX_PAGES: usize = 10_000;

async fn device_list(args: &DeviceListArgs) -> Result<(), ClientError> {
    let client = connect(&args.remote)?;
    let mut devices = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut query = vec![("limit", "1000".to_owned())];
        if let Some(zone) = &args.zone {
            query.push(("zone", zone.clone()));
        }
        if let Some(status) = &args.status {
            query.push(("status", status.clone()));
        }
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let page: DeviceList = typed(&client.get_json("/v1/devices", &query).await?)?;
        devices.extend(page.devices);
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    let all = DeviceList {
        devices,
        next_cursor: None,
    };
    let answer = serde_json::to_value(&all).map_err(|e| ClientError::Other(e.to_string()))?;
    print(args.remote.output, &answer, || {
        let mut table = Table::new(vec![
            "ID",
            "ZONE",
            "CLASS",
            "STATUS",
            "ATTESTATION",
            "CERTIFICATE EXPIRES",
        ]);
        for d in &all.devices {
            table.row(vec![
                d.id.clone(),
                d.zone.clone(),
                or_dash(d.device_class.clone()),
                d.status.as_str().to_owned(),
                d.attestation.as_str().to_owned(),
                time(d.current_not_after),
            ]);
        }
        Ok(format!("{}{} devices\n", table.render(), all.devices.len()))
    })
}

fn device_lines(d: &DeviceRecord) -> String {
    let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs(&[
        ("id", d.id.clone()),
        ("spiffe id", d.spiffe_id.clone()),
        ("zone", d.zone.clone()),
        ("class", or_dash(d.device_class.clone())),
        (
            "labels",
            if labels.is_empty() {
                "-".into()
            } else {
                labels.join(", ")
            },
        ),
        ("status", d.status.as_str().to_owned()),
        ("revoked", or_dash(d.revoked_at.map(time))),
        ("revocation reason", or_dash(d.revocation_reason.clone())),
        ("attestation", d.attestation.as_str().to_owned()),
        ("last attested", or_dash(d.last_attested.map(time))),
        ("attestation reason", or_dash(d.attestation_reason.clone())),
        ("EK sha256", or_dash(d.ek_sha256.clone())),
        ("certificate serial", d.current_serial.clone()),
        ("certificate expires", time(d.current_not_after)),
        ("enrolled", time(d.created_at)),
        ("updated", time(d.updated_at)),
    ])
}

fn policy_status_lines(answer: &Value) -> String {
    let mut items = Vec::new();
    for set in ["active", "shadow"] {
        let s = answer.get(set).unwrap_or(&Value::Null);
        if s.is_null() {
            items.push((set, "not configured".to_owned()));
            continue;
        }
        let version = at(s, "/version/id").as_str().unwrap_or("none");
        let loaded = at(s, "/loaded_at")
            .as_i64()
            .map(time)
            .unwrap_or_else(|| "-".into());
        items.push((
            set,
            format!(
                "{version} ({} policies, loaded {loaded}, from {})",
                at(s, "/policies").as_u64().unwrap_or(0),
                at(s, "/dir").as_str().unwrap_or("-")
            ),
        ));
        if let Some(problems) = at(s, "/last_error/problems").as_array() {
            let first = problems.first().and_then(Value::as_str).unwrap_or("");
            items.push((
                "  last failed load",
                format!("{} problems; first: {first}", problems.len()),
            ));
        }
    }
    pairs(&items)
}

async fn policy_decisions(args: &DecisionsArgs) -> Result<(), ClientError> {
    if !(1..=1000).contains(&args.limit) {
        return Err(ClientError::Usage(vec![
            "--limit must be between 1 and 1000".to_owned(),
        ]));
    }
    let client = connect(&args.remote)?;
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(p) = &args.principal {
        query.push(("principal", p.clone()));
    }
    let answer = client.get_json("/v1/policy/decisions", &query).await?;
    print(args.remote.output, &answer, || {
        let mut table = Table::new(vec![
            "AT",
            "DECISION",
            "PRINCIPAL",
            "ACTION",
            "RESOURCE",
            "POLICIES",
            "VERSION",
            "ORIGIN",
        ]);
        for d in at(&answer, "/decisions").as_array().into_iter().flatten() {
            let policies: Vec<String> = at(d, "/policies")
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect();
            table.row(vec![
                at(d, "/at").as_i64().map(time).unwrap_or_default(),
                str_of(at(d, "/decision")),
                str_of(at(d, "/principal")),
                str_of(at(d, "/action")),
                str_of(at(d, "/resource")),
                if policies.is_empty() {
                    "-".into()
                } else {
                    policies.join(",")
                },
                str_of(at(d, "/policy_version")),
                str_of(at(d, "/origin")),
            ]);
        }
        Ok(table.render())
    })
}

/// Fetches the CRL (DER) and shows it; as JSON: number, issuer, times and revoked entries.
async fn crl_show(remote: &Remote) -> Result<(), ClientError> {
    use x509_parser::prelude::FromDer;
    let client = connect(remote)?;
    let der = client.get_bytes("/v1/crl").await?;
    let (rest, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
        .map_err(|e| ClientError::Other(format!("the server's CRL does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(ClientError::Other(
            "the server's CRL has bytes after its end".to_owned(),
        ));
    }
    let revoked: Vec<Value> = crl
        .iter_revoked_certificates()
        .map(|r| {
            json!({
                // As the registry writes it; a serial not of Vouch's 128 bits as its DER hex.
                "serial": vouch_proto::ids::Serial::from_der_bytes(r.raw_serial())
                    .map_or_else(|| hex::encode(r.raw_serial()), |s| s.to_hex()),
                "revoked_at": r.revocation_date.timestamp(),
                "reason": r.reason_code().map(|(_, c)| c.to_string()),
            })
        })
        .collect();
    let answer = json!({
        "number": crl.crl_number().map(|n| n.to_string()),
        "issuer": crl.issuer().to_string(),
        "this_update": crl.last_update().timestamp(),
        "next_update": crl.next_update().map(|t| t.timestamp()),
        "revoked": revoked,
    });
    print(remote.output, &answer, || {
        let mut text = pairs(&[
            ("CRL number", str_of(at(&answer, "/number"))),
            ("issuer", str_of(at(&answer, "/issuer"))),
            ("this update", time(crl.last_update().timestamp())),
            (
                "next update",
                or_dash(crl.next_update().map(|t| time(t.timestamp()))),
            ),
            ("revoked", revoked.len().to_string()),
        ]);
        let mut table = Table::new(vec!["SERIAL", "REVOKED AT", "REASON"]);
        for r in &revoked {
            table.row(vec![
                str_of(at(r, "/serial")),
                at(r, "/revoked_at").as_i64().map(time).unwrap_or_default(),
                str_of(at(r, "/reason")),
            ]);
        }
        if !revoked.is_empty() {
            text.push_str(&table.render());
        }
        Ok(text)
    })
}
