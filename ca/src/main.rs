//! `vouch`: the server and operator command line. See `vouch --help`.

use std::process::ExitCode;
use std::sync::Arc;
use vouch_ca::app;
use vouch_ca::client::commands::{self, Request};
use vouch_ca::clock::{Clock, SystemClock};
use vouch_ca::config::{self, CaCommand, Cli, Command, EXIT_USAGE};
use vouch_ca::datadir::DataDir;
use vouch_ca::ids::TrustDomain;
use vouch_ca::pki::authority::CaFiles;

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // `serve` sets up its logs once its options are known (`--log-format`).
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging(false);
    }
    let result = match cli.command {
        Command::Serve(args) => serve(*args, matches.subcommand_matches("serve")),
        Command::Config(config::ConfigCommand::Check(args)) => config_check(
            *args,
            matches
                .subcommand_matches("config")
                .and_then(|m| m.subcommand_matches("check")),
        ),
        Command::Ca(CaCommand::Init(args)) => ca_init(&args),
        Command::Ca(CaCommand::Import(args)) => ca_import(&args),
        Command::AdminToken(args) => admin_token(&args),
        Command::Policy(config::PolicyCommand::Check { dir }) => policy_check(&dir),
        Command::Policy(config::PolicyCommand::Test { dir }) => policy_test(&dir),
        Command::Policy(config::PolicyCommand::Status(args)) => {
            remote(Request::PolicyStatus(args.remote))
        }
        Command::Policy(config::PolicyCommand::Decisions(args)) => {
            remote(Request::PolicyDecisions(args))
        }
        Command::Policy(config::PolicyCommand::Reload(args)) => {
            remote(Request::PolicyReload(args.remote))
        }
        Command::Backup(args) => backup(&args),
        Command::Restore(args) => restore(&args),
        Command::Login(args) => remote(Request::Login(args)),
        Command::Token(command) => remote(Request::Token(command)),
        Command::Device(command) => remote(Request::Device(command)),
        Command::Crl(command) => remote(Request::Crl(command)),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "vouch", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(errors)) => {
            for e in errors {
                eprintln!("vouch: {e}");
            }
            ExitCode::from(EXIT_USAGE as u8)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("vouch: {e}");
            ExitCode::FAILURE
        }
        Err(Failure::Client(e)) => {
            for line in e.lines() {
                eprintln!("vouch: {line}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Log lines on stderr, filtered by `RUST_LOG` (default `info`): human, or one JSON object
/// per line with the fields of the spans around it (an API request's id).
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .flatten_event(true)
            .init();
    } else {
        builder.init();
    }
}

fn restore(args: &config::RestoreArgs) -> Result<(), Failure> {
    let dir = DataDir::new(&args.data_dir);
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?;
    let report = runtime
        .block_on(vouch_ca::backup::restore(&args.from, &dir, now_ms))
        .map_err(Failure::Runtime)?;
    println!(
        "restored {} files{} into {}; start `vouch serve --data-dir {}`",
        report.files.len(),
        if report.database {
            " and the SQLite registry"
        } else {
            ""
        },
        dir.path().display(),
        dir.path().display()
    );
    Ok(())
}

fn backup(args: &config::BackupArgs) -> Result<(), Failure> {
    let dir = DataDir::new(&args.data_dir);
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| app::default_database_url(&dir));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?;
    let report = runtime
        .block_on(vouch_ca::backup::backup(&dir, &url, &args.out))
        .map_err(Failure::Runtime)?;
    println!(
        "backed up {} files{} into {} (owner-only: it holds the CA's keys)",
        report.files.len(),
        if report.database {
            " and a consistent copy of the SQLite registry"
        } else {
            ""
        },
        args.out.display()
    );
    if !report.database {
        eprintln!("note: the registry is not SQLite: back it up with pg_dump (see the README)");
    }
    Ok(())
}

/// Runs an operator command against a server.
fn remote(request: Request) -> Result<(), Failure> {
    commands::run(request).map_err(Failure::Client)
}

enum Failure {
    Usage(Vec<String>),
    Runtime(String),
    Client(vouch_ca::client::ClientError),
}

