//! Wake-up events: PostgreSQL LISTEN/NOTIFY; for SQLite, which has no
//! cross-process notification, an in-process channel plus a watch on the
//! file's commit counter that notices what other processes commit.

use sqlx::ConnectOptions;
use sqlx::postgres::{PgListener, PgNotification};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use std::time::Duration;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::error::Result;
use super::model::StoreEvent;

/// PostgreSQL channel carrying a queue name per newly claimable task batch.
pub(crate) const TASK_CHANNEL: &str = "wasmq_task";
/// PostgreSQL channel carrying the id of a running task to cancel.
pub(crate) const CANCEL_CHANNEL: &str = "wasmq_cancel";

/// Events are hints; a slow listener skips ahead and gets
/// [`StoreEvent::Missed`] instead of blocking the store.
const LOCAL_CAPACITY: usize = 1024;

/// How often a SQLite listener reads the file's commit counter: the
/// latency a task enqueued by another process waits at most before an idle
/// worker claims it. One `PRAGMA data_version` is a read of shared memory,
/// about 10 µs, so an idle worker spends about 0.1% of a core on it.
pub(crate) const SQLITE_WATCH_INTERVAL: Duration = Duration::from_millis(10);

/// In-process event fan-out shared by all clones of one SQLite store.
#[derive(Clone)]
pub(crate) struct LocalEvents {
    tx: broadcast::Sender<StoreEvent>,
}

impl LocalEvents {
    pub(crate) fn new() -> Self {
        LocalEvents {
            tx: broadcast::channel(LOCAL_CAPACITY).0,
        }
    }

    pub(crate) fn send(&self, event: StoreEvent) {
        // An error only means nobody listens.
        let _ = self.tx.send(event);
    }

    /// A listener of this process's events, and with `watch` of every
    /// other process's commits too.
    pub(crate) fn listener(&self, watch: Option<CommitWatch>) -> Listener {
        Listener {
            inner: Inner::Local {
                rx: self.tx.subscribe(),
                _keep_open: self.tx.clone(),
                watch: watch.map(Box::new),
            },
        }
    }
}

/// Notices commits to a SQLite file by any other connection, in this
/// process or another: `PRAGMA data_version` changes exactly then. It
/// needs a connection of its own, since a connection's own commits do not
/// change the value it reads.
pub(crate) struct CommitWatch {
    conn: SqliteConnection,
    last: i64,
    tick: tokio::time::Interval,
}

impl CommitWatch {
    pub(crate) async fn open(options: &SqliteConnectOptions) -> Result<CommitWatch> {
        let mut conn = options.connect().await?;
        let last = data_version(&mut conn).await?;
        let mut tick = tokio::time::interval(SQLITE_WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(CommitWatch { conn, last, tick })
    }

    /// Resolves once something was committed since the last call.
    async fn changed(&mut self) -> Result<()> {
        loop {
            self.tick.tick().await;
            let now = data_version(&mut self.conn).await?;
            if now != self.last {
                self.last = now;
                return Ok(());
            }
        }
    }
}

async fn data_version(conn: &mut SqliteConnection) -> Result<i64> {
    Ok(sqlx::query_scalar("PRAGMA data_version")
        .fetch_one(conn)
        .await?)
}

/// A subscription to [`StoreEvent`]s, from `Store::listen`.
pub struct Listener {
    inner: Inner,
}

enum Inner {
    Postgres(Box<PgListener>),
    Local {
        rx: broadcast::Receiver<StoreEvent>,
        // Holding a sender means `recv` never sees a closed channel.
        _keep_open: broadcast::Sender<StoreEvent>,
        watch: Option<Box<CommitWatch>>,
    },
}

impl Listener {
    pub(crate) async fn postgres(mut listener: PgListener) -> Result<Listener> {
        listener.listen_all([TASK_CHANNEL, CANCEL_CHANNEL]).await?;
        Ok(Listener {
            inner: Inner::Postgres(Box::new(listener)),
        })
    }

    /// Waits for the next event. Cancel-safe.
    ///
    /// On PostgreSQL a lost connection is re-established here (sqlx's
    /// `PgListener` reconnects and re-issues LISTEN) and reported as
    /// [`StoreEvent::Missed`], since notifications sent meanwhile are gone.
    /// An error means the database could not be reached; calling `recv`
    /// again tries again.
    pub async fn recv(&mut self) -> Result<StoreEvent> {
        match &mut self.inner {
            Inner::Local { rx, watch, .. } => {
                let other_commits = async {
                    match watch {
                        Some(w) => w.changed().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    event = rx.recv() => match event {
                        Ok(event) => Ok(event),
                        Err(broadcast::error::RecvError::Lagged(_)) => Ok(StoreEvent::Missed),
                        Err(broadcast::error::RecvError::Closed) => {
                            unreachable!("the listener holds a sender")
                        }
                    },
                    // Which rows changed is unknown: poll the database.
                    changed = other_commits => changed.map(|()| StoreEvent::Missed),
                }
            }
            Inner::Postgres(listener) => loop {
                match listener.try_recv().await? {
                    None => return Ok(StoreEvent::Missed),
                    Some(notification) => {
                        if let Some(event) = parse_notification(&notification) {
                            return Ok(event);
                        }
                    }
                }
            },
        }
    }
}

fn parse_notification(n: &PgNotification) -> Option<StoreEvent> {
    match n.channel() {
        TASK_CHANNEL => Some(StoreEvent::TaskAvailable {
            queue: n.payload().to_owned(),
        }),
        CANCEL_CHANNEL => match Uuid::parse_str(n.payload()) {
            Ok(id) => Some(StoreEvent::CancelRequested { id }),
            Err(_) => {
                tracing::warn!(
                    payload = n.payload(),
                    "ignoring malformed cancel notification"
                );
                None
            }
        },
        _ => None,
    }
}
