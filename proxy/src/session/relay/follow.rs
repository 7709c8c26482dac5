//! How the relay follows the route: it watches for move orders, opens the
//! next backend ahead of the switch, stops at the first transaction
//! boundary with nothing in flight, and, on the new backend, re-prepares
//! each statement ahead of its first use.

use super::{Relay, RelayError};
use crate::net::Stream;
use crate::net::{Parts, Socket};
use crate::registry::MoveState;
use crate::session::moving;
use crate::session::route::{PinnedPolicy, Step};
use crate::session::statements::Description;
use crate::wire::frontend::{tag as ftag, FrontendMessage, TargetKind};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// What happened ahead of a client's Bind or Describe.
pub(super) enum Ahead {
    /// Nothing: the statement is on this backend.
    Nothing,
    /// Its Parse was queued ahead of it (with what the client sent before).
    Sent,
    /// As `Sent`, and the message waits for the types to be compared.
    Hold,
    /// The statement's types changed: the message was replaced by the
    /// error PostgreSQL gives for it.
    Replaced,
}

/// The error PostgreSQL raises when a prepared statement's result type
/// changed under it.
const CHANGED_SQL: &str = "DO $switchyard$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', \
    MESSAGE = 'switchyard: cached plan must not change result type'; END$switchyard$";

/// Whether an error is the one `CHANGED_SQL` raises (any other, e.g. a
/// transaction already aborted, reaches the client as it is).
pub(super) fn is_changed_marker(msg: crate::wire::backend::BackendMessage<'_>) -> bool {
    msg.error_fields()
        .is_ok_and(|f| f.code == "0A000" && f.message == "switchyard: cached plan must not change result type")
}

