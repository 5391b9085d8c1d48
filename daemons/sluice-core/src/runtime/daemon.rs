//! The one start-up every sluice daemon shares: arguments, logging, configuration, the tokio
//! runtime, then the side effects (signals, the store, the bus connection, the notifier) opened
//! here and passed into the daemon's `run`, as mini-redis passes its listener.
//!
//! A daemon's `main.rs` is one call, `daemon_main::<SomeDaemon>()`; its `run` receives a
//! [`Dependencies`], so a test can hand it a store in a temporary folder, a connection to a
//! private bus and a [`SignalReceiver::channel`] and drive the real main loop without a
//! process.
//!
//! What stays inside each daemon is what must happen between the store opening and `READY=1`:
//! owning its bus name (which needs the daemon's own object and status) and its own set-up.
//! So `READY=1` still comes only once the store is open and the bus name is owned.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bus::{self, BusAddress};
use crate::config::{Config, ConfigError};
use crate::store::{Claimant, LeaseHolder, Store, StoreError};

use super::{DaemonExit, Notifier, RuntimeError, SignalReceiver, init_logging};

/// The options every daemon takes; each daemon flattens this into its own arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArguments {
    /// The configuration file (default: $SLUICE_CONFIG, else /etc/sluice/sluice.toml).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// The shape of the tokio runtime a daemon runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeFlavour {
    /// One thread: the daemon's blocking work runs on threads of its own or `spawn_blocking`.
    CurrentThread,
    /// A pool of this many worker threads.
    MultiThread {
        /// The number of worker threads.
        worker_threads: usize,
    },
}

/// What the shared start-up could not set up. Each daemon's error type carries it as one
/// transparent variant, so the message and the exit status are the same for every daemon.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// SIGTERM/SIGHUP handlers could not be installed.
    #[error(transparent)]
    Signals(#[from] RuntimeError),
    /// The database could not be opened (or migrated).
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// The configured bus could not be reached.
    #[error("cannot connect to the {address}: {source}")]
    BusConnect {
        /// `[bus] address` from the configuration.
        address: BusAddress,
        /// What zbus said.
        #[source]
        source: zbus::Error,
    },
}

impl StartError {
    /// The exit status systemd sees: a missing database or bus is "unavailable", signal
    /// handlers that cannot be installed are a software error.
    pub fn exit(&self) -> DaemonExit {
        match self {
            StartError::Signals(_) => DaemonExit::Software,
            StartError::Store(_) | StartError::BusConnect { .. } => DaemonExit::Unavailable,
        }
    }
}

/// The side effects a daemon's `run` works with, opened by [`daemon_main`] (or by a test).
#[derive(Debug)]
pub struct Dependencies {
    /// The configuration in force at start.
    pub config: Config,
    /// The file the configuration came from; SIGHUP re-reads it.
    pub config_path: PathBuf,
    /// An open connection to the database at `config.store.path`.
    pub store: Store,
    /// A connection to the bus at `config.bus.address`; the daemon owns its name on it.
    pub bus: zbus::Connection,
    /// SIGTERM and SIGHUP as values (or, in tests, whatever the test sends).
    pub signals: SignalReceiver,
    /// `sd_notify`: READY, STATUS, STOPPING, the watchdog.
    pub notifier: Notifier,
}

impl Dependencies {
    /// Installs the signal handlers, opens the store on a blocking thread (SQLite's open and
    /// migrations block) and connects to the bus, in that order: the signals first, so a
    /// SIGTERM during the slow parts waits for the daemon's loop instead of killing it.
    pub async fn open(
        config: Config,
        config_path: PathBuf,
        notifier: Notifier,
    ) -> Result<Dependencies, StartError> {
        let signals = SignalReceiver::install()?;
        let store = open_store(&config).await?;
        let bus =
            bus::connect(&config.bus.address)
                .await
                .map_err(|source| StartError::BusConnect {
                    address: config.bus.address.clone(),
                    source,
                })?;
        Ok(Dependencies {
            config,
            config_path,
            store,
            bus,
            signals,
            notifier,
        })
    }
}

/// Opens `config.store.path` on a blocking thread, so the async thread keeps turning.
pub async fn open_store(config: &Config) -> Result<Store, StoreError> {
    let path = config.store.path.clone();
    let options = config.store_options();
    open_store_at(path, options).await
}

/// Opens another connection to the database `store` is connected to, on a blocking thread.
pub async fn open_another_store(store: &Store) -> Result<Store, StoreError> {
    open_store_at(store.path().to_path_buf(), *store.options()).await
}

/// How a daemon that claims jobs names itself to the store: `worker_name` (what people read)
/// and its bus connection as the holder of the leases it takes, so the leases end at once when
/// that connection leaves the bus, and never because a successor of the same name did.
pub fn claimant_on(connection: &zbus::Connection, worker_name: &str) -> Claimant {
    let claimant = Claimant::named(worker_name);
    match bus::connection_identity(connection).map(LeaseHolder::new) {
        Some(Ok(holder)) => claimant.with_holder(holder),
        // A peer-to-peer connection has no identity; the leases then end when they expire.
        _ => claimant,
    }
}

