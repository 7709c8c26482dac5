//! Setting up a throwaway cluster: options, initdb, configuration files and
//! the first start on a free port.

use crate::cluster::{blocking, Cluster, Ctl};
use crate::run_as::{describe, run, RunAs};
use crate::util::quote_literal;
use crate::{free_port, Binaries, Error};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use tempfile::TempDir;

/// How many ports are tried before giving up: the port is picked free but
/// released before the server binds it, so another process may take it.
const PORT_ATTEMPTS: usize = 5;

/// The included file holding the testkit's settings; rewritten for each port.
const SETTINGS_FILE: &str = "switchyard-testkit.conf";

/// How clients authenticate to the cluster (`pg_hba.conf`, for TCP on
/// 127.0.0.1 and for the Unix socket alike).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No password.
    #[default]
    Trust,
    /// SCRAM-SHA-256; passwords are stored as SCRAM verifiers.
    Scram {
        /// The superuser's password.
        password: String,
    },
    /// MD5; passwords are stored as md5 hashes (`password_encryption = md5`),
    /// so the server really runs the md5 exchange rather than upgrading it.
    Md5 {
        /// The superuser's password.
        password: String,
    },
}

impl Auth {
    /// The superuser's password, if the method has one.
    pub fn password(&self) -> Option<&str> {
        match self {
            Auth::Trust => None,
            Auth::Scram { password } | Auth::Md5 { password } => Some(password),
        }
    }

    /// The `pg_hba.conf` method name.
    fn hba_method(&self) -> &'static str {
        match self {
            Auth::Trust => "trust",
            Auth::Scram { .. } => "scram-sha-256",
            Auth::Md5 { .. } => "md5",
        }
    }

    /// The `password_encryption` setting that matches the method.
    fn password_encryption(&self) -> &'static str {
        match self {
            Auth::Md5 { .. } => "md5",
            Auth::Trust | Auth::Scram { .. } => "scram-sha-256",
        }
    }
}

/// Options for a [`Cluster`]; [`ClusterBuilder::start`] creates it.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    pub(crate) auth: Auth,
    pub(crate) settings: Vec<(String, String)>,
    pub(crate) superuser: String,
    pub(crate) users: Vec<(String, String)>,
    pub(crate) databases: Vec<(String, Option<String>)>,
    /// The programs to run; `None` is [`Binaries::locate`]'s.
    pub(crate) binaries: Option<Binaries>,
    /// Files written into the data directory (name, contents, mode).
    pub(crate) files: Vec<(String, Vec<u8>, u32)>,
    /// `pg_hba.conf` in place of the testkit's.
    pub(crate) hba: Option<String>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            auth: Auth::Trust,
            settings: Vec::new(),
            superuser: "postgres".into(),
            users: Vec::new(),
            databases: Vec::new(),
            binaries: None,
            files: Vec::new(),
            hba: None,
        }
    }
}

impl ClusterBuilder {
    /// Trust authentication, superuser `postgres`, no extra users or databases.
    pub fn new() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Sets the authentication method.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// SCRAM-SHA-256 authentication with this superuser password.
    pub fn scram(self, superuser_password: impl Into<String>) -> Self {
        self.auth(Auth::Scram {
            password: superuser_password.into(),
        })
    }

    /// MD5 authentication with this superuser password.
    pub fn md5(self, superuser_password: impl Into<String>) -> Self {
        self.auth(Auth::Md5 {
            password: superuser_password.into(),
        })
    }

    /// Adds a `postgresql.conf` setting; it overrides the testkit's defaults
    /// (except `port`, `listen_addresses` and `unix_socket_directories`,
    /// which the testkit owns).
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Adds several `postgresql.conf` settings, as [`ClusterBuilder::setting`].
    pub fn settings(mut self, settings: Vec<(String, String)>) -> Self {
        self.settings.extend(settings);
        self
    }

    /// Names the bootstrap superuser (default `postgres`).
    pub fn superuser(mut self, name: impl Into<String>) -> Self {
        self.superuser = name.into();
        self
    }

