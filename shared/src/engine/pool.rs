//! A few connections to one database, reused operation after operation: cleanup's items of one
//! integration share them instead of each opening its own (a TCP, TLS and SCRAM handshake and
//! a server process every time), and the pool's size is the most the server sees at once.
//!
//! A connection goes back to the pool only when the work on it succeeded ([`Pooled::release`]):
//! after an error it may sit in an aborted transaction or be broken, so it is closed instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::Client;

use crate::engine::postgres::{ConnectError, Connector};

pub struct Pool {
    connector: Connector,
    database: String,
    idle: Mutex<Vec<Client>>,
    slots: Semaphore,
    opened: AtomicUsize,
    connect_failures_in_a_row: AtomicUsize,
}

impl Pool {
    /// At most `size` connections to `database` (at least one).
    pub fn new(connector: Connector, database: impl Into<String>, size: usize) -> Pool {
        Pool { connector, database: database.into(), idle: Mutex::new(Vec::new()), slots: Semaphore::new(size.max(1)), opened: AtomicUsize::new(0), connect_failures_in_a_row: AtomicUsize::new(0) }
    }

    /// What opens the connections (and those to other databases an operation needs).
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// The database the pooled connections are open to.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// How many connections this pool has opened so far.
    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }

    /// How many connection attempts have failed since the last one that succeeded: a server
    /// out of reach, when it grows.
    pub fn connect_failures_in_a_row(&self) -> usize {
        self.connect_failures_in_a_row.load(Ordering::Relaxed)
    }

    /// A connection for one operation: an idle one, or a new one while fewer than the pool's
    /// size are out; otherwise waits for one to come back.
    pub async fn get(&self) -> Result<Pooled<'_>, ConnectError> {
        let permit = self.slots.acquire().await.map_err(|_| ConnectError::PoolClosed)?;
        loop {
            let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            match idle {
                Some(client) if client.is_closed() => continue,
                Some(client) => return Ok(Pooled { client, pool: self, _permit: permit }),
                None => break,
            }
        }
        let client = match self.connector.connect(&self.database).await {
            Ok(client) => client,
            Err(e) => {
                self.connect_failures_in_a_row.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        self.connect_failures_in_a_row.store(0, Ordering::Relaxed);
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Pooled { client, pool: self, _permit: permit })
    }
}

/// A connection taken from a [`Pool`]; closed when dropped, unless released back.
pub struct Pooled<'a> {
    client: Client,
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl Pooled<'_> {
    /// The work on this connection succeeded: the next operation may reuse it.
    pub fn release(self) {
        let Pooled { client, pool, _permit } = self;
        if let (false, Ok(mut idle)) = (client.is_closed(), pool.idle.lock()) {
            idle.push(client);
        }
    }
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}
