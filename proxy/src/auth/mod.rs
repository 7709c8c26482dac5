//! Authentication, terminated at the proxy: clients prove who they are to
//! the proxy ([`authenticate_client`]), and the proxy logs in to each
//! database with its own configured credentials ([`login`]).

pub mod scram;

use crate::config::{is_md5_hash, AuthMethod, Config};
use crate::net::{Conn, ReadError, Socket};
use crate::wire::backend::{self, auth, BackendMessage, ErrorFields};
use crate::wire::frontend::{self, parse_sasl_initial_response, tag as ftag};
use crate::wire::Frame;
use md5::{Digest, Md5};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rand::RngCore;
use scram::{ServerExchange, Verifier};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use thiserror::Error;

/// Why a client was not let in.
#[derive(Debug, Error)]
pub enum AuthError {
    /// Wrong password, unknown user, or a broken exchange: the client's fault.
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    /// The client sent something other than the expected auth message.
    #[error("expected a password message during authentication")]
    Protocol,
    /// The socket failed or closed.
    #[error("connection lost during authentication: {0}")]
    Read(#[from] ReadError),
    /// Key derivation could not run (the blocking pool is gone: shutdown).
    #[error("authentication could not complete inside the proxy")]
    Internal,
}

impl From<std::io::Error> for AuthError {
    fn from(e: std::io::Error) -> Self {
        AuthError::Read(ReadError::Io(e))
    }
}

/// What the proxy knows of one user's password.
#[derive(Debug)]
struct Credentials {
    scram: ScramSecret,
    /// md5(password || user) as 32 hex digits.
    md5: Option<String>,
    admin: bool,
}

/// A user's SCRAM keys: given as a verifier, or derived from a clear-text
/// password once, on first use, off the event loop, and kept.
#[derive(Debug)]
enum ScramSecret {
    /// Configured as PostgreSQL's stored form.
    Stored(Verifier),
    /// Configured in clear text; the verifier is derived once, in the
    /// background from the start (a login that comes first waits for it).
    Password {
        password: String,
        derived: Arc<tokio::sync::OnceCell<Verifier>>,
    },
    /// No SCRAM possible for this user (an md5 hash, or no password).
    None,
}

/// The configured users. Key derivation (PBKDF2, 4,096 rounds) happens
/// once per user, in the background from the start, never on the event loop; unknown users get a mock
/// verifier that costs a few HMACs, so their logins are as cheap as a known
/// user's and do not tell which names exist.
#[derive(Debug)]
pub struct Users {
    method: AuthMethod,
    users: HashMap<String, Credentials>,
    /// Secret behind unknown users' mock salts, random per process.
    mock_secret: [u8; 32],
    /// PBKDF2 key derivations performed for client logins.
    derivations: Arc<AtomicU64>,
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Users {
    /// Prepares the users of a validated config (cheap: no key derivation).
    pub fn new(config: &Config) -> Users {
        let users = config
            .users
            .iter()
            .map(|u| {
                let pw = u.password.as_deref();
                let scram = match pw {
                    Some(p) if p.starts_with("SCRAM-SHA-256$") => {
                        Verifier::parse(p).map_or(ScramSecret::None, ScramSecret::Stored)
                    }
                    Some(p) if !is_md5_hash(p) && config.auth.method == AuthMethod::ScramSha256 => {
                        ScramSecret::Password {
                            password: p.to_owned(),
                            derived: Arc::new(tokio::sync::OnceCell::new()),
                        }
                    }
                    _ => ScramSecret::None,
                };
                let md5 = match pw {
                    Some(p) if is_md5_hash(p) => Some(p[3..].to_ascii_lowercase()),
                    Some(p) if !p.starts_with("SCRAM-SHA-256$") => Some(md5_hex(&[p.as_bytes(), u.name.as_bytes()])),
                    _ => None,
                };
                let creds = Credentials {
                    scram,
                    md5,
                    admin: u.admin,
                };
                (u.name.clone(), creds)
            })
            .collect();
        let mut mock_secret = [0u8; 32];
        rand::rng().fill_bytes(&mut mock_secret);
        let users = Users {
            method: config.auth.method,
            users,
            mock_secret,
            derivations: Arc::new(AtomicU64::new(0)),
        };
        users.derive_in_background();
        users
    }

    /// Starts deriving every clear-text password's verifier off the event
    /// loop, so that not even a user's first login costs (and shows) a
    /// PBKDF2. Without a runtime (a unit test), they are derived on first use.
    fn derive_in_background(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for creds in self.users.values() {
            if let ScramSecret::Password { password, derived } = &creds.scram {
                let (password, derived, count) = (password.clone(), derived.clone(), self.derivations.clone());
                runtime.spawn(async move {
                    let _ = derived.get_or_try_init(|| derive(password, &count)).await;
                });
            }
        }
    }

    /// How many PBKDF2 key derivations client logins have cost so far.
    pub fn derivations(&self) -> u64 {
        self.derivations.load(Relaxed)
    }

    /// Whether `user` may use the admin console. With trust and no users
    /// configured, everyone may (the deployment trusts its network).
    pub fn is_admin(&self, user: &str) -> bool {
        match self.users.get(user) {
            Some(c) => c.admin,
            None => self.method == AuthMethod::Trust && self.users.is_empty(),
        }
    }

    /// The SCRAM verifier to challenge `user` with, and whether it can ever
    /// succeed (a mock one for unknown users cannot).
    async fn scram_verifier(&self, user: &str) -> Result<(Verifier, bool), AuthError> {
        let secret = self.users.get(user).map(|c| &c.scram);
        match secret {
            Some(ScramSecret::Stored(v)) => Ok((v.clone(), true)),
            Some(ScramSecret::Password { password, derived }) => {
                let v = derived
                    .get_or_try_init(|| derive(password.clone(), &self.derivations))
                    .await?;
                Ok((v.clone(), true))
            }
            Some(ScramSecret::None) | None => Ok((Verifier::mock(&self.mock_secret, user), false)),
        }
    }
}

/// Derives a clear-text password's verifier (PBKDF2) on the blocking pool.
async fn derive(password: String, count: &AtomicU64) -> Result<Verifier, AuthError> {
    count.fetch_add(1, Relaxed);
    tokio::task::spawn_blocking(move || Verifier::from_password(&password, scram::DEFAULT_ITERATIONS))
        .await
        .map_err(|_| AuthError::Internal)
}

/// Runs the configured authentication with a client that sent a
/// StartupMessage for `user`, ending with AuthenticationOk queued (not yet
/// flushed) on success.
pub async fn authenticate_client<S: Socket>(conn: &mut Conn<S>, users: &Users, user: &str) -> Result<(), AuthError> {
    let creds = users.users.get(user);
    match users.method {
        AuthMethod::Trust => {}
        AuthMethod::Md5 => md5_exchange(conn, user, creds).await?,
        AuthMethod::ScramSha256 => scram_exchange(conn, users, user).await?,
    }
    backend::authentication(conn.wbuf(), auth::OK, &[]);
    Ok(())
}

/// The largest password message accepted, as PostgreSQL's
/// `PG_MAX_AUTH_TOKEN_LENGTH` (65535) plus the header: an unauthenticated
/// client must not make the proxy buffer `max_message_bytes`.
const MAX_PASSWORD_MESSAGE: usize = 65_535 + 5;

async fn read_password<S: Socket>(conn: &mut Conn<S>) -> Result<Frame, AuthError> {
    conn.flush().await?;
    match conn.read_message_within(MAX_PASSWORD_MESSAGE).await? {
        Some(f) if f.tag() == ftag::PASSWORD => Ok(f),
        Some(_) => Err(AuthError::Protocol),
        None => Err(AuthError::Read(ReadError::Truncated)),
    }
}

async fn md5_exchange<S: Socket>(conn: &mut Conn<S>, user: &str, creds: Option<&Credentials>) -> Result<(), AuthError> {
    let mut salt = [0u8; 4];
    rand::rng().fill_bytes(&mut salt);
    backend::authentication(conn.wbuf(), auth::MD5, &salt);
    let msg = read_password(conn).await?;
    let answer = msg.body().strip_suffix(b"\0").unwrap_or(msg.body());
    // An unknown user still goes through the exchange, so that a prober
    // cannot tell unknown users from wrong passwords.
    let expected = creds
        .and_then(|c| c.md5.as_deref())
        .map(|inner| format!("md5{}", md5_hex(&[inner.as_bytes(), &salt])));
    match expected {
        Some(e) if e.as_bytes() == answer => Ok(()),
        _ => Err(AuthError::Failed(user.to_owned())),
    }
}

async fn scram_exchange<S: Socket>(conn: &mut Conn<S>, users: &Users, user: &str) -> Result<(), AuthError> {
    // Unknown users get a mock verifier so the exchange looks the same.
    let (verifier, known) = users.scram_verifier(user).await?;
    backend::auth_sasl_scram(conn.wbuf());
    let first = read_password(conn).await?;
    let (mechanism, data) = parse_sasl_initial_response(first.body()).map_err(|_| AuthError::Protocol)?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(AuthError::Failed(user.to_owned()));
    }
    let (exchange, server_first) =
        ServerExchange::start(&verifier, data).map_err(|_| AuthError::Failed(user.to_owned()))?;
    backend::authentication(conn.wbuf(), auth::SASL_CONTINUE, server_first.as_bytes());
    let fin = read_password(conn).await?;
    let server_final = exchange
        .finish(&verifier, fin.body())
        .map_err(|_| AuthError::Failed(user.to_owned()))?;
    if !known {
        return Err(AuthError::Failed(user.to_owned()));
    }
    backend::authentication(conn.wbuf(), auth::SASL_FINAL, server_final.as_bytes());
    Ok(())
}

/// Why the proxy could not log in to a database.
#[derive(Debug, Error)]
pub enum LoginError {
    /// The database refused, with its own error message (forwarded to the client).
    #[error("the database refused the login: {} ({})", .0.message, .0.code)]
    Refused(ErrorFields, Frame),
    /// The database asked for a password and none is configured.
    #[error("the database asked for a password for user \"{0}\", but none is configured; set source.password or give the user a clear-text password in [[users]]")]
    NoPassword(String),
    /// The database asked for an authentication method the proxy does not speak.
    #[error("the database asked for unsupported authentication method {0}; use md5, scram-sha-256 or trust in pg_hba.conf for the proxy's user")]
    Unsupported(i32),
    /// SCRAM failed on our side (bad server signature or message).
    #[error("SCRAM exchange with the database failed: {0}")]
    Scram(std::io::Error),
    /// The database sent something unexpected.
    #[error("unexpected message {0:?} during login")]
    Unexpected(char),
    /// The socket failed.
    #[error("connection to the database lost during login: {0}")]
    Read(#[from] ReadError),
}

impl From<std::io::Error> for LoginError {
    fn from(e: std::io::Error) -> Self {
        LoginError::Read(ReadError::Io(e))
    }
}

/// Answers a database's authentication requests after the StartupMessage
/// was sent, until AuthenticationOk.
pub async fn login<S: Socket>(conn: &mut Conn<S>, user: &str, password: Option<&str>) -> Result<(), LoginError> {
    let mut scram: Option<ScramSha256> = None;
    loop {
        conn.flush().await?;
        let frame = conn
            .read_message()
            .await?
            .ok_or(LoginError::Read(ReadError::Truncated))?;
        let msg = BackendMessage::of(&frame);
        match msg.tag() {
            backend::tag::ERROR_RESPONSE => {
                let fields = msg.error_fields().unwrap_or_default();
                return Err(LoginError::Refused(fields, frame));
            }
            backend::tag::AUTHENTICATION => {}
            backend::tag::NOTICE_RESPONSE | backend::tag::NEGOTIATE_PROTOCOL_VERSION => continue,
            other => return Err(LoginError::Unexpected(other as char)),
        }
        let (code, data) = msg.authentication().map_err(|_| LoginError::Unexpected('R'))?;
        let need_password = || password.ok_or_else(|| LoginError::NoPassword(user.to_owned()));
        match code {
            auth::OK => return Ok(()),
            auth::CLEARTEXT => {
                conn.queue(&frontend::password(need_password()?.as_bytes(), true));
            }
            auth::MD5 => {
                let salt: [u8; 4] = data.try_into().map_err(|_| LoginError::Unexpected('R'))?;
                let hash =
                    postgres_protocol::authentication::md5_hash(user.as_bytes(), need_password()?.as_bytes(), salt);
                conn.queue(&frontend::password(hash.as_bytes(), true));
            }
            auth::SASL => {
                let offers_scram = data.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                if !offers_scram {
                    return Err(LoginError::Unsupported(code));
                }
                let s = ScramSha256::new(need_password()?.as_bytes(), ChannelBinding::unsupported());
                conn.queue(&frontend::sasl_initial_response("SCRAM-SHA-256", s.message()));
                scram = Some(s);
            }
            auth::SASL_CONTINUE => {
                let mut s = scram.take().ok_or(LoginError::Unexpected('R'))?;
                // The client proof costs a PBKDF2 of the server's iteration
                // count: never on the event loop.
                let data = data.to_vec();
                let s = tokio::task::spawn_blocking(move || s.update(&data).map(|()| s))
                    .await
                    .map_err(|e| LoginError::Scram(std::io::Error::other(e)))?
                    .map_err(LoginError::Scram)?;
                conn.queue(&frontend::password(s.message(), false));
                scram = Some(s);
            }
            auth::SASL_FINAL => {
                let mut s = scram.take().ok_or(LoginError::Unexpected('R'))?;
                s.finish(data).map_err(LoginError::Scram)?;
            }
            other => return Err(LoginError::Unsupported(other)),
        }
    }
}
