//! The integration test binary: one module per area, the harness in `support`.

mod bus;
mod cli;
mod e2e;
mod in_process;
mod ingest;
mod monitor;
mod runtime;
mod scraper;
mod store;
mod support;
mod system;
mod web;
