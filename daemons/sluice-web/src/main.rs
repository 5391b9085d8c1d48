//! The `sluice-web` binary: parse arguments, start logging, load the configuration, run the
//! daemon, and turn the outcome into an exit status systemd understands.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use sluice_core::config::Config;
use sluice_core::manual::{ManualArguments, ManualSection};
use sluice_core::runtime::{DaemonExit, SignalReceiver, init_logging};
use sluice_web::WebError;

/// sluice's HTTP API and event stream, and the org.sluice.Web1 D-Bus object.
///
/// Listens on the socket systemd passes (LISTEN_FDS) or else on [web] listen. Mutating API
/// calls need the bearer token from [web] token_file; without that file the daemon does not
/// start. SIGHUP reloads the token and allowed hosts; SIGTERM stops gracefully.
#[derive(Debug, Parser)]
#[command(version)]
struct Arguments {
    /// The configuration file (default: $SLUICE_CONFIG, else /etc/sluice/sluice.toml).
    #[arg(long, value_name = "PATH")]
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
                eprintln!("sluice-web: {error}");
                DaemonExit::Software
            }
        };
    }
    if let Err(error) = init_logging("sluice-web") {
        eprintln!("sluice-web: {error}");
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(error = %error, "cannot start the async runtime");
            return DaemonExit::Software;
        }
    };
    let outcome = runtime.block_on(async move {
        let signals = SignalReceiver::install()
            .map_err(|error| WebError::Server(std::io::Error::other(error.to_string())))?;
        sluice_web::run(config_path, config, signals).await
    });
    match outcome {
        Ok(()) => DaemonExit::Clean,
        Err(error) => {
            tracing::error!(error = %error, "sluice-web stopped with an error");
            match error {
                WebError::Token(_) => DaemonExit::Config,
                WebError::Store(_)
                | WebError::BusConnect { .. }
                | WebError::BusSubscribe(_)
                | WebError::BusSetup(_)
                | WebError::Listen { .. } => DaemonExit::Unavailable,
                WebError::Server(_) => DaemonExit::Failure,
            }
        }
    }
}
