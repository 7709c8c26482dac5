//! The freeze gate. While it is closed, each session is held at its next
//! transaction boundary: a new query waits (it is not failed) and
//! transactions already open run to their end. [`Gate::close`] returns once
//! no session is busy, and the [`Closed`] guard it hands back reopens the
//! gate when dropped, so every path (success, error, timeout, shutdown)
//! reopens it.
//!
//! The sessions that waited go through the reopened gate in the order they
//! came to it, a few at a time ([`release_at_once`]): each that ends its
//! transaction lets the next one through, and newcomers queue behind them
//! until the queue is empty, for at most [`RELEASE_IN_ORDER_FOR`]. Let
//! through all at once, every waiting transaction would share the servers'
//! cores with every other and all would end together, the first one to
//! have waited as late as the last; in order, the first ones end first,
//! and the longest wait is shorter.
//!
//! The protocol is a Dekker-style handshake on two atomics: a session marks
//! itself busy *before* it reads `closed`, and a closer sets `closed` *before*
//! it reads `busy`. With sequentially consistent ordering at least one side
//! sees the other, so no session can slip into work after the closer has seen
//! zero busy sessions.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{AcquireError, Notify, OwnedSemaphorePermit, Semaphore};

/// The longest the reopened gate lets sessions through in order; past it
/// everyone still queued goes at once.
pub const RELEASE_IN_ORDER_FOR: Duration = Duration::from_millis(50);

/// How many sessions the reopened gate lets through at once: twice the
/// cores, at least two, enough to keep the servers busy without every
/// waiting transaction sharing them.
pub fn release_at_once() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

/// One close of the gate, from the close until the reopened gate has let
/// everyone queued through: its turns are the permits of a fair (FIFO)
/// semaphore that holds none while the gate is closed.
#[derive(Debug)]
struct Phase {
    turns: Arc<Semaphore>,
    /// When the order ends regardless; set at the reopen.
    until: OnceLock<tokio::time::Instant>,
}

/// Why closing the gate failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GateError {
    /// Someone else holds the gate closed.
    #[error("the gate is already closed (by PAUSE or a cutover); RESUME first")]
    AlreadyClosed,
    /// The gate was reopened (RESUME) before the sessions drained.
    #[error("the gate was reopened before the sessions drained")]
    Aborted,
    /// Sessions were still busy when the drain timeout passed.
    #[error("{busy} session(s) still in a transaction after {waited_ms} ms; the gate was reopened")]
    DrainTimeout {
        /// Sessions that were busy.
        busy: usize,
        /// How long the drain waited.
        waited_ms: u64,
    },
}

