//! sluice-monitor's start-up as the shared skeleton runs it: its errors and exit statuses, its
//! command line, and the [`Daemon`] implementation that hands over to [`crate::run`].

use super::*;

/// Why the monitor could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{0}")]
    BusSetup(#[from] BusSetupError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("cannot start the recorder thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl MonitorError {
    /// The exit status systemd sees.
    pub fn exit(&self) -> DaemonExit {
        match self {
            MonitorError::Config(_) | MonitorError::Watch(_) => DaemonExit::Config,
            MonitorError::Start(error) => error.exit(),
            MonitorError::Store(_) | MonitorError::BusSetup(_) => DaemonExit::Unavailable,
            MonitorError::Runtime(_) | MonitorError::Thread(_) => DaemonExit::Software,
        }
    }
}

/// Watches the configured [[watch]] folders and queues an ingest job for every new file.
#[derive(Debug, clap::Parser)]
#[command(name = UNIT_NAME, version, about)]
pub struct Arguments {
    #[command(flatten)]
    pub common: CommonArguments,
}

/// sluice-monitor as the shared start-up runs it ([`sluice_core::runtime::daemon_main`]).
#[derive(Debug)]
pub struct MonitorDaemon;

impl Daemon for MonitorDaemon {
    type Arguments = Arguments;
    type Error = MonitorError;
    // The loop is light; walks and the recorder run on threads of their own.
    const RUNTIME: RuntimeFlavour = RuntimeFlavour::CurrentThread;

    fn common_arguments(arguments: &Arguments) -> &CommonArguments {
        &arguments.common
    }

    fn log_identifier(_arguments: &Arguments) -> String {
        UNIT_NAME.to_owned()
    }

    fn prepare(
        _arguments: Arguments,
        _config: &Config,
        _config_path: &Path,
        notifier: &Notifier,
    ) -> Result<MonitorDaemon, MonitorError> {
        notifier.status("starting: opening the store");
        Ok(MonitorDaemon)
    }

    async fn run(self, dependencies: Dependencies) -> Result<(), MonitorError> {
        run(dependencies).await
    }

    fn report_failure(error: MonitorError) -> DaemonExit {
        tracing::error!(error = %error, "sluice-monitor stopped: {error}");
        error.exit()
    }
}
