//! The log's doorbell: a writer rings it each time records reach the log
//! (with the last position written), so a reader tailing the same log in
//! the same process wakes at once instead of polling for news.

use std::sync::Arc;
use tokio::sync::watch;

/// Rung with the last log position written. Cheap to clone; every clone
/// rings the same bell. A reader that has no bell (another process writes
/// the log) polls instead.
#[derive(Debug, Clone)]
pub struct LogBell(Arc<watch::Sender<u64>>);

impl Default for LogBell {
    fn default() -> Self {
        LogBell(Arc::new(watch::Sender::new(0)))
    }
}

impl LogBell {
    /// A bell nobody has rung yet.
    pub fn new() -> LogBell {
        LogBell::default()
    }

    /// Records up to `lsn` are in the log: wakes the readers waiting.
    pub fn ring(&self, lsn: u64) {
        self.0.send_if_modified(|last| {
            if lsn > *last {
                *last = lsn;
                true
            } else {
                false
            }
        });
    }

    /// A receiver that sees every ring from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ring_wakes_a_waiting_reader_and_an_old_position_does_not() {
        let bell = LogBell::new();
        let mut rx = bell.subscribe();
        let waiter = tokio::spawn(async move {
            rx.changed().await.expect("the bell lives");
            let at = *rx.borrow_and_update();
            (at, rx)
        });
        bell.ring(7);
        let (at, rx) = waiter.await.expect("the waiter ran");
        assert_eq!(at, 7);
        bell.ring(5);
        assert!(!rx.has_changed().expect("the bell lives"));
        bell.ring(8);
        assert!(rx.has_changed().expect("the bell lives"));
    }
}
