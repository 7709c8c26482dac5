//! The proxy-wide route: which database serves sessions now, under an
//! epoch. Every new login follows it, and every session follows it at its
//! next transaction boundary with nothing in flight: it moves to a fresh
//! backend there (see `moving.rs`). A move is ordered in two steps so that
//! the switch itself costs no connection setup: first every session opens
//! its next backend in the background ([`Step::Open`]), then the route
//! flips ([`Step::Go`]) and each session swaps at its boundary.
//!
//! [`reconnect`] is the primitive the console's `RECONNECT` and the cutover
//! drive: it publishes a new epoch, waits for the sessions, and reports.

use crate::config::{Config, DatabaseConfig};
use crate::registry::{MoveState, SessionInfo};
use crate::server::Shared;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{watch, Notify};

/// A database the proxy can route sessions to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `[source]`.
    Source,
    /// `[target]`.
    Target,
}

impl Destination {
    /// The name used on the console.
    pub fn name(self) -> &'static str {
        match self {
            Destination::Source => "source",
            Destination::Target => "target",
        }
    }

    /// The destination the console calls `name`.
    pub fn from_name(name: &str) -> Option<Destination> {
        [Destination::Source, Destination::Target]
            .into_iter()
            .find(|d| d.name() == name)
    }

    /// Its connection settings, if configured.
    pub fn config(self, config: &Config) -> Option<&DatabaseConfig> {
        match self {
            Destination::Source => Some(&config.source),
            Destination::Target => config.target.as_ref(),
        }
    }
}

/// Where a move order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Sessions open their next backend and keep it ready; none switches.
    Open,
    /// Sessions switch at their next boundary.
    Go,
    /// The order was called off before the switch: sessions stay on their
    /// backend and close the one they opened for it.
    Cancelled,
}

/// What a session that cannot move (a temp table, a session advisory lock,
/// a WITH HOLD cursor) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinnedPolicy {
    /// Stay on its backend and move once nothing pins it any more. Right
    /// when the old backend stays valid (a fresh backend of the same
    /// database).
    Stay,
    /// Wait for the order's deadline, then close the session with an error
    /// that tells the client to reconnect. Right when the old database must
    /// stop serving (another database).
    Close,
}

/// What to do for another migration once a cutover moved traffic to
/// `[target]`.
pub const NEXT_MIGRATION: &str = "for another migration, name that database as [source] in the config (and the \
     next one as [target]), set capture.log_dir to the current cutover.target_log_dir (capture on it resumes \
     there), and restart the proxy";

/// The route every session follows.
#[derive(Debug, Clone)]
pub struct Route {
    /// Bumped by every move order; a session whose backend was opened under
    /// an older epoch moves.
    pub epoch: u64,
    /// The database new backends are opened on.
    pub destination: Destination,
    /// Whether sessions only prepare or switch.
    pub step: Step,
    /// What pinned sessions do.
    pub pinned: PinnedPolicy,
    /// When pinned sessions give up waiting (with [`PinnedPolicy::Close`]).
    pub deadline: Option<Instant>,
    /// Where a new login goes, and the epoch it starts at: the destination
    /// once the order says go, the old one until then (a login during the
    /// open step must not reach a database before the switch).
    pub serving: (u64, Destination),
    /// The one database the route concerns when it leads to another server
    /// (the migrated one): sessions of other databases stay on the source.
    pub database: Option<String>,
    /// When set, how many sessions open their next backend at once (each
    /// holds a permit while it opens and warms it); all at once otherwise.
    pub opening: Option<Arc<tokio::sync::Semaphore>>,
}

impl Route {
    /// The epoch and database a new login starts on.
    pub fn for_login(&self) -> (u64, Destination) {
        self.serving
    }

    /// Where a login to `database` (as named on the source) goes.
    pub fn for_login_to(&self, database: &str) -> (u64, Destination) {
        match &self.database {
            Some(d) if d != database => (self.serving.0, Destination::Source),
            _ => self.serving,
        }
    }

