//! A backend that can be let go of and reached elsewhere: what a server hands to the process
//! that takes over from it (`crate::takeover`). `kv.redb` is locked by the one process that
//! opens it, so during a takeover the old process closes it, the new one opens it, and the
//! key-value calls of requests still running on the old process are sent to the new one
//! ([`Forward`]), which applies them to the store it owns. If the new process fails before it
//! is ready, the old one reopens the file and goes on.
//!
//! Every call holds a read guard for as long as it runs; [`Switch::release`] takes the write
//! guard, so no call is half done at the switch, and calls that arrive meanwhile wait for the
//! guard to go (the store is back, or reached through the new process).

use std::sync::Arc;

use tokio::sync::{OwnedRwLockWriteGuard, RwLock};

use super::backend::{Backend, BoxFuture, Entry, KvError, Outcome, Page, Start, Usage, Write};

/// One backend call, as it crosses to the process that owns the store.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// [`Backend::get`].
    Get {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// [`Backend::write_all`].
    WriteAll {
        /// The bucket.
        bucket: String,
        /// The writes.
        writes: Vec<Write>,
    },
    /// [`Backend::list`].
    List {
        /// The bucket.
        bucket: String,
        /// Where the listing starts.
        start: From,
        /// At most this many keys.
        limit: usize,
    },
    /// [`Backend::scan`].
    Scan {
        /// The bucket.
        bucket: String,
        /// Where the listing starts.
        start: From,
        /// At most this many entries.
        limit: usize,
    },
    /// [`Backend::usage`].
    Usage {
        /// The bucket.
        bucket: String,
    },
}

/// A [`Start`] that owns its key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum From {
    /// [`Start::First`].
    First,
    /// [`Start::After`].
    After(String),
    /// [`Start::Offset`].
    Offset(u64),
}

impl From {
    fn of(start: Start<'_>) -> Self {
        match start {
            Start::First => Self::First,
            Start::After(key) => Self::After(key.to_owned()),
            Start::Offset(n) => Self::Offset(n),
        }
    }

    fn start(&self) -> Start<'_> {
        match self {
            Self::First => Start::First,
            Self::After(key) => Start::After(key),
            Self::Offset(n) => Start::Offset(*n),
        }
    }
}

/// What an [`Op`] answered.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Reply {
    /// Of [`Op::Get`].
    Entry(Option<Entry>),
    /// Of [`Op::WriteAll`].
    Outcomes(Vec<Result<Outcome, KvError>>),
    /// Of [`Op::List`].
    Keys(Page<String>),
    /// Of [`Op::Scan`].
    Entries(Page<(String, Entry)>),
    /// Of [`Op::Usage`].
    Usage(Usage),
}

/// Applies `op` to `backend` (what the process that owns the store does with a forwarded call).
pub async fn apply(backend: &dyn Backend, op: Op) -> Result<Reply, KvError> {
    Ok(match op {
        Op::Get { bucket, key } => Reply::Entry(backend.get(&bucket, &key).await?),
        Op::WriteAll { bucket, writes } => {
            Reply::Outcomes(backend.write_all(&bucket, writes).await?)
        }
        Op::List {
            bucket,
            start,
            limit,
        } => Reply::Keys(backend.list(&bucket, start.start(), limit).await?),
        Op::Scan {
            bucket,
            start,
            limit,
        } => Reply::Entries(backend.scan(&bucket, start.start(), limit).await?),
        Op::Usage { bucket } => Reply::Usage(backend.usage(&bucket).await?),
    })
}

/// Where calls go once the store belongs to another process.
pub trait Forward: Send + Sync + 'static {
    /// Sends `op` and waits for its answer. An answer that cannot come (the other process went
    /// away) is an error: the call may or may not have been applied, and is never retried.
    fn call(&self, op: Op) -> BoxFuture<'_, Result<Reply, KvError>>;
}

/// Where the store is now.
pub enum Place {
    /// Open in this process.
    Here(Arc<dyn Backend>),
    /// Owned by another process, reached through it.
    There(Arc<dyn Forward>),
    /// Closed, between the two (calls wait for the write guard to go).
    Closed,
}

/// A [`Backend`] that can move (see the module's documentation).
pub struct Switch {
    place: Arc<RwLock<Place>>,
    max_value: Option<usize>,
}

