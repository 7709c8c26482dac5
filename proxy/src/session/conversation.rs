//! The conversation with the current backend: one queue of every request
//! sent to the server that still owes an answer, in the order the server
//! answers them, each tagged with who sent it (the client, capture, a
//! session move) and carrying what its sender needs to know of it.
//!
//! This is the one place that knows how the protocol pairs answers with
//! requests:
//! - a Query, a Sync and a FunctionCall are answered by exactly one
//!   ReadyForQuery (everything before it is part of that answer);
//! - Parse, Bind and Close by ParseComplete, BindComplete, CloseComplete;
//! - Describe by ParameterDescription (of a statement), then
//!   RowDescription or NoData;
//! - Execute by CommandComplete, EmptyQueryResponse or PortalSuspended;
//! - an ErrorResponse ends the extended-protocol request it answers, and
//!   the server then skips every message up to the next Sync;
//! - between a CopyInResponse and the client's CopyDone or CopyFail the
//!   server ignores Sync, including Syncs pipelined before the
//!   CopyInResponse arrived: those get no ReadyForQuery.
//!
//! The sender of a request decides what its answer means; the conversation
//! only says which entry a server message answers and whether that entry
//! is now complete.

use crate::wire::backend::tag as btag;
use crate::wire::frontend::tag as ftag;
use std::collections::VecDeque;

/// Names one entry for as long as the session lives.
pub type EntryId = u64;

/// A map keyed by entry, for what a sender keeps per request outside the
/// queue (capture's notes). Looked up for every server message.
pub type EntryMap<V> = std::collections::HashMap<EntryId, V, std::hash::BuildHasherDefault<EntryHasher>>;

/// Hashes an [`EntryId`]: ids are counters the proxy makes, not input, so
/// they need no flood-resistant hash; one multiplication spreads them.
#[derive(Debug, Default, Clone, Copy)]
pub struct EntryHasher(u64);

impl std::hash::Hasher for EntryHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client: its answer is the client's (as far as capture lets it be).
    Client,
    /// Write capture, for its own purposes: the client never asked.
    Capture,
    /// The session-move code (re-preparing statements on a new backend).
    Move,
}

/// The kind of request, which decides what answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A simple query.
    Query,
    /// A FunctionCall message.
    FunctionCall,
    /// A Sync.
    Sync,
    /// A Parse.
    Parse,
    /// A Bind.
    Bind,
    /// A Describe of a statement or a portal.
    Describe,
    /// An Execute.
    Execute,
    /// A Close of a statement or a portal.
    Close,
}

impl Request {
    /// The request a frontend message with `tag` makes; `None` for messages
    /// the server answers nothing to (Flush, COPY data, Terminate...).
    pub fn of(tag: u8) -> Option<Request> {
        Some(match tag {
            ftag::QUERY => Request::Query,
            ftag::FUNCTION_CALL => Request::FunctionCall,
            ftag::SYNC => Request::Sync,
            ftag::PARSE => Request::Parse,
            ftag::BIND => Request::Bind,
            ftag::DESCRIBE => Request::Describe,
            ftag::EXECUTE => Request::Execute,
            ftag::CLOSE => Request::Close,
            _ => return None,
        })
    }

    /// Whether a ReadyForQuery ends its answer.
    pub fn ends_with_ready(self) -> bool {
        matches!(self, Request::Query | Request::FunctionCall | Request::Sync)
    }

    /// Whether it belongs to the extended protocol (a batch a Sync ends).
    fn extended(self) -> bool {
        matches!(
            self,
            Request::Parse | Request::Bind | Request::Describe | Request::Execute | Request::Close
        )
    }
}

/// One request in flight.
#[derive(Debug)]
pub struct Entry<T> {
    id: EntryId,
    origin: Origin,
    request: Request,
    /// What the sender keeps of it until it is answered.
    pub data: T,
}

impl<T> Entry<T> {
    /// Its id.
    pub fn id(&self) -> EntryId {
        self.id
    }

    /// Who sent it.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// What it asked.
    pub fn request(&self) -> Request {
        self.request
    }

    /// Its id, origin and request.
    pub fn head(&self) -> Head {
        Head {
            id: self.id,
            origin: self.origin,
            request: self.request,
        }
    }
}

/// The id, origin and request of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The entry's id.
    pub id: EntryId,
    /// Who sent it.
    pub origin: Origin,
    /// What it asked.
    pub request: Request,
}

/// Where one server message falls in the conversation.
#[derive(Debug)]
pub struct Answer<T> {
    /// The entry it answers; `None` for messages that answer no request
    /// (notices, notifications, ParameterStatus) or when nothing is owed.
    pub to: Option<Head>,
    /// That entry, taken off the queue, when the message completes it.
    pub done: Option<Entry<T>>,
    /// Entries the server will never answer, taken off the queue: the rest
    /// of an extended batch after an error, Syncs sent during a COPY.
    pub dropped: Vec<Entry<T>>,
}

