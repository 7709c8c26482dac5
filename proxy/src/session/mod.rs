//! One client connection, from its first byte to its last: the startup
//! phase (SSL/GSSENC refusal, CancelRequest routing, StartupMessage),
//! authentication, the admin console or a backend, then the relay.

pub mod backend;
pub mod effects;
mod moving;
pub(crate) mod relay;
pub mod route;
pub mod state;
mod statements;

use crate::admin;
use crate::auth::{self, AuthError, LoginError};
use crate::input::InputGuard;
use crate::net::{Conn, ReadError, ServerConn};
use crate::registry::Shown;
use crate::server::Shared;
use crate::slots::{Permit, SlotKind};
use crate::stats::Stats;
use crate::wire::backend::{self as bmsg, Severity};
use crate::wire::startup::{self, StartupPacket};
use backend::ConnectError;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

/// A connection ending with an error the client should see.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    /// Whether it counts in `protocol_errors`.
    pub fault: Fault,
}

/// What a refusal says about the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// It broke the protocol.
    Protocol,
    /// Anything else (wrong password, too many clients, shutdown...).
    Other,
}

impl Refusal {
    pub(crate) fn fatal(code: &'static str, message: impl Into<String>) -> Refusal {
        let fault = if code == "08P01" { Fault::Protocol } else { Fault::Other };
        Refusal {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            fault,
        }
    }

    /// A FATAL error for a client that broke the protocol, whatever its code.
    pub(crate) fn protocol(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            fault: Fault::Protocol,
            ..Refusal::fatal(code, message)
        }
    }
}

