//! `vouch serve --config vouch.toml`: the server's options from a TOML file.
//!
//! The file's keys are the options' names with `_` for `-` (`data_dir`, `listen`,
//! `cert_lifetime`, `hostnames` as a list, ...; `deploy/vouch.toml` shows every one). A flag
//! or a `VOUCH_*` variable overrides the file. Every problem in the file (a key that is no
//! option, a value of the wrong type, TOML that does not parse) is reported, all at once,
//! before the options themselves are checked.

use crate::config::ServeArgs;
use clap::parser::ValueSource;
use clap::ArgMatches;
use std::path::Path;

/// Largest configuration file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Sets the options the file gives on `args`, except those a flag or an environment variable
/// gave (`matches` says which). Returns every problem with the file; the keys without one
/// are set all the same.
pub fn apply(args: &mut ServeArgs, matches: &ArgMatches, path: &Path) -> Result<(), Vec<String>> {
    let shown = path.display();
    let text = read(path).map_err(|e| vec![format!("{shown}: {e}")])?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| vec![format!("{shown}: {e}")])?;
    let base = serde_json::to_value(&*args).map_err(|e| vec![e.to_string()])?;
    let serde_json::Value::Object(mut merged) = base.clone() else {
        return Err(vec!["the options are not an object".to_owned()]);
    };
    let mut problems = Vec::new();
    for (key, value) in table {
        if key == "config" || !merged.contains_key(&key) {
            problems.push(format!(
                "{shown}: unknown key `{key}` (keys are the options of `vouch serve --help` with _ for -)"
            ));
            continue;
        }
        if matches!(
            matches.value_source(&key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let value = match serde_json::to_value(&value) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{shown}: `{key}`: {e}"));
                continue;
            }
        };
        // Each key on its own, so that every wrongly typed one is named.
        let mut probe = merged.clone();
        probe.insert(key.clone(), value.clone());
        match serde_json::from_value::<ServeArgs>(serde_json::Value::Object(probe)) {
            Ok(_) => {
                merged.insert(key, value);
            }
            Err(e) => problems.push(format!("{shown}: `{key}`: {e}")),
        }
    }
    // The keys that are right are applied even when others are wrong, so that checking the
    // options then finds the mistakes in their values too.
    let config = args.config.take();
    match serde_json::from_value(serde_json::Value::Object(merged)) {
        Ok(merged) => *args = merged,
        Err(e) => problems.push(format!("{shown}: {e}")),
    }
    args.config = config;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn read(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok(text)
}

/// The `serve` options after the file, and every problem with the file and the options.
pub fn resolve(
    mut args: ServeArgs,
    matches: Option<&ArgMatches>,
) -> Result<
    (
        ServeArgs,
        crate::app::ServeConfig,
        Option<crate::ids::TrustDomain>,
    ),
    Vec<String>,
> {
    let mut problems = Vec::new();
    if let (Some(path), Some(matches)) = (args.config.clone(), matches) {
        if let Err(mut p) = apply(&mut args, matches, &path) {
            problems.append(&mut p);
        }
    }
    match args.validate() {
        Ok((config, td)) if problems.is_empty() => Ok((args, config, td)),
        Ok(_) => Err(problems),
        Err(mut p) => {
            problems.append(&mut p);
            Err(problems)
        }
    }
}
