//! The relay loop of one session: bytes flow both ways as whole messages,
//! each framed once and forwarded as its original bytes, while the session
//! state follows them. One task waits on four readiness events (client and
//! server, readable and writable), so a large result never blocks a large
//! request the other way, and buffers stay bounded by back-pressure.
//!
//! The freeze gate is checked exactly when a message would take the session
//! out of a transaction boundary; a held message stays in hand until the gate
//! reopens, while server messages (notifications) keep flowing.

use super::state::SessionState;
use crate::gate::Busy;
use crate::net::Conn;
use crate::registry::{SessionInfo, Shown};
use crate::server::Shared;
use crate::stats::{latency_histogram, Stats};
use crate::wire::backend::{self as bmsg, tag as btag, BackendMessage, Severity};
use crate::wire::frontend::{self, tag as ftag, FrontendMessage};
use crate::wire::{Frame, WireError};
use hdrhistogram::Histogram;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Stop reading from one side while this much is queued for the other.
const HIGH_WATER: usize = 256 * 1024;
/// How often a session folds its latency samples into the shared histogram.
const MERGE_EVERY: Duration = Duration::from_millis(200);

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
}

pub(crate) struct Relay<'a> {
    shared: &'a Shared,
    info: &'a Arc<SessionInfo>,
    state: SessionState,
    busy: Busy,
    /// A message waiting at the closed gate.
    held: Option<Frame>,
    shutting_down: bool,
    latency: Histogram<u64>,
    last_merge: Instant,
    /// The last message forwarded to the client was an error.
    last_was_error: bool,
}

