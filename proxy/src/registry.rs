//! The live sessions, for `SHOW SESSIONS`. Each session owns an
//! [`SessionInfo`] that it updates with relaxed atomics as it goes; the
//! console reads a snapshot. Nothing here is on a session's critical path
//! except those atomic stores.

use crate::session::effects::Pin;
use crate::session::route::Destination;
use crate::session::state::Phase;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What SHOW SESSIONS reports for a session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// Authenticating or opening its backend.
    Startup,
    /// One of the relay phases.
    Relay(Phase),
    /// Waiting at the closed gate.
    Held,
    /// Switching to another backend.
    Moving,
}

impl Shown {
    fn code(self) -> u8 {
        match self {
            Shown::Startup => 0,
            Shown::Relay(Phase::Idle) => 1,
            Shown::Relay(Phase::Active) => 2,
            Shown::Relay(Phase::InTransaction) => 3,
            Shown::Relay(Phase::Failed) => 4,
            Shown::Held => 5,
            Shown::Relay(Phase::Copying) => 6,
            Shown::Moving => 7,
        }
    }

    fn from_code(c: u8) -> Shown {
        match c {
            1 => Shown::Relay(Phase::Idle),
            2 => Shown::Relay(Phase::Active),
            3 => Shown::Relay(Phase::InTransaction),
            4 => Shown::Relay(Phase::Failed),
            5 => Shown::Held,
            6 => Shown::Relay(Phase::Copying),
            7 => Shown::Moving,
            _ => Shown::Startup,
        }
    }

    /// The name shown to DBAs.
    pub fn name(self) -> &'static str {
        match self {
            Shown::Startup => "startup",
            Shown::Relay(p) => p.name(),
            Shown::Held => "held at gate",
            Shown::Moving => "moving",
        }
    }
}

/// One session's live facts.
#[derive(Debug)]
pub struct SessionInfo {
    /// Proxy-wide session number.
    pub id: u64,
    /// Client address.
    pub client: SocketAddr,
    /// User the client logged in as.
    pub user: String,
    /// Database the client asked for.
    pub database: String,
    /// application_name from startup.
    pub application: String,
    /// When the client connected.
    pub connected_at: SystemTime,
    state: AtomicU8,
    backend_pid: AtomicI32,
    /// The database the session's backend is connected to, as `[source]`
    /// names it (the client's, or `source.database`), wherever the backend
    /// is; unset for the admin console.
    backend_database: std::sync::OnceLock<String>,
    /// Whether the backend is on `[target]` (else on `[source]`).
    on_target: std::sync::atomic::AtomicBool,
    queries: AtomicU64,
    statements: AtomicU32,
    settings: AtomicU32,
    listens: AtomicU32,
    pins: AtomicU8,
    /// The capture epoch the session's open transaction runs under, or
    /// [`AT_BOUNDARY`] between transactions; see [`SessionInfo::enter_tx`].
    tx_epoch: AtomicU64,
    /// The route epoch of the session's current backend.
    route_epoch: AtomicU64,
    /// The latest route epoch the session has seen an order for.
    seen_epoch: AtomicU64,
    move_state: AtomicU8,
    /// When the last move finished, in the router's microseconds.
    moved_at: AtomicU64,
    moves: AtomicU64,
    /// `host:port` of the current backend.
    backend_addr: Mutex<String>,
    /// Why the last move failed or the session was closed by one.
    move_error: Mutex<Option<String>>,
    closed: std::sync::atomic::AtomicBool,
    /// Asked to end its open transaction (see [`SessionInfo::end_transaction`]).
    end_tx: tokio::sync::Notify,
}

/// Where a session stands with the route's latest move order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveState {
    /// On a backend of the current epoch (or never asked to move).
    Current,
    /// Opening its next backend.
    Opening,
    /// Its next backend is open; it switches when the route says go.
    Opened,
    /// Waiting for its transaction boundary.
    Waiting,
    /// Switching now.
    Moving,
    /// Something pins it to its backend (see `pinned_by`).
    Pinned,
    /// The last move failed; it stays on its backend (see `move_error`).
    Failed,
}

impl MoveState {
    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> MoveState {
        match c {
            1 => MoveState::Opening,
            2 => MoveState::Opened,
            3 => MoveState::Waiting,
            4 => MoveState::Moving,
            5 => MoveState::Pinned,
            6 => MoveState::Failed,
            _ => MoveState::Current,
        }
    }

