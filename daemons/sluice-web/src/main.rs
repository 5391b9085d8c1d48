//! The `sluice-web` binary: the shared daemon start-up runs [`sluice_web::WebDaemon`] and
//! turns the outcome into an exit status systemd understands.

use sluice_core::runtime::{DaemonExit, daemon_main};

fn main() -> DaemonExit {
    daemon_main::<sluice_web::WebDaemon>()
}
