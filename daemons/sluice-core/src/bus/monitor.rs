//! `org.sluice.Monitor1`: the folder monitor's object — rescans on request, reports detected
//! files with the ingest jobs queued for them. Paths are byte strings (`bytestring.rs`).

use std::path::PathBuf;

use tokio::sync::mpsc;
use zbus::Connection;
use zbus::message::Header;

use crate::policy::resolve_rescan_path;

use super::bytestring::{bytestring_to_path, paths_to_bytestrings};

use super::caller::Action;
use super::object::{Published, published_object};
use super::{BusError, BusSetupError, CallerPolicy, DaemonState, Reply, forward};

pub const MONITOR_BUS_NAME: &str = "org.sluice.Monitor1";
pub const MONITOR_OBJECT_PATH: &str = "/org/sluice/Monitor1";

/// What the monitor's main loop is asked to do.
#[derive(Debug)]
pub enum MonitorCommand {
    /// Reconcile `path` (inside a watched folder), or every watched folder when `None`, against
    /// the database. The reply is the number of watched folders queued for reconciliation.
    Rescan {
        path: Option<PathBuf>,
        reply: Reply<u64>,
    },
}

published_object! {
    /// The monitor's state as its properties show it; the daemon publishes changes through
    /// [`MonitorService::update_status`].
    status MonitorStatus;
    /// The object served at [`MONITOR_OBJECT_PATH`]. Build it through [`MonitorService::start`].
    interface MonitorInterface for MonitorCommand;
    attributes (
        name = "org.sluice.Monitor1",
        proxy(
            default_service = "org.sluice.Monitor1",
            default_path = "/org/sluice/Monitor1",
            async_name = "MonitorProxy"
        )
    );
    /// What the monitor is doing, in one line.
    status_property;
    properties {
        /// The watched folders, each a path as bytes with a trailing NUL.
        watched_paths: Vec<PathBuf> => Vec<Vec<u8>> = paths_to_bytestrings;
        /// Watched folders that are polled because their file system has no inotify, as
        /// `WatchedPaths` gives them.
        polling_paths: Vec<PathBuf> => Vec<Vec<u8>> = paths_to_bytestrings;
        /// The store's durability setting, `full` or `normal`.
        durability: String => String = Clone::clone;
        /// Files detected since the monitor started.
        files_detected: u64 => u64 = Clone::clone;
        /// Ingest jobs queued since the monitor started (a held file counts when queued).
        jobs_queued: u64 => u64 = Clone::clone;
        /// Files recorded but not yet queued, because the ingest queue is at `[ingest]
        /// max_pending`; they are queued, oldest first, as it drains.
        files_held: u64 => u64 = Clone::clone;
        /// Times events were lost since the monitor started (an inotify queue overflow, or an
        /// event without a path), each answered by reconciling the folder.
        watch_overflows: u64 => u64 = Clone::clone;
        /// Reconcile walks finished since the monitor started (at start, after an overflow,
        /// periodic, for folders created or moved in).
        reconciles: u64 => u64 = Clone::clone;
    }
    counters {
        /// Watcher events handled since the monitor started (inotify or polling), each a
        /// file or folder that changed.
        watch_events: u64 => u64 = Clone::clone;
    }
    members {
        /// Reconcile a watched folder (or a folder inside one) with the database now; `path` is
        /// its bytes, with or without a trailing NUL, and an empty path means every watched
        /// folder. Returns how many watched folders were queued.
        #[zbus(out_args("folders_queued"))]
        async fn rescan(
            &self,
            path: Vec<u8>,
            #[zbus(header)] header: Header<'_>,
            #[zbus(connection)] connection: &Connection,
        ) -> Result<u64, BusError> {
            self.policy.authorize(connection, &header, "Rescan", Action::ManageJobs).await?;
            let watched_paths = self.status.borrow().watched_paths.clone();
            let path = bytestring_to_path("path", &path)?;
            let path = resolve_rescan_path(&path, &watched_paths)?;
            forward(&self.commands, |reply| MonitorCommand::Rescan {
                path,
                reply,
            })
            .await
        }
    }
    signals {
        /// A file became ready in a watched folder and was recorded, and its `ingest` job
        /// `job_id` was queued (this is the monitor's only announcement of that job: it sends
        /// no `JobQueued`). `path` is the file's bytes with a trailing NUL. A held file is
        /// announced when it is queued, not before.
        pub fn file_detected(path: &[u8], file_id: u64, job_id: u64);
    }
}

impl MonitorStatus {
    /// The status before the first scan: nothing detected yet.
    pub fn starting(watched_paths: Vec<PathBuf>, durability: &str) -> MonitorStatus {
        MonitorStatus {
            state: DaemonState::Starting,
            status: "starting".into(),
            last_error: String::new(),
            watched_paths,
            polling_paths: Vec::new(),
            durability: durability.to_owned(),
            files_detected: 0,
            jobs_queued: 0,
            files_held: 0,
            watch_events: 0,
            watch_overflows: 0,
            reconciles: 0,
        }
    }
}

/// The daemon's side of the monitor object: publish status, emit signals.
pub type MonitorService = Published<MonitorInterface>;

impl MonitorService {
    /// Serves the object and owns [`MONITOR_BUS_NAME`]; the receiver yields the commands the
    /// daemon's main loop must answer.
    pub async fn start(
        connection: &Connection,
        policy: CallerPolicy,
        initial_status: MonitorStatus,
    ) -> Result<(MonitorService, mpsc::Receiver<MonitorCommand>), BusSetupError> {
        Published::serve(
            connection,
            MONITOR_OBJECT_PATH,
            MONITOR_BUS_NAME,
            policy,
            initial_status,
        )
        .await
    }
}
