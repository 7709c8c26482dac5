//! PgBouncer as the usual recipe runs it for a cutover: transaction pooling
//! (in session pooling PAUSE waits for every client to disconnect), one
//! database entry that can be pointed at another server by rewriting the
//! ini and sending RELOAD, and its admin console. Run in the foreground on
//! 127.0.0.1 at a free port, as the `postgres` user when we are root
//! (PgBouncer refuses to run as root), stopped on drop. The Debian package
//! is installed when it is missing and we are root.

use crate::pgbouncer;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchyard_tests::{free_port, Binaries, Endpoint};
use tempfile::TempDir;

/// Where Debian's package installs it; otherwise `pgbouncer` on `PATH`.
const DEBIAN_PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// How long PgBouncer may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long it may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Free ports tried: the port is released before PgBouncer binds it.
const PORT_ATTEMPTS: usize = 5;

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

/// Polls until `port` accepts a connection or the process exits.
fn wait_ready(child: &mut Child, port: u16) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("checking on PgBouncer")? {
            bail!("PgBouncer exited ({status})");
        }
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("PgBouncer accepted no connection within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM (PgBouncer's immediate shutdown), then SIGKILL if it lingers.
fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let started = Instant::now();
    while started.elapsed() < STOP_TIMEOUT {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn program() -> PathBuf {
    let debian = PathBuf::from(DEBIAN_PGBOUNCER);
    if debian.is_file() {
        debian
    } else {
        PathBuf::from("pgbouncer")
    }
}

/// Runs PgBouncer in the foreground; it logs to stderr, which goes to `log`.
fn spawn(ini: &Path, log: &Path, cwd: &Path, owner: Owner) -> Result<Child> {
    let log_file = File::create(log).context("creating PgBouncer's log")?;
    let mut cmd = Command::new(program());
    cmd.arg(ini)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("duplicating the log handle")?)
        .stderr(log_file);
    if let Owner::Postgres { uid, gid } = owner {
        // std drops supplementary groups itself when root changes uid.
        cmd.uid(uid).gid(gid);
    }
    cmd.spawn().with_context(|| format!("starting {}", program().display()))
}

/// Who PgBouncer runs as.
#[derive(Debug, Clone, Copy)]
enum Owner {
    /// The current user, who is not root.
    Myself,
    /// We are root; PgBouncer runs as the `postgres` system user.
    Postgres { uid: u32, gid: u32 },
}

impl Owner {
    fn detect() -> Result<Owner> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Owner::Myself);
        }
        let user = nix::unistd::User::from_name("postgres")
            .context("looking up the postgres user")?
            .context("running as root and there is no `postgres` user to run PgBouncer as")?;
        Ok(Owner::Postgres {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }

    fn give(self, path: &Path) -> Result<()> {
        if let Owner::Postgres { uid, gid } = self {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to the postgres user", path.display()))?;
        }
        Ok(())
    }
}

fn write_owned(path: &Path, text: &str, owner: Owner) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    owner.give(path)
}
