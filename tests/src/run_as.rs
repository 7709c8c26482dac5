//! Running the server programs as a user PostgreSQL accepts: initdb, pg_ctl
//! and postgres refuse to run as root, so under root they run as the
//! `postgres` system user instead.

use crate::Error;
use nix::unistd::{Gid, Uid, User};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Environment variables that would point a PostgreSQL program somewhere
/// other than where the testkit sends it.
const PG_ENV: [&str; 9] = [
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGSERVICE",
    "PGOPTIONS",
];

/// Whose identity the server programs take.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RunAs {
    /// The current user, who is not root.
    Myself,
    /// We are root; the programs run as this (the `postgres`) user.
    Other {
        /// The user.
        uid: Uid,
        /// Its primary group.
        gid: Gid,
    },
}

impl RunAs {
    /// Decides from the effective user id.
    pub(crate) fn detect() -> Result<RunAs, Error> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(RunAs::Myself);
        }
        let user = User::from_name("postgres")
            .map_err(|e| Error::Io {
                what: "looking up the `postgres` system user".into(),
                source: std::io::Error::from(e),
            })?
            .ok_or(Error::NoPostgresUser)?;
        Ok(RunAs::Other {
            uid: user.uid,
            gid: user.gid,
        })
    }

    /// A command for `program` that runs as the chosen user, in `cwd` (the
    /// server user may not be able to enter the test's working directory),
    /// with libpq's environment variables cleared.
    pub(crate) fn command(self, program: &Path, cwd: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(cwd);
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        if let RunAs::Other { uid, gid } = self {
            // std drops supplementary groups itself when root changes uid.
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        cmd
    }

    /// Gives `path` to the chosen user, so the server can write there.
    pub(crate) fn give(self, path: &Path) -> Result<(), Error> {
        match self {
            RunAs::Myself => Ok(()),
            RunAs::Other { uid, gid } => std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(Error::io(format!("giving {} to the postgres user", path.display()))),
        }
    }
}

/// Runs `cmd` to completion; a non-zero exit becomes [`Error::Command`] with
/// the program's output.
pub(crate) fn run(mut cmd: Command) -> Result<String, Error> {
    let program = describe(&cmd);
    let out = cmd.output().map_err(Error::io(format!("running {program}")))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(Error::Command {
            program,
            status: out.status,
            output: text,
        })
    }
}

/// The program and its arguments, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}
