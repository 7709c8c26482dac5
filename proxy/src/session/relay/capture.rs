//! The relay's side of write capture: adopting capture at a transaction
//! boundary, running the work it asks for (injected messages, log
//! appends, catalog lookups), and settling logged commits.

use super::{LogWait, Relay, RelayError};
use crate::capture::session::{Outgoing, SessionCapture, Work};
use crate::net::{Parts, Socket};
use crate::session::conversation::{Origin, Request};
use crate::session::state::SessionState;
use std::sync::Arc;
use std::time::Duration;
use switchyard_replay::log::{LogWriterHandle, Lsn, Marker, Record};

impl Relay<'_> {
    /// A held commit's record is in the log at `lsn`.
    pub(super) fn logged_commit(&mut self, lsn: Lsn) {
        if let Some(cap) = &self.capture {
            self.settle_log = Some(cap.active().log());
            self.unsettled.push(lsn);
        }
    }

    /// The session is out of any transaction: every commit logged is settled.
    pub(super) fn settle(&mut self) {
        if let Some(log) = &self.settle_log {
            for commit in self.unsettled.drain(..) {
                append_settled(log, commit);
            }
        }
        // Hold no log open past its capture (CAPTURE START would find it locked).
        self.settle_log = None;
    }

    /// A COMMIT was answered (also by COMMIT AND CHAIN, which stays in a
    /// transaction): the oldest commit logged is settled.
    pub(super) fn settle_oldest(&mut self) {
        if self.unsettled.is_empty() {
            return;
        }
        let commit = self.unsettled.remove(0);
        if let Some(log) = &self.settle_log {
            append_settled(log, commit);
        }
        if self.unsettled.is_empty() {
            self.settle_log = None;
        }
    }

    /// Starts or stops capturing when the capture epoch changed; called as
    /// the session leaves a transaction boundary.
    pub(super) fn adopt_capture<S: Socket>(&mut self, server: &mut Parts<'_, S>) -> Result<(), RelayError> {
        let epoch = self.info.enter_tx(self.shared.capture.epoch());
        if epoch == self.capture_epoch {
            return Ok(());
        }
        self.capture_epoch = epoch;
        // Sessions of other databases than the captured one are relayed
        // uncaptured (their keys would be another database's).
        let next = self.shared.capture.active_for(epoch).filter(|a| a.covers(self.info));
        let same = matches!((&self.capture, &next), (Some(c), Some(n)) if Arc::ptr_eq(c.active(), n));
        if same {
            return Ok(());
        }
        let mut next = next.map(|a| {
            let path = search_path_of(&self.state);
            SessionCapture::new(a, self.info.id, self.info.backend_pid(), path, self.info.user.clone())
        });
        if let Some(mut old) = self.capture.take() {
            if let Some(next) = &mut next {
                next.keep_shapes_of(&mut old);
            }
            if let Some(restore) = old.finish(self.state.statements_mut()) {
                // No capture notes their answers: they are dropped.
                self.send_own(server, restore);
            }
        }
        self.capture = next;
        Ok(())
    }

    /// Queues bytes capture sends in place of a client message (or when it
    /// ends), opening an entry for each request of its own among them.
    pub(super) fn send_own<S: Socket>(&mut self, server: &mut Parts<'_, S>, out: Outgoing) {
        server.wbuf.extend_from_slice(&out.bytes);
        for (request, note) in out.own {
            let id = self.state.open(Origin::Capture, request);
            if let (Some(id), Some(cap)) = (id, &mut self.capture) {
                cap.noted(id, note);
            }
        }
    }

    /// Queues what capture injects and makes the log appends it asks for.
    /// An append that completes at once (durability `write` writes on this
    /// thread) releases its hold here; returns whether one did.
    pub(super) fn run_capture_work<S: Socket>(&mut self, server: &mut Parts<'_, S>) -> Result<bool, RelayError> {
        let mut released = false;
        let mut logged = Vec::new();
        let Some(cap) = &mut self.capture else { return Ok(false) };
        while let Some(work) = cap.take_work() {
            match work {
                Work::Send(out) => {
                    server.wbuf.extend_from_slice(&out.bytes);
                    for (request, note) in out.own {
                        if let Some(id) = self.state.open(Origin::Capture, request) {
                            cap.noted(id, note);
                        }
                    }
                }
                Work::Continue(bytes, note) => {
                    server.wbuf.extend_from_slice(&bytes);
                    // It goes on with the client's query capture held back
                    // (were there none, it would be capture's own).
                    let id = match self.state.resume() {
                        Some(id) => Some(id),
                        None => self.state.open(Origin::Capture, Request::Query),
                    };
                    if let Some(id) = id {
                        cap.noted(id, note);
                    }
                }
                // Answered by the catalog task; other sessions go on meanwhile.
                Work::Lookup(what) => self.lookup_wait = Some(Box::pin(cap.active().catalog.lookup(what))),
                Work::Log { record, hold: true } => {
                    let mut append: LogWait = Box::pin(cap.active().log().append(record));
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    match append.as_mut().poll(&mut cx) {
                        std::task::Poll::Ready(Ok(lsn)) => {
                            cap.logged();
                            released = true;
                            logged.push(lsn);
                        }
                        std::task::Poll::Ready(Err(e)) => {
                            refuse_commit(cap, &e);
                            released = true;
                        }
                        std::task::Poll::Pending => self.log_wait = Some(append),
                    }
                }
                Work::Log { record, hold: false } => {
                    // Logged after its commit: settled as soon as it is written.
                    let log = cap.active().log();
                    let append = log.append(record);
                    tokio::spawn(async move {
                        match append.await {
                            Ok(commit) => append_settled(&log, commit),
                            Err(e) => tracing::error!(error = %e, "capture log write failed"),
                        }
                    });
                }
            }
        }
        for lsn in logged {
            self.logged_commit(lsn);
        }
        Ok(released)
    }
}

/// The log could not take a held commit's keys: the commit is not sent, the
/// client is answered with an error (58030) naming the log directory and
/// the OS error, and the session goes on.
pub(super) fn refuse_commit(cap: &mut SessionCapture, error: &switchyard_replay::log::LogError) {
    let active = cap.active().clone();
    active.log_failed(error);
    let cause = active.failure().map(|f| f.error).unwrap_or_else(|| error.to_string());
    let message = format!(
        "switchyard could not write the transaction's keys to the capture log in {}: {cause}; the transaction was rolled back",
        active.config.log_dir.display()
    );
    cap.log_failed(message);
}

/// Logs that `commit` has settled. Nobody waits for the marker: it goes out
/// with the next log write, or within a millisecond when none comes.
pub(super) fn append_settled(log: &LogWriterHandle, commit: Lsn) {
    if log.append_deferred(Record::Marker(Marker::Settled { commit })) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let log = log.clone();
                rt.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    log.flush_deferred();
                });
            }
            Err(_) => log.flush_deferred(),
        }
    }
}

/// The search path a session set with `SET search_path`, else empty (the
/// server's default).
pub(super) fn search_path_of<A>(state: &SessionState<A>) -> Vec<String> {
    state
        .settings()
        .get("search_path")
        .and_then(|stmt| crate::capture::session::set_search_path(stmt))
        .unwrap_or_default()
}
