//! sluice-core: everything the sluice daemons share — configuration, the SQLite store that is
//! both the status database and the durable job queue, the D-Bus interfaces with their
//! proxies, and the service runtime (sd_notify, watchdog, signals, journald logging).
//!
//! Daemon crates depend on this crate and never on each other; only this crate runs SQL.

pub mod bus;
pub mod config;
pub mod ingest;
pub mod runtime;
pub mod store;
