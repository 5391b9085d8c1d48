//! Reloading the configuration on SIGHUP without ever ending up with none: a new
//! configuration replaces the old one only once it has been read and validated in full.

use std::fmt::Display;

use super::Notifier;

/// Holds the configuration in force and the function that reads a fresh one.
///
/// `reread` does all the reading and validation (file IO, parsing, checks) and returns either a
/// complete configuration or an error whose `Display` says what is wrong in words a person can
/// act on; that text goes to the journal and to `systemctl status`.
pub struct ConfigReloader<C, F> {
    current: C,
    reread: F,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new configuration is in force (read it with [`ConfigReloader::current`]); the
    /// caller applies whatever depends on it (new watch list, new limits).
    Applied,
    /// The new configuration was rejected and the old one stays in force. `status` is the line
    /// already sent as `STATUS=`; a daemon that sends its own status lines later should keep
    /// showing it, e.g. as the "last error" of a [`super::StatusLine`].
    KeptPrevious {
        /// Why the new configuration was rejected.
        reason: String,
        /// `running on previous configuration: reload failed: <reason>`.
        status: String,
    },
}

impl<C, F, E> ConfigReloader<C, F>
where
    F: FnMut() -> Result<C, E>,
    E: Display,
{
    /// Starts with the configuration the daemon was started with.
    pub fn new(initial: C, reread: F) -> ConfigReloader<C, F> {
        ConfigReloader {
            current: initial,
            reread,
        }
    }

    /// The configuration in force.
    pub fn current(&self) -> &C {
        &self.current
    }

    /// Reloads: `RELOADING=1`, read the new configuration, then `READY=1` whatever happened,
    /// because the daemon keeps running either way. On success the new configuration replaces
    /// the old one and `STATUS=` says so; on failure the old one stays, the reason is logged
    /// (once, here) and `STATUS=` says the daemon runs on its previous configuration.
    pub fn reload(&mut self, notifier: &Notifier) -> ReloadOutcome {
        notifier.reloading();
        match (self.reread)() {
            Ok(new_configuration) => {
                self.current = new_configuration;
                tracing::info!("configuration reloaded");
                notifier.ready("running; configuration reloaded");
                ReloadOutcome::Applied
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(error = %reason, "reload failed; keeping the previous configuration: {reason}");
                let status = format!("running on previous configuration: reload failed: {reason}");
                notifier.ready(&status);
                ReloadOutcome::KeptPrevious { reason, status }
            }
        }
    }
}

impl<C: std::fmt::Debug, F> std::fmt::Debug for ConfigReloader<C, F> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ConfigReloader")
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reload_keeps_the_previous_configuration_and_says_why() {
        let mut next = vec![
            Err("line 3: unknown key `colour`"),
            Ok(7),
            Err("empty file"),
        ];
        next.reverse();
        let mut reloader = ConfigReloader::new(1, || next.pop().expect("reread called too often"));
        let notifier = Notifier::disconnected();

        let outcome = reloader.reload(&notifier);
        assert_eq!(
            outcome,
            ReloadOutcome::KeptPrevious {
                reason: "line 3: unknown key `colour`".into(),
                status:
                    "running on previous configuration: reload failed: line 3: unknown key `colour`"
                        .into(),
            }
        );
        assert_eq!(*reloader.current(), 1);

        assert_eq!(reloader.reload(&notifier), ReloadOutcome::Applied);
        assert_eq!(*reloader.current(), 7);

        assert!(matches!(
            reloader.reload(&notifier),
            ReloadOutcome::KeptPrevious { .. }
        ));
        assert_eq!(
            *reloader.current(),
            7,
            "a failure after a success keeps the newer one"
        );
    }
}
