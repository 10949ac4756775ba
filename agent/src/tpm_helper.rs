//! The TPM, seen from the agent: every TPM operation runs in `vouch-agent-tpm`, a helper
//! process started for that one operation and gone after it.
//!
//! Why a process of its own: the TSS (libtss2) and the OpenSSL libcrypto it links are a few
//! MiB of C that the agent needs for three operations, at enrollment and once per
//! attestation period. In the helper they are neither mapped into the long-running process
//! that parses every message the network sends (`vouch-agent` does not link them at all), nor
//! resident in its memory the whole day (about 2 MiB of a sidecar's). The helper is the only
//! process that opens the TPM.
//!
//! The protocol: the agent runs `vouch-agent-tpm --tcti TCTI`, writes one JSON [`Request`] to
//! its stdin and closes it; the helper does the operation (see [`crate::tpm`]) and writes one
//! JSON [`Answer`] to its stdout: `{"ok": …}` and exit status 0, or `{"error": "…"}` and 1.
//! Both sides bound what they read. Nothing outlives the call: the helper flushes what it
//! loaded in the TPM before it answers, as [`crate::tpm::Tpm`] always does.

use crate::tpm::{b64, AkBlobs, Endorsement, Quoted, Tpm, TpmError};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The helper's file name; by default it is looked for beside `vouch-agent`.
pub const HELPER_NAME: &str = "vouch-agent-tpm";
/// Largest request the helper reads: an AK's blobs and a credential are under 2 KiB.
pub const MAX_REQUEST: u64 = 64 * 1024;
/// Largest answer the agent reads: a quote of 24 PCRs with its values is under 4 KiB.
pub const MAX_ANSWER: u64 = 64 * 1024;

/// One TPM operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Read the EK (recreated from the seed) and create an AK under it: enrollment, step 1.
    CreateAk,
    /// Activate the credential the server wrapped for `ak`: enrollment, step 2.
    Activate {
        /// The AK created in step 1.
        ak: AkBlobs,
        /// `TPM2B_ID_OBJECT`, with its size prefix.
        #[serde(with = "b64")]
        id_object: Vec<u8>,
        /// `TPM2B_ENCRYPTED_SECRET`, with its size prefix.
        #[serde(with = "b64")]
        encrypted_secret: Vec<u8>,
    },
    /// Quote the SHA-256 bank's `pcrs` with `ak`, `nonce` as qualifying data: attestation.
    Quote {
        /// The device's AK.
        ak: AkBlobs,
        /// The server's challenge.
        #[serde(with = "b64")]
        nonce: Vec<u8>,
        /// PCR indices.
        pcrs: Vec<u8>,
    },
}

/// What an operation returns, by operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// [`Request::CreateAk`].
    CreatedAk {
        /// The EK's public parts.
        endorsement: Endorsement,
        /// The new AK.
        ak: AkBlobs,
    },
    /// [`Request::Activate`]: the recovered secret.
    Activated {
        /// The credential's secret.
        #[serde(with = "b64")]
        secret: Vec<u8>,
    },
    /// [`Request::Quote`].
    Quoted(Quoted),
}

/// The helper's one line of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    /// The operation succeeded.
    Ok(Reply),
    /// It failed; the message says which TPM command and why.
    Error(String),
}

/// Why a TPM operation, as the agent sees it, failed.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The helper could not be started.
    #[error(
        "cannot run the TPM helper {}: {source} (install {HELPER_NAME} beside vouch-agent, \
         or give its path with --tpm-helper)",
        path.display()
    )]
    Start {
        /// The helper's path.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The TPM (or the TSS around it) failed; the helper's report.
    #[error("{0}")]
    Tpm(String),
    /// The helper broke the protocol: crashed, answered too much, or not in JSON.
    #[error("the TPM helper {}: {reason}", path.display())]
    Protocol {
        /// The helper's path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The answer was for another operation.
    #[error("the TPM helper answered another operation")]
    Mismatch,
}

/// Where the helper is and which TPM it talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmHelper {
    /// The `vouch-agent-tpm` executable.
    pub path: PathBuf,
    /// The TPM's TCTI.
    pub tcti: String,
}

impl TpmHelper {
    /// Runs `request` in a new helper process (on the blocking pool: a TPM command takes
    /// milliseconds to seconds) and returns its reply.
    pub async fn call(&self, request: Request) -> Result<Reply, HelperError> {
        let helper = self.clone();
        tokio::task::spawn_blocking(move || helper.call_blocking(&request))
            .await
            .map_err(|e| HelperError::Protocol {
                path: self.path.clone(),
                reason: format!("the task running it failed: {e}"),
            })?
    }

