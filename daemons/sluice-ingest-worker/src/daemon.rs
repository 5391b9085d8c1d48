//! sluice-ingest-worker's start-up as the shared skeleton runs it: its errors and exit
//! statuses, its command line (`--instance`), and the [`Daemon`] implementation that hands
//! over to [`crate::run`].

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot subscribe to JobQueued signals: {0}")]
    Subscribe(#[source] zbus::Error),
    #[error("cannot watch the bus for workers that leave it: {0}")]
    WatchDepartures(#[source] zbus::Error),
    #[error(transparent)]
    BusSetup(#[from] BusSetupError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(
        "job {job_id} did not stop after its timeout; exiting so that a fresh worker takes over"
    )]
    JobStuck { job_id: i64 },
}

impl WorkerError {
    /// The exit status systemd sees for this failure.
    pub fn exit(&self) -> DaemonExit {
        match self {
            WorkerError::BusSetup(BusSetupError::InvalidInstance { .. }) => DaemonExit::Usage,
            WorkerError::Start(error) => error.exit(),
            WorkerError::Store(_)
            | WorkerError::Subscribe(_)
            | WorkerError::WatchDepartures(_)
            | WorkerError::BusSetup(_) => DaemonExit::Unavailable,
            WorkerError::Internal(_) | WorkerError::JobStuck { .. } => DaemonExit::Software,
        }
    }
}

/// sluice ingest worker: runs ingest and noop jobs from the queue.
#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "sluice ingest worker: runs ingest and noop jobs from the queue"
)]
pub struct Arguments {
    /// The instance name (systemd's %i); names the bus name and the lease owner.
    #[arg(long)]
    pub instance: String,
    #[command(flatten)]
    pub common: CommonArguments,
}

/// `sluice-ingest-worker@N` as the shared start-up runs it
/// ([`sluice_core::runtime::daemon_main`]).
#[derive(Debug)]
pub struct IngestWorkerDaemon {
    instance: String,
}

impl Daemon for IngestWorkerDaemon {
    type Arguments = Arguments;
    type Error = WorkerError;
    // Job bodies and transactions run on blocking threads; the loop itself is light.
    const RUNTIME: RuntimeFlavour = RuntimeFlavour::CurrentThread;
    // A job body that ignored the abort flag may still occupy a blocking thread; its lease
    // was released, so do not wait for it.
    const BLOCKING_GRACE: Option<Duration> = Some(Duration::from_millis(500));

    fn common_arguments(arguments: &Arguments) -> &CommonArguments {
        &arguments.common
    }

    fn log_identifier(arguments: &Arguments) -> String {
        format!("sluice-ingest-worker@{}", arguments.instance)
    }

    fn configuration_invalid(error: &ConfigError, notifier: &Notifier) {
        tracing::error!(error = %error, "invalid configuration; not starting: {error}");
        notifier.status(&format!("invalid configuration: {error}"));
    }

    fn prepare(
        arguments: Arguments,
        _config: &Config,
        config_path: &Path,
        _notifier: &Notifier,
    ) -> Result<IngestWorkerDaemon, WorkerError> {
        tracing::info!(
            config = %config_path.display(),
            "configuration loaded from {}",
            config_path.display()
        );
        // A bad instance name is a usage error, found before anything is opened.
        bus::sanitize_instance(&arguments.instance)?;
        Ok(IngestWorkerDaemon {
            instance: arguments.instance,
        })
    }

    async fn run(self, dependencies: Dependencies) -> Result<(), WorkerError> {
        run(&self.instance, dependencies).await
    }

    fn report_failure(error: WorkerError) -> DaemonExit {
        tracing::error!(error = %error, "the worker stopped on an error: {error}");
        error.exit()
    }
}
