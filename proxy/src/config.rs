//! The proxy's configuration: a TOML file read by [`Config::load`] and checked
//! by [`Config::validate`]. Every error names the key at fault.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use switchyard_replay::{DbTls, Dsn, SslMode, TlsError};
use thiserror::Error;

mod cutover;
mod effective;
mod tls;

pub use cutover::{CutoverConfig, Fence, OnDrainTimeout, VerifyMode};
pub use tls::{ClientTls, TlsConfig};

/// Configuration errors. Exit code 2 in the binary.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the TOML parser said (it names the key and line).
        message: String,
    },
    /// A value that parsed but makes no sense.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// How a client (or the proxy, towards a database) proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// No password.
    Trust,
    /// MD5 challenge.
    Md5,
    /// SCRAM-SHA-256.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

impl AuthMethod {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to. Default `127.0.0.1:6432`.
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Name of the virtual database that is the admin console. Default `switchyard`.
    #[serde(default = "default_admin_database")]
    pub admin_database: String,
    /// The database that serves traffic now (before a cutover, the source).
    pub source: DatabaseConfig,
    /// How clients authenticate to the proxy.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Users known to the proxy.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Limits and timeouts.
    #[serde(default)]
    pub limits: Limits,
    /// Prometheus metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Write capture.
    #[serde(default)]
    pub capture: CaptureConfig,
    /// The database being migrated to (the clone): `switchyard clone` fills
    /// it, catch-up keeps it current. User and database default to the
    /// capture connection's.
    pub target: Option<DatabaseConfig>,
    /// Catch-up replay.
    #[serde(default)]
    pub catchup: CatchupConfig,
    /// Cutover defaults.
    #[serde(default)]
    pub cutover: CutoverConfig,
    /// TLS with clients; absent: clients that ask for it are told 'N' and
    /// go on in clear text (or give up, if they require it).
    pub tls: Option<TlsConfig>,
}

/// Catch-up replay (key sync) from the capture log to the target.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatchupConfig {
    /// Migration mapping file (TOML); absent: same tables and columns by name.
    pub mapping: Option<std::path::PathBuf>,
    /// Parallel workers, each with a source and a target connection. Default 4.
    #[serde(default = "default_catchup_workers")]
    pub workers: usize,
    /// Keys read from the log per dispatch, at most. Default 5000.
    #[serde(default = "default_batch_keys")]
    pub batch_keys: usize,
    /// Milliseconds keys gather after a batch before the next is sent to
    /// the workers (unless `batch_keys` are in hand): each worker commits
    /// about once per interval rather than once per source commit, for at
    /// most this much more lag. 0: a batch per wake-up. Default 10.
    #[serde(default = "default_batch_interval_ms")]
    pub batch_interval_ms: u64,
}

impl Default for CatchupConfig {
    fn default() -> Self {
        CatchupConfig {
            mapping: None,
            workers: default_catchup_workers(),
            batch_keys: default_batch_keys(),
            batch_interval_ms: default_batch_interval_ms(),
        }
    }
}

fn default_catchup_workers() -> usize {
    4
}
fn default_batch_keys() -> usize {
    5_000
}
fn default_batch_interval_ms() -> u64 {
    10
}

/// A database the proxy connects to.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Host name or IP address.
    pub host: String,
    /// Port. Default 5432.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Database name; when absent, the one the client asked for.
    pub database: Option<String>,
    /// User the proxy logs in as; when absent, the client's user name.
    pub user: Option<String>,
    /// Password the proxy uses (for md5 or SCRAM); when absent, the client
    /// user's configured password if it is in clear text.
    pub password: Option<String>,
    /// TLS towards this database, as libpq's `sslmode`: `disable`,
    /// `prefer` (default: TLS if the database accepts it), `require`,
    /// `verify-ca` or `verify-full`. For the sessions' backends, the
    /// proxy's own connections, and clone's pg_dump / pg_restore.
    #[serde(default)]
    pub sslmode: SslMode,
    /// The CA certificates (PEM) the database's certificate must be signed
    /// by, or `"system"` for the system's trusted roots; needed by
    /// `verify-ca` and `verify-full`, and checked with `prefer` and
    /// `require` too when set (as libpq does).
    pub sslrootcert: Option<String>,
    /// The TLS settings once loaded (by [`Config::validate`] or the first
    /// connection); leave it empty.
    #[serde(skip)]
    pub loaded_tls: std::sync::OnceLock<DbTls>,
}