/// Decrements the open-connection gauge however the session ends.
struct OpenGuard(Arc<Stats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0
            .connections_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves one client connection to its end. Never panics on input.
pub async fn run(shared: Arc<Shared>, socket: TcpStream, peer: SocketAddr, permit: Permit) {
    let stats = shared.stats.clone();
    Stats::bump(&stats.connections_total);
    Stats::bump(&stats.connections_open);
    let _open = OpenGuard(stats.clone());
    let mut client = Conn::new(socket, shared.config.limits.max_message_bytes);
    let Some((version, params)) = startup_phase(&shared, &mut client, peer).await else {
        return;
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(user) = get("user").filter(|u| !u.is_empty()).map(str::to_owned) else {
        let r = Refusal::fatal("28000", "no PostgreSQL user name specified in startup packet");
        return refuse(&shared, &mut client, r).await;
    };
    let database = get("database").filter(|d| !d.is_empty()).unwrap_or(&user).to_owned();
    if get("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
        let r = Refusal::fatal(
            "0A000",
            "replication connections are not supported through switchyard; connect to the database directly",
        );
        return refuse(&shared, &mut client, r).await;
    }
    if let Some(r) = slot_refusal(&shared, permit.kind(), &user, &database) {
        tracing::info!(%peer, user = %user, database = %database, "too many clients");
        return refuse(&shared, &mut client, r).await;
    }
    negotiate_protocol(&mut client, version, &params);
    if !authenticate(&shared, &mut client, peer, &user).await {
        return;
    }
    let application = get("application_name").unwrap_or("").to_owned();
    let registered = shared.sessions.add(peer, &user, &database, &application);
    let info = registered.info.clone();
    if database == shared.config.admin_database {
        if !shared.users.is_admin(&user) {
            let r = Refusal::fatal(
                "28000",
                format!(
                    "user \"{user}\" is not allowed to use the admin console (set admin = true for it in [[users]])"
                ),
            );
            return refuse(&shared, &mut client, r).await;
        }
        admin::serve(&shared, &mut client, &info).await;
        return;
    }
    let src = &shared.config.source;
    let (db_user, db_name, password) = backend::login_identity(&shared.config, src, &user, &database);
    if let Some(message) = shared.capture.refusal_for(db_name) {
        return refuse(&shared, &mut client, Refusal::fatal("57P03", message)).await;
    }
    // Capture concerns one database: the one this backend is opened on.
    info.set_backend_database(db_name);
    let opened = backend::connect(
        src,
        db_user,
        db_name,
        password,
        &params,
        shared.config.limits.connect_timeout(),
    )
    .await;
    let mut be = match opened {
        Ok(b) => b,
        Err(ConnectError::Login(LoginError::Refused(fields, frame))) => {
            // The database's own words (e.g. database "x" does not exist).
            tracing::info!(%peer, code = %fields.code, message = %fields.message, "database refused login");
            Stats::bump(&stats.connections_refused);
            client.queue(frame.bytes());
            client.close().await;
            return;
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot open backend");
            let code = match e {
                ConnectError::Login(LoginError::NoPassword(_) | LoginError::Unsupported(_)) => "28000",
                _ => "08006",
            };
            return refuse(&shared, &mut client, Refusal::fatal(code, e.to_string())).await;
        }
    };
    for m in &be.startup_messages {
        client.queue(m.bytes());
    }
    bmsg::backend_key_data(client.wbuf(), be.key.0, be.key.1);
    bmsg::ready_for_query(client.wbuf(), be.status);
    // The client holds the first backend's real key; route it to whatever
    // backend the session uses from now on.
    let client_key = be.key;
    shared.cancel.route(
        client_key,
        crate::cancel::CancelTarget {
            host: src.host.clone(),
            port: src.port,
            pid: be.key.0,
            key: be.key.1,
        },
    );
    info.set_state(Shown::Relay(state::Phase::Idle));
    let epoch = shared.router.current().epoch;
    info.set_backend(epoch, moving::addr_of(src), be.key.0, shared.router.now_micros(), false);
    tracing::debug!(session = info.id, %peer, user = %user, database = %database, backend_pid = be.key.0, "session started");
    let input = InputGuard::new(permit.budget().clone(), shared.config.limits.message_timeout());
    let login = moving::Login {
        user: user.clone(),
        database: database.clone(),
        params: params.clone(),
    };
    let mut relay = relay::Relay::new(&shared, &info, input, login, &be, epoch);
    let ended = loop {
        let ended = match &mut be.conn {
            ServerConn::Tcp(server) => relay.run(&mut client, server).await,
            ServerConn::Unix(server) => relay.run(&mut client, server).await,
        };
        if !matches!(ended, Ok(relay::Ended::Move)) {
            match &mut be.conn {
                ServerConn::Tcp(server) => relay.finish(&mut client, server, &ended).await,
                ServerConn::Unix(server) => relay.finish(&mut client, server, &ended).await,
            }
            break ended;
        }
        let moved = match &mut be.conn {
            ServerConn::Tcp(server) => relay.relocate(&mut client, server).await,
            ServerConn::Unix(server) => relay.relocate(&mut client, server).await,
        };
        match moved {
            relay::Moved::To(next) => {
                let route = shared.router.current();
                let epoch = relay.order_epoch().unwrap_or(route.epoch);
                let db = route.destination.config(&shared.config).unwrap_or(src);
                let old = std::mem::replace(&mut be, next);
                moving::retire(old.conn);
                shared.cancel.route(
                    client_key,
                    crate::cancel::CancelTarget {
                        host: db.host.clone(),
                        port: db.port,
                        pid: be.key.0,
                        key: be.key.1,
                    },
                );
                relay.moved_to(epoch, be.key.0);
                info.set_backend(epoch, moving::addr_of(db), be.key.0, shared.router.now_micros(), true);
                Stats::bump(&stats.sessions_moved);
                shared.router.notify();
                tracing::debug!(session = info.id, epoch, backend_pid = be.key.0, "session moved");
            }
            relay::Moved::Stay => relay.stayed(),
            relay::Moved::Close(message) => {
                tracing::info!(session = info.id, %message, "closing a session that cannot move");
                info.set_move_error(Some(message.clone()));
                bmsg::error_response(client.wbuf(), Severity::Fatal, "57P01", &message);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.close()).await;
                match &mut be.conn {
                    ServerConn::Tcp(server) => relay.finish(&mut client, server, &Ok(relay::Ended::Move)).await,
                    ServerConn::Unix(server) => relay.finish(&mut client, server, &Ok(relay::Ended::Move)).await,
                }
                break Ok(relay::Ended::Move);
            }
        }
    };
    shared.cancel.remove(client_key);
    match ended {
        Ok(how) => tracing::debug!(session = info.id, ?how, "session ended"),
        Err(e) => tracing::info!(session = info.id, error = %e, "session ended with error"),
    }
    drop(registered);
}

/// Reads the startup packets within `limits.startup_timeout_ms` and ends
/// the connection as PostgreSQL would if they do not amount to a
/// StartupMessage; `None` once it has been ended (or a cancel served).
async fn startup_phase(shared: &Shared, client: &mut Conn, peer: SocketAddr) -> Option<Startup> {
    let stats = &shared.stats;
    let timeout = shared.config.limits.startup_timeout();
    let read = unless_shutdown(shared, tokio::time::timeout(timeout, read_startup(shared, client))).await;
    match read {
        None => refuse(shared, client, shutting_down()).await,
        Some(Ok(Ok(Some(startup)))) => return Some(startup),
        Some(Ok(Ok(None))) => {} // cancel request served, or client left
        Some(Ok(Err(StartupEnd::Refuse(refusal)))) => refuse(shared, client, refusal).await,
        Some(Ok(Err(StartupEnd::Silent(why)))) => {
            tracing::info!(%peer, why, "closing a connection that sent no valid startup packet");
            Stats::bump(&stats.connections_refused);
            Stats::bump(&stats.protocol_errors);
        }
        Some(Ok(Err(StartupEnd::Legacy(message)))) => {
            tracing::info!(%peer, message, "refusing an old protocol version");
            Stats::bump(&stats.connections_refused);
            Stats::bump(&stats.protocol_errors);
            client.queue(&startup::legacy_error(&message));
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.close()).await;
        }
        Some(Err(_)) => {
            tracing::debug!(%peer, "startup timed out");
            let r = Refusal::fatal("08P01", "startup did not complete in time");
            refuse(shared, client, r).await;
        }
    }
    None
}

