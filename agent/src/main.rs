//! `vouch-agent`: the device agent's command line. Logs go to stderr (`RUST_LOG` filters);
//! a failure is one line on stderr and a non-zero exit: 64 for a bad command line or
//! config, 1 for anything else.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;
use vouch_agent::config::{settings, Cli, Command, ConfigCommand};
use vouch_agent::lifecycle::run;
use vouch_agent::status::Status;

/// Exit code of a configuration error (`EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid command line");
            eprintln!(
                "vouch-agent: {} (see --help)",
                line.trim_start_matches("error: ")
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    match cli.command {
        Command::Status(args) => {
            match Status::read(
                &args.state_dir,
                args.socket.as_deref(),
                time::OffsetDateTime::now_utc(),
            ) {
                Ok(status) if args.json || args.output == vouch_agent::config::Output::Json => {
                    match serde_json::to_string_pretty(&status) {
                        Ok(text) => {
                            println!("{text}");
                            ExitCode::SUCCESS
                        }
                        Err(e) => fail(&e.to_string()),
                    }
                }
                Ok(status) => {
                    print!("{}", status.text());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Config(ConfigCommand::Check(args)) => match settings(*args) {
            Ok(s) => {
                println!("configuration is usable:");
                println!("  server      {}", s.server);
                println!("  state dir   {}", s.state_dir.display());
                println!(
                    "  TPM         {}",
                    s.tpm.as_deref().unwrap_or("none (trust level low)")
                );
                if s.tpm.is_some() {
                    println!("  TPM helper  {}", s.tpm_helper.display());
                }
                println!(
                    "  join token  {}",
                    if s.join_token.is_some() {
                        "given"
                    } else {
                        "none (needed for the first enrollment)"
                    }
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors {
                    eprintln!("vouch-agent: {e}");
                }
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run(args) => {
            let settings = match settings(*args) {
                Ok(s) => s,
                Err(errors) => {
                    for e in &errors {
                        eprintln!("vouch-agent: {e}");
                    }
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_logging();
            // One thread, as a sidecar beside a workload should be: a message is handled start
            // to end without hopping between threads (measured: a quarter less CPU per message
            // than on two workers, and two MiB less memory); TPM commands and disk syncs run
            // on the blocking pool.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the runtime: {e}")),
            };
            let result = runtime.block_on(async {
                tokio::select! {
                    r = run(settings) => r.map(|()| false),
                    () = shutdown_signal() => Ok(true),
                }
            });
            match result {
                Ok(signalled) => {
                    if signalled {
                        tracing::info!("stopping on signal");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %e, "stopping");
                    fail(&e.to_string())
                }
            }
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("vouch-agent: {message}");
    ExitCode::FAILURE
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // tss-esapi logs every context it opens and closes at `info`: keep that for RUST_LOG.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,tss_esapi=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
