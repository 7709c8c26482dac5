//! The current catalog snapshot, shared by sessions: lookups clone an `Arc`
//! under a lock held for a pointer copy, and refreshes load the new snapshot
//! without any lock readers can see, then swap it in. [`CatalogCache::serve`]
//! keeps it fresh over a connection it re-opens when lost, and answers
//! on-demand lookups of tables the snapshot does not know yet.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

use super::{Catalog, CatalogError, LookedUp, TableLookup};

/// First pause before re-opening a lost catalog connection; it doubles up
/// to [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between attempts to re-open the catalog connection.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Longest wait for an on-demand lookup (queued behind a slow refresh, or
/// nothing serving the cache); the name then counts as missing.
const LOOKUP_WAIT: Duration = Duration::from_secs(5);

/// How the catalog connection is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogHealth {
    /// The last refresh succeeded.
    Ok {
        /// When the current snapshot was loaded.
        loaded_at: SystemTime,
    },
    /// Connected, but refreshes fail (the previous snapshot stays).
    Failing {
        /// Since the first failure in a row.
        since: SystemTime,
        /// The latest error.
        error: String,
    },
    /// The connection was lost; it is being re-opened with backoff.
    Reconnecting {
        /// When it was lost.
        since: SystemTime,
        /// The latest error (losing it, or the last attempt).
        error: String,
    },
}

/// A table to look up, and who waits for it.
#[derive(Debug)]
struct LookupRequest {
    what: TableLookup,
    done: oneshot::Sender<()>,
}

/// Holds the current [`Catalog`] and replaces it on [`CatalogCache::refresh`].
///
/// Readers call [`CatalogCache::current`] and work on the returned snapshot;
/// no lock is ever held across an await. Refreshes are serialized (an async
/// mutex held while loading, which readers never touch), so an older load
/// can never overwrite a newer one.
#[derive(Debug)]
pub struct CatalogCache {
    current: RwLock<Arc<Catalog>>,
    refreshing: tokio::sync::Mutex<()>,
    refreshes: AtomicU64,
    failures: AtomicU64,
    reconnects: AtomicU64,
    lookups: AtomicU64,
    /// Tables looked up and not found since the snapshot was loaded: asked
    /// again only after the next refresh.
    missing: Arc<Mutex<HashSet<TableLookup>>>,
    /// Oids looked up that are temporary tables (of some session).
    temporary: Mutex<HashSet<u32>>,
    health: Mutex<CatalogHealth>,
    requests: mpsc::UnboundedSender<LookupRequest>,
    /// Taken by [`CatalogCache::serve`]; while it is here nobody serves.
    inbox: Mutex<Option<mpsc::UnboundedReceiver<LookupRequest>>>,
}

/// Counters of a [`CatalogCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Snapshots loaded and swapped in, the first one included.
    pub refreshes: u64,
    /// Refreshes that failed (the previous snapshot stayed).
    pub failures: u64,
    /// Times the catalog connection was re-opened after being lost.
    pub reconnects: u64,
    /// Tables looked up on demand.
    pub lookups: u64,
}

impl CatalogCache {
    /// A cache starting from `catalog` (counted as the first refresh).
    pub fn new(catalog: Catalog) -> CatalogCache {
        let (requests, inbox) = mpsc::unbounded_channel();
        CatalogCache {
            health: Mutex::new(CatalogHealth::Ok {
                loaded_at: catalog.loaded_at(),
            }),
            current: RwLock::new(Arc::new(catalog)),
            refreshing: tokio::sync::Mutex::new(()),
            refreshes: AtomicU64::new(1),
            failures: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            missing: Arc::new(Mutex::new(HashSet::new())),
            temporary: Mutex::new(HashSet::new()),
            requests,
            inbox: Mutex::new(Some(inbox)),
        }
    }

    /// Loads a first snapshot through `client` and wraps it.
    pub async fn load(client: &Client) -> Result<CatalogCache, CatalogError> {
        Ok(CatalogCache::new(Catalog::load(client).await?))
    }

