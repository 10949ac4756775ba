//! The decision spool: every decision the sidecar makes about a message (allow or deny, at
//! the sender or the receiver) is appended here before it takes effect, and uploaded in
//! batches to the server's decision log (`POST /v1/policy/decisions`) when the server is
//! reachable.
//!
//! On disk, in the state directory: [`SPOOL_FILE`] holds one JSON line per decision, appended;
//! [`CURSOR_FILE`] says how far the server has confirmed it (a byte offset at a line
//! boundary) and how many decisions were dropped. A decision is written to the file (one
//! `write`) before the message goes on, so a killed agent loses none; the file is synced to
//! disk at least every second (by the uploader), which bounds what a power loss takes. The
//! cursor moves only after the server answered an upload, so a batch whose answer was lost
//! (or whose agent was killed mid-upload) is sent again, and the server records each
//! decision once by its id.
//!
//! Bounded: at most `max` decisions wait. When the spool is full the agent follows
//! [`WhenFull`]: refuse new messages (the default: nothing is lost silently), or drop the
//! oldest and count the loss.

use super::policy::Verdict;
use crate::state::StateDir;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Mutex;
use vouch_policy::model::MessageContext;
use vouch_proto::policy::{AgentDecision, DecisionSide};

/// The spooled decisions, one JSON line each.
pub const SPOOL_FILE: &str = "decisions.jsonl";
/// How far the server has confirmed the spool.
pub const CURSOR_FILE: &str = "decisions.sent.json";
/// Default bound of decisions waiting for upload.
pub const DEFAULT_MAX_SPOOLED: usize = 100_000;
/// Once everything is uploaded and the file is at least this long, it starts over.
const COMPACT_AT: u64 = 1024 * 1024;
/// Most confirmed decisions the saved cursor may lag behind (see [`Spool::uploaded`]).
pub const CURSOR_LAG: u64 = 5_000;

/// What to do with a new decision when the spool is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Refuse the message the decision is about (nothing is lost).
    #[default]
    Refuse,
    /// Drop the oldest waiting decision and count it.
    DropOldest,
}

impl std::str::FromStr for WhenFull {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "refuse" => Ok(Self::Refuse),
            "drop-oldest" => Ok(Self::DropOldest),
            _ => Err(format!("`{s}`: expected `refuse` or `drop-oldest`")),
        }
    }
}

/// Why a decision was not spooled (and so the message is refused).
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Full, and the rule is to refuse.
    #[error("the decision spool is full ({0} decisions wait for the server): refused, so that no decision is lost")]
    Full(usize),
    /// The file cannot be written.
    #[error("the decision spool cannot be written: {0}")]
    Io(#[from] io::Error),
}

/// A decision as the spool keeps it: `verdict` on `from` sending to `to` in `context`,
/// decided at `side` at `at` (Unix seconds), with a fresh random id.
pub fn decision(
    side: DecisionSide,
    from: &str,
    to: &str,
    context: &MessageContext,
    verdict: &Verdict,
    at: i64,
) -> Result<AgentDecision, SpoolError> {
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| io::Error::other("no randomness for a decision id"))?;
    Ok(AgentDecision {
        id: hex::encode(id),
        at,
        side,
        from: from.to_owned(),
        to: to.to_owned(),
        context: context.clone(),
        allowed: verdict.allowed,
        policies: verdict.policies.clone(),
        policy_version: verdict.version.clone(),
    })
}

/// The confirmed position, as saved.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Cursor {
    offset: u64,
    dropped: u64,
}

/// A batch to upload: the decisions, and the spool position after them.
#[derive(Debug)]
pub struct Batch {
    /// The decisions, oldest first.
    pub decisions: Vec<AgentDecision>,
    /// Pass to [`Spool::uploaded`] once the server has answered.
    pub end: u64,
}

