//! sluice-monitor's entry point: the shared daemon start-up runs [`sluice_monitor::MonitorDaemon`].

use sluice_core::runtime::{DaemonExit, daemon_main};

fn main() -> DaemonExit {
    daemon_main::<sluice_monitor::MonitorDaemon>()
}
