//! `vouch device import FILE.csv`: bootstrap tokens for a fleet in one go.
//!
//! The file has a header row naming its columns: `zone` (required), and any of `name`,
//! `device_class`, `labels` (`key=value` pairs separated by `;`) and `ttl` (`24h`, `7d`).
//! A `name` becomes the label `name`. Every row is checked here first, then sent as its own
//! `POST /v1/bootstrap-tokens` (several at once over one connection). A bad row, found here
//! or refused by the server, is reported with its line number and the rest go on. Each
//! token is appended to the output CSV (owner-only, never overwritten) as soon as it is
//! minted, so an interrupted import loses no token it made.

use super::args::ImportArgs;
use super::{typed, ClientError};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use vouch_proto::enroll::CreateTokenResponse;

/// Largest import file.
const MAX_FILE_BYTES: u64 = 256 << 20;
/// Most rows in one import.
const MAX_ROWS: usize = 1_000_000;
/// Requests in flight at once.
const IN_FLIGHT: usize = 16;
/// Bad rows printed one by one; beyond, only counted.
const MAX_REPORTED: usize = 1000;

/// One row, checked.
struct Row {
    line: u64,
    name: String,
    zone: String,
    body: Value,
}

/// A bad row: its line number and why.
type BadRow = (u64, String);

/// Reads and checks the file; returns the good rows and the bad ones.
fn read_rows(path: &std::path::Path) -> Result<(Vec<Row>, Vec<BadRow>), ClientError> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| ClientError::Usage(vec![format!("`{}`: {e}", path.display())]))?;
    let mut text = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| ClientError::Usage(vec![format!("`{}`: {e}", path.display())]))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ClientError::Usage(vec![format!(
            "`{}` is larger than {MAX_FILE_BYTES} bytes",
            path.display()
        )]));
    }
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_slice());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| ClientError::Usage(vec![format!("`{}`: header: {e}", path.display())]))?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut problems = Vec::new();
    for (i, column) in header.iter().enumerate() {
        if !["zone", "name", "device_class", "labels", "ttl"].contains(&column.as_str()) {
            problems.push(format!(
                "line 1: unknown column `{column}` (columns: zone, name, device_class, labels, ttl)"
            ));
        }
        if header.iter().take(i).any(|c| c == column) {
            problems.push(format!("line 1: column `{column}` appears twice"));
        }
    }
    if !header.iter().any(|c| c == "zone") {
        problems.push("line 1: no `zone` column".to_owned());
    }
    if !problems.is_empty() {
        return Err(ClientError::Usage(problems));
    }
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for record in reader.records() {
        if good.len() + bad.len() >= MAX_ROWS {
            return Err(ClientError::Usage(vec![format!(
                "`{}` has more than {MAX_ROWS} rows: split it",
                path.display()
            )]));
        }
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                bad.push((line, format!("unreadable: {e}")));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != header.len() {
            bad.push((
                line,
                format!("{} fields, the header has {}", record.len(), header.len()),
            ));
            continue;
        }
        let field = |name: &str| -> &str {
            header
                .iter()
                .position(|c| c == name)
                .and_then(|i| record.get(i))
                .unwrap_or("")
        };
        match check_row(
            field("zone"),
            field("name"),
            field("device_class"),
            field("labels"),
            field("ttl"),
        ) {
            Ok(body) => good.push(Row {
                line,
                name: field("name").to_owned(),
                zone: field("zone").to_owned(),
                body,
            }),
            Err(why) => bad.push((line, why)),
        }
    }
    Ok((good, bad))
}

/// A zone, class or label key: named as the server names zones (checked here for a clear
/// line number).
fn is_name(s: &str) -> bool {
    vouch_proto::ids::Zone::parse(s).is_ok()
}

