//! `VERIFY [table, ...] [ROWS_PER_RANGE n]`: compares whole tables, source
//! against the mapped target, online. Progress reaches the client as
//! NOTICEs; the answer has one row per table.

use super::reply::{ConsoleReply, VerifyReply, VerifyTable};
use super::{AdminCommand, AdminError, Reply, ResultSet};
use crate::server::Shared;
use crate::wire::backend::{self as bmsg, Severity};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_replay::verify::{ProgressEvent, VerifyReport};

/// What `VERIFY` was asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyArgs {
    /// Source tables (`schema.table`); empty: every mapped table.
    pub tables: Vec<String>,
    /// Rows per checksum range.
    pub rows_per_range: Option<usize>,
}

/// Parses the words after `VERIFY`.
pub(super) fn parse(words: &[&str]) -> Result<AdminCommand, AdminError> {
    let mut args = VerifyArgs::default();
    let mut i = 0;
    while i < words.len() {
        if words[i].eq_ignore_ascii_case("ROWS_PER_RANGE") {
            let n = words
                .get(i + 1)
                .and_then(|w| w.parse::<usize>().ok())
                .filter(|n| (1..=10_000_000).contains(n))
                .ok_or_else(|| {
                    AdminError::InvalidParameter(
                        "VERIFY ROWS_PER_RANGE takes a number of rows, 1 to 10000000".to_owned(),
                    )
                })?;
            args.rows_per_range = Some(n);
            i += 2;
            continue;
        }
        for t in words[i].split(',').map(str::trim).filter(|t| !t.is_empty()) {
            args.tables.push(t.to_owned());
        }
        i += 1;
    }
    Ok(AdminCommand::Verify(args))
}

/// Runs the verification, streaming progress to `client` when there is one.
pub(super) async fn execute(
    shared: &Arc<Shared>,
    args: &VerifyArgs,
    mut client: Option<&mut crate::net::Conn>,
) -> Result<Reply, AdminError> {
    if shared.config.target.is_none() {
        return Err(AdminError::State(
            "no [target] is configured: add one to the config file to verify it".to_owned(),
        ));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let config = shared.config.clone();
    let tables = args.tables.clone();
    let rows_per_range = args.rows_per_range;
    let task = tokio::spawn(async move {
        let mut last = Instant::now();
        crate::control::verify::run(&config, &tables, rows_per_range, move |p| {
            let line = match p.event {
                ProgressEvent::TableDone => Some(format!(
                    "verify: {} done ({} of {} tables), {} rows checked in all, {} differing",
                    p.table,
                    p.tables_done + 1,
                    p.tables_total,
                    p.rows_checked,
                    p.differing
                )),
                ProgressEvent::Recheck { attempt } => Some(format!(
                    "verify: {}: a range differs, checking again ({attempt}) after catch-up",
                    p.table
                )),
                ProgressEvent::Range if last.elapsed() >= Duration::from_secs(1) => {
                    last = Instant::now();
                    Some(format!("verify: {}: {} rows checked", p.table, p.table_rows))
                }
                ProgressEvent::Range => None,
            };
            if let Some(line) = line {
                let _ = tx.send(line);
            }
        })
        .await
    });
    let mut connected = true;
    while let Some(line) = rx.recv().await {
        if let Some(c) = client.as_mut().filter(|_| connected) {
            let mut out = bytes::BytesMut::new();
            bmsg::error_response(&mut out, Severity::Notice, "00000", &line);
            c.queue(&out);
            connected = c.flush().await.is_ok();
        }
    }
    let report = task
        .await
        .map_err(|e| AdminError::State(format!("verification ended abnormally: {e}")))?
        .map_err(AdminError::State)?;
    Ok(Reply::Rows(render(&report)))
}

fn render(report: &VerifyReport) -> ResultSet {
    reply(report).to_rows()
}

/// The report as the console answers it.
fn reply(report: &VerifyReport) -> VerifyReply {
    let tables = report
        .tables
        .iter()
        .map(|t| {
            let keys: Vec<String> = t
                .differing
                .iter()
                .map(|m| {
                    let k: Vec<&str> = m.key.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
                    format!("({}) {}", k.join(", "), m.kind)
                })
                .collect();
            VerifyTable {
                table: t.source.to_string(),
                target: t.target.to_string(),
                rows_checked: t.rows_checked,
                target_rows: t.target_rows,
                ranges: t.ranges,
                ranges_rechecked: t.ranges_rechecked,
                differing: t.differing_total,
                differing_keys: keys.join("; "),
                compared_as_text: t.compared_as_text.join(", "),
                not_compared: t.not_compared.join(", "),
                ms: t.elapsed.as_secs_f64() * 1e3,
            }
        })
        .collect();
    VerifyReply { tables }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_replay::catalog::QualifiedName;
    use switchyard_replay::verify::{Mismatch, MismatchKind, TableReport};

    fn table(name: &str, differing: Vec<Mismatch>, total: u64) -> TableReport {
        TableReport {
            source: QualifiedName::new("public", name),
            target: QualifiedName::new("app", name),
            rows_checked: 3000,
            target_rows: 2999,
            ranges: 6,
            ranges_rechecked: 1,
            ranges_compared: 1,
            differing,
            differing_total: total,
            columns: vec!["id".to_owned(), "qty".to_owned()],
            compared_as_text: vec!["tags".to_owned(), "doc".to_owned()],
            not_compared: vec!["created".to_owned()],
            elapsed: Duration::from_micros(41_600),
        }
    }

    /// One row per table, named and formatted as psql shows it; the tag
    /// says whether anything differs.
    #[test]
    fn the_rows_are_named_and_formatted_as_psql_shows_them() {
        let differing = vec![
            Mismatch {
                key: vec![Some("1234".to_owned())],
                kind: MismatchKind::Differs,
            },
            Mismatch {
                key: vec![None, Some("b".to_owned())],
                kind: MismatchKind::MissingOnTarget,
            },
        ];
        let report = VerifyReport {
            tables: vec![table("item", differing, 2), table("tag", Vec::new(), 0)],
            elapsed: Duration::from_millis(90),
        };
        let rs = render(&report);
        assert_eq!(
            rs.columns,
            [
                "table",
                "target",
                "rows_checked",
                "target_rows",
                "ranges",
                "ranges_rechecked",
                "differing",
                "differing_keys",
                "compared_as_text",
                "not_compared",
                "ms",
            ]
        );
        let row = |i: usize| -> Vec<String> { rs.rows[i].iter().map(|v| v.clone().unwrap_or_default()).collect() };
        assert_eq!(
            row(0),
            [
                "public.item",
                "app.item",
                "3000",
                "2999",
                "6",
                "1",
                "2",
                "(1234) differs; (NULL, b) missing on the target",
                "tags, doc",
                "created",
                "42",
            ]
        );
        assert_eq!(row(1)[6..8], ["0", ""]);
        assert_eq!(rs.tag, "VERIFY DIFFERS");
        let clean = VerifyReport {
            tables: vec![table("tag", Vec::new(), 0)],
            elapsed: Duration::ZERO,
        };
        assert_eq!(render(&clean).tag, "VERIFY");
    }
}