    /// Whether the session's next backend is open (or it has nothing to open).
    pub fn opened(self) -> bool {
        !matches!(self, MoveState::Opening)
    }

    /// The name SHOW SESSIONS shows.
    pub fn name(self) -> &'static str {
        match self {
            MoveState::Current => "current",
            MoveState::Opening => "opening",
            MoveState::Opened => "opened",
            MoveState::Waiting => "waiting for boundary",
            MoveState::Moving => "moving",
            MoveState::Pinned => "pinned",
            MoveState::Failed => "move failed",
        }
    }
}

/// [`SessionInfo::tx_epoch`] of a session between transactions.
pub const AT_BOUNDARY: u64 = u64::MAX;
/// [`SessionInfo::tx_epoch`] of a session that is leaving its boundary and
/// has not read the capture epoch yet.
pub const ENTERING: u64 = u64::MAX - 1;

impl SessionInfo {
    /// The route epoch of the current backend.
    pub fn route_epoch(&self) -> u64 {
        self.route_epoch.load(SeqCst)
    }

    /// The session has seen the order of `epoch`, and is now in `state`.
    pub fn saw_order(&self, epoch: u64, state: MoveState) {
        self.set_move_state(state);
        self.seen_epoch.fetch_max(epoch, SeqCst);
    }

    /// The latest order epoch the session has seen.
    pub fn seen_epoch(&self) -> u64 {
        self.seen_epoch.load(SeqCst)
    }

    /// Where the session stands with the latest move order.
    pub fn move_state(&self) -> MoveState {
        MoveState::from_code(self.move_state.load(SeqCst))
    }

    /// Sets the move state.
    pub fn set_move_state(&self, s: MoveState) {
        self.move_state.store(s.code(), SeqCst);
    }

    /// The session is on a backend opened under `epoch` on `server` at
    /// `host:port` since `at` (router microseconds); `moved` counts a move.
    pub fn set_backend(&self, epoch: u64, server: Destination, addr: String, pid: i32, at: u64, moved: bool) {
        self.on_target.store(server == Destination::Target, SeqCst);
        *lock(&self.backend_addr) = addr;
        self.backend_pid.store(pid, Relaxed);
        self.moved_at.store(at, SeqCst);
        if moved {
            self.moves.fetch_add(1, Relaxed);
        }
        *lock(&self.move_error) = None;
        self.set_move_state(MoveState::Current);
        self.route_epoch.store(epoch, SeqCst);
    }

    /// When the last move finished (router microseconds).
    pub fn moved_at_micros(&self) -> u64 {
        self.moved_at.load(SeqCst)
    }

    /// Moves so far.
    pub fn moves(&self) -> u64 {
        self.moves.load(Relaxed)
    }

    /// `host:port` of the current backend.
    pub fn backend_addr(&self) -> String {
        lock(&self.backend_addr).clone()
    }

    /// Records why a move failed (or closed the session).
    pub fn set_move_error(&self, why: Option<String>) {
        *lock(&self.move_error) = why;
    }

    /// Why the last move failed, if it did.
    pub fn move_error(&self) -> Option<String> {
        lock(&self.move_error).clone()
    }

    /// Asks the session to end its open transaction: once nothing of it
    /// is in flight on the backend, the session closes that backend (the
    /// database rolls the transaction back) and tells its client so
    /// (57P01). A session at a boundary by then goes on. The cutover's
    /// `ON_DRAIN_TIMEOUT cancel` uses it for transactions its cancel did
    /// not end.
    pub fn end_transaction(&self) {
        self.end_tx.notify_one();
    }

