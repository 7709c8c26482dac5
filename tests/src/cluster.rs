//! A running throwaway PostgreSQL cluster: accessors, clients, stop and
//! restart, and the `Drop` that removes it unless the test panicked.

use crate::builder::{read_from, tail};
use crate::endpoint::{connect_with, Endpoint};
use crate::run_as::{run, RunAs};
use crate::util::{quote_ident, quote_literal};
use crate::{Auth, Binaries, ClusterBuilder, Error};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio_postgres::Client;

/// How long a started server may take to accept its first connection.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `pg_ctl` waits for the server to start or stop, in seconds.
const PG_CTL_TIMEOUT_SECS: &str = "30";

/// How many lines of the server log a panicking test prints.
const LOG_TAIL_ON_PANIC: usize = 20;

/// The host every cluster listens on.
const HOST: &str = "127.0.0.1";

/// Runs `pg_ctl` and friends for one data directory; cheap to clone into the
/// blocking pool.
#[derive(Debug, Clone)]
pub(crate) struct Ctl {
    binaries: Binaries,
    run_as: RunAs,
    root: PathBuf,
    /// `<root>/data`.
    pub(crate) data_dir: PathBuf,
    /// `<root>/server.log`.
    pub(crate) log_path: PathBuf,
}

impl Ctl {
    pub(crate) fn new(binaries: Binaries, run_as: RunAs, root: &Path) -> Ctl {
        Ctl {
            binaries,
            run_as,
            root: root.to_path_buf(),
            data_dir: root.join("data"),
            log_path: root.join("server.log"),
        }
    }

    /// The temporary directory holding data, log and socket.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// A server-side program, run as the server's user.
    pub(crate) fn command(&self, program: &str) -> Command {
        self.run_as.command(&self.binaries.bin(program), &self.root)
    }

    /// Gives `path` to the server's user (a no-op unless we are root).
    pub(crate) fn give(&self, path: &Path) -> Result<(), Error> {
        self.run_as.give(path)
    }

    /// `pg_ctl start`, waiting until the server accepts connections.
    pub(crate) fn start_server(&self) -> Result<(), Error> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-s"]);
        run(cmd).map(drop)
    }

    /// `pg_ctl stop` in `mode` (`fast`, `immediate`, `smart`), waiting.
    pub(crate) fn stop_server(&self, mode: &str) -> Result<(), Error> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", PG_CTL_TIMEOUT_SECS, "-s"]);
        run(cmd).map(drop)
    }

    /// Last resort when pg_ctl fails: SIGQUIT (what `-m immediate` sends) to
    /// the postmaster named in `postmaster.pid`.
    fn quit_postmaster(&self) {
        let Ok(text) = std::fs::read_to_string(self.data_dir.join("postmaster.pid")) else {
            return;
        };
        if let Some(Ok(pid)) = text.lines().next().map(|l| l.trim().parse::<i32>()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
        }
    }
}

/// A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 at
/// a free port and on a Unix socket in that directory. Dropping it stops the
/// server and removes the directory, except while the thread panics: then
/// the directory stays and the log's path and tail go to stderr.
///
/// Under root the server programs run as the `postgres` system user, so the
/// temporary directory's parent (`TMPDIR`, default `/tmp`) must be one that
/// user can enter.
#[derive(Debug)]
pub struct Cluster {
    dir: Option<TempDir>,
    ctl: Ctl,
    port: u16,
    superuser: String,
    auth: Auth,
    /// Known passwords by user, the superuser's included.
    passwords: Vec<(String, String)>,
    running: AtomicBool,
    /// Whether the testkit's own connections go through the Unix socket
    /// (a cluster with its own `pg_hba.conf`, which may refuse TCP).
    via_socket: bool,
}

