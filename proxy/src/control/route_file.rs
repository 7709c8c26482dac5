//! Where traffic goes after a cutover, kept across restarts. The config
//! still names the old database as `[source]` once a cutover has moved
//! traffic to `[target]`: a proxy started again with it must not send the
//! applications back there. The flip records the target in the capture
//! log directory; at start the proxy follows the record.

use crate::capture::state_file::{self, StateFileError};
use crate::config::{Config, DatabaseConfig};
use crate::session::route::Destination;
use serde::{Deserialize, Serialize};

/// The file's name inside the capture log directory.
pub const FILE_NAME: &str = "route.state";

/// The database a cutover moved traffic to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRecord {
    /// Its host.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Its database, as configured.
    pub database: Option<String>,
    /// When the flip happened, Unix microseconds.
    pub flipped_micros: i64,
}

impl RouteRecord {
    fn names(&self, db: &DatabaseConfig) -> bool {
        self.host == db.host && self.port == db.port && self.database == db.database
    }
}

/// Records that traffic now goes to `target`.
pub fn record(config: &Config, target: &DatabaseConfig) -> Result<(), StateFileError> {
    let rec = RouteRecord {
        host: target.host.clone(),
        port: target.port,
        database: target.database.clone(),
        flipped_micros: crate::capture::control::unix_micros(std::time::SystemTime::now()),
    };
    let dir = &config.capture.log_dir;
    std::fs::create_dir_all(dir).map_err(|source| StateFileError::Io {
        op: "create",
        path: dir.clone(),
        source,
    })?;
    let text = toml::to_string(&rec).unwrap_or_default();
    state_file::write_atomic(dir, FILE_NAME, &text)
}

/// Where new logins go when the proxy starts: `[target]` if a cutover
/// moved traffic there, `[source]` otherwise (also when the config was
/// since rewritten to name the new database as `[source]`). A record that
/// names neither is an error: the applications' database is unknown.
pub fn starting_route(config: &Config) -> Result<Destination, String> {
    let path = config.capture.log_dir.join(FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Destination::Source),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let rec: RouteRecord = toml::from_str(&text).map_err(|e| {
        format!(
            "{} is unreadable: {e}; remove it if no cutover happened",
            path.display()
        )
    })?;
    if config.target.as_ref().is_some_and(|t| rec.names(t)) {
        return Ok(Destination::Target);
    }
    if rec.names(&config.source) {
        return Ok(Destination::Source);
    }
    Err(format!(
        "a cutover moved traffic to {}:{} (database {}), which the config names as neither [source] nor [target]; \
         set [source] to it (or remove {} if that database no longer serves the applications)",
        rec.host,
        rec.port,
        rec.database.as_deref().unwrap_or("default"),
        path.display()
    ))
}

/// Removes the record (a cutover called off after writing it).
pub fn forget(config: &Config) {
    let _ = std::fs::remove_file(config.capture.log_dir.join(FILE_NAME));
}
