//! `sluice-ingest-worker --instance N`: the process systemd starts as
//! `sluice-ingest-worker@N.service`; the shared daemon start-up runs
//! [`sluice_ingest_worker::IngestWorkerDaemon`].

use sluice_core::runtime::{DaemonExit, daemon_main};

fn main() -> DaemonExit {
    daemon_main::<sluice_ingest_worker::IngestWorkerDaemon>()
}
