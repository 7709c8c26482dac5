//! How a session's relay ends: what the client is told and how the
//! database is left.

use super::{Ended, Relay, RelayError};
use crate::net::Stream;
use crate::net::{Conn, Socket};
use crate::stats::Stats;
use crate::wire::backend::{self as bmsg, Severity};
use crate::wire::frontend;
use std::time::Duration;

impl Relay<'_> {
    /// Relays until the session ends or must move ([`Ended::Move`]).
    pub(crate) async fn run<S: Socket>(
        &mut self,
        client: &mut Conn<Stream>,
        server: &mut Conn<S>,
    ) -> Result<Ended, RelayError> {
        self.relay(client, server).await
    }

    /// Ends the session after [`Relay::run`] returned `result`: tells the
    /// client why where it should hear, and leaves the database politely.
    pub(crate) async fn finish<S: Socket>(
        &mut self,
        client: &mut Conn<Stream>,
        server: &mut Conn<S>,
        result: &Result<Ended, RelayError>,
    ) {
        match result {
            Err(RelayError::Input(e)) => {
                if e.code() == "08P01" {
                    Stats::bump(&self.shared.stats.protocol_errors);
                }
                bmsg::error_response(client.wbuf(), Severity::Fatal, e.code(), &e.to_string());
                let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
            }
            Err(RelayError::Protocol(e)) => {
                Stats::bump(&self.shared.stats.protocol_errors);
                bmsg::error_response(
                    client.wbuf(),
                    Severity::Fatal,
                    "08P01",
                    &format!("invalid message from client: {e}"),
                );
                let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
            }
            Err(RelayError::ServerProtocol(_)) | Ok(Ended::ServerClosed) if !self.last_was_error => {
                bmsg::error_response(
                    client.wbuf(),
                    Severity::Fatal,
                    "08006",
                    "the connection to the database was lost",
                );
                let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
            }
            Ok(Ended::Shutdown) => {
                bmsg::error_response(
                    client.wbuf(),
                    Severity::Fatal,
                    "57P01",
                    "terminating connection because switchyard is shutting down",
                );
                let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
            }
            Ok(Ended::TransactionClosed) => {
                bmsg::error_response(
                    client.wbuf(),
                    Severity::Fatal,
                    "57P01",
                    "terminating connection: its transaction was still open when the cutover's drain timeout \
                     passed (ON_DRAIN_TIMEOUT cancel); the transaction was rolled back, reconnect and retry it",
                );
                let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
            }
            _ => {
                let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
            }
        }
        // Tell the database we are leaving rather than just dropping the socket.
        server.queue(&frontend::terminate());
        let _ = tokio::time::timeout(Duration::from_millis(200), server.close()).await;
        self.shared.stats.merge_latency(&mut self.latency);
    }
}