impl DatabaseConfig {
    /// The TLS settings, loaded (root certificates read) on first use.
    /// Over a Unix-domain socket there is no TLS, as with libpq.
    pub fn tls(&self) -> Result<&DbTls, TlsError> {
        if let Some(t) = self.loaded_tls.get() {
            return Ok(t);
        }
        let tls = if crate::net::is_socket_dir(&self.host) {
            DbTls::disabled()
        } else {
            DbTls::new(self.sslmode, self.sslrootcert.as_deref())?
        };
        Ok(self.loaded_tls.get_or_init(|| tls))
    }

    /// Checks the TLS settings; `section` names it in errors.
    fn validate_tls(&self, section: &str) -> Result<(), ConfigError> {
        if crate::net::is_socket_dir(&self.host) && self.sslmode.requires_tls() {
            return Err(ConfigError::Invalid {
                key: format!("{section}.sslmode"),
                message: format!(
                    "\"{}\" asks for TLS, which is not used over a Unix-domain socket ({} is a socket directory): \
                     connect over TCP (a host name or address) or set sslmode = \"disable\"",
                    self.sslmode.name(),
                    self.host
                ),
            });
        }
        self.tls().map(drop).map_err(|e| ConfigError::Invalid {
            key: match e {
                TlsError::NeedsRoots { .. } => format!("{section}.sslmode"),
                _ => format!("{section}.sslrootcert"),
            },
            message: e.to_string(),
        })
    }
}

/// Client authentication.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `trust`, `md5` or `scram-sha-256` (default). With `trust` any user name
    /// is accepted; otherwise only users listed in `[[users]]`.
    #[serde(default = "default_auth_method")]
    pub method: AuthMethod,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            method: default_auth_method(),
        }
    }
}

/// A user known to the proxy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// User name.
    pub name: String,
    /// Password in clear text, or a PostgreSQL SCRAM verifier
    /// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`), or an md5
    /// hash (`md5` + md5(password || user)). A verifier works only for SCRAM
    /// and an md5 hash only for md5.
    pub password: Option<String>,
    /// Whether the user may open the admin console.
    #[serde(default)]
    pub admin: bool,
}

/// Limits and timeouts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest message accepted from a client, in bytes. Default 64 MiB.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Most client connections at once, counted from accept (startup and
    /// authentication included). Default 1000.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Connections beyond `max_clients` kept for admins opening the admin
    /// console, so that a full proxy does not lock the DBA out (PostgreSQL's
    /// `superuser_reserved_connections`). Default 2.
    #[serde(default = "default_admin_reserve")]
    pub admin_reserve: usize,
    /// Once the first byte of a client message has arrived, the rest must
    /// arrive within this many milliseconds, or the session is closed
    /// (08P01). A session idle between messages is never timed out.
    /// Default 30000.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Bytes of client input all sessions together may hold for messages
    /// larger than 64 KiB that are still arriving; a session that would need
    /// more than is left gets 53200 and is closed. Smaller messages never
    /// wait on it. Default 256 MiB.
    #[serde(default = "default_client_buffer_budget_bytes")]
    pub client_buffer_budget_bytes: usize,
    /// A client must finish startup and authentication within this many
    /// milliseconds. Default 10000.
    #[serde(default = "default_startup_timeout_ms")]
    pub startup_timeout_ms: u64,
    /// Timeout for opening a connection to a database, in ms. Default 5000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// On shutdown, how long open transactions may run before their sessions
    /// are closed, in ms. Default 10000.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Default for `PAUSE` without a timeout: the longest the gate stays
    /// closed, in ms. Default 30000.
    #[serde(default = "default_pause_timeout_ms")]
    pub pause_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: default_max_message_bytes(),
            max_clients: default_max_clients(),
            admin_reserve: default_admin_reserve(),
            message_timeout_ms: default_message_timeout_ms(),
            client_buffer_budget_bytes: default_client_buffer_budget_bytes(),
            startup_timeout_ms: default_startup_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            pause_timeout_ms: default_pause_timeout_ms(),
        }
    }
}

impl Limits {
    /// Startup timeout as a duration.
    pub fn startup_timeout(&self) -> Duration {
        Duration::from_millis(self.startup_timeout_ms)
    }

    /// Connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// Shutdown grace period as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// Default pause timeout as a duration.
    pub fn pause_timeout(&self) -> Duration {
        Duration::from_millis(self.pause_timeout_ms)
    }

    /// Message-in-progress timeout as a duration.
    pub fn message_timeout(&self) -> Duration {
        Duration::from_millis(self.message_timeout_ms)
    }
}

/// The longest any configured timeout may be: a day. Beyond it a value is a
/// typo, and instants that far ahead overflow.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint serving `/metrics`; off when absent.
    #[serde(default, deserialize_with = "some_socket_addr")]
    pub listen: Option<SocketAddr>,
}

/// What capture does with a statement it cannot capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnsafePolicy {
    /// The client gets an error (SQLSTATE 0A000) and the statement does not run.
    Reject,
    /// The statement runs uncaptured; it is counted and listed in SHOW CAPTURE.
    Warn,
}

