//! Finding the PostgreSQL programs: the default 15 ones
//! (`$SWITCHYARD_PG_BINDIR`, then `pg_config --bindir`, then `PATH`, then
//! Debian's `/usr/lib/postgresql/15/bin`), and
//! the server programs of another major version for upgrade tests.

use crate::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The programs a cluster needs; a directory lacking one of them is skipped.
const SERVER_PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// Debian's location, tried last.
const DEBIAN_BINDIR: &str = "/usr/lib/postgresql/15/bin";

/// The major version the testkit is written for.
const WANTED_MAJOR: &str = "15";

/// Where the versions setup script installs other major versions, one
/// directory per major version, unless [`ROOT_VAR`] names another place.
const INSTALL_ROOT: &str = "/opt/switchyard/postgresql";

/// The environment variable that moves [`INSTALL_ROOT`], read by the setup
/// script too.
const ROOT_VAR: &str = "SWITCHYARD_PG_ROOT";

/// A directory holding the PostgreSQL server and client programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    bindir: PathBuf,
    /// Where client programs missing from `bindir` come from: a server-only
    /// install of another version borrows the default version's psql,
    /// pg_dump and pg_restore.
    clients: Option<PathBuf>,
}

impl Binaries {
    /// Finds the programs once per process. A directory whose `postgres`
    /// reports version 15 is preferred; failing that, the first complete
    /// directory is used with a warning.
    pub fn locate() -> Result<Binaries, Error> {
        static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        match FOUND.get_or_init(search) {
            Ok(bindir) => Ok(Binaries {
                bindir: bindir.clone(),
                clients: None,
            }),
            Err(searched) => Err(Error::BinariesNotFound {
                searched: searched.clone(),
            }),
        }
    }

    /// The server programs of PostgreSQL `major` (e.g. 17): from
    /// `$SWITCHYARD_PG_ROOT/<major>/bin` (default
    /// `/opt/switchyard/postgresql`), where `tests/versions/setup.sh`
    /// installs them, else from Debian's `/usr/lib/postgresql/<major>/bin`.
    /// A directory counts only if its `postgres` reports that major version.
    /// Client programs the directory lacks are taken from
    /// [`Binaries::locate`]'s, if it finds any.
    pub fn version(major: u32) -> Result<Binaries, Error> {
        let root = std::env::var_os(ROOT_VAR).map_or_else(|| PathBuf::from(INSTALL_ROOT), PathBuf::from);
        let candidates = [
            root.join(major.to_string()).join("bin"),
            PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        ];
        let wanted = major.to_string();
        let found = candidates
            .iter()
            .find(|d| has_server(d) && major_version(d).as_deref() == Some(wanted.as_str()));
        let Some(bindir) = found else {
            let searched: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
            return Err(Error::VersionNotFound {
                major,
                searched: searched.join(", "),
            });
        };
        let clients = Binaries::locate().ok().map(|b| b.bindir).filter(|d| d != bindir);
        Ok(Binaries {
            bindir: bindir.clone(),
            clients,
        })
    }

    /// Uses `bindir` as is, without checking it.
    pub fn at(bindir: impl Into<PathBuf>) -> Binaries {
        Binaries {
            bindir: bindir.into(),
            clients: None,
        }
    }

    /// The directory.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The path of program `name` (`pgbench`, `psql`, `pg_dump`, ...) in the
    /// directory, whether or not it exists there; for a version without its
    /// own client programs, the default version's copy of one it lacks.
    pub fn bin(&self, name: &str) -> PathBuf {
        let own = self.bindir.join(name);
        match &self.clients {
            Some(clients) if !own.is_file() && clients.join(name).is_file() => clients.join(name),
            _ => own,
        }
    }

    /// The major version `postgres --version` reports (`15`, `17`), if it runs.
    pub fn major_version(&self) -> Option<u32> {
        major_version(&self.bindir)?.parse().ok()
    }
}

/// Tries the candidate directories; on failure returns the list it tried.
fn search() -> Result<PathBuf, String> {
    // A directory named outright wins, whatever its version.
    if let Some(dir) = std::env::var_os(BINDIR_VAR).map(PathBuf::from) {
        if has_server(&dir) {
            return Ok(dir);
        }
        tracing::warn!(bindir = %dir.display(), "{BINDIR_VAR} lacks initdb, pg_ctl or postgres; searching elsewhere");
    }
    let candidates = candidates();
    let complete: Vec<&PathBuf> = candidates.iter().filter(|d| has_server(d)).collect();
    if let Some(dir) = complete
        .iter()
        .find(|d| major_version(d).as_deref() == Some(WANTED_MAJOR))
    {
        return Ok((*dir).clone());
    }
    if let Some(dir) = complete.first() {
        tracing::warn!(
            bindir = %dir.display(),
            version = ?major_version(dir),
            "no PostgreSQL 15 found; using another version"
        );
        return Ok((*dir).clone());
    }
    let searched: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
    Err(if searched.is_empty() {
        DEBIAN_BINDIR.to_owned()
    } else {
        searched.join(", ")
    })
}

/// Names the directory to use before any other is tried.
const BINDIR_VAR: &str = "SWITCHYARD_PG_BINDIR";

/// The directories to try, in order of preference, without duplicates.
fn candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os(BINDIR_VAR) {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !dir.is_empty() {
                dirs.push(PathBuf::from(dir));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            // A PATH entry often holds symlinks (Debian's /usr/bin wrappers or
            // /usr/local/bin links); the real directory is where initdb points.
            match std::fs::canonicalize(dir.join("initdb")) {
                Ok(real) => {
                    if let Some(parent) = real.parent() {
                        dirs.push(parent.to_path_buf());
                    }
                    dirs.push(dir);
                }
                Err(_) => continue,
            }
        }
    }
    dirs.push(PathBuf::from(DEBIAN_BINDIR));
    let mut unique = Vec::new();
    for d in dirs {
        if !unique.contains(&d) {
            unique.push(d);
        }
    }
    unique
}

fn has_server(dir: &Path) -> bool {
    SERVER_PROGRAMS.iter().all(|p| dir.join(p).is_file())
}

/// `postgres --version` prints `postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)`.
fn major_version(dir: &Path) -> Option<String> {
    let out = Command::new(dir.join("postgres")).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split(')').nth(1)?.split_whitespace().next()?;
    Some(version.split('.').next()?.to_owned())
}