impl<T> Answer<T> {
    fn none() -> Answer<T> {
        Answer {
            to: None,
            done: None,
            dropped: Vec::new(),
        }
    }

    /// Whether the message answers a request from `origin`.
    pub fn is_from(&self, origin: Origin) -> bool {
        self.to.is_some_and(|h| h.origin == origin)
    }

    /// Whether the message completes the entry it answers.
    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }

    /// The ids of the entries dropped.
    pub fn dropped_ids(&self) -> impl Iterator<Item = EntryId> + '_ {
        self.dropped.iter().map(|e| e.id)
    }
}

/// A place in the queue.
#[derive(Debug)]
enum Slot<T> {
    Entry(Entry<T>),
    /// The client ended a COPY FROM STDIN (CopyDone or CopyFail) before the
    /// server's CopyInResponse arrived. No answer of its own: it marks
    /// which Syncs the server will ignore once that COPY starts.
    CopyEnd,
}

/// The queue of requests owed an answer on the current backend.
#[derive(Debug)]
pub struct Conversation<T> {
    slots: VecDeque<Slot<T>>,
    next_id: EntryId,
    /// The server is in COPY FROM STDIN and the client has not ended it.
    copy_in: bool,
    /// Extended-protocol requests were sent since the last Sync.
    unsynced: bool,
    /// An extended-protocol request failed and no Sync has been sent since:
    /// the server skips every message it reads until the next Sync.
    skipping: bool,
    /// A request whose answer the proxy goes on with messages of its own
    /// not sent yet (see [`Conversation::park`]).
    parked: Option<Entry<T>>,
}

impl<T> Default for Conversation<T> {
    fn default() -> Self {
        Conversation::new()
    }
}

impl<T> Conversation<T> {
    /// An empty conversation.
    pub fn new() -> Conversation<T> {
        Conversation {
            slots: VecDeque::new(),
            next_id: 1,
            copy_in: false,
            unsynced: false,
            skipping: false,
            parked: None,
        }
    }

    /// Records a request sent to the server. Returns its entry, or `None`
    /// for a Sync the server ignores (it is reading COPY data).
    pub fn push(&mut self, origin: Origin, request: Request, data: T) -> Option<EntryId> {
        if request == Request::Sync {
            self.unsynced = false;
            self.skipping = false;
            if self.copy_in {
                return None;
            }
        } else if request.extended() {
            self.unsynced = true;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.slots.push_back(Slot::Entry(Entry {
            id,
            origin,
            request,
            data,
        }));
        Some(id)
    }

    /// The client ended a COPY FROM STDIN (CopyDone or CopyFail).
    pub fn copy_end(&mut self) {
        if std::mem::take(&mut self.copy_in) {
            return;
        }
        // Sent ahead of the server's CopyInResponse (pipelined), or after
        // a COPY that failed: a marker, dropped if that COPY never starts.
        self.slots.push_back(Slot::CopyEnd);
        self.trim();
    }

    /// Keeps aside the entry a message just completed: the proxy goes on
    /// with that request with a message of its own (a COMMIT after a query
    /// it wrapped, the next part of a query it split), sent later. Until
    /// [`Conversation::resume`], the request is still in flight.
    pub fn park(&mut self, entry: Entry<T>) {
        self.parked = Some(entry);
    }

    /// The proxy sent the message that goes on with the parked request:
    /// the entry is owed its answer, after everything sent before.
    pub fn resume(&mut self) -> Option<EntryId> {
        let entry = self.parked.take()?;
        let id = entry.id;
        self.slots.push_back(Slot::Entry(entry));
        Some(id)
    }

    /// Whether nothing is owed an answer (nor parked).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.parked.is_none()
    }

    /// Whether extended-protocol requests were sent since the last Sync.
    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// Whether the server skips what is sent now, up to the next Sync: an
    /// extended-protocol request failed and no Sync was sent after it. A
    /// request made now is never answered, so nothing may wait for one.
    pub fn skipping_to_sync(&self) -> bool {
        self.skipping
    }

    /// Whether the server reads COPY data from the client.
    pub fn copy_in(&self) -> bool {
        self.copy_in
    }

