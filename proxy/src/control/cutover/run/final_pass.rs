//! The part of the freeze between the drain and the flip: the final sync,
//! the sequences and the verify, overlapped. Once the drain is over the
//! source no longer changes (every session waits at the gate), so what
//! reads only the source (the sequences' values, the final keys in the
//! log, the source side of the verify) runs while the replayer applies the
//! last keys; only the comparison on the target waits for the replayer's
//! confirmation.

use super::{keys, ms, wait_confirmed, Failure, Ready, Run, Step, TableKeys};
use crate::config::VerifyMode;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use switchyard_replay::catalog::QualifiedName;
use switchyard_replay::log::{Key, Lsn, Marker, Record};
use switchyard_replay::verify::{KeysCheck, KeysReport, Mapped, SourceRows};

/// What was read from the source while the replayer ran.
struct Ahead<'a> {
    synced: TableKeys,
    logged: u64,
    /// The verify's statements and the source's rows (none with verify none).
    source_side: Option<(KeysCheck<'a>, SourceRows)>,
    done: Instant,
}

impl Run {
    /// Final sync, sequences and verify (steps `final_sync`, `sequences`,
    /// `verify`); fails, naming the step, if any of them does or if the
    /// target differs from the source.
    pub(super) async fn final_pass(&mut self, ready: &Ready, limit: Instant) -> Result<(), Failure> {
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
        let mapped = Mapped {
            mapping: &ready.mapping,
            source: &ready.source_catalog,
            target: &ready.target_catalog,
        };
        let confirmed = async {
            let r = wait_confirmed(&self.shared, &ready.status, lsn).await;
            (r, Instant::now())
        };
        let sequences = async {
            let r = ready.sequences.sync(&ready.source, &ready.target).await;
            (r, Instant::now())
        };
        let ahead = read_ahead(ready, Lsn(before), lsn, verify != VerifyMode::None, sample, mapped);
        let ((confirmed, confirmed_at), (seq, seq_at), ahead) = self
            .within(limit, futures_util::future::join3(confirmed, sequences, ahead))
            .await?;
        confirmed.map_err(|e| self.fail(e))?;
        let ahead = ahead.map_err(|e| self.fail(e))?;
        self.report.keys_synced = keys::count(&ahead.synced);
        self.end(format!(
            "the replayer confirmed the freeze marker at {lsn} after {:.1} ms: {} key(s) logged since position \
             {before}, {} distinct; the source side of the verify was read meanwhile ({:.1} ms)",
            ms(confirmed_at - started),
            ahead.logged,
            self.report.keys_synced,
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
        let Some((check, rows)) = ahead.source_side else {
            self.end("skipped (verify none)".to_owned());
            return Ok(());
        };
        let compare = check.compare(&ready.target, rows);
        let report = self
            .within(limit, compare)
            .await?
            .map_err(|e| self.fail(e.to_string()))?;
        self.report.rows_verified = report.keys_checked();
        let differing = differing(&report);
        if !differing.is_empty() {
            return Err(self.fail(format!(
                "{} row(s) differ between the source and the target: {}; the target is not in sync, so \
                 traffic stays on the source (VERIFY compares whole tables and lists the differences)",
                differing.len(),
                differing.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        self.end(format!("{} row(s) equal on both sides", report.keys_checked()));
        Ok(())
    }
}

/// Runs the verify's statements once before the freeze, over one sample
/// key of each table the sample has (nothing without a sample): the
/// cutover's connections are fresh, and a backend's first run of a
/// statement pays for loading its catalog entries, which would otherwise
/// come out of the pause. One key each keeps its own cost on the busy
/// source small. A verify that cannot run fails here rather than in the
/// pause. The rows compared change under load, so differences are not
/// counted.
pub(super) async fn rehearse_verify(ready: &Ready) -> Result<(), String> {
    let one_each: TableKeys = ready
        .sample
        .iter()
        .filter_map(|(table, keys)| Some((table.clone(), std::iter::once(keys.first()?.clone()).collect())))
        .collect();
    let keys = by_table(&one_each);
    if keys.is_empty() {
        return Ok(());
    }
    let mapped = Mapped {
        mapping: &ready.mapping,
        source: &ready.source_catalog,
        target: &ready.target_catalog,
    };
    let check = KeysCheck::new(mapped, &keys).map_err(|e| e.to_string())?;
    let rows = check.read_source(&ready.source).await.map_err(|e| e.to_string())?;
    check.compare(&ready.target, rows).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The keys logged after `before` up to the freeze marker at `lsn`, and,
/// when `verify`, the source's rows of those keys (plus `sample`). The
/// source is frozen, so these are the rows as the target must hold them
/// once the replayer confirms the marker. (A commit whose client left
/// mid-commit may still end on the source meanwhile; the replayer waits
/// for it, and a row read here before it ended then differs on the
/// target: the cutover is called off, never passed wrongly.)
async fn read_ahead<'a>(
    ready: &Ready,
    before: Lsn,
    lsn: Lsn,
    verify: bool,
    sample: Option<&TableKeys>,
    mapped: Mapped<'a>,
) -> Result<Ahead<'a>, String> {
    let dir = ready.active.config.log_dir.clone();
    let (synced, logged) = tokio::task::spawn_blocking(move || keys::between(&dir, before, lsn))
        .await
        .map_err(|e| format!("reading the final keys failed: {e}"))?
        .map_err(|e| format!("cannot read the capture log: {e}"))?;
    let source_side = if verify {
        let mut compare = synced.clone();
        if let Some(sample) = sample {
            keys::merge(&mut compare, sample.clone());
        }
        let check = KeysCheck::new(mapped, &by_table(&compare)).map_err(|e| e.to_string())?;
        let rows = check.read_source(&ready.source).await.map_err(|e| e.to_string())?;
        Some((check, rows))
    } else {
        None
    };
    Ok(Ahead {
        synced,
        logged,
        source_side,
        done: Instant::now(),
    })
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
