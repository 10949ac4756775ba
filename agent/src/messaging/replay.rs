//! Replay protection for incoming messages: per sender and sender session, a sliding window
//! over the sequence numbers (the highest seen and a bitmap of the [`WINDOW`] below it). A
//! number seen before, or older than the window, is a replay. Every accepted message is
//! appended to a journal in the state directory (one `write`, before its receipt leaves) and
//! every [`JOURNAL_ENTRIES`] the windows are saved whole and the journal starts over, so a
//! restart (or a kill) does not reopen them and a message costs one small append, not a
//! rewrite of every window. Memory grows with senders (at most [`SESSIONS_PER_SENDER`]
//! sessions each), not with messages.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How many sequence numbers below the highest are remembered.
pub const WINDOW: u64 = 64;

/// Sessions remembered per sender (a sender starts one per process start); the least
/// recently used is forgotten, and its messages are refused from then on.
pub const SESSIONS_PER_SENDER: usize = 4;

/// Accepted messages journaled between two saves of the whole windows.
pub const JOURNAL_ENTRIES: u64 = 4096;

/// One journaled acceptance.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// The sender.
    s: String,
    /// The session id (hex).
    i: String,
    /// The sequence number.
    q: u64,
}

/// Why a message is refused as a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Replay {
    /// This sequence number was accepted before.
    #[error("sequence number {0} was seen before")]
    Seen(u64),
    /// Older than the window (or of a session forgotten since).
    #[error("sequence number {0} is older than the replay window")]
    TooOld(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// The sender's session id (hex).
    id: String,
    highest: u64,
    /// Bit `i` set: `highest - 1 - i` was seen.
    seen: u64,
    /// When it was last used, in accepted messages (for least-recently-used eviction).
    used: u64,
}

/// The windows of every sender, and where they are saved.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    path: Option<PathBuf>,
    senders: BTreeMap<String, Vec<Session>>,
    /// Sessions forgotten per sender: their messages are refused (a sender that lost its
    /// session restarts with a new one).
    forgotten: BTreeMap<String, Vec<String>>,
    accepted: u64,
    /// The journal, open for appending, and how many entries it holds.
    journal: Option<std::fs::File>,
    journaled: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    senders: BTreeMap<String, Vec<Session>>,
    #[serde(default)]
    forgotten: BTreeMap<String, Vec<String>>,
    accepted: u64,
}

impl ReplayGuard {
    /// The windows saved at `path` (none yet if it does not exist). A file that does not
    /// parse is an error: starting with empty windows would accept replays.
    pub fn load(path: PathBuf) -> Result<Self, String> {
        let saved: Saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("`{}` does not parse: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(format!("`{}`: {e}", path.display())),
        };
        let mut guard = Self {
            senders: saved.senders,
            forgotten: saved.forgotten,
            accepted: saved.accepted,
            journal: None,
            journaled: 0,
            path: None,
        };
        // What was accepted since the windows were saved. An entry already in the saved
        // windows (a crash between saving and starting the journal over) changes nothing;
        // a line cut short by a crash is skipped.
        let journal = journal_path(&path);
        match std::fs::read(&journal) {
            Ok(bytes) => {
                // Appends go after the last whole line.
                let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                if whole < bytes.len() {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&journal)
                        .and_then(|f| f.set_len(whole as u64))
                        .map_err(|e| format!("`{}`: {e}", journal.display()))?;
                }
                for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let Ok(e) = serde_json::from_slice::<Entry>(line) else {
                        continue;
                    };
                    guard.journaled += 1;
                    let Ok(session) = hex::decode(&e.i) else {
                        continue;
                    };
                    let Ok(session) = <[u8; 16]>::try_from(session.as_slice()) else {
                        continue;
                    };
                    if guard.check(&e.s, &session, e.q).is_ok() {
                        guard.apply(&e.s, e.i, e.q);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("`{}`: {e}", journal.display())),
        }
        guard.path = Some(path);
        Ok(guard)
    }

    /// Windows kept in memory only (tests).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Whether `seq` of `sender`'s `session` would be accepted; changes nothing.
    pub fn check(&self, sender: &str, session: &[u8; 16], seq: u64) -> Result<(), Replay> {
        let id = hex::encode(session);
        if self.forgotten.get(sender).is_some_and(|f| f.contains(&id)) {
            return Err(Replay::TooOld(seq));
        }
        let Some(s) = self
            .senders
            .get(sender)
            .and_then(|sessions| sessions.iter().find(|s| s.id == id))
        else {
            return Ok(());
        };
        if seq > s.highest {
            return Ok(());
        }
        if seq == s.highest {
            return Err(Replay::Seen(seq));
        }
        let back = s.highest - seq - 1;
        if back >= WINDOW {
            return Err(Replay::TooOld(seq));
        }
        if s.seen & (1 << back) != 0 {
            return Err(Replay::Seen(seq));
        }
        Ok(())
    }