    /// Whether the route concerns a session whose backend is on `database`.
    pub fn concerns(&self, database: Option<&str>) -> bool {
        match &self.database {
            Some(d) => database == Some(d.as_str()),
            None => true,
        }
    }
}

/// The shared route, with what [`reconnect`] needs to wait on sessions.
#[derive(Debug)]
pub struct Router {
    tx: watch::Sender<Route>,
    /// Sessions signal here when their move state changes.
    changed: Notify,
    /// A move order is in progress (one at a time).
    busy: AtomicBool,
    /// The instant move times are measured from.
    base: Instant,
}

impl Default for Router {
    fn default() -> Self {
        Router::new()
    }
}

impl Router {
    /// A route to the source at epoch 0.
    pub fn new() -> Router {
        Router::starting_at(Destination::Source, None)
    }

    /// A route to `destination` at epoch 0, for sessions of `database`
    /// (all when `None`).
    pub fn starting_at(destination: Destination, database: Option<String>) -> Router {
        let (tx, _) = watch::channel(Route {
            epoch: 0,
            destination,
            step: Step::Go,
            pinned: PinnedPolicy::Stay,
            deadline: None,
            serving: (0, destination),
            database,
            opening: None,
        });
        Router {
            tx,
            changed: Notify::new(),
            busy: AtomicBool::new(false),
            base: Instant::now(),
        }
    }

    /// The route now.
    pub fn current(&self) -> Route {
        self.tx.borrow().clone()
    }

    /// Whether a cutover moved new logins to `[target]`.
    pub fn on_target(&self) -> bool {
        self.tx.borrow().serving.1 == Destination::Target
    }

    /// A receiver that wakes on every route change.
    pub fn subscribe(&self) -> watch::Receiver<Route> {
        self.tx.subscribe()
    }

    /// A session's move state changed.
    pub fn notify(&self) {
        self.changed.notify_one();
    }

    /// Microseconds since the router's base instant, for [`SessionInfo`]'s
    /// move timestamps.
    pub fn now_micros(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    fn publish(&self, route: Route) {
        self.tx.send_replace(route);
    }
}

/// A move order.
#[derive(Debug, Clone)]
pub struct MoveRequest {
    /// Where sessions go.
    pub to: Destination,
    /// How long to wait for every session (and, with
    /// [`PinnedPolicy::Close`], for pinned ones to unpin).
    pub timeout: Duration,
    /// What pinned sessions do; by default [`PinnedPolicy::Stay`] for the
    /// database sessions already use and [`PinnedPolicy::Close`] for another.
    pub pinned: Option<PinnedPolicy>,
    /// How many sessions open their next backend at once, each turn resting
    /// as long as its opening took (50 ms at most) before the next session
    /// takes it; all at once, without rests, when `None`. Each backend's
    /// start and warm-up cost the server CPU, which a busy database takes
    /// from the transactions running meanwhile.
    pub open_at_once: Option<usize>,
}

/// What a move order achieved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MoveReport {
    /// The epoch the order published.
    pub epoch: u64,
    /// Client sessions when the order was given.
    pub sessions: usize,
    /// Sessions now on a backend of the new epoch.
    pub moved: usize,
    /// Sessions still in a transaction (or with work in flight) at the
    /// timeout: they move at their next boundary.
    pub waiting: usize,
    /// Sessions that stay on their backend because something pins them.
    pub pinned: usize,
    /// Sessions closed by the move (pinned past the deadline, or a failed
    /// move to another database).
    pub closed: usize,
    /// Sessions whose client left while the order ran.
    pub left: usize,
    /// Sessions whose move failed; they stay on their backend.
    pub failed: usize,
    /// Time to open every session's next backend.
    pub open_ms: f64,
    /// Time from the route flip to the last session moved.
    pub move_ms: f64,
    /// The sessions counted in `closed`, with why each was closed.
    pub closed_why: Vec<(u64, String)>,
}

