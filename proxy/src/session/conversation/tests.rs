//! The pairing rules, against message sequences a real server sends.
use super::*;

type Conv = Conversation<&'static str>;

fn client(c: &mut Conv, request: Request, what: &'static str) -> EntryId {
    c.push(Origin::Client, request, what).expect("owed an answer")
}

/// The `data` of the entry `tag` completes; panics if it completes none.
fn done(c: &mut Conv, tag: u8) -> &'static str {
    let a = c.on_server(tag);
    assert!(a.dropped.is_empty(), "nothing dropped by {}", tag as char);
    a.done.expect("completes an entry").data
}

#[test]
fn a_simple_query_owes_everything_up_to_its_ready_for_query() {
    let mut c = Conv::new();
    let q = client(&mut c, Request::Query, "q");
    for tag in [
        btag::ROW_DESCRIPTION,
        btag::DATA_ROW,
        btag::COMMAND_COMPLETE,
        btag::EMPTY_QUERY_RESPONSE,
        btag::ERROR_RESPONSE,
    ] {
        let a = c.on_server(tag);
        assert_eq!(
            a.to.map(|h| h.id),
            Some(q),
            "{} is part of the query's answer",
            tag as char
        );
        assert!(!a.is_done());
    }
    let a = c.on_server(btag::NOTICE_RESPONSE);
    assert!(a.to.is_none(), "a notice answers no request");
    assert_eq!(done(&mut c, btag::READY_FOR_QUERY), "q");
    assert!(c.is_empty());
    assert!(c.on_server(btag::READY_FOR_QUERY).to.is_none(), "nothing owed");
}

#[test]
fn an_extended_batch_pairs_each_completion() {
    let mut c = Conv::new();
    client(&mut c, Request::Parse, "parse");
    client(&mut c, Request::Bind, "bind");
    let d = client(&mut c, Request::Describe, "describe");
    client(&mut c, Request::Execute, "execute");
    assert!(c.unsynced());
    client(&mut c, Request::Sync, "sync");
    assert!(!c.unsynced());
    assert_eq!(done(&mut c, btag::PARSE_COMPLETE), "parse");
    // A completion of another kind than the front's answers nothing.
    assert!(c.on_server(btag::CLOSE_COMPLETE).to.is_none());
    assert_eq!(done(&mut c, btag::BIND_COMPLETE), "bind");
    let a = c.on_server(btag::PARAMETER_DESCRIPTION);
    assert_eq!((a.to.map(|h| h.id), a.is_done()), (Some(d), false));
    assert_eq!(done(&mut c, btag::ROW_DESCRIPTION), "describe");
    assert!(!c.on_server(btag::DATA_ROW).is_done());
    assert_eq!(done(&mut c, btag::PORTAL_SUSPENDED), "execute");
    assert_eq!(done(&mut c, btag::READY_FOR_QUERY), "sync");
    assert!(c.is_empty());
}

#[test]
fn an_error_mid_batch_skips_to_the_sync() {
    let mut c = Conv::new();
    client(&mut c, Request::Parse, "parse");
    client(&mut c, Request::Bind, "bind");
    client(&mut c, Request::Execute, "execute");
    client(&mut c, Request::Close, "close");
    client(&mut c, Request::Sync, "sync");
    client(&mut c, Request::Parse, "next batch");
    assert_eq!(done(&mut c, btag::PARSE_COMPLETE), "parse");
    let a = c.on_server(btag::ERROR_RESPONSE);
    assert_eq!(a.done.map(|e| e.data), Some("bind"), "the error answers the Bind");
    let dropped: Vec<_> = a.dropped.iter().map(|e| e.data).collect();
    assert_eq!(dropped, ["execute", "close"], "the server skips to the Sync");
    assert_eq!(done(&mut c, btag::READY_FOR_QUERY), "sync");
    assert_eq!(done(&mut c, btag::PARSE_COMPLETE), "next batch");
    // An error answering a Sync (a commit failing there) does not end it.
    client(&mut c, Request::Sync, "sync 2");
    assert!(!c.on_server(btag::ERROR_RESPONSE).is_done());
    assert_eq!(done(&mut c, btag::READY_FOR_QUERY), "sync 2");
}