    /// The current snapshot. Cheap: an `Arc` clone under a read lock.
    pub fn current(&self) -> Arc<Catalog> {
        // A poisoned lock only means a writer panicked between two pointer
        // operations; the Arc inside is still whole.
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&guard)
    }

    /// Loads a new snapshot through `client` (see [`Catalog::load`] for what
    /// the client must allow) and makes it current. On error the previous
    /// snapshot stays and the failure is counted.
    pub async fn refresh(&self, client: &Client) -> Result<Arc<Catalog>, CatalogError> {
        let _serial = self.refreshing.lock().await;
        match Catalog::load(client).await {
            Ok(catalog) => {
                let catalog = Arc::new(catalog);
                self.swap(Arc::clone(&catalog));
                // Names not found before may exist now.
                self.missing.lock().unwrap_or_else(|p| p.into_inner()).clear();
                // An oid is reused only after its table is dropped.
                self.temporary.lock().unwrap_or_else(|p| p.into_inner()).clear();
                self.refreshes.fetch_add(1, Ordering::Relaxed);
                self.set_health(CatalogHealth::Ok {
                    loaded_at: catalog.loaded_at(),
                });
                Ok(catalog)
            }
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let since = match self.health() {
                    CatalogHealth::Failing { since, .. } => since,
                    _ => SystemTime::now(),
                };
                self.set_health(CatalogHealth::Failing {
                    since,
                    error: error.to_string(),
                });
                Err(error)
            }
        }
    }

    fn swap(&self, catalog: Arc<Catalog>) {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        *guard = catalog;
    }

    fn set_health(&self, health: CatalogHealth) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = health;
    }

    /// How the catalog connection is doing.
    pub fn health(&self) -> CatalogHealth {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `what` was looked up since the last refresh and not found.
    pub fn is_missing(&self, what: &TableLookup) -> bool {
        self.missing.lock().unwrap_or_else(|p| p.into_inner()).contains(what)
    }

    /// Whether the oid was looked up and found to be a temporary table.
    pub fn is_temporary(&self, oid: u32) -> bool {
        self.temporary.lock().unwrap_or_else(|p| p.into_inner()).contains(&oid)
    }

    fn mark_missing(&self, what: TableLookup) {
        self.missing.lock().unwrap_or_else(|p| p.into_inner()).insert(what);
    }

    /// Asks [`CatalogCache::serve`] to look `what` up. The future completes
    /// once the current snapshot holds the table or `what` is marked
    /// missing (also when the lookup failed, the cache is no longer served,
    /// or no answer came within 5 s): the caller then looks again, and
    /// never waits twice for one name before the next refresh. Requests
    /// made before `serve` starts wait for it.
    pub fn lookup(&self, what: TableLookup) -> impl Future<Output = ()> + Send + 'static {
        let (done, answered) = oneshot::channel();
        let request = LookupRequest {
            what: what.clone(),
            done,
        };
        let sent = self.requests.send(request).is_ok();
        let missing = Arc::clone(&self.missing);
        async move {
            // A dropped request (serving stopped) also ends the wait.
            let answered = sent && matches!(tokio::time::timeout(LOOKUP_WAIT, answered).await, Ok(Ok(())));
            if !answered {
                missing.lock().unwrap_or_else(|p| p.into_inner()).insert(what);
            }
        }
    }

    /// Serves one lookup on `client`; returns the error if it failed.
    async fn answer(&self, client: &Client, request: LookupRequest) -> Option<CatalogError> {
        let current = self.current();
        let known = match &request.what {
            TableLookup::Oid(oid) => current.table_by_oid(*oid).is_some(),
            TableLookup::Name { schema, name, path } => current.table(schema.as_deref(), name, path).is_some(),
        };
        let temporary = matches!(request.what, TableLookup::Oid(oid) if self.is_temporary(oid));
        if known || temporary || self.is_missing(&request.what) {
            let _ = request.done.send(());
            return None;
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        // Serialized with refreshes, so a snapshot grown from an older one
        // never replaces a newer load.
        let _serial = self.refreshing.lock().await;
        let mut failed = None;
        match Catalog::lookup_table(client, &request.what).await {
            Ok(LookedUp::Table(table)) => {
                tracing::debug!(table = %table.name, "table looked up");
                self.swap(Arc::new(self.current().with_table(*table)));
            }
            Ok(LookedUp::Temporary) => match request.what {
                TableLookup::Oid(oid) => {
                    self.temporary.lock().unwrap_or_else(|p| p.into_inner()).insert(oid);
                }
                what => self.mark_missing(what),
            },
            Ok(LookedUp::Missing) => self.mark_missing(request.what),
            Err(error) => {
                tracing::warn!(%error, "table lookup failed");
                self.mark_missing(request.what);
                failed = Some(error);
            }
        }
        let _ = request.done.send(());
        failed
    }

    /// Refreshes every `every` until `shutdown` completes; the first refresh
    /// happens after one period. Failures are logged and counted, and the
    /// loop goes on with the previous snapshot. Spawn it on the runtime:
    /// `tokio::spawn(async move { cache.refresh_every(&client, period, stop).await })`.
    pub async fn refresh_every(&self, client: &Client, every: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // The first tick is immediate.
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticks.tick() => {}
            }
            // A shutdown during a load waits for it: dropping `load` midway
            // would leave the connection inside its transaction.
            if let Err(error) = self.refresh(client).await {
                tracing::warn!(%error, "catalog refresh failed; keeping the previous snapshot");
            }
        }
    }

    /// Keeps the cache fresh until `shutdown` completes: refreshes every
    /// `every` through `client`, answers [`CatalogCache::lookup`]s, and when
    /// the connection is lost (a refresh or lookup fails on a closed
    /// client) opens a new one with `connect`, after 100 ms, doubling to
    /// 5 s between attempts, refreshing at once when it is back. While
    /// disconnected, lookups are answered "missing" at once rather than
    /// made to wait. Spawn it on the runtime.
    pub async fn serve<C, F>(&self, client: Client, connect: C, every: Duration, shutdown: impl Future<Output = ()>)
    where
        C: Fn() -> F,
        F: Future<Output = Result<Client, String>>,
    {
        let Some(mut inbox) = self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            tracing::warn!("catalog cache already served");
            return;
        };
        tokio::pin!(shutdown);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // The first tick is immediate.
        let mut client = Some(client);
        let mut pause = RECONNECT_FIRST;
        let mut retry_at = tokio::time::Instant::now();
        loop {
            let Some(c) = &client else {
                tokio::select! {
                    () = &mut shutdown => return,
                    request = inbox.recv() => {
                        if let Some(r) = request {
                            self.mark_missing(r.what);
                            let _ = r.done.send(());
                        }
                        continue;
                    }
                    () = tokio::time::sleep_until(retry_at) => {}
                }
                match connect().await {
                    Ok(c) => {
                        self.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("catalog connection re-opened");
                        pause = RECONNECT_FIRST;
                        if let Err(error) = self.refresh(&c).await {
                            tracing::warn!(%error, "catalog refresh failed; keeping the previous snapshot");
                        }
                        ticks.reset();
                        client = Some(c);
                    }
                    Err(error) => {
                        self.lost(error);
                        pause = (pause * 2).min(RECONNECT_MAX);
                        retry_at = tokio::time::Instant::now() + pause;
                    }
                }
                continue;
            };
            let error = tokio::select! {
                () = &mut shutdown => {
                    // Capture stops at a cutover's flip: see `linger`.
                    if let Some(c) = client.take() {
                        crate::linger::close_later(c);
                    }
                    return;
                }
                _ = ticks.tick() => {
                    // A shutdown during a load waits for it: dropping `load`
                    // midway would leave the connection inside its transaction.
                    match self.refresh(c).await {
                        Ok(_) => None,
                        Err(error) => {
                            tracing::warn!(%error, "catalog refresh failed; keeping the previous snapshot");
                            Some(error.to_string())
                        }
                    }
                }
                request = inbox.recv() => match request {
                    Some(r) => self.answer(c, r).await.map(|e| e.to_string()),
                    None => None,
                },
            };
            if let (Some(error), true) = (error, c.is_closed()) {
                tracing::warn!(%error, "catalog connection lost; re-opening it");
                self.lost(error);
                client = None;
                pause = RECONNECT_FIRST;
                retry_at = tokio::time::Instant::now() + pause;
            }
        }
    }

    /// The connection is gone (or could not be opened again).
    fn lost(&self, error: String) {
        let since = match self.health() {
            CatalogHealth::Reconnecting { since, .. } => since,
            _ => SystemTime::now(),
        };
        self.set_health(CatalogHealth::Reconnecting { since, error });
    }

    /// Refresh counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            refreshes: self.refreshes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            lookups: self.lookups.load(Ordering::Relaxed),
        }
    }
}
