//! `sluicectl`: the command-line client of the sluice suite. Reads go straight to the store
//! (the database every daemon shares); changes go through the daemon that owns them over
//! D-Bus, or into the store directly when that daemon is not running (see `--help`).

mod commands;
mod config_file;
mod output;
mod systemd;

use std::process::ExitCode;

use clap::Parser;
// The command line lives in the library part (see lib.rs); the modules here name its types
// through the crate root.
use sluicectl::{
    BundleCommand, Cli, Command, ConfigCommand, DbCommand, DocsCommand, DownloadArguments,
    JobsCommand, SourcesCommand, exit,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match commands::run(cli) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(failure) => {
            if json {
                output::print_json(&failure.json_error());
            }
            eprintln!("sluicectl: {}", failure.message);
            ExitCode::from(failure.exit_status)
        }
    }
}
