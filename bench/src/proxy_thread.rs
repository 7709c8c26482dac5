//! The switchyard proxy run in-process the way the `switchyard` binary runs
//! it: on a dedicated OS thread with its own single-threaded tokio runtime,
//! so that it never shares an event loop with the bench's own work.

use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use switchyard_proxy::{Config, Proxy};
use switchyard_tests::{Binaries, Endpoint};
use tokio::sync::oneshot;

/// Where a started proxy listens.
type Bound = (SocketAddr, Option<SocketAddr>);

/// A proxy running on its own thread. [`ProxyThread::stop`] shuts it down
/// gracefully and joins the thread; dropping it does the same.
#[derive(Debug)]
pub struct ProxyThread {
    name: String,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ProxyThread {
    /// Starts a proxy with `config` on a new thread called `name` and waits
    /// until it listens. A failure to bind comes back as a
    /// [`switchyard_proxy::server::StartError`] inside the `anyhow::Error`.
    pub fn start(name: &str, config: Config) -> Result<ProxyThread> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Bound>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || serve(config, ready_tx, stop_rx))
            .with_context(|| format!("spawning the {name} thread"))?;
        let bound = ready_rx
            .recv()
            .map_err(|_| anyhow!("the {name} thread ended before the proxy started"))
            .and_then(|r| r);
        let (addr, metrics_addr) = match bound {
            Ok(b) => b,
            Err(e) => {
                let _ = thread.join();
                return Err(e);
            }
        };
        Ok(ProxyThread {
            name: name.to_owned(),
            addr,
            metrics_addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics endpoint's address, when the config enabled it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// An endpoint logging in to the proxy as `user` without a password.
    pub fn endpoint(&self, user: &str, binaries: &Binaries) -> Endpoint {
        Endpoint {
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
            user: user.to_owned(),
            password: None,
            binaries: binaries.clone(),
        }
    }

    /// Shuts the proxy down gracefully and waits for its thread.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("switchyard-bench: the {} thread panicked", self.name);
            }
        }
    }
}

impl Drop for ProxyThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The thread's body: a current-thread runtime (the `switchyard` binary's
/// default) serving the proxy until `stop` fires or its sender is dropped.
fn serve(config: Config, ready: mpsc::Sender<Result<Bound>>, stop: oneshot::Receiver<()>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(anyhow!(e).context("building the proxy's runtime")));
            return;
        }
    };
    runtime.block_on(async move {
        let proxy = match Proxy::start(config).await {
            Ok(p) => p,
            Err(e) => {
                let _ = ready.send(Err(e.into()));
                return;
            }
        };
        let _ = ready.send(Ok((proxy.local_addr(), proxy.metrics_addr())));
        let _ = stop.await;
        proxy.shutdown().await;
    });
}
