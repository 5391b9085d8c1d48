//! `sluice-ingest-worker --instance N`: the process systemd starts as
//! `sluice-ingest-worker@N.service`; the shared daemon start-up runs
//! [`sluice_ingest_worker::IngestWorkerDaemon`]. Started by a worker with the hidden
//! `--extract` argument, it is instead that worker's extraction child for one file
//! (`sluice_ingest_worker::sandbox`), and with `--launch-processor` the launcher that starts
//! a processor without network (`sluice_ingest_worker::isolation`), decided before anything
//! else starts.

use std::process::{ExitCode, Termination};

use sluice_core::runtime::daemon_main;
use sluice_ingest_worker::extract::{CHILD_ARGUMENT, child_main};
use sluice_ingest_worker::isolation::{LAUNCHER_ARGUMENT, enable_launcher, launcher_main};

fn main() -> ExitCode {
    if std::env::args_os().nth(1).as_deref() == Some(CHILD_ARGUMENT.as_ref()) {
        return child_main();
    }
    if std::env::args_os().nth(1).as_deref() == Some(LAUNCHER_ARGUMENT.as_ref()) {
        return launcher_main();
    }
    enable_launcher();
    daemon_main::<sluice_ingest_worker::IngestWorkerDaemon>().report()
}
