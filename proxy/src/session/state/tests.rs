//! The conversation tracker against hand-built message sequences.
use super::*;
use crate::wire::{put_cstr, write_message};
use bytes::{BufMut, BytesMut};

/// Builds a message and leaks it: tests only, so views can be `'static`.
fn leak(tag: u8, body: impl FnOnce(&mut BytesMut)) -> &'static [u8] {
    let mut out = BytesMut::new();
    write_message(&mut out, tag, body);
    Box::leak(out.to_vec().into_boxed_slice())
}
fn fe(tag: u8, body: impl FnOnce(&mut BytesMut)) -> FrontendMessage<'static> {
    FrontendMessage::new(leak(tag, body))
}
fn be(tag: u8, body: impl FnOnce(&mut BytesMut)) -> BackendMessage<'static> {
    BackendMessage::new(leak(tag, body))
}
/// A server message the client sees as it is.
trait Hear {
    fn on_server(&mut self, msg: BackendMessage<'_>, now: Instant) -> ServerEvent;
}
impl Hear for SessionState {
    fn on_server(&mut self, msg: BackendMessage<'_>, now: Instant) -> ServerEvent {
        let answer = self.hear(msg);
        self.seen(msg, answer, now)
    }
}
fn query(sql: &str) -> FrontendMessage<'static> {
    fe(ftag::QUERY, |b| put_cstr(b, sql.as_bytes()))
}
fn ready(s: u8) -> BackendMessage<'static> {
    be(btag::READY_FOR_QUERY, |b| b.put_u8(s))
}
fn complete(t: &str) -> BackendMessage<'static> {
    be(btag::COMMAND_COMPLETE, |b| put_cstr(b, t.as_bytes()))
}

#[test]
fn boundary_follows_ready_for_query() {
    let mut s: SessionState = SessionState::new();
    let now = Instant::now();
    assert!(s.at_boundary());
    s.on_client(query("begin"), now).unwrap();
    assert_eq!(s.phase(), Phase::Active);
    let ev = s.on_server(ready(b'T'), now);
    assert!(!ev.at_boundary);
    assert_eq!(s.phase(), Phase::InTransaction);
    s.on_client(query("select x"), now).unwrap();
    s.on_server(ready(b'E'), now);
    assert_eq!(s.phase(), Phase::Failed);
    s.on_client(query("rollback"), now).unwrap();
    assert!(s.on_server(ready(b'I'), now).at_boundary);
}

#[test]
fn prepared_statements_commit_on_parse_complete_and_skip_after_error() {
    let mut s: SessionState = SessionState::new();
    let now = Instant::now();
    let parse = |name: &str| {
        fe(ftag::PARSE, |b| {
            put_cstr(b, name.as_bytes());
            put_cstr(b, b"select 1");
            b.put_i16(0);
        })
    };
    s.on_client(parse("a"), now).unwrap();
    s.on_client(parse("b"), now).unwrap();
    s.on_client(fe(ftag::SYNC, |_| {}), now).unwrap();
    assert!(!s.at_boundary());
    s.on_server(be(btag::PARSE_COMPLETE, |_| {}), now);
    s.on_server(be(btag::ERROR_RESPONSE, |b| b.put_u8(0)), now);
    assert!(s.on_server(ready(b'I'), now).at_boundary);
    assert!(s.statements().get("a").is_some());
    assert!(s.statements().get("b").is_none());
    s.on_client(
        fe(ftag::CLOSE, |b| {
            b.put_u8(b'S');
            put_cstr(b, b"a");
        }),
        now,
    )
    .unwrap();
    s.on_client(fe(ftag::SYNC, |_| {}), now).unwrap();
    s.on_server(be(btag::CLOSE_COMPLETE, |_| {}), now);
    s.on_server(ready(b'I'), now);
    assert!(s.statements().is_empty());
}

#[test]
fn settings_apply_on_commit_only() {
    let mut s: SessionState = SessionState::new();
    let now = Instant::now();
    s.on_client(query("SET search_path = a"), now).unwrap();
    s.on_server(complete("SET"), now);
    s.on_server(ready(b'I'), now);
    assert_eq!(s.settings()["search_path"], "SET search_path = a");
    // A SET inside a transaction that rolls back is forgotten.
    s.on_client(query("begin"), now).unwrap();
    s.on_server(ready(b'T'), now);
    s.on_client(query("set work_mem = '8MB'"), now).unwrap();
    s.on_server(complete("SET"), now);
    s.on_server(ready(b'T'), now);
    s.on_client(query("rollback"), now).unwrap();
    s.on_server(complete("ROLLBACK"), now);
    s.on_server(ready(b'I'), now);
    assert!(!s.settings().contains_key("work_mem"));
    s.on_client(query("LISTEN jobs"), now).unwrap();
    s.on_server(complete("LISTEN"), now);
    s.on_server(ready(b'I'), now);
    assert!(s.listens().contains("jobs"));
    s.on_client(query("create temp table t(x int)"), now).unwrap();
    s.on_server(complete("CREATE TABLE"), now);
    s.on_server(ready(b'I'), now);
    assert!(s.pins().contains(&Pin::TempTable));
    s.on_client(query("LISTEN a; select 1; SET x = 1"), now).unwrap();
    s.on_server(complete("LISTEN"), now);
    s.on_server(complete("SELECT 1"), now);
    s.on_server(complete("SET"), now);
    s.on_server(ready(b'I'), now);
    assert!(s.listens().contains("a"));
    assert_eq!(s.settings()["x"], "SET x = 1");
}

