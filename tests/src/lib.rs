//! switchyard's testkit: throwaway PostgreSQL clusters (15, or another major
//! version's programs from [`Binaries::version`]), the proxy started
//! in-process in front of them, and helpers to drive real clients (psql,
//! pgbench) at either. Used by the end-to-end suites and the bench crate.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use switchyard_tests::{Cluster, TestProxy};
//! let cluster = Cluster::builder().user("app", "secret").database("shop").start().await?;
//! let proxy = TestProxy::start(&cluster).await?;
//! let client = proxy.connect("shop").await?;
//! let row = client.query_one("select 1::int4", &[]).await?;
//! assert_eq!(row.get::<_, i32>(0), 1);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod binaries;
mod builder;
mod cluster;
mod endpoint;
mod error;
mod proxy;
mod run_as;
mod util;

pub use binaries::Binaries;
pub use builder::{Auth, ClusterBuilder};
pub use cluster::Cluster;
pub use endpoint::Endpoint;
pub use error::Error;
pub use proxy::TestProxy;
pub use util::{free_port, init_tracing, quote_ident, quote_literal};
