//! The signals a daemon acts on: SIGTERM and SIGINT ask it to stop, SIGHUP to reload its
//! configuration. They arrive as values on a receiver the main loop selects on.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::RuntimeError;

/// What a received signal asks the daemon to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM (systemd's stop) or SIGINT (Ctrl-C when run by hand).
    Terminate,
    /// SIGHUP (`systemctl reload`, `ExecReload=kill -HUP $MAINPID` or `Type=notify-reload`).
    Reload,
}

/// Receives [`Signal`]s. Creating it replaces the default action of SIGTERM, SIGINT and SIGHUP
/// (killing the process) for the rest of the process's life, so create it early, before the
/// slow parts of start-up, and a signal sent meanwhile waits here until the loop runs.
#[derive(Debug)]
pub struct SignalReceiver {
    source: Source,
}

#[derive(Debug)]
enum Source {
    Process {
        terminate: tokio::signal::unix::Signal,
        interrupt: tokio::signal::unix::Signal,
        hangup: tokio::signal::unix::Signal,
    },
    /// Signals sent by a [`SignalSender`]: a test stops or reloads a daemon's loop it runs
    /// in-process without signalling the whole test process.
    Channel(mpsc::UnboundedReceiver<Signal>),
}

/// Sends [`Signal`]s to the [`SignalReceiver`] made with it by [`SignalReceiver::channel`].
#[derive(Debug, Clone)]
pub struct SignalSender {
    sender: mpsc::UnboundedSender<Signal>,
}

impl SignalSender {
    /// Delivers `signal` as if the process had received it; a receiver that is gone (the
    /// daemon already stopped) makes this a no-op.
    pub fn send(&self, signal: Signal) {
        let _ = self.sender.send(signal);
    }
}

impl SignalReceiver {
    /// Installs the handlers; must be called inside a tokio runtime.
    pub fn install() -> Result<SignalReceiver, RuntimeError> {
        let install = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| RuntimeError::SignalHandler {
                signal: name,
                source,
            })
        };
        Ok(SignalReceiver {
            source: Source::Process {
                terminate: install(SignalKind::terminate(), "SIGTERM")?,
                interrupt: install(SignalKind::interrupt(), "SIGINT")?,
                hangup: install(SignalKind::hangup(), "SIGHUP")?,
            },
        })
    }

    /// A receiver fed by the returned sender instead of the process's signals, for running a
    /// daemon's loop inside a test.
    pub fn channel() -> (SignalSender, SignalReceiver) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (
            SignalSender { sender },
            SignalReceiver {
                source: Source::Channel(receiver),
            },
        )
    }

    /// Waits for the next signal. Several deliveries of the same signal between two calls
    /// count as one, which is what both actions want (stopping twice or reloading twice in a
    /// row achieves nothing more).
    pub async fn recv(&mut self) -> Signal {
        // A `None` from a stream means the runtime is shutting down; that stream then never
        // yields again, so only the others are waited on.
        match &mut self.source {
            Source::Process {
                terminate,
                interrupt,
                hangup,
            } => tokio::select! {
                Some(()) = terminate.recv() => Signal::Terminate,
                Some(()) = interrupt.recv() => Signal::Terminate,
                Some(()) = hangup.recv() => Signal::Reload,
                else => std::future::pending().await,
            },
            // All senders gone: like a process nobody signals again.
            Source::Channel(receiver) => match receiver.recv().await {
                Some(signal) => signal,
                None => std::future::pending().await,
            },
        }
    }
}