/// Runs client authentication within `limits.startup_timeout_ms`; on
/// failure the client has been told (or has left) and `false` is returned.
async fn authenticate(shared: &Shared, client: &mut Conn, peer: SocketAddr, user: &str) -> bool {
    let timeout = shared.config.limits.startup_timeout();
    let authed = unless_shutdown(
        shared,
        tokio::time::timeout(timeout, auth::authenticate_client(client, &shared.users, user)),
    )
    .await;
    let refusal = match authed {
        None => shutting_down(),
        Some(Ok(Ok(()))) => return true,
        Some(Ok(Err(AuthError::Read(e)))) => {
            tracing::debug!(%peer, error = %e, "client left during authentication");
            Stats::bump(&shared.stats.connections_refused);
            return false;
        }
        Some(Ok(Err(e @ AuthError::Failed(_)))) => {
            tracing::info!(%peer, user = %user, "authentication failed");
            Refusal::fatal("28P01", e.to_string())
        }
        Some(Ok(Err(e @ AuthError::Internal))) => Refusal::fatal("XX000", e.to_string()),
        Some(Ok(Err(e @ AuthError::Protocol))) => Refusal::fatal("08P01", e.to_string()),
        Some(Err(_)) => Refusal::fatal("08P01", "authentication did not complete in time"),
    };
    refuse(shared, client, refusal).await;
    false
}

/// Whether the slot taken at accept lets this login in: a regular slot
/// does; a reserved one only for an admin opening the admin console, so
/// that a proxy full of applications still lets the DBA in.
fn slot_refusal(shared: &Shared, kind: SlotKind, user: &str, database: &str) -> Option<Refusal> {
    let message = match kind {
        SlotKind::Regular => return None,
        SlotKind::Reserved if database == shared.config.admin_database && shared.users.is_admin(user) => {
            return None
        }
        SlotKind::Reserved => {
            "sorry, too many clients already (the remaining slots, limits.admin_reserve, are for admins opening the admin console)"
        }
        SlotKind::Full => "sorry, too many clients already (limits.max_clients)",
    };
    Some(Refusal::fatal("53300", message))
}

/// Runs `f` unless the proxy shuts down first (`None`).
async fn unless_shutdown<F: std::future::Future>(shared: &Shared, f: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        _ = shared.shutting_down() => None,
        r = f => Some(r),
    }
}

fn shutting_down() -> Refusal {
    Refusal::fatal("57P01", "terminating connection because switchyard is shutting down")
}

/// Tells a client that asked for a newer protocol minor version, or for
/// protocol options (`_pq_.*`), that it gets 3.0 without them, as
/// PostgreSQL itself does.
fn negotiate_protocol(client: &mut Conn, version: i32, params: &[(String, String)]) {
    let unsupported: Vec<&str> = params
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("_pq_."))
        .collect();
    if version & 0xffff == 0 && unsupported.is_empty() {
        return;
    }
    bmsg::negotiate_protocol_version(client.wbuf(), crate::wire::startup::PROTOCOL_3_0, &unsupported);
}

type Startup = (i32, Vec<(String, String)>);

