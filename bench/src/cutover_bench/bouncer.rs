//! PgBouncer as the usual recipe runs it for a cutover: transaction pooling
//! (in session pooling PAUSE waits for every client to disconnect), one
//! database entry that can be pointed at another server by rewriting the
//! ini and sending RELOAD, and its admin console. Run in the foreground on
//! 127.0.0.1 at a free port, as the `postgres` user when we are root
//! (PgBouncer refuses to run as root), stopped on drop. The Debian package
//! is installed when it is missing and we are root.

use crate::pgbouncer::{self, spawn, terminate, wait_ready, write_owned, Owner, PORT_ATTEMPTS};
use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use switchyard_tests::{free_port, Binaries, Endpoint};
use tempfile::TempDir;

/// Where PgBouncer's one database entry points.
#[derive(Debug, Clone)]
pub(super) struct Server {
    /// A Unix-socket directory or an address.
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) database: String,
}

/// A running PgBouncer in transaction mode with trust authentication.
pub(super) struct Bouncer {
    child: Child,
    settings: Settings,
    owner: Owner,
    ini: PathBuf,
    log_path: PathBuf,
    /// Holds ini, userlist, pid file and log; removed on drop.
    _dir: TempDir,
}

/// Makes sure the pgbouncer program is there: when it is not and we are
/// root, installs Debian's package (and stops the service the package
/// starts, which would hold port 6432).
pub(super) fn ensure_installed() -> Result<String> {
    if let Some(version) = pgbouncer::version() {
        return Ok(version);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("pgbouncer is not installed; install the Debian package `pgbouncer` (apt-get install pgbouncer) and run again");
    }
    println!("pgbouncer is missing: installing the Debian package (apt-get install -y pgbouncer)");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "pgbouncer"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .context("running apt-get install pgbouncer")?;
    let _ = Command::new("systemctl")
        .args(["stop", "pgbouncer"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !status.success() {
        bail!("apt-get install pgbouncer failed ({status}); run `apt-get update` and try again");
    }
    pgbouncer::version().context("pgbouncer still does not run after apt-get installed it")
}

impl Bouncer {
    /// Writes the configuration pointing at `server` and starts PgBouncer,
    /// waiting until it accepts TCP connections. `user` logs in by trust
    /// and is the console's admin; `pool_size` server connections at most.
    pub(super) fn start(server: &Server, user: &str, pool_size: usize) -> Result<Bouncer> {
        let owner = Owner::detect()?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-cutover-pgbouncer-")
            .tempdir()
            .context("creating PgBouncer's directory")?;
        owner.give(dir.path())?;
        // Trust still looks the user up in auth_file; the password is unused.
        write_owned(&dir.path().join("userlist.txt"), &format!("\"{user}\" \"\"\n"), owner)?;
        let ini = dir.path().join("pgbouncer.ini");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port().context("picking a port for PgBouncer")?;
            let settings = Settings {
                port,
                user: user.to_owned(),
                pool_size,
                dir: dir.path().to_path_buf(),
            };
            write_owned(&ini, &settings.ini(server), owner)?;
            let log_path = dir.path().join(format!("pgbouncer-{port}.log"));
            let mut child = spawn(&ini, &log_path, dir.path(), owner)?;
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    return Ok(Bouncer {
                        child,
                        settings,
                        owner,
                        ini,
                        log_path,
                        _dir: dir,
                    })
                }
                Err(e) => {
                    terminate(&mut child);
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    if log.contains("Address already in use") && attempt < PORT_ATTEMPTS {
                        continue;
                    }
                    return Err(e.context(format!("PgBouncer did not start; its log:\n{log}")));
                }
            }
        }
    }

    /// Points the database entry at `server` in the ini; it takes effect at
    /// the console's RELOAD.
    pub(super) fn retarget(&self, server: &Server) -> Result<()> {
        write_owned(&self.ini, &self.settings.ini(server), self.owner)
    }

    /// An endpoint logging in through PgBouncer.
    pub(super) fn endpoint(&self, binaries: &Binaries) -> Endpoint {
        Endpoint {
            host: Ipv4Addr::LOCALHOST.to_string(),
            port: self.settings.port,
            user: self.settings.user.clone(),
            password: None,
            binaries: binaries.clone(),
        }
    }

    /// Its log (PgBouncer's stderr), for diagnosing a failed run.
    pub(super) fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// What the ini says besides the database entry.
#[derive(Debug, Clone)]
struct Settings {
    port: u16,
    user: String,
    pool_size: usize,
    dir: PathBuf,
}

impl Settings {
    /// The ini: one database entry, transaction pooling with a pool large
    /// enough that no client waits for a server connection, no Unix socket
    /// of its own. The bench's clients send only simple queries, which
    /// transaction pooling relays unchanged.
    fn ini(&self, server: &Server) -> String {
        format!(
            "; written by switchyard-bench\n\
             [databases]\n\
             {db} = host={host} port={db_port} dbname={db}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             admin_users = {user}\n\
             pool_mode = transaction\n\
             default_pool_size = {pool}\n\
             max_client_conn = {max_clients}\n\
             pidfile = {dir}/pgbouncer.pid\n\
             log_connections = 0\n\
             log_disconnections = 0\n",
            db = server.database,
            host = server.host,
            db_port = server.port,
            port = self.port,
            dir = self.dir.display(),
            user = self.user,
            pool = self.pool_size,
            max_clients = self.pool_size + 20,
        )
    }
}
