//! A connection: one socket with its read and write buffers. Sessions see
//! messages, not bytes: [`Conn::read_message`] frames, [`Conn::queue`] and
//! [`Conn::flush`] send. The relay loop takes a connection apart with
//! [`Conn::parts`], so that it can wait on both directions of both sockets in
//! one `select!` without ever blocking a write while the peer is blocked
//! writing to us.

use crate::stats::Stats;
use crate::wire::{startup, Frame, WireError};
use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

pub mod tls;

pub use tls::{ServerTls, Stream};

/// A stream socket the proxy speaks the protocol over: TCP, or a Unix-domain
/// socket for a database on the same machine (much cheaper per message than
/// loopback TCP).
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Borrowed read half.
    type Read<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    /// Borrowed write half.
    type Write<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;
    /// Splits into halves that can be used at the same time.
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>);
    /// Writes without waiting (`WouldBlock` when the socket is full).
    fn try_write_half(w: &Self::Write<'_>, buf: &[u8]) -> io::Result<usize>;
    /// Sets socket options once connected.
    fn configure(&self) {}
    /// Reads what has arrived, without waiting (`WouldBlock` when nothing has).
    fn try_read_now(&self, buf: &mut [u8]) -> io::Result<usize>;
}

impl Socket for TcpStream {
    type Read<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Write<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        self.split()
    }
    fn try_write_half(w: &Self::Write<'_>, buf: &[u8]) -> io::Result<usize> {
        w.try_write(buf)
    }
    fn configure(&self) {
        // Small messages dominate; Nagle would add a round trip's delay to
        // every pipelined batch.
        let _ = self.set_nodelay(true);
    }
    fn try_read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.try_read(buf)
    }
}

impl Socket for UnixStream {
    type Read<'a> = tokio::net::unix::ReadHalf<'a>;
    type Write<'a> = tokio::net::unix::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        self.split()
    }
    fn try_write_half(w: &Self::Write<'_>, buf: &[u8]) -> io::Result<usize> {
        w.try_write(buf)
    }
    fn try_read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.try_read(buf)
    }
}

/// A connection to a database: TCP, or a Unix socket when the configured
/// host is a directory (as with libpq: `/var/run/postgresql`).
pub enum ServerConn {
    /// Over TCP, with TLS when the database's `sslmode` asked for it.
    Tcp(Conn<Stream>),
    /// Over a Unix-domain socket.
    Unix(Conn<UnixStream>),
}

impl ServerConn {
    /// See [`Conn::idle_and_open`].
    pub fn idle_and_open(&self) -> bool {
        match self {
            ServerConn::Tcp(c) => c.idle_and_open(),
            ServerConn::Unix(c) => c.idle_and_open(),
        }
    }
}

/// Whether a host names a Unix-socket directory rather than a machine.
pub fn is_socket_dir(host: &str) -> bool {
    host.starts_with('/')
}

/// The socket file PostgreSQL listens on in `dir` for `port`.
pub fn socket_path(dir: &str, port: u16) -> std::path::PathBuf {
    std::path::Path::new(dir).join(format!(".s.PGSQL.{port}"))
}

/// Opens a connection to a database at `host:port` (or its socket in the
/// directory `host`), within `timeout`.
pub async fn connect(host: &str, port: u16, timeout: Duration, limit: usize) -> io::Result<ServerConn> {
    let open = async {
        if is_socket_dir(host) {
            Ok(ServerConn::Unix(Conn::new(
                UnixStream::connect(socket_path(host, port)).await?,
                limit,
            )))
        } else {
            Ok(ServerConn::Tcp(Conn::new(
                Stream::plain(TcpStream::connect((host, port)).await?),
                limit,
            )))
        }
    };
    match tokio::time::timeout(timeout, open).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {} ms", timeout.as_millis()),
        )),
    }
}