/// The spool of one sidecar.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    state: StateDir,
    max: usize,
    when_full: WhenFull,
    inner: Mutex<Inner>,
    /// Held while the cursor file is written (two fsyncs), never together with a wait on
    /// `inner`: decisions go on being appended meanwhile, and each write saves the cursor
    /// as it is when the write starts, so the last one written is the newest.
    saving: Mutex<()>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    /// Confirmed up to here.
    offset: u64,
    /// End offsets of the waiting lines, oldest first.
    ends: VecDeque<u64>,
    len: u64,
    dropped: u64,
    unsynced: bool,
    /// Decisions confirmed since the cursor was last saved.
    unsaved: u64,
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl Spool {
    /// Opens the spool in `state`: what waits is what follows the saved cursor. A line cut
    /// short by a crash is removed.
    pub fn open(state: &StateDir, max: usize, when_full: WhenFull) -> io::Result<Self> {
        let path = state.file(SPOOL_FILE);
        let file = open_append(&path)?;
        let mut cursor: Cursor = match state.read(CURSOR_FILE) {
            Ok(Some(text)) => serde_json::from_str(&text).unwrap_or_else(|e| {
                // Starting over is safe: the server records each decision once.
                tracing::warn!(error = %e, "the decision spool's cursor does not parse: uploading it all again");
                Cursor::default()
            }),
            _ => Cursor::default(),
        };
        let mut ends = VecDeque::new();
        let mut at = 0u64;
        let mut complete = 0u64;
        let mut reader = io::BufReader::new(File::open(&path)?);
        let mut line = Vec::new();
        let mut boundary = cursor.offset == 0;
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)? as u64;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            at += n;
            complete = at;
            if at == cursor.offset {
                boundary = true;
            } else if at > cursor.offset {
                ends.push_back(at);
            }
        }
        if !boundary {
            // The cursor is not at a line boundary of this file (the file started over
            // after the cursor was saved): everything in it waits.
            cursor.offset = 0;
            ends = Self::line_ends(&path, complete)?;
        }
        if file.metadata()?.len() > complete {
            tracing::warn!("the decision spool ends in a cut line (a crash mid-write): removed");
            file.set_len(complete)?;
        }
        Ok(Self {
            path,
            state: state.clone(),
            max,
            when_full,
            inner: Mutex::new(Inner {
                file,
                offset: cursor.offset,
                ends,
                len: complete,
                dropped: cursor.dropped,
                unsynced: false,
                unsaved: 0,
            }),
            saving: Mutex::new(()),
        })
    }

    fn line_ends(path: &PathBuf, len: u64) -> io::Result<VecDeque<u64>> {
        let bytes = std::fs::read(path)?;
        let mut ends = VecDeque::new();
        for (i, b) in bytes.iter().enumerate() {
            let end = i as u64 + 1;
            if *b == b'\n' && end <= len {
                ends.push_back(end);
            }
        }
        Ok(ends)
    }

    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| io::Error::other("the decision spool's lock is poisoned"))
    }

    /// Saves the cursor as it is now. Call it without holding `inner`: it blocks on the
    /// disk.
    fn save_cursor(&self) -> io::Result<()> {
        let _saving = self
            .saving
            .lock()
            .map_err(|_| io::Error::other("the decision spool's cursor lock is poisoned"))?;
        let cursor = {
            let mut inner = self.lock()?;
            inner.unsaved = 0;
            Cursor {
                offset: inner.offset,
                dropped: inner.dropped,
            }
        };
        let text = serde_json::to_vec(&cursor).map_err(io::Error::other)?;
        self.state
            .write(CURSOR_FILE, &text)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Appends `decision`. When full: refuses it, or drops the oldest waiting one.
    pub fn record(&self, decision: &AgentDecision) -> Result<(), SpoolError> {
        let mut line = serde_json::to_vec(decision).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut dropped = false;
        {
            let mut inner = self.lock()?;
            if inner.ends.len() >= self.max {
                match self.when_full {
                    WhenFull::Refuse => return Err(SpoolError::Full(inner.ends.len())),
                    WhenFull::DropOldest => {
                        if let Some(end) = inner.ends.pop_front() {
                            inner.offset = end;
                            inner.dropped += 1;
                            dropped = true;
                            tracing::warn!(
                                dropped = inner.dropped,
                                "the decision spool is full: the oldest decision is dropped"
                            );
                        }
                    }
                }
            }
            if let Err(e) = inner.file.write_all(&line) {
                // A partial write is cut off again so that the next line starts clean.
                let len = inner.len;
                let _ = inner.file.set_len(len);
                return Err(e.into());
            }
            inner.len += line.len() as u64;
            let end = inner.len;
            inner.ends.push_back(end);
            inner.unsynced = true;
        }
        // A crash before the cursor is saved leaves the dropped decision waiting: it is
        // uploaded after all (the server records it once).
        if dropped {
            self.save_cursor()?;
        }
        Ok(())
    }

    /// Decisions waiting for upload.
    pub fn depth(&self) -> usize {
        self.lock().map_or(0, |i| i.ends.len())
    }

    /// Decisions dropped because the spool was full (rule `drop-oldest`), ever.
    pub fn dropped(&self) -> u64 {
        self.lock().map_or(0, |i| i.dropped)
    }

    /// Syncs what was appended to disk. The sync runs on a second handle without the lock,
    /// so decisions go on being appended while the disk catches up (they are synced next
    /// time). It blocks: call it off the async runtime's threads.
    pub fn sync(&self) -> io::Result<()> {
        let file = {
            let mut inner = self.lock()?;
            if !inner.unsynced {
                return Ok(());
            }
            inner.unsynced = false;
            inner.file.try_clone()?
        };
        file.sync_data().inspect_err(|_| {
            if let Ok(mut inner) = self.lock() {
                inner.unsynced = true;
            }
        })
    }

    /// The oldest waiting decisions, at most `max`; `None` when nothing waits. A line that
    /// does not parse (a damaged file) is skipped with a warning.
    pub fn batch(&self, max: usize) -> io::Result<Option<Batch>> {
        let (start, end) = {
            let inner = self.lock()?;
            let Some(&last) = inner.ends.get(max.min(inner.ends.len()).saturating_sub(1)) else {
                return Ok(None);
            };
            (inner.offset, last)
        };
        let mut bytes = vec![0u8; usize::try_from(end - start).map_err(io::Error::other)?];
        File::open(&self.path)?.read_exact_at(&mut bytes, start)?;
        let decisions = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| match serde_json::from_slice(l) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "a spooled decision does not parse: skipped");
                    None
                }
            })
            .collect();
        Ok(Some(Batch { decisions, end }))
    }

    /// The server has recorded everything up to `end`: it no longer waits. Once nothing
    /// waits, a long file starts over.
    ///
    /// The cursor is saved (a file written with two fsyncs, without holding the lock appends
    /// take) when nothing waits any more, when more than [`CURSOR_LAG`] decisions were
    /// confirmed since the last save, and when the spool is dropped: under a steady stream
    /// of uploads, once per drained backlog instead of per batch. A crash in between offers
    /// the confirmed decisions again, which the server records once. It blocks on the disk:
    /// call it off the async runtime's threads.
    pub fn uploaded(&self, end: u64) -> io::Result<()> {
        let save = {
            let mut inner = self.lock()?;
            if end <= inner.offset {
                return Ok(()); // already confirmed (or dropped meanwhile)
            }
            while inner.ends.front().is_some_and(|e| *e <= end) {
                inner.ends.pop_front();
                inner.unsaved += 1;
            }
            inner.offset = end;
            if inner.ends.is_empty() && inner.len >= COMPACT_AT {
                // Truncated first: a crash before the cursor is saved leaves a cursor past
                // the end, which `open` reads as "everything waits" of an empty file.
                inner.file.set_len(0)?;
                inner.len = 0;
                inner.offset = 0;
            }
            inner.ends.is_empty() || inner.unsaved > CURSOR_LAG
        };
        if save {
            self.save_cursor()?;
        }
        Ok(())
    }
}

