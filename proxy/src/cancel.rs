//! Routing of CancelRequests. A client cancels with the key it was given at
//! startup; the proxy maps that key to whichever backend its session uses
//! now, so the key keeps working after the session moves to another backend.

use crate::net::ServerConn;
use crate::wire::startup::cancel_request;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a cancel for one session goes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    /// Backend host.
    pub host: String,
    /// Backend port.
    pub port: u16,
    /// The backend's process id.
    pub pid: i32,
    /// The backend's secret key.
    pub key: i32,
}

/// The key a client holds → its session's current backend.
#[derive(Debug, Default)]
pub struct CancelMap {
    map: Mutex<HashMap<(i32, i32), CancelTarget>>,
    /// (backend `host:port`, pid) → the pid its session's client was given
    /// at startup, for sessions that moved: a notification another session
    /// receives from it names the pid its client knows.
    moved: Mutex<HashMap<(String, i32), i32>>,
}

impl CancelMap {
    /// An empty map.
    pub fn new() -> Arc<CancelMap> {
        Arc::new(CancelMap::default())
    }

    /// Routes the client key `(pid, key)` to `target` (insert or move).
    pub fn route(&self, client_key: (i32, i32), target: CancelTarget) {
        self.lock().insert(client_key, target);
    }

    /// Forgets a client key when its session ends.
    pub fn remove(&self, client_key: (i32, i32)) {
        self.lock().remove(&client_key);
    }

    /// The current target of a client key.
    pub fn target(&self, client_key: (i32, i32)) -> Option<CancelTarget> {
        self.lock().get(&client_key).cloned()
    }

    /// A session whose client was given `client_pid` now runs on backend
    /// `pid` at `addr` (replacing `previous`, the backend it left).
    pub fn moved(&self, previous: Option<(&str, i32)>, addr: &str, pid: i32, client_pid: i32) {
        let mut m = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, p)) = previous {
            m.remove(&(a.to_owned(), p));
        }
        if pid != client_pid {
            m.insert((addr.to_owned(), pid), client_pid);
        }
    }

    /// The session on backend `pid` at `addr` ended.
    pub fn ended(&self, addr: &str, pid: i32) {
        self.moved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(addr.to_owned(), pid));
    }

    /// The pid the client of the session on backend `pid` at `addr` knows,
    /// if that session moved.
    pub fn client_pid(&self, addr: &str, pid: i32) -> Option<i32> {
        let m = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        if m.is_empty() {
            return None;
        }
        m.get(&(addr.to_owned(), pid)).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, i32), CancelTarget>> {
        // A panic elsewhere while holding this lock leaves the map intact.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client keys whose sessions run on backends with these pids.
    pub fn keys_on(&self, pids: &[i32]) -> Vec<(i32, i32)> {
        self.lock()
            .iter()
            .filter(|(_, t)| pids.contains(&t.pid))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Sends the cancel for `client_key` to its backend. Unknown keys are
    /// ignored, as PostgreSQL does, so a guesser learns nothing.
    pub async fn cancel(&self, client_key: (i32, i32), timeout: Duration) {
        let Some(t) = self.target(client_key) else {
            tracing::debug!(pid = client_key.0, "cancel request with unknown key");
            return;
        };
        let send = async {
            let mut conn = crate::net::connect(&t.host, t.port, timeout, 1024).await?;
            let request = cancel_request(t.pid, t.key);
            // The postmaster closes its end only after signalling the
            // backend; clients (libpq, asyncpg) wait for that close before
            // their next statement, so the caller must not return (and close
            // the client's cancel connection) before it, or a late signal
            // could cancel the client's next statement.
            match &mut conn {
                ServerConn::Tcp(c) => {
                    c.send(&request).await?;
                    while c.fill().await? > 0 {}
                }
                ServerConn::Unix(c) => {
                    c.send(&request).await?;
                    while c.fill().await? > 0 {}
                }
            }
            Ok::<(), std::io::Error>(())
        };
        match tokio::time::timeout(timeout, send).await {
            Ok(Ok(())) => tracing::debug!(backend_pid = t.pid, "cancel forwarded"),
            Ok(Err(e)) => tracing::warn!(backend_pid = t.pid, error = %e, "cancel failed"),
            Err(_) => tracing::warn!(backend_pid = t.pid, "cancel timed out"),
        }
    }
}