/// The switch held closed: calls wait until it is dropped. Put the store somewhere first.
pub type Held = OwnedRwLockWriteGuard<Place>;

fn unexpected() -> KvError {
    KvError::Failed("the key-value store answered a call with another call's reply".into())
}

impl Switch {
    /// A switch over `backend`, open here.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            max_value: backend.max_value(),
            place: Arc::new(RwLock::new(Place::Here(backend))),
        }
    }

    /// A switch whose store is not open yet: calls wait until the returned guard is given a
    /// [`Place`] and dropped.
    pub fn closed() -> (Self, Held) {
        let place = Arc::new(RwLock::new(Place::Closed));
        let held = place.clone().try_write_owned().expect("a new lock is free");
        (
            Self {
                place,
                max_value: None,
            },
            held,
        )
    }

    /// Waits for the calls in progress, then closes the store here (dropping this process's
    /// handle) and holds every later call until the returned guard is given a new [`Place`]
    /// and dropped.
    pub async fn release(&self) -> Held {
        let mut held = self.place.clone().write_owned().await;
        *held = Place::Closed;
        held
    }

    /// Waits for the calls in progress and puts the store at `place`.
    pub async fn move_to(&self, place: Place) {
        *self.place.write().await = place;
    }

    async fn call(&self, op: Op) -> Result<Reply, KvError> {
        let place = self.place.read().await;
        match &*place {
            Place::Here(backend) => apply(backend.as_ref(), op).await,
            Place::There(forward) => forward.call(op).await,
            Place::Closed => Err(KvError::Failed(
                "the key-value store is closed: this server handed it to a new process".into(),
            )),
        }
    }
}

impl Backend for Switch {
    fn get<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Entry>, KvError>> {
        Box::pin(async move {
            let place = self.place.read().await;
            if let Place::Here(backend) = &*place {
                return backend.get(bucket, key).await;
            }
            drop(place);
            let op = Op::Get {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            };
            match self.call(op).await? {
                Reply::Entry(entry) => Ok(entry),
                _ => Err(unexpected()),
            }
        })
    }

    fn write_all<'a>(
        &'a self,
        bucket: &'a str,
        writes: Vec<Write>,
    ) -> BoxFuture<'a, Result<Vec<Result<Outcome, KvError>>, KvError>> {
        Box::pin(async move {
            let place = self.place.read().await;
            if let Place::Here(backend) = &*place {
                return backend.write_all(bucket, writes).await;
            }
            drop(place);
            let op = Op::WriteAll {
                bucket: bucket.to_owned(),
                writes,
            };
            match self.call(op).await? {
                Reply::Outcomes(outcomes) => Ok(outcomes),
                _ => Err(unexpected()),
            }
        })
    }

    fn list<'a>(
        &'a self,
        bucket: &'a str,
        start: Start<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<String>, KvError>> {
        Box::pin(async move {
            let place = self.place.read().await;
            if let Place::Here(backend) = &*place {
                return backend.list(bucket, start, limit).await;
            }
            drop(place);
            let op = Op::List {
                bucket: bucket.to_owned(),
                start: From::of(start),
                limit,
            };
            match self.call(op).await? {
                Reply::Keys(page) => Ok(page),
                _ => Err(unexpected()),
            }
        })
    }

    fn scan<'a>(
        &'a self,
        bucket: &'a str,
        start: Start<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<(String, Entry)>, KvError>> {
        Box::pin(async move {
            let place = self.place.read().await;
            if let Place::Here(backend) = &*place {
                return backend.scan(bucket, start, limit).await;
            }
            drop(place);
            let op = Op::Scan {
                bucket: bucket.to_owned(),
                start: From::of(start),
                limit,
            };
            match self.call(op).await? {
                Reply::Entries(page) => Ok(page),
                _ => Err(unexpected()),
            }
        })
    }

    fn usage<'a>(&'a self, bucket: &'a str) -> BoxFuture<'a, Result<Usage, KvError>> {
        Box::pin(async move {
            let place = self.place.read().await;
            if let Place::Here(backend) = &*place {
                return backend.usage(bucket).await;
            }
            drop(place);
            match self
                .call(Op::Usage {
                    bucket: bucket.to_owned(),
                })
                .await?
            {
                Reply::Usage(usage) => Ok(usage),
                _ => Err(unexpected()),
            }
        })
    }

    fn max_value(&self) -> Option<usize> {
        self.max_value
    }
}
