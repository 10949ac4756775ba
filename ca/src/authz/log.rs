//! The decision log writer: every decision is committed to the append-only `decision_log`
//! table before it is answered, so the log cannot miss a decision that a caller acted on.
//!
//! Decisions queue to one writer task that commits whatever has queued (up to
//! [`MAX_BATCH`]) in one transaction and then releases the waiting requests. The queue is
//! bounded; when it is full, callers wait (back-pressure) instead of entries being dropped,
//! which is how OPA's asynchronous decision logs lose events under load. If the database
//! refuses a batch, each waiting request gets an error and answers 503: a decision that was
//! not logged is not given.

use crate::store::{NewDecision, Registry, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Most decisions committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// Decisions that may wait for the writer before callers are held back.
pub const QUEUE: usize = MAX_BATCH * 8;

type Job = (NewDecision, oneshot::Sender<Result<(), String>>);

/// Why a decision could not be logged.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The writer has stopped.
    #[error("decision log writer has stopped")]
    WriterGone,
    /// The database refused the batch.
    #[error("decision log commit failed: {0}")]
    Commit(String),
}

/// The queue to the decision log writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    tx: mpsc::Sender<Job>,
}

impl DecisionLog {
    /// Starts the writer on the current runtime. It ends when every [`DecisionLog`] is dropped.
    pub fn spawn(registry: Registry) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        tokio::spawn(run_writer(registry, rx));
        Self { tx }
    }

    /// Commits `decision` to the log; returns once it is durable in the database.
    pub async fn record(&self, decision: NewDecision) -> Result<(), LogError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send((decision, reply_tx))
            .await
            .map_err(|_| LogError::WriterGone)?;
        match reply_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LogError::Commit(e)),
            Err(_) => Err(LogError::WriterGone),
        }
    }
}

async fn run_writer(registry: Registry, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let decisions: Vec<NewDecision> = batch.iter().map(|(d, _)| d.clone()).collect();
        let outcome = commit(&registry, &decisions).await;
        if let Err(e) = &outcome {
            tracing::error!(error = %e, decisions = decisions.len(), "decision log commit failed");
        }
        for (_, reply) in batch.drain(..) {
            let _ = reply.send(outcome.as_ref().map(|_| ()).map_err(ToString::to_string));
        }
    }
}

/// One retry after a short pause covers a transient lock or connection error.
async fn commit(registry: &Registry, decisions: &[NewDecision]) -> Result<(), StoreError> {
    match registry.append_decisions(decisions).await {
        Ok(()) => Ok(()),
        Err(first) => {
            tracing::warn!(error = %first, "decision log commit failed; retrying once");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            registry.append_decisions(decisions).await
        }
    }
}
