//! `sluice-ingest-worker --instance N`: the process systemd starts as
//! `sluice-ingest-worker@N.service`. Parses the arguments, sets up logging and signals, loads
//! the configuration (`SLUICE_CONFIG` or /etc/sluice/sluice.toml) and runs the worker.

use clap::{CommandFactory, Parser};
use sluice_core::config::Config;
use sluice_core::manual::{ManualArguments, ManualSection};
use sluice_core::runtime::{DaemonExit, Notifier, SignalReceiver, init_logging};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "sluice ingest worker: runs ingest and noop jobs from the queue"
)]
struct Arguments {
    /// The instance name (systemd's %i); names the bus name and the lease owner.
    #[arg(long)]
    instance: String,
}

fn main() -> DaemonExit {
    // Packaging: `--generate-man DIR` (hidden) writes the man page and exits; read before the
    // normal parse, which insists on --instance.
    if let Some(outcome) = ManualArguments::from_arguments(std::env::args_os())
        .generate(Arguments::command(), ManualSection::Daemon)
    {
        return match outcome {
            Ok(_) => DaemonExit::Clean,
            Err(error) => {
                eprintln!("sluice-ingest-worker: {error}");
                DaemonExit::Software
            }
        };
    }
    let arguments = match Arguments::try_parse() {
        Ok(arguments) => arguments,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                DaemonExit::Usage
            } else {
                DaemonExit::Clean
            };
        }
    };
    let identifier = format!("sluice-ingest-worker@{}", arguments.instance);
    if let Err(error) = init_logging(&identifier) {
        eprintln!("{identifier}: {error}");
        return DaemonExit::Software;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(error = %error, "cannot start the async runtime");
            return DaemonExit::Software;
        }
    };
    let exit = runtime.block_on(async {
        let notifier = Notifier::from_environment();
        let signals = match SignalReceiver::install() {
            Ok(signals) => signals,
            Err(error) => {
                tracing::error!(error = %error, "cannot install signal handlers");
                return DaemonExit::Software;
            }
        };
        let config = match Config::load_from_env() {
            Ok((path, config)) => {
                tracing::info!(config = %path.display(), "configuration loaded");
                config
            }
            Err(error) => {
                tracing::error!(error = %error, "invalid configuration; not starting");
                notifier.status(&format!("invalid configuration: {error}"));
                return DaemonExit::Config;
            }
        };
        match sluice_ingest_worker::run(config, &arguments.instance, signals, notifier).await {
            Ok(()) => DaemonExit::Clean,
            Err(error) => {
                tracing::error!(error = %error, "the worker stopped on an error");
                error.exit()
            }
        }
    });
    // A job body that ignored the abort flag may still occupy a blocking thread; its lease
    // was released, so do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    exit
}