/// Why a move order could not run.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MoveError {
    /// `TO target` without a `[target]` section.
    #[error("no [target] is configured; add one to the config file to move sessions to it")]
    NoTarget,
    /// Another order is running.
    #[error("another RECONNECT (or cutover) is moving sessions; wait for it to finish")]
    Busy,
    /// The order's task ended abnormally (the proxy is shutting down).
    #[error("the move order was interrupted: {0}")]
    Interrupted(String),
}

/// Whether a registered session is a client session with a backend (not
/// the console, not one still logging in).
pub(crate) fn is_client(shared: &Shared, s: &SessionInfo) -> bool {
    s.database != shared.config.admin_database && s.backend_pid() != 0
}

/// Moves every client session to a fresh backend on `req.to`: opens them
/// all first, then flips the route, then waits (up to `req.timeout`) for
/// every session to reach a boundary and switch. The order runs on its own
/// task: a caller that goes away (a console client that disconnects) does
/// not leave the route half-way, with every session holding a second
/// backend open.
pub async fn reconnect(shared: &Arc<Shared>, req: MoveRequest) -> Result<MoveReport, MoveError> {
    let shared = shared.clone();
    let run = async move {
        let timeout = req.timeout;
        let order = Order::open(&shared, req, timeout / 2).await?;
        Ok(order.go().await)
    };
    match tokio::spawn(run).await {
        Ok(r) => r,
        Err(e) => Err(MoveError::Interrupted(e.to_string())),
    }
}

/// A move order past its first step: every session has opened (or tried
/// to open) its next backend, and none has switched. [`Order::go`] flips
/// the route; dropping the order without going cancels it, and every
/// session closes the backend it opened for it.
#[derive(Debug)]
pub struct Order {
    shared: Arc<Shared>,
    route: Route,
    sessions: Vec<Arc<SessionInfo>>,
    report: MoveReport,
    /// Where sessions were before the order.
    from: Destination,
    gone: bool,
}

impl Order {
    /// Publishes a move order to `req.to` and waits, at most `open_for`,
    /// until every client session has opened its next backend. The switch
    /// waits until `req.timeout` from now.
    pub async fn open(shared: &Arc<Shared>, req: MoveRequest, open_for: Duration) -> Result<Order, MoveError> {
        let router = &shared.router;
        if req.to.config(&shared.config).is_none() {
            return Err(MoveError::NoTarget);
        }
        if router.busy.swap(true, SeqCst) {
            return Err(MoveError::Busy);
        }
        let started = Instant::now();
        let before = router.current();
        let pinned = req.pinned.unwrap_or(if before.destination == req.to {
            PinnedPolicy::Stay
        } else {
            PinnedPolicy::Close
        });
        let epoch = before.epoch + 1;
        let route = Route {
            epoch,
            destination: req.to,
            step: Step::Open,
            pinned,
            deadline: Some(started + req.timeout),
            serving: before.serving,
            // Another server holds only the migrated database.
            database: if req.to == Destination::Source {
                None
            } else {
                shared.config.capture_database().map(str::to_owned)
            },
            opening: req
                .open_at_once
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
        };
        let sessions: Vec<Arc<SessionInfo>> = shared
            .sessions
            .snapshot()
            .into_iter()
            .filter(|s| is_client(shared, s) && route.concerns(s.backend_database()))
            .collect();
        let report = MoveReport {
            epoch,
            sessions: sessions.len(),
            ..MoveReport::default()
        };
        router.publish(route.clone());
        let order = Order {
            shared: shared.clone(),
            route,
            sessions,
            report,
            from: before.destination,
            gone: false,
        };
        wait_until(router, started + open_for, || order.all_opened()).await;
        let mut order = order;
        order.report.open_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(order)
    }

    fn all_opened(&self) -> bool {
        let epoch = self.route.epoch;
        self.sessions
            .iter()
            .all(|s| s.is_closed() || s.route_epoch() >= epoch || (s.seen_epoch() >= epoch && s.move_state().opened()))
    }

