//! Something clients connect to (a cluster or a proxy) plus the credentials
//! to use: builds tokio-postgres configs and runs psql and pgbench against it.

use crate::util::quote_conninfo;
use crate::{Binaries, Error};
use std::process::Output;
use std::time::Duration;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

/// How long a client waits for a connection before giving up, so that a
/// broken server fails a test instead of hanging it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL endpoint and who to log in as.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name or address, `127.0.0.1` for everything the testkit starts.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name to log in as.
    pub user: String,
    /// Password, when the endpoint asks for one.
    pub password: Option<String>,
    /// Where `psql`, `pgbench` and friends are looked for first (then `PATH`).
    pub binaries: Binaries,
}

impl Endpoint {
    /// Copies database `db` of this endpoint into the existing, empty
    /// database `into_db` of `into` with pg_dump/pg_restore (custom format,
    /// `--no-owner`), as a DBA clones after the capture barrier; the dump
    /// is written to `dump`.
    pub async fn copy_database(
        &self,
        db: &str,
        into: &Endpoint,
        into_db: &str,
        dump: &std::path::Path,
    ) -> Result<(), Error> {
        let steps = [
            (
                self.command("pg_dump", db),
                vec!["-Fc".to_owned(), "-f".to_owned()],
                "pg_dump",
            ),
            (
                into.command("pg_restore", into_db),
                vec!["-d".to_owned(), into_db.to_owned(), "--no-owner".to_owned()],
                "pg_restore",
            ),
        ];
        for (mut cmd, args, program) in steps {
            let out = cmd.args(&args).arg(dump).output().await.map_err(|source| Error::Io {
                what: format!("running {program}"),
                source,
            })?;
            if !out.status.success() {
                return Err(Error::Command {
                    program: program.to_owned(),
                    status: out.status,
                    output: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
        }
        Ok(())
    }

    /// A tokio-postgres config for database `db`, without TLS.
    pub fn pg_config(&self, db: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(db)
            .ssl_mode(SslMode::Disable)
            .connect_timeout(CONNECT_TIMEOUT)
            .application_name("switchyard-tests");
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }

    /// A libpq key/value connection string for database `db`.
    pub fn connstr(&self, db: &str) -> String {
        let mut s = format!(
            "host={} port={} user={} dbname={} sslmode=disable",
            quote_conninfo(&self.host),
            self.port,
            quote_conninfo(&self.user),
            quote_conninfo(db)
        );
        if let Some(password) = &self.password {
            s.push_str(" password=");
            s.push_str(&quote_conninfo(password));
        }
        s
    }

    /// Connects to database `db` and spawns the connection task on the
    /// current tokio runtime.
    pub async fn connect(&self, db: &str) -> Result<Client, tokio_postgres::Error> {
        connect_with(&self.pg_config(db)).await
    }

    /// A command running client program `tool` (`psql`, `pgbench`,
    /// `pg_dump`, ...) against database `db` of this endpoint, through libpq's
    /// `PG*` environment variables. Asynchronous on purpose: a blocking wait
    /// would stall a current-thread test runtime, and with it an in-process
    /// proxy the tool is talking to.
    pub fn command(&self, tool: &str, db: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.tool_path(tool));
        for (key, value) in self.env(db) {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd.kill_on_drop(true);
        cmd
    }

    /// Like [`Endpoint::command`], as a blocking `std` command for callers
    /// outside a runtime (it must not target an in-process proxy from the
    /// thread that drives that proxy's runtime).
    pub fn std_command(&self, tool: &str, db: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.tool_path(tool));
        for (key, value) in self.env(db) {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd
    }

    /// Runs `pgbench` with `args` against database `db` and returns its
    /// output whatever its exit status.
    pub async fn pgbench(&self, db: &str, args: &[&str]) -> Result<Output, Error> {
        let mut cmd = self.command("pgbench", db);
        cmd.args(args);
        output(cmd, "pgbench", args).await
    }

    /// Runs `sql` with `psql -X -A -t -v ON_ERROR_STOP=1 -c` against database
    /// `db` and returns its output whatever its exit status.
    pub async fn psql(&self, db: &str, sql: &str) -> Result<Output, Error> {
        let args = ["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql];
        let mut cmd = self.command("psql", db);
        cmd.args(args);
        output(cmd, "psql", &args).await
    }

    /// Like [`Endpoint::psql`], but a failure is an [`Error::Command`]; on
    /// success returns standard output (unaligned, tuples only).
    pub async fn psql_ok(&self, db: &str, sql: &str) -> Result<String, Error> {
        let out = self.psql(db, sql).await?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(Error::Command {
                program: format!("psql -c {sql:?}"),
                status: out.status,
                output: stdout + &String::from_utf8_lossy(&out.stderr),
            })
        }
    }

    fn tool_path(&self, tool: &str) -> std::path::PathBuf {
        let path = self.binaries.bin(tool);
        if path.is_file() {
            path
        } else {
            tool.into()
        }
    }

    /// libpq's variables for this endpoint; `None` removes one inherited
    /// from the test's environment that would otherwise redirect the tool.
    fn env(&self, db: &str) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("PGHOST", Some(self.host.clone())),
            ("PGPORT", Some(self.port.to_string())),
            ("PGUSER", Some(self.user.clone())),
            ("PGDATABASE", Some(db.to_owned())),
            ("PGPASSWORD", self.password.clone()),
            ("PGSSLMODE", Some("disable".into())),
            ("PGCONNECT_TIMEOUT", Some(CONNECT_TIMEOUT.as_secs().to_string())),
            ("PGHOSTADDR", None),
            ("PGSERVICE", None),
            ("PGOPTIONS", None),
            ("PGPASSFILE", None),
        ]
    }
}

/// Connects with `config` and spawns the connection on the current runtime;
/// its end (normal or not) is logged at debug level.
pub(crate) async fn connect_with(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "test connection ended with an error");
        }
    });
    Ok(client)
}

async fn output(mut cmd: tokio::process::Command, tool: &str, args: &[&str]) -> Result<Output, Error> {
    cmd.output()
        .await
        .map_err(Error::io(format!("running {tool} {}", args.join(" "))))
}
