//! `vouch-agent-tpm`: the agent's TPM helper (see `vouch_agent::tpm_helper`). `vouch-agent`
//! starts it for each TPM operation: `vouch-agent-tpm --tcti TCTI`, one JSON request on stdin,
//! one JSON answer on stdout; exit status 0 when the operation succeeded, 1 when it failed,
//! 64 for a bad command line. It is not meant to be run by hand.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use vouch_agent::tpm_helper::serve;

/// Exit code of a bad command line (`EX_USAGE`).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    // libtss2 logs its own errors to stderr; the answer carries them, in one line.
    // Set before any thread exists (nothing else reads the environment concurrently yet).
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tcti = match args.as_slice() {
        [flag, tcti] if flag == "--tcti" => tcti,
        _ => {
            eprintln!(
                "vouch-agent-tpm: usage: vouch-agent-tpm --tcti TCTI < request.json \
                 (vouch-agent runs it; see `vouch-agent run --help`, --tpm)"
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match serve(tcti, std::io::stdin().lock(), std::io::stdout().lock()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vouch-agent-tpm: {e}");
            ExitCode::FAILURE
        }
    }
}
