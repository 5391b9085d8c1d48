//! The `sluice-scraper` binary: the shared daemon start-up runs
//! [`sluice_scraper::ScraperDaemon`].

use sluice_core::runtime::{DaemonExit, daemon_main};

fn main() -> DaemonExit {
    daemon_main::<sluice_scraper::ScraperDaemon>()
}
