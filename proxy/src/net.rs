//! A connection: one socket with its read and write buffers. Sessions see
//! messages, not bytes: [`Conn::read_message`] frames, [`Conn::queue`] and
//! [`Conn::flush`] send. The relay loop also uses the readiness-based pair
//! [`Conn::try_fill`] / [`Conn::try_flush`], so that it can wait on both
//! directions of both sockets in one `select!` without ever blocking a write
//! while the peer is blocked writing to us.

use crate::wire::{startup, Frame, WireError};
use bytes::{Buf, Bytes, BytesMut};
use std::io;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// A socket with its buffers.
pub struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    limit: usize,
}

impl Conn {
    /// Wraps a connected socket; `limit` bounds the size of one message read.
    pub fn new(stream: TcpStream, limit: usize) -> Conn {
        // Small messages dominate; Nagle would add a round trip's delay to
        // every pipelined batch.
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(READ_CHUNK),
            limit,
        }
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The largest message this connection accepts.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes the next whole message already in the read buffer.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        Frame::split(&mut self.rbuf, self.limit)
    }

    /// Bytes read but not yet taken as messages.
    pub fn buffered(&self) -> usize {
        self.rbuf.len()
    }

    /// Reads what the socket has without waiting: `Ok(Some(0))` at end of
    /// stream, `Ok(None)` when nothing is ready.
    pub fn try_fill(&mut self) -> io::Result<Option<usize>> {
        self.rbuf.reserve(READ_CHUNK);
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
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

    /// Reads one untyped startup packet (length-prefixed, no type byte).
    pub async fn read_startup(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            if let Some(len) = startup::packet_len(&self.rbuf, self.limit.min(10_000))? {
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

    /// Writes what the socket takes without waiting.
    pub fn try_flush(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
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
