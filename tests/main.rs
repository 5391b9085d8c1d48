//! The integration test binary: one module per area, the harness in `support`.

mod runtime;
mod store;
mod support;