    /// Resolves once [`SessionInfo::end_transaction`] is asked.
    pub(crate) async fn transaction_end_asked(&self) {
        self.end_tx.notified().await
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Marks the session as leaving its transaction boundary and returns the
    /// capture epoch it reads afterwards. Publishing [`ENTERING`] before
    /// reading the epoch (both sequentially consistent) means a barrier scan
    /// that runs after an epoch change either sees this session entering or
    /// the session sees the new epoch.
    pub fn enter_tx(&self, epoch: &AtomicU64) -> u64 {
        self.tx_epoch.store(ENTERING, SeqCst);
        let e = epoch.load(SeqCst);
        self.tx_epoch.store(e, SeqCst);
        e
    }

    /// Marks the session as back at a transaction boundary.
    pub fn leave_tx(&self) {
        self.tx_epoch.store(AT_BOUNDARY, SeqCst);
    }

    /// The capture epoch of the session's open transaction, [`ENTERING`], or
    /// [`AT_BOUNDARY`].
    pub fn tx_epoch(&self) -> u64 {
        self.tx_epoch.load(SeqCst)
    }

    /// Sets the shown state.
    pub fn set_state(&self, s: Shown) {
        self.state.store(s.code(), Relaxed);
    }

    /// The shown state.
    pub fn state(&self) -> Shown {
        Shown::from_code(self.state.load(Relaxed))
    }

    /// Records the database the backend was opened on (once).
    pub fn set_backend_database(&self, database: &str) {
        let _ = self.backend_database.set(database.to_owned());
    }

    /// The database the session's backend is connected to, as `[source]`
    /// names it, once it has one.
    pub fn backend_database(&self) -> Option<&str> {
        self.backend_database.get().map(String::as_str)
    }

    /// The server the session's backend is on.
    pub fn backend_server(&self) -> Destination {
        if self.on_target.load(SeqCst) {
            Destination::Target
        } else {
            Destination::Source
        }
    }

    /// Records the backend's pid.
    pub fn set_backend_pid(&self, pid: i32) {
        self.backend_pid.store(pid, Relaxed);
    }

    /// The backend pid.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid.load(Relaxed)
    }

    /// Counts a query.
    pub fn count_query(&self) {
        self.queries.fetch_add(1, Relaxed);
    }

    /// Queries so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Relaxed)
    }

    /// Records the sizes of the session's tracked state.
    pub fn set_tracked(
        &self,
        statements: usize,
        settings: usize,
        listens: usize,
        pins: &std::collections::BTreeSet<Pin>,
    ) {
        self.statements.store(statements as u32, Relaxed);
        self.settings.store(settings as u32, Relaxed);
        self.listens.store(listens as u32, Relaxed);
        let mask = pins.iter().fold(0u8, |m, p| m | (1 << (*p as u8)));
        self.pins.store(mask, Relaxed);
    }

    /// (prepared statements, settings, listen channels).
    pub fn tracked(&self) -> (u32, u32, u32) {
        (
            self.statements.load(Relaxed),
            self.settings.load(Relaxed),
            self.listens.load(Relaxed),
        )
    }

    /// What pins the session, by name.
    pub fn pins(&self) -> Vec<&'static str> {
        let mask = self.pins.load(Relaxed);
        [Pin::TempTable, Pin::AdvisoryLock, Pin::HoldCursor]
            .into_iter()
            .filter(|p| mask & (1 << (*p as u8)) != 0)
            .map(Pin::name)
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// All live sessions.
#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    sessions: Mutex<BTreeMap<u64, Arc<SessionInfo>>>,
}

impl Registry {
    /// Adds a session; it is removed when the returned guard drops.
    pub fn add(self: &Arc<Self>, client: SocketAddr, user: &str, database: &str, application: &str) -> Registered {
        let id = self.next_id.fetch_add(1, Relaxed) + 1;
        let info = Arc::new(SessionInfo {
            id,
            client,
            user: user.to_owned(),
            database: database.to_owned(),
            application: application.to_owned(),
            connected_at: SystemTime::now(),
            state: AtomicU8::new(0),
            backend_pid: AtomicI32::new(0),
            backend_database: std::sync::OnceLock::new(),
            on_target: std::sync::atomic::AtomicBool::new(false),
            queries: AtomicU64::new(0),
            statements: AtomicU32::new(0),
            settings: AtomicU32::new(0),
            listens: AtomicU32::new(0),
            pins: AtomicU8::new(0),
            tx_epoch: AtomicU64::new(AT_BOUNDARY),
            route_epoch: AtomicU64::new(0),
            seen_epoch: AtomicU64::new(0),
            move_state: AtomicU8::new(0),
            moved_at: AtomicU64::new(0),
            moves: AtomicU64::new(0),
            backend_addr: Mutex::new(String::new()),
            move_error: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
            end_tx: tokio::sync::Notify::new(),
        });
        self.lock().insert(id, info.clone());
        Registered {
            registry: self.clone(),
            info,
        }
    }

    /// A snapshot of all sessions, by id.
    pub fn snapshot(&self) -> Vec<Arc<SessionInfo>> {
        self.lock().values().cloned().collect()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<SessionInfo>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A session's place in the registry; removes it on drop.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    /// The session's info.
    pub info: Arc<SessionInfo>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.info.closed.store(true, SeqCst);
        self.registry.lock().remove(&self.info.id);
    }
}
