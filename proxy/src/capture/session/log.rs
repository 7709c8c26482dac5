//! The log: the record of a transaction's keys, the appends that hold a
//! commit and the late ones that cannot, and what a failed append does.

use super::{Expect, Note, Plan, SessionCapture, Work, Written, LOG_FAILED_CODE, LOG_FAILED_HINT};
use crate::capture::control::{count_commit, unix_micros};
use crate::capture::rows;
use bytes::BytesMut;
use std::collections::BTreeMap;
use std::time::SystemTime;
use switchyard_replay::log::{CommitRecord, Record, TableKeys};

impl SessionCapture {
    fn record(&mut self) -> Record {
        let mut tables: BTreeMap<String, TableKeys> = BTreeMap::new();
        let mut statements: Vec<String> = Vec::new();
        for Written { tap, key, .. } in self.tx.keys.drain(..) {
            let t = tables.entry(tap.table.clone()).or_insert_with(|| TableKeys {
                table: tap.table.clone(),
                key_columns: tap.key_columns.clone(),
                keys: Vec::new(),
            });
            t.keys.push(key);
            if statements.last() != Some(&tap.text) {
                statements.push(tap.text.clone());
            }
        }
        self.tx.savepoints.clear();
        let n: usize = tables.values().map(|t| t.keys.len()).sum();
        count_commit(&self.active, n);
        Record::Commit(CommitRecord {
            session_id: self.session_id,
            commit_time_micros: unix_micros(SystemTime::now()),
            tables: tables.into_values().collect(),
            statements,
            backend_pid: self.backend_pid,
        })
    }

    pub(super) fn start_log(&mut self) {
        let record = self.record();
        self.logging = true;
        self.work.push_back(Work::Log { record, hold: true });
    }

    pub(super) fn log_late(&mut self) {
        let (_, bad, _) = self.rebind();
        self.drop_rows(&bad);
        self.active.late.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            session = self.session_id,
            "keys logged after their commit; a commit path was not held"
        );
        let record = self.record();
        self.work.push_back(Work::Log { record, hold: false });
    }

    /// The append started for the current hold finished.
    pub(crate) fn logged(&mut self) {
        self.logging = false;
        self.advance_plan();
    }

    /// The append started for the current hold failed: the commit it held
    /// must not reach the database. A commit the proxy itself would send
    /// (a wrapped query, the next part of a split one) is replaced by a
    /// rollback and an error now; a client's COMMIT or Sync, held in its
    /// read buffer, is refused when it is presented again.
    pub(crate) fn log_failed(&mut self, message: String) {
        self.logging = false;
        self.tx.clear();
        match self.plan.take() {
            Some(Plan::WrapCommit | Plan::Parts(_)) => {
                self.deferred = None;
                let out = self.roll_back_refused(&message);
                self.work.push_back(Work::Continue(out, Note(Expect::Failed)));
            }
            None => self.refuse_commit = Some(message),
        }
    }

    /// A simple query that rolls the open transaction back and fails with
    /// `message`: ReadyForQuery then says idle, as after a failed COMMIT.
    pub(super) fn roll_back_refused(&mut self, message: &str) -> BytesMut {
        self.roll_back_with(&rows::raise_sql(LOG_FAILED_CODE, message, LOG_FAILED_HINT))
    }
}
