//! Limits on client input still arriving: a message that has begun must
//! be complete within `limits.message_timeout_ms`, and messages larger than
//! [`SMALL_MESSAGE`] hold a lease on one budget shared by all sessions
//! (`limits.client_buffer_budget_bytes`) while they are buffered. Without
//! them an idle session could hold a 64 MiB half-sent message forever, and
//! `max_clients` x `max_message_bytes` would be the proxy's memory bound.

use bytes::BytesMut;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::time::Instant;

/// Messages up to this size never take from the budget (nor wait on it).
pub const SMALL_MESSAGE: usize = 64 * 1024;

/// A read buffer this much larger than what it holds is given back.
const SHRINK_ABOVE: usize = 1 << 20;

/// Why a session's input was cut off: the client's fault.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InputError {
    /// A message began and its rest did not come in time.
    #[error("the rest of a message did not arrive within limits.message_timeout_ms ({0} ms)")]
    Timeout(u64),
    /// Buffering this message would exceed the shared input budget.
    #[error("out of memory: buffering a {0}-byte message would exceed limits.client_buffer_budget_bytes")]
    OutOfMemory(usize),
}

impl InputError {
    /// The SQLSTATE sent to the client (with FATAL; the session closes).
    pub fn code(&self) -> &'static str {
        match self {
            InputError::Timeout(_) => "08P01",
            InputError::OutOfMemory(_) => "53200",
        }
    }
}

/// Bytes of large client messages all sessions may buffer at once.
#[derive(Debug)]
pub struct Budget {
    left: AtomicUsize,
}

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Arc<Budget> {
        Arc::new(Budget {
            left: AtomicUsize::new(bytes),
        })
    }

    /// Takes `n` bytes if that many are left; given back when the lease drops.
    pub fn try_take(self: &Arc<Budget>, n: usize) -> Option<Lease> {
        self.left
            .fetch_update(SeqCst, SeqCst, |left| left.checked_sub(n))
            .ok()?;
        Some(Lease {
            budget: self.clone(),
            bytes: n,
        })
    }

    /// Bytes left now.
    pub fn left(&self) -> usize {
        self.left.load(SeqCst)
    }
}

/// Bytes taken from a [`Budget`].
#[derive(Debug)]
pub struct Lease {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.left.fetch_add(self.bytes, SeqCst);
    }
}

/// The first message in a session's read buffer, as last seen.
#[derive(Debug)]
struct Front {
    /// Where it starts in the client's byte stream (bytes consumed before it).
    at: u64,
    /// When its rest is due; `None` once it is whole.
    due: Option<Instant>,
    /// Its share of the budget, if it is large.
    lease: Option<Lease>,
}

/// One session's watch on its client input.
#[derive(Debug)]
pub struct InputGuard {
    budget: Arc<Budget>,
    timeout: Duration,
    /// Bytes received from the client so far.
    received: u64,
    front: Option<Front>,
}

impl InputGuard {
    /// Watches a session's input against `budget` and `timeout`.
    pub fn new(budget: Arc<Budget>, timeout: Duration) -> InputGuard {
        InputGuard {
            budget,
            timeout,
            received: 0,
            front: None,
        }
    }

    /// Counts bytes just read into the buffer.
    pub fn received(&mut self, n: usize) {
        self.received += n as u64;
    }

    /// Looks at the buffer after it changed (bytes read or messages taken):
    /// starts the clock on a message that has begun, takes or gives back
    /// budget, and returns memory a finished large message left behind.
    pub fn update(&mut self, rbuf: &mut BytesMut) -> Result<(), InputError> {
        if rbuf.capacity() > SHRINK_ABOVE && rbuf.len() <= SMALL_MESSAGE {
            // Copy the small rest out, so the large allocation is freed.
            *rbuf = BytesMut::from(&rbuf[..]);
        }
        if rbuf.is_empty() {
            self.front = None;
            return Ok(());
        }
        // Bytes buffered before this guard saw them (e.g. pipelined behind
        // the startup) count as received, so the offset never underflows.
        self.received = self.received.max(rbuf.len() as u64);
        let at = self.received - rbuf.len() as u64;
        let front = match &mut self.front {
            Some(f) if f.at == at => f,
            other => other.insert(Front {
                at,
                due: Some(deadline(self.timeout)),
                lease: None,
            }),
        };
        // Type byte and length; a header not yet whole announces nothing.
        let announced = match rbuf.get(1..5) {
            Some(l) => u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize + 1,
            None => 0,
        };
        if announced > 0 && rbuf.len() >= announced {
            front.due = None;
        }
        if announced > SMALL_MESSAGE && front.lease.is_none() {
            let lease = self
                .budget
                .try_take(announced)
                .ok_or(InputError::OutOfMemory(announced))?;
            front.lease = Some(lease);
        }
        Ok(())
    }

