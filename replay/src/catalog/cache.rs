//! The current catalog snapshot, shared by sessions: lookups clone an `Arc`
//! under a lock held for a pointer copy, and refreshes load the new snapshot
//! without any lock readers can see, then swap it in.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_postgres::Client;

use super::{Catalog, CatalogError};

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
}

/// Counters of a [`CatalogCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Snapshots loaded and swapped in, the first one included.
    pub refreshes: u64,
    /// Refreshes that failed (the previous snapshot stayed).
    pub failures: u64,
}

impl CatalogCache {
    /// A cache starting from `catalog` (counted as the first refresh).
    pub fn new(catalog: Catalog) -> CatalogCache {
        CatalogCache {
            current: RwLock::new(Arc::new(catalog)),
            refreshing: tokio::sync::Mutex::new(()),
            refreshes: AtomicU64::new(1),
            failures: AtomicU64::new(0),
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
                self.refreshes.fetch_add(1, Ordering::Relaxed);
                Ok(catalog)
            }
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    fn swap(&self, catalog: Arc<Catalog>) {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        *guard = catalog;
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

    /// Refresh counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            refreshes: self.refreshes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}