/// The shared gate. Cheap to clone through `Arc`.
#[derive(Debug, Default)]
pub struct Gate {
    closed: AtomicBool,
    busy: AtomicUsize,
    held: AtomicUsize,
    generation: AtomicU64,
    opened: Notify,
    drained: Notify,
    /// Set from a close until the reopened gate has let everyone queued
    /// through (the fast path of [`Gate::try_enter`] reads only this).
    releasing: AtomicBool,
    phase: Mutex<Option<Arc<Phase>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gate {
    /// A new, open gate.
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    /// Whether the gate is closed now.
    pub fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Sessions doing work (not at a transaction boundary).
    pub fn busy(&self) -> usize {
        self.busy.load(SeqCst)
    }

    /// Sessions waiting at the closed gate.
    pub fn held(&self) -> usize {
        self.held.load(SeqCst)
    }

    /// A session leaves its transaction boundary if the gate is open:
    /// `true` means it is now busy and may forward work; `false` means the
    /// gate is closed and it must wait with [`Gate::wait_open`].
    pub fn try_enter(&self) -> bool {
        self.try_enter_with(None)
    }

    /// [`Gate::try_enter`] for a session that may hold a turn of the
    /// reopened gate's order.
    fn try_enter_with(&self, turn: Option<&Arc<Phase>>) -> bool {
        self.busy.fetch_add(1, SeqCst);
        if !self.closed.load(SeqCst) && (!self.releasing.load(SeqCst) || self.has_turn(turn)) {
            return true;
        }
        self.leave();
        false
    }

    /// Whether no order is kept, or `turn` is one of the current order's.
    fn has_turn(&self, turn: Option<&Arc<Phase>>) -> bool {
        match (lock(&self.phase).as_ref(), turn) {
            (None, _) => true,
            (Some(now), Some(turn)) => Arc::ptr_eq(now, turn),
            (Some(_), None) => false,
        }
    }

    /// The order sessions queue in now, if one is kept.
    fn phase(&self) -> Option<Arc<Phase>> {
        if !self.releasing.load(SeqCst) {
            return None;
        }
        lock(&self.phase).clone()
    }

    /// Ends `phase`'s order (if it is still the current one): everyone
    /// queued in it goes.
    fn end_phase(&self, phase: &Arc<Phase>) {
        let mut now = lock(&self.phase);
        if now.as_ref().is_some_and(|p| Arc::ptr_eq(p, phase)) {
            *now = None;
            self.releasing.store(false, SeqCst);
        }
        drop(now);
        phase.turns.close();
    }

    /// Ends `phase`'s order once nobody is queued: turns left over mean
    /// nobody waits for one (the semaphore hands each to a waiter first).
    fn end_phase_if_idle(&self, phase: &Arc<Phase>) {
        if phase.until.get().is_some() && phase.turns.available_permits() > 0 {
            self.end_phase(phase);
        }
    }

    /// A busy session is back at a transaction boundary.
    pub fn leave(&self) {
        if self.busy.fetch_sub(1, SeqCst) == 1 && self.closed.load(SeqCst) {
            self.drained.notify_waiters();
        }
    }

    /// Waits until the gate is open (returns at once if it is).
    pub async fn wait_open(&self) {
        loop {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if !self.closed.load(SeqCst) {
                return;
            }
            // Counted while waiting, also when the caller stops waiting
            // (a select that takes another branch drops this future).
            let _held = Held::new(&self.held);
            opened.await;
        }
    }

    /// Closes the gate and waits until no session is busy, at most `drain`.
    /// On timeout the gate is reopened and the error says how many sessions
    /// were still busy.
    pub async fn close(self: &Arc<Gate>, drain: Duration) -> Result<Closed, GateError> {
        let closed = self.close_now()?;
        closed.drain(drain).await?;
        Ok(closed)
    }

    /// Closes the gate without waiting; [`Closed::drain`] waits.
    pub fn close_now(self: &Arc<Gate>) -> Result<Closed, GateError> {
        // Closing and reopening each happen under the order's lock, so that
        // a close's order is never installed on a gate a racing reopen has
        // opened (nor a reopen's release given to a close's new order).
        let mut current = lock(&self.phase);
        if self.closed.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
            return Err(GateError::AlreadyClosed);
        }
        let generation = self.generation.fetch_add(1, SeqCst) + 1;
        let phase = Arc::new(Phase {
            turns: Arc::new(Semaphore::new(0)),
            until: OnceLock::new(),
        });
        let earlier = current.replace(phase);
        self.releasing.store(true, SeqCst);
        drop(current);
        if let Some(earlier) = earlier {
            earlier.turns.close();
        }
        Ok(Closed {
            gate: self.clone(),
            generation,
        })
    }

    /// Reopens the gate if it is closed; returns whether it was.
    pub fn open(&self) -> bool {
        self.open_if(None)
    }

    /// Reopens the gate if it is closed (by the close numbered
    /// `generation`, if given).
    fn open_if(&self, generation: Option<u64>) -> bool {
        let current = lock(&self.phase);
        if generation.is_some_and(|g| self.generation.load(SeqCst) != g) {
            return false;
        }
        let phase = current.clone();
        // The order's end is set before the gate opens: a waiter that sees
        // the gate open sees when its order ends.
        if let Some(phase) = &phase {
            let _ = phase.until.set(tokio::time::Instant::now() + RELEASE_IN_ORDER_FOR);
        }
        let was = self.closed.swap(false, SeqCst);
        if was {
            if let Some(phase) = &phase {
                phase.turns.add_permits(release_at_once());
            }
        }
        // Let go before the order may end, which takes the lock again.
        drop(current);
        if was {
            if let Some(phase) = &phase {
                self.end_phase_if_idle(phase);
            }
            self.opened.notify_waiters();
        }
        was
    }

    fn open_generation(&self, generation: u64) {
        // A guard from an earlier close must not reopen a later one.
        self.open_if(Some(generation));
    }

