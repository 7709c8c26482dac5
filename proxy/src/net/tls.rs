//! TLS over a TCP socket, shaped like the socket itself, so that sessions
//! and the relay loop treat a TLS connection exactly as a plain one:
//! [`Stream`] is a TCP socket that may have started TLS (with a client after
//! its SSLRequest, with a database after ours), and its two halves can be
//! read and written at once from one `select!`.
//!
//! One rule differs from a socket, as it does with OpenSSL's `SSL_write`: a
//! write that returned `WouldBlock` (or `Pending`) has taken its bytes into
//! the TLS session already, and the next write must offer the same bytes
//! again (it then reports them written once they are on the wire).
//! [`super::Conn`] and [`super::Parts`] always do: they only ever write the
//! front of their write buffer, which advances by what a write reported.
//! Reporting bytes only once their records are on the wire is what keeps a
//! relay loop that waits for an empty write buffer from leaving encrypted
//! records unsent.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, TcpStream};

/// A TCP socket, with TLS once [`super::Conn::accept_tls`] or
/// [`super::Conn::connect_tls`] has started it.
#[derive(Debug)]
pub struct Stream {
    tcp: TcpStream,
    tls: Option<Box<Session>>,
}

/// The TLS session of a [`Stream`]. Both halves of the stream need it, from
/// one task: the lock is never contended.
struct Session {
    state: Mutex<State>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSession")
    }
}

struct State {
    conn: rustls::Connection,
    /// Plaintext bytes taken by a write whose records are not all on the
    /// wire yet (see the module's note).
    in_flight: usize,
    /// Whether close_notify has been queued.
    closing: bool,
}

impl Stream {
    /// A plain TCP stream.
    pub fn plain(tcp: TcpStream) -> Stream {
        Stream { tcp, tls: None }
    }

    /// Whether TLS is on.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TCP socket, e.g. to run a TLS handshake on.
    pub(super) fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// Turns TLS on with a session whose handshake is done.
    pub(super) fn start(&mut self, conn: rustls::Connection) {
        self.tls = Some(Box::new(Session {
            state: Mutex::new(State {
                conn,
                in_flight: 0,
                closing: false,
            }),
        }));
    }

    fn io(&self) -> Option<TlsIo<'_>> {
        self.tls.as_deref().map(|tls| TlsIo { tcp: &self.tcp, tls })
    }
}

/// Read half of a [`Stream`].
pub enum StreamRead<'a> {
    /// Plain TCP.
    Plain(tcp::ReadHalf<'a>),
    /// Through TLS.
    Tls(TlsIo<'a>),
}

/// Write half of a [`Stream`].
pub enum StreamWrite<'a> {
    /// Plain TCP.
    Plain(tcp::WriteHalf<'a>),
    /// Through TLS.
    Tls(TlsIo<'a>),
}

impl super::Socket for Stream {
    type Read<'a> = StreamRead<'a>;
    type Write<'a> = StreamWrite<'a>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        match self.tls.as_deref() {
            Some(tls) => {
                let io = TlsIo { tcp: &self.tcp, tls };
                (StreamRead::Tls(io), StreamWrite::Tls(io))
            }
            None => {
                let (r, w) = self.tcp.split();
                (StreamRead::Plain(r), StreamWrite::Plain(w))
            }
        }
    }
    fn try_write_half(w: &Self::Write<'_>, buf: &[u8]) -> io::Result<usize> {
        match w {
            StreamWrite::Plain(w) => w.try_write(buf),
            StreamWrite::Tls(io) => would_block(io.write(None, buf)),
        }
    }
    fn configure(&self) {
        // Small messages dominate; Nagle would add a round trip's delay to
        // every pipelined batch.
        let _ = self.tcp.set_nodelay(true);
    }
    fn try_read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.io() {
            Some(io) => would_block(io.read(None, buf)),
            None => self.tcp.try_read(buf),
        }
    }
}

/// A poll made without a waker, as a non-blocking call.
fn would_block<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

/// Reads into a `ReadBuf` with `read`.
fn read_into(buf: &mut ReadBuf<'_>, read: impl FnOnce(&mut [u8]) -> Poll<io::Result<usize>>) -> Poll<io::Result<()>> {
    let n = std::task::ready!(read(buf.initialize_unfilled()))?;
    buf.advance(n);
    Poll::Ready(Ok(()))
}

/// Both halves' access to a TLS stream: the socket and the session.
#[derive(Clone, Copy)]
pub struct TlsIo<'a> {
    tcp: &'a TcpStream,
    tls: &'a Session,
}

