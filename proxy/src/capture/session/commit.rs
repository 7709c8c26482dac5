//! Where a session's written rows are logged, decided at each commit
//! point: every row is resolved to the table its `tableoid` names (looked
//! up in the source catalog when the snapshot does not list it), and a
//! transaction whose rows cannot be logged right is refused before its
//! commit is sent. Also the on-demand lookups of tables a statement names.

use super::{resolve, CommitStep, Decided, Rejection, SessionCapture, Tap, Work};
use crate::config::UnsafePolicy;
use std::sync::Arc;
use switchyard_replay::catalog::{Catalog, TableLookup, DEFAULT_SEARCH_PATH};

impl SessionCapture {
    /// The lookup that finds `table` as the server would resolve it now.
    pub(super) fn name_lookup(&self, catalog: &Catalog, table: &crate::capture::QualName) -> TableLookup {
        let path = match self.paths.schemas() {
            [] => DEFAULT_SEARCH_PATH
                .iter()
                .map(|s| if *s == "$user" { catalog.current_user() } else { s })
                .map(str::to_owned)
                .collect(),
            p => p.to_vec(),
        };
        TableLookup::Name {
            schema: table.schema.clone(),
            name: table.name.clone(),
            path: if table.schema.is_some() { Vec::new() } else { path },
        }
    }

    /// Holds the client message until the catalog has looked `what` up.
    pub(super) fn start_lookup(&mut self, what: TableLookup) -> Decided {
        self.lookup = Some(what.clone());
        self.work.push_back(Work::Lookup(what));
        Decided::Hold
    }

    /// The lookup started for the current hold finished.
    pub(crate) fn looked_up(&mut self) {
        self.lookup = None;
        if self.plan.is_some() {
            self.advance_plan();
        }
    }

    /// Resolves every row written to the table its `tableoid` names; rows
    /// that went to another table with the same key columns move under it.
    /// Returns why some rows cannot be logged (their table's key is not
    /// what was projected, it has triggers, or the catalog does not know
    /// it), the indexes of the rows not to log (those, and rows of
    /// temporary tables, which are never captured), and the oids not in
    /// the catalog.
    pub(super) fn rebind(&mut self) -> (Option<String>, Vec<usize>, Vec<u32>) {
        let catalog = self.active.catalog.current();
        let mut wrong = None;
        let mut bad = Vec::new();
        let mut unknown = Vec::new();
        let mut temporary = false;
        // Rows of one statement that went astray usually went to one table.
        let mut last: Option<(u32, *const Tap, Arc<Tap>)> = None;
        for (i, w) in self.tx.keys.iter_mut().enumerate() {
            if w.oid == w.tap.oid {
                continue;
            }
            if let Some((oid, from, to)) = &last {
                if *oid == w.oid && std::ptr::eq(*from, Arc::as_ptr(&w.tap)) {
                    w.tap = to.clone();
                    continue;
                }
            }
            match resolve::target(&catalog, w.tap.oid, &w.tap.key_columns, w.oid) {
                resolve::Target::Same => w.oid = w.tap.oid,
                resolve::Target::Other(t) if t.has_side_effects() => {
                    wrong = Some(format!(
                        "a row meant for {} went to {}, which has triggers or rules",
                        w.tap.table, t.name
                    ));
                    bad.push(i);
                }
                resolve::Target::Other(t) => {
                    if let Some(reached) = reaches_unnamed(&catalog, t, &self.active.read_only) {
                        wrong = Some(format!(
                            "a row meant for {} went to {}, whose writes run {reached}",
                            w.tap.table, t.name
                        ));
                        bad.push(i);
                        continue;
                    }
                    let to = Arc::new(Tap {
                        table: format!("{}.{}", t.name.schema, t.name.name),
                        oid: w.oid,
                        key_columns: w.tap.key_columns.clone(),
                        extra: w.tap.extra,
                        client_returning: w.tap.client_returning,
                        text: w.tap.text.clone(),
                    });
                    last = Some((w.oid, Arc::as_ptr(&w.tap), to.clone()));
                    w.tap = to;
                }
                resolve::Target::Mismatch(t) => {
                    let key = t.key.as_ref().map(|k| k.columns.join(", ")).unwrap_or_default();
                    wrong = Some(format!(
                        "a row meant for {} went to {}, whose key ({key}) is not the one projected ({})",
                        w.tap.table,
                        t.name,
                        w.tap.key_columns.join(", ")
                    ));
                    bad.push(i);
                }
                resolve::Target::Unknown if self.active.catalog.is_temporary(w.oid) => {
                    temporary = true;
                    bad.push(i);
                }
                resolve::Target::Unknown => {
                    if !unknown.contains(&w.oid) {
                        unknown.push(w.oid);
                    }
                    bad.push(i);
                }
            }
        }
        if temporary {
            tracing::debug!(session = self.session_id, "rows of a temporary table not logged");
        }
        if wrong.is_none() && !unknown.is_empty() {
            wrong = Some(format!(
                "rows went to tables the source catalog does not list (oids {unknown:?})"
            ));
        }
        (wrong, bad, unknown)
    }

