//! sluice's D-Bus interfaces, defined once here: the objects the daemons serve and, generated
//! from the same definitions, the proxies the CLI and the web use.
//!
//! | bus name | object path | interface |
//! |---|---|---|
//! | `org.sluice.Monitor1` | `/org/sluice/Monitor1` | `org.sluice.Monitor1` |
//! | `org.sluice.Scraper1` | `/org/sluice/Scraper1` | `org.sluice.Scraper1` |
//! | `org.sluice.Web1` | `/org/sluice/Web1` | `org.sluice.Web1` |
//! | `org.sluice.Ingest1.Worker<instance>` | `/org/sluice/Ingest1/<instance>` | `org.sluice.Ingest1` |
//! | `org.sluice.Web1` | `/org/sluice/job/<id>`, one per running job | `org.sluice.Job1` |
//!
//! Every object is thin: a method checks the caller ([`CallerPolicy`]), validates its
//! arguments, then sends a command with a oneshot reply to the daemon's main loop, which owns
//! the logic. State is properties read from a snapshot the daemon publishes through its
//! service handle ([`Published::update_status`]), which emits one `PropertiesChanged` carrying
//! every property that changed with its new value. Signals only say "look now"; the database is
//! the truth. Each object's status, properties and signals are declared once, in one
//! `published_object!` invocation (`object.rs`), so adding a property or a signal is one edit.
//!
//! Cancelling and retrying *any* job is `org.sluice.Web1.CancelJob` / `RetryJob`: the web
//! daemon is the suite's always-on API process and applies the change in the store, where
//! every worker sees it at its next heartbeat. `org.sluice.Ingest1.CancelJob` is the direct,
//! immediate stop of the job one worker is running now, and `org.sluice.Scraper1.CancelDownload`
//! the same for a download.
//!
//! Names are requested with `DO_NOT_QUEUE` and without `ALLOW_REPLACEMENT`, so a second
//! process can neither queue for nor take over a name that is owned.

mod bytestring;
mod caller;
mod departures;
mod error;
mod ingest;
mod jobs;
mod monitor;
mod object;
mod peers;
mod rate_limit;
mod scraper;
mod units;
pub mod validate;
mod web;

use std::fmt;

use tokio::sync::{mpsc, oneshot};
use zbus::Connection;
use zbus::fdo::RequestNameFlags;
use zbus::object_server::{Interface, InterfaceRef};

pub use bytestring::{
    bytestring_to_path, bytestring_to_path_lossy, path_to_bytestring, paths_to_bytestrings,
};
pub use caller::{
    Action, CallerPolicy, FORWARDING_GROUP, FORWARDING_UNIT, SLUICE_GROUP, lookup_group_id,
};
pub use departures::{Departure, connection_identity, holds_leases, watch_departures};
pub use error::BusError;
pub use ingest::{
    INGEST_INTERFACE, IngestCommand, IngestInterface, IngestProxy, IngestService, IngestStatus,
    ingest_bus_name, ingest_object_path, ingest_proxy, sanitize_instance,
};
pub use jobs::{
    JOB_INTERFACE, JOBS_OBJECT_PATH, JobChanges, JobObject, JobObjects, JobProxy, MAX_JOB_OBJECTS,
    RunningJob, job_object_path, worker_object_path,
};
pub use monitor::{
    MONITOR_BUS_NAME, MONITOR_OBJECT_PATH, MonitorCommand, MonitorInterface, MonitorProxy,
    MonitorService, MonitorStatus,
};
pub use object::Published;
pub use peers::{SuiteDaemon, daemon_object, daemon_properties, name_has_owner, suite_daemons};
pub use rate_limit::{DEFAULT_PROGRESS_INTERVAL, ProgressRateLimiter};
pub use scraper::{
    DownloadOptions, SCRAPER_BUS_NAME, SCRAPER_OBJECT_PATH, ScraperCommand, ScraperInterface,
    ScraperProxy, ScraperService, ScraperStatus, SourceState, SourceStates, bundle_request,
};
pub use units::{UnitStatus, read_unit_status};
pub use web::{
    WEB_BUS_NAME, WEB_OBJECT_PATH, WebCommand, WebInterface, WebProxy, WebService, WebStatus,
};

/// How many commands may wait for a daemon's main loop before callers get `Busy`.
pub const COMMAND_QUEUE_DEPTH: usize = 64;

/// The reply half a command carries back from the main loop to the waiting D-Bus call.
pub type Reply<T> = oneshot::Sender<Result<T, BusError>>;

/// Which bus to connect to: the system bus in production, the session bus or a private bus
/// (by address) for development and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusAddress {
    System,
    Session,
    /// A D-Bus address such as `unix:path=/tmp/bus/socket`.
    Address(String),
}

impl fmt::Display for BusAddress {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusAddress::System => formatter.write_str("system bus"),
            BusAddress::Session => formatter.write_str("session bus"),
            BusAddress::Address(address) => write!(formatter, "bus at {address}"),
        }
    }
}

impl std::str::FromStr for BusAddress {
    type Err = BusSetupError;

    /// `system`, `session`, or a D-Bus address such as `unix:path=/run/sluice-test/bus`; the
    /// form the config file's `[bus] address` key takes.
    fn from_str(text: &str) -> Result<BusAddress, BusSetupError> {
        match text {
            "system" => Ok(BusAddress::System),
            "session" => Ok(BusAddress::Session),
            address => match zbus::Address::try_from(address) {
                Ok(_) => Ok(BusAddress::Address(address.to_owned())),
                Err(error) => Err(BusSetupError::InvalidAddress {
                    address: address.to_owned(),
                    reason: error.to_string(),
                }),
            },
        }
    }
}

