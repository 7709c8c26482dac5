//! The startup phase of a client connection: TLS (or its refusal), GSSENC refusal,
//! CancelRequest routing, the StartupMessage, protocol negotiation,
//! authentication and the slot check, each bounded by
//! `limits.startup_timeout_ms`; and refusing a connection with an error.

use super::{Fault, Refusal};
use crate::auth::{self, AuthError};
use crate::net::{Conn, ReadError};
use crate::server::Shared;
use crate::slots::SlotKind;
use crate::stats::Stats;
use crate::wire::backend as bmsg;
use crate::wire::startup::{self, StartupPacket};
use std::net::SocketAddr;

/// Reads the startup packets within `limits.startup_timeout_ms` and ends
/// the connection as PostgreSQL would if they do not amount to a
/// StartupMessage; `None` once it has been ended (or a cancel served).
pub(super) async fn startup_phase(shared: &Shared, client: &mut Conn, peer: SocketAddr) -> Option<Startup> {
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
pub(super) async fn authenticate(shared: &Shared, client: &mut Conn, peer: SocketAddr, user: &str) -> bool {
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
pub(super) fn slot_refusal(shared: &Shared, kind: SlotKind, user: &str, database: &str) -> Option<Refusal> {
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
pub(super) fn negotiate_protocol(client: &mut Conn, version: i32, params: &[(String, String)]) {
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

/// Which encryption requests were answered so far: PostgreSQL answers one
/// SSLRequest and one GSSENCRequest, in either order, and treats a repeat
/// (or any request once TLS is on) as an unsupported protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answered {
    Neither,
    Ssl,
    Gss,
    Both,
}

impl Answered {
    /// The state after answering `packet`, or `None` if it was answered before.
    fn and(self, packet: &StartupPacket) -> Option<Answered> {
        match (self, packet) {
            (Answered::Neither, StartupPacket::SslRequest) => Some(Answered::Ssl),
            (Answered::Neither, StartupPacket::GssEncRequest) => Some(Answered::Gss),
            (Answered::Gss, StartupPacket::SslRequest) | (Answered::Ssl, StartupPacket::GssEncRequest) => {
                Some(Answered::Both)
            }
            _ => None,
        }
    }
}

/// What a client is told when `[tls] clients = "require"` and it did not
/// ask for TLS.
const TLS_REQUIRED: &str =
    "switchyard accepts only TLS (SSL) connections here: connect with sslmode=require (or verify-ca / verify-full)";

/// Reads startup packets until a StartupMessage: answers an SSLRequest with
/// 'S' and a TLS handshake when `[tls]` is configured, else 'N'; answers a
/// GSSENCRequest with 'N'; serves a CancelRequest (returning `None`), in
/// clear text or over TLS.
async fn read_startup(shared: &Shared, client: &mut Conn) -> Result<Option<Startup>, StartupEnd> {
    let mut answered = Answered::Neither;
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
                let Some(next) = answered.and(&p) else {
                    let code = match p {
                        StartupPacket::SslRequest => startup::SSL_REQUEST,
                        _ => startup::GSSENC_REQUEST,
                    };
                    let message = startup::unsupported_protocol_message(code);
                    return Err(StartupEnd::Refuse(Refusal::protocol("0A000", message)));
                };
                answered = next;
                let tls = match p {
                    StartupPacket::SslRequest => shared.tls.as_ref(),
                    _ => None,
                };
                if client.buffered() > 0 {
                    // Bytes sent before the answer cannot be trusted (a TLS
                    // downgrade probe); PostgreSQL answers, then refuses.
                    let what = match p {
                        StartupPacket::SslRequest => "SSL request",
                        _ => "GSSAPI encryption request",
                    };
                    if tls.is_some() {
                        // A client that expects a handshake could not read
                        // an error in clear text.
                        return Err(StartupEnd::Silent("received unencrypted data after SSL request"));
                    }
                    client.queue(b"N");
                    let r = Refusal::fatal("08P01", format!("received unencrypted data after {what}"));
                    return Err(StartupEnd::Refuse(r));
                }
                let Some(tls) = tls else {
                    // No TLS or GSS encryption here: 'N' makes the client go
                    // on in clear text (or give up if it requires encryption).
                    if client.send(b"N").await.is_err() {
                        return Ok(None);
                    }
                    continue;
                };
                if client.send(b"S").await.is_err() {
                    return Ok(None);
                }
                if let Err(e) = client.accept_tls(tls.config.clone()).await {
                    tracing::info!(error = %e, "TLS handshake with a client failed");
                    return Err(StartupEnd::Silent("TLS handshake failed"));
                }
                // Once TLS is on, no more negotiation (as PostgreSQL).
                answered = Answered::Both;
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
            Ok(StartupPacket::Startup { .. })
                if shared.tls.as_ref().is_some_and(|t| t.required) && !client.is_tls() =>
            {
                return Err(StartupEnd::Refuse(Refusal::fatal("28000", TLS_REQUIRED)));
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
pub(super) async fn refuse(shared: &Shared, client: &mut Conn, r: Refusal) {
    Stats::bump(&shared.stats.connections_refused);
    if r.fault == Fault::Protocol {
        Stats::bump(&shared.stats.protocol_errors);
    }
    bmsg::error_response(client.wbuf(), r.severity, r.code, &r.message);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.close()).await;
}