    /// Sessions whose next backend could not be opened, with why.
    pub fn failed_to_open(&self) -> Vec<(u64, String)> {
        let epoch = self.route.epoch;
        self.sessions
            .iter()
            .filter(|s| !s.is_closed() && s.route_epoch() < epoch)
            .filter(|s| s.seen_epoch() < epoch || matches!(s.move_state(), MoveState::Opening | MoveState::Failed))
            .map(|s| {
                let why = match s.move_state() {
                    MoveState::Failed => s
                        .move_error()
                        .unwrap_or_else(|| "the backend could not be opened".to_owned()),
                    _ => "its next backend was not open in time".to_owned(),
                };
                (s.id, why)
            })
            .collect()
    }

    /// Pinned sessions are closed from `when` on rather than waited for.
    pub fn close_pinned_at(&mut self, when: Instant) {
        self.route.deadline = Some(when);
    }

    /// What the order did so far.
    pub fn report(&self) -> &MoveReport {
        &self.report
    }

    /// Flips the route: every session switches at its next boundary. Waits
    /// until the order's deadline for them, and reports.
    pub async fn go(mut self) -> MoveReport {
        self.gone = true;
        let router = &self.shared.router;
        let epoch = self.route.epoch;
        let pinned = self.route.pinned;
        let deadline = self.route.deadline.unwrap_or_else(Instant::now);
        // Sessions that logged in since the order opened move too.
        let shared = self.shared.clone();
        let route = &self.route;
        self.sessions = shared
            .sessions
            .snapshot()
            .into_iter()
            .filter(|s| is_client(&shared, s) && route.concerns(s.backend_database()))
            .collect();
        self.report.sessions = self.sessions.len();
        let go = router.now_micros();
        self.route.step = Step::Go;
        self.route.serving = (epoch, self.route.destination);
        router.publish(self.route.clone());
        // Pinned sessions close themselves at the deadline: a moment more lets
        // the report count them.
        let settle = match pinned {
            PinnedPolicy::Stay => Duration::ZERO,
            PinnedPolicy::Close => Duration::from_secs(1),
        };
        let sessions = &self.sessions;
        wait_until(router, deadline + settle, || {
            sessions.iter().all(|s| {
                s.is_closed()
                    || s.route_epoch() >= epoch
                    || matches!(s.move_state(), MoveState::Failed | MoveState::Pinned) && pinned == PinnedPolicy::Stay
            })
        })
        .await;
        let mut report = std::mem::take(&mut self.report);
        let mut last = go;
        for s in sessions {
            if s.route_epoch() >= epoch {
                report.moved += 1;
                last = last.max(s.moved_at_micros());
            } else if let Some(why) = s.move_error().filter(|_| s.is_closed()) {
                report.closed += 1;
                report.closed_why.push((s.id, why));
            } else if s.is_closed() {
                report.left += 1;
            } else {
                match s.move_state() {
                    MoveState::Pinned => report.pinned += 1,
                    MoveState::Failed => report.failed += 1,
                    _ => report.waiting += 1,
                }
            }
        }
        report.move_ms = last.saturating_sub(go) as f64 / 1e3;
        report
    }
}

impl Drop for Order {
    fn drop(&mut self) {
        if !self.gone {
            // Cancelled before the switch: sessions stay where they are and
            // close what they opened for it.
            let mut route = self.route.clone();
            route.step = Step::Cancelled;
            route.destination = self.from;
            route.serving = (route.epoch, self.from);
            self.shared.router.publish(route);
        }
        self.shared.router.busy.store(false, SeqCst);
    }
}

/// Waits until `done()` or `deadline`, re-checking whenever a session
/// reports and at least every 5 ms.
async fn wait_until(router: &Router, deadline: Instant, done: impl Fn() -> bool) {
    loop {
        if done() {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let tick = (deadline - now).min(Duration::from_millis(5));
        let _ = tokio::time::timeout(tick, router.changed.notified()).await;
    }
}
