//! End-to-end tests: real PostgreSQL clusters, the real proxy in-process,
//! real clients. One test binary, one module per area.

mod testkit;
