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
//! mapping spares rewriting every Bind on the hot path. Where write capture
//! runs a statement under a proxy-owned name instead (a spliced copy of a
//! statement prepared before capture started), the registry holds that
//! server name too, with capture's note on the statement (what it makes of
//! it): one record per client name, for the session, capture and the move.
//! Capture's part follows what is *sent* (a statement is noted as its Parse
//! or Bind goes out, so a pipelined Bind finds it), the session's what the
//! server *confirmed* (ParseComplete, CloseComplete).

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

/// What the registry holds under one client name.
#[derive(Debug)]
struct Named<A> {
    /// The statement, once the server confirmed its Parse.
    statement: Option<Statement>,
    /// Its name on the current backend when it is not the client's own
    /// (a proxy-owned copy capture spliced).
    server: Option<String>,
    /// What capture makes of it, on the current backend.
    note: Option<A>,
}

impl<A> Default for Named<A> {
    fn default() -> Self {
        Named {
            statement: None,
            server: None,
            note: None,
        }
    }
}

impl<A> Named<A> {
    fn is_empty(&self) -> bool {
        self.statement.is_none() && self.server.is_none() && self.note.is_none()
    }
}

/// The registry; `A` is what write capture notes per statement.
#[derive(Debug)]
pub struct Statements<A = ()> {
    named: HashMap<String, Named<A>>,
    unnamed: Named<A>,
    /// Named statements the server confirmed.
    count: usize,
    /// Since the last move: names prepared or closed on this backend. A
    /// registered name absent here has not been prepared on it yet.
    sent: HashMap<String, Sent>,
    /// The session has moved at least once (before that, every registered
    /// statement exists on the backend).
    moved: bool,
}

impl<A> Default for Statements<A> {
    fn default() -> Self {
        Statements {
            named: HashMap::new(),
            unnamed: Named::default(),
            count: 0,
            sent: HashMap::new(),
            moved: false,
        }
    }
}

impl<A> Statements<A> {
    fn slot(&self, name: &str) -> Option<&Named<A>> {
        if name.is_empty() {
            Some(&self.unnamed)
        } else {
            self.named.get(name)
        }
    }

    fn slot_mut(&mut self, name: &str) -> &mut Named<A> {
        if name.is_empty() {
            &mut self.unnamed
        } else {
            self.named.entry(name.to_owned()).or_default()
        }
    }

    /// Drops the record of `name` once nothing is left in it.
    fn tidy(&mut self, name: &str) {
        if !name.is_empty() && self.named.get(name).is_some_and(Named::is_empty) {
            self.named.remove(name);
        }
    }

    /// The statement the client knows by `name` (`""` is the unnamed one).
    pub fn get(&self, name: &str) -> Option<&Statement> {
        self.slot(name)?.statement.as_ref()
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Statement> {
        let slot = if name.is_empty() {
            &mut self.unnamed
        } else {
            self.named.get_mut(name)?
        };
        slot.statement.as_mut()
    }

    /// Named statements.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there is no named statement.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// What capture noted of `name` on the current backend.
    pub fn note(&self, name: &str) -> Option<&A> {
        self.slot(name)?.note.as_ref()
    }

    /// The name `name` goes by on the current backend.
    pub fn server_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.slot(name).and_then(|s| s.server.as_deref()).unwrap_or(name)
    }

    /// Capture sends `name` (its Parse, or a spliced copy under `server`, a
    /// proxy-owned name): `note` is what it makes of it from now on.
    pub fn annotate(&mut self, name: &str, note: A, server: Option<String>) {
        let slot = self.slot_mut(name);
        slot.note = Some(note);
        slot.server = server;
    }

    /// Capture sends a Close of `name`: its note and proxy-owned server
    /// name, taken off.
    pub fn take_note(&mut self, name: &str) -> Option<(A, Option<String>)> {
        let slot = if name.is_empty() {
            &mut self.unnamed
        } else {
            self.named.get_mut(name)?
        };
        let note = slot.note.take();
        let server = slot.server.take();
        self.tidy(name);
        note.map(|n| (n, server))
    }