#[test]
fn after_an_error_with_no_sync_sent_the_server_skips_what_comes_next() {
    let mut c = Conv::new();
    // A Sync sent behind the failing request ends the skip: what follows
    // it is answered.
    client(&mut c, Request::Parse, "parse");
    client(&mut c, Request::Sync, "sync");
    assert_eq!(c.on_server(btag::ERROR_RESPONSE).done.map(|e| e.data), Some("parse"));
    assert!(!c.skipping_to_sync(), "the Sync sent ends it");
    assert_eq!(done(&mut c, btag::READY_FOR_QUERY), "sync");

    // The failing request is the last sent (a re-prepare ahead of a
    // client's Bind, its Describe and a Flush): nothing sent now is
    // answered until the next Sync.
    client(&mut c, Request::Parse, "reprepare");
    client(&mut c, Request::Describe, "recheck");
    let a = c.on_server(btag::ERROR_RESPONSE);
    assert_eq!(a.done.map(|e| e.data), Some("reprepare"));
    assert_eq!(a.dropped.iter().map(|e| e.data).collect::<Vec<_>>(), ["recheck"]);
    assert!(c.skipping_to_sync());
    client(&mut c, Request::Bind, "bind");
    assert!(c.skipping_to_sync(), "a Bind does not end it");
    client(&mut c, Request::Sync, "client sync");
    assert!(!c.skipping_to_sync(), "the client's Sync does");
    assert_eq!(
        c.on_server(btag::READY_FOR_QUERY).dropped.len(),
        1,
        "the Bind was skipped"
    );
    assert!(c.is_empty());
}

#[test]
fn syncs_pipelined_before_copy_in_response_get_no_answer() {
    // Execute, Sync, (data), CopyDone, Sync, all before the server answers.
    let mut c = Conv::new();
    let copy = client(&mut c, Request::Execute, "copy");
    client(&mut c, Request::Sync, "ignored sync");
    c.copy_end();
    client(&mut c, Request::Sync, "sync");
    let a = c.on_server(btag::COPY_IN_RESPONSE);
    assert_eq!(a.to.map(|h| h.id), Some(copy));
    let dropped: Vec<_> = a.dropped.iter().map(|e| e.data).collect();
    assert_eq!(dropped, ["ignored sync"]);
    assert!(!c.copy_in(), "the client already ended its data");
    assert_eq!(done(&mut c, btag::COMMAND_COMPLETE), "copy");
    assert_eq!(done(&mut c, btag::READY_FOR_QUERY), "sync");
    assert!(c.is_empty());
}

#[test]
fn syncs_sent_while_the_server_reads_copy_data_are_ignored() {
    // Execute, Sync; the server answers G; then data, Sync, CopyDone, Sync.
    let mut c = Conv::new();
    client(&mut c, Request::Execute, "copy");
    client(&mut c, Request::Sync, "ignored sync");
    let a = c.on_server(btag::COPY_IN_RESPONSE);
    assert_eq!(a.dropped.len(), 1);
    assert!(c.copy_in());
    assert!(c.push(Origin::Client, Request::Sync, "during copy").is_none());
    c.copy_end();
    assert!(!c.copy_in());
    client(&mut c, Request::Sync, "sync");
    assert_eq!(done(&mut c, btag::COMMAND_COMPLETE), "copy");
    assert_eq!(done(&mut c, btag::READY_FOR_QUERY), "sync");
    assert!(c.is_empty());
}