    /// [`TpmHelper::call`], on the calling thread.
    pub fn call_blocking(&self, request: &Request) -> Result<Reply, HelperError> {
        let protocol = |reason: String| HelperError::Protocol {
            path: self.path.clone(),
            reason,
        };
        let body = serde_json::to_vec(request).map_err(|e| protocol(e.to_string()))?;
        let mut child = Command::new(&self.path)
            .arg("--tcti")
            .arg(&self.tcti)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| HelperError::Start {
                path: self.path.clone(),
                source,
            })?;
        // The request is far smaller than a pipe's buffer: writing it cannot wait on the
        // helper's output.
        let written = match child.stdin.take() {
            Some(mut stdin) => stdin.write_all(&body),
            None => Err(std::io::Error::other("no stdin")),
        };
        let mut out = Vec::new();
        let read = match child.stdout.take() {
            Some(stdout) => stdout.take(MAX_ANSWER + 1).read_to_end(&mut out),
            None => Err(std::io::Error::other("no stdout")),
        };
        if out.len() as u64 > MAX_ANSWER {
            let _ = child.kill();
        }
        let status = child.wait().map_err(|e| protocol(e.to_string()))?;
        if out.len() as u64 > MAX_ANSWER {
            return Err(protocol(format!("answered more than {MAX_ANSWER} bytes")));
        }
        match (written, read) {
            (Err(e), _) | (_, Err(e)) if out.is_empty() => {
                return Err(protocol(format!("{e} ({status})")))
            }
            _ => {}
        }
        match serde_json::from_slice::<Answer>(&out) {
            Ok(Answer::Ok(reply)) if status.success() => Ok(reply),
            Ok(Answer::Error(message)) => Err(HelperError::Tpm(message)),
            Ok(Answer::Ok(_)) => Err(protocol(format!("answered but exited with {status}"))),
            Err(_) if out.is_empty() => Err(protocol(format!("answered nothing ({status})"))),
            Err(e) => Err(protocol(format!("unreadable answer: {e}"))),
        }
    }
}

/// The helper's work: reads one request from `input`, does it on the TPM at `tcti`, and
/// writes the answer to `output`. Returns whether the operation succeeded.
pub fn serve(tcti: &str, input: impl Read, mut output: impl Write) -> std::io::Result<bool> {
    let mut body = Vec::new();
    input.take(MAX_REQUEST + 1).read_to_end(&mut body)?;
    let answer = if body.len() as u64 > MAX_REQUEST {
        Answer::Error(format!("TPM helper: request over {MAX_REQUEST} bytes"))
    } else {
        match serde_json::from_slice::<Request>(&body) {
            Ok(request) => match operate(tcti, request) {
                Ok(reply) => Answer::Ok(reply),
                Err(e) => Answer::Error(e.to_string()),
            },
            Err(e) => Answer::Error(format!("TPM helper: invalid request: {e}")),
        }
    };
    let ok = matches!(answer, Answer::Ok(_));
    serde_json::to_writer(&mut output, &answer)?;
    output.write_all(b"\n")?;
    output.flush()?;
    Ok(ok)
}

/// One operation on a TPM connection opened for it.
fn operate(tcti: &str, request: Request) -> Result<Reply, TpmError> {
    let mut tpm = Tpm::open(tcti)?;
    match request {
        Request::CreateAk => {
            let endorsement = tpm.endorsement()?;
            let ak = tpm.create_ak()?;
            Ok(Reply::CreatedAk { endorsement, ak })
        }
        Request::Activate {
            ak,
            id_object,
            encrypted_secret,
        } => Ok(Reply::Activated {
            secret: tpm.activate_credential(&ak, &id_object, &encrypted_secret)?,
        }),
        Request::Quote { ak, nonce, pcrs } => Ok(Reply::Quoted(tpm.quote(&ak, &nonce, &pcrs)?)),
    }
}

/// The helper beside the running executable (`vouch-agent-tpm` next to `vouch-agent`), or,
/// if that cannot be known, the name alone (then looked up in `PATH`).
pub fn default_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(HELPER_NAME)))
        .unwrap_or_else(|| Path::new(HELPER_NAME).to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip() {
        let ak = AkBlobs {
            private: vec![1, 2],
            public: vec![3],
        };
        let request = Request::Quote {
            ak: ak.clone(),
            nonce: vec![9; 32],
            pcrs: vec![0, 7],
        };
        let text = serde_json::to_string(&request).unwrap();
        assert!(
            text.starts_with(r#"{"op":"quote","ak":{"private":"AQI=""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        let answer = Answer::Ok(Reply::CreatedAk {
            endorsement: Endorsement {
                public: vec![4],
                certificate: None,
            },
            ak,
        });
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(serde_json::from_str::<Answer>(&text).unwrap(), answer);
    }

    #[test]
    fn the_helper_refuses_what_is_not_a_request_without_touching_the_tpm() {
        // No TPM listens at this TCTI; the request is refused before it is needed.
        for body in [
            &b"{\"op\":\"erase\"}"[..],
            b"not json",
            b"{\"op\":\"quote\",\"ak\":{\"private\":\"AQI=\",\"public\":\"Aw==\"}}",
            &[b' '; MAX_REQUEST as usize + 1][..],
        ] {
            let mut out = Vec::new();
            assert!(!serve("swtpm:host=127.0.0.1,port=9", body, &mut out).unwrap());
            match serde_json::from_slice::<Answer>(&out).unwrap() {
                Answer::Error(message) => assert!(message.starts_with("TPM helper:"), "{message}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
