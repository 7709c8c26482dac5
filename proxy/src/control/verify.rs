//! `VERIFY`: whole tables compared online, source against the mapped
//! target, by checksums over key ranges (see `switchyard_replay::verify`),
//! with the mapping and both catalogs read as catch-up reads them. The
//! DBA's evidence before a cutover; too slow for the freeze, which
//! compares only the rows it synced.

use crate::config::Config;
use switchyard_replay::catalog::QualifiedName;
use switchyard_replay::verify::{self, Mapped, Progress, VerifyOptions, VerifyReport};

/// Verifies `tables` (every mapped table when empty), calling `progress`
/// as it goes.
pub async fn run(
    config: &Config,
    tables: &[String],
    rows_per_range: Option<usize>,
    progress: impl FnMut(&Progress) + Send,
) -> Result<VerifyReport, String> {
    let plan = crate::catchup::Plan::prepare(config).await.map_err(|e| e.to_string())?;
    let mut options = VerifyOptions::default();
    if let Some(n) = rows_per_range {
        options.rows_per_range = n.max(1);
    }
    for t in tables {
        let name = QualifiedName::from_logged(t);
        if plan.mapping.table(&name).is_none() {
            return Err(format!(
                "table {name} is not in the mapping (or not on the source); name a source table as schema.table"
            ));
        }
        options.tables.push(name);
    }
    let mapped = Mapped {
        mapping: &plan.mapping,
        source: &plan.source_catalog,
        target: &plan.target_catalog,
    };
    verify::verify_tables(&plan.source, &plan.target, mapped, &options, progress)
        .await
        .map_err(|e| e.to_string())
}
