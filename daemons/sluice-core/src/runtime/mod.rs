//! The service runtime every sluice daemon uses: sd_notify and the watchdog, SIGTERM/SIGHUP,
//! configuration reload, journald logging, `STATUS=` lines and exit codes.
//!
//! # How a daemon uses it
//!
//! A daemon's `main` is [`daemon_main`]: arguments, logging, configuration, the tokio runtime,
//! then the signals, the store and the bus connection opened once and handed to the daemon's
//! `run` as [`Dependencies`] (see [`Daemon`]).
//!
//! Each daemon runs one main loop over a closed `enum Event`. The runtime provides the event
//! sources and the handlers' building blocks; the daemon owns the loop:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use sluice_core::runtime::{ConfigReloader, Notifier, Signal, SignalReceiver, StatusLine, StopDeadline};
//!
//! sluice_core::runtime::init_logging("sluice-example")?;
//! let mut signals = SignalReceiver::install()?; // early: SIGTERM during start-up waits here
//! let notifier = Notifier::from_environment();
//! let mut reloader = ConfigReloader::new(0_u32, || "7".parse::<u32>());
//! // ... open the database, own the bus name ...
//! notifier.ready(&StatusLine::new("idle").queue(0, 0).to_string());
//! let mut watchdog = notifier.watchdog_ticker();
//! loop {
//!     tokio::select! {
//!         () = watchdog.tick() => notifier.watchdog_ping(),
//!         signal = signals.recv() => match signal {
//!             Signal::Reload => { reloader.reload(&notifier); }
//!             Signal::Terminate => {
//!                 notifier.stopping("stopping: finishing the current job");
//!                 let deadline = StopDeadline::after(Duration::from_secs(20));
//!                 if deadline.finish_within(async { /* the current job */ }).await.is_err() {
//!                     // release the job's lease: it goes back to the queue, no attempt used
//!                 }
//!                 return Ok(());
//!             }
//!         },
//!         // ... bus calls, watcher events, job timers ...
//!     }
//! }
//! # }
//! ```
//!
//! # Invariant: **the watchdog is pinged by the loop that does the work, never by a timer**
//!
//! `WATCHDOG=1` tells systemd "the daemon is making progress". The [`WatchdogTicker`] only
//! says *when* a ping is due; the ping itself ([`Notifier::watchdog_ping`]) is sent by the
//! daemon's main loop while handling that tick, between handling its other events. If the loop
//! hangs (a deadlock, a blocking call that never returns, an endless retry), ticks stop being
//! handled, pings stop, and systemd kills and restarts the unit after `WatchdogSec=`. A
//! separate thread or task that pings on its own schedule would keep pinging while the loop is
//! stuck and defeat the watchdog; do not write one. Work that legitimately takes longer than
//! half the watchdog timeout must not run on the loop: hand it to a task or
//! `spawn_blocking` and let the loop keep turning.
//!
//! # Other rules the runtime encodes
//!
//! - `READY=1` is sent once the daemon can do its work (database open, bus name owned), never
//!   earlier: `Type=notify` units count as started at that moment.
//! - On SIGTERM: `STOPPING=1`, take no new work, finish or release the current job before the
//!   [`StopDeadline`], exit 0 ([`DaemonExit::Clean`]).
//! - On SIGHUP: `RELOADING=1`, re-read; an invalid configuration leaves the old one in force
//!   and is reported in `STATUS=` ([`ConfigReloader`]).

mod daemon;
mod logging;
mod notify;
mod reload;
mod signals;
mod status;
mod stop;
mod watchdog;

pub use daemon::{
    CommonArguments, Daemon, Dependencies, RuntimeFlavour, StartError, claimant_on, daemon_main,
    open_another_store, open_store,
};
pub use logging::{
    DEFAULT_LOG_FILTER, FileIdentity, JOURNAL_FIELD_PREFIX, LogDestination, choose_log_destination,
    init_logging, journald_priority_mappings, stderr_identity,
};
pub use notify::Notifier;
pub use reload::{ConfigReloader, ReloadOutcome};
pub use signals::{Signal, SignalReceiver, SignalSender};
pub use status::StatusLine;
pub use stop::{DeadlinePassed, StopDeadline};
pub use watchdog::{Watchdog, WatchdogTicker};

/// Failures of the runtime itself.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A signal handler could not be installed (no tokio runtime, or the OS refused).
    #[error("cannot install the {signal} handler: {source}")]
    SignalHandler {
        /// The signal's name, e.g. `SIGTERM`.
        signal: &'static str,
        /// The error from tokio.
        source: std::io::Error,
    },
    /// `init_logging` was called when a global subscriber already existed.
    #[error("logging is already initialised: {0}")]
    LoggingAlreadyInitialised(String),
}

/// How a daemon process ends, mapped to the exit status systemd sees.
///
/// The codes follow `sysexits.h`, which systemd knows by name (`RestartPreventExitStatus=` can
/// list them so that a daemon with a broken configuration is not restarted in a loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonExit {
    /// Stopped on request, current job finished or released: 0.
    Clean,
    /// Any other failure: 1 (`EXIT_FAILURE`).
    Failure,
    /// Command-line usage error: 64 (`EX_USAGE`).
    Usage,
    /// Something the daemon needs is not there (database cannot be opened, bus unreachable):
    /// 69 (`EX_UNAVAILABLE`).
    Unavailable,
    /// A bug or broken invariant detected at run time: 70 (`EX_SOFTWARE`).
    Software,
    /// The configuration is invalid at start-up: 78 (`EX_CONFIG`).
    Config,
}

impl DaemonExit {
    /// The numeric exit status.
    pub fn code(self) -> u8 {
        match self {
            DaemonExit::Clean => 0,
            DaemonExit::Failure => 1,
            DaemonExit::Usage => 64,
            DaemonExit::Unavailable => 69,
            DaemonExit::Software => 70,
            DaemonExit::Config => 78,
        }
    }
}

impl From<DaemonExit> for std::process::ExitCode {
    fn from(exit: DaemonExit) -> std::process::ExitCode {
        std::process::ExitCode::from(exit.code())
    }
}

impl std::process::Termination for DaemonExit {
    fn report(self) -> std::process::ExitCode {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::DaemonExit;

    #[test]
    fn exit_codes_are_the_sysexits_ones() {
        let codes: Vec<u8> = [
            DaemonExit::Clean,
            DaemonExit::Failure,
            DaemonExit::Usage,
            DaemonExit::Unavailable,
            DaemonExit::Software,
            DaemonExit::Config,
        ]
        .into_iter()
        .map(DaemonExit::code)
        .collect();
        assert_eq!(codes, [0, 1, 64, 69, 70, 78]);
    }
}
