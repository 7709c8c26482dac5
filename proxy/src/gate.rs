//! The freeze gate. While it is closed, each session is held at its next
//! transaction boundary: a new query waits (it is not failed) and
//! transactions already open run to their end. [`Gate::close`] returns once
//! no session is busy, and the [`Closed`] guard it hands back reopens the
//! gate when dropped, so every path (success, error, timeout, shutdown)
//! reopens it.
//!
//! The protocol is a Dekker-style handshake on two atomics: a session marks
//! itself busy *before* it reads `closed`, and a closer sets `closed` *before*
//! it reads `busy`. With sequentially consistent ordering at least one side
//! sees the other, so no session can slip into work after the closer has seen
//! zero busy sessions.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::Notify;

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
        self.busy.fetch_add(1, SeqCst);
        if !self.closed.load(SeqCst) {
            return true;
        }
        self.leave();
        false
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
        if self.closed.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
            return Err(GateError::AlreadyClosed);
        }
        let generation = self.generation.fetch_add(1, SeqCst) + 1;
        Ok(Closed {
            gate: self.clone(),
            generation,
        })
    }

    /// Reopens the gate if it is closed; returns whether it was.
    pub fn open(&self) -> bool {
        let was = self.closed.swap(false, SeqCst);
        if was {
            self.opened.notify_waiters();
        }
        was
    }

    fn open_generation(&self, generation: u64) {
        // A guard from an earlier close must not reopen a later one.
        if self.generation.load(SeqCst) == generation {
            self.open();
        }
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
/// session that dies mid-transaction never blocks a drain.
#[derive(Debug)]
pub struct Busy {
    gate: Arc<Gate>,
    busy: bool,
}

impl Busy {
    /// Not busy yet.
    pub fn new(gate: Arc<Gate>) -> Busy {
        Busy { gate, busy: false }
    }

    /// Whether this session is marked busy.
    pub fn is_busy(&self) -> bool {
        self.busy
    }

    /// Marks busy if the gate is open; `false` if the session must wait.
    pub fn try_enter(&mut self) -> bool {
        if self.busy {
            return true;
        }
        self.busy = self.gate.try_enter();
        self.busy
    }

    /// Back at a boundary.
    pub fn leave(&mut self) {
        if self.busy {
            self.busy = false;
            self.gate.leave();
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
