//! One group-commit writer for every write a fleet makes at a high rate: enrollments,
//! attestation results and policy decisions.
//!
//! Requests queue their job to the writer of its kind ([`Batch`]), which commits whatever
//! has queued (up to [`Batch::MAX_BATCH`]) in one transaction and then answers each waiting
//! request with its own outcome. One transaction per write would serialize a fleet's writes
//! on the database's single writer (measured with `benches/enroll.rs` and
//! `benches/attest.rs`).
//!
//! Every writer behaves the same way:
//! - it runs on a thread of its own with its own single-connection pool (see
//!   [`Writer::spawn`]) and holds that connection across batches;
//! - jobs with equal [`Batch::key`] never share a batch: the later ones wait for the next;
//! - under load it may let jobs gather for [`Batch::COMMIT_DELAY`] before a batch;
//! - when a batch fails as a whole (nothing of it is committed), the error is logged with the
//!   writer's name, the connection is dropped (it may be broken: a restarted PostgreSQL),
//!   and each job is committed again on its own, so that one bad job, or one broken
//!   connection, cannot fail its neighbours; a job that fails on its own is answered with
//!   its error;
//! - the queue is bounded: when it is full, callers wait (back-pressure), nothing is dropped.

use super::{connect_pool, Backend, Registry, StoreError};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A kind of write that is group-committed.
pub(crate) trait Batch: 'static {
    /// One write.
    type Job: Send + 'static;
    /// What one write did.
    type Outcome: Send + 'static;
    /// The writer's name, in logs and its thread's name.
    const NAME: &'static str;
    /// Most jobs committed in one transaction.
    const MAX_BATCH: usize;
    /// How long the writer waits, when the last batch held more than one job, before it takes
    /// what has queued (PostgreSQL's `commit_delay`, for the same reason: a batch costs the
    /// same few statements whatever its size). `None`: commit as soon as possible.
    const COMMIT_DELAY: Option<Duration> = None;

    /// Jobs with equal keys are never in one batch.
    fn key(_job: &Self::Job) -> Option<&str> {
        None
    }

    /// Commits `jobs` in one transaction on `conn` and returns one outcome per job, in
    /// order; or an error, and then nothing is committed.
    async fn commit(
        registry: &Registry,
        conn: &mut AnyConnection,
        jobs: &[Self::Job],
    ) -> Result<Vec<Self::Outcome>, StoreError>;
}

type Queued<B> = (
    <B as Batch>::Job,
    oneshot::Sender<Result<<B as Batch>::Outcome, StoreError>>,
);

/// The queue to a running writer; cheap to clone. The writer ends when every clone is
/// dropped.
pub(crate) struct Writer<B: Batch> {
    tx: mpsc::Sender<Queued<B>>,
}

impl<B: Batch> Clone for Writer<B> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<B: Batch> std::fmt::Debug for Writer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("name", &B::NAME).finish()
    }
}

impl<B: Batch> Writer<B> {
    /// Starts the writer on a thread of its own, with its own single-threaded runtime and its
    /// own connection pool.
    ///
    /// Why a thread: on the shared runtime, each of the writer's awaits (one per statement)
    /// queued behind hundreds of request tasks doing signature work, so batches took several
    /// times longer than their database work and the CPU sat partly idle (measured with
    /// `benches/enroll.rs` and `benches/attest.rs`).
    pub(super) async fn spawn(
        url: String,
        backend: Backend,
        sqlite_writer: Option<Arc<tokio::sync::Mutex<()>>>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Queued<B>>(B::MAX_BATCH * 8);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), StoreError>>();
        let cannot =
            |e: std::io::Error| StoreError::Batch(format!("cannot start the {}: {e}", B::NAME));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(cannot)?;
        std::thread::Builder::new()
            .name(format!("vouch-{}", B::NAME.replace(' ', "-")))
            .spawn(move || {
                runtime.block_on(async move {
                    let pool = match connect_pool(&url, backend, 1).await {
                        Ok(pool) => pool,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let registry = Registry {
                        pool: pool.clone(),
                        backend,
                        url: None,
                        sqlite_writer,
                        writers: None,
                    };
                    run::<B>(&registry, rx).await;
                    pool.close().await;
                });
            })
            .map_err(cannot)?;
        ready_rx.await.map_err(|_| StoreError::WriterGone)??;
        Ok(Self { tx })
    }

