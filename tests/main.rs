//! The integration test binary: one module per area, the harness in `support`.

mod bus;
mod ingest;
mod runtime;
mod store;
mod support;