/// Connects to the chosen bus.
pub async fn connect(address: &BusAddress) -> zbus::Result<Connection> {
    let builder = match address {
        BusAddress::System => zbus::connection::Builder::system(),
        BusAddress::Session => zbus::connection::Builder::session(),
        BusAddress::Address(address) => zbus::connection::Builder::address(address.as_str()),
    };
    builder.build().await
}

/// Failures while putting an object on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusSetupError {
    #[error(
        "the bus name {name} is already owned by another process; is another instance running?"
    )]
    NameTaken { name: String },
    #[error("cannot request the bus name {name}: {source}")]
    RequestName {
        name: String,
        #[source]
        source: zbus::Error,
    },
    #[error("cannot serve the object {path}: {source}")]
    Serve {
        path: String,
        #[source]
        source: zbus::Error,
    },
    #[error("the object {path} is already served on this connection")]
    PathInUse { path: String },
    #[error(
        "invalid bus address {address:?}: {reason}; use system, session or a D-Bus address \
         such as unix:path=/run/bus"
    )]
    InvalidAddress { address: String, reason: String },
    #[error("invalid ingest worker instance {instance:?}: {reason}")]
    InvalidInstance { instance: String, reason: String },
}

/// Serves `interface` at `path`, then requests `name` with `DO_NOT_QUEUE` (and without
/// allowing replacement), in that order so no call can arrive before the object exists.
///
/// If the name is taken the object is removed again and [`BusSetupError::NameTaken`] is
/// returned; the caller should exit rather than run without its name.
pub async fn serve_and_own_name<I: Interface>(
    connection: &Connection,
    path: &str,
    name: &str,
    interface: I,
) -> Result<InterfaceRef<I>, BusSetupError> {
    let object_server = connection.object_server();
    let added = object_server
        .at(path, interface)
        .await
        .map_err(|source| BusSetupError::Serve {
            path: path.to_owned(),
            source,
        })?;
    if added.is_some() {
        return Err(BusSetupError::PathInUse {
            path: path.to_owned(),
        });
    }
    let interface_ref = object_server
        .interface::<_, I>(path)
        .await
        .map_err(|source| BusSetupError::Serve {
            path: path.to_owned(),
            source,
        })?;
    match connection
        .request_name_with_flags(name, RequestNameFlags::DO_NOT_QUEUE)
        .await
    {
        Ok(_) => Ok(interface_ref),
        Err(error) => {
            // Without the name nobody can reach the object; take it down so a retry can serve
            // it again on the same connection.
            let _ = object_server.remove::<I, _>(path).await;
            match error {
                zbus::Error::NameTaken => Err(BusSetupError::NameTaken {
                    name: name.to_owned(),
                }),
                source => Err(BusSetupError::RequestName {
                    name: name.to_owned(),
                    source,
                }),
            }
        }
    }
}

/// The lifecycle state every daemon shows in its `State` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonState {
    Starting,
    Running,
    Reloading,
    Stopping,
}

impl DaemonState {
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonState::Starting => "starting",
            DaemonState::Running => "running",
            DaemonState::Reloading => "reloading",
            DaemonState::Stopping => "stopping",
        }
    }
}

/// Sends a command to the daemon's main loop and waits for its reply.
///
/// A full queue or a stopped loop become `Busy` right away instead of blocking the bus task.
async fn forward<Command, Output>(
    commands: &mpsc::Sender<Command>,
    make_command: impl FnOnce(Reply<Output>) -> Command,
) -> Result<Output, BusError> {
    let (reply, reply_receiver) = oneshot::channel();
    commands
        .try_send(make_command(reply))
        .map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => {
                BusError::Busy("too many requests are waiting; try again shortly".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                BusError::Busy("the daemon is shutting down".into())
            }
        })?;
    reply_receiver.await.unwrap_or_else(|_| {
        Err(BusError::Internal(
            "the daemon dropped the request without answering".into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_addresses_parse_from_their_config_form() {
        assert_eq!("system".parse::<BusAddress>().unwrap(), BusAddress::System);
        assert_eq!(
            "session".parse::<BusAddress>().unwrap(),
            BusAddress::Session
        );
        assert_eq!(
            "unix:path=/run/sluice/bus".parse::<BusAddress>().unwrap(),
            BusAddress::Address("unix:path=/run/sluice/bus".into())
        );
        for bad in ["", "System", "/run/bus", "unix:nonsense=1"] {
            assert!(
                matches!(
                    bad.parse::<BusAddress>(),
                    Err(BusSetupError::InvalidAddress { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn forward_reports_a_stopped_or_silent_main_loop() {
        let (sender, receiver) = mpsc::channel::<Reply<u64>>(1);
        drop(receiver);
        let result = forward(&sender, |reply| reply).await;
        assert!(matches!(result, Err(BusError::Busy(_))), "{result:?}");

        let (sender, mut receiver) = mpsc::channel::<Reply<u64>>(1);
        let answering = tokio::spawn(async move {
            // The first request is answered, the second dropped unanswered.
            let first = receiver.recv().await.unwrap();
            first.send(Ok(7)).unwrap();
            drop(receiver.recv().await.unwrap());
        });
        assert_eq!(forward(&sender, |reply| reply).await.unwrap(), 7);
        let result = forward(&sender, |reply| reply).await;
        assert!(matches!(result, Err(BusError::Internal(_))), "{result:?}");
        answering.await.unwrap();
    }

    #[test]
    fn a_full_queue_is_busy_not_a_blocked_bus_task() {
        let (sender, _receiver) = mpsc::channel::<Reply<u64>>(1);
        let (first_reply, _first_answer) = oneshot::channel();
        sender.try_send(first_reply).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let result = runtime.block_on(forward(&sender, |reply| reply));
        assert!(matches!(result, Err(BusError::Busy(_))), "{result:?}");
    }
}
