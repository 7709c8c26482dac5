//! The refusals capture sends in place of a client's statement or commit:
//! an error raised by a statement of the proxy's own, after a ROLLBACK
//! whose answers the client does not see, so that the client gets what
//! PostgreSQL gives for a failed statement or a failed COMMIT.

use super::{Expect, Rejection, SessionCapture, StmtInfo, LOG_FAILED_CODE, LOG_FAILED_HINT};
use crate::capture::rows;
use crate::session::conversation::Request;
use bytes::BytesMut;

impl SessionCapture {
    /// An unnamed Parse, Bind and Execute of a statement that raises
    /// `reason` (SQLSTATE 0A000), run in place of a client's Execute so its
    /// transaction fails as on a real error.
    pub(super) fn raise_execute(&mut self, rejection: &Rejection) -> BytesMut {
        self.raise_extended_sql(&rejection.raise_sql())
    }

    /// In place of a simple-protocol commit: a ROLLBACK whose completion
    /// the client does not see, then the error in one query, so that it
    /// gets what a failed COMMIT gives (an error, then idle). Settings the
    /// transaction made are dropped with it (the error marks it failed for
    /// the tracked state), and a wrapped query's last CommandComplete,
    /// still held, is never sent: PostgreSQL sends none for a statement
    /// whose commit failed.
    pub(super) fn refuse_simple(&mut self, rejection: &Rejection) -> BytesMut {
        if let Some(d) = self.deferred.as_mut() {
            d.bytes.truncate(d.last_complete);
        }
        self.tx.clear();
        // Decided here: what the client sends next (it may not wait for
        // the answer) already resolves names as after the rollback.
        self.paths.end_tx(false);
        self.roll_back_with(&rejection.raise_sql())
    }

    /// In place of an extended-protocol COMMIT's Execute: a ROLLBACK whose
    /// answers are dropped, then the error, so that the transaction ends as
    /// after a failed COMMIT instead of staying open and failed.
    pub(super) fn refuse_extended_commit(&mut self, rejection: &Rejection) -> BytesMut {
        self.tx.clear();
        self.paths.end_tx(false);
        self.roll_back_extended_with(&rejection.raise_sql())
    }

    /// An extended-protocol ROLLBACK whose answers are dropped, then the
    /// statement `raise` (an error for the client).
    pub(super) fn roll_back_extended_with(&mut self, raise: &str) -> BytesMut {
        let mut out = rows::extended_once("ROLLBACK");
        for request in [Request::Parse, Request::Bind, Request::Execute] {
            self.expect(request, Expect::InjectedOne);
        }
        out.extend_from_slice(&self.raise_extended_sql(raise));
        self.sent_block = false;
        out
    }

    /// One simple query: ROLLBACK (its completion dropped), then the
    /// statement `raise`, whose error and the idle ReadyForQuery reach the
    /// client (its answer is read as [`Expect::Failed`]).
    pub(super) fn roll_back_with(&mut self, raise: &str) -> BytesMut {
        self.sent_block = false;
        rows::query(&format!("ROLLBACK; {raise}"))
    }

    /// Parse/Bind/Execute of a statement failing with `message`, whose
    /// Parse and Bind completions are dropped and whose error goes to the
    /// client (the server then skips to the next Sync).
    pub(super) fn raise_extended(&mut self, message: &str) -> BytesMut {
        self.raise_extended_sql(&rows::raise_sql(LOG_FAILED_CODE, message, LOG_FAILED_HINT))
    }

    /// Parse/Bind/Execute of the statement `raise` (it fails), whose Parse
    /// and Bind completions are dropped and whose error goes to the client.
    fn raise_extended_sql(&mut self, raise: &str) -> BytesMut {
        let out = rows::extended_once(raise);
        self.expect(Request::Parse, Expect::InjectedOne);
        self.expect(Request::Bind, Expect::InjectedOne);
        self.expect(
            Request::Execute,
            Expect::Execute {
                info: StmtInfo::default(),
            },
        );
        out
    }
}
