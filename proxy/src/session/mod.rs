//! One client connection, from its first byte to its last: the startup
//! phase (SSL/GSSENC refusal, CancelRequest routing, StartupMessage),
//! authentication, the admin console or a backend, then the relay.

pub mod backend;
pub mod conversation;
pub mod effects;
mod moving;
pub(crate) mod relay;
pub mod route;
mod startup;
pub mod state;
pub mod statements;

use crate::admin;
use crate::auth::LoginError;
use crate::input::InputGuard;
use crate::net::{Conn, ServerConn};
use crate::registry::Shown;
use crate::server::Shared;
use crate::slots::Permit;
use crate::stats::Stats;
use crate::wire::backend::{self as bmsg, Severity};
use backend::ConnectError;
use startup::{authenticate, negotiate_protocol, refuse, slot_refusal, startup_phase};
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
    let mut client = Conn::new(
        crate::net::Stream::plain(socket),
        shared.config.limits.max_message_bytes,
    );
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
            tracing::warn!(%peer, user = %user, "admin console login refused: not an admin user");
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
    // New logins follow the route: the database that serves now.
    // Sessions of other databases than the migrated one stay on the source.
    let (_, source_db, _) = backend::login_identity(&shared.config, &shared.config.source, &user, &database);
    let (epoch, destination) = shared.router.current().for_login_to(source_db);
    let src = destination.config(&shared.config).unwrap_or(&shared.config.source);
    let (db_user, db_name, password) = backend::login_identity(&shared.config, src, &user, &database);
    if let Some(message) = shared.capture.refusal_for(source_db) {
        return refuse(&shared, &mut client, Refusal::fatal("57P03", message)).await;
    }
    // Capture and the route concern one database, as [source] names it,
    // wherever its backend is.
    info.set_backend_database(source_db);
    let opened = backend::connect(
        src,
        db_user,
        db_name,
        password,
        &params,
        shared.config.limits.connect_timeout(),
    )
    .await;
    let be = match opened {
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
    route_cancel(&shared, client_key, src, &be);
    info.set_state(Shown::Relay(state::Phase::Idle));
    info.set_backend(
        epoch,
        destination,
        moving::addr_of(src),
        be.key.0,
        shared.router.now_micros(),
        false,
    );
    tracing::debug!(session = info.id, %peer, user = %user, database = %database, backend_pid = be.key.0, "session started");
    let input = InputGuard::new(permit.budget().clone(), shared.config.limits.message_timeout());
    let login = moving::Login {
        user: user.clone(),
        database: database.clone(),
        params: params.clone(),
    };
    let mut relay = relay::Relay::new(&shared, &info, input, login, &be, epoch, destination);
    relay.started_at(moving::addr_of(src));
    let ended = serve(&shared, &mut client, relay, be, client_key).await;
    shared.cancel.remove(client_key);
    match ended {
        Ok(how) => tracing::debug!(session = info.id, ?how, "session ended"),
        Err(e) => tracing::info!(session = info.id, error = %e, "session ended with error"),
    }
    drop(registered);
}

/// Relays the session on `be` and moves it whenever the route asks, until
/// it ends.
async fn serve(
    shared: &Arc<Shared>,
    client: &mut Conn,
    mut relay: relay::Relay<'_>,
    mut be: backend::Backend,
    client_key: (i32, i32),
) -> Result<relay::Ended, relay::RelayError> {
    let info = relay.info.clone();
    let stats = &shared.stats;
    let src = &shared.config.source;
    loop {
        let ended = match &mut be.conn {
            ServerConn::Tcp(server) => relay.run(client, server).await,
            ServerConn::Unix(server) => relay.run(client, server).await,
        };
        if !matches!(ended, Ok(relay::Ended::Move)) {
            match &mut be.conn {
                ServerConn::Tcp(server) => relay.finish(client, server, &ended).await,
                ServerConn::Unix(server) => relay.finish(client, server, &ended).await,
            }
            relay.ended();
            return ended;
        }
        let moved = match &mut be.conn {
            ServerConn::Tcp(server) => relay.relocate(client, server).await,
            ServerConn::Unix(server) => relay.relocate(client, server).await,
        };
        match moved {
            relay::Moved::To(next) => {
                let route = shared.router.current();
                let (epoch, destination) = relay.order_epoch().unwrap_or((route.epoch, route.destination));
                let db = destination.config(&shared.config).unwrap_or(src);
                let old = std::mem::replace(&mut be, next);
                moving::retire(old.conn);
                route_cancel(shared, client_key, db, &be);
                relay.moved_to(epoch, be.key.0, moving::addr_of(db));
                info.set_backend(
                    epoch,
                    destination,
                    moving::addr_of(db),
                    be.key.0,
                    shared.router.now_micros(),
                    true,
                );
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
                    ServerConn::Tcp(server) => relay.finish(client, server, &Ok(relay::Ended::Move)).await,
                    ServerConn::Unix(server) => relay.finish(client, server, &Ok(relay::Ended::Move)).await,
                }
                relay.ended();
                return Ok(relay::Ended::Move);
            }
        }
    }
}

/// Routes the key the client holds to the backend `be` on `db`.
fn route_cancel(shared: &Shared, client_key: (i32, i32), db: &crate::config::DatabaseConfig, be: &backend::Backend) {
    shared.cancel.route(
        client_key,
        crate::cancel::CancelTarget {
            host: db.host.clone(),
            port: db.port,
            pid: be.key.0,
            key: be.key.1,
        },
    );
}