/// How the startup phase ended without a StartupMessage to serve.
#[derive(Debug)]
enum StartupEnd {
    /// Close without a word, as PostgreSQL does for bytes that are no
    /// startup packet: a client library that sent them (e.g. a Terminate
    /// queued before its connection was up) does not expect an answer.
    Silent(&'static str),
    /// Close with a FATAL error, where PostgreSQL sends one.
    Refuse(Refusal),
    /// Close with a FATAL error in the protocol-2 format, for a client that
    /// asked for protocol 2 (or older).
    Legacy(String),
}

/// Which encryption requests were declined so far: PostgreSQL answers one
/// SSLRequest and one GSSENCRequest, in either order, and treats a repeat as
/// an unsupported protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Declined {
    Neither,
    Ssl,
    Gss,
    Both,
}

impl Declined {
    /// The state after declining `packet`, or `None` if it was declined before.
    fn and(self, packet: &StartupPacket) -> Option<Declined> {
        match (self, packet) {
            (Declined::Neither, StartupPacket::SslRequest) => Some(Declined::Ssl),
            (Declined::Neither, StartupPacket::GssEncRequest) => Some(Declined::Gss),
            (Declined::Gss, StartupPacket::SslRequest) | (Declined::Ssl, StartupPacket::GssEncRequest) => {
                Some(Declined::Both)
            }
            _ => None,
        }
    }
}

/// Reads startup packets until a StartupMessage: answers SSL/GSSENC
/// requests with 'N' (once each) and serves a CancelRequest (returning `None`).
async fn read_startup(shared: &Shared, client: &mut Conn) -> Result<Option<Startup>, StartupEnd> {
    let mut declined = Declined::Neither;
    loop {
        let packet = match client.read_startup().await {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            Err(ReadError::Wire(_)) => return Err(StartupEnd::Silent("invalid length of startup packet")),
            Err(ReadError::Truncated) => return Err(StartupEnd::Silent("incomplete startup packet")),
            Err(ReadError::Io(_)) => return Ok(None),
        };
        let parsed = StartupPacket::parse(&packet);
        match parsed {
            Ok(p @ (StartupPacket::SslRequest | StartupPacket::GssEncRequest)) => {
                let Some(next) = declined.and(&p) else {
                    let code = match p {
                        StartupPacket::SslRequest => startup::SSL_REQUEST,
                        _ => startup::GSSENC_REQUEST,
                    };
                    let message = startup::unsupported_protocol_message(code);
                    return Err(StartupEnd::Refuse(Refusal::protocol("0A000", message)));
                };
                declined = next;
                // No TLS or GSS encryption here: 'N' makes the client go on in
                // clear text (or give up if it requires encryption).
                if client.buffered() > 0 {
                    // Bytes sent before the answer cannot be trusted (a TLS
                    // downgrade probe); PostgreSQL answers, then refuses.
                    client.queue(b"N");
                    let what = match p {
                        StartupPacket::SslRequest => "SSL request",
                        _ => "GSSAPI encryption request",
                    };
                    let r = Refusal::fatal("08P01", format!("received unencrypted data after {what}"));
                    return Err(StartupEnd::Refuse(r));
                }
                if client.send(b"N").await.is_err() {
                    return Ok(None);
                }
            }
            Ok(StartupPacket::Cancel { pid, key }) => {
                shared
                    .cancel
                    .cancel((pid, key), shared.config.limits.connect_timeout())
                    .await;
                return Ok(None);
            }
            Ok(StartupPacket::Unsupported { version }) => {
                let message = startup::unsupported_protocol_message(version);
                if version >> 16 < 3 {
                    return Err(StartupEnd::Legacy(message));
                }
                return Err(StartupEnd::Refuse(Refusal::protocol("0A000", message)));
            }
            Ok(StartupPacket::Startup { version, params }) => return Ok(Some((version, params))),
            Err(e) => {
                let r = Refusal::fatal("08P01", format!("invalid startup packet: {e}"));
                return Err(StartupEnd::Refuse(r));
            }
        }
    }
}

/// Sends the client an error and closes its connection.
async fn refuse(shared: &Shared, client: &mut Conn, r: Refusal) {
    Stats::bump(&shared.stats.connections_refused);
    if r.fault == Fault::Protocol {
        Stats::bump(&shared.stats.protocol_errors);
    }
    bmsg::error_response(client.wbuf(), r.severity, r.code, &r.message);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.close()).await;
}
