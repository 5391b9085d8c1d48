//! Logging set-up: structured records to journald when systemd collects the daemon's output,
//! a compact human format on stderr otherwise.
//!
//! Under journald, every span and event field is sent as its own journal field with the
//! prefix `F_` and the name upper-cased (tracing-journald's field mapping: `job_id` becomes
//! `F_JOB_ID`, `doc.id` becomes `F_DOC_ID`), so `journalctl F_JOB_ID=42` finds every line
//! logged inside that job's span. The event's `message` becomes the standard `MESSAGE` field.
//! `SYSLOG_IDENTIFIER` is the identifier given to [`init_logging`] (the unit name, such as
//! `sluice-ingest-worker@1`), so `journalctl -t` tells instances apart.
//!
//! Levels map to syslog priorities as a person reading `journalctl -p` expects: error → 3 (err),
//! warn → 4 (warning), info → 6 (info), debug and trace → 7 (debug). tracing-journald's own
//! default is one step more severe for info and debug (info → 5 "notice", debug → 6 "info"),
//! which would make every debug line look like info; hence the explicit mapping.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::RuntimeError;

/// Where log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDestination {
    /// The journal's native protocol, with structured fields.
    Journald,
    /// Human-readable lines on stderr.
    Stderr,
}

/// Device and inode of an open file, as systemd writes them into `JOURNAL_STREAM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    /// `st_dev`.
    pub device: u64,
    /// `st_ino`.
    pub inode: u64,
}

/// The filter used when neither `SLUICE_LOG` nor `RUST_LOG` is set.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// Targets whose info lines are a dependency's chatter, not news about sluice's work:
/// actix-server says "Tokio runtime found; starting in existing Tokio runtime" and "shutting
/// down idle worker" at every start and stop of sluice-web. A filter at info or quieter shows
/// only their warnings and errors; one that asks for debug, or names the target, shows them all.
pub const DEPENDENCY_CHATTER_TARGETS: &[&str] = &["actix_server"];

/// The journald field prefix: a field `job_id` is stored as `F_JOB_ID`.
pub const JOURNAL_FIELD_PREFIX: &str = "F";

/// Installs the global `tracing` subscriber for a daemon.
///
/// Logs go to journald when `JOURNAL_STREAM` names the file that is this process's stderr
/// (systemd sets it when it connects stdout/stderr to the journal; checking the device and
/// inode rather than mere presence avoids sending to journald when a child of a service had its
/// stderr redirected somewhere else), and to stderr otherwise, including when the journal
/// socket cannot be reached. The level filter comes from `SLUICE_LOG`, then `RUST_LOG`, in
/// `EnvFilter` syntax (`info`, `sluice_core=debug,info`); an invalid filter falls back to
/// [`DEFAULT_LOG_FILTER`] with a warning, because a typo in an environment variable should not
/// keep a daemon from starting. Below debug, [`DEPENDENCY_CHATTER_TARGETS`] log warnings and
/// errors only.
///
/// Returns where the logs go; fails only if a global subscriber was already installed.
pub fn init_logging(identifier: &str) -> Result<LogDestination, RuntimeError> {
    let (filter, filter_problem) = filter_from_environment();
    let wanted = choose_log_destination(
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        stderr_identity(),
    );

    let (journald, journald_problem) = match wanted {
        LogDestination::Journald => match journald_layer(identifier) {
            Ok(layer) => (Some(layer), None),
            Err(error) => (None, Some(error)),
        },
        LogDestination::Stderr => (None, None),
    };
    let destination = if journald.is_some() {
        LogDestination::Journald
    } else {
        LogDestination::Stderr
    };
    let stderr = (destination == LogDestination::Stderr).then(|| {
        tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });

    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .try_init()
        .map_err(|error| RuntimeError::LoggingAlreadyInitialised(error.to_string()))?;

    if let Some(problem) = filter_problem {
        tracing::warn!(problem = %problem, default = DEFAULT_LOG_FILTER, "ignoring the invalid log filter {problem}; using {DEFAULT_LOG_FILTER:?}");
    }
    if let Some(error) = journald_problem {
        tracing::warn!(error = %error, "JOURNAL_STREAM is set but the journal socket is unreachable; logging to stderr: {error}");
    }
    Ok(destination)
}

/// Decides between journald and stderr from the `JOURNAL_STREAM` value (`"<dev>:<ino>"`) and
/// the identity of the file open as stderr.
pub fn choose_log_destination(
    journal_stream: Option<&str>,
    stderr: Option<FileIdentity>,
) -> LogDestination {
    let Some((journal, stderr)) = journal_stream.and_then(parse_journal_stream).zip(stderr) else {
        return LogDestination::Stderr;
    };
    if journal == stderr {
        LogDestination::Journald
    } else {
        LogDestination::Stderr
    }
}

/// The device and inode of this process's stderr (`fstat(2)`), if it is open.
pub fn stderr_identity() -> Option<FileIdentity> {
    let descriptor = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let metadata = std::fs::File::from(descriptor).metadata().ok()?;
    Some(FileIdentity {
        device: metadata.dev(),
        inode: metadata.ino(),
    })
}