fn check_row(
    zone: &str,
    name: &str,
    class: &str,
    labels: &str,
    ttl: &str,
) -> Result<Value, String> {
    let mut problems = Vec::new();
    if !is_name(zone) {
        problems.push(format!(
            "zone `{zone}` must be 1 to 63 of a-z 0-9 . _ - starting with a letter or digit"
        ));
    }
    if !class.is_empty() && !is_name(class) {
        problems.push(format!("device_class `{class}` is not a valid name"));
    }
    let mut map = BTreeMap::new();
    if !name.is_empty() {
        map.insert("name".to_owned(), name.to_owned());
    }
    for pair in labels.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if is_name(k.trim()) => {
                if map
                    .insert(k.trim().to_owned(), v.trim().to_owned())
                    .is_some()
                {
                    problems.push(format!("label `{}` given twice", k.trim()));
                }
            }
            _ => problems.push(format!("label `{pair}` must be key=value with a valid key")),
        }
    }
    let ttl = if ttl.is_empty() {
        None
    } else {
        match crate::config::parse_seconds("ttl", ttl) {
            Ok(s) => Some(s),
            Err(_) => {
                problems.push(format!("ttl `{ttl}` is not a duration like 24h or 7d"));
                None
            }
        }
    };
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let mut body = serde_json::Map::new();
    body.insert("zone".into(), json!(zone));
    body.insert("labels".into(), json!(map));
    if !class.is_empty() {
        body.insert("device_class".into(), json!(class));
    }
    if let Some(t) = ttl {
        body.insert("ttl_seconds".into(), json!(t));
    }
    Ok(Value::Object(body))
}

/// Runs the import; exits 1 (after landing the good rows) if any row was bad.
pub async fn import(args: &ImportArgs) -> Result<(), ClientError> {
    let (rows, mut bad) = read_rows(&args.file)?;
    let client = super::commands::connect(&args.remote)?;
    let out = super::new_private_file(&args.out)
        .map_err(|e| ClientError::Usage(vec![format!("--out `{}`: {e}", args.out.display())]))?;
    let mut out = csv::Writer::from_writer(std::io::BufWriter::new(out));
    out.write_record(["line", "name", "zone", "token_id", "expires_at", "token"])
        .map_err(|e| ClientError::Other(e.to_string()))?;

    let total = rows.len() as u64 + bad.len() as u64;
    let progress = indicatif::ProgressBar::new(total);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} importing [{bar:40}] {pos}/{len} rows ({per_sec}, {eta} left) {msg}",
        )
        .map_err(|e| ClientError::Other(e.to_string()))?
        .progress_chars("=> "),
    );
    progress.inc(bad.len() as u64);
    let started = std::time::Instant::now();
    let client = &client;
    let mut results = stream::iter(rows)
        .map(|row| async move {
            let answer = client.post_json("/v1/bootstrap-tokens", &row.body).await;
            (row, answer)
        })
        .buffer_unordered(IN_FLIGHT);
    let mut landed = 0u64;
    let mut unreachable = None;
    while let Some((row, answer)) = results.next().await {
        progress.inc(1);
        match answer.and_then(|a| typed::<CreateTokenResponse>(&a)) {
            Ok(t) => {
                out.write_record([
                    row.line.to_string(),
                    row.name,
                    row.zone,
                    t.token_id,
                    t.expires_at,
                    t.token,
                ])
                .and_then(|()| out.flush().map_err(csv::Error::from))
                .map_err(|e| ClientError::Other(format!("--out `{}`: {e}", args.out.display())))?;
                landed += 1;
            }
            Err(e @ (ClientError::Unavailable(_) | ClientError::Usage(_))) => {
                unreachable.get_or_insert(e);
                bad.push((
                    row.line,
                    "not sent: the server cannot be reached".to_owned(),
                ));
            }
            Err(
                e @ ClientError::Refused {
                    status: 401 | 403, ..
                },
            ) => {
                // The token does not allow this: no row can land.
                progress.finish_and_clear();
                return Err(e);
            }
            Err(e) => bad.push((row.line, e.lines().join("; "))),
        }
    }
    progress.finish_and_clear();
    bad.sort();
    for (line, why) in bad.iter().take(MAX_REPORTED) {
        eprintln!("line {line}: {why}");
    }
    if bad.len() > MAX_REPORTED {
        eprintln!("... and {} more bad rows", bad.len() - MAX_REPORTED);
    }
    println!(
        "{landed} tokens minted into {}, {} bad rows, of {total} rows in {:.1} s",
        args.out.display(),
        bad.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(e) = unreachable {
        return Err(e);
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(ClientError::Other(format!(
            "{} rows were not imported (see the lines above)",
            bad.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_checked_with_every_problem_named() {
        assert!(check_row("sensors", "s-1", "sensor", "line=a; site=4", "24h").is_ok());
        let why = check_row("Sensors!", "", "", "line", "soon").unwrap_err();
        assert!(
            why.contains("zone") && why.contains("label `line`") && why.contains("ttl"),
            "{why}"
        );
        let body = check_row("edge", "gw-1", "", "", "").unwrap();
        assert_eq!(body["labels"]["name"], "gw-1");
        assert!(body.get("device_class").is_none() && body.get("ttl_seconds").is_none());
    }
}
