//! The sd_notify side of the runtime: telling systemd that the daemon is ready, what it is
//! doing, that it is reloading or stopping, and that its main loop is still alive.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;

use super::watchdog::{Watchdog, WatchdogTicker};

/// Sends state changes to the service manager over `$NOTIFY_SOCKET`.
///
/// Every method is a no-op when `NOTIFY_SOCKET` is unset, so a daemon started by hand (or by a
/// test that does not care) behaves the same without systemd. Send failures are logged once
/// (a broken notify socket would otherwise flood the log with one warning per watchdog ping) and
/// never stop the daemon: systemd is the one that acts on a missing notification.
#[derive(Debug)]
pub struct Notifier {
    socket_configured: bool,
    watchdog: Option<Watchdog>,
    failure_logged: AtomicBool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_environment() -> Notifier {
        Notifier {
            socket_configured: std::env::var_os("NOTIFY_SOCKET")
                .is_some_and(|path| !path.is_empty()),
            watchdog: Watchdog::from_environment(),
            failure_logged: AtomicBool::new(false),
        }
    }

    /// A notifier that sends nothing, whatever the environment says; for code run outside a
    /// service (unit tests, one-shot commands).
    pub fn disconnected() -> Notifier {
        Notifier {
            socket_configured: false,
            watchdog: None,
            failure_logged: AtomicBool::new(false),
        }
    }

    /// Whether notifications go anywhere (`NOTIFY_SOCKET` is set).
    pub fn is_connected(&self) -> bool {
        self.socket_configured
    }

    /// The watchdog systemd asked for, if any (`WatchdogSec=` on the unit).
    pub fn watchdog(&self) -> Option<Watchdog> {
        self.watchdog
    }

    /// A tick source for the daemon's main loop; it ticks every half watchdog timeout, and
    /// never ticks when the watchdog is off. The loop must answer each tick by calling
    /// [`Notifier::watchdog_ping`] itself; see the module documentation for why.
    pub fn watchdog_ticker(&self) -> WatchdogTicker {
        WatchdogTicker::new(self.watchdog)
    }

    /// `READY=1` together with a `STATUS=` line. Send this only once everything the daemon
    /// needs to do its work is in place (database open, bus name owned).
    pub fn ready(&self, status: &str) {
        let status = single_line(status);
        self.send_logged(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    /// A `STATUS=` line for `systemctl status`; see [`super::StatusLine`] to build one.
    pub fn status(&self, status: &str) {
        let status = single_line(status);
        self.send_logged(&[NotifyState::Status(&status)]);
    }

    /// `STOPPING=1` with a `STATUS=` line saying what the daemon still does before it exits.
    pub fn stopping(&self, status: &str) {
        let status = single_line(status);
        self.send_logged(&[NotifyState::Stopping, NotifyState::Status(&status)]);
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC=` timestamp that `Type=notify-reload` requires
    /// (systemd matches it against the time it sent SIGHUP). Follow it with [`Notifier::ready`].
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(timestamp) => self.send_logged(&[
                NotifyState::Reloading,
                timestamp,
                NotifyState::Status("reloading configuration"),
            ]),
            Err(error) => {
                // Without the timestamp systemd still accepts RELOADING=1 for Type=notify.
                tracing::warn!(error = %error, "cannot read the monotonic clock for MONOTONIC_USEC: {error}");
                self.send_logged(&[
                    NotifyState::Reloading,
                    NotifyState::Status("reloading configuration"),
                ]);
            }
        }
    }

    /// `WATCHDOG=1`. Call it only from the daemon's main loop, in answer to a
    /// [`WatchdogTicker`] tick; does nothing when systemd did not ask for a watchdog.
    pub fn watchdog_ping(&self) {
        if self.watchdog.is_some() {
            self.send_logged(&[NotifyState::Watchdog]);
        }
    }

    /// `ERRNO=` with a `STATUS=` line, for a daemon that is about to exit because of an error
    /// (`systemctl status` then shows the errno next to the failure).
    pub fn failed(&self, errno: u32, status: &str) {
        let status = single_line(status);
        self.send_logged(&[NotifyState::Errno(errno), NotifyState::Status(&status)]);
    }

    /// Sends arbitrary states in one datagram and reports failure to the caller instead of
    /// logging it.
    pub fn send(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        if !self.socket_configured {
            return Ok(());
        }
        sd_notify::notify(states)
    }

    fn send_logged(&self, states: &[NotifyState<'_>]) {
        match self.send(states) {
            Ok(()) => self.failure_logged.store(false, Ordering::Relaxed),
            Err(error) => {
                if !self.failure_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %error, "cannot send a notification to the service manager: {error}");
                }
            }
        }
    }
}

/// The notify protocol is one `KEY=value` per line, so a newline inside a status (an error
/// message from a parser, say) would end the STATUS= line early and let the rest be read as
/// another assignment. Flatten it instead.
fn single_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::single_line;

    #[test]
    fn status_with_newlines_is_flattened_so_it_cannot_inject_assignments() {
        assert_eq!(
            single_line("bad config:\nREADY=1\r\nline 3"),
            "bad config: READY=1 line 3"
        );
        assert_eq!(single_line("plain"), "plain");
    }
}
