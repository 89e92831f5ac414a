//! Groups concurrent enqueues into one transaction each.
//!
//! One enqueue per commit is bound by the database's commit rate (about
//! 2,000/s for PostgreSQL on two cores with fsync on); an HTTP API that takes
//! many small enqueues at once would hit that ceiling. [`EnqueueBatcher`]
//! queues requests, and one loop writes whatever has gathered (after a short
//! linger) with [`Store::enqueue_batch`], at most `max_in_flight` batches at
//! a time. While those commit, the next requests gather, so batches grow with
//! the load; a request that finds nothing being written is written at once,
//! without the linger. Every request still gets
//! its own answer: its own id, its own deduplication, its own error.

use super::{Client, ClientError, EnqueueRequest};
use crate::runtime::Maxima;
use crate::store::{EnqueueOutcome, ModuleRecord, NewTask, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most tasks written in one transaction.
pub const DEFAULT_BATCH_MAX: usize = 512;
/// How long the first request of a batch waits for company.
pub const DEFAULT_BATCH_LINGER: Duration = Duration::from_millis(1);
/// Batches being written at once.
pub const DEFAULT_BATCH_IN_FLIGHT: usize = 4;

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub linger: Duration,
    pub max_in_flight: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch: DEFAULT_BATCH_MAX,
            linger: DEFAULT_BATCH_LINGER,
            max_in_flight: DEFAULT_BATCH_IN_FLIGHT,
        }
    }
}

type Answer = oneshot::Sender<Result<EnqueueOutcome, ClientError>>;

/// A handle to the batching loop; cheap to clone. The loop ends when the last
/// handle is dropped, after writing what it holds.
#[derive(Clone)]
pub struct EnqueueBatcher {
    tx: mpsc::UnboundedSender<(EnqueueRequest, Answer)>,
    maxima: Maxima,
}

impl EnqueueBatcher {
    /// Starts the loop on the current tokio runtime.
    pub fn spawn(client: Client, config: BatchConfig) -> EnqueueBatcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let maxima = *client.maxima();
        tokio::spawn(batch_loop(client, config, rx));
        EnqueueBatcher { tx, maxima }
    }

    /// Enqueues like [`Client::enqueue`], sharing a transaction with the
    /// requests that arrive at about the same time.
    pub async fn enqueue(&self, req: EnqueueRequest) -> Result<EnqueueOutcome, ClientError> {
        // Check what needs no database here, so that a bad request never
        // costs a batch its single transaction.
        super::check_request(&self.maxima, &req)?;
        let (answer, rx) = oneshot::channel();
        self.tx
            .send((req, answer))
            .map_err(|_| ClientError::Unavailable("the enqueue batcher has stopped"))?;
        rx.await.unwrap_or(Err(ClientError::Unavailable(
            "the enqueue batcher dropped the request",
        )))
    }
}

async fn batch_loop(
    client: Client,
    config: BatchConfig,
    mut rx: mpsc::UnboundedReceiver<(EnqueueRequest, Answer)>,
) {
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let slot_count = config.max_in_flight.max(1);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        // Nothing being written: company would only come from the linger,
        // and a lone caller (one thread enqueueing in a loop) would pay it
        // on every request. Write at once; while this batch commits, the
        // next requests gather by themselves.
        let idle = slots.available_permits() == slot_count;
        let until = tokio::time::Instant::now() + config.linger;
        while batch.len() < config.max_batch && !idle {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(r)) => batch.push(r),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        // Waiting for a slot is what lets the next batch grow under load.
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        // Take what else arrived meanwhile.
        while batch.len() < config.max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let client = client.clone();
        tokio::spawn(async move {
            write_batch(&client, batch).await;
            drop(permit);
        });
    }
    // Wait for the batches still being written.
    let _ = slots.acquire_many(slot_count as u32).await;
}

