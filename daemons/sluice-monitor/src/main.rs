//! sluice-monitor's entry point: arguments, logging, configuration, then [`sluice_monitor::run`].

use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use sluice_core::config::Config;
use sluice_core::manual::{ManualArguments, ManualSection};
use sluice_core::runtime::{DaemonExit, init_logging};
use sluice_monitor::{UNIT_NAME, run};

/// Watches the configured [[watch]] folders and queues an ingest job for every new file.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Arguments {
    /// The configuration file; by default $SLUICE_CONFIG, else /etc/sluice/sluice.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    manual: ManualArguments,
}

fn main() -> DaemonExit {
    let arguments = Arguments::parse();
    // Packaging: write the man page and exit, before logging or configuration.
    if let Some(outcome) = arguments
        .manual
        .generate(Arguments::command(), ManualSection::Daemon)
    {
        return match outcome {
            Ok(_) => DaemonExit::Clean,
            Err(error) => {
                eprintln!("{UNIT_NAME}: {error}");
                DaemonExit::Software
            }
        };
    }
    if let Err(error) = init_logging(UNIT_NAME) {
        // Logging is not up, so stderr is the only place to say it.
        eprintln!("{UNIT_NAME}: {error}");
        return DaemonExit::Software;
    }
    let loaded = match arguments.config {
        Some(path) => Config::load(&path).map(|config| (path, config)),
        None => Config::load_from_env(),
    };
    let (config_path, config) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            tracing::error!(error = %error, "invalid configuration; not starting");
            return DaemonExit::Config;
        }
    };
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
    match runtime.block_on(run(config, config_path)) {
        Ok(()) => DaemonExit::Clean,
        Err(error) => {
            tracing::error!(error = %error, "sluice-monitor stopped");
            error.exit()
        }
    }
}
