//! Helpers shared by the end-to-end modules: the admin console as tables,
//! connections whose end (and its SQLSTATE) the test can observe, a raw
//! wire-protocol client for the cases no real driver would produce, and
//! small polling utilities. Everything here is bounded in time.

use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchyard_proxy::{AuthMethod, Config, UserConfig};
use switchyard_tests::TestProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

/// How long a test waits for something that should happen "at once".
pub const PROMPT: Duration = Duration::from_secs(5);

/// A proxy config in front of `host:port` that trusts clients and binds a
/// free port; tests adjust it before starting the proxy.
pub fn trusting_config(host: &str, port: u16) -> Config {
    Config::trusting(SocketAddr::from(([127, 0, 0, 1], 0)), host, port)
}

/// A `[[users]]` entry.
pub fn user(name: &str, password: Option<&str>, admin: bool) -> UserConfig {
    UserConfig {
        name: name.to_owned(),
        password: password.map(str::to_owned),
        admin,
    }
}

/// A config with `method` client authentication and these users.
pub fn auth_config(host: &str, port: u16, method: AuthMethod, users: Vec<UserConfig>) -> Config {
    let mut config = trusting_config(host, port);
    config.auth.method = method;
    config.users = users;
    config
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(error: &tokio_postgres::Error) -> Option<&str> {
    error.code().map(|c| c.code())
}

/// Asserts that `result` failed with SQLSTATE `code`; returns the message.
pub fn expect_sqlstate<T: std::fmt::Debug>(result: Result<T, tokio_postgres::Error>, code: &str) -> Result<String> {
    match result {
        Ok(v) => bail!("expected SQLSTATE {code}, got success: {v:?}"),
        Err(e) => {
            let message = e.as_db_error().map(|d| d.message().to_owned());
            ensure!(
                sqlstate(&e) == Some(code),
                "expected SQLSTATE {code}, got {:?}: {e:?}",
                sqlstate(&e)
            );
            Ok(message.unwrap_or_default())
        }
    }
}

/// Runs `f` with a deadline, failing the test (not hanging it) on expiry.
pub async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .with_context(|| format!("{what}: no result within {limit:?}"))
}

/// Connects with `config` and keeps the connection task's handle, so the
/// test can see how the connection ended (e.g. with a FATAL 57P01).
pub async fn connect_watched(
    config: &tokio_postgres::Config,
) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>)> {
    let (client, connection) = config.connect(NoTls).await?;
    Ok((client, tokio::spawn(connection)))
}

/// Connects with `config`, forwarding the connection's asynchronous
/// messages (notifications and notices) to the returned channel.
pub async fn connect_listening(
    config: &tokio_postgres::Config,
) -> Result<(Client, mpsc::UnboundedReceiver<AsyncMessage>)> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if tx.send(message).is_err() {
                break;
            }
        }
    });
    Ok((client, rx))
}

/// A result set of a simple query, as text.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows; `None` is NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    /// The value of `column` in row `i`.
    pub fn get(&self, i: usize, column: &str) -> Option<&str> {
        let c = self.columns.iter().position(|n| n == column)?;
        self.rows.get(i)?.get(c)?.as_deref()
    }

    /// For two-column key/value tables (SHOW STATUS, STATS, CONFIG).
    pub fn map(&self) -> BTreeMap<String, String> {
        self.rows
            .iter()
            .filter_map(|r| Some((r.first()?.clone()?, r.get(1)?.clone().unwrap_or_default())))
            .collect()
    }

    /// The rows whose `column` equals `value`.
    pub fn rows_where(&self, column: &str, value: &str) -> Vec<usize> {
        (0..self.rows.len())
            .filter(|&i| self.get(i, column) == Some(value))
            .collect()
    }
}

