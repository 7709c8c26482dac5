//! Closing a connection that is done without paying for it at once: a
//! backend's exit costs its server a few milliseconds of CPU (its mappings
//! of shared memory torn down, its statistics flushed). Right after a
//! cutover that CPU is better spent on every session's first queries on
//! the target, so the connections that end there (the control
//! connections, and the backends the moved sessions left) close a little
//! later instead, and one at a time (in a burst of a few dozen): two dozen
//! exits at one instant stall every session on a small machine as surely
//! as at the flip.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a finished connection stays open before it closes.
pub const CLOSE_AFTER: Duration = Duration::from_millis(500);

/// The time between two closes: a cutover's two dozen exits spread over
/// a quarter of a second.
pub const CLOSE_EVERY: Duration = Duration::from_millis(10);

/// How far closes are spread at most. Past it (more closes than a burst,
/// e.g. sessions moving back and forth quickly) they are not spaced at
/// all: a finished connection still holds one of its server's connection
/// slots, and a move back to that server needs as many new ones.
pub const SPREAD_AT_MOST: Duration = Duration::from_millis(250);

/// The next free close slot.
static NEXT_SLOT: Mutex<Option<Instant>> = Mutex::new(None);

/// When a connection finished now may close: [`CLOSE_AFTER`] from now, or
/// [`CLOSE_EVERY`] after the close before it while that stays within
/// [`SPREAD_AT_MOST`].
pub fn close_slot() -> Instant {
    let earliest = Instant::now() + CLOSE_AFTER;
    let mut next = NEXT_SLOT.lock().unwrap_or_else(|p| p.into_inner());
    match *next {
        Some(n) if n > earliest + SPREAD_AT_MOST => earliest,
        n => {
            let slot = n.map_or(earliest, |n| n.max(earliest));
            *next = Some(slot + CLOSE_EVERY);
            slot
        }
    }
}

/// Closes `client` at its [`close_slot`], on a task of its own (at once
/// when no runtime runs).
pub fn close_later(client: tokio_postgres::Client) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let slot = tokio::time::Instant::from_std(close_slot());
        runtime.spawn(async move {
            tokio::time::sleep_until(slot).await;
            drop(client);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_spaced_and_none_comes_early() {
        let before = Instant::now();
        let slots: Vec<Instant> = (0..5).map(|_| close_slot()).collect();
        assert!(slots[0] >= before + CLOSE_AFTER);
        for w in slots.windows(2) {
            assert!(w[1] >= w[0] + CLOSE_EVERY, "{slots:?}");
        }
        // However many are queued, none waits past the spread.
        let last = (0..1000).fold(Instant::now(), |_, _| close_slot());
        assert!(
            last <= Instant::now() + CLOSE_AFTER + SPREAD_AT_MOST + CLOSE_EVERY,
            "{last:?}"
        );
    }
}
