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
}

impl From<std::io::Error> for AuthError {
    fn from(e: std::io::Error) -> Self {
        AuthError::Read(ReadError::Io(e))
    }
}

/// What the proxy knows of one user's password, prepared once at start.
#[derive(Debug, Clone)]
struct Credentials {
    scram: Option<Verifier>,
    /// md5(password || user) as 32 hex digits.
    md5: Option<String>,
    admin: bool,
}

/// The configured users, with verifiers computed once.
#[derive(Debug, Clone)]
pub struct Users {
    method: AuthMethod,
    users: HashMap<String, Credentials>,
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Users {
    /// Prepares the users of a validated config.
    pub fn new(config: &Config) -> Users {
        let users = config
            .users
            .iter()
            .map(|u| {
                let pw = u.password.as_deref();
                let scram = match pw {
                    Some(p) if p.starts_with("SCRAM-SHA-256$") => Verifier::parse(p).ok(),
                    Some(p) if !is_md5_hash(p) && config.auth.method == AuthMethod::ScramSha256 => {
                        Some(Verifier::from_password(p, scram::DEFAULT_ITERATIONS))
                    }
                    _ => None,
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
        Users {
            method: config.auth.method,
            users,
        }
    }

    /// Whether `user` may use the admin console. With trust and no users
    /// configured, everyone may (the deployment trusts its network).
    pub fn is_admin(&self, user: &str) -> bool {
        match self.users.get(user) {
            Some(c) => c.admin,
            None => self.method == AuthMethod::Trust && self.users.is_empty(),
        }
    }
}

/// Runs the configured authentication with a client that sent a
/// StartupMessage for `user`, ending with AuthenticationOk queued (not yet
/// flushed) on success.
pub async fn authenticate_client<S: Socket>(conn: &mut Conn<S>, users: &Users, user: &str) -> Result<(), AuthError> {
    let creds = users.users.get(user);
    match users.method {
        AuthMethod::Trust => {}
        AuthMethod::Md5 => md5_exchange(conn, user, creds).await?,
        AuthMethod::ScramSha256 => scram_exchange(conn, user, creds).await?,
    }
    backend::authentication(conn.wbuf(), auth::OK, &[]);
    Ok(())
}

async fn read_password<S: Socket>(conn: &mut Conn<S>) -> Result<Frame, AuthError> {
    conn.flush().await?;
    match conn.read_message().await? {
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

async fn scram_exchange<S: Socket>(
    conn: &mut Conn<S>,
    user: &str,
    creds: Option<&Credentials>,
) -> Result<(), AuthError> {
    // Unknown users get a throwaway verifier so the exchange looks the same.
    let verifier = match creds.and_then(|c| c.scram.clone()) {
        Some(v) => v,
        None => Verifier::with_salt("", vec![0; 16], scram::DEFAULT_ITERATIONS),
    };
    let known = creds.and_then(|c| c.scram.as_ref()).is_some();
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
                let s = scram.as_mut().ok_or(LoginError::Unexpected('R'))?;
                s.update(data).map_err(LoginError::Scram)?;
                conn.queue(&frontend::password(s.message(), false));
            }
            auth::SASL_FINAL => {
                let mut s = scram.take().ok_or(LoginError::Unexpected('R'))?;
                s.finish(data).map_err(LoginError::Scram)?;
            }
            other => return Err(LoginError::Unsupported(other)),
        }
    }
}
