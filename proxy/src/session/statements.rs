//! The statement registry: every prepared statement the client created
//! through the extended protocol (named ones and the unnamed one), with the
//! Parse message that created it and, once the client described it, its
//! parameter and result types. After a move the new backend has none of
//! them: each is re-prepared from its stored Parse on first use (its Bind or
//! Describe), pipelined ahead of that message, so a move costs nothing up
//! front.
//!
//! Statements keep the client's own names on the server. The registry owns
//! the mapping (it decides what exists on which backend); an identity
//! mapping spares rewriting every Bind on the hot path, and the proxy's own
//! statements (capture's re-prepared writes) use names of their own.

use bytes::Bytes;
use std::collections::HashMap;

/// The first OID PostgreSQL gives to objects created after initdb.
pub const FIRST_USER_OID: u32 = 16384;

/// One column of a statement's result: name, type OID, type modifier.
pub type Column = (Vec<u8>, u32, i32);

/// What a Describe of a statement answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// Parameter type OIDs.
    pub params: Vec<u32>,
    /// Result columns; `None` for a statement that returns no rows.
    pub columns: Option<Vec<Column>>,
}

/// A prepared statement the client created.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The client's Parse message, to re-prepare on another backend.
    pub parse: Bytes,
    /// Its types, once the client described it on the backend it was
    /// prepared on.
    pub description: Option<Description>,
    /// Re-prepared on a backend where its types differ: it fails at each
    /// Bind with 0A000 until the client prepares it again, as PostgreSQL
    /// does with a cached plan whose result type changed.
    pub changed: bool,
}

/// What the client (or the proxy) did to a name on the current backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// A Parse went out for it.
    Prepared,
    /// A Close went out for it (or, for the unnamed statement, a simple
    /// query, which replaces it).
    Closed,
}

/// The registry.
#[derive(Debug, Default)]
pub struct Statements {
    named: HashMap<String, Statement>,
    unnamed: Option<Statement>,
    /// Since the last move: names prepared or closed on this backend. A
    /// registered name absent here has not been prepared on it yet.
    sent: HashMap<String, Sent>,
    /// The session has moved at least once (before that, every registered
    /// statement exists on the backend).
    moved: bool,
}

impl Statements {
    /// The statement the client knows by `name` (`""` is the unnamed one).
    pub fn get(&self, name: &str) -> Option<&Statement> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Statement> {
        if name.is_empty() {
            self.unnamed.as_mut()
        } else {
            self.named.get_mut(name)
        }
    }

    /// Named statements.
    pub fn len(&self) -> usize {
        self.named.len()
    }

