//! Wake-up events: PostgreSQL LISTEN/NOTIFY, or an in-process channel for
//! SQLite (which has no cross-process notification).

use sqlx::postgres::{PgListener, PgNotification};
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

    pub(crate) fn listener(&self) -> Listener {
        Listener {
            inner: Inner::Local {
                rx: self.tx.subscribe(),
                _keep_open: self.tx.clone(),
            },
        }
    }
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
            Inner::Local { rx, .. } => match rx.recv().await {
                Ok(event) => Ok(event),
                Err(broadcast::error::RecvError::Lagged(_)) => Ok(StoreEvent::Missed),
                Err(broadcast::error::RecvError::Closed) => {
                    unreachable!("the listener holds a sender")
                }
            },
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
