//! The switchyard proxy started in-process on 127.0.0.1 at a free port, in
//! front of a test cluster, with clients pointed at it.

use crate::endpoint::Endpoint;
use crate::{Binaries, Cluster, Error};
use std::net::{Ipv4Addr, SocketAddr};
use switchyard_proxy::{AuthMethod, Config, Proxy};
use tokio_postgres::Client;

/// A running in-process proxy. Await [`TestProxy::shutdown`] to stop it
/// gracefully; dropping it without doing so just drops the handle, and the
/// proxy's tasks end with the test's runtime.
pub struct TestProxy {
    proxy: Option<Proxy>,
    addr: SocketAddr,
    /// Who [`TestProxy::connect`] logs in as.
    user: String,
    password: Option<String>,
    binaries: Binaries,
}

impl TestProxy {
    /// Starts a proxy in front of `cluster` with trust authentication for
    /// clients. Towards the cluster the proxy logs in as the client's user,
    /// with the cluster's superuser password if it has one (so a SCRAM or md5
    /// cluster works for its superuser). [`TestProxy::connect`] logs in as
    /// the cluster's superuser.
    pub async fn start(cluster: &Cluster) -> Result<TestProxy, Error> {
        let mut config = Config::trusting(local_any_port(), cluster.host(), cluster.port());
        config.source.password = cluster.auth().password().map(str::to_owned);
        let proxy = TestProxy::start_with(config).await?;
        Ok(proxy
            .with_login(cluster.superuser(), None)
            .with_binaries(cluster.binaries().clone()))
    }

    /// Starts a proxy with `config` as given (set `listen` to
    /// `127.0.0.1:0` for a free port). [`TestProxy::connect`] logs in as the
    /// first configured user whose password is in clear text, else as
    /// `postgres` without a password; change that with
    /// [`TestProxy::with_login`].
    pub async fn start_with(config: Config) -> Result<TestProxy, Error> {
        let (user, password) = default_login(&config);
        let proxy = Proxy::start(config).await?;
        let addr = proxy.local_addr();
        tracing::debug!(%addr, "test proxy started");
        Ok(TestProxy {
            proxy: Some(proxy),
            addr,
            user,
            password,
            // The client tools are usually on PATH even without the server.
            binaries: Binaries::locate().unwrap_or_else(|_| Binaries::at("")),
        })
    }

    /// Makes [`TestProxy::connect`] and [`TestProxy::endpoint`] log in as
    /// `user` with `password`.
    pub fn with_login(mut self, user: &str, password: Option<&str>) -> Self {
        self.user = user.to_owned();
        self.password = password.map(str::to_owned);
        self
    }

    /// Where [`TestProxy::endpoint`]'s tools (psql, pgbench) are found.
    pub fn with_binaries(mut self, binaries: Binaries) -> Self {
        self.binaries = binaries;
        self
    }

    /// The address the proxy accepts clients on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the proxy accepts clients on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The proxy's host, as clients should name it.
    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// The metrics endpoint's address, when the config enabled it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.proxy.as_ref().and_then(Proxy::metrics_addr)
    }

    /// The proxy itself.
    pub fn proxy(&self) -> &Proxy {
        // Only `shutdown` and `drop` take it out, and both consume `self`.
        self.proxy.as_ref().expect("the proxy is present until shutdown")
    }

    /// The endpoint for the default login (see [`TestProxy::with_login`]).
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint_as(&self.user, self.password.as_deref())
    }

    /// The endpoint for logging in as `user` with `password`.
    pub fn endpoint_as(&self, user: &str, password: Option<&str>) -> Endpoint {
        Endpoint {
            host: self.host(),
            port: self.port(),
            user: user.to_owned(),
            password: password.map(str::to_owned),
            binaries: self.binaries.clone(),
        }
    }

    /// A tokio-postgres config for the default login on database `db`.
    pub fn pg_config(&self, db: &str) -> tokio_postgres::Config {
        self.endpoint().pg_config(db)
    }

    /// A libpq connection string for the default login on database `db`.
    pub fn connstr(&self, db: &str) -> String {
        self.endpoint().connstr(db)
    }

    /// Connects through the proxy to database `db` with the default login;
    /// the connection task is spawned on the current runtime.
    pub async fn connect(&self, db: &str) -> Result<Client, tokio_postgres::Error> {
        self.endpoint().connect(db).await
    }

    /// Connects through the proxy to database `db` as `user` with `password`.
    pub async fn connect_as(
        &self,
        user: &str,
        password: Option<&str>,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        self.endpoint_as(user, password).connect(db).await
    }

    /// Stops the proxy gracefully and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(proxy) = self.proxy.take() {
            proxy.shutdown().await;
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if self.proxy.take().is_some() {
            // Nothing to wait on here: the handle is gone, and the proxy's
            // tasks die with the runtime at the end of the test.
            tracing::debug!(addr = %self.addr, "test proxy dropped without shutdown");
        }
    }
}

impl std::fmt::Debug for TestProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestProxy")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// `127.0.0.1:0`: the proxy binds a free port itself, so there is no race.
fn local_any_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// The first configured user whose password is in clear text; otherwise
/// `postgres`, which trust accepts.
fn default_login(config: &Config) -> (String, Option<String>) {
    if config.auth.method != AuthMethod::Trust {
        let clear = config.users.iter().find_map(|u| {
            let p = u.password.as_deref()?;
            (!p.starts_with("SCRAM-SHA-256$") && !is_md5_hash(p)).then_some((u, p))
        });
        if let Some((user, password)) = clear {
            return (user.name.clone(), Some(password.to_owned()));
        }
    }
    ("postgres".to_owned(), None)
}

/// `md5` followed by 32 hex digits, as the proxy's config defines it.
fn is_md5_hash(p: &str) -> bool {
    p.len() == 35 && p.starts_with("md5") && p[3..].bytes().all(|b| b.is_ascii_hexdigit())
}