impl Relay<'_> {
    /// Takes in the route as it is now: starts opening the next backend for
    /// a new order, and notes an order to switch.
    pub(super) fn on_route(&mut self) {
        let route = self.route.borrow_and_update().clone();
        if route.epoch <= self.epoch {
            self.order = None;
            return;
        }
        if route.step == Step::Cancelled || !route.concerns(self.info.backend_database()) {
            // Called off before the switch, or an order for another
            // database's sessions: the session stays, and what it opened
            // for the order is closed.
            self.order = None;
            self.opening = None;
            if let Some((_, be)) = self.opened.take() {
                moving::retire(be.conn);
            }
            self.epoch = route.epoch;
            self.info.saw_order(route.epoch, MoveState::Current);
            return;
        }
        if self.order.as_ref().is_some_and(|o| o.epoch != route.epoch) {
            // A newer order replaces the one not yet carried out.
            self.order = None;
        }
        let fresh = self.order.as_ref().is_none_or(|o| o.epoch != route.epoch);
        if fresh && self.opened.as_ref().is_none_or(|(e, _)| *e != route.epoch) && self.opening.is_none() {
            self.start_opening(&route);
        }
        if route.step == Step::Go {
            if fresh {
                self.pinned_at = None;
                self.info.saw_order(route.epoch, MoveState::Waiting);
            }
            self.order = Some(route);
        }
    }

    fn start_opening(&mut self, route: &crate::session::route::Route) {
        self.info.saw_order(route.epoch, MoveState::Opening);
        let login = self.login.clone();
        let route2 = route.clone();
        let shared = self.shared.clone();
        let epoch = route.epoch;
        // Opened (and warmed) on its own task: the relay goes on meanwhile.
        let task = tokio::spawn(async move {
            let turn = match &route2.opening {
                Some(limit) => limit.clone().acquire_owned().await.ok(),
                None => None,
            };
            let began = Instant::now();
            let opened = async {
                let mut be = moving::open_with(&shared.config, &route2, &login).await?;
                if !moving::warm(&mut be.conn).await {
                    // Its answer may still be on the way: never hand it over.
                    moving::retire(be.conn);
                    be = moving::open_with(&shared.config, &route2, &login).await?;
                }
                Ok(be)
            }
            .await;
            if let Some(turn) = turn {
                moving::rest_turn(turn, began.elapsed());
            }
            opened
        });
        // Given up on (the order called off, the session gone), the
        // opening stops too, even while it waits for its turn.
        let abort = switchyard_replay::AbortOnDrop(vec![task.abort_handle()]);
        self.opening = Some((
            epoch,
            Box::pin(async move {
                let _abort = abort;
                task.await
                    .unwrap_or_else(|e| Err(format!("opening the backend failed: {e}")))
            }),
        ));
    }

    /// Whether the session should move at its next chance.
    pub(super) fn move_due(&self) -> bool {
        let Some(order) = &self.order else { return false };
        if order.epoch <= self.failed_epoch || self.shutting_down {
            return false;
        }
        match self.pinned_at {
            // Retried once the session ran more, or when the deadline passed.
            Some(q) => q != self.info.queries() || self.pinned_deadline().is_some_and(|d| d <= Instant::now()),
            None => true,
        }
    }

    /// When a pinned session is closed rather than waited for.
    pub(super) fn pinned_deadline(&self) -> Option<Instant> {
        let order = self.order.as_ref()?;
        self.pinned_at?;
        (order.pinned == PinnedPolicy::Close)
            .then_some(order.deadline)
            .flatten()
    }

    /// Whether the session is at a boundary with nothing in flight, on
    /// either side and in capture.
    pub(super) fn can_move<S: Socket>(&self, server: &Parts<'_, S>) -> bool {
        self.state.at_boundary()
            && !self.backend_fatal
            && !self.busy.is_busy()
            && !self.capture_hold
            && self.log_wait.is_none()
            && self.lookup_wait.is_none()
            && server.wbuf.is_empty()
            && server.rbuf.is_empty()
            && self.capture.as_ref().is_none_or(|c| !c.blocked() && !c.has_work())
    }

    /// The translation of type OIDs the client knows to the current
    /// backend's.
    pub(super) fn order_types(&self) -> Option<Arc<HashMap<u32, u32>>> {
        self.types.clone()
    }

    /// Re-prepares the statement a Bind or Describe names if the session
    /// moved since it was prepared; `before` is what the client sent ahead
    /// of this message and is queued first.
    pub(super) fn prepare_ahead<S: Socket>(
        &mut self,
        msg: FrontendMessage<'_>,
        server: &mut Parts<'_, S>,
        before: &[u8],
    ) -> Result<Ahead, RelayError> {
        if self.state.conversation().skipping_to_sync() {
            // An earlier message of the batch failed (the re-prepare of
            // this very statement, say): the server skips this message, and
            // would skip a re-prepare sent ahead of it, whose re-check the
            // message would then wait for forever. Forwarded as it is; the
            // statement is prepared again at its next use after the Sync.
            return Ok(Ahead::Nothing);
        }
        let name = match msg.tag() {
            ftag::BIND => msg.bind()?.statement,
            _ => match msg.target()? {
                t if t.kind == TargetKind::Statement => t.name,
                _ => return Ok(Ahead::Nothing),
            },
        };
        if self.state.statements().is_changed(name) && msg.tag() == ftag::BIND {
            server.wbuf.extend_from_slice(before);
            crate::wire::frontend::parse_bind_execute(server.wbuf, CHANGED_SQL);
            self.state.injected_in_place();
            return Ok(Ahead::Replaced);
        }
        let types = self.order_types();
        match self.state.prepare_ahead(name, &|oid| translate(&types, oid))? {
            None => Ok(Ahead::Nothing),
            Some((bytes, hold)) => {
                server.wbuf.extend_from_slice(before);
                server.wbuf.extend_from_slice(&bytes);
                Ok(if hold { Ahead::Hold } else { Ahead::Sent })
            }
        }
    }
}