    /// How many times the gate has been closed.
    pub fn generation(&self) -> u64 {
        self.generation.load(SeqCst)
    }
}

/// One session counted in [`Gate::held`] while it lives.
struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    fn new(count: &'a AtomicUsize) -> Held<'a> {
        count.fetch_add(1, SeqCst);
        Held(count)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Proof that the gate is closed and drained; reopens it on drop.
#[derive(Debug)]
pub struct Closed {
    gate: Arc<Gate>,
    generation: u64,
}

impl Closed {
    /// Which close of the gate this is.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Waits until no session is busy, at most `timeout`. Fails if the gate
    /// is reopened meanwhile (by RESUME) or the timeout passes; the guard
    /// still reopens the gate when dropped.
    pub async fn drain(&self, timeout: Duration) -> Result<(), GateError> {
        let gate = &self.gate;
        let start = Instant::now();
        // Saturates: a timeout too large to add waits as good as forever
        // instead of panicking.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365));
        loop {
            let drained = gate.drained.notified();
            let opened = gate.opened.notified();
            tokio::pin!(drained, opened);
            drained.as_mut().enable();
            opened.as_mut().enable();
            if !gate.closed.load(SeqCst) || gate.generation.load(SeqCst) != self.generation {
                return Err(GateError::Aborted);
            }
            if gate.busy.load(SeqCst) == 0 {
                return Ok(());
            }
            tokio::select! {
                _ = &mut drained => {}
                _ = &mut opened => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let busy = gate.busy.load(SeqCst);
                    if busy != 0 {
                        return Err(GateError::DrainTimeout {
                            busy,
                            waited_ms: start.elapsed().as_millis() as u64,
                        });
                    }
                }
            }
        }
    }

    /// Keeps the gate closed past this guard's life: something else (RESUME,
    /// a timer) is now responsible for reopening it.
    pub fn keep_closed(self) -> u64 {
        let generation = self.generation;
        std::mem::forget(self);
        generation
    }
}

impl Drop for Closed {
    fn drop(&mut self) {
        self.gate.open_generation(self.generation);
    }
}

/// Reopens the gate if it is still closed by the close numbered `generation`.
pub fn reopen_if_generation(gate: &Gate, generation: u64) -> bool {
    if gate.generation() == generation && gate.is_closed() {
        gate.open()
    } else {
        false
    }
}

/// A session's hold on the gate: at most one busy mark, released on drop so a
/// session that dies mid-transaction never blocks a drain; and its place in
/// the reopened gate's order while it waits, then its turn while it works.
pub struct Busy {
    gate: Arc<Gate>,
    busy: bool,
    /// The order whose turn this session holds.
    turn: Option<Arc<Phase>>,
    /// Its place in an order's queue, kept across [`Busy::wait_turn`] calls.
    queued: Option<(Arc<Phase>, Queued)>,
}

type Queued = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

impl std::fmt::Debug for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Busy")
            .field("busy", &self.busy)
            .field("turn", &self.turn.is_some())
            .field("queued", &self.queued.is_some())
            .finish()
    }
}

impl Busy {
    /// Not busy yet.
    pub fn new(gate: Arc<Gate>) -> Busy {
        Busy {
            gate,
            busy: false,
            turn: None,
            queued: None,
        }
    }

    /// Whether this session is marked busy.
    pub fn is_busy(&self) -> bool {
        self.busy
    }

    /// Marks busy if the gate lets this session through; `false` if it
    /// must wait with [`Busy::wait_turn`].
    pub fn try_enter(&mut self) -> bool {
        if self.busy {
            return true;
        }
        self.busy = self.gate.try_enter_with(self.turn.as_ref());
        if !self.busy {
            // A turn of an order that ended or was replaced by a new close.
            self.give_back_turn();
        }
        self.busy
    }

    /// Passes the turn this session holds, if any, to the next one queued.
    fn give_back_turn(&mut self) {
        if let Some(phase) = self.turn.take() {
            phase.turns.add_permits(1);
            self.gate.end_phase_if_idle(&phase);
        }
    }

    /// Back at a boundary. A session that held a turn of the reopened
    /// gate's order passes it to the next one queued.
    pub fn leave(&mut self) {
        if self.busy {
            self.busy = false;
            self.gate.leave();
            self.give_back_turn();
        }
    }