    /// The entries owed an answer, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry<T>> {
        self.slots.iter().filter_map(|s| match s {
            Slot::Entry(e) => Some(e),
            Slot::CopyEnd => None,
        })
    }

    /// The entry `id`, while it is owed an answer.
    pub fn get_mut(&mut self, id: EntryId) -> Option<&mut Entry<T>> {
        self.slots.iter_mut().find_map(|s| match s {
            Slot::Entry(e) if e.id == id => Some(e),
            _ => None,
        })
    }

    /// Places one server message (by its tag) in the conversation.
    pub fn on_server(&mut self, tag: u8) -> Answer<T> {
        match tag {
            btag::READY_FOR_QUERY => self.on_ready(),
            btag::ERROR_RESPONSE => self.on_error(),
            btag::COPY_IN_RESPONSE => self.on_copy_in(),
            btag::PARSE_COMPLETE => self.completes(Request::Parse),
            btag::BIND_COMPLETE => self.completes(Request::Bind),
            btag::CLOSE_COMPLETE => self.completes(Request::Close),
            btag::ROW_DESCRIPTION | btag::NO_DATA => self.ends_if(Request::Describe),
            btag::COMMAND_COMPLETE | btag::EMPTY_QUERY_RESPONSE | btag::PORTAL_SUSPENDED => {
                self.ends_if(Request::Execute)
            }
            btag::PARAMETER_DESCRIPTION
            | btag::DATA_ROW
            | btag::COPY_OUT_RESPONSE
            | btag::COPY_BOTH_RESPONSE
            | btag::COPY_DATA
            | btag::COPY_DONE
            | btag::FUNCTION_CALL_RESPONSE => self.part(),
            // Notices, notifications, ParameterStatus and anything unknown
            // answer no request.
            _ => Answer::none(),
        }
    }

    /// A CopyEnd marker at the front belongs to a COPY whose request is
    /// over without a CopyInResponse (the server failed it first): it
    /// marks nothing any more.
    fn trim(&mut self) {
        while matches!(self.slots.front(), Some(Slot::CopyEnd)) {
            self.slots.pop_front();
        }
    }

    /// The oldest entry owed an answer: the one the next answer is for.
    pub fn front(&self) -> Option<&Entry<T>> {
        match self.slots.front() {
            Some(Slot::Entry(e)) => Some(e),
            _ => None,
        }
    }

    fn pop(&mut self) -> Option<Entry<T>> {
        let popped = match self.slots.pop_front() {
            Some(Slot::Entry(e)) => Some(e),
            _ => None,
        };
        self.trim();
        popped
    }

    /// Part of the front entry's answer, which owes more.
    fn part(&self) -> Answer<T> {
        Answer {
            to: self.front().map(Entry::head),
            ..Answer::none()
        }
    }

    /// A completion message: it completes the front entry when that asked
    /// for it, and answers nothing otherwise.
    fn completes(&mut self, request: Request) -> Answer<T> {
        if self.front().is_some_and(|e| e.request == request) {
            let done = self.pop();
            return Answer {
                to: done.as_ref().map(Entry::head),
                done,
                dropped: Vec::new(),
            };
        }
        Answer::none()
    }

    /// Completes the front entry if it is a `request`; otherwise the
    /// message is part of the front's answer (a simple query's rows).
    fn ends_if(&mut self, request: Request) -> Answer<T> {
        if self.front().is_some_and(|e| e.request == request) {
            self.completes(request)
        } else {
            self.part()
        }
    }

    fn on_ready(&mut self) -> Answer<T> {
        self.copy_in = false;
        let mut dropped = Vec::new();
        // Requests ahead of the one a ReadyForQuery ends got all their
        // answer a server will send.
        while let Some(e) = self.pop() {
            if e.request.ends_with_ready() {
                return Answer {
                    to: Some(e.head()),
                    done: Some(e),
                    dropped,
                };
            }
            dropped.push(e);
        }
        Answer {
            dropped,
            ..Answer::none()
        }
    }

    fn on_error(&mut self) -> Answer<T> {
        // An error ends copy-in mode: the client's next Sync counts.
        self.copy_in = false;
        let Some(front) = self.front() else {
            return Answer::none();
        };
        if front.request.ends_with_ready() {
            // A simple query (or a Sync, a FunctionCall) goes on to its
            // ReadyForQuery.
            return self.part();
        }
        // In an extended batch the server now skips to the Sync.
        let done = self.pop();
        let mut dropped = Vec::new();
        while self.front().is_some_and(|e| !e.request.ends_with_ready()) {
            dropped.extend(self.pop());
        }
        // A Sync already sent ends the skip; without one, what is sent
        // next is skipped too.
        let synced = self.entries().any(|e| e.request == Request::Sync);
        self.skipping = !synced;
        Answer {
            to: done.as_ref().map(Entry::head),
            done,
            dropped,
        }
    }

    /// The server entered COPY FROM STDIN for the request at the front. It
    /// ignores every Sync it reads until the client's CopyDone/CopyFail, so
    /// the Syncs sent in that span get no ReadyForQuery: they are dropped.
    fn on_copy_in(&mut self) -> Answer<T> {
        let mut answer = self.part();
        let mut i = 1;
        let mut ended = false;
        while i < self.slots.len() {
            match &self.slots[i] {
                Slot::CopyEnd => {
                    self.slots.remove(i);
                    ended = true;
                    break;
                }
                Slot::Entry(e) if e.request == Request::Sync => {
                    if let Some(Slot::Entry(e)) = self.slots.remove(i) {
                        answer.dropped.push(e);
                    }
                }
                Slot::Entry(_) => i += 1,
            }
        }
        self.copy_in = !ended;
        answer
    }
}

#[cfg(test)]
mod tests;
