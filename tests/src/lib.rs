//! The harness shared by the integration tests (`tests/main.rs`) and the benchmark driver
//! (`sluice-bench`): real processes, a real private `dbus-daemon`, fixtures, and the systemd
//! container of the system tests. No mock of SQLite, D-Bus or systemd anywhere.

pub mod browser;
pub mod bus;
pub mod container;
pub mod copyright;
pub mod documents;
pub mod fixtures;
pub mod pdf;
pub mod process;