    /// Waits until [`Busy::try_enter`] may let this session through: the
    /// gate open, and its turn come if the reopened gate keeps an order.
    /// Cancel-safe: a session's place in the queue stays when the future is
    /// dropped, and the next call goes on waiting in it.
    pub async fn wait_turn(&mut self) {
        let gate = self.gate.clone();
        loop {
            let Some(phase) = gate.phase() else {
                self.queued = None;
                gate.wait_open().await;
                if gate.phase().is_none() {
                    return;
                }
                continue;
            };
            if !self.queued.as_ref().is_some_and(|(p, _)| Arc::ptr_eq(p, &phase)) {
                let acquire: Queued = Box::pin(phase.turns.clone().acquire_owned());
                self.queued = Some((phase.clone(), acquire));
            }
            let (_, acquire) = self.queued.as_mut().expect("just set");
            let _held = Held::new(&gate.held);
            let opened = gate.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            let until = phase.until.get().copied();
            if until.is_none() && !gate.is_closed() {
                // An order on an open gate that no reopen released (closes
                // and reopens take the same lock, so this is only a guard):
                // it ends rather than keep anyone waiting.
                self.queued = None;
                gate.end_phase(&phase);
                return;
            }
            let got = tokio::select! {
                got = acquire => Some(got),
                _ = async { tokio::time::sleep_until(until.expect("guarded")).await }, if until.is_some() => None,
                // The reopen sets the order's deadline: look again.
                _ = &mut opened, if until.is_none() => continue,
            };
            self.queued = None;
            match got {
                Some(Ok(permit)) => {
                    permit.forget();
                    self.turn = Some(phase);
                }
                // The order ended (everyone goes) or a new close replaced it.
                Some(Err(_)) => {}
                // Waited past the order's end: it ends for everyone.
                None => gate.end_phase(&phase),
            }
            return;
        }
    }

