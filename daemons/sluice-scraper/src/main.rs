//! The `sluice-scraper` binary: parse arguments, set up logging, load the configuration, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use sluice_core::config::Config;
use sluice_core::manual::{ManualArguments, ManualSection};
use sluice_core::runtime::{self, DaemonExit, Notifier};

/// Downloads URLs into sluice's inbox (a systemd service; see sluice-scraper(8)).
#[derive(Debug, Parser)]
#[command(version)]
struct Arguments {
    /// The configuration file; default $SLUICE_CONFIG, else /etc/sluice/sluice.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    manual: ManualArguments,
}

/// `EINVAL`, the errno systemd shows for an invalid configuration.
const EINVAL: u32 = 22;

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    // Packaging: write the man page and exit, before logging or configuration.
    if let Some(outcome) = arguments
        .manual
        .generate(Arguments::command(), ManualSection::Daemon)
    {
        return match outcome {
            Ok(_) => DaemonExit::Clean.into(),
            Err(error) => {
                eprintln!("sluice-scraper: {error}");
                DaemonExit::Software.into()
            }
        };
    }
    if let Err(error) = runtime::init_logging("sluice-scraper") {
        eprintln!("sluice-scraper: {error}");
        return DaemonExit::Software.into();
    }
    let loaded = match arguments.config {
        Some(path) => Config::load(&path).map(|config| (path, config)),
        None => Config::load_from_env(),
    };
    let (config_path, config) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            tracing::error!(error = %error, "invalid configuration");
            Notifier::from_environment().failed(EINVAL, &format!("invalid configuration: {error}"));
            return DaemonExit::Config.into();
        }
    };
    let tokio_runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(tokio_runtime) => tokio_runtime,
        Err(error) => {
            tracing::error!(error = %error, "cannot start the tokio runtime");
            return DaemonExit::Software.into();
        }
    };
    match tokio_runtime.block_on(sluice_scraper::run(config_path, config)) {
        Ok(()) => DaemonExit::Clean.into(),
        Err(error) => {
            tracing::error!(error = %error, "sluice-scraper stopped");
            error.exit().into()
        }
    }
}