/// Whether a statement re-prepared on another backend has the types the
/// client was told: parameter and result types (OIDs translated by `types`
/// from the old backend's numbering), column names and modifiers.
pub(super) fn same_types(before: &Description, now: &Description, types: &Option<Arc<HashMap<u32, u32>>>) -> bool {
    let map = |oid: u32| translate(types, oid);
    let params_same = before.params.len() == now.params.len()
        && before
            .params
            .iter()
            .zip(&now.params)
            .all(|(a, b)| map(*a) == *b || *a == 0);
    let columns_same = match (&before.columns, &now.columns) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((an, at, am), (bn, bt, bm))| an == bn && map(*at) == *bt && am == bm)
        }
        _ => false,
    };
    params_same && columns_same
}

/// `oid` as the current backend numbers it (unchanged when no translation
/// applies).
fn translate(types: &Option<Arc<HashMap<u32, u32>>>, oid: u32) -> u32 {
    types.as_ref().and_then(|t| t.get(&oid).copied()).unwrap_or(oid)
}

/// Sleeps until `at` (forever for `None`; the caller guards it).
pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// How a move attempt ended.
pub(crate) enum Moved {
    /// The session is ready on this backend.
    To(crate::session::backend::Backend),
    /// It stays on its backend for now (pinned, or the move failed).
    Stay,
    /// It cannot stay and cannot move: close it with this message.
    Close(String),
}

