//! End-to-end tests: real PostgreSQL clusters, the real proxy in-process,
//! real clients. One test binary, one module per area.

mod testkit;

mod admin;
mod auth;
mod backend;
mod bad_input;
mod cancel;
mod capture;
mod capture_kill;
mod capture_lifecycle;
mod capture_random;
mod catalog;
mod catchup;
mod catchup_kill;
mod clone;
mod copy;
mod cutover;
mod deep_sql;
mod drivers;
mod escapes;
mod gate;
mod lifecycle;
mod limits;
mod mapping;
mod migrations;
mod moves;
mod notify;
mod oracle;
mod protocol;
mod retention;
mod sequences;
mod startup;
mod support;
mod tls;
mod tools;
mod types;
mod verify;