impl Cluster {
    /// Options for a cluster; see [`ClusterBuilder`].
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::new()
    }

    /// A trust-authentication cluster with the default options.
    pub async fn start() -> Result<Cluster, Error> {
        ClusterBuilder::new().start().await
    }

    /// Wraps a server that `ctl` just started.
    pub(crate) fn new(dir: TempDir, ctl: Ctl, port: u16, builder: &ClusterBuilder) -> Cluster {
        let mut passwords = builder.users.clone();
        if let Some(password) = builder.auth.password() {
            passwords.push((builder.superuser.clone(), password.to_owned()));
        }
        Cluster {
            dir: Some(dir),
            ctl,
            port,
            superuser: builder.superuser.clone(),
            auth: builder.auth.clone(),
            passwords,
            running: AtomicBool::new(true),
            via_socket: builder.hba.is_some(),
        }
    }

    /// Waits until the server accepts the superuser, then creates the
    /// builder's users and databases.
    pub(crate) async fn bootstrap(&self, builder: &ClusterBuilder) -> Result<(), Error> {
        let client = self.wait_ready().await?;
        if let Auth::Md5 { password } = &self.auth {
            // initdb stored the password before `password_encryption = md5`
            // applied; store it again as an md5 hash so md5 is really used.
            let sql = format!(
                "ALTER ROLE {} PASSWORD {}",
                quote_ident(&self.superuser),
                quote_literal(password)
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(Error::sql("re-storing the superuser password as md5"))?;
        }
        for (user, password) in &builder.users {
            let sql = format!(
                "CREATE ROLE {} LOGIN PASSWORD {}",
                quote_ident(user),
                quote_literal(password)
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(Error::sql(format!("creating user {user}")))?;
        }
        for (db, owner) in &builder.databases {
            let owner = owner.as_deref().unwrap_or(&self.superuser);
            let sql = format!("CREATE DATABASE {} OWNER {}", quote_ident(db), quote_ident(owner));
            client
                .batch_execute(&sql)
                .await
                .map_err(Error::sql(format!("creating database {db}")))?;
        }
        Ok(())
    }

    /// Connects as the superuser, retrying for up to 30 s.
    pub(crate) async fn wait_ready(&self) -> Result<Client, Error> {
        let started = Instant::now();
        let config = self.pg_config(&self.superuser, "postgres");
        loop {
            match connect_with(&config).await {
                Ok(client) => return Ok(client),
                Err(error) if started.elapsed() >= READY_TIMEOUT => {
                    return Err(Error::NotReady {
                        port: self.port,
                        waited: started.elapsed(),
                        log: self.ctl.log_path.clone(),
                        error,
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host, always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// Host and port as a socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The directory of the Unix socket (the cluster's temporary directory).
    pub fn socket_dir(&self) -> &Path {
        self.ctl.root()
    }

    /// The bootstrap superuser's name.
    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    /// The authentication method.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The password the builder gave `user`, if any.
    pub fn password(&self, user: &str) -> Option<&str> {
        self.passwords.iter().find(|(u, _)| u == user).map(|(_, p)| p.as_str())
    }

    /// The endpoint for logging in as the superuser.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint_as(&self.superuser)
    }

    /// The endpoint for logging in as `user`, with the password the builder
    /// gave it (if any).
    pub fn endpoint_as(&self, user: &str) -> Endpoint {
        Endpoint {
            host: if self.via_socket {
                self.socket_dir().display().to_string()
            } else {
                HOST.to_owned()
            },
            port: self.port,
            user: user.to_owned(),
            password: self.password(user).map(str::to_owned),
            binaries: self.ctl.binaries.clone(),
        }
    }

    /// A libpq connection string for `user` on database `db`, with the
    /// user's password if known.
    pub fn connstr(&self, user: &str, db: &str) -> String {
        self.endpoint_as(user).connstr(db)
    }

    /// A tokio-postgres config for `user` on database `db`, with the user's
    /// password if known; change it (e.g. the password) before connecting.
    pub fn pg_config(&self, user: &str, db: &str) -> tokio_postgres::Config {
        self.endpoint_as(user).pg_config(db)
    }

    /// Connects to database `db` as the superuser; the connection task is
    /// spawned on the current runtime.
    pub async fn connect(&self, db: &str) -> Result<Client, tokio_postgres::Error> {
        self.endpoint().connect(db).await
    }

    /// Connects to database `db` as `user`, with its known password.
    pub async fn connect_as(&self, user: &str, db: &str) -> Result<Client, tokio_postgres::Error> {
        self.endpoint_as(user).connect(db).await
    }

    /// Runs `pgbench` against database `db` as the superuser.
    pub async fn pgbench(&self, db: &str, args: &[&str]) -> Result<Output, Error> {
        self.endpoint().pgbench(db, args).await
    }

    /// Runs `psql -c sql` against database `db` as the superuser.
    pub async fn psql(&self, db: &str, sql: &str) -> Result<Output, Error> {
        self.endpoint().psql(db, sql).await
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.ctl.data_dir
    }

    /// The server log.
    pub fn log_path(&self) -> &Path {
        &self.ctl.log_path
    }

    /// The server log's contents so far (empty if unreadable).
    pub fn log(&self) -> String {
        read_from(&self.ctl.log_path, 0)
    }

    /// The path of PostgreSQL program `name` (`pgbench`, `psql`, `pg_dump`, ...).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.ctl.binaries.bin(name)
    }

    /// The PostgreSQL programs this cluster uses.
    pub fn binaries(&self) -> &Binaries {
        &self.ctl.binaries
    }

    /// Whether the server is running (as far as the testkit knows).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Stops the server (fast shutdown: sessions are disconnected). The data
    /// stays; [`Cluster::start_again`] brings it back on the same port.
    pub async fn stop(&self) -> Result<(), Error> {
        let ctl = self.ctl.clone();
        blocking(move || ctl.stop_server("fast")).await?;
        self.running.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Starts a stopped server again on the same port and waits until it
    /// accepts connections.
    pub async fn start_again(&self) -> Result<(), Error> {
        let ctl = self.ctl.clone();
        blocking(move || ctl.start_server()).await?;
        self.running.store(true, Ordering::SeqCst);
        self.wait_ready().await.map(drop)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running.swap(false, Ordering::SeqCst) {
            if let Err(error) = self.ctl.stop_server("immediate") {
                eprintln!("switchyard-tests: stopping the cluster on port {}: {error}", self.port);
                self.ctl.quit_postmaster();
            }
        }
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let root = dir.keep();
                eprintln!(
                    "switchyard-tests: test panicked; kept PostgreSQL cluster (port {}) in {}\n\
                     server log: {}\n--- last lines ---\n{}\n---",
                    self.port,
                    root.display(),
                    self.ctl.log_path.display(),
                    tail(&self.log(), LOG_TAIL_ON_PANIC)
                );
            }
        }
        // Otherwise `dir` drops after this and removes the directory.
    }
}

/// Runs `f` on the blocking pool, passing its panic on.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => Err(Error::Io {
            what: "running a PostgreSQL program on the blocking pool".into(),
            source: std::io::Error::other(join),
        }),
    }
}
