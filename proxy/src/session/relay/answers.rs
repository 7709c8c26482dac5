//! The server side of the relay: every server message is first placed in
//! the session's conversation (which request it answers), then taken by
//! whoever sent that request: the move's own requests are answered to it
//! alone, capture decides what the client sees of the rest, and the
//! session state follows what the client sees.

use super::{follow, Relay, RelayError, MERGE_EVERY};
use crate::capture::session::ServerAction;
use crate::net::Stream;
use crate::net::{Parts, Socket};
use crate::registry::Shown;
use crate::session::conversation::Origin;
use crate::session::moving;
use crate::session::state;
use crate::stats::Stats;
use crate::wire::backend::{self as bmsg, tag as btag, BackendMessage, TxStatus};
use crate::wire::Header;
use bytes::Buf;
use follow::same_types;
use std::time::Instant;

impl Relay<'_> {
    /// Forwards every whole server message buffered.
    // Named for where the messages come from; not a conversion.
    #[allow(clippy::wrong_self_convention)]
    pub(super) fn from_server<S: Socket>(
        &mut self,
        server: &mut Parts<'_, S>,
        client: &mut Parts<'_, Stream>,
    ) -> Result<(), RelayError> {
        let now = Instant::now();
        let mut ready = false;
        let mut off = 0;
        // Bytes before `from` are already on their way to the client.
        let mut from = 0;
        let mut injected = false;
        loop {
            let len = match Header::parse(&server.rbuf[off..], server.limit).map_err(RelayError::ServerProtocol)? {
                Header::Need(_) => break,
                Header::Ready { len, .. } => len,
            };
            let msg = BackendMessage::new(&server.rbuf[off..off + len]);
            let answer = self.state.hear(msg);
            if msg.tag() == btag::ERROR_RESPONSE && state::raises(&answer) && follow::is_changed_marker(msg) {
                // The client hears PostgreSQL's own error for a Bind of a
                // statement whose types changed (drivers match its routine).
                self.count_sent(off - from);
                client.wbuf.extend_from_slice(&server.rbuf[from..off]);
                if let Some(cap) = &mut self.capture {
                    let _ = cap.on_server(msg, &answer).map_err(RelayError::ServerProtocol)?;
                }
                let _ = self.state.seen(msg, answer, now);
                bmsg::error_response_from(
                    client.wbuf,
                    "0A000",
                    "cached plan must not change result type",
                    "plancache.c",
                    "RevalidateCachedQuery",
                );
                off += len;
                from = off;
                continue;
            }
            if state::answers_move(&answer, msg) {
                let types = self.order_types();
                self.state.on_move_answer(msg, answer, &|a, b| same_types(a, b, &types));
                self.count_sent(off - from);
                client.wbuf.extend_from_slice(&server.rbuf[from..off]);
                off += len;
                from = off;
                continue;
            }
            match msg.tag() {
                btag::NOTIFICATION_RESPONSE => {
                    // From a session that moved (this one, or another): its
                    // client's startup pid, the one clients know it by.
                    let known = msg
                        .notification()
                        .ok()
                        .and_then(|(pid, _, _)| Some((pid, self.shared.cancel.client_pid(&self.backend_addr, pid)?)));
                    if let Some((pid, client_pid)) = known {
                        self.count_sent(off - from);
                        client.wbuf.extend_from_slice(&server.rbuf[from..off]);
                        moving::relay_notification(client.wbuf, msg, pid, client_pid);
                        off += len;
                        from = off;
                        continue;
                    }
                }
                btag::PARAMETER_STATUS => {
                    if let Ok((k, v)) = msg.parameter_status() {
                        self.client_params.insert(k.to_owned(), v.to_owned());
                    }
                }
                _ => {}
            }
            // A logged commit has settled once its COMMIT is answered, or
            // once the session is idle (the implicit transaction of an
            // extended-protocol Sync; a COMMIT that failed). Not at an
            // in-transaction or failed-transaction ReadyForQuery: those can
            // answer earlier statements of the same pipeline.
            if !self.unsettled.is_empty() {
                if msg.tag() == btag::READY_FOR_QUERY && matches!(msg.ready_status(), Ok(TxStatus::Idle)) {
                    self.settle();
                } else if msg.tag() == btag::COMMAND_COMPLETE && msg.command_tag() == Ok("COMMIT") {
                    self.settle_oldest();
                }
            }
            let action = match &mut self.capture {
                Some(cap) => {
                    let action = cap.on_server(msg, &answer).map_err(RelayError::ServerProtocol)?;
                    injected |= cap.has_work();
                    action
                }
                // Answers to what a capture that ended sent (the client's
                // statements put back) are nobody's.
                None if answer.is_from(Origin::Capture) => ServerAction::Drop,
                None => ServerAction::Forward,
            };
            match action {
                ServerAction::Forward => {}
                ServerAction::Drop | ServerAction::Continue | ServerAction::Defer => {
                    if matches!(action, ServerAction::Defer) {
                        // What it means for the session (a SET, a LISTEN)
                        // holds now; only the client hears of it later.
                        let _ = self.state.seen(msg, answer, now);
                    } else {
                        self.state.unseen(answer, matches!(action, ServerAction::Continue));
                        if msg.tag() == btag::READY_FOR_QUERY && self.state.at_boundary() && !self.capture_hold {
                            // The last answer owed was to the proxy's own
                            // request (capture's probe sent along with a
                            // lone Flush): back at the boundary all the same.
                            self.busy.leave();
                            self.info.leave_tx();
                            ready = true;
                        }
                    }
                    self.count_sent(off - from);
                    client.wbuf.extend_from_slice(&server.rbuf[from..off]);
                    off += len;
                    from = off;
                    continue;
                }
                ServerAction::Replace(bytes) => {
                    self.count_sent(off - from + bytes.len());
                    client.wbuf.extend_from_slice(&server.rbuf[from..off]);
                    if msg.tag() == btag::ROW_DESCRIPTION && is_one_message(&bytes) {
                        // The statement's types as the client saw them
                        // (capture's key columns taken out), to compare
                        // with after a move.
                        let _ = self.state.seen(BackendMessage::new(&bytes), answer, now);
                        client.wbuf.extend_from_slice(&bytes);
                        off += len;
                        from = off;
                        continue;
                    }
                    client.wbuf.extend_from_slice(&bytes);
                    from = off + len;
                }
            }
            let event = self.state.seen(msg, answer, now);
            if let Some(latency) = event.ready {
                ready = true;
                let us = latency.as_micros().max(1) as u64;
                let _ = self.latency.record(us.min(3_600_000_000));
                if event.at_boundary {
                    self.busy.leave();
                    self.info.leave_tx();
                    Stats::bump(&self.shared.stats.transactions);
                }
            }
            if event.error {
                Stats::bump(&self.shared.stats.server_errors);
                if is_fatal(msg) {
                    self.backend_fatal = true;
                }
                if self.own_pid != self.client_pid && moved_sequence_error(msg) {
                    // Sequence state stays with the backend a session leaves.
                    Stats::bump(&self.shared.stats.moved_sequence_errors);
                }
            }
            self.last_was_error = msg.tag() == btag::ERROR_RESPONSE;
            off += len;
        }
        self.count_sent(off - from);
        client.forward(&server.rbuf[from..off])?;
        server.rbuf.advance(off);
        if injected {
            self.run_capture_work(server)?;
            server.try_flush()?;
        }
        if ready {
            if !self.held {
                self.info.set_state(Shown::Relay(self.state.phase()));
            }
            if self.state.at_boundary() {
                let s = &self.state;
                self.info
                    .set_tracked(s.statements().len(), s.settings().len(), s.listens().len(), s.pins());
                if now - self.last_merge > MERGE_EVERY {
                    self.shared.stats.merge_latency(&mut self.latency);
                    self.last_merge = now;
                }
            }
        }
        client.try_flush()?;
        Ok(())
    }
}

/// Whether an ErrorResponse ends the backend (FATAL or PANIC).
fn is_fatal(msg: BackendMessage<'_>) -> bool {
    msg.error_fields()
        .is_ok_and(|f| f.severity == "FATAL" || f.severity == "PANIC")
}

/// Whether `bytes` is exactly one whole message.
fn is_one_message(bytes: &[u8]) -> bool {
    matches!(Header::parse(bytes, usize::MAX >> 1), Ok(Header::Ready { len, .. }) if len == bytes.len())
}

/// Whether an error is `currval`/`lastval` finding no value in this
/// session: after a move, what an earlier `nextval` left on the old
/// backend.
fn moved_sequence_error(msg: BackendMessage<'_>) -> bool {
    msg.error_fields()
        .is_ok_and(|f| f.code == "55000" && (f.message.contains("currval") || f.message.contains("lastval")))
}