impl From<app::AppError> for Failure {
    fn from(e: app::AppError) -> Self {
        Self::Runtime(e.to_string())
    }
}

fn trust_domain(value: &str) -> Result<TrustDomain, Failure> {
    TrustDomain::parse(value).map_err(|e| Failure::Usage(vec![format!("--trust-domain: {e}")]))
}

fn ca_init(args: &config::CaInitArgs) -> Result<(), Failure> {
    let td = trust_domain(&args.trust_domain)?;
    let dir = DataDir::new(&args.data_dir);
    match &args.offline_root {
        Some(out) => {
            app::init_ca_with_offline_root(&dir, &td, SystemClock.now(), out)?;
            println!(
                "created CA for trust domain `{td}` in {}; the root key is in {} only: \
                 move it to offline storage",
                dir.path().display(),
                out.display()
            );
        }
        None => {
            app::init_ca(&dir, &td, SystemClock.now())?;
            println!(
                "created CA for trust domain `{td}` in {}",
                dir.path().display()
            );
            eprintln!(
                "note: the root key is online in {}; `vouch ca init --offline-root FILE` \
                 keeps it out of the data directory",
                dir.file(vouch_ca::datadir::DataFile::RootKey).display()
            );
        }
    }
    Ok(())
}

fn read(path: &std::path::Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::Runtime(format!("`{}`: {e}", path.display())))
}

fn ca_import(args: &config::CaImportArgs) -> Result<(), Failure> {
    let td = trust_domain(&args.trust_domain)?;
    let files = CaFiles {
        root_cert_pem: read(&args.root_cert)?,
        root_key_pem: None,
        issuing_cert_pem: read(&args.issuing_cert)?,
        issuing_key_pem: read(&args.issuing_key)?,
    };
    let dir = DataDir::new(&args.data_dir);
    app::import_ca(&dir, &td, &files)?;
    println!(
        "imported CA for trust domain `{td}` into {}",
        dir.path().display()
    );
    Ok(())
}

fn admin_token(args: &config::AdminTokenArgs) -> Result<(), Failure> {
    let mut errors = Vec::new();
    let role = config::parse_role(&args.role)
        .map_err(|e| errors.push(e))
        .ok();
    let ttl = config::parse_seconds("ttl", &args.ttl)
        .map_err(|e| errors.push(e))
        .ok();
    if ttl.is_some_and(|t| !(1..=vouch_ca::tokens::MAX_OPERATOR_TOKEN_TTL_SECS).contains(&t)) {
        errors.push(format!("--ttl `{}` must be between 1s and 7d", args.ttl));
    }
    if args.subject.is_empty() || args.subject.len() > 128 {
        errors.push("--subject must be 1 to 128 characters".into());
    }
    let (Some(role), Some(ttl), true) = (role, ttl, errors.is_empty()) else {
        return Err(Failure::Usage(errors));
    };
    let dir = DataDir::new(&args.data_dir);
    let (token, id) =
        app::mint_operator_token_with_id(&dir, role, &args.subject, ttl, SystemClock.unix())?;
    println!("{token}");
    eprintln!("token id {id} (an admin revokes it with POST /v1/operator-tokens/revoke)");
    Ok(())
}

fn load_policies(dir: &std::path::Path) -> Result<vouch_policy::bundle::Bundle, Failure> {
    vouch_policy::bundle::load_dir(dir).map_err(|errors| {
        for p in &errors.0 {
            eprintln!("{p}");
        }
        Failure::Runtime(format!(
            "`{}` does not load: {} problem(s)",
            dir.display(),
            errors.0.len()
        ))
    })
}

fn policy_check(dir: &std::path::Path) -> Result<(), Failure> {
    let bundle = load_policies(dir)?;
    println!(
        "ok: {} policies, version {}",
        bundle.policies.policies().count(),
        bundle.content_hash
    );
    Ok(())
}