    /// Whether there is no named statement.
    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }

    /// A Parse for `name` was sent.
    pub fn parse_sent(&mut self, name: &str) {
        if self.moved {
            self.sent.insert(name.to_owned(), Sent::Prepared);
        }
    }

    /// A Close of `name` was sent (a simple query closes the unnamed one).
    pub fn close_sent(&mut self, name: &str) {
        if self.moved {
            self.sent.insert(name.to_owned(), Sent::Closed);
        }
    }

    /// The server created `name` from `parse`.
    pub fn prepared(&mut self, name: &str, parse: Bytes) {
        let s = Statement {
            parse,
            description: None,
            changed: false,
        };
        if name.is_empty() {
            self.unnamed = Some(s);
        } else {
            self.named.insert(name.to_owned(), s);
        }
    }

    /// The server closed `name`.
    pub fn closed(&mut self, name: &str) {
        if name.is_empty() {
            self.unnamed = None;
        } else {
            self.named.remove(name);
        }
    }

    /// `DEALLOCATE ALL` or `DISCARD ALL` ran.
    pub fn clear(&mut self) {
        self.named.clear();
        self.unnamed = None;
    }

    /// The client's Describe of `name` answered `description`.
    pub fn described(&mut self, name: &str, description: Description) {
        if let Some(s) = self.get_mut(name) {
            s.description = Some(description);
        }
    }

    /// The statement a Bind or Describe of `name` needs prepared first on
    /// the current backend, if any.
    pub fn needs_prepare(&self, name: &str) -> Option<&Statement> {
        if !self.moved || self.sent.contains_key(name) {
            return None;
        }
        self.get(name)
    }

    /// The proxy re-prepared `name` on the current backend.
    pub fn reprepared(&mut self, name: &str) {
        self.sent.insert(name.to_owned(), Sent::Prepared);
    }

    /// The proxy used the unnamed statement for its own purpose: the
    /// client's is re-prepared at its next use.
    pub fn unnamed_taken(&mut self) {
        self.sent.remove("");
    }

    /// The proxy ran a simple query on the backend (a move's probe), which
    /// replaces the unnamed statement: the client's is re-prepared at its
    /// next use, every other statement stays where it is.
    pub fn unnamed_lost(&mut self) {
        if !self.moved {
            self.moved = true;
            for name in self.named.keys() {
                self.sent.insert(name.clone(), Sent::Prepared);
            }
        }
        self.sent.remove("");
    }

    /// A re-prepare of `name` did not happen (the server skipped or
    /// refused it): try again at its next use.
    pub fn reprepare_failed(&mut self, name: &str) {
        self.sent.remove(name);
    }

    /// The Parse messages of every statement, to note what they touch.
    pub fn parses(&self) -> impl Iterator<Item = &Bytes> {
        self.named.values().chain(self.unnamed.iter()).map(|s| &s.parse)
    }

    /// Whether `name`'s types differ on this backend from where the client
    /// prepared it.
    pub fn is_changed(&self, name: &str) -> bool {
        self.get(name).is_some_and(|s| s.changed)
    }

    /// The re-prepared `name` answered `now`; `same` compares it with what
    /// the client was told.
    pub fn rechecked(&mut self, name: &str, now: &Description, same: impl Fn(&Description, &Description) -> bool) {
        if let Some(s) = self.get_mut(name) {
            if let Some(before) = &s.description {
                s.changed = !same(before, now);
            }
        }
    }

    /// OIDs of user-defined types (enums, domains, composites...) that the
    /// client's statements name: parameter types of their Parse messages
    /// and the types their descriptions reported. Another database numbers
    /// them differently.
    pub fn user_type_oids(&self) -> std::collections::BTreeSet<u32> {
        let mut out = std::collections::BTreeSet::new();
        for s in self.named.values().chain(self.unnamed.iter()) {
            if let Ok(types) =
                crate::wire::frontend::parse_param_types(&crate::wire::frontend::FrontendMessage::new(&s.parse))
            {
                out.extend(types);
            }
            if let Some(d) = &s.description {
                out.extend(d.params.iter().copied());
                out.extend(d.columns.iter().flatten().map(|c| c.1));
            }
        }
        out.retain(|o| *o >= FIRST_USER_OID);
        out
    }

    /// The session is on a new backend: nothing is prepared there yet.
    pub fn moved(&mut self) {
        self.moved = true;
        self.sent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_reprepared_once_after_a_move() {
        let mut s = Statements::default();
        s.prepared("s1", Bytes::from_static(b"P"));
        assert!(s.needs_prepare("s1").is_none(), "on its own backend");
        s.moved();
        assert!(s.needs_prepare("s1").is_some());
        s.reprepared("s1");
        assert!(s.needs_prepare("s1").is_none());
        assert!(s.needs_prepare("nope").is_none());
        s.moved();
        s.close_sent("s1");
        assert!(
            s.needs_prepare("s1").is_none(),
            "closed by the client: the server says so"
        );
    }

    #[test]
    fn a_changed_result_type_is_remembered() {
        let mut s = Statements::default();
        s.prepared("", Bytes::from_static(b"P"));
        let int = Description {
            params: vec![],
            columns: Some(vec![(b"v".to_vec(), 23, -1)]),
        };
        let text = Description {
            params: vec![],
            columns: Some(vec![(b"v".to_vec(), 25, -1)]),
        };
        s.described("", int.clone());
        s.rechecked("", &int, |a, b| a == b);
        assert!(!s.is_changed(""));
        s.rechecked("", &text, |a, b| a == b);
        assert!(s.is_changed(""));
    }
}
