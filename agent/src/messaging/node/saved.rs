//! What the messenger keeps in the state directory across restarts: the CRL and the peer
//! directory's answers (checked again on load), and the inbox of messages receipted and
//! not yet read by the workload.

use super::*;

/// The kept inbox ([`INBOX_FILE`]): messages receipted and not yet read, one JSON line each,
/// appended with one `write` before the receipt leaves. A killed process loses none of them
/// (they are in the page cache); [`Messenger::sync_inbox`] puts them on disk within a second
/// (a machine that loses power may lose that last second, as with the decision spool).
#[derive(Default)]
pub(super) struct KeptInbox {
    /// The file, open for appending (reopened after a rewrite replaced it).
    file: Option<std::fs::File>,
    /// Appended since the last sync.
    unsynced: bool,
}

impl KeptInbox {
    /// Appends `value` as one JSON line to the file at `path` (created 0600).
    pub(super) fn append(
        &mut self,
        path: &std::path::Path,
        value: &impl serde::Serialize,
    ) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)?,
            ),
        };
        if let Err(e) = file.write_all(&line) {
            // Reopened next time, at the end of whatever was written.
            self.file = None;
            return Err(e);
        }
        self.unsynced = true;
        Ok(())
    }

    /// Empties the file (everything in it was read).
    fn empty(&mut self, path: &std::path::Path) -> std::io::Result<()> {
        let emptied = match &self.file {
            Some(file) => file.set_len(0),
            None => std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(0)),
        };
        self.unsynced = true;
        emptied
    }

    /// A second handle to sync, if anything was appended since the last sync (the sync then
    /// runs without the lock: appends go on meanwhile).
    fn take_unsynced(&mut self) -> Option<std::io::Result<std::fs::File>> {
        if !std::mem::take(&mut self.unsynced) {
            return None;
        }
        self.file.as_ref().map(std::fs::File::try_clone)
    }
}

/// A peer directory answer as saved.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct SavedPeer {
    record: vouch_proto::peer::PeerRecord,
    fetched_at: i64,
}

impl Messenger {
    /// Keeps the CRL ([`CRL_FILE`], as the CA signed it) and the peer directory's answers
    /// ([`PEERS_FILE`], see [`Self::save_peers`]) in `state`, and loads what is there now:
    /// each checked again (the CRL's signature, each answer's certificates), so that a
    /// sidecar started while the server cannot be reached works from what it knew.
    pub fn with_cache(self, state: StateDir) -> Self {
        if let Ok(Some(der)) = state.read_bytes(CRL_FILE) {
            let confirmed = std::fs::metadata(state.file(CRL_FILE))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(i64::MIN, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MIN));
            match self.install_crl(&der) {
                Ok(n) => {
                    self.crl_confirmed.store(confirmed, Ordering::SeqCst);
                    tracing::info!(crl_number = n, "the saved CRL checks out");
                }
                Err(e) => tracing::warn!(error = %e, "the saved CRL is not used"),
            }
        }
        if let Ok(Some(text)) = state.read(PEERS_FILE) {
            let saved: Vec<SavedPeer> = serde_json::from_str(&text).unwrap_or_default();
            let at = self.now();
            let mut loaded = 0;
            for s in saved {
                if let Ok(mut peer) =
                    verify_peer_record(&self.anchors, &s.record, &s.record.device_id, at)
                {
                    peer.fetched_at = s.fetched_at.min(at);
                    self.peers.insert(peer);
                    loaded += 1;
                }
            }
            tracing::info!(peers = loaded, "saved peer directory answers checked out");
        }
        if let Ok(Some(text)) = state.read(INBOX_FILE) {
            if let Ok(mut inbox) = self.inbox.lock() {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    match serde_json::from_str::<Waiting>(line) {
                        Ok(w) => inbox.push_back(w),
                        Err(e) => {
                            tracing::warn!(error = %e, "a kept message does not parse: skipped")
                        }
                    }
                }
                if !inbox.is_empty() {
                    tracing::info!(messages = inbox.len(), "messages kept for the workload");
                }
            }
        }
        let _ = self.saved.set(state);
        self
    }

    /// Saves the peer directory's answers cached now (see [`Self::with_cache`]).
    pub fn save_peers(&self) {
        let Some(state) = self.saved.get() else {
            return;
        };
        let saved: Vec<SavedPeer> = self
            .peers
            .all()
            .into_iter()
            .map(|p| SavedPeer {
                record: (*p.record).clone(),
                fetched_at: p.fetched_at,
            })
            .collect();
        match serde_json::to_vec(&saved) {
            Ok(bytes) => {
                if let Err(e) = state.write(PEERS_FILE, &bytes) {
                    tracing::warn!(error = %e, "cannot save the peer directory's answers");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot save the peer directory's answers"),
        }
    }

    /// The messages that arrived, oldest first, waiting up to `wait` for one if none has.
    pub async fn take_messages(&self, wait: Duration) -> Vec<Waiting> {
        let notified = self.arrived.notified();
        let drained = self.drain();
        if !drained.is_empty() || wait.is_zero() {
            return drained;
        }
        let _ = tokio::time::timeout(wait, notified).await;
        self.drain()
    }

    pub(super) fn drain(&self) -> Vec<Waiting> {
        let Ok(mut inbox) = self.inbox.lock() else {
            return Vec::new();
        };
        let drained: Vec<Waiting> = inbox.drain(..).collect();
        if !drained.is_empty() {
            // Everything was read: the kept inbox empties (a truncation, not a rewrite; a
            // crash just before it hands the messages over again, never loses one).
            if let (Some(state), Ok(mut kept)) = (self.saved.get(), self.kept.lock()) {
                if let Err(e) = kept.empty(&state.file(INBOX_FILE)) {
                    tracing::error!(error = %e, "cannot empty the kept inbox");
                }
            }
        }
        drained
    }

    /// Syncs the kept inbox to disk if anything was appended since the last sync (called
    /// each second by the sidecar).
    /// It blocks: call it off the async runtime's threads.
    pub fn sync_inbox(&self) {
        let file = match self.kept.lock() {
            Ok(mut kept) => kept.take_unsynced(),
            Err(_) => None,
        };
        if let Some(Err(e)) = file.map(|f| f.and_then(|f| f.sync_data())) {
            tracing::error!(error = %e, "cannot sync the kept inbox");
            if let Ok(mut kept) = self.kept.lock() {
                kept.unsynced = true;
            }
        }
    }

    /// Rewrites the kept inbox as `inbox` (called with its lock held).
    pub(super) fn save_inbox(&self, inbox: &VecDeque<Waiting>) {
        let Some(state) = self.saved.get() else {
            return;
        };
        let mut text = Vec::new();
        for w in inbox {
            if let Ok(line) = serde_json::to_vec(w) {
                text.extend_from_slice(&line);
                text.push(b'\n');
            }
        }
        // The rewrite replaces the file: the kept handle is let go (reopened at the next
        // append).
        if let Ok(mut kept) = self.kept.lock() {
            *kept = KeptInbox::default();
        }
        if let Err(e) = state.write(INBOX_FILE, &text) {
            tracing::error!(error = %e, "cannot rewrite the kept inbox");
        }
    }
}
