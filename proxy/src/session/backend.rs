//! Opening a backend connection for a session: TCP connect, StartupMessage
//! with the client's parameters, login with the proxy's credentials, and the
//! ParameterStatus/BackendKeyData that precede the first ReadyForQuery.

use crate::auth::{login, LoginError};
use crate::config::{is_md5_hash, Config, DatabaseConfig};
use crate::net::{self, Conn, ReadError, ServerConn, Socket, Stream};
use crate::wire::backend::{tag as btag, BackendMessage, TxStatus};
use crate::wire::{startup, Frame};
use std::time::Duration;
use thiserror::Error;

/// Largest message accepted from a database: PostgreSQL's own bound on a
/// field is 1 GB, and a DataRow can carry several.
pub const SERVER_MESSAGE_LIMIT: usize = usize::MAX >> 1;

/// Why a backend could not be opened. All are the database's side.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// No TCP connection.
    #[error("could not connect to the database at {addr}: {source}")]
    Unreachable {
        /// host:port.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Connect timeout.
    #[error("could not connect to the database at {addr}: timed out after {ms} ms")]
    Timeout {
        /// host:port.
        addr: String,
        /// The timeout.
        ms: u64,
    },
    /// TLS could not be set up as `sslmode` asks.
    #[error("cannot use TLS with the database at {addr}: {message}")]
    Tls {
        /// host:port.
        addr: String,
        /// What failed, with the settings used.
        message: String,
    },
    /// Login failed.
    #[error(transparent)]
    Login(#[from] LoginError),
}

impl From<ReadError> for ConnectError {
    fn from(e: ReadError) -> Self {
        ConnectError::Login(LoginError::Read(e))
    }
}

/// An open, logged-in backend, before its first query.
pub struct Backend {
    /// The connection.
    pub conn: ServerConn,
    /// The backend's (pid, secret key).
    pub key: (i32, i32),
    /// ParameterStatus and NoticeResponse messages received during startup,
    /// in order, to relay to the client.
    pub startup_messages: Vec<Frame>,
    /// Status of the first ReadyForQuery (always idle in practice).
    pub status: TxStatus,
}

/// Who the proxy logs in as, for a client's user and database.
pub fn login_identity<'a>(
    config: &'a Config,
    db: &'a DatabaseConfig,
    client_user: &'a str,
    client_db: &'a str,
) -> (&'a str, &'a str, Option<&'a str>) {
    let user = db.user.as_deref().unwrap_or(client_user);
    let database = db.database.as_deref().unwrap_or(client_db);
    let password = db.password.as_deref().or_else(|| {
        config
            .user(client_user)
            .and_then(|u| u.password.as_deref())
            .filter(|p| !p.starts_with("SCRAM-SHA-256$") && !is_md5_hash(p))
    });
    (user, database, password)
}

/// Opens a backend on `db` for a client whose startup parameters are
/// `params` (user and database already resolved by the caller).
pub async fn connect(
    db: &DatabaseConfig,
    user: &str,
    database: &str,
    password: Option<&str>,
    params: &[(String, String)],
    timeout: Duration,
) -> Result<Backend, ConnectError> {
    let addr = if net::is_socket_dir(&db.host) {
        net::socket_path(&db.host, db.port).display().to_string()
    } else {
        format!("{}:{}", db.host, db.port)
    };
    let mut conn = match net::connect(&db.host, db.port, timeout, SERVER_MESSAGE_LIMIT).await {
        Ok(c) => c,
        Err(source) if source.kind() == std::io::ErrorKind::TimedOut => {
            return Err(ConnectError::Timeout {
                addr,
                ms: timeout.as_millis() as u64,
            })
        }
        Err(source) => return Err(ConnectError::Unreachable { addr, source }),
    };
    let forwarded = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "user" | "database" | "replication") && !k.starts_with("_pq_."))
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let startup = startup::startup_message([("user", user), ("database", database)].into_iter().chain(forwarded));
    let handshake = async {
        match &mut conn {
            ServerConn::Tcp(c) => {
                start_tls(c, db, &addr).await?;
                handshake(c, &startup, user, password).await
            }
            ServerConn::Unix(c) => handshake(c, &startup, user, password).await,
        }
    };
    let (key, startup_messages, status) = match tokio::time::timeout(timeout, handshake).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ConnectError::Timeout {
                addr,
                ms: timeout.as_millis() as u64,
            })
        }
    };
    Ok(Backend {
        conn,
        key,
        startup_messages,
        status,
    })
}

type Handshake = ((i32, i32), Vec<Frame>, TxStatus);

/// Asks the database for TLS as its `sslmode` says (libpq's semantics:
/// `prefer` goes on in clear text when the database answers 'N', the
/// others refuse), and runs the handshake.
async fn start_tls(conn: &mut Conn<Stream>, db: &DatabaseConfig, addr: &str) -> Result<(), ConnectError> {
    let fail = |message: String| ConnectError::Tls {
        addr: addr.to_owned(),
        message,
    };
    let tls = db.tls().map_err(|e| fail(e.to_string()))?;
    let Some(config) = tls.client_config() else {
        return Ok(());
    };
    let answer = conn
        .ssl_answer()
        .await
        .map_err(|e| fail(format!("{e} ({})", tls.describe())))?;
    match answer {
        b'S' => {}
        b'N' if !tls.mode().requires_tls() => return Ok(()),
        b'N' => {
            return Err(fail(format!(
                "the database does not accept TLS (it answered 'N' to SSLRequest), and {} requires it: \
                 turn ssl on at the database, or lower sslmode",
                tls.describe()
            )))
        }
        other => return Err(fail(format!("unexpected answer {:?} to SSLRequest", char::from(other)))),
    }
    let name = switchyard_replay::tls::server_name(&db.host).map_err(|e| fail(e.to_string()))?;
    conn.connect_tls(config.clone(), name)
        .await
        .map_err(|e| fail(format!("TLS handshake failed: {e} ({})", tls.describe())))
}

/// Sends the StartupMessage, logs in, and reads up to the first ReadyForQuery.
async fn handshake<S: Socket>(
    conn: &mut Conn<S>,
    startup: &[u8],
    user: &str,
    password: Option<&str>,
) -> Result<Handshake, ConnectError> {
    conn.queue(startup);
    login(conn, user, password).await?;
    let mut startup_messages = Vec::new();
    let mut key = (0, 0);
    loop {
        let frame = conn
            .read_message()
            .await?
            .ok_or(ConnectError::from(ReadError::Truncated))?;
        let msg = BackendMessage::of(&frame);
        match msg.tag() {
            btag::BACKEND_KEY_DATA => {
                key = msg.backend_key().map_err(|e| ConnectError::from(ReadError::Wire(e)))?;
            }
            btag::READY_FOR_QUERY => {
                let status = msg.ready_status().unwrap_or(TxStatus::Idle);
                return Ok((key, startup_messages, status));
            }
            btag::ERROR_RESPONSE => {
                let fields = msg.error_fields().unwrap_or_default();
                return Err(ConnectError::Login(LoginError::Refused(fields, frame)));
            }
            _ => startup_messages.push(frame),
        }
    }
}