    /// Queues `job` and returns its outcome once its batch is committed (durable) or refused.
    pub(crate) async fn submit(&self, job: B::Job) -> Result<B::Outcome, StoreError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send((job, reply_tx))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        reply_rx.await.map_err(|_| StoreError::WriterGone)?
    }
}

/// Commits `job` on its own, on a connection from `registry`'s pool (for a registry without
/// writers).
pub(super) async fn commit_alone<B: Batch>(
    registry: &Registry,
    job: B::Job,
) -> Result<B::Outcome, StoreError> {
    let mut conn = registry.pool.acquire().await?;
    B::commit(registry, &mut conn, std::slice::from_ref(&job))
        .await?
        .pop()
        .ok_or(StoreError::WriterGone)
}

async fn run<B: Batch>(registry: &Registry, mut rx: mpsc::Receiver<Queued<B>>) {
    // Jobs held for a later batch because their key is already in this one.
    let mut deferred: VecDeque<Queued<B>> = VecDeque::new();
    // The writer's connection, held across batches; dropped after an error.
    let mut held: Option<PoolConnection<Any>> = None;
    let mut last_batch = 0usize;
    loop {
        let first = match deferred.pop_front() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        // Under load (the last batch had company), let more jobs queue before taking them.
        // Jobs that arrive meanwhile wake nobody.
        if let (Some(delay), true) = (B::COMMIT_DELAY, last_batch > 1) {
            tokio::time::sleep(delay).await;
        }
        let mut batch: Vec<Queued<B>> = Vec::new();
        let mut later: VecDeque<Queued<B>> = VecDeque::new();
        {
            let mut keys: HashSet<String> = HashSet::new();
            let mut next = Some(first);
            while let Some(queued) = next.take() {
                let fresh = B::key(&queued.0).is_none_or(|k| keys.insert(k.to_owned()));
                if fresh {
                    batch.push(queued);
                } else {
                    later.push_back(queued);
                }
                if batch.len() >= B::MAX_BATCH {
                    break;
                }
                next = deferred.pop_front().or_else(|| rx.try_recv().ok());
            }
        }
        later.extend(deferred.drain(..));
        deferred = later;
        last_batch = batch.len();
        let (jobs, replies): (Vec<B::Job>, Vec<_>) = batch.into_iter().unzip();
        match commit_on_held::<B>(registry, &mut held, &jobs).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(writer = B::NAME, error = %e, jobs = jobs.len(),
                    "group commit failed; committing each job on its own");
                for (job, reply) in jobs.into_iter().zip(replies) {
                    let alone =
                        commit_on_held::<B>(registry, &mut held, std::slice::from_ref(&job))
                            .await
                            .and_then(|mut o| o.pop().ok_or(StoreError::WriterGone));
                    if let Err(e) = &alone {
                        tracing::error!(writer = B::NAME, error = %e, "commit of one job failed");
                    }
                    let _ = reply.send(alone);
                }
            }
        }
    }
}

/// Commits `jobs` on the held connection (taking one from the pool if none is held); keeps
/// the connection only if the commit succeeded.
async fn commit_on_held<B: Batch>(
    registry: &Registry,
    held: &mut Option<PoolConnection<Any>>,
    jobs: &[B::Job],
) -> Result<Vec<B::Outcome>, StoreError> {
    let mut conn = match held.take() {
        Some(conn) => conn,
        None => registry.pool.acquire().await?,
    };
    let outcomes = B::commit(registry, &mut conn, jobs).await?;
    if outcomes.len() != jobs.len() {
        return Err(StoreError::Batch(format!(
            "the {} answered {} of {} jobs",
            B::NAME,
            outcomes.len(),
            jobs.len()
        )));
    }
    *held = Some(conn);
    Ok(outcomes)
}
