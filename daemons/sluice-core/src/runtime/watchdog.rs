//! The watchdog timing: how long systemd waits for `WATCHDOG=1`, and the tick that tells the
//! daemon's main loop it is time to send the next one.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};

/// The watchdog systemd set up for this process (`WatchdogSec=` on the unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    timeout: Duration,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC` and `WATCHDOG_PID` (see `sd_watchdog_enabled(3)`): `None` when the
    /// watchdog is off or the variables were meant for another process (a parent that passed
    /// its environment on).
    pub fn from_environment() -> Option<Watchdog> {
        sd_notify::watchdog_enabled()
            .filter(|timeout| !timeout.is_zero())
            .map(|timeout| Watchdog { timeout })
    }

    /// A watchdog with the given timeout, for a daemon that learns it some other way.
    pub fn with_timeout(timeout: Duration) -> Watchdog {
        Watchdog { timeout }
    }

    /// How long systemd waits between pings before it kills the service.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How often to ping: half the timeout, as `sd_watchdog_enabled(3)` recommends, so that one
    /// late ping does not get the service killed.
    pub fn ping_interval(&self) -> Duration {
        self.timeout / 2
    }
}

/// Ticks every [`Watchdog::ping_interval`]; the main loop selects on [`WatchdogTicker::tick`]
/// next to its other event sources and answers each tick with `Notifier::watchdog_ping`.
///
/// It deliberately does not ping by itself: a tick is only turned into `WATCHDOG=1` when the
/// loop gets round to handling it, so a loop that hangs stops the pings.
#[derive(Debug)]
pub struct WatchdogTicker {
    interval: Option<Interval>,
}

impl WatchdogTicker {
    /// A ticker for `watchdog`; with `None` it never ticks.
    pub fn new(watchdog: Option<Watchdog>) -> WatchdogTicker {
        let interval = watchdog.map(|watchdog| {
            let mut interval = tokio::time::interval(watchdog.ping_interval());
            // After a stall, one ping is the truth ("alive again"); a burst of catch-up pings
            // would only add noise.
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        WatchdogTicker { interval }
    }

    /// Waits for the next tick; the first one comes at once, so the loop pings as soon as it
    /// starts. Pending forever when the watchdog is off, which makes it safe to leave in a
    /// `select!` unconditionally.
    pub async fn tick(&mut self) {
        match &mut self.interval {
            Some(interval) => {
                interval.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_interval_is_half_the_timeout() {
        let watchdog = Watchdog::with_timeout(Duration::from_millis(400));
        assert_eq!(watchdog.ping_interval(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn ticker_ticks_at_the_ping_interval() {
        let mut ticker = WatchdogTicker::new(Some(Watchdog::with_timeout(Duration::from_secs(10))));
        let start = tokio::time::Instant::now();
        ticker.tick().await;
        assert_eq!(start.elapsed(), Duration::ZERO, "first tick is immediate");
        ticker.tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        ticker.tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_ticker_never_ticks() {
        let mut ticker = WatchdogTicker::new(None);
        let ticked = tokio::time::timeout(Duration::from_secs(3600), ticker.tick()).await;
        assert!(ticked.is_err());
    }
}