async fn write_batch(client: &Client, batch: Vec<(EnqueueRequest, Answer)>) {
    // Resolve each distinct module reference once per batch.
    let mut modules: HashMap<String, Result<ModuleRecord, StoreError>> = HashMap::new();
    let mut tasks = Vec::with_capacity(batch.len());
    let mut answers = Vec::with_capacity(batch.len());
    for (req, answer) in batch {
        if !modules.contains_key(&req.module) {
            // The reference was checked by `enqueue`.
            let (name, version) = super::parse_reference(&req.module).unwrap_or_default();
            let resolved = client.store().resolve_module(name, version).await;
            modules.insert(req.module.clone(), resolved);
        }
        match &modules[&req.module] {
            Ok(m) => {
                tasks.push(new_task_for(m, req));
                answers.push(answer);
            }
            Err(StoreError::NotFound { what }) => {
                let what = what.clone();
                let _ = answer.send(Err(StoreError::NotFound { what }.into()));
            }
            Err(_) => {
                // A database error: answer with the outcome of a direct attempt.
                let _ = answer.send(client.enqueue(req).await);
            }
        }
    }
    if tasks.is_empty() {
        return;
    }
    match client.store().enqueue_batch(&tasks).await {
        Ok(outcomes) => {
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                let _ = answer.send(Ok(outcome));
            }
        }
        // One bad task fails the whole transaction (a value the store or the
        // database refuses, a conflict): write them one by one so that each
        // request gets its own answer and the bad one fails alone. When the
        // database could not be reached, each would fail just the same, so
        // they share the batch's error instead.
        Err(e) if tasks.len() > 1 && refused(&e) => {
            tracing::debug!(error = %e, tasks = tasks.len(), "enqueue batch refused: writing its tasks one by one");
            for (answer, task) in answers.into_iter().zip(tasks) {
                let _ = answer.send(client.store().enqueue(task).await.map_err(Into::into));
            }
        }
        Err(e) => {
            let message = e.to_string();
            let mut first = Some(e);
            for answer in answers {
                let err = first.take().unwrap_or_else(|| {
                    StoreError::Database(sqlx::Error::Protocol(message.clone()))
                });
                let _ = answer.send(Err(err.into()));
            }
        }
    }
}

/// Whether the store or the database refused the batch (so one of its tasks
/// may be at fault), as opposed to the database being out of reach.
/// (Not [`StoreError::is_transient`]: a refusal that a retry may get past,
/// such as a deadlock, is still worth writing one by one.)
fn refused(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(_)) => true,
        StoreError::Database(_) | StoreError::Migrate(_) => false,
        _ => true,
    }
}

/// The task `req` asks for, once its module is resolved.
pub(super) fn new_task_for(module: &ModuleRecord, req: EnqueueRequest) -> NewTask {
    let mut task = NewTask::new(module, req.input)
        .queue(req.queue)
        .priority(req.priority)
        .max_attempts(req.max_attempts)
        .limits(req.limits);
    if let Some(at) = req.run_after {
        task = task.run_after(at);
    }
    if let Some(k) = req.unique_key {
        task = task.unique_key(k);
    }
    task
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// An error the database server answered with, with a SQLSTATE.
    #[derive(Debug)]
    struct ServerError(&'static str);

    impl std::fmt::Display for ServerError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "server error {}", self.0)
        }
    }

    impl std::error::Error for ServerError {}

    impl sqlx::error::DatabaseError for ServerError {
        fn message(&self) -> &str {
            "refused"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn server(code: &'static str) -> StoreError {
        StoreError::Database(sqlx::Error::Database(Box::new(ServerError(code))))
    }

    /// What the server refused is written one by one, whatever its code
    /// (22021: PostgreSQL's invalid byte sequence, a NUL in a value; 40P01:
    /// a deadlock; 5: SQLite's BUSY); an unreachable database is not.
    #[test]
    fn a_batch_the_database_refused_is_split_one_the_network_lost_is_not() {
        for code in ["22021", "23505", "40P01", "5"] {
            assert!(refused(&server(code)), "{code}");
        }
        assert!(refused(&StoreError::invalid("bad queue name")));
        assert!(refused(&StoreError::Conflict("taken".into())));
        assert!(refused(&StoreError::not_found("module bytes")));
        for lost in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ] {
            assert!(!refused(&StoreError::Database(lost)));
        }
    }

    /// A request that finds nothing being written does not wait for company:
    /// with an hour of linger, it is still answered at once.
    #[tokio::test]
    async fn a_lone_request_is_written_without_the_linger() {
        let store = crate::store::AnyStore::connect("sqlite::memory:")
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let bytes = b"not compiled here";
        store
            .push_module("m", None, bytes, &crate::runtime::sha256_hex(bytes))
            .await
            .unwrap();
        let batcher = EnqueueBatcher::spawn(
            Client::from_store(store),
            BatchConfig {
                linger: Duration::from_secs(3600),
                ..BatchConfig::default()
            },
        );
        for _ in 0..3 {
            let out = tokio::time::timeout(
                Duration::from_secs(60),
                batcher.enqueue(EnqueueRequest::new("m", "{}")),
            )
            .await
            .expect("answered without waiting for the linger")
            .unwrap();
            assert!(!out.deduplicated);
        }
    }
}
