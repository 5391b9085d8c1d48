//! `org.sluice.Monitor1`: the folder monitor's object — rescans on request, reports detected
//! files and the ingest jobs queued for them.

use std::path::PathBuf;

use tokio::sync::{mpsc, watch};
use zbus::Connection;
use zbus::interface;
use zbus::message::Header;
use zbus::object_server::{InterfaceRef, SignalEmitter};

use crate::policy::resolve_rescan_path;

use super::{
    BusError, BusSetupError, COMMAND_QUEUE_DEPTH, CallerPolicy, DaemonState, Reply, forward,
    serve_and_own_name,
};

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

/// The monitor's state as its properties show it; the daemon publishes changes through
/// [`MonitorService::update_status`].
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorStatus {
    pub state: DaemonState,
    /// One line a person can read, the same as the `STATUS=` sent to systemd.
    pub status: String,
    /// The last error, empty when there was none.
    pub last_error: String,
    pub watched_paths: Vec<PathBuf>,
    /// Watched folders on file systems without inotify, which are polled instead.
    pub polling_paths: Vec<PathBuf>,
    /// The store's durability setting (`full` or `normal`).
    pub durability: String,
    pub files_detected: u64,
    pub jobs_queued: u64,
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
        }
    }
}

/// The object served at [`MONITOR_OBJECT_PATH`]. Build it through [`MonitorService::start`].
#[derive(Debug)]
pub struct MonitorInterface {
    commands: mpsc::Sender<MonitorCommand>,
    status: watch::Receiver<MonitorStatus>,
    policy: CallerPolicy,
}

#[interface(
    name = "org.sluice.Monitor1",
    proxy(
        default_service = "org.sluice.Monitor1",
        default_path = "/org/sluice/Monitor1",
        async_name = "MonitorProxy"
    )
)]
impl MonitorInterface {
    /// Reconcile a watched folder (or a folder inside one) with the database now; an empty
    /// path means every watched folder. Returns how many watched folders were queued.
    #[zbus(out_args("folders_queued"))]
    async fn rescan(
        &self,
        path: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<u64, BusError> {
        self.policy.authorize(connection, &header, "Rescan").await?;
        let watched_paths = self.status.borrow().watched_paths.clone();
        let path = resolve_rescan_path(path, &watched_paths)?;
        forward(&self.commands, |reply| MonitorCommand::Rescan {
            path,
            reply,
        })
        .await
    }

    /// A file became ready in a watched folder and was recorded; `job_id` is its ingest job.
    #[zbus(signal)]
    async fn file_detected(
        emitter: &SignalEmitter<'_>,
        path: &str,
        file_id: u64,
        job_id: u64,
    ) -> zbus::Result<()>;

    /// A job was added to the queue.
    #[zbus(signal)]
    async fn job_queued(emitter: &SignalEmitter<'_>, kind: &str, job_id: u64) -> zbus::Result<()>;

    /// `starting`, `running`, `reloading` or `stopping`.
    #[zbus(property)]
    fn state(&self) -> String {
        self.status.borrow().state.as_str().to_owned()
    }

    /// What the monitor is doing, in one line.
    #[zbus(property)]
    fn status(&self) -> String {
        self.status.borrow().status.clone()
    }

    /// The last error, empty when there was none.
    #[zbus(property)]
    fn last_error(&self) -> String {
        self.status.borrow().last_error.clone()
    }

    /// The watched folders.
    #[zbus(property)]
    fn watched_paths(&self) -> Vec<String> {
        paths_to_strings(&self.status.borrow().watched_paths)
    }

    /// Watched folders that are polled because their file system has no inotify.
    #[zbus(property)]
    fn polling_paths(&self) -> Vec<String> {
        paths_to_strings(&self.status.borrow().polling_paths)
    }

    /// The store's durability setting, `full` or `normal`.
    #[zbus(property)]
    fn durability(&self) -> String {
        self.status.borrow().durability.clone()
    }

    /// Files detected since the monitor started.
    #[zbus(property)]
    fn files_detected(&self) -> u64 {
        self.status.borrow().files_detected
    }

    /// Ingest jobs queued since the monitor started.
    #[zbus(property)]
    fn jobs_queued(&self) -> u64 {
        self.status.borrow().jobs_queued
    }
}

/// The daemon's side of the monitor object: publish status, emit signals.
pub struct MonitorService {
    interface: InterfaceRef<MonitorInterface>,
    status: watch::Sender<MonitorStatus>,
}

impl std::fmt::Debug for MonitorService {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `InterfaceRef` has no `Debug`; the object path is what identifies the service.
        formatter
            .debug_struct("MonitorService")
            .field("path", self.interface.signal_emitter().path())
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl MonitorService {
    /// Serves the object and owns [`MONITOR_BUS_NAME`]; the receiver yields the commands the
    /// daemon's main loop must answer.
    pub async fn start(
        connection: &Connection,
        policy: CallerPolicy,
        initial_status: MonitorStatus,
    ) -> Result<(MonitorService, mpsc::Receiver<MonitorCommand>), BusSetupError> {
        let (command_sender, command_receiver) = mpsc::channel(COMMAND_QUEUE_DEPTH);
        let (status_sender, status_receiver) = watch::channel(initial_status);
        let interface = MonitorInterface {
            commands: command_sender,
            status: status_receiver,
            policy,
        };
        let interface =
            serve_and_own_name(connection, MONITOR_OBJECT_PATH, MONITOR_BUS_NAME, interface)
                .await?;
        let service = MonitorService {
            interface,
            status: status_sender,
        };
        Ok((service, command_receiver))
    }

    /// The status as the properties show it now.
    pub fn status(&self) -> MonitorStatus {
        self.status.borrow().clone()
    }

    /// Changes the status and emits `PropertiesChanged` for each property that changed.
    pub async fn update_status(&self, change: impl FnOnce(&mut MonitorStatus)) -> zbus::Result<()> {
        let before = self.status();
        self.status.send_modify(change);
        let after = self.status();
        let interface = self.interface.get().await;
        let emitter = self.interface.signal_emitter();
        if before.state != after.state {
            interface.state_changed(emitter).await?;
        }
        if before.status != after.status {
            interface.status_changed(emitter).await?;
        }
        if before.last_error != after.last_error {
            interface.last_error_changed(emitter).await?;
        }
        if before.watched_paths != after.watched_paths {
            interface.watched_paths_changed(emitter).await?;
        }
        if before.polling_paths != after.polling_paths {
            interface.polling_paths_changed(emitter).await?;
        }
        if before.durability != after.durability {
            interface.durability_changed(emitter).await?;
        }
        if before.files_detected != after.files_detected {
            interface.files_detected_changed(emitter).await?;
        }
        if before.jobs_queued != after.jobs_queued {
            interface.jobs_queued_changed(emitter).await?;
        }
        Ok(())
    }

    pub async fn file_detected(&self, path: &str, file_id: u64, job_id: u64) -> zbus::Result<()> {
        MonitorInterface::file_detected(self.interface.signal_emitter(), path, file_id, job_id)
            .await
    }

    pub async fn job_queued(&self, kind: &str, job_id: u64) -> zbus::Result<()> {
        MonitorInterface::job_queued(self.interface.signal_emitter(), kind, job_id).await
    }
}

pub(super) fn paths_to_strings(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|path| path.to_string_lossy().into_owned())
        .collect()
}
