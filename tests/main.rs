//! The integration test binary: one module per area; the harness is the library of this crate
//! (`tests/src/`), re-exported to the modules by `support`.

mod bundles;
mod bus;
mod cli;
mod config_bounds;
mod content;
mod dashboard;
mod e2e;
mod extraction;
mod full_disk;
mod in_process;
mod ingest;
mod limits;
mod maintenance;
mod metrics;
mod monitor;
mod openapi;
mod packaging;
mod policy;
mod processors;
mod queue_limits;
mod runtime;
mod scraper;
mod sources;
mod store;
mod support;
mod system;
mod timeouts;
mod uploads;
mod web;