    /// At a commit point: resolves the rows written and starts logging
    /// them, or says why the transaction must not commit.
    pub(super) fn commit_step(&mut self) -> CommitStep {
        if self.tx.keys.is_empty() {
            return CommitStep::Go;
        }
        let (wrong, bad, unknown) = self.rebind();
        // A table created since the snapshot: look it up, then decide.
        let ask = unknown
            .into_iter()
            .map(TableLookup::Oid)
            .find(|what| !self.active.catalog.is_missing(what));
        if let Some(what) = ask {
            self.lookup = Some(what.clone());
            self.work.push_back(Work::Lookup(what));
            return CommitStep::Wait;
        }
        if let Some(reason) = wrong {
            let text = bad
                .first()
                .and_then(|&i| self.tx.keys.get(i))
                .map(|w| w.tap.text.clone())
                .unwrap_or_default();
            let policy = self.saw_unsafe("wrong-table", &text);
            if policy == UnsafePolicy::Reject {
                self.tx.clear();
                return CommitStep::Refuse(Rejection {
                    kind: "wrong-table",
                    detail: Some(reason),
                    transaction: true,
                });
            }
        }
        // Warned, or rows of temporary tables (never captured): not logged.
        self.drop_rows(&bad);
        if self.tx.keys.is_empty() {
            return CommitStep::Go;
        }
        self.start_log();
        CommitStep::Wait
    }

    /// Drops the rows at `indexes` (ascending), keeping savepoints pointing
    /// at the same rows.
    pub(super) fn drop_rows(&mut self, indexes: &[usize]) {
        if indexes.is_empty() {
            return;
        }
        let mut drop = vec![false; self.tx.keys.len()];
        for &i in indexes {
            if let Some(d) = drop.get_mut(i) {
                *d = true;
            }
        }
        // kept[i]: rows kept before index i, where a savepoint at i now points.
        let mut kept = Vec::with_capacity(drop.len() + 1);
        let mut n = 0;
        for d in &drop {
            kept.push(n);
            n += usize::from(!d);
        }
        kept.push(n);
        for (_, at) in &mut self.tx.savepoints {
            *at = kept.get(*at).copied().unwrap_or(n);
        }
        let mut i = 0;
        self.tx.keys.retain(|_| {
            let keep = !drop[i];
            i += 1;
            keep
        });
    }
}

/// What writing `table` (any way: the statement was classified against
/// another table, so its kind of write is not checked against this one)
/// runs unnamed: defaults, checks, domains, policies that reach a VOLATILE
/// function.
fn reaches_unnamed(
    catalog: &Catalog,
    table: &switchyard_replay::catalog::Table,
    read_only: &std::collections::HashSet<switchyard_replay::catalog::QualifiedName>,
) -> Option<switchyard_replay::catalog::Reached> {
    use switchyard_replay::catalog::Access;
    let (schema, name) = (Some(table.name.schema.as_str()), table.name.name.as_str());
    [Access::Insert, Access::Update, Access::Delete]
        .into_iter()
        .find_map(|access| catalog.relation_reaches(schema, name, access, &[], read_only))
}