#[test]
fn a_copy_end_for_a_copy_that_never_started_marks_nothing() {
    // The COPY fails before its CopyInResponse: the Syncs count again.
    let mut c = Conv::new();
    client(&mut c, Request::Execute, "copy");
    c.copy_end();
    client(&mut c, Request::Sync, "sync");
    let a = c.on_server(btag::ERROR_RESPONSE);
    assert_eq!(a.done.map(|e| e.data), Some("copy"));
    assert!(a.dropped.is_empty());
    assert_eq!(done(&mut c, btag::READY_FOR_QUERY), "sync");
    assert!(c.is_empty(), "no marker left behind");
    // A simple-query COPY that fails, the client's CopyDone pipelined.
    client(&mut c, Request::Query, "copy");
    c.copy_end();
    client(&mut c, Request::Query, "next");
    assert!(!c.on_server(btag::ERROR_RESPONSE).is_done());
    assert_eq!(done(&mut c, btag::READY_FOR_QUERY), "copy");
    // The marker is gone: the next COPY's Syncs are its own business.
    assert_eq!(c.front().map(|e| e.data), Some("next"));
    let a = c.on_server(btag::COPY_IN_RESPONSE);
    assert!(a.dropped.is_empty());
    assert!(c.copy_in(), "the marker of the failed COPY does not end this one");
    // A CopyDone with nothing in flight leaves nothing either.
    let mut c = Conv::new();
    c.copy_end();
    assert!(c.is_empty());
}

#[test]
fn an_error_during_copy_in_ends_it() {
    let mut c = Conv::new();
    client(&mut c, Request::Query, "copy");
    c.on_server(btag::COPY_IN_RESPONSE);
    assert!(c.copy_in());
    c.on_server(btag::ERROR_RESPONSE);
    assert!(!c.copy_in());
    // The client's CopyDone, sent before it saw the error.
    c.copy_end();
    assert_eq!(done(&mut c, btag::READY_FOR_QUERY), "copy");
    assert!(c.is_empty());
}

#[test]
fn origins_stay_apart() {
    let mut c = Conv::new();
    c.push(Origin::Move, Request::Parse, "re-prepare");
    c.push(Origin::Capture, Request::Parse, "spliced copy");
    client(&mut c, Request::Bind, "client's bind");
    client(&mut c, Request::Sync, "sync");
    let a = c.on_server(btag::PARSE_COMPLETE);
    assert!(a.is_from(Origin::Move) && !a.is_from(Origin::Client));
    let a = c.on_server(btag::PARSE_COMPLETE);
    assert!(a.is_from(Origin::Capture));
    assert_eq!(a.done.map(|e| e.data), Some("spliced copy"));
    let a = c.on_server(btag::BIND_COMPLETE);
    assert!(a.is_from(Origin::Client));
    assert_eq!(
        a.done.map(|e| (e.origin(), e.data)),
        Some((Origin::Client, "client's bind"))
    );
    assert_eq!(done(&mut c, btag::READY_FOR_QUERY), "sync");
}

#[test]
fn a_parked_request_is_in_flight_and_resumes_behind_what_was_sent() {
    let mut c = Conv::new();
    c.push(Origin::Capture, Request::Query, "begin");
    let q = client(&mut c, Request::Query, "wrapped");
    assert_eq!(done(&mut c, btag::READY_FOR_QUERY), "begin");
    let a = c.on_server(btag::READY_FOR_QUERY);
    c.park(a.done.expect("the wrapped query is done on the wire"));
    assert!(!c.is_empty(), "the client still waits for its answer");
    // Sent while the proxy waited to commit: answered first.
    c.push(Origin::Move, Request::Parse, "re-prepare");
    assert_eq!(c.resume(), Some(q), "same entry, same id");
    assert_eq!(c.resume(), None);
    assert_eq!(done(&mut c, btag::PARSE_COMPLETE), "re-prepare");
    let a = c.on_server(btag::COMMAND_COMPLETE);
    assert_eq!(a.to.map(|h| (h.id, h.origin)), Some((q, Origin::Client)));
    assert_eq!(done(&mut c, btag::READY_FOR_QUERY), "wrapped");
    assert!(c.is_empty());
}

#[test]
fn a_ready_for_query_ends_whatever_was_still_owed_before_it() {
    let mut c = Conv::new();
    client(&mut c, Request::Describe, "never answered");
    client(&mut c, Request::Sync, "sync");
    let a = c.on_server(btag::READY_FOR_QUERY);
    assert_eq!(a.done.map(|e| e.data), Some("sync"));
    assert_eq!(a.dropped.iter().map(|e| e.data).collect::<Vec<_>>(), ["never answered"]);
}