    /// Records `seq` as accepted (after [`Self::check`] passed and the message was opened)
    /// and journals it.
    pub fn record(&mut self, sender: &str, session: &[u8; 16], seq: u64) -> Result<(), String> {
        self.check(sender, session, seq)
            .map_err(|e| e.to_string())?;
        let id = hex::encode(session);
        self.apply(sender, id.clone(), seq);
        self.persist(Entry {
            s: sender.to_owned(),
            i: id,
            q: seq,
        })
    }

    /// Appends `entry` to the journal; every [`JOURNAL_ENTRIES`], saves the windows whole
    /// and starts the journal over instead.
    fn persist(&mut self, entry: Entry) -> Result<(), String> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let journal = journal_path(&path);
        let failed = |e: std::io::Error| format!("cannot journal to `{}`: {e}", journal.display());
        if self.journaled >= JOURNAL_ENTRIES {
            self.save()?;
            // Saved first: a crash before the journal is emptied replays entries the saved
            // windows already hold, which changes nothing.
            if let Some(file) = &self.journal {
                file.set_len(0).map_err(failed)?;
            } else {
                std::fs::write(&journal, b"").map_err(failed)?;
            }
            self.journaled = 0;
            return Ok(());
        }
        if self.journal.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&journal)
                .map_err(failed)?;
            self.journal = Some(file);
        }
        let mut line = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
        line.push(b'\n');
        if let Some(file) = self.journal.as_mut() {
            use std::io::Write;
            file.write_all(&line).map_err(failed)?;
        }
        self.journaled += 1;
        Ok(())
    }

    /// Marks `seq` of session `id` (hex) of `sender` as seen, in memory.
    fn apply(&mut self, sender: &str, id: String, seq: u64) {
        self.accepted += 1;
        let used = self.accepted;
        let sessions = self.senders.entry(sender.to_owned()).or_default();
        match sessions.iter_mut().find(|s| s.id == id) {
            Some(s) if seq > s.highest => {
                let shift = seq - s.highest;
                // The old highest becomes bit `shift - 1`.
                s.seen = if shift > WINDOW {
                    0
                } else {
                    let kept = u32::try_from(shift)
                        .ok()
                        .and_then(|n| s.seen.checked_shl(n))
                        .unwrap_or(0);
                    kept | (1 << (shift - 1))
                };
                s.highest = seq;
                s.used = used;
            }
            Some(s) => {
                s.seen |= 1 << (s.highest - seq - 1);
                s.used = used;
            }
            None => {
                sessions.push(Session {
                    id,
                    highest: seq,
                    seen: 0,
                    used,
                });
                if sessions.len() > SESSIONS_PER_SENDER {
                    sessions.sort_by_key(|s| std::cmp::Reverse(s.used));
                    let old: Vec<String> = sessions
                        .split_off(SESSIONS_PER_SENDER)
                        .into_iter()
                        .map(|s| s.id)
                        .collect();
                    let forgotten = self.forgotten.entry(sender.to_owned()).or_default();
                    forgotten.extend(old);
                    // Bounded too: the oldest forgotten sessions are expired messages by now.
                    let excess = forgotten.len().saturating_sub(4 * SESSIONS_PER_SENDER);
                    forgotten.drain(..excess);
                }
            }
        }
    }

    fn save(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let saved = Saved {
            senders: self.senders.clone(),
            forgotten: self.forgotten.clone(),
            accepted: self.accepted,
        };
        let bytes = serde_json::to_vec(&saved).map_err(|e| e.to_string())?;
        // Written beside, then renamed over: a crash leaves the old windows or the new.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot save `{}`: {e}", path.display()))
    }
}

