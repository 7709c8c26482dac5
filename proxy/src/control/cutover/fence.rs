//! Fencing the old source after the flip, as `cutover.fence` says: the
//! proxy no longer writes there, and this keeps others from doing so.

use crate::config::Fence;
use crate::server::Shared;
use crate::session::route::Destination;
use tokio_postgres::Client;

/// Applies `fence` through `source`, the proxy's control connection.
/// Returns what was done (`None` for `none`). The proxy's control role is
/// exempt throughout: a later rollback needs it to write to the source.
pub(super) async fn apply(shared: &Shared, source: &Client, fence: Fence) -> Result<Option<String>, String> {
    let database = shared
        .config
        .capture_database()
        .ok_or_else(|| "no source database is configured".to_owned())?
        .to_owned();
    // Backends of sessions that have not moved yet (they move at their next
    // boundary, reading their state from their backend first).
    let ours: Vec<i32> = shared
        .sessions
        .snapshot()
        .iter()
        .filter(|s| s.backend_server() == Destination::Source)
        .map(|s| s.backend_pid())
        .filter(|p| *p != 0)
        .collect();
    let db = |e: tokio_postgres::Error| crate::db_message(&e);
    match fence {
        Fence::None => Ok(None),
        Fence::ReadOnly => {
            let ident = quote_ident(&database);
            source
                .batch_execute(&format!(
                    "ALTER DATABASE {ident} SET default_transaction_read_only = on; \
                     ALTER ROLE CURRENT_USER IN DATABASE {ident} SET default_transaction_read_only = off"
                ))
                .await
                .map_err(|e| format!("cannot make database {database} read-only: {}", db(e)))?;
            let n = terminate(source, &database, &ours).await.map_err(db)?;
            Ok(Some(format!(
                "the source database {database} now starts sessions read-only; {n} other session(s) terminated"
            )))
        }
        Fence::TerminateBypass => {
            let n = terminate(source, &database, &ours).await.map_err(db)?;
            Ok(Some(format!(
                "{n} session(s) bypassing the proxy on the source terminated"
            )))
        }
    }
}

/// Terminates the client sessions on `database` that are not the proxy's
/// (its sessions' backends, its own connections); returns how many. Not
/// by role: the applications may use the control role too.
async fn terminate(source: &Client, database: &str, ours: &[i32]) -> Result<i64, tokio_postgres::Error> {
    let ours = ours.to_vec();
    let row = source
        .query_one(
            "SELECT count(pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity \
             WHERE backend_type = 'client backend' AND datname = $1 AND pid <> pg_catalog.pg_backend_pid() \
               AND NOT (pid = ANY($2)) AND coalesce(application_name, '') NOT LIKE 'switchyard %'",
            &[&database, &ours],
        )
        .await?;
    Ok(row.get(0))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
