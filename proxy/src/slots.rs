//! Connection slots: `limits.max_clients` counted atomically at accept, with
//! a reserve for admins opening the console (PostgreSQL's
//! `superuser_reserved_connections`). A [`Permit`] is held for the whole life
//! of a connection (startup and authentication included) and released on
//! every exit path by its drop, so the count can neither leak nor be raced
//! past by many simultaneous logins.

use crate::config::Limits;
use crate::input::Budget;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

/// The least number of connections that may be refused politely at once.
const MIN_REFUSING: usize = 64;

/// Which kind of slot a connection got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// One of `max_clients`.
    Regular,
    /// One of the `admin_reserve` beyond them: only an admin logging in to
    /// the admin console may keep it.
    Reserved,
    /// None left: the connection is told 53300 once its startup packet is in.
    Full,
}

/// The proxy's connection slots.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    reserve: usize,
    /// Connections holding a regular or reserved slot.
    admitted: AtomicUsize,
    /// Connections being refused for lack of a slot (bounded too, so that a
    /// flood of connections cannot pile up tasks waiting for startup packets).
    refusing: AtomicUsize,
    /// What admitted sessions' large messages in progress may buffer, together.
    budget: Arc<Budget>,
}

impl Slots {
    /// Slots for the configured limits.
    pub fn new(limits: &Limits) -> Arc<Slots> {
        Arc::new(Slots {
            max: limits.max_clients,
            reserve: limits.admin_reserve,
            admitted: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            budget: Budget::new(limits.client_buffer_budget_bytes),
        })
    }

    /// Takes a slot for a connection just accepted; `None` when even the
    /// connections being refused are at their bound (close it at once).
    pub fn acquire(self: &Arc<Slots>) -> Option<Permit> {
        let total = self.max + self.reserve;
        let taken = self
            .admitted
            .fetch_update(SeqCst, SeqCst, |n| (n < total).then_some(n + 1));
        let kind = match taken {
            Ok(n) if n < self.max => SlotKind::Regular,
            Ok(_) => SlotKind::Reserved,
            Err(_) => {
                let refusing = self
                    .refusing
                    .fetch_update(SeqCst, SeqCst, |n| (n < self.refusing_bound()).then_some(n + 1));
                if refusing.is_err() {
                    return None;
                }
                SlotKind::Full
            }
        };
        Some(Permit {
            slots: self.clone(),
            kind,
        })
    }

    /// How many connections may wait for their startup packet to be told
    /// 53300; beyond it they are told at once, unread.
    fn refusing_bound(&self) -> usize {
        (self.max + self.reserve).max(MIN_REFUSING)
    }

    /// Connections holding a regular or reserved slot now.
    pub fn admitted(&self) -> usize {
        self.admitted.load(SeqCst)
    }
}

/// One connection's slot, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    slots: Arc<Slots>,
    kind: SlotKind,
}

impl Permit {
    /// The kind of slot held.
    pub fn kind(&self) -> SlotKind {
        self.kind
    }

    /// The client-input budget shared by every session.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.slots.budget
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let counter = match self.kind {
            SlotKind::Regular | SlotKind::Reserved => &self.slots.admitted,
            SlotKind::Full => &self.slots.refusing,
        };
        counter.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max: usize, reserve: usize) -> Arc<Slots> {
        Slots::new(&Limits {
            max_clients: max,
            admin_reserve: reserve,
            ..Limits::default()
        })
    }

    #[test]
    fn regular_then_reserved_then_full_and_released_on_drop() {
        let s = slots(2, 1);
        let kinds = |ps: &[Permit]| ps.iter().map(Permit::kind).collect::<Vec<_>>();
        let mut held: Vec<Permit> = (0..4).filter_map(|_| s.acquire()).collect();
        use SlotKind::*;
        assert_eq!(kinds(&held), [Regular, Regular, Reserved, Full]);
        assert_eq!(s.admitted(), 3);
        held.truncate(1);
        assert_eq!(s.admitted(), 1);
        assert_eq!(s.acquire().map(|p| p.kind()), Some(Regular));
    }

    #[test]
    fn refusals_are_bounded_too() {
        let s = slots(1, 0);
        let _only = s.acquire();
        let refusing: Vec<Permit> = (0..100).filter_map(|_| s.acquire()).collect();
        assert_eq!(refusing.len(), MIN_REFUSING);
        assert!(refusing.iter().all(|p| p.kind() == SlotKind::Full));
    }
}