    /// Capture ends: every note, with its client name and proxy-owned
    /// server name, taken off.
    pub fn take_notes(&mut self) -> Vec<(String, A, Option<String>)> {
        let mut out = Vec::new();
        if let Some(note) = self.unnamed.note.take() {
            out.push((String::new(), note, self.unnamed.server.take()));
        }
        for (name, slot) in &mut self.named {
            if let Some(note) = slot.note.take() {
                out.push((name.clone(), note, slot.server.take()));
            }
        }
        self.named.retain(|_, s| !s.is_empty());
        out
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
        let new = self.slot_mut(name).statement.replace(s).is_none();
        if new && !name.is_empty() {
            self.count += 1;
        }
    }

    /// The server closed `name`.
    pub fn closed(&mut self, name: &str) {
        let slot = if name.is_empty() {
            &mut self.unnamed
        } else {
            match self.named.get_mut(name) {
                Some(slot) => slot,
                None => return,
            }
        };
        if slot.statement.take().is_some() && !name.is_empty() {
            self.count -= 1;
        }
        self.tidy(name);
    }

    /// `DEALLOCATE ALL` or `DISCARD ALL` ran.
    pub fn clear(&mut self) {
        self.unnamed.statement = None;
        for slot in self.named.values_mut() {
            slot.statement = None;
        }
        self.named.retain(|_, s| !s.is_empty());
        self.count = 0;
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
            for (name, slot) in &self.named {
                if slot.statement.is_some() {
                    self.sent.insert(name.clone(), Sent::Prepared);
                }
            }
        }
        self.sent.remove("");
    }

    /// A re-prepare of `name` did not happen (the server skipped or
    /// refused it): try again at its next use.
    pub fn reprepare_failed(&mut self, name: &str) {
        self.sent.remove(name);
    }

    /// Every statement the server confirmed.
    fn statements(&self) -> impl Iterator<Item = &Statement> {
        self.named
            .values()
            .chain(std::iter::once(&self.unnamed))
            .filter_map(|s| s.statement.as_ref())
    }

    /// The Parse messages of every statement, to note what they touch.
    pub fn parses(&self) -> impl Iterator<Item = &Bytes> {
        self.statements().map(|s| &s.parse)
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
        for s in self.statements() {
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

    /// The session is on a new backend: nothing is prepared there yet,
    /// and nothing of capture's.
    pub fn moved(&mut self) {
        self.moved = true;
        self.sent.clear();
        self.unnamed.note = None;
        self.unnamed.server = None;
        for slot in self.named.values_mut() {
            slot.note = None;
            slot.server = None;
        }
        self.named.retain(|_, s| !s.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_reprepared_once_after_a_move() {
        let mut s: Statements = Statements::default();
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
    fn capture_notes_follow_what_is_sent_statements_what_is_confirmed() {
        let mut s: Statements<&str> = Statements::default();
        // Noted as its Parse goes out, before the server confirms it.
        s.annotate("s1", "spliced", None);
        assert_eq!(s.note("s1"), Some(&"spliced"));
        assert!(s.get("s1").is_none() && s.is_empty());
        s.prepared("s1", Bytes::from_static(b"P1"));
        assert_eq!((s.len(), s.server_name("s1")), (1, "s1"));
        // A statement prepared before capture, run as a proxy-owned copy.
        s.prepared("s2", Bytes::from_static(b"P2"));
        s.annotate("s2", "copy", Some("switchyard_1_1".into()));
        assert_eq!(s.server_name("s2"), "switchyard_1_1");
        assert_eq!(s.len(), 2);
        // The client closes s1: capture's part goes as the Close is sent,
        // the statement once the server confirms.
        assert_eq!(s.take_note("s1"), Some(("spliced", None)));
        assert!(s.get("s1").is_some());
        s.closed("s1");
        assert!(s.get("s1").is_none() && s.note("s1").is_none());
        assert_eq!(s.len(), 1);
        // On a new backend nothing of capture's exists.
        s.moved();
        assert!(s.note("s2").is_none());
        assert_eq!(s.server_name("s2"), "s2");
        assert!(s.needs_prepare("s2").is_some(), "the client's statement stays");
        // Capture ending takes every note off.
        s.annotate("", "unnamed", None);
        s.annotate("s3", "other", Some("switchyard_2_1".into()));
        let mut notes = s.take_notes();
        notes.sort();
        assert_eq!(
            notes,
            [
                (String::new(), "unnamed", None),
                ("s3".to_owned(), "other", Some("switchyard_2_1".to_owned()))
            ]
        );
        assert!(s.note("s3").is_none() && s.note("").is_none());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_changed_result_type_is_remembered() {
        let mut s: Statements = Statements::default();
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