fn policy_test(dir: &std::path::Path) -> Result<(), Failure> {
    let bundle = load_policies(dir)?;
    let results = vouch_policy::cases::run_dir(dir, &bundle).map_err(|problems| {
        for p in &problems {
            eprintln!("{p}");
        }
        Failure::Runtime(format!("{} test file(s) do not load", problems.len()))
    })?;
    let mut failed = 0;
    for r in &results {
        match &r.failure {
            None => println!("ok    {}", r.name),
            Some(why) => {
                failed += 1;
                println!("FAIL  {}\n      {why}", r.name);
            }
        }
    }
    println!(
        "policy tests: {} passed, {failed} failed",
        results.len() - failed
    );
    if failed > 0 {
        return Err(Failure::Runtime(format!("{failed} policy test(s) failed")));
    }
    Ok(())
}

/// `vouch config check`: what `vouch serve` would run with, or every problem.
fn config_check(
    args: config::ServeArgs,
    matches: Option<&clap::ArgMatches>,
) -> Result<(), Failure> {
    let (args, config, _) =
        vouch_ca::config_file::resolve(args, matches).map_err(Failure::Usage)?;
    let initialised = app::is_initialised(&config.data_dir);
    if !initialised && args.trust_domain.is_none() {
        return Err(Failure::Usage(vec![format!(
            "data directory `{}` holds no CA: set trust_domain to create one, or run `vouch ca init`",
            config.data_dir.path().display()
        )]));
    }
    println!("configuration is usable:");
    println!("  listen        {}", config.listen);
    println!(
        "  data dir      {} ({})",
        config.data_dir.path().display(),
        if initialised {
            "holds a CA"
        } else {
            "no CA yet: the first start creates one"
        }
    );
    println!("  database      {}", redact_password(&config.database_url));
    println!(
        "  policy dir    {}",
        config
            .policy
            .dir
            .as_ref()
            .map_or("none (every decision is a deny)".to_owned(), |d| d
                .display()
                .to_string())
    );
    Ok(())
}

/// A database URL without its password, for printing.
fn redact_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = url.get(scheme + 3..at).unwrap_or("");
            match credentials.split_once(':') {
                Some((user, _)) => format!(
                    "{}{user}:***{}",
                    url.get(..scheme + 3).unwrap_or(""),
                    url.get(at..).unwrap_or("")
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn serve(args: config::ServeArgs, matches: Option<&clap::ArgMatches>) -> Result<(), Failure> {
    let resolved = vouch_ca::config_file::resolve(args, matches);
    let json = matches!(&resolved, Ok((args, _, _)) if args.log_format == "json");
    init_logging(json);
    let (_, config, td) = resolved.map_err(Failure::Usage)?;
    if !app::is_initialised(&config.data_dir) {
        let Some(td) = td else {
            return Err(Failure::Usage(vec![format!(
                "data directory `{}` holds no CA: give --trust-domain to create one, or run `vouch ca init`",
                config.data_dir.path().display()
            )]));
        };
        app::init_ca(&config.data_dir, &td, SystemClock.now())?;
        tracing::info!(trust_domain = %td, data_dir = %config.data_dir.path().display(), "created CA");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let mut server = app::start(&config, Arc::new(SystemClock)).await?;
        tracing::info!(addr = %server.addr, "listening");
        let tpm = &config.settings;
        if tpm.tpm_trust_on_first_use {
            tracing::warn!("--tpm-trust-on-first-use: ANY key presented as a TPM endorsement key enrolls with high trust; for labs only, never in production");
        } else if tpm.tpm_roots.is_empty() && tpm.tpm_ek_allowlist.is_empty() {
            tracing::info!("no --tpm-roots or --tpm-ek-allowlist: TPM enrollment is refused");
        }
        // A line on stdout that scripts and tests can wait for.
        println!("listening on {}", server.addr);
        let shutdown = server.take_shutdown();
        tokio::spawn(reload_on_hangup(server.state.clone()));
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            if let Some(tx) = shutdown {
                let _ = tx.send(());
            }
        });
        server.wait().await;
        Ok::<(), Failure>(())
    })
}

/// SIGHUP re-reads the policy directories (as `POST /v1/policy/reload` does).
async fn reload_on_hangup(state: vouch_ca::api::AppState) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload policies with the API");
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading policies");
            if let Err(e) = vouch_ca::flows::reload::reload(&state, "signal:SIGHUP", true).await {
                tracing::warn!(code = e.code.as_str(), detail = %e.detail, "policy reload failed");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = state;
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
