//! The part of the freeze between the drain and the flip: the final sync,
//! the sequences and the verify, overlapped. Once the drain is over the
//! source no longer changes (every session waits at the gate), so what
//! reads only the source (the sequences' values, the final keys in the
//! log, the source side of the verify) runs while the replayer applies the
//! last keys, and so does the comparison of the sample's rows that the
//! final sync cannot change; only the comparison of the rest waits for the
//! replayer's confirmation.

use super::{keys, ms, wait_confirmed, Failure, Ready, Run, Step, TableKeys};
use crate::config::VerifyMode;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use switchyard_replay::catalog::QualifiedName;
use switchyard_replay::log::{Key, Lsn, Marker, Record};
use switchyard_replay::verify::{KeysCheck, KeysReport, Mapped, SourceRows};

/// What was read and compared while the replayer ran.
struct Ahead<'a> {
    synced: TableKeys,
    logged: u64,
    /// The comparison left for after the replayer's confirmation (none with
    /// verify none): the synced keys and the sample's keys the final sync
    /// may change, with the source's rows.
    late: Option<(KeysCheck<'a>, SourceRows)>,
    /// The sample's other keys, compared meanwhile.
    early: KeysReport,
    done: Instant,
}

impl Run {
    /// Final sync, sequences and verify (steps `final_sync`, `sequences`,
    /// `verify`); fails, naming the step, if any of them does or if the
    /// target differs from the source.
    pub(super) async fn final_pass(
        &mut self,
        ready: &Ready,
        tail: Option<keys::Tail>,
        limit: Instant,
    ) -> Result<(), Failure> {
        self.begin(Step::FinalSync);
        let started = Instant::now();
        let before = ready.status.confirmed_lsn.load(Relaxed);
        let freeze = Record::Marker(Marker::Freeze {
            time_micros: crate::capture::control::unix_micros(std::time::SystemTime::now()),
        });
        // Appending rings the replayer's bell: it reads the marker at once.
        let append = ready.active.log().append(freeze);
        let lsn = self
            .within(limit, append)
            .await?
            .map_err(|e| self.fail(format!("cannot write the freeze marker to the capture log: {e}")))?;
        self.report.freeze_lsn = Some(lsn.0);
        let verify = self.report.options.verify;
        let sample = (verify == VerifyMode::Sample).then_some(&ready.sample);
        let mapped = ready.mapped();
        let confirmed = async {
            let r = wait_confirmed(&self.shared, &ready.status, lsn).await;
            (r, Instant::now())
        };
        let sequences = async {
            let r = ready.sequences.sync(&ready.source, &ready.target).await;
            (r, Instant::now())
        };
        let ahead = read_ahead(
            ready,
            tail,
            Lsn(before),
            lsn,
            verify != VerifyMode::None,
            sample,
            mapped,
        );
        let ((confirmed, confirmed_at), (seq, seq_at), ahead) = self
            .within(limit, futures_util::future::join3(confirmed, sequences, ahead))
            .await?;
        confirmed.map_err(|e| self.fail(e))?;
        let ahead = ahead.map_err(|e| self.fail(e))?;
        self.report.keys_synced = keys::count(&ahead.synced);
        self.end(format!(
            "the replayer confirmed the freeze marker at {lsn} after {:.1} ms: {} key(s) logged since position \
             {before}, {} distinct; meanwhile the verify read the source and compared {} sample row(s) the final \
             sync cannot change ({:.1} ms)",
            ms(confirmed_at - started),
            ahead.logged,
            self.report.keys_synced,
            ahead.early.keys_checked(),
            ms(ahead.done - started)
        ));

        self.begin(Step::Sequences);
        let seq = seq.map_err(|e| self.fail(format!("{e}")))?;
        self.report.sequences_set = seq.set.len();
        self.end(format!(
            "{} sequence(s) set on the target, during the final sync ({:.1} ms after the freeze marker)",
            seq.set.len(),
            ms(seq_at - started)
        ));

        self.begin(Step::Verify);
        let Some((check, rows)) = ahead.late else {
            self.end("skipped (verify none)".to_owned());
            return Ok(());
        };
        let compare = check.compare(&ready.target, rows);
        let late = self
            .within(limit, compare)
            .await?
            .map_err(|e| self.fail(e.to_string()))?;
        let early = ahead.early;
        self.report.rows_verified = early.keys_checked() + late.keys_checked();
        let differing: Vec<String> = differing(&early).into_iter().chain(differing(&late)).collect();
        if !differing.is_empty() {
            return Err(self.fail(format!(
                "{} row(s) differ between the source and the target: {}; the target is not in sync, so \
                 traffic stays on the source (VERIFY compares whole tables and lists the differences)",
                differing.len(),
                differing.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        self.end(format!(
            "{} row(s) equal on both sides ({} of them compared during the final sync)",
            self.report.rows_verified,
            early.keys_checked()
        ));
        Ok(())
    }
}

/// Runs the verify's statements once before the freeze, over the whole
/// sample (nothing without one): the cutover's connections are fresh, and
/// a backend's first run of a statement pays for loading its catalog
/// entries, and its first visit of each page of shared buffers (and a read
/// of any not in them) for that page. The sample's keys are scattered over
/// their tables, so their first comparison costs milliseconds of random
/// page visits on both servers; run here, those come out of preflight
/// rather than the pause, where the same connections read the same rows
/// again. The cost is that of a few hundred key lookups on the busy
/// source. A verify that cannot run fails here rather than in the pause.
/// The rows compared change under load, so differences are not counted.
pub(super) async fn rehearse_verify(ready: &Ready) -> Result<(), String> {
    let keys = by_table(&ready.sample);
    if keys.is_empty() {
        return Ok(());
    }
    let mapped = ready.mapped();
    let check = KeysCheck::new(mapped, &keys).map_err(|e| e.to_string())?;
    let rows = check.read_source(&ready.source).await.map_err(|e| e.to_string())?;
    check.compare(&ready.target, rows).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The keys logged after `before` up to the freeze marker at `lsn`, and,
/// when `verify`, the source's rows of those keys and of the sample. The
/// source is frozen, so these are the rows as the target must hold them
/// once the replayer confirms the marker. The sample's keys that the final
/// sync cannot change are compared on the target here, while the replayer
/// runs. (A commit whose client left mid-commit may still end on the
/// source meanwhile; its keys are logged before the marker, so they are
/// among the synced ones; the replayer waits for it, and a row read here
/// before it ended then differs on the target: the cutover is called off,
/// never passed wrongly.)
async fn read_ahead<'a>(
    ready: &Ready,
    tail: Option<keys::Tail>,
    before: Lsn,
    lsn: Lsn,
    verify: bool,
    sample: Option<&TableKeys>,
    mapped: Mapped<'a>,
) -> Result<Ahead<'a>, String> {
    let dir = ready.active.config.log_dir.clone();
    let (synced, logged) = tokio::task::spawn_blocking(move || match tail {
        Some(tail) => tail.between(before, lsn),
        None => keys::between(&dir, before, lsn),
    })
    .await
    .map_err(|e| format!("reading the final keys failed: {e}"))?
    .map_err(|e| format!("cannot read the capture log: {e}"))?;
    if !verify {
        return Ok(Ahead {
            synced,
            logged,
            late: None,
            early: KeysReport::default(),
            done: Instant::now(),
        });
    }
    let empty = TableKeys::new();
    let (early_keys, mut late_keys) = split_sample(sample.unwrap_or(&empty), &synced, |table| {
        switchyard_replay::replayer::reached_by_followed_keys(&ready.source_catalog, &QualifiedName::from_logged(table))
    });
    keys::merge(&mut late_keys, synced.clone());
    let early = KeysCheck::new(mapped, &by_table(&early_keys)).map_err(|e| e.to_string())?;
    let late = KeysCheck::new(mapped, &by_table(&late_keys)).map_err(|e| e.to_string())?;
    // Both reads go out at once on the source connection, the early one
    // first: its comparison starts as soon as its rows are in.
    let compare_early = async {
        let rows = early.read_source(&ready.source).await?;
        early.compare(&ready.target, rows).await
    };
    let (early, late_rows) = futures_util::future::try_join(compare_early, late.read_source(&ready.source))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Ahead {
        synced,
        logged,
        late: Some((late, late_rows)),
        early,
        done: Instant::now(),
    })
}

/// The sample's keys the final sync cannot change on the target, and the
/// others. Every commit up to the replayer's position before the freeze is
/// applied, so a key no later commit wrote holds its final value already,
/// unless it is one the final pass syncs or its table is one whose foreign
/// keys the replayer follows (`followed`: a parent's delete reaches its
/// children without being logged, and the final pass re-syncs them).
fn split_sample(sample: &TableKeys, synced: &TableKeys, followed: impl Fn(&str) -> bool) -> (TableKeys, TableKeys) {
    let mut early = TableKeys::new();
    let mut late = TableKeys::new();
    for (table, keys) in sample {
        if followed(table) {
            late.insert(table.clone(), keys.clone());
            continue;
        }
        let changing = synced.get(table);
        let (now, then): (Vec<&Key>, Vec<&Key>) = keys.iter().partition(|k| changing.is_none_or(|c| !c.contains(*k)));
        if !now.is_empty() {
            early.insert(table.clone(), now.into_iter().cloned().collect());
        }
        if !then.is_empty() {
            late.insert(table.clone(), then.into_iter().cloned().collect());
        }
    }
    (early, late)
}

impl Ready {
    /// What the verify reads tables through.
    fn mapped(&self) -> Mapped<'_> {
        Mapped {
            mapping: &self.mapping,
            source: &self.source_catalog,
            target: &self.target_catalog,
        }
    }
}

/// The keys as the verify takes them.
fn by_table(keys: &TableKeys) -> BTreeMap<QualifiedName, Vec<Key>> {
    keys.iter()
        .map(|(table, k)| (QualifiedName::from_logged(table), k.iter().cloned().collect()))
        .collect()
}

/// The keys that differ, as `table (key): how`.
fn differing(report: &KeysReport) -> Vec<String> {
    report
        .tables
        .iter()
        .flat_map(|(table, t)| {
            t.mismatches.iter().map(move |m| {
                let key: Vec<&str> = m.key.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
                format!("{table} ({}): {}", key.join(", "), m.kind)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(tables: &[(&str, &[&str])]) -> TableKeys {
        tables
            .iter()
            .map(|(t, ks)| (t.to_string(), ks.iter().map(|k| vec![Some(k.to_string())]).collect()))
            .collect()
    }

    #[test]
    fn the_sample_keys_compared_early_are_the_ones_the_final_sync_cannot_change() {
        let sample = keys(&[
            ("public.accounts", &["1", "2", "3"]),
            ("public.orders", &["10", "11"]),
            ("public.lines", &["7"]),
        ]);
        let synced = keys(&[("public.accounts", &["2", "9"]), ("public.lines", &["8"])]);
        let (early, late) = split_sample(&sample, &synced, |t| t == "public.orders");
        // Key 2 is synced in the final pass, and orders' foreign keys are
        // followed: those wait for the replayer's confirmation.
        assert_eq!(
            early,
            keys(&[("public.accounts", &["1", "3"]), ("public.lines", &["7"])])
        );
        assert_eq!(
            late,
            keys(&[("public.accounts", &["2"]), ("public.orders", &["10", "11"])])
        );
    }

    #[test]
    fn without_a_sample_nothing_is_compared_early() {
        let synced = keys(&[("public.accounts", &["2"])]);
        let (early, late) = split_sample(&TableKeys::new(), &synced, |_| false);
        assert!(early.is_empty() && late.is_empty());
    }
}