/// The journal beside the saved windows at `path`.
fn journal_path(path: &std::path::Path) -> PathBuf {
    path.with_extension("journal")
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: [u8; 16] = [1; 16];
    const S2: [u8; 16] = [2; 16];

    fn accept(g: &mut ReplayGuard, sender: &str, session: &[u8; 16], seq: u64) {
        g.check(sender, session, seq).unwrap();
        g.record(sender, session, seq).unwrap();
    }

    #[test]
    fn each_number_is_accepted_once_in_any_order_within_the_window() {
        let mut g = ReplayGuard::in_memory();
        for seq in [5, 3, 4, 10, 9] {
            accept(&mut g, "a", &S1, seq);
        }
        for seq in [5, 3, 4, 10, 9] {
            assert_eq!(g.check("a", &S1, seq), Err(Replay::Seen(seq)), "{seq}");
        }
        assert_eq!(g.check("a", &S1, 6), Ok(()));
        accept(&mut g, "a", &S1, 70);
        for seq in [10, 9, 70] {
            assert_eq!(g.check("a", &S1, seq), Err(Replay::Seen(seq)), "{seq}");
        }
        // 70 - 64 = 6 is the oldest the window remembers; 6 was not seen.
        assert_eq!(g.check("a", &S1, 6), Ok(()));
        assert_eq!(g.check("a", &S1, 5), Err(Replay::TooOld(5)));
        // Another session or sender has its own window.
        assert_eq!(g.check("a", &S2, 5), Ok(()));
        assert_eq!(g.check("b", &S1, 5), Ok(()));
        // A jump beyond the window forgets the bitmap, not the highest.
        accept(&mut g, "a", &S1, 1000);
        assert_eq!(g.check("a", &S1, 70), Err(Replay::TooOld(70)));
        assert_eq!(g.check("a", &S1, 999), Ok(()));
    }

    #[test]
    fn windows_survive_a_restart_and_a_bad_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.json");
        let mut g = ReplayGuard::load(path.clone()).unwrap();
        accept(&mut g, "a", &S1, 7);
        accept(&mut g, "a", &S1, 8);
        drop(g);
        let g = ReplayGuard::load(path.clone()).unwrap();
        assert_eq!(g.check("a", &S1, 7), Err(Replay::Seen(7)));
        assert_eq!(g.check("a", &S1, 8), Err(Replay::Seen(8)));
        assert_eq!(g.check("a", &S1, 9), Ok(()));
        std::fs::write(&path, b"{").unwrap();
        assert!(ReplayGuard::load(path).is_err());
    }

    #[test]
    fn the_journal_is_replayed_and_starts_over_once_the_windows_are_saved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.json");
        let journal = journal_path(&path);
        let mut g = ReplayGuard::load(path.clone()).unwrap();
        for seq in 1..JOURNAL_ENTRIES {
            accept(&mut g, "a", &S1, seq);
        }
        // Only journaled so far: a kill now loses nothing.
        assert!(!path.exists());
        drop(g);
        let mut g = ReplayGuard::load(path.clone()).unwrap();
        assert_eq!(
            g.check("a", &S1, JOURNAL_ENTRIES - 1),
            Err(Replay::Seen(JOURNAL_ENTRIES - 1))
        );
        // The next ones fill the journal: the windows are saved and the journal empties.
        accept(&mut g, "a", &S1, JOURNAL_ENTRIES);
        accept(&mut g, "a", &S1, JOURNAL_ENTRIES + 1);
        assert!(path.exists());
        assert_eq!(std::fs::read(&journal).unwrap().len(), 0);
        accept(&mut g, "b", &S2, 5);
        drop(g);
        // A line cut short by a crash is skipped; the rest holds.
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&journal)
            .unwrap();
        file.write_all(b"{\"s\":\"b\",\"i\":").unwrap();
        let mut g = ReplayGuard::load(path.clone()).unwrap();
        assert_eq!(
            g.check("a", &S1, JOURNAL_ENTRIES + 1),
            Err(Replay::Seen(JOURNAL_ENTRIES + 1))
        );
        assert_eq!(g.check("b", &S2, 5), Err(Replay::Seen(5)));
        assert_eq!(g.check("b", &S2, 6), Ok(()));
        // What comes after the cut line is kept whole.
        accept(&mut g, "b", &S2, 6);
        drop(g);
        let g = ReplayGuard::load(path).unwrap();
        assert_eq!(g.check("b", &S2, 6), Err(Replay::Seen(6)));
    }

    #[test]
    fn memory_is_bounded_per_sender_and_forgotten_sessions_stay_closed() {
        let mut g = ReplayGuard::in_memory();
        for i in 0..=SESSIONS_PER_SENDER as u8 {
            accept(&mut g, "a", &[i; 16], 1);
        }
        assert_eq!(g.senders["a"].len(), SESSIONS_PER_SENDER);
        // The least recently used session (0) was forgotten: its messages are refused.
        assert_eq!(g.check("a", &[0; 16], 2), Err(Replay::TooOld(2)));
        for i in 0..100u8 {
            accept(&mut g, "b", &[i; 16], 1);
        }
        assert!(g.forgotten["b"].len() <= 4 * SESSIONS_PER_SENDER);
    }
}