impl UnsafePolicy {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            UnsafePolicy::Reject => "reject",
            UnsafePolicy::Warn => "warn",
        }
    }
}

/// How far a capture-log write must get before a commit is let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilityConfig {
    /// write(2) returned: survives a proxy crash.
    Write,
    /// fsync returned (group commit): survives a machine crash.
    Fsync,
}

/// What happens to capture-log segments that every replayer has confirmed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Retention {
    /// Delete segments wholly below every hold in the log directory (each
    /// replayer's committed position, a cutover's freeze marker), keeping the
    /// newest `retain_records`; with no hold at all, nothing is deleted.
    #[default]
    Confirmed,
    /// Keep the whole log.
    Keep,
}

/// Write capture: where the log goes and what to do with statements that
/// cannot be captured.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// Directory of the capture log's segment files. Default `switchyard-log`.
    #[serde(default = "default_log_dir")]
    pub log_dir: std::path::PathBuf,
    /// `write` (default) or `fsync`.
    #[serde(default = "default_durability")]
    pub durability: DurabilityConfig,
    /// A segment file is closed and a new one started once it would pass
    /// this size, bytes; retention deletes whole segments. Default 64 MiB.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// `confirmed` (default): delete segments every replayer has confirmed;
    /// `keep`: keep the whole log.
    #[serde(default)]
    pub retention: Retention,
    /// The newest records that retention always keeps, whatever the
    /// replayers confirmed. Default 200000: the cutover's verify samples
    /// keys from the last 200,000 records.
    #[serde(default = "default_retain_records")]
    pub retain_records: u64,
    /// Warn (proxy log, SHOW CAPTURE, metric) when the filesystem holding
    /// the log has fewer free bytes than this; 0 turns the warning off.
    /// Default 1 GiB.
    #[serde(default = "default_disk_warn_free_bytes")]
    pub disk_warn_free_bytes: u64,
    /// Default policy for unsafe statements: `reject` (default) or `warn`.
    #[serde(default = "default_policy")]
    pub policy: UnsafePolicy,
    /// Per-kind overrides of `policy`, e.g. `ddl = "warn"`; kinds as SHOW
    /// CAPTURE names them.
    #[serde(default)]
    pub policies: std::collections::BTreeMap<String, UnsafePolicy>,
    /// How often the source catalog (tables, keys, functions) is re-read.
    #[serde(default = "default_catalog_refresh_ms")]
    pub catalog_refresh_ms: u64,
    /// Who the proxy logs in as to read the catalog and pg_stat_activity;
    /// defaults to `source.user`.
    pub user: Option<String>,
    /// That user's password; defaults to `source.password`.
    pub password: Option<String>,
    /// The one database capture (and the cutover) concerns: its sessions
    /// are captured, sessions of other databases are relayed uncaptured.
    /// Defaults to `source.database`; with neither set, `CAPTURE START
    /// <database>` must name it.
    pub database: Option<String>,
    /// VOLATILE functions the DBA declares never write (`"schema.name"`,
    /// as the catalog spells it, all overloads): capture lets statements
    /// that call or reach them through. A name the catalog does not know is
    /// warned about at CAPTURE START and listed in SHOW CAPTURE.
    #[serde(default)]
    pub read_only_functions: Vec<String>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            log_dir: default_log_dir(),
            durability: default_durability(),
            segment_bytes: default_segment_bytes(),
            retention: Retention::default(),
            retain_records: default_retain_records(),
            disk_warn_free_bytes: default_disk_warn_free_bytes(),
            policy: default_policy(),
            policies: Default::default(),
            catalog_refresh_ms: default_catalog_refresh_ms(),
            user: None,
            password: None,
            database: None,
            read_only_functions: Vec::new(),
        }
    }
}

impl CaptureConfig {
    /// `read_only_functions` as (schema, name) pairs; entries without a
    /// schema are left out (`validate` refuses them).
    pub fn read_only_function_names(&self) -> Vec<(String, String)> {
        self.read_only_functions
            .iter()
            .filter_map(|f| f.split_once('.'))
            .map(|(s, n)| (s.to_owned(), n.to_owned()))
            .collect()
    }

    /// The policy for an unsafe kind.
    pub fn policy_for(&self, kind: &str) -> UnsafePolicy {
        self.policies.get(kind).copied().unwrap_or(self.policy)
    }
}

fn default_log_dir() -> std::path::PathBuf {
    "switchyard-log".into()
}
fn default_durability() -> DurabilityConfig {
    DurabilityConfig::Write
}
/// The smallest `capture.segment_bytes` accepted (a few records' worth).
pub const MIN_SEGMENT_BYTES: u64 = 4096;

fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_retain_records() -> u64 {
    200_000
}
fn default_disk_warn_free_bytes() -> u64 {
    1024 * 1024 * 1024
}
fn default_policy() -> UnsafePolicy {
    UnsafePolicy::Reject
}
fn default_catalog_refresh_ms() -> u64 {
    5_000
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6432))
}
fn default_admin_database() -> String {
    "switchyard".into()
}
fn default_pg_port() -> u16 {
    5432
}
fn default_auth_method() -> AuthMethod {
    AuthMethod::ScramSha256
}
fn default_max_message_bytes() -> usize {
    64 << 20
}
fn default_max_clients() -> usize {
    1000
}
fn default_admin_reserve() -> usize {
    2
}
fn default_message_timeout_ms() -> u64 {
    30_000
}
fn default_client_buffer_budget_bytes() -> usize {
    256 << 20
}
fn default_startup_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_shutdown_timeout_ms() -> u64 {
    10_000
}
fn default_pause_timeout_ms() -> u64 {
    30_000
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads `catchup.mapping`, if set, and checks its syntax and keys
    /// (`check-config`; catch-up checks it against both catalogs when it
    /// starts). Not part of [`Config::load`]: a proxy starts, and serves,
    /// whatever the catch-up file holds.
    pub fn check_mapping_file(&self) -> Result<(), ConfigError> {
        match &self.catchup.mapping {
            None => Ok(()),
            Some(path) => switchyard_replay::mapping::Mapping::load(path)
                .map(drop)
                .map_err(|e| ConfigError::Invalid {
                    key: "catchup.mapping".into(),
                    message: e.to_string(),
                }),
        }
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_owned(),
            message,
        };
        if self.source.host.trim().is_empty() {
            return Err(invalid("source.host", "must name the database host".into()));
        }
        if self.source.port == 0 {
            return Err(invalid("source.port", "must be a port number 1-65535".into()));
        }
        if self.admin_database.is_empty() {
            return Err(invalid("admin_database", "must not be empty".into()));
        }
        if self.source.database.as_deref() == Some(self.admin_database.as_str()) {
            return Err(invalid(
                "source.database",
                format!(
                    "is the admin console's name `{}`; set admin_database to another name",
                    self.admin_database
                ),
            ));
        }
        if self.capture.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(invalid(
                "capture.segment_bytes",
                format!(
                    "{} is too small: a segment must hold at least {MIN_SEGMENT_BYTES} bytes",
                    self.capture.segment_bytes
                ),
            ));
        }
        for (i, f) in self.capture.read_only_functions.iter().enumerate() {
            if !f
                .split_once('.')
                .is_some_and(|(s, n)| !s.is_empty() && !n.is_empty() && !n.contains('.'))
            {
                return Err(invalid(
                    &format!("capture.read_only_functions[{i}]"),
                    format!("`{f}` must be `schema.name`, as the catalog spells them"),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, user) in self.users.iter().enumerate() {
            let key = format!("users[{i}]");
            if user.name.is_empty() {
                return Err(invalid(&format!("{key}.name"), "must not be empty".into()));
            }
            if !seen.insert(user.name.as_str()) {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("user `{}` is listed twice", user.name),
                ));
            }
            let password = user.password.as_deref();
            match (self.auth.method, password) {
                (AuthMethod::Trust, _) => {}
                (_, None) => {
                    return Err(invalid(
                        &format!("{key}.password"),
                        format!(
                            "user `{}` needs a password when auth.method is not trust",
                            user.name
                        ),
                    ))
                }
                (AuthMethod::Md5, Some(p)) if p.starts_with("SCRAM-SHA-256$") => {
                    return Err(invalid(
                        &format!("{key}.password"),
                        format!("user `{}` has a SCRAM verifier, which cannot answer md5; give the password in clear text or as an md5 hash", user.name),
                    ))
                }
                (AuthMethod::ScramSha256, Some(p)) if is_md5_hash(p) => {
                    return Err(invalid(
                        &format!("{key}.password"),
                        format!("user `{}` has an md5 hash, which cannot answer SCRAM; give the password in clear text or as a SCRAM verifier", user.name),
                    ))
                }
                (AuthMethod::ScramSha256, Some(p)) if p.starts_with("SCRAM-SHA-256$") => {
                    crate::auth::scram::Verifier::parse(p).map_err(|e| {
                        invalid(&format!("{key}.password"), format!("bad SCRAM verifier: {e}"))
                    })?;
                }
                _ => {}
            }
        }
        if self.auth.method != AuthMethod::Trust && self.users.is_empty() {
            return Err(invalid(
                "users",
                "no users are configured, so nobody could log in; add [[users]] entries or set auth.method = \"trust\""
                    .into(),
            ));
        }
        if self.limits.max_message_bytes < 1024 {
            return Err(invalid("limits.max_message_bytes", "must be at least 1024".into()));
        }
        if self.limits.max_clients == 0 {
            return Err(invalid("limits.max_clients", "must be at least 1".into()));
        }
        for (key, v, max) in [
            (
                "limits.startup_timeout_ms",
                self.limits.startup_timeout_ms,
                MAX_TIMEOUT_MS,
            ),
            (
                "limits.connect_timeout_ms",
                self.limits.connect_timeout_ms,
                MAX_TIMEOUT_MS,
            ),
            (
                "limits.message_timeout_ms",
                self.limits.message_timeout_ms,
                MAX_TIMEOUT_MS,
            ),
            // PAUSE itself takes at most an hour.
            ("limits.pause_timeout_ms", self.limits.pause_timeout_ms, 3_600_000),
            (
                "capture.catalog_refresh_ms",
                self.capture.catalog_refresh_ms,
                MAX_TIMEOUT_MS,
            ),
        ] {
            if v == 0 || v > max {
                return Err(invalid(key, format!("must be above 0 and at most {max}")));
            }
        }
        if self.limits.shutdown_timeout_ms > MAX_TIMEOUT_MS {
            return Err(invalid(
                "limits.shutdown_timeout_ms",
                format!("must be at most {MAX_TIMEOUT_MS}"),
            ));
        }
        if self.limits.client_buffer_budget_bytes < self.limits.max_message_bytes {
            return Err(invalid(
                "limits.client_buffer_budget_bytes",
                "must be at least limits.max_message_bytes, or no session could receive its largest message".into(),
            ));
        }
        if let Some(t) = &self.target {
            if t.host.trim().is_empty() {
                return Err(invalid("target.host", "must name the database host".into()));
            }
            if t.port == 0 {
                return Err(invalid("target.port", "must be a port number 1-65535".into()));
            }
            if t.host == self.source.host && t.port == self.source.port && t.database == self.source.database {
                return Err(invalid(
                    "target",
                    "names the same database as [source]; the target must be another database".into(),
                ));
            }
        }
        for (key, v) in [
            ("catchup.workers", self.catchup.workers),
            ("catchup.batch_keys", self.catchup.batch_keys),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be above 0".into()));
            }
        }
        if self.catchup.batch_interval_ms > 1_000 {
            return Err(invalid(
                "catchup.batch_interval_ms",
                "must be from 0 to 1000 (milliseconds of extra lag at most)".into(),
            ));
        }
        if let (Some(c), Some(s)) = (&self.capture.database, &self.source.database) {
            if c != s {
                return Err(invalid(
                    "capture.database",
                    format!("is `{c}`, but every session's backend connects to source.database `{s}`; name the same database or leave one unset"),
                ));
            }
        }
        if self.capture.database.as_deref() == Some(self.admin_database.as_str()) {
            return Err(invalid(
                "capture.database",
                format!("is the admin console's name `{}`", self.admin_database),
            ));
        }
        if self.capture.log_dir.as_os_str().is_empty() {
            return Err(invalid("capture.log_dir", "must name a directory".into()));
        }
        if self.target_log_dir() == self.capture.log_dir {
            return Err(invalid(
                "cutover.target_log_dir",
                "is capture.log_dir: capture on the target after a cutover needs a directory of its own".into(),
            ));
        }
        for kind in self.capture.policies.keys() {
            if !crate::capture::UNSAFE_KINDS.contains(&kind.as_str()) {
                return Err(invalid(
                    &format!("capture.policies.{kind}"),
                    format!("unknown kind; kinds are {}", crate::capture::UNSAFE_KINDS.join(", ")),
                ));
            }
        }
        self.cutover.validate()?;
        self.source.validate_tls("source")?;
        if let Some(target) = &self.target {
            target.validate_tls("target")?;
        }
        if let Some(tls) = &self.tls {
            tls.load()?;
        }
        Ok(())
    }

    /// The configured user of this name.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    /// A minimal config for a source at `host:port` with trust auth, used by
    /// the testkit and the demo.
    pub fn trusting(listen: SocketAddr, host: &str, port: u16) -> Config {
        Config {
            listen,
            admin_database: default_admin_database(),
            source: DatabaseConfig {
                host: host.to_owned(),
                port,
                ..DatabaseConfig::default()
            },
            auth: AuthConfig {
                method: AuthMethod::Trust,
            },
            users: Vec::new(),
            limits: Limits::default(),
            metrics: MetricsConfig::default(),
            capture: CaptureConfig::default(),
            target: None,
            catchup: CatchupConfig::default(),
            cutover: CutoverConfig::default(),
            tls: None,
        }
    }

    /// The user the proxy's own connections to the source log in as
    /// (`capture.user`, else `source.user`).
    pub fn control_user(&self) -> Option<&str> {
        self.capture.user.as_deref().or(self.source.user.as_deref())
    }

    /// The database capture concerns, as configured: `capture.database`,
    /// else `source.database`. Never guessed from a user name.
    pub fn capture_database(&self) -> Option<&str> {
        self.capture.database.as_deref().or(self.source.database.as_deref())
    }

    /// Where capture on the target writes its log after a cutover:
    /// `cutover.target_log_dir`, else `target` inside `capture.log_dir`.
    pub fn target_log_dir(&self) -> std::path::PathBuf {
        self.cutover
            .target_log_dir
            .clone()
            .unwrap_or_else(|| self.capture.log_dir.join("target"))
    }

    /// The proxy's own connection to the source (catalog, pg_stat_activity,
    /// catch-up reads, clone): `source` host and port with the `capture`
    /// user and password (each defaulting to `source`'s), on the captured
    /// database ([`Config::capture_database`]).
    pub fn source_control(&self, application: &str) -> Result<Dsn, ConfigError> {
        let database = self.capture_database().ok_or_else(|| ConfigError::Invalid {
            key: "capture.database".into(),
            message: "no database named to capture: set capture.database (or source.database)".into(),
        })?;
        self.source_control_on(application, database)
    }

    /// [`Config::source_control`] on `database`.
    pub fn source_control_on(&self, application: &str, database: &str) -> Result<Dsn, ConfigError> {
        let user = self.control_user().ok_or_else(|| ConfigError::Invalid {
            key: "capture.user".into(),
            message: "no user for the proxy's own source connections: set capture.user (or source.user)".into(),
        })?;
        let password = self.capture.password.as_deref().or(self.source.password.as_deref());
        pg_config(
            &self.source,
            user,
            password,
            database,
            application,
            self.limits.connect_timeout(),
        )
    }

    /// The connection to the target: `[target]`, with user and database
    /// defaulting to the source control connection's.
    pub fn target_connection(&self, application: &str) -> Result<Dsn, ConfigError> {
        let target = self.target.as_ref().ok_or_else(|| ConfigError::Invalid {
            key: "target".into(),
            message: "no [target] section: name the database to migrate to (host, port, database, user)".into(),
        })?;
        let user = target
            .user
            .as_deref()
            .or(self.control_user())
            .ok_or_else(|| ConfigError::Invalid {
                key: "target.user".into(),
                message:
                    "no user to log in to the target with: set target.user (or capture.user, which it defaults to)"
                        .into(),
            })?;
        let database = target
            .database
            .as_deref()
            .or(self.capture_database())
            .ok_or_else(|| ConfigError::Invalid {
                key: "target.database".into(),
                message: "no database named on the target: set target.database (or capture.database)".into(),
            })?;
        pg_config(
            target,
            user,
            target.password.as_deref(),
            database,
            application,
            self.limits.connect_timeout(),
        )
    }
}