/// First pause after a failed accept.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between accept attempts while they keep failing.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A listener that backs off while `accept` fails. Out of file descriptors
/// (EMFILE, ENFILE) the pending connection stays in the backlog, so the
/// listener stays readable and a plain retry loop spins at 100 % CPU; each
/// failure here doubles the pause (10 ms up to 1 s) and a success resets it.
/// Cancel-safe: the pause is a deadline kept across calls, so a `select!`
/// that drops the future does not skip it.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    what: &'static str,
    delay: Duration,
    retry_at: Option<tokio::time::Instant>,
    stats: std::sync::Arc<Stats>,
}

impl Acceptor {
    /// Wraps a bound listener; `what` names it in logs, and failures are
    /// counted in `stats.accept_failures`.
    pub fn new(listener: TcpListener, what: &'static str, stats: std::sync::Arc<Stats>) -> Acceptor {
        Acceptor {
            listener,
            what,
            delay: ACCEPT_BACKOFF_MIN,
            retry_at: None,
            stats,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts the next connection, waiting out failures with backoff.
    pub async fn accept(&mut self) -> (TcpStream, std::net::SocketAddr) {
        loop {
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            match self.listener.accept().await {
                Ok(accepted) => {
                    self.delay = ACCEPT_BACKOFF_MIN;
                    return accepted;
                }
                Err(e) => {
                    Stats::bump(&self.stats.accept_failures);
                    tracing::warn!(listener = self.what, error = %e, retry_ms = self.delay.as_millis() as u64, "accept failed");
                    self.retry_at = Some(tokio::time::Instant::now() + self.delay);
                    self.delay = (self.delay * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
}

/// Errors reading a message.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that do not frame.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
}

const READ_CHUNK: usize = 16 * 1024;

/// A connection taken apart for the relay loop; see [`Conn::parts`].
pub struct Parts<'a, S: Socket> {
    /// Read half of the socket.
    pub read: S::Read<'a>,
    /// Write half of the socket.
    pub write: S::Write<'a>,
    /// Bytes read, not yet taken as messages.
    pub rbuf: &'a mut BytesMut,
    /// Bytes queued, not yet written.
    pub wbuf: &'a mut BytesMut,
    /// Largest message accepted.
    pub limit: usize,
}

impl<S: Socket> Parts<'_, S> {
    /// Sends `bytes` after whatever is queued: written straight from the
    /// caller's buffer when nothing is queued (no copy), and the rest queued.
    pub fn forward(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut rest = bytes;
        if self.wbuf.is_empty() && !rest.is_empty() {
            match S::try_write_half(&self.write, rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        self.wbuf.extend_from_slice(rest);
        Ok(())
    }

    /// Writes what the socket takes without waiting.
    pub fn try_flush(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match S::try_write_half(&self.write, self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Reads more bytes into `rbuf` (cancel-safe); 0 at end of stream. A free
/// function so that a `select!` can borrow the read side and the write side
/// of one connection at once.
pub async fn fill<R: AsyncRead + Unpin>(read: &mut R, rbuf: &mut BytesMut) -> io::Result<usize> {
    rbuf.reserve(READ_CHUNK);
    read.read_buf(rbuf).await
}

/// Writes some of `wbuf`, waiting until the socket takes any (cancel-safe:
/// nothing is lost if dropped).
pub async fn write_some<W: AsyncWrite + Unpin>(write: &mut W, wbuf: &mut BytesMut) -> io::Result<usize> {
    let n = write.write(wbuf).await?;
    if n == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    wbuf.advance(n);
    Ok(n)
}

impl Conn<Stream> {
    /// Starts TLS as the server, after answering a client's SSLRequest
    /// with 'S'. Nothing may be buffered: what a client sent before the
    /// handshake was not encrypted.
    pub async fn accept_tls(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        debug_assert!(self.rbuf.is_empty() && self.wbuf.is_empty());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = acceptor.accept(self.stream.tcp_mut()).await?;
        let (_, session) = tls.into_inner();
        self.stream.start(rustls::Connection::Server(session));
        Ok(())
    }

    /// Starts TLS as the client, after the database answered our
    /// SSLRequest with 'S'.
    pub async fn connect_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        debug_assert!(self.rbuf.is_empty() && self.wbuf.is_empty());
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = connector.connect(name, self.stream.tcp_mut()).await?;
        let (_, session) = tls.into_inner();
        self.stream.start(rustls::Connection::Client(session));
        Ok(())
    }

    /// Whether TLS is on.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Sends an SSLRequest and reads the database's one-byte answer (`S`
    /// or `N`). Bytes after an `S`, before the handshake, were not
    /// encrypted and are refused (as libpq does since CVE-2021-23222).
    pub async fn ssl_answer(&mut self) -> io::Result<u8> {
        let mut request = 8i32.to_be_bytes().to_vec();
        request.extend(startup::SSL_REQUEST.to_be_bytes());
        self.send(&request).await?;
        while self.rbuf.is_empty() {
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the database closed the connection after SSLRequest",
                ));
            }
        }
        let answer = self.rbuf[0];
        if answer == b'S' && self.rbuf.len() > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the database sent unencrypted data after agreeing to TLS",
            ));
        }
        if matches!(answer, b'S' | b'N') {
            self.rbuf.advance(1);
        }
        Ok(answer)
    }
}

/// A socket with its buffers.
pub struct Conn<S: Socket = Stream> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    limit: usize,
}

impl<S: Socket> Conn<S> {
    /// Whether an idle connection is still usable: nothing arrived on it
    /// and its peer has not closed it. A backend that was terminated sends
    /// its FATAL and closes; anything arriving unasked means the same.
    pub fn idle_and_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read_now(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Wraps a connected socket; `limit` bounds the size of one message read.
    pub fn new(stream: S, limit: usize) -> Conn<S> {
        stream.configure();
        Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(READ_CHUNK),
            limit,
        }
    }