    /// Creates a login role with this password once the server is up.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.users.push((name.into(), password.into()));
        self
    }

    /// Creates a database, owned by the superuser, once the server is up.
    pub fn database(mut self, name: impl Into<String>) -> Self {
        self.databases.push((name.into(), None));
        self
    }

    /// Creates a database owned by `owner` (a superuser or a user added with
    /// [`ClusterBuilder::user`]) once the server is up.
    pub fn database_owned_by(mut self, name: impl Into<String>, owner: impl Into<String>) -> Self {
        self.databases.push((name.into(), Some(owner.into())));
        self
    }

    /// Writes a file into the data directory before the server starts,
    /// owned by the server's user with `mode` (e.g. `0o600` for the key
    /// that `ssl_key_file` names: PostgreSQL refuses a key others can read).
    /// `name` is relative to the data directory.
    pub fn file(mut self, name: impl Into<String>, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push((name.into(), contents.into(), mode));
        self
    }

    /// Serves TLS with this certificate and key (PEM): writes them into the
    /// data directory and sets `ssl = on`.
    pub fn ssl(self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.file("server.crt", cert_pem, 0o644)
            .file("server.key", key_pem, 0o600)
            .setting("ssl", "on")
            .setting("ssl_cert_file", "server.crt")
            .setting("ssl_key_file", "server.key")
    }

    /// Uses this `pg_hba.conf` instead of the testkit's (one method for
    /// every connection over the socket and 127.0.0.1). The testkit's own
    /// connections, and [`Cluster::connect`] and [`Cluster::endpoint`]'s,
    /// then go through the Unix socket (the file must let the superuser in
    /// with `local` lines); [`Cluster::host`] is still `127.0.0.1`.
    pub fn pg_hba(mut self, contents: impl Into<String>) -> Self {
        self.hba = Some(contents.into());
        self
    }

    /// Runs the cluster with these programs, e.g. another major version's
    /// from [`Binaries::version`]; by default [`Binaries::locate`]'s.
    pub fn binaries(mut self, binaries: Binaries) -> Self {
        self.binaries = Some(binaries);
        self
    }

    /// Runs initdb, starts the server, waits until it accepts connections and
    /// creates the users and databases. The blocking steps run on tokio's
    /// blocking pool, so this is fine inside `#[tokio::test]`.
    pub async fn start(self) -> Result<Cluster, Error> {
        let (cluster, builder) = blocking(move || launch(self, None)).await?;
        // From here on the server runs and `cluster` stops it if we fail.
        cluster.bootstrap(&builder).await?;
        Ok(cluster)
    }

    /// Starts a server on a copy of another test cluster's data directory
    /// (a base backup), held in `root/data`; users and databases come with
    /// the copy, so the builder's are not created again.
    pub async fn start_copy(self, root: TempDir) -> Result<Cluster, Error> {
        let (cluster, _) = blocking(move || launch(self, Some(root))).await?;
        cluster.wait_ready().await?;
        Ok(cluster)
    }
}

/// Gives every file under `path` to the server's user.
fn give_tree(run_as: RunAs, path: &Path) -> Result<(), Error> {
    run_as.give(path)?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(Error::io(format!("listing {}", path.display())))? {
            let entry = entry.map_err(Error::io(format!("listing {}", path.display())))?;
            give_tree(run_as, &entry.path())?;
        }
    }
    Ok(())
}

/// The blocking phase: initdb (unless `copy` holds a data directory),
/// configuration, first start. Returns a running cluster, handing the
/// options back for the bootstrap phase.
fn launch(builder: ClusterBuilder, copy: Option<TempDir>) -> Result<(Cluster, ClusterBuilder), Error> {
    let binaries = match &builder.binaries {
        Some(binaries) => binaries.clone(),
        None => Binaries::locate()?,
    };
    let run_as = RunAs::detect()?;
    let fresh = copy.is_none();
    let dir = match copy {
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("switchyard-pg-")
            .tempdir()
            .map_err(Error::io("creating a temporary directory for the cluster"))?,
    };
    give_tree(run_as, dir.path())?;
    let ctl = Ctl::new(binaries, run_as, dir.path());

    if fresh {
        initdb(&ctl, &builder)?;
        let hba_text = builder.hba.clone().unwrap_or_else(|| hba(&builder.auth));
        std::fs::write(ctl.data_dir.join("pg_hba.conf"), hba_text).map_err(Error::io("writing pg_hba.conf"))?;
        include_settings_file(&ctl.data_dir)?;
    }
    for (name, contents, mode) in &builder.files {
        write_owned(&ctl, &ctl.data_dir.join(name), contents, *mode)?;
    }

    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = free_port().map_err(Error::io("picking a free port"))?;
        let settings_path = ctl.data_dir.join(SETTINGS_FILE);
        std::fs::write(&settings_path, settings_file(&builder, ctl.root(), port))
            .map_err(Error::io(format!("writing {SETTINGS_FILE}")))?;
        // Under a restrictive umask a file root creates is unreadable to the server.
        ctl.give(&settings_path)?;
        let log_start = file_len(&ctl.log_path);
        let error = match ctl.start_server() {
            Ok(()) => {
                tracing::debug!(port, dir = %ctl.root().display(), "PostgreSQL cluster started");
                let cluster = Cluster::new(dir, ctl, port, &builder);
                return Ok((cluster, builder));
            }
            Err(error) => error,
        };
        let log = read_from(&ctl.log_path, log_start);
        if log.contains("Address already in use") && attempt < PORT_ATTEMPTS {
            tracing::debug!(port, attempt, "port taken before the server bound it; retrying");
            continue;
        }
        tracing::debug!(%error, "pg_ctl start failed");
        let log_path = ctl.log_path.clone();
        // Keep the directory so that the whole log can be read.
        let _kept = dir.keep();
        return Err(Error::Start {
            log: log_path,
            tail: tail(&log, 40),
        });
    }
}