/// The level → journal priority mapping described in the module documentation.
pub fn journald_priority_mappings() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

fn journald_layer(identifier: &str) -> std::io::Result<tracing_journald::Layer> {
    Ok(tracing_journald::layer()?
        .with_syslog_identifier(identifier.to_owned())
        .with_field_prefix(Some(JOURNAL_FIELD_PREFIX.to_owned()))
        .with_priority_mappings(journald_priority_mappings()))
}

fn parse_journal_stream(value: &str) -> Option<FileIdentity> {
    let (device, inode) = value.trim().split_once(':')?;
    Some(FileIdentity {
        device: device.parse().ok()?,
        inode: inode.parse().ok()?,
    })
}

/// The filter, and a description of what was wrong with the configured one, if anything.
fn filter_from_environment() -> (EnvFilter, Option<String>) {
    let configured = ["SLUICE_LOG", "RUST_LOG"].into_iter().find_map(|name| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
            .map(|value| (name, value))
    });
    let (filter, text, problem) = match configured {
        None => (
            EnvFilter::new(DEFAULT_LOG_FILTER),
            DEFAULT_LOG_FILTER.to_owned(),
            None,
        ),
        Some((name, value)) => match EnvFilter::try_new(&value) {
            Ok(filter) => (filter, value, None),
            Err(error) => (
                EnvFilter::new(DEFAULT_LOG_FILTER),
                DEFAULT_LOG_FILTER.to_owned(),
                Some(format!("{name}={value:?}: {error}")),
            ),
        },
    };
    (quiet_dependency_chatter(filter, &text), problem)
}

/// Adds `target=warn` for each of [`DEPENDENCY_CHATTER_TARGETS`] that `text` does not name,
/// unless the filter lets debug lines through somewhere.
fn quiet_dependency_chatter(filter: EnvFilter, text: &str) -> EnvFilter {
    if filter
        .max_level_hint()
        .is_some_and(|level| level >= LevelFilter::DEBUG)
    {
        return filter;
    }
    DEPENDENCY_CHATTER_TARGETS
        .iter()
        .filter(|target| !text.contains(*target))
        .fold(filter, |filter, target| {
            match format!("{target}=warn").parse() {
                Ok(directive) => filter.add_directive(directive),
                Err(_) => filter,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity_of(file: &std::fs::File) -> FileIdentity {
        let metadata = file.metadata().unwrap();
        FileIdentity {
            device: metadata.dev(),
            inode: metadata.ino(),
        }
    }

    #[test]
    fn journald_only_when_journal_stream_names_our_stderr() {
        let directory = tempfile::tempdir().unwrap();
        let journal = std::fs::File::create(directory.path().join("journal")).unwrap();
        let elsewhere = std::fs::File::create(directory.path().join("elsewhere")).unwrap();
        let journal_identity = identity_of(&journal);
        let value = format!("{}:{}", journal_identity.device, journal_identity.inode);

        assert_eq!(
            choose_log_destination(Some(&value), Some(journal_identity)),
            LogDestination::Journald
        );
        assert_eq!(
            choose_log_destination(Some(&value), Some(identity_of(&elsewhere))),
            LogDestination::Stderr
        );
        assert_eq!(
            choose_log_destination(None, Some(journal_identity)),
            LogDestination::Stderr
        );
        assert_eq!(
            choose_log_destination(Some(&value), None),
            LogDestination::Stderr
        );
        for garbage in ["", "12", "a:b", "1:2:3", ":"] {
            assert_eq!(
                choose_log_destination(Some(garbage), Some(journal_identity)),
                LogDestination::Stderr,
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn stderr_identity_is_that_of_the_open_file() {
        // Whatever the test runner connected stderr to, fstat of it must agree with a stat of
        // the same descriptor through /proc.
        let through_proc = std::fs::metadata("/proc/self/fd/2").unwrap();
        let identity = stderr_identity().unwrap();
        assert_eq!(
            identity,
            FileIdentity {
                device: through_proc.dev(),
                inode: through_proc.ino()
            }
        );
    }

    #[test]
    fn dependency_chatter_is_quiet_below_debug_unless_named() {
        let quieted = |text: &str| {
            quiet_dependency_chatter(EnvFilter::try_new(text).unwrap(), text).to_string()
        };
        assert!(quieted("info").contains("actix_server=warn"));
        assert!(quieted("warn").contains("actix_server=warn"));
        assert!(!quieted("debug").contains("actix_server"));
        assert!(!quieted("info,sluice_web=debug").contains("actix_server"));
        let named = quieted("info,actix_server=info");
        assert!(
            named.contains("actix_server=info") && !named.contains("actix_server=warn"),
            "{named}"
        );
    }

    #[test]
    fn priorities_are_the_syslog_ones_for_each_level() {
        let mappings = journald_priority_mappings();
        assert_eq!(mappings.error as u8, b'3');
        assert_eq!(mappings.warn as u8, b'4');
        assert_eq!(mappings.info as u8, b'6');
        assert_eq!(mappings.debug as u8, b'7');
        assert_eq!(mappings.trace as u8, b'7');
    }
}