/// The socket as blocking-style I/O that fails with `WouldBlock`, for
/// rustls's `read_tls` / `write_tls`.
struct TryIo<'a>(&'a TcpStream);

impl Read for TryIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for TryIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsIo<'_> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it cannot leave the session half-updated in
        // a way a later read would trust: rustls checks its own state.
        self.tls.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads decrypted bytes; 0 at the end of the stream. Without a context
    /// it never waits (`Pending` means nothing has arrived).
    fn read(&self, mut cx: Option<&mut Context<'_>>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut st = self.lock();
            match st.conn.reader().read(out) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed the socket without a close_notify: for a
                // protocol that frames its own messages that is an ordinary
                // end (a truncated message is still noticed by the framer).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
                Err(e) => return Poll::Ready(Err(e)),
            }
            match st.conn.read_tls(&mut TryIo(self.tcp)) {
                Ok(_) => {
                    if let Err(e) = st.conn.process_new_packets() {
                        // Let the peer see the alert rustls queued, if it can.
                        let _ = st.conn.write_tls(&mut TryIo(self.tcp));
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                    // Answers reading queued (key updates) go out with the
                    // next write; a session that only reads sends them here.
                    if st.in_flight == 0 && st.conn.wants_write() {
                        let _ = st.conn.write_tls(&mut TryIo(self.tcp));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(st);
                    let Some(cx) = cx.as_deref_mut() else {
                        return Poll::Pending;
                    };
                    std::task::ready!(self.tcp.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes `buf` (see the module's note on retries). Without a context it
    /// never waits.
    fn write(&self, mut cx: Option<&mut Context<'_>>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut st = self.lock();
        if st.in_flight == 0 {
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            // Records queued by a read (or the handshake) go first, so the
            // session's buffer has room for this write.
            drop(st);
            std::task::ready!(self.push(cx.as_deref_mut()))?;
            st = self.lock();
            let n = st.conn.writer().write(buf)?;
            st.in_flight = n;
        }
        drop(st);
        std::task::ready!(self.push(cx))?;
        let mut st = self.lock();
        let n = std::mem::take(&mut st.in_flight).min(buf.len());
        Poll::Ready(Ok(n))
    }

    /// Writes every record the session has queued.
    fn push(&self, mut cx: Option<&mut Context<'_>>) -> Poll<io::Result<()>> {
        loop {
            let mut st = self.lock();
            if !st.conn.wants_write() {
                return Poll::Ready(Ok(()));
            }
            match st.conn.write_tls(&mut TryIo(self.tcp)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(st);
                    let Some(cx) = cx.as_deref_mut() else {
                        return Poll::Pending;
                    };
                    std::task::ready!(self.tcp.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Sends close_notify (once) and what is queued.
    fn close(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut st = self.lock();
            if !st.closing {
                st.closing = true;
                st.conn.send_close_notify();
            }
        }
        self.push(Some(cx))
    }
}

impl AsyncRead for TlsIo<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        read_into(buf, |out| self.read(Some(cx), out))
    }
}

impl AsyncWrite for TlsIo<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write(Some(cx), buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.push(Some(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close(cx)
    }
}

impl AsyncRead for StreamRead<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamRead::Plain(r) => Pin::new(r).poll_read(cx, buf),
            StreamRead::Tls(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for StreamWrite<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            StreamWrite::Plain(w) => Pin::new(w).poll_write(cx, buf),
            StreamWrite::Tls(io) => Pin::new(io).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamWrite::Plain(w) => Pin::new(w).poll_flush(cx),
            StreamWrite::Tls(io) => Pin::new(io).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamWrite::Plain(w) => Pin::new(w).poll_shutdown(cx),
            StreamWrite::Tls(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.io() {
            Some(io) => read_into(buf, |out| io.read(Some(cx), out)),
            None => Pin::new(&mut this.tcp).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.io() {
            Some(io) => io.write(Some(cx), buf),
            None => Pin::new(&mut this.tcp).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.io() {
            Some(io) => io.push(Some(cx)),
            None => Pin::new(&mut this.tcp).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(io) = this.io() {
            std::task::ready!(io.close(cx))?;
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// The proxy's side of TLS with its clients: the certificate and key, and
/// whether a client must use TLS.
#[derive(Clone)]
pub struct ServerTls {
    /// The rustls configuration.
    pub config: Arc<rustls::ServerConfig>,
    /// Whether a client that does not ask for TLS is refused.
    pub required: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("required", &self.required).finish()
    }
}