/// Writes `path` for the server's user, with `mode`.
fn write_owned(ctl: &Ctl, path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let what = format!("writing {}", path.display());
    std::fs::write(path, contents).map_err(Error::io(what.clone()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(Error::io(what))?;
    ctl.give(path)
}

/// `initdb` with trust (our own `pg_hba.conf` replaces its file) and the
/// superuser's password, if any, from a file so it never shows in `ps`.
fn initdb(ctl: &Ctl, builder: &ClusterBuilder) -> Result<(), Error> {
    let mut cmd = ctl.command("initdb");
    cmd.arg("-D")
        .arg(&ctl.data_dir)
        .args(["-U", &builder.superuser])
        .args(["--auth=trust", "--encoding=UTF8", "--locale=C"])
        .args(["--no-sync", "--no-instructions"]);
    let pwfile = ctl.root().join("superuser.pw");
    if let Some(password) = builder.auth.password() {
        std::fs::write(&pwfile, format!("{password}\n")).map_err(Error::io("writing the superuser password file"))?;
        ctl.give(&pwfile)?;
        cmd.arg(format!("--pwfile={}", pwfile.display()));
    }
    tracing::debug!(command = %describe(&cmd), "initdb");
    let result = run(cmd);
    if pwfile.exists() {
        std::fs::remove_file(&pwfile).map_err(Error::io("removing the password file"))?;
    }
    result.map(drop)
}

/// `pg_hba.conf`: one method for everyone, over the socket and 127.0.0.1,
/// for normal and replication connections (cutover tests replicate).
fn hba(auth: &Auth) -> String {
    let m = auth.hba_method();
    format!(
        "# written by switchyard-tests\n\
         local all         all              {m}\n\
         host  all         all 127.0.0.1/32 {m}\n\
         local replication all              {m}\n\
         host  replication all 127.0.0.1/32 {m}\n"
    )
}

/// Makes `postgresql.conf` read the testkit's settings file last.
fn include_settings_file(data_dir: &Path) -> Result<(), Error> {
    let path = data_dir.join("postgresql.conf");
    let mut conf = std::fs::read_to_string(&path).map_err(Error::io("reading postgresql.conf"))?;
    conf.push_str(&format!("\ninclude '{SETTINGS_FILE}'\n"));
    std::fs::write(&path, conf).map_err(Error::io("writing postgresql.conf"))
}

/// The testkit's settings: fast and durable-enough defaults, then the
/// caller's (later lines win), then what the testkit must control.
fn settings_file(builder: &ClusterBuilder, root: &Path, port: u16) -> String {
    let defaults = [
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
        ("max_connections", "200"),
        ("shared_buffers", "128MB"),
        ("password_encryption", builder.auth.password_encryption()),
        ("log_line_prefix", "%m [%p] %q%u@%d "),
    ];
    let socket_dir = root.display().to_string();
    let port = port.to_string();
    let owned = [
        ("listen_addresses", "127.0.0.1"),
        ("unix_socket_directories", socket_dir.as_str()),
        ("port", port.as_str()),
    ];
    let mut text = String::from("# written by switchyard-tests; rewritten on every start\n");
    let extra = builder.settings.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    for (name, value) in defaults.into_iter().chain(extra).chain(owned) {
        text.push_str(&format!("{name} = {}\n", quote_literal(value)));
    }
    text
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The file's text from byte `offset` on; empty if it cannot be read.
pub(crate) fn read_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut bytes);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