    /// The largest message this connection accepts.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The socket's two halves and the two buffers, for a relay loop that
    /// waits on reads and writes at once. Reading through the half (rather
    /// than `try_read`) lets tokio clear read readiness after a short read,
    /// which saves a `read` returning EAGAIN per message exchange.
    pub fn parts(&mut self) -> Parts<'_, S> {
        let (read, write) = self.stream.halves();
        Parts {
            read,
            write,
            rbuf: &mut self.rbuf,
            wbuf: &mut self.wbuf,
            limit: self.limit,
        }
    }

    /// Takes the next whole message already in the read buffer.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        Frame::split(&mut self.rbuf, self.limit)
    }

    /// Bytes read but not yet taken as messages.
    pub fn buffered(&self) -> usize {
        self.rbuf.len()
    }

    /// Reads more bytes, waiting for them; returns 0 at end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        self.rbuf.reserve(READ_CHUNK);
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// Reads one whole typed message; `Ok(None)` if the peer closed cleanly
    /// between messages.
    pub async fn read_message(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(Some(frame));
            }
            if self.fill().await? == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated)
                };
            }
        }
    }

    /// Reads one whole typed message of at most `limit` bytes (below the
    /// connection's own limit), e.g. a password message before the client
    /// is authenticated.
    pub async fn read_message_within(&mut self, limit: usize) -> Result<Option<Frame>, ReadError> {
        let smaller = limit.min(self.limit);
        let full = std::mem::replace(&mut self.limit, smaller);
        let read = self.read_message().await;
        self.limit = full;
        read
    }

    /// Reads one untyped startup packet (length-prefixed, no type byte).
    pub async fn read_startup(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            if let Some(len) = startup::packet_len(&self.rbuf, self.limit.min(startup::MAX_STARTUP_PACKET))? {
                if self.rbuf.len() >= len {
                    return Ok(Some(self.rbuf.split_to(len).freeze()));
                }
            }
            if self.fill().await? == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated)
                };
            }
        }
    }

    /// Appends bytes to the write buffer.
    pub fn queue(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    /// The write buffer, for building messages in place.
    pub fn wbuf(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Bytes queued but not yet written.
    pub fn pending_write(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes everything queued, waiting as needed.
    pub async fn flush(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            let n = self.stream.write(&self.wbuf).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.wbuf.advance(n);
        }
        Ok(())
    }

    /// Queues bytes and writes them out.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.queue(bytes);
        self.flush().await
    }

    /// Closes the write side after flushing what is queued (best effort).
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}