    /// The gate.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.leave();
        // A session that ends (or moves away) with its turn unused.
        self.give_back_turn();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_waits_for_busy_sessions_and_guard_reopens() {
        let gate = Gate::new();
        let mut s = Busy::new(gate.clone());
        assert!(s.try_enter());
        let g2 = gate.clone();
        let closer = tokio::spawn(async move { g2.close(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(gate.is_closed());
        assert!(!closer.is_finished());
        let mut other = Busy::new(gate.clone());
        assert!(!other.try_enter(), "a new transaction must wait while closed");
        s.leave();
        let guard = closer.await.unwrap().unwrap();
        assert!(gate.is_closed());
        drop(guard);
        assert!(!gate.is_closed());
        assert!(other.try_enter());
    }

    #[tokio::test]
    async fn drain_timeout_reopens() {
        let gate = Gate::new();
        let mut s = Busy::new(gate.clone());
        assert!(s.try_enter());
        let err = gate.close(Duration::from_millis(30)).await.unwrap_err();
        assert!(matches!(err, GateError::DrainTimeout { busy: 1, .. }));
        assert!(!gate.is_closed());
    }

    #[tokio::test]
    async fn waiters_wake_on_open() {
        let gate = Gate::new();
        let guard = gate.close(Duration::from_secs(1)).await.unwrap();
        let g2 = gate.clone();
        let waiter = tokio::spawn(async move { g2.wait_open().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(gate.held(), 1);
        drop(guard);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_waiter_that_stops_waiting_is_no_longer_counted_as_held() {
        let gate = Gate::new();
        let _guard = gate.close(Duration::from_secs(1)).await.unwrap();
        for _ in 0..3 {
            let r = tokio::time::timeout(Duration::from_millis(10), gate.wait_open()).await;
            assert!(r.is_err(), "the gate is closed");
        }
        assert_eq!(gate.held(), 0);
    }

    #[tokio::test]
    async fn reopening_aborts_a_drain() {
        let gate = Gate::new();
        let mut s = Busy::new(gate.clone());
        assert!(s.try_enter());
        let closed = gate.close_now().unwrap();
        let generation = closed.generation();
        let g2 = gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            reopen_if_generation(&g2, generation);
        });
        assert_eq!(closed.drain(Duration::from_secs(5)).await, Err(GateError::Aborted));
        assert!(!gate.is_closed());
    }

    #[tokio::test]
    async fn stale_guard_does_not_reopen_a_later_close() {
        let gate = Gate::new();
        let first = gate.close(Duration::from_secs(1)).await.unwrap();
        let generation = first.keep_closed();
        assert!(reopen_if_generation(&gate, generation));
        let _second = gate.close(Duration::from_secs(1)).await.unwrap();
        assert!(!reopen_if_generation(&gate, generation));
        assert!(gate.is_closed());
    }
}

#[cfg(test)]
mod order_tests {
    use super::*;

    /// A session: waits its turn, enters, works `work`, leaves; returns
    /// when it entered, from `start`.
    async fn session(gate: Arc<Gate>, start: tokio::time::Instant, work: Duration) -> Duration {
        let mut busy = Busy::new(gate);
        while !busy.try_enter() {
            busy.wait_turn().await;
        }
        let entered = start.elapsed();
        tokio::time::sleep(work).await;
        busy.leave();
        entered
    }

    #[tokio::test(start_paused = true)]
    async fn the_reopened_gate_lets_waiters_through_in_order_a_few_at_a_time() {
        let gate = Gate::new();
        let closed = gate.close_now().unwrap();
        let start = tokio::time::Instant::now();
        let mut sessions = Vec::new();
        for _ in 0..12 {
            sessions.push(tokio::spawn(session(gate.clone(), start, Duration::from_millis(2))));
            // In the order they come (paused time moves a millisecond at a time).
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(gate.held(), 12);
        let reopened = start.elapsed();
        drop(closed);
        let mut entered = Vec::new();
        for s in sessions {
            entered.push(s.await.unwrap());
        }
        let k = release_at_once();
        for (i, e) in entered.iter().enumerate() {
            // Wave by wave, each wave after the last one's work.
            let wave = (i / k) as u32;
            let expected = reopened + Duration::from_millis(2) * wave;
            assert!(
                e.abs_diff(expected) < Duration::from_micros(500),
                "session {i} entered at {e:?}, expected about {expected:?}"
            );
        }
        // Nobody queued any more: the next session goes straight in.
        let mut late = Busy::new(gate.clone());
        assert!(late.try_enter());
    }

    #[tokio::test(start_paused = true)]
    async fn the_order_ends_when_its_time_is_up_even_if_turns_are_never_given_back() {
        let gate = Gate::new();
        let closed = gate.close_now().unwrap();
        let start = tokio::time::Instant::now();
        let k = release_at_once();
        let mut sessions = Vec::new();
        for _ in 0..k + 3 {
            // Each works far longer than the order lasts.
            sessions.push(tokio::spawn(session(gate.clone(), start, Duration::from_secs(10))));
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        drop(closed);
        tokio::time::sleep(RELEASE_IN_ORDER_FOR + Duration::from_millis(1)).await;
        assert_eq!(gate.busy(), k + 3, "everyone went in once the order's time was up");
        let mut late = Busy::new(gate.clone());
        assert!(late.try_enter());
        for s in sessions {
            s.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_left_unused_passes_to_the_next_waiter() {
        let gate = Gate::new();
        let closed = gate.close_now().unwrap();
        let start = tokio::time::Instant::now();
        let k = release_at_once();
        // The first k waiters get their turns and end without using them
        // (a session closed at the flip, say).
        let mut first = Vec::new();
        for _ in 0..k {
            let mut busy = Busy::new(gate.clone());
            assert!(!busy.try_enter());
            first.push(tokio::spawn(async move {
                busy.wait_turn().await;
                drop(busy);
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let next = tokio::spawn(session(gate.clone(), start, Duration::from_millis(1)));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let reopened = start.elapsed();
        drop(closed);
        for f in first {
            f.await.unwrap();
        }
        let entered = next.await.unwrap();
        assert!(
            entered < reopened + Duration::from_millis(2),
            "the next waiter entered at {entered:?}, reopened at {reopened:?}: it waited for the order's end"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_few_waiters_the_order_ends_at_the_reopen() {
        let gate = Gate::new();
        let closed = gate.close_now().unwrap();
        let start = tokio::time::Instant::now();
        let one = tokio::spawn(session(gate.clone(), start, Duration::from_millis(1)));
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(closed);
        let entered = one.await.unwrap();
        assert!(entered <= Duration::from_millis(6), "{entered:?}");
        let mut next = Busy::new(gate.clone());
        assert!(next.try_enter(), "no order kept with turns to spare");
    }
}
