//! PgBouncer as the reference pooler: an ini and userlist written to a
//! temporary directory, the daemon run in the foreground on 127.0.0.1 at a
//! free port (as the `postgres` user when we are root, since PgBouncer
//! refuses to run as root), stopped on drop.

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
pub(crate) const DEBIAN_PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// How long PgBouncer may take to accept connections.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long it may take to exit after SIGTERM before it is killed.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Free ports tried: the port is released before PgBouncer binds it.
pub(crate) const PORT_ATTEMPTS: usize = 5;

/// How PgBouncer reaches the database and how many connections it pools.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Database host: an address, or a Unix-socket directory (leading `/`).
    pub db_host: String,
    /// Database port.
    pub db_port: u16,
    /// The user clients log in as (trust; it must still be in the userlist).
    pub user: String,
    /// Server connections per database/user pair (`default_pool_size`).
    pub pool_size: usize,
    /// Client connections accepted (`max_client_conn`).
    pub max_clients: usize,
}

/// A running PgBouncer in session mode with trust authentication.
#[derive(Debug)]
pub struct PgBouncer {
    child: Child,
    port: u16,
    log_path: PathBuf,
    /// Holds ini, userlist, pid file and log; removed on drop.
    _dir: TempDir,
}

impl PgBouncer {
    /// Writes the configuration and starts PgBouncer, waiting until it
    /// accepts TCP connections.
    pub fn start(settings: &Settings) -> Result<PgBouncer> {
        let owner = Owner::detect()?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-pgbouncer-")
            .tempdir()
            .context("creating PgBouncer's directory")?;
        owner.give(dir.path())?;
        let userlist = dir.path().join("userlist.txt");
        // Trust still looks the user up in auth_file; the password is unused.
        write_owned(&userlist, &format!("\"{}\" \"\"\n", settings.user), owner)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port().context("picking a port for PgBouncer")?;
            let ini = dir.path().join("pgbouncer.ini");
            write_owned(&ini, &ini_text(settings, dir.path(), port), owner)?;
            let log_path = dir.path().join(format!("pgbouncer-{port}.log"));
            let mut child = spawn(&ini, &log_path, dir.path(), owner)?;
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    return Ok(PgBouncer {
                        child,
                        port,
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

    /// An endpoint logging in through PgBouncer as `user`.
    pub fn endpoint(&self, user: &str, binaries: &Binaries) -> Endpoint {
        Endpoint {
            host: Ipv4Addr::LOCALHOST.to_string(),
            port: self.port,
            user: user.to_owned(),
            password: None,
            binaries: binaries.clone(),
        }
    }

    /// Its log (PgBouncer's stderr), for diagnosing a failed run.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Stops PgBouncer; dropping it does the same.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// Polls until `port` accepts a connection or the process exits.
pub(crate) fn wait_ready(child: &mut Child, port: u16) -> Result<()> {
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
pub(crate) fn terminate(child: &mut Child) {
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

/// `pgbouncer --version`'s first line, if it runs.
pub fn version() -> Option<String> {
    let out = Command::new(program()).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(str::to_owned)
}

pub(crate) fn program() -> PathBuf {
    let debian = PathBuf::from(DEBIAN_PGBOUNCER);
    if debian.is_file() {
        debian
    } else {
        PathBuf::from("pgbouncer")
    }
}

/// The ini: one wildcard database entry pointing at the server, session
/// pooling with a pool large enough that no client ever waits for a server
/// connection, and no Unix socket of its own.
fn ini_text(s: &Settings, dir: &Path, port: u16) -> String {
    format!(
        "; written by switchyard-bench\n\
         [databases]\n\
         * = host={host} port={db_port}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {dir}/userlist.txt\n\
         admin_users = {user}\n\
         pool_mode = session\n\
         default_pool_size = {pool}\n\
         max_client_conn = {max_clients}\n\
         pidfile = {dir}/pgbouncer.pid\n\
         log_connections = 0\n\
         log_disconnections = 0\n",
        host = s.db_host,
        db_port = s.db_port,
        dir = dir.display(),
        user = s.user,
        pool = s.pool_size,
        max_clients = s.max_clients,
    )
}

/// Runs PgBouncer in the foreground; it logs to stderr, which goes to `log`.
pub(crate) fn spawn(ini: &Path, log: &Path, cwd: &Path, owner: Owner) -> Result<Child> {
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
pub(crate) enum Owner {
    /// The current user, who is not root.
    Myself,
    /// We are root; PgBouncer runs as the `postgres` system user.
    Postgres { uid: u32, gid: u32 },
}

impl Owner {
    pub(crate) fn detect() -> Result<Owner> {
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

    pub(crate) fn give(self, path: &Path) -> Result<()> {
        if let Owner::Postgres { uid, gid } = self {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to the postgres user", path.display()))?;
        }
        Ok(())
    }
}

pub(crate) fn write_owned(path: &Path, text: &str, owner: Owner) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    owner.give(path)
}
