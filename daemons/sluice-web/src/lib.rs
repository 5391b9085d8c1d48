//! sluice-web: the suite's HTTP API (actix-web) under a configurable base path, Server-Sent
//! Events fed from the D-Bus signals, and the suite-wide `org.sluice.Web1` object
//! (`CancelJob`, `RetryJob`). [`app`] builds the HTTP application from an [`AppState`] so tests
//! can drive it without a socket; [`run`] is the daemon.

mod address;
mod answers;
mod api;
mod app;
mod bundles;
mod connections;
mod content;
mod daemon;
mod dashboard;
mod emitters;
mod error;
mod events;
mod job_objects;
mod job_stream;
mod metrics;
mod openapi;
mod state;
mod status;
/// `sluice-web`'s entry point (the suite's one program calls it when run under that name): the shared
/// daemon start-up runs [`WebDaemon`] and turns the outcome into an exit status systemd
/// understands.
pub fn main() -> std::process::ExitCode {
    use std::process::Termination;
    sluice_core::runtime::daemon_main::<WebDaemon>().report()
}

#[cfg(test)]
mod tests;
mod upload;
mod waiters;

pub use app::app;
pub use daemon::{Arguments, WebDaemon, WebError, run};
pub use emitters::{NameOwners, TrustedSignals, emitter_name};
pub use error::ApiError;
pub use events::{BusEvent, EventStreamSlots, FORWARDED_SIGNALS, KEEP_ALIVE_INTERVAL, SseFrame};
pub use state::{
    AccessRules, Announcement, ApiToken, AppState, BusLink, MINIMUM_TOKEN_LENGTH, Settings,
    StorePool, TokenCredentials, TokenError,
};