#[test]
fn syncs_sent_during_copy_in_expect_no_reply() {
    let now = Instant::now();
    let sync = || fe(ftag::SYNC, |_| {});
    let execute = || {
        fe(ftag::EXECUTE, |b| {
            put_cstr(b, b"");
            b.put_i32(0);
        })
    };
    let copy_done = || fe(ftag::COPY_DONE, |_| {});
    // Pipelined: Execute, Sync, data, CopyDone, Sync before the server answers.
    let mut s: SessionState = SessionState::new();
    for m in [execute(), sync(), copy_done(), sync()] {
        s.on_client(m, now).unwrap();
    }
    s.on_server(be(btag::COPY_IN_RESPONSE, |b| b.put_u8(0)), now);
    s.on_server(complete("COPY 3"), now);
    assert!(s.on_server(ready(b'I'), now).at_boundary);
    // Waiting: Execute, Sync; the server answers G; then data, CopyDone, Sync.
    let mut s: SessionState = SessionState::new();
    s.on_client(execute(), now).unwrap();
    s.on_client(sync(), now).unwrap();
    s.on_server(be(btag::COPY_IN_RESPONSE, |b| b.put_u8(0)), now);
    s.on_client(copy_done(), now).unwrap();
    s.on_client(sync(), now).unwrap();
    s.on_server(complete("COPY 3"), now);
    assert!(s.on_server(ready(b'I'), now).at_boundary);
    // Simple query COPY.
    let mut s: SessionState = SessionState::new();
    s.on_client(query("copy t from stdin"), now).unwrap();
    s.on_server(be(btag::COPY_IN_RESPONSE, |b| b.put_u8(0)), now);
    s.on_client(copy_done(), now).unwrap();
    s.on_server(complete("COPY 1"), now);
    assert!(s.on_server(ready(b'I'), now).at_boundary);
}

#[test]
fn malformed_client_messages_are_errors() {
    let mut s: SessionState = SessionState::new();
    let bad = fe(ftag::PARSE, |b| b.put_slice(b"name-without-nul"));
    assert!(s.on_client(bad, Instant::now()).is_err());
}

#[test]
fn answers_to_the_proxys_own_requests_are_not_the_clients() {
    use crate::session::conversation::{Origin, Request};
    let now = Instant::now();
    let mut s: SessionState = SessionState::new();
    // Capture wraps an autocommit query: BEGIN of its own, then the
    // client's query, then (once the keys are logged) its COMMIT.
    s.open(Origin::Capture, Request::Query).unwrap();
    s.on_client(query("SET a = 1"), now).unwrap();
    for m in [complete("BEGIN"), ready(b'T')] {
        let answer = s.hear(m);
        assert!(answer.is_from(Origin::Capture));
        s.unseen(answer, false);
    }
    assert_eq!(s.tx_status(), TxStatus::Idle, "the client never saw the BEGIN");
    let answer = s.hear(complete("SET"));
    assert!(answer.is_from(Origin::Client));
    s.seen(complete("SET"), answer, now);
    // The query is over on the wire, not for the client: the proxy goes on.
    let answer = s.hear(ready(b'T'));
    assert!(answer.is_done());
    s.unseen(answer, true);
    assert!(!s.at_boundary(), "the client still waits");
    assert_eq!(s.phase(), Phase::Active);
    // Sent while the commit waited for the log: a query of the proxy's own.
    s.open(Origin::Capture, Request::Query).unwrap();
    s.resume().expect("the client's query goes on with the COMMIT");
    for m in [complete("SELECT 1"), ready(b'T')] {
        let answer = s.hear(m);
        assert!(answer.is_from(Origin::Capture), "answered first: sent first");
        s.unseen(answer, false);
    }
    let answer = s.hear(complete("COMMIT"));
    assert!(answer.is_from(Origin::Client));
    s.unseen(answer, false);
    let answer = s.hear(ready(b'I'));
    assert!(answer.is_from(Origin::Client));
    let event = s.seen(ready(b'I'), answer, now);
    assert!(event.at_boundary && event.ready.is_some());
    assert_eq!(s.settings()["a"], "SET a = 1", "the query's effects carried over");
}