async fn open_store_at(
    path: PathBuf,
    options: crate::store::StoreOptions,
) -> Result<Store, StoreError> {
    tokio::task::spawn_blocking(move || Store::open(&path, &options))
        .await
        // A panic while opening is a bug; let it end the process as it would have on the
        // calling thread.
        .unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic()))
}

/// Under systemd (`INVOCATION_ID` is set), makes this process non-dumpable: every sluice
/// daemon runs as `_sluice`, and so do the processors an ingest worker runs, so without this
/// any of them could read another daemon's memory or, through `/proc/PID/root`, its
/// credentials directory (sluice-web's API tokens, a source's `LoadCredential=` file). systemd
/// and root still see everything. Development runs outside systemd keep the default, so a
/// developer's tools can read the daemons' `/proc` entries.
fn keep_other_processes_of_this_user_out() {
    if std::env::var_os("INVOCATION_ID").is_none() {
        return;
    }
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(
            error = %error,
            "cannot make this daemon non-dumpable ({error}): other processes of its user could \
             read its memory and credentials"
        );
    }
}

/// One sluice daemon, as [`daemon_main`] starts it.
pub trait Daemon: Sized {
    /// The command line (clap), which flattens [`CommonArguments`].
    type Arguments: clap::Parser;
    /// Why the daemon could not start or had to stop.
    type Error: From<StartError>;

    /// The tokio runtime the daemon runs on.
    const RUNTIME: RuntimeFlavour;

    /// After `run` returns, how long blocking tasks still running get before the process exits
    /// anyway; `None` waits for them.
    const BLOCKING_GRACE: Option<Duration> = None;

    /// The options shared by every daemon, out of the daemon's arguments.
    fn common_arguments(arguments: &Self::Arguments) -> &CommonArguments;

    /// The name the daemon logs under (journald's `SYSLOG_IDENTIFIER`).
    fn log_identifier(arguments: &Self::Arguments) -> String;

    /// Reports a configuration that cannot be loaded at start (the process then exits with
    /// [`DaemonExit::Config`]).
    fn configuration_invalid(error: &ConfigError, notifier: &Notifier) {
        let _ = notifier;
        tracing::error!(error = %error, "invalid configuration; not starting: {error}");
    }

    /// The checks and set-up that come before the store is opened (no async runtime yet):
    /// builds the daemon from its arguments and the configuration.
    fn prepare(
        arguments: Self::Arguments,
        config: &Config,
        config_path: &Path,
        notifier: &Notifier,
    ) -> Result<Self, Self::Error>;

    /// The daemon's life: own the bus name, say READY, run the main loop until SIGTERM.
    fn run(self, dependencies: Dependencies) -> impl Future<Output = Result<(), Self::Error>>;

    /// Logs why the daemon stopped on an error and picks the exit status systemd sees.
    fn report_failure(error: Self::Error) -> DaemonExit;
}

/// The whole of a daemon's `main`: parse the arguments, set up logging, load the
/// configuration, build the runtime, open the dependencies and run the daemon; returns the
/// exit status.
pub fn daemon_main<D: Daemon>() -> DaemonExit {
    let arguments = match <D::Arguments as clap::Parser>::try_parse() {
        Ok(arguments) => arguments,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                DaemonExit::Usage
            } else {
                // --help and --version.
                DaemonExit::Clean
            };
        }
    };
    let identifier = D::log_identifier(&arguments);
    if let Err(error) = init_logging(&identifier) {
        // Logging is not up, so stderr is the only place to say it.
        eprintln!("{identifier}: {error}");
        return DaemonExit::Software;
    }
    keep_other_processes_of_this_user_out();
    let notifier = Notifier::from_environment();
    let (config_path, config) = match load_config(D::common_arguments(&arguments).config.as_deref())
    {
        Ok(loaded) => loaded,
        Err(error) => {
            D::configuration_invalid(&error, &notifier);
            return DaemonExit::Config;
        }
    };
    let daemon = match D::prepare(arguments, &config, &config_path, &notifier) {
        Ok(daemon) => daemon,
        Err(error) => return D::report_failure(error),
    };
    let runtime = match build_runtime(D::RUNTIME) {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(error = %error, "cannot start the async runtime: {error}");
            return DaemonExit::Software;
        }
    };
    let outcome = runtime.block_on(async move {
        let dependencies = Dependencies::open(config, config_path, notifier).await?;
        daemon.run(dependencies).await
    });
    if let Some(grace) = D::BLOCKING_GRACE {
        runtime.shutdown_timeout(grace);
    }
    match outcome {
        Ok(()) => DaemonExit::Clean,
        Err(error) => D::report_failure(error),
    }
}

/// `--config PATH` when given, else `$SLUICE_CONFIG`, else /etc/sluice/sluice.toml.
fn load_config(path: Option<&Path>) -> Result<(PathBuf, Config), ConfigError> {
    match path {
        Some(path) => Config::load(path).map(|config| (path.to_path_buf(), config)),
        None => Config::load_from_env(),
    }
}

fn build_runtime(flavour: RuntimeFlavour) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match flavour {
        RuntimeFlavour::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        RuntimeFlavour::MultiThread { worker_threads } => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(worker_threads);
            builder
        }
    };
    builder.enable_all().build()
}