/// Runs one simple query and returns its (first) result set.
pub async fn table(client: &Client, sql: &str) -> Result<Table, tokio_postgres::Error> {
    let mut t = Table::default();
    for m in client.simple_query(sql).await? {
        match m {
            SimpleQueryMessage::RowDescription(cols) if t.columns.is_empty() => {
                t.columns = cols.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                t.rows
                    .push((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect());
            }
            _ => {}
        }
    }
    Ok(t)
}

/// A connection to the proxy's admin console with the default login.
pub async fn admin(proxy: &TestProxy) -> Result<Client> {
    Ok(proxy.connect("switchyard").await?)
}

/// `SHOW STATUS` as a map.
pub async fn status(admin: &Client) -> Result<BTreeMap<String, String>> {
    Ok(table(admin, "SHOW STATUS").await?.map())
}

/// The `SHOW SESSIONS` row of the session whose backend has `pid`, as a map
/// from column to value.
pub async fn session_by_pid(admin: &Client, pid: i32) -> Result<Option<BTreeMap<String, String>>> {
    let t = table(admin, "SHOW SESSIONS").await?;
    let Some(&i) = t.rows_where("backend_pid", &pid.to_string()).first() else {
        return Ok(None);
    };
    Ok(Some(
        t.columns
            .iter()
            .zip(&t.rows[i])
            .map(|(c, v)| (c.clone(), v.clone().unwrap_or_default()))
            .collect(),
    ))
}

/// Waits until `SHOW SESSIONS` shows the session of backend `pid` in
/// `state`, and returns its row.
pub async fn wait_session_state(admin: &Client, pid: i32, state: &str) -> Result<BTreeMap<String, String>> {
    wait_session(admin, pid, &[("state", state)]).await
}

/// Waits until the `SHOW SESSIONS` row of backend `pid` has every
/// `(column, value)` of `want`, and returns it. The console may lag the
/// client by a moment: the proxy forwards a reply before it updates the row.
pub async fn wait_session(admin: &Client, pid: i32, want: &[(&str, &str)]) -> Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + PROMPT;
    loop {
        let row = session_by_pid(admin, pid).await?;
        if let Some(row) = row
            .as_ref()
            .filter(|r| want.iter().all(|(k, v)| r.get(*k).map(String::as_str) == Some(*v)))
        {
            return Ok(row.clone());
        }
        if Instant::now() >= deadline {
            bail!("session of backend {pid} never showed {want:?}; last row {row:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The backend pid of a client's session (the proxy passes the real key
/// through, so this is also what SHOW SESSIONS shows).
pub async fn backend_pid(client: &Client) -> Result<i32> {
    Ok(client.query_one("select pg_backend_pid()", &[]).await?.get(0))
}

/// Scrapes the Prometheus endpoint.
pub async fn scrape(addr: SocketAddr) -> Result<String> {
    within(PROMPT, "metrics scrape", async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await?;
        let text = String::from_utf8(body)?;
        ensure!(text.starts_with("HTTP/1.1 200"), "metrics answered {text:?}");
        Ok(text)
    })
    .await?
}

/// The value of an unlabelled metric in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

// ---------------------------------------------------------------------------
// A raw wire-protocol client.

/// A typed backend message: tag and body.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// The type byte.
    pub tag: u8,
    /// Everything after the length.
    pub body: Bytes,
}

impl RawMessage {
    /// The fields of an ErrorResponse or NoticeResponse, by field code.
    pub fn fields(&self) -> BTreeMap<char, String> {
        let mut out = BTreeMap::new();
        for field in self.body.split(|&b| b == 0) {
            if let Some((&code, value)) = field.split_first() {
                out.insert(code as char, String::from_utf8_lossy(value).into_owned());
            }
        }
        out
    }

    /// The SQLSTATE of an ErrorResponse.
    pub fn code(&self) -> Option<String> {
        (self.tag == b'E').then(|| self.fields().get(&'C').cloned()).flatten()
    }
}

/// A typed frontend message: tag, length, body.
pub fn frontend(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// `s` followed by a NUL.
pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A StartupMessage for protocol 3.0.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i32(196_608);
    for (k, v) in params {
        body.put_slice(&cstr(k));
        body.put_slice(&cstr(v));
    }
    body.put_u8(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Simple Query.
pub fn query_msg(sql: &str) -> Vec<u8> {
    frontend(b'Q', &cstr(sql))
}

/// Parse of an unnamed or named statement without parameter types.
pub fn parse_msg(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstr(name);
    body.extend(cstr(sql));
    body.extend(0i16.to_be_bytes());
    frontend(b'P', &body)
}

/// Bind of statement `stmt` to the unnamed portal, no parameters, text results.
pub fn bind_msg(stmt: &str) -> Vec<u8> {
    let mut body = cstr("");
    body.extend(cstr(stmt));
    body.extend([0, 0, 0, 0, 0, 0]);
    frontend(b'B', &body)
}

/// Execute of the unnamed portal, all rows.
pub fn execute_msg() -> Vec<u8> {
    let mut body = cstr("");
    body.extend(0i32.to_be_bytes());
    frontend(b'E', &body)
}

/// Sync.
pub fn sync_msg() -> Vec<u8> {
    frontend(b'S', &[])
}

/// A TCP connection speaking the protocol byte by byte.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    buf: BytesMut,
    /// The BackendKeyData the server sent, once started.
    pub key: Option<(i32, i32)>,
}

impl RawConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<RawConn> {
        let stream = within(PROMPT, "raw connect", TcpStream::connect(addr)).await??;
        Ok(RawConn {
            stream,
            buf: BytesMut::new(),
            key: None,
        })
    }

    /// Connects and logs in (trust) as `user` to `db`, up to ReadyForQuery.
    pub async fn start(addr: SocketAddr, user: &str, db: &str) -> Result<RawConn> {
        let mut c = RawConn::connect(addr).await?;
        c.login(user, db).await?;
        Ok(c)
    }

    /// Sends a StartupMessage and reads up to ReadyForQuery (trust).
    pub async fn login(&mut self, user: &str, db: &str) -> Result<()> {
        self.send(&startup_message(&[("user", user), ("database", db)])).await?;
        loop {
            let m = self.expect_message().await?;
            match m.tag {
                b'R' | b'S' | b'N' => {}
                b'K' => {
                    let mut b = &m.body[..];
                    self.key = Some((b.get_i32(), b.get_i32()));
                }
                b'Z' => return Ok(()),
                b'E' => bail!("startup failed: {:?}", m.fields()),
                t => bail!("unexpected message {:?} during startup", t as char),
            }
        }
    }

    /// Writes bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads the one-byte answer to an SSLRequest or GSSENCRequest.
    pub async fn read_byte(&mut self) -> Result<u8> {
        let b = within(PROMPT, "reading one byte", self.stream.read_u8()).await??;
        Ok(b)
    }

    /// Reads the next message; `None` at end of stream (or on a reset, which
    /// is how a peer that closed with unread input looks).
    pub async fn message(&mut self) -> Result<Option<RawMessage>> {
        within(PROMPT, "reading a backend message", async {
            loop {
                if self.buf.len() >= 5 {
                    let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                    ensure!(len >= 4, "bad length {len} from the proxy");
                    if self.buf.len() > len {
                        let tag = self.buf[0];
                        self.buf.advance(5);
                        let body = self.buf.split_to(len - 4).freeze();
                        return Ok(Some(RawMessage { tag, body }));
                    }
                }
                self.buf.reserve(8192);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) => {
                        ensure!(self.buf.is_empty(), "stream ended inside a message");
                        return Ok(None);
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            }
        })
        .await?
    }

    /// Reads the next message, failing at end of stream.
    pub async fn expect_message(&mut self) -> Result<RawMessage> {
        self.message().await?.context("the proxy closed the connection")
    }

    /// Reads messages up to and including ReadyForQuery.
    pub async fn until_ready(&mut self) -> Result<Vec<RawMessage>> {
        let mut out = Vec::new();
        loop {
            let m = self.expect_message().await?;
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                return Ok(out);
            }
        }
    }

    /// Expects an ErrorResponse with `code` and then the end of the stream;
    /// returns the error's fields.
    pub async fn expect_error_and_close(&mut self, code: &str) -> Result<BTreeMap<char, String>> {
        let mut error = None;
        while let Some(m) = self.message().await? {
            match m.tag {
                b'E' if error.is_none() => error = Some(m),
                // Anything after the error means the session went on.
                t => bail!("unexpected message {:?} (error so far: {error:?})", t as char),
            }
        }
        let error = error.context("connection closed without an ErrorResponse")?;
        ensure!(
            error.code().as_deref() == Some(code),
            "expected SQLSTATE {code}, got {:?}",
            error.fields()
        );
        Ok(error.fields())
    }
}

/// The data rows' first column, as text, from a message list.
pub fn first_column(messages: &[RawMessage]) -> Vec<Option<String>> {
    messages
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| {
            let mut b = &m.body[..];
            let _n = b.get_i16();
            let len = b.get_i32();
            (len >= 0).then(|| String::from_utf8_lossy(&b[..len as usize]).into_owned())
        })
        .collect()
}