impl<'a> Relay<'a> {
    pub(crate) fn new(shared: &'a Shared, info: &'a Arc<SessionInfo>) -> Relay<'a> {
        Relay {
            shared,
            info,
            state: SessionState::new(),
            busy: Busy::new(shared.gate.clone()),
            held: None,
            shutting_down: false,
            latency: latency_histogram(),
            last_merge: Instant::now(),
            last_was_error: false,
        }
    }

    pub(crate) async fn run(mut self, client: &mut Conn, server: &mut Conn) -> Result<Ended, RelayError> {
        let result = self.relay(client, server).await;
        match &result {
            Err(RelayError::Protocol(e)) => {
                Stats::bump(&self.shared.stats.protocol_errors);
                bmsg::error_response(client.wbuf(), Severity::Fatal, "08P01", &format!("invalid message from client: {e}"));
                let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
            }
            Err(RelayError::ServerProtocol(_)) | Ok(Ended::ServerClosed) if !self.last_was_error => {
                bmsg::error_response(client.wbuf(), Severity::Fatal, "08006", "the connection to the database was lost");
                let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
            }
            Ok(Ended::Shutdown) => {
                bmsg::error_response(client.wbuf(), Severity::Fatal, "57P01", "terminating connection because switchyard is shutting down");
                let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
            }
            _ => {
                let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
            }
        }
        // Tell the database we are leaving rather than just dropping the socket.
        server.queue(&frontend::terminate());
        let _ = tokio::time::timeout(Duration::from_millis(200), server.close()).await;
        self.shared.stats.merge_latency(&mut self.latency);
        result
    }

    async fn relay(&mut self, client: &mut Conn, server: &mut Conn) -> Result<Ended, RelayError> {
        let mut shutdown = self.shared.shutdown.clone();
        if *shutdown.borrow() {
            return Ok(Ended::Shutdown);
        }
        let gate = self.shared.gate.clone();
        loop {
            let read_client = self.held.is_none() && server.pending_write() < HIGH_WATER;
            let read_server = client.pending_write() < HIGH_WATER;
            tokio::select! {
                r = client.stream().readable(), if read_client => {
                    r?;
                    match client.try_fill()? {
                        Some(0) => return Ok(Ended::ClientClosed),
                        Some(n) => {
                            self.shared.stats.bytes_from_clients.fetch_add(n as u64, Relaxed);
                            if let Some(end) = self.from_client(client, server)? {
                                return Ok(end);
                            }
                        }
                        None => {}
                    }
                }
                r = server.stream().readable(), if read_server => {
                    r?;
                    match server.try_fill()? {
                        Some(0) => {
                            client.try_flush()?;
                            return Ok(Ended::ServerClosed);
                        }
                        Some(_) => self.from_server(server, client)?,
                        None => {}
                    }
                }
                r = client.stream().writable(), if client.pending_write() > 0 => {
                    r?;
                    let before = client.pending_write();
                    client.try_flush()?;
                    self.count_sent(before - client.pending_write());
                }
                r = server.stream().writable(), if server.pending_write() > 0 => {
                    r?;
                    server.try_flush()?;
                }
                _ = gate.wait_open(), if self.held.is_some() => {
                    if let Some(end) = self.from_client(client, server)? {
                        return Ok(end);
                    }
                }
                _ = shutdown.changed(), if !self.shutting_down => {
                    self.shutting_down = true;
                }
            }
            if self.shutting_down && self.state.at_boundary() && client.pending_write() == 0 {
                return Ok(Ended::Shutdown);
            }
        }
    }

    fn count_sent(&self, n: usize) {
        self.shared.stats.bytes_to_clients.fetch_add(n as u64, Relaxed);
    }

    /// Forwards every whole client message buffered (and a held one first),
    /// stopping at a closed gate.
    fn from_client(&mut self, client: &mut Conn, server: &mut Conn) -> Result<Option<Ended>, RelayError> {
        let now = Instant::now();
        loop {
            let frame = match self.held.take() {
                Some(f) => f,
                None => match client.next_frame()? {
                    Some(f) => f,
                    None => break,
                },
            };
            if frame.tag() == ftag::TERMINATE {
                server.try_flush()?;
                return Ok(Some(Ended::Terminated));
            }
            if !self.busy.is_busy() && self.state.at_boundary() {
                if self.shutting_down {
                    return Ok(Some(Ended::Shutdown));
                }
                if !self.busy.try_enter() {
                    self.held = Some(frame);
                    self.info.set_state(Shown::Held);
                    break;
                }
            }
            let msg = FrontendMessage(frame);
            self.state.on_client(&msg, now)?;
            if matches!(msg.tag(), ftag::QUERY | ftag::SYNC | ftag::FUNCTION_CALL) {
                Stats::bump(&self.shared.stats.queries);
                self.info.count_query();
            }
            server.queue(msg.bytes());
        }
        if self.state.at_boundary() {
            // E.g. a lone Flush: it took the gate but leaves nothing in flight.
            self.busy.leave();
        }
        if self.held.is_none() {
            self.info.set_state(Shown::Relay(self.state.phase()));
        }
        server.try_flush()?;
        Ok(None)
    }

    /// Forwards every whole server message buffered.
    fn from_server(&mut self, server: &mut Conn, client: &mut Conn) -> Result<(), RelayError> {
        let now = Instant::now();
        let mut ready = false;
        while let Some(frame) = server.next_frame().map_err(RelayError::ServerProtocol)? {
            let msg = BackendMessage(frame);
            let event = self.state.on_server(&msg, now);
            if let Some(latency) = event.ready {
                ready = true;
                let us = latency.as_micros().max(1) as u64;
                let _ = self.latency.record(us.min(3_600_000_000));
                self.shared.metrics.query_seconds.record(latency.as_secs_f64());
                if event.at_boundary {
                    self.busy.leave();
                    Stats::bump(&self.shared.stats.transactions);
                }
            }
            if event.error {
                Stats::bump(&self.shared.stats.server_errors);
            }
            self.last_was_error = msg.tag() == btag::ERROR_RESPONSE;
            client.queue(msg.bytes());
        }
        if ready {
            if self.held.is_none() {
                self.info.set_state(Shown::Relay(self.state.phase()));
            }
            if self.state.at_boundary() {
                let s = &self.state;
                self.info.set_tracked(s.statements().len(), s.settings().len(), s.listens().len(), s.pins());
                if now - self.last_merge > MERGE_EVERY {
                    self.shared.stats.merge_latency(&mut self.latency);
                    self.last_merge = now;
                }
            }
        }
        let before = client.pending_write();
        client.try_flush()?;
        self.count_sent(before - client.pending_write());
        Ok(())
    }
}