impl Relay<'_> {
    /// Moves the session off `old` per the order it follows (see
    /// `moving.rs`); `old` is left as it was unless the move succeeds.
    pub(crate) async fn relocate<S: Socket>(
        &mut self,
        client: &mut crate::net::Conn<Stream>,
        old: &mut crate::net::Conn<S>,
    ) -> Moved {
        let Some(order) = self.order.clone() else {
            return Moved::Stay;
        };
        self.info.set_move_state(MoveState::Moving);
        self.info.set_state(crate::registry::Shown::Moving);
        let touched = self.state.touched().clone();
        // Another database numbers user types otherwise: learn their names.
        let oids = if order.destination != self.destination {
            self.state.statements().user_type_oids()
        } else {
            Default::default()
        };
        let mut to = moving::Relayed {
            client,
            client_pid: self.client_pid,
            own_pid: self.own_pid,
            params: &mut self.client_params,
        };
        let probe_ran = !touched.is_empty() || !oids.is_empty();
        let probed = moving::probe(old, &touched, &oids, &mut to).await;
        if probe_ran {
            // Should the session stay, its old backend lost the unnamed statement.
            self.state.probed();
        }
        let probed = match probed {
            Ok(p) => p,
            Err(why) => return self.move_failed(order.epoch, order.pinned, why),
        };
        if !probed.pins.is_empty() {
            let names: Vec<&str> = probed.pins.iter().map(|p| p.name()).collect();
            let past = order.deadline.is_some_and(|d| d <= Instant::now());
            if order.pinned == PinnedPolicy::Close && past {
                return Moved::Close(format!(
                    "switchyard moved this database's sessions to {}, but this session holds a {}, which cannot move \
                     with it; reconnect to go on",
                    order.destination.name(),
                    names.join(" and a ")
                ));
            }
            self.pinned_at = Some(self.info.queries());
            self.state.set_pins(probed.pins.clone());
            self.publish_tracked();
            self.info.set_move_state(MoveState::Pinned);
            self.shared.router.notify();
            return Moved::Stay;
        }
        let opened = match self.opened.take() {
            Some((e, be)) if e == order.epoch => Ok(be),
            _ => match self.opening.take() {
                Some((e, wait)) if e == order.epoch => wait.await,
                _ => moving::open_with(&self.shared.config, &order, &self.login).await,
            },
        };
        let opened = match opened {
            // Opened ahead and gone since (terminated, a network cut): a
            // fresh one is opened now rather than failing the move.
            Ok(be) if !be.conn.idle_and_open() => {
                tracing::info!(
                    session = self.info.id,
                    "the backend opened ahead was closed; opening another"
                );
                moving::retire(be.conn);
                moving::open_with(&self.shared.config, &order, &self.login).await
            }
            other => other,
        };
        let mut be = match opened {
            Ok(be) => be,
            Err(why) => return self.move_failed(order.epoch, order.pinned, why),
        };
        let mut params = moving::startup_params(&be);
        let mut to = moving::Relayed {
            client,
            client_pid: self.client_pid,
            own_pid: be.key.0,
            params: &mut self.client_params,
        };
        let replayed = match &mut be.conn {
            crate::net::ServerConn::Tcp(c) => moving::replay(c, &probed, &mut to, &mut params).await,
            crate::net::ServerConn::Unix(c) => moving::replay(c, &probed, &mut to, &mut params).await,
        };
        let types = match replayed {
            Ok(t) => t,
            Err(why) => {
                moving::retire(be.conn);
                return self.move_failed(order.epoch, order.pinned, why);
            }
        };
        // Translations compose: the client knows the numbering of the
        // backend its statements were prepared on.
        if order.destination != self.destination {
            let mut next: HashMap<u32, u32> = HashMap::new();
            if let Some(before) = &self.types {
                for (client, old) in before.iter() {
                    next.insert(*client, types.get(old).copied().unwrap_or(*old));
                }
            }
            for (old, new) in types {
                next.entry(old).or_insert(new);
            }
            self.types = (!next.is_empty()).then(|| Arc::new(next));
            self.destination = order.destination;
        }
        if !probed.listens.is_empty() {
            to.own_pid = self.own_pid;
            // The old backend stops listening only now: nothing is lost.
            if let Err(why) = moving::unlisten(old, &mut to).await {
                tracing::info!(session = self.info.id, error = %why, "old backend did not stop listening; closing it");
            }
        }
        for (k, v) in params {
            if to.params.get(&k) != Some(&v) {
                crate::wire::backend::parameter_status(to.client.wbuf(), &k, &v);
                to.params.insert(k, v);
            }
        }
        self.state.moved(probed.touched());
        self.publish_tracked();
        Moved::To(be)
    }

    fn move_failed(&mut self, epoch: u64, pinned: PinnedPolicy, why: String) -> Moved {
        tracing::warn!(session = self.info.id, error = %why, "session move failed");
        self.failed_epoch = epoch;
        self.info.set_move_error(Some(why.clone()));
        self.info.set_move_state(MoveState::Failed);
        self.shared.router.notify();
        match pinned {
            PinnedPolicy::Stay => Moved::Stay,
            PinnedPolicy::Close => Moved::Close(format!(
                "switchyard could not move this session to the new database ({why}); reconnect to go on"
            )),
        }
    }

    /// The session now runs on a backend opened under `epoch` with pid
    /// `pid`: capture restarts there at the next transaction.
    pub(crate) fn moved_to(&mut self, epoch: u64, pid: i32, addr: String) {
        let previous = (!self.backend_addr.is_empty()).then_some((self.backend_addr.as_str(), self.own_pid));
        self.shared.cancel.moved(previous, &addr, pid, self.client_pid);
        self.backend_addr = addr;
        self.epoch = epoch;
        self.own_pid = pid;
        self.order = None;
        self.pinned_at = None;
        self.capture = None;
        self.capture_epoch = 0;
        self.info.set_state(crate::registry::Shown::Relay(self.state.phase()));
    }

    /// Shows the tracked state's sizes in SHOW SESSIONS.
    fn publish_tracked(&self) {
        let s = &self.state;
        self.info
            .set_tracked(s.statements().len(), s.settings().len(), s.listens().len(), s.pins());
    }

    /// The epoch and destination of the order being followed.
    pub(crate) fn order_epoch(&self) -> Option<(u64, crate::session::route::Destination)> {
        self.order.as_ref().map(|o| (o.epoch, o.destination))
    }

    /// The session ends: other sessions' notifications no longer name it.
    pub(crate) fn ended(&self) {
        self.shared.cancel.ended(&self.backend_addr, self.own_pid);
    }

    /// The session runs on its first backend at `addr`.
    pub(crate) fn started_at(&mut self, addr: String) {
        self.backend_addr = addr;
    }

    /// The session stays where it is for now.
    pub(crate) fn stayed(&mut self) {
        self.info.set_state(crate::registry::Shown::Relay(self.state.phase()));
    }
}
