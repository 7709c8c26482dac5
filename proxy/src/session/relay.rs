//! The relay loop of one session: bytes flow both ways as whole messages,
//! each framed once and forwarded as its original bytes, while the session
//! state follows them. One task waits on four readiness events (client and
//! server, readable and writable), so a large result never blocks a large
//! request the other way, and buffers stay bounded by back-pressure.
//!
//! The freeze gate is checked exactly when a message would take the session
//! out of a transaction boundary; a held message stays in hand until the gate
//! reopens, while server messages (notifications) keep flowing.

use super::backend::Backend;
use super::moving::{self, Login};
use super::route::Route;
use super::state::SessionState;
pub(crate) use follow::Moved;
use follow::{sleep_until, Ahead};

mod answers;
mod capture;
mod end;
mod follow;
use crate::capture::session::{ClientAction, SessionCapture, StatementNote};
use crate::gate::Busy;
use crate::input::{InputError, InputGuard};
use crate::net::Stream;
use crate::net::{self, Conn, Parts, Socket};
use crate::registry::MoveState;
use crate::registry::{SessionInfo, Shown};
use crate::server::Shared;
use crate::stats::{latency_histogram, Stats};
use crate::wire::frontend::{tag as ftag, FrontendMessage};
use crate::wire::{Header, WireError};
use bytes::Buf;
use capture::refuse_commit;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_replay::log::{LogWriterHandle, Lsn};
use thiserror::Error;

/// Stop reading from one side while this much is queued for the other.
const HIGH_WATER: usize = 256 * 1024;
/// How often a session folds its latency samples into the shared histogram.
pub(super) const MERGE_EVERY: Duration = Duration::from_millis(200);

/// How a session ended normally.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The client sent Terminate.
    Terminated,
    /// The client closed its socket.
    ClientClosed,
    /// The database closed the connection.
    ServerClosed,
    /// The proxy is shutting down.
    Shutdown,
    /// The route asks the session to move, and it is at a boundary with
    /// nothing in flight.
    Move,
    /// Asked to end its open transaction, with nothing of it in flight.
    TransactionClosed,
}

/// How a session ended abnormally.
#[derive(Debug, Error)]
pub(crate) enum RelayError {
    /// The client broke the protocol; it was sent 08P01.
    #[error("client protocol violation: {0}")]
    Protocol(#[from] WireError),
    /// The database sent bytes that do not frame.
    #[error("database protocol violation: {0}")]
    ServerProtocol(WireError),
    /// A socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A client message overdue or over the shared input budget.
    #[error("client input: {0}")]
    Input(#[from] InputError),
}

pub(crate) struct Relay<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) info: &'a Arc<SessionInfo>,
    pub(super) state: SessionState<StatementNote>,
    /// The route, and the epoch of the current backend.
    route: tokio::sync::watch::Receiver<Route>,
    pub(super) epoch: u64,
    /// A move order (step Go) newer than the backend.
    pub(super) order: Option<Route>,
    /// The next backend being opened for an order, and once open.
    opening: Option<(u64, OpenWait)>,
    pub(super) opened: Option<(u64, Backend)>,
    /// The session was found pinned after this many queries: retry once it
    /// has run more.
    pub(super) pinned_at: Option<u64>,
    /// The order whose move failed: not retried until the next.
    pub(super) failed_epoch: u64,
    /// Client messages wait for the session to move.
    move_hold: bool,
    /// The route's sender is gone (never while the proxy runs).
    route_gone: bool,
    /// The backend sent a FATAL error (e.g. it was terminated): the
    /// session ends with it and never moves.
    backend_fatal: bool,
    /// The pid the client was given at startup, and the current backend's.
    pub(super) client_pid: i32,
    pub(super) own_pid: i32,
    /// ParameterStatus values the client has been told.
    pub(super) client_params: BTreeMap<String, String>,
    /// Who to open backends as.
    pub(super) login: Login,
    /// The database the current backend is on, and its `host:port`.
    destination: super::route::Destination,
    pub(super) backend_addr: String,
    /// Type OIDs as the client knows them → the current backend's, once the
    /// session moved to another database.
    types: Option<Arc<std::collections::HashMap<u32, u32>>>,
    busy: Busy,
    /// A message waits at the closed gate (at the front of the client's
    /// read buffer).
    held: bool,
    shutting_down: bool,
    /// Asked to end its open transaction (see `SessionInfo::end_transaction`).
    ending_tx: bool,
    latency: Histogram<u64>,
    last_merge: Instant,
    /// The last message forwarded to the client was an error.
    last_was_error: bool,
    /// Write capture, while it is on for this session.
    capture: Option<SessionCapture>,
    /// The capture epoch the session last looked at.
    capture_epoch: u64,
    /// Capture holds a message at the front of the client's read buffer.
    capture_hold: bool,
    /// The log append a held commit waits for.
    log_wait: Option<LogWait>,
    /// The catalog lookup a held message waits for.
    lookup_wait: Option<LookupWait>,
    /// Commit records logged whose COMMIT has not been answered yet, and the
    /// log they are in: each gets a `Settled` marker once the session is
    /// out of its transaction (or gone), so that catch-up reads the source
    /// only once the commit is visible.
    unsettled: Vec<Lsn>,
    settle_log: Option<LogWriterHandle>,
    /// Timeout and budget for client messages still arriving.
    input: InputGuard,
}