    /// The proxy is not reading from the client (its own back-pressure, or
    /// the session is held at the gate): the client cannot be late, so the
    /// clock of a message in progress starts again.
    pub fn not_reading(&mut self) {
        if let Some(f) = self.front.as_mut().filter(|f| f.due.is_some()) {
            f.due = Some(deadline(self.timeout));
        }
    }

    /// Whether a message has begun and is not yet whole.
    pub fn in_progress(&self) -> bool {
        self.front.as_ref().is_some_and(|f| f.due.is_some())
    }

    /// Resolves when the message in progress is overdue (never if none is).
    pub async fn overdue(&self) -> InputError {
        match self.front.as_ref().and_then(|f| f.due) {
            Some(due) => tokio::time::sleep_until(due).await,
            None => std::future::pending().await,
        }
        InputError::Timeout(self.timeout.as_millis() as u64)
    }
}

/// `timeout` from now, saturating far in the future.
fn deadline(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tag: u8, len: usize) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend(((len - 1) as u32).to_be_bytes());
        v
    }

    #[tokio::test]
    async fn large_messages_lease_budget_until_taken() {
        let budget = Budget::new(300_000);
        let mut a = InputGuard::new(budget.clone(), Duration::from_secs(30));
        let mut b = InputGuard::new(budget.clone(), Duration::from_secs(30));
        let mut buf_a = BytesMut::from(&header(b'Q', 200_000)[..]);
        a.received(buf_a.len());
        a.update(&mut buf_a).unwrap();
        assert!(a.in_progress());
        assert_eq!(budget.left(), 100_000);
        let mut buf_b = BytesMut::from(&header(b'Q', 200_000)[..]);
        b.received(buf_b.len());
        assert_eq!(b.update(&mut buf_b), Err(InputError::OutOfMemory(200_000)));
        // Small messages never touch the budget.
        let mut small = BytesMut::from(&header(b'Q', 1000)[..]);
        let mut c = InputGuard::new(budget.clone(), Duration::from_secs(30));
        c.received(small.len());
        c.update(&mut small).unwrap();
        assert_eq!(budget.left(), 100_000);
        // The message is taken: the lease is given back.
        buf_a.clear();
        a.update(&mut buf_a).unwrap();
        assert!(!a.in_progress());
        assert_eq!(budget.left(), 300_000);
    }

    #[test]
    fn bytes_buffered_before_the_guard_do_not_underflow() {
        let mut g = InputGuard::new(Budget::new(1 << 20), Duration::from_secs(30));
        let mut buf = BytesMut::from(&b"Q\0\0\0\x0bselect"[..]);
        g.update(&mut buf).unwrap();
        assert!(g.in_progress());
        buf.extend_from_slice(b"\0");
        g.received(1);
        g.update(&mut buf).unwrap();
        assert!(!g.in_progress());
    }

    #[tokio::test]
    async fn a_begun_message_is_due_and_an_idle_buffer_is_not() {
        let budget = Budget::new(1 << 20);
        let mut g = InputGuard::new(budget, Duration::from_millis(50));
        let mut buf = BytesMut::new();
        g.update(&mut buf).unwrap();
        assert!(!g.in_progress());
        buf.extend_from_slice(b"Q\0\0");
        g.received(3);
        g.update(&mut buf).unwrap();
        assert!(g.in_progress());
        let started = Instant::now();
        let overdue = tokio::time::timeout(Duration::from_secs(5), g.overdue()).await;
        assert_eq!(overdue, Ok(InputError::Timeout(50)));
        assert!(started.elapsed() >= Duration::from_millis(50));
        // Whole now: nothing is due.
        buf.extend_from_slice(b"\0\x04");
        g.received(2);
        g.update(&mut buf).unwrap();
        assert!(!g.in_progress());
    }
}