fn pg_config(
    db: &DatabaseConfig,
    user: &str,
    password: Option<&str>,
    database: &str,
    application: &str,
    connect_timeout: Duration,
) -> Result<Dsn, ConfigError> {
    let mut pg = tokio_postgres::Config::new();
    pg.user(user)
        .dbname(database)
        .application_name(application)
        .port(db.port);
    if let Some(p) = password {
        pg.password(p);
    }
    if crate::net::is_socket_dir(&db.host) {
        pg.host_path(&db.host);
    } else {
        pg.host(&db.host);
    }
    pg.connect_timeout(connect_timeout);
    // Validation loaded the settings already; a config that skipped it
    // gets the same error here.
    let tls = db.tls().map_err(|e| ConfigError::Invalid {
        key: "sslrootcert".into(),
        message: e.to_string(),
    })?;
    Ok(Dsn::new(pg, tls.clone()))
}

/// An `ip:port` address; the error says what form is wanted (a host name
/// is not resolved: the address is bound).
fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "`{text}` is not an IP address and port: write e.g. \"127.0.0.1:6432\", \"0.0.0.0:6432\" or \"[::1]:6432\" (a host name is not accepted)"
        ))
    })
}

fn some_socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(d).map(Some)
}

/// Whether a stored password is an md5 hash (`md5` + 32 hex digits).
pub fn is_md5_hash(p: &str) -> bool {
    p.len() == 35 && p.starts_with("md5") && p[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("[source]\nhost = \"127.0.0.1\"\n[auth]\nmethod = \"trust\"\n", "t").unwrap();
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.source.port, 5432);
        assert_eq!(c.limits.max_message_bytes, 64 << 20);
    }

    #[test]
    fn retention_settings_have_defaults_and_are_checked() {
        let base = "[source]\nhost = \"db1\"\n[auth]\nmethod = \"trust\"\n";
        let c = Config::parse(base, "t").unwrap();
        assert_eq!(c.capture.retention, Retention::Confirmed);
        assert_eq!(c.capture.retain_records, 200_000);
        assert_eq!(c.capture.segment_bytes, 64 << 20);
        assert_eq!(c.capture.disk_warn_free_bytes, 1 << 30);
        let c = Config::parse(
            &format!("{base}[capture]\nretention = \"keep\"\nretain_records = 10\nsegment_bytes = 65536\ndisk_warn_free_bytes = 0\n"),
            "t",
        )
        .unwrap();
        assert_eq!(c.capture.retention, Retention::Keep);
        assert_eq!((c.capture.retain_records, c.capture.segment_bytes), (10, 65536));
        let err = Config::parse(&format!("{base}[capture]\nsegment_bytes = 100\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture.segment_bytes"), "{err}");
        let err = Config::parse(&format!("{base}[capture]\nretention = \"forever\"\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("confirmed") && err.contains("keep"), "{err}");
    }

    #[test]
    fn target_and_catchup_settings_are_checked() {
        let base = "[source]\nhost = \"db1\"\nuser = \"app\"\ndatabase = \"shop\"\n[auth]\nmethod = \"trust\"\n";
        let c = Config::parse(base, "t").unwrap();
        let err = c.target_connection("t").unwrap_err().to_string();
        assert!(err.contains("[target]"), "{err}");
        let c = Config::parse(&format!("{base}[target]\nhost = \"db2\"\n"), "t").unwrap();
        let pg = c.target_connection("t").unwrap();
        assert_eq!(pg.pg.get_user(), Some("app"));
        assert_eq!(pg.pg.get_dbname(), Some("shop"));
        assert_eq!(c.catchup.workers, 4);
        let same = format!("{base}[target]\nhost = \"db1\"\ndatabase = \"shop\"\n");
        let err = Config::parse(&same, "t").unwrap_err().to_string();
        assert!(err.contains("same database"), "{err}");
        let zero = format!("{base}[catchup]\nworkers = 0\n");
        let err = Config::parse(&zero, "t").unwrap_err().to_string();
        assert!(err.contains("catchup.workers"), "{err}");
    }

    #[test]
    fn capture_settings_are_checked() {
        let base = "[source]\nhost = \"127.0.0.1\"\n[auth]\nmethod = \"trust\"\n";
        let c = Config::parse(base, "t").unwrap();
        assert_eq!(c.capture.policy, UnsafePolicy::Reject);
        assert_eq!(c.capture.durability, DurabilityConfig::Write);
        let warn = format!("{base}[capture]\npolicy = \"warn\"\n[capture.policies]\nddl = \"reject\"\n");
        let c = Config::parse(&warn, "t").unwrap();
        assert_eq!(c.capture.policy_for("ddl"), UnsafePolicy::Reject);
        assert_eq!(c.capture.policy_for("merge"), UnsafePolicy::Warn);
        let bad = format!("{base}[capture.policies]\nddll = \"warn\"\n");
        let e = Config::parse(&bad, "t").unwrap_err().to_string();
        assert!(e.contains("capture.policies.ddll") && e.contains("ddl"), "{e}");
        let bad = format!("{base}[capture]\ndurability = \"sometimes\"\n");
        assert!(Config::parse(&bad, "t").unwrap_err().to_string().contains("durability"));
    }

    #[test]
    fn read_only_functions_must_be_qualified() {
        let base = "[source]\nhost = \"127.0.0.1\"\n[auth]\nmethod = \"trust\"\n[capture]\n";
        let ok = format!("{base}read_only_functions = [\"public.peek\", \"app.Log\"]\n");
        let c = Config::parse(&ok, "t").unwrap();
        assert_eq!(
            c.capture.read_only_function_names(),
            vec![("public".into(), "peek".into()), ("app".into(), "Log".into())]
        );
        for bad in ["peek", ".peek", "public.", "a.b.c"] {
            let text = format!("{base}read_only_functions = [\"public.ok\", \"{bad}\"]\n");
            let e = Config::parse(&text, "t").unwrap_err().to_string();
            assert!(e.contains("capture.read_only_functions[1]"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_captured_database_is_named_never_guessed() {
        let base = "[source]\nhost = \"db1\"\nuser = \"app\"\n[auth]\nmethod = \"trust\"\n";
        let c = Config::parse(base, "t").unwrap();
        assert_eq!(c.capture_database(), None);
        let err = c.source_control("t").unwrap_err().to_string();
        assert!(err.contains("capture.database"), "{err}");
        let c = Config::parse(&format!("{base}[capture]\ndatabase = \"shop\"\n"), "t").unwrap();
        assert_eq!(c.source_control("t").unwrap().pg.get_dbname(), Some("shop"));
        let both =
            "[source]\nhost = \"db1\"\ndatabase = \"a\"\n[auth]\nmethod = \"trust\"\n[capture]\ndatabase = \"b\"\n";
        let err = Config::parse(both, "t").unwrap_err().to_string();
        assert!(
            err.contains("capture.database") && err.contains("source.database"),
            "{err}"
        );
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../switchyard.example.toml");
        let c = Config::parse(text, "switchyard.example.toml").unwrap();
        assert_eq!(c.auth.method, AuthMethod::ScramSha256);
        assert!(c.user("admin").is_some_and(|u| u.admin));
        // Capture, catch-up and the cutover can log in with what it sets.
        c.source_control("t").unwrap();
        c.target_connection("t").unwrap();
    }

    #[test]
    fn docker_config_is_valid_and_names_every_login() {
        let text = include_str!("../../docker/switchyard.toml");
        let c = Config::parse(text, "docker/switchyard.toml").unwrap();
        assert!(c.users.iter().any(|u| u.admin));
        for (what, pg) in [
            ("source", c.source_control("t").unwrap()),
            ("target", c.target_connection("t").unwrap()),
        ] {
            // The postgres image asks for a password over TCP.
            assert!(pg.pg.get_password().is_some(), "no {what} password");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse("[source]\nhost = \"h\"\nprot = 1\n", "t").unwrap_err();
        assert!(e.to_string().contains("prot"), "{e}");
        let e = Config::parse("[source]\nhost = \"h\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("`users`"), "{e}");
        let e = Config::parse("[source]\nhost = \"h\"\n[[users]]\nname = \"a\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("users[0].password"), "{e}");
        let e = Config::parse(
            "[source]\nhost = \"h\"\n[limits]\nmax_clients = 0\n[auth]\nmethod = \"trust\"\n",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("limits.max_clients"), "{e}");
    }

    #[test]
    fn check_config_reads_the_mapping_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mapping.toml");
        let mut c = Config::parse("[source]\nhost = \"h\"\n[auth]\nmethod = \"trust\"\n", "t").unwrap();
        c.check_mapping_file().unwrap();
        c.catchup.mapping = Some(path.clone());
        let e = c.check_mapping_file().unwrap_err().to_string();
        assert!(e.contains("catchup.mapping") && e.contains("mapping.toml"), "{e}");
        std::fs::write(&path, "[tables.person.colums]\nfull_name = \"name\"\n").unwrap();
        let e = c.check_mapping_file().unwrap_err().to_string();
        assert!(e.contains("catchup.mapping") && e.contains("colums"), "{e}");
        std::fs::write(&path, "[tables.person.columns]\nfull_name = \"name\"\n").unwrap();
        c.check_mapping_file().unwrap();
    }

    #[test]
    fn a_listen_address_that_is_not_ip_and_port_says_what_to_write() {
        let e = Config::parse("listen = \"localhost:6432\"\n[source]\nhost = \"h\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("127.0.0.1:6432"), "{e}");
        let e = Config::parse("[source]\nhost = \"h\"\n[metrics]\nlisten = \"9187\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("not an IP address and port"), "{e}");
        let c = Config::parse(
            "listen = \"[::1]:7000\"\n[source]\nhost = \"h\"\n[auth]\nmethod = \"trust\"\n[metrics]\nlisten = \"127.0.0.1:9187\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.metrics.listen.map(|a| a.port()), Some(9187));
    }

    #[test]
    fn timeouts_are_bounded() {
        let base = "[source]\nhost = \"h\"\n[auth]\nmethod = \"trust\"\n[limits]\n";
        for (key, value) in [
            ("pause_timeout_ms", "3600001"),
            ("startup_timeout_ms", "18446744073709551615"),
            ("connect_timeout_ms", "99999999999999"),
            ("shutdown_timeout_ms", "99999999999999"),
        ] {
            let e = Config::parse(&format!("{base}{key} = {value}\n"), "t").unwrap_err();
            assert!(e.to_string().contains(&format!("limits.{key}")), "{key}: {e}");
        }
        let e = Config::parse(
            "[source]\nhost = \"h\"\n[auth]\nmethod = \"trust\"\n[capture]\ncatalog_refresh_ms = 99999999999999\n",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("capture.catalog_refresh_ms"), "{e}");
        let ok = Config::parse(&format!("{base}pause_timeout_ms = 3600000\n"), "t").unwrap();
        assert_eq!(ok.limits.pause_timeout(), Duration::from_secs(3600));
    }
}
