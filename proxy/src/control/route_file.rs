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
    /// Where capture on the target logs (`cutover.target_log_dir` at the
    /// flip); absent in records written before it was kept.
    #[serde(default)]
    pub capture_dir: Option<std::path::PathBuf>,
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
        capture_dir: Some(config.target_log_dir()),
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
        match &rec.capture_dir {
            Some(dir) if *dir != config.target_log_dir() => {
                return Err(format!(
                    "capture on the target logs to {} since the cutover, but cutover.target_log_dir is now {}; \
                     set it back to {} so that capture resumes there",
                    dir.display(),
                    config.target_log_dir().display(),
                    dir.display()
                ))
            }
            _ => return Ok(Destination::Target),
        }
    }
    if rec.names(&config.source) {
        // The config was rotated (the cutover's target named [source]):
        // capture on it, started at the flip, must resume from its
        // directory, or its writes go unlogged.
        if let Some(dir) = rec.capture_dir.as_ref().filter(|d| **d != config.capture.log_dir) {
            if let Ok(Some(capture)) = state_file::read(dir) {
                return Err(format!(
                    "capture on database {} runs since the cutover and logs to {}: set capture.log_dir to {} so \
                     that it resumes (and cutover.target_log_dir elsewhere for the next migration), or, if that \
                     log is no longer needed, remove {}",
                    capture.database,
                    dir.display(),
                    dir.display(),
                    dir.join(state_file::FILE_NAME).display()
                ));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::state_file::CaptureRecord;

    fn config(log_dir: &std::path::Path, source: &str, target: &str, extra: &str) -> Config {
        let text = format!(
            "[source]\nhost = \"{source}\"\ndatabase = \"shop\"\nuser = \"app\"\n\
             [target]\nhost = \"{target}\"\ndatabase = \"shop\"\n\
             [capture]\nlog_dir = \"{}\"\n{extra}[auth]\nmethod = \"trust\"\n",
            log_dir.display()
        );
        Config::parse(&text, "test").unwrap()
    }

    fn capture_record(dir: &std::path::Path) {
        std::fs::create_dir_all(dir).unwrap();
        let record = CaptureRecord {
            database: "shop".into(),
            epoch: 1,
            start_lsn: 0,
            started_micros: 0,
            barrier_micros: None,
            resumes: 0,
        };
        state_file::write(dir, &record).unwrap();
    }

    #[test]
    fn a_recorded_flip_sends_logins_to_the_target_from_the_directory_capture_logs_to() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "db1", "db2", "");
        assert_eq!(starting_route(&c).unwrap(), Destination::Source);
        record(&c, c.target.as_ref().unwrap()).unwrap();
        assert_eq!(starting_route(&c).unwrap(), Destination::Target);

        // Moving the target's log directory since would lose capture on it.
        let moved = format!(
            "[cutover]\ntarget_log_dir = \"{}\"\n",
            dir.path().join("elsewhere").display()
        );
        let c2 = config(dir.path(), "db1", "db2", &moved);
        let err = starting_route(&c2).unwrap_err();
        assert!(
            err.contains("set it back to") && err.contains("target_log_dir"),
            "{err}"
        );
    }

    #[test]
    fn a_rotated_config_must_point_capture_at_the_log_capture_on_the_new_source_writes() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "db1", "db2", "");
        record(&c, c.target.as_ref().unwrap()).unwrap();
        let target_dir = c.target_log_dir();

        // The old target named [source], the next database [target].
        let rotated = config(dir.path(), "db2", "db3", "");
        assert_eq!(starting_route(&rotated).unwrap(), Destination::Source);
        capture_record(&target_dir);
        let err = starting_route(&rotated).unwrap_err();
        assert!(
            err.contains(&format!("set capture.log_dir to {}", target_dir.display())),
            "{err}"
        );

        // Pointed there, capture resumes from it (that directory holds no
        // route record: traffic is where the config says).
        let pointed = config(&target_dir, "db2", "db3", "");
        assert_eq!(starting_route(&pointed).unwrap(), Destination::Source);
    }
}