type LookupWait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

type OpenWait = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Backend, String>> + Send + 'static>>;

type LogWait = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<switchyard_replay::log::Lsn, switchyard_replay::log::LogError>> + Send>,
>;

impl<'a> Relay<'a> {
    pub(crate) fn new(
        shared: &'a Arc<Shared>,
        info: &'a Arc<SessionInfo>,
        input: InputGuard,
        login: Login,
        first: &Backend,
        epoch: u64,
        destination: super::route::Destination,
    ) -> Relay<'a> {
        Relay {
            shared,
            info,
            state: SessionState::new(),
            route: shared.router.subscribe(),
            epoch,
            order: None,
            opening: None,
            opened: None,
            pinned_at: None,
            failed_epoch: 0,
            move_hold: false,
            route_gone: false,
            backend_fatal: false,
            client_pid: first.key.0,
            own_pid: first.key.0,
            client_params: moving::startup_params(first),
            login,
            destination,
            backend_addr: String::new(),
            types: None,
            busy: Busy::new(shared.gate.clone()),
            held: false,
            shutting_down: false,
            ending_tx: false,
            latency: latency_histogram(),
            last_merge: Instant::now(),
            last_was_error: false,
            capture: None,
            capture_epoch: 0,
            capture_hold: false,
            log_wait: None,
            lookup_wait: None,
            unsettled: Vec::new(),
            settle_log: None,
            input,
        }
    }

    async fn relay<S: Socket>(&mut self, client: &mut Conn<Stream>, server: &mut Conn<S>) -> Result<Ended, RelayError> {
        let mut shutdown = self.shared.shutdown.clone();
        if *shutdown.borrow() {
            return Ok(Ended::Shutdown);
        }
        // Created once: a fresh `changed()` per iteration would register on
        // the watch's shared waiter list (a lock all sessions contend) every time.
        let shutdown_changed = shutdown.changed();
        tokio::pin!(shutdown_changed);
        let info = self.info.clone();
        let mut client = client.parts();
        let mut server = server.parts();
        self.on_route();
        if self.move_hold {
            // Moved with client messages already read: they go to the new backend.
            self.move_hold = false;
            if let Some(end) = self.forward_client(&mut client, &mut server)? {
                return Ok(end);
            }
        }
        loop {
            if self.move_due() && self.can_move(&server) {
                return Ok(Ended::Move);
            }
            self.input.update(client.rbuf)?;
            let read_client = !self.held
                && !self.capture_hold
                && !self.move_hold
                && !self.state.rechecking()
                && server.wbuf.len() < HIGH_WATER;
            if !read_client {
                self.input.not_reading();
            }
            let read_server = client.wbuf.len() < HIGH_WATER;
            let write_client = !client.wbuf.is_empty();
            let write_server = !server.wbuf.is_empty();
            let pinned_deadline = self.pinned_deadline();
            tokio::select! {
                r = net::fill(&mut client.read, client.rbuf), if read_client => {
                    let n = r?;
                    if n == 0 {
                        return Ok(Ended::ClientClosed);
                    }
                    self.input.received(n);
                    self.shared.stats.bytes_from_clients.fetch_add(n as u64, Relaxed);
                    if let Some(end) = self.forward_client(&mut client, &mut server)? {
                        return Ok(end);
                    }
                }
                r = net::fill(&mut server.read, server.rbuf), if read_server => {
                    if r? == 0 {
                        client.try_flush()?;
                        return Ok(Ended::ServerClosed);
                    }
                    let rechecking = self.state.rechecking();
                    self.forward_server(&mut server, &mut client)?;
                    if self.capture_hold || (rechecking && !self.state.rechecking()) {
                        if let Some(end) = self.forward_client(&mut client, &mut server)? {
                            return Ok(end);
                        }
                    }
                }
                r = async { self.log_wait.as_mut().expect("guarded").await }, if self.log_wait.is_some() => {
                    self.log_wait = None;
                    match r {
                        Ok(lsn) => {
                            self.logged_commit(lsn);
                            if let Some(cap) = &mut self.capture {
                                cap.logged();
                            }
                        }
                        Err(e) => {
                            if let Some(cap) = &mut self.capture {
                                refuse_commit(cap, &e);
                            }
                        }
                    }
                    self.run_capture_work(&mut server)?;
                    if let Some(end) = self.forward_client(&mut client, &mut server)? {
                        return Ok(end);
                    }
                }
                () = async { self.lookup_wait.as_mut().expect("guarded").await }, if self.lookup_wait.is_some() => {
                    self.lookup_wait = None;
                    if let Some(cap) = &mut self.capture {
                        cap.looked_up();
                    }
                    self.run_capture_work(&mut server)?;
                    if let Some(end) = self.forward_client(&mut client, &mut server)? {
                        return Ok(end);
                    }
                }
                r = net::write_some(&mut client.write, client.wbuf), if write_client => {
                    r?;
                }
                r = net::write_some(&mut server.write, server.wbuf), if write_server => {
                    r?;
                }
                () = self.busy.wait_turn(), if self.held => {
                    if let Some(end) = self.forward_client(&mut client, &mut server)? {
                        return Ok(end);
                    }
                }
                // Only while the proxy reads: its own back-pressure is not the client's delay.
                e = self.input.overdue(), if read_client && self.input.in_progress() => return Err(e.into()),
                _ = &mut shutdown_changed, if !self.shutting_down => {
                    self.shutting_down = true;
                }
                r = self.route.changed(), if !self.route_gone => {
                    // The router lives as long as the proxy; should it go,
                    // the session just stops following it.
                    self.route_gone = r.is_err();
                    if r.is_ok() {
                        self.on_route();
                        if self.move_hold && !self.move_due() {
                            self.move_hold = false;
                            if let Some(end) = self.forward_client(&mut client, &mut server)? {
                                return Ok(end);
                            }
                        }
                    }
                }
                opened = async { self.opening.as_mut().expect("guarded").1.as_mut().await }, if self.opening.is_some() => {
                    let (epoch, _) = self.opening.take().expect("guarded");
                    match opened {
                        Ok(be) => {
                            self.opened = Some((epoch, be));
                            self.info.set_move_state(MoveState::Opened);
                        }
                        Err(why) => {
                            self.info.set_move_error(Some(why));
                            self.info.set_move_state(MoveState::Failed);
                        }
                    }
                    self.shared.router.notify();
                }
                _ = sleep_until(pinned_deadline), if pinned_deadline.is_some() => {
                    // Pinned past the order's deadline: the move decides.
                    self.pinned_at = None;
                }
                () = info.transaction_end_asked(), if !self.ending_tx => {
                    self.ending_tx = true;
                }
            }
            if self.ending_tx {
                let conv = self.state.conversation();
                if self.state.at_boundary() {
                    // It ended by itself.
                    self.ending_tx = false;
                } else if conv.is_empty() && !conv.unsynced() {
                    // Nothing of it is in flight (a COMMIT sent is waited
                    // for): closing the backend rolls it back.
                    return Ok(Ended::TransactionClosed);
                }
            }
            if self.shutting_down && self.state.at_boundary() && client.wbuf.is_empty() {
                return Ok(Ended::Shutdown);
            }
        }
    }

    fn count_sent(&self, n: usize) {
        self.shared.stats.bytes_to_clients.fetch_add(n as u64, Relaxed);
    }

    /// Forwards every whole client message buffered, stopping at a closed
    /// gate (or a commit capture holds): the held message stays at the
    /// front of the read buffer.
    fn forward_client<S: Socket>(
        &mut self,
        client: &mut Parts<'_, Stream>,
        server: &mut Parts<'_, S>,
    ) -> Result<Option<Ended>, RelayError> {
        let now = Instant::now();
        let mut end = None;
        let mut off = 0;
        // Bytes before `from` are already on their way to the server.
        let mut from = 0;
        self.held = false;
        self.capture_hold = false;
        loop {
            let len = match Header::parse(&client.rbuf[off..], client.limit)? {
                Header::Need(_) => break,
                Header::Ready { len, .. } => len,
            };
            let msg = FrontendMessage::new(&client.rbuf[off..off + len]);
            if msg.tag() == ftag::TERMINATE {
                end = Some(Ended::Terminated);
                break;
            }
            if !self.busy.is_busy() && self.state.at_boundary() {
                // The latest route and shutdown, not what the loop last
                // polled: a session released by the gate while the route
                // flips (or the proxy stops) must not start on the old
                // backend.
                if *self.shared.shutdown.borrow() {
                    self.shutting_down = true;
                }
                if self.route.has_changed().unwrap_or(false) {
                    self.on_route();
                }
                if self.shutting_down {
                    end = Some(Ended::Shutdown);
                    break;
                }
                if self.move_due() {
                    // Sent to the next backend, once the session has moved.
                    self.move_hold = true;
                    break;
                }
                if !self.busy.try_enter() {
                    self.held = true;
                    self.info.set_state(Shown::Held);
                    break;
                }
                self.adopt_capture(server)?;
                if self.capture.as_ref().is_some_and(SessionCapture::has_work) {
                    // Capture's own first request (the probe of what names
                    // resolve through) goes ahead of the batch, a
                    // re-prepare included: behind a re-prepare that fails,
                    // the server would skip it to the client's Sync, and
                    // capture, waiting for its answer, would hold that
                    // Sync forever.
                    server.wbuf.extend_from_slice(&client.rbuf[from..off]);
                    from = off;
                    self.run_capture_work(server)?;
                }
            }
            if matches!(msg.tag(), ftag::BIND | ftag::DESCRIBE) {
                match self.prepare_ahead(msg, server, &client.rbuf[from..off])? {
                    Ahead::Nothing => {}
                    Ahead::Sent => from = off,
                    Ahead::Hold => {
                        from = off;
                        break;
                    }
                    Ahead::Replaced => {
                        from = off + len;
                        off += len;
                        continue;
                    }
                }
            }
            if let Some(cap) = &mut self.capture {
                let action = cap.on_client(msg, self.state.statements_mut())?;
                let has_work = !matches!(action, ClientAction::Forward) || cap.has_work();
                let mut released = false;
                if has_work {
                    // Queued, not written: one send for the whole batch.
                    server.wbuf.extend_from_slice(&client.rbuf[from..off]);
                    from = off;
                    released = self.run_capture_work(server)?;
                }
                match action {
                    ClientAction::Forward => {}
                    ClientAction::Replace(out) => {
                        self.send_own(server, out);
                        from = off + len;
                    }
                    // The log took the keys at once: present the message again.
                    ClientAction::Hold if released => continue,
                    ClientAction::Hold => {
                        self.capture_hold = true;
                        break;
                    }
                }
            }
            let entry = self.state.on_client(msg, now)?;
            if let Some(cap) = &mut self.capture {
                cap.client_sent(entry);
            }
            if matches!(msg.tag(), ftag::QUERY | ftag::SYNC | ftag::FUNCTION_CALL) {
                Stats::bump(&self.shared.stats.queries);
                self.info.count_query();
            }
            off += len;
        }
        // Everything framed so far goes out as one write, straight from the
        // read buffer when nothing else is queued.
        server.forward(&client.rbuf[from..off])?;
        client.rbuf.advance(off);
        if self.state.at_boundary() && !self.capture_hold {
            // E.g. a lone Flush: it took the gate but leaves nothing in flight.
            self.busy.leave();
            self.info.leave_tx();
        }
        if !self.held {
            self.info.set_state(Shown::Relay(self.state.phase()));
        }
        server.try_flush()?;
        Ok(end)
    }
}