impl Drop for Spool {
    /// Saves a cursor that lags behind what was confirmed.
    fn drop(&mut self) {
        if self.lock().is_ok_and(|inner| inner.unsaved > 0) {
            if let Err(e) = self.save_cursor() {
                tracing::warn!(error = %e, "cannot save the decision spool's cursor");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(n: u32) -> AgentDecision {
        AgentDecision {
            id: format!("{n:032x}"),
            at: 1_700_000_000,
            side: DecisionSide::Sender,
            from: "a1".into(),
            to: "b2".into(),
            context: MessageContext {
                data_type: "telemetry".into(),
                protocol: "mqtt".into(),
                tls: false,
                mtls: false,
                size: 10,
            },
            allowed: true,
            policies: vec!["p".into()],
            policy_version: "v".into(),
        }
    }

    fn ids(batch: &Batch) -> Vec<String> {
        batch.decisions.iter().map(|d| d.id.clone()).collect()
    }

    #[test]
    fn an_unconfirmed_batch_is_offered_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let spool = Spool::open(&state, 10, WhenFull::Refuse).unwrap();
        for n in 0..5 {
            spool.record(&decision(n)).unwrap();
        }
        let first = spool.batch(3).unwrap().unwrap();
        let want: Vec<String> = (0..3).map(|n| decision(n).id).collect();
        assert_eq!(ids(&first), want);
        // Killed before the server's answer arrived: the same batch again, then the rest.
        drop(spool);
        let spool = Spool::open(&state, 10, WhenFull::Refuse).unwrap();
        assert_eq!(spool.depth(), 5);
        let again = spool.batch(3).unwrap().unwrap();
        assert_eq!(ids(&again), ids(&first));
        spool.uploaded(again.end).unwrap();
        assert_eq!(spool.depth(), 2);
        drop(spool);
        let spool = Spool::open(&state, 10, WhenFull::Refuse).unwrap();
        let rest = spool.batch(100).unwrap().unwrap();
        assert_eq!(rest.decisions.len(), 2);
        assert_eq!(rest.decisions[0].id, decision(3).id);
        spool.uploaded(rest.end).unwrap();
        assert!(spool.batch(100).unwrap().is_none());
        // Nothing waits: the cursor is saved at once, a crash now offers nothing again.
        std::mem::forget(spool);
        let spool = Spool::open(&state, 10, WhenFull::Refuse).unwrap();
        assert_eq!(spool.depth(), 0);
        let mode = std::fs::metadata(state.file(SPOOL_FILE)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_line_cut_by_a_crash_is_removed_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let spool = Spool::open(&state, 10, WhenFull::Refuse).unwrap();
        spool.record(&decision(1)).unwrap();
        drop(spool);
        let mut file = open_append(&state.file(SPOOL_FILE)).unwrap();
        file.write_all(b"{\"id\":\"00").unwrap();
        let spool = Spool::open(&state, 10, WhenFull::Refuse).unwrap();
        assert_eq!(spool.depth(), 1);
        spool.record(&decision(2)).unwrap();
        let batch = spool.batch(10).unwrap().unwrap();
        assert_eq!(batch.decisions.len(), 2);
        assert_eq!(batch.decisions[1].id, decision(2).id);
    }

    #[test]
    fn a_full_spool_refuses_or_drops_the_oldest_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let spool = Spool::open(&state, 3, WhenFull::Refuse).unwrap();
        for n in 0..3 {
            spool.record(&decision(n)).unwrap();
        }
        assert!(matches!(
            spool.record(&decision(3)),
            Err(SpoolError::Full(3))
        ));
        assert_eq!(spool.depth(), 3);
        drop(spool);

        let spool = Spool::open(&state, 3, WhenFull::DropOldest).unwrap();
        spool.record(&decision(3)).unwrap();
        spool.record(&decision(4)).unwrap();
        assert_eq!(spool.dropped(), 2);
        let batch = spool.batch(10).unwrap().unwrap();
        let want: Vec<String> = (2..5).map(|n| decision(n).id).collect();
        assert_eq!(ids(&batch), want);
        drop(spool);
        // The count of the loss survives a restart.
        let spool = Spool::open(&state, 3, WhenFull::DropOldest).unwrap();
        assert_eq!(spool.dropped(), 2);
    }

    #[test]
    fn an_uploaded_spool_starts_over_and_a_cursor_past_the_end_means_everything_waits() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let spool = Spool::open(&state, 100_000, WhenFull::Refuse).unwrap();
        let mut n = 0;
        while std::fs::metadata(state.file(SPOOL_FILE)).unwrap().len() < COMPACT_AT {
            spool.record(&decision(n)).unwrap();
            n += 1;
        }
        while let Some(batch) = spool.batch(500).unwrap() {
            spool.uploaded(batch.end).unwrap();
        }
        assert_eq!(std::fs::metadata(state.file(SPOOL_FILE)).unwrap().len(), 0);
        spool.record(&decision(7)).unwrap();
        drop(spool);
        // A crash between truncating and saving the cursor: the saved cursor is past the
        // (new) end; the decision after the truncation still waits.
        state
            .write(CURSOR_FILE, br#"{"offset":999999,"dropped":0}"#)
            .unwrap();
        let spool = Spool::open(&state, 100_000, WhenFull::Refuse).unwrap();
        let batch = spool.batch(10).unwrap().unwrap();
        assert_eq!(ids(&batch), vec![decision(7).id]);
    }

    #[test]
    fn the_cursor_lags_behind_confirmations_by_a_bounded_count_and_a_crash_offers_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let spool = Spool::open(&state, 100_000, WhenFull::Refuse).unwrap();
        let total = 2 * CURSOR_LAG + 10;
        for n in 0..total {
            spool.record(&decision(u32::try_from(n).unwrap())).unwrap();
        }
        // Confirmed in batches of 100 until 10 wait: the cursor was saved once more than
        // CURSOR_LAG were confirmed since the last save.
        while spool.depth() > 10 {
            let batch = spool.batch(100).unwrap().unwrap();
            spool.uploaded(batch.end).unwrap();
        }
        // Killed without dropping the spool: what was confirmed after the last save waits
        // again, at most CURSOR_LAG of it.
        std::mem::forget(spool);
        let spool = Spool::open(&state, 100_000, WhenFull::Refuse).unwrap();
        let waiting = spool.depth() as u64;
        assert!(
            waiting > 10,
            "nothing confirmed since the last save is offered again"
        );
        assert!(
            waiting <= 10 + CURSOR_LAG,
            "{waiting} waiting: the saved cursor lags by more than {CURSOR_LAG}"
        );
        // A clean stop saves it.
        let batch = spool.batch(100).unwrap().unwrap();
        spool.uploaded(batch.end).unwrap();
        let left = spool.depth();
        drop(spool);
        let spool = Spool::open(&state, 100_000, WhenFull::Refuse).unwrap();
        assert_eq!(spool.depth(), left);
    }
}
