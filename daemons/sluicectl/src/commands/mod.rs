//! What each command does: read the store, or ask the owning daemon over D-Bus (falling back
//! to the store where that is safe), and map every failure to a documented exit status. One
//! module per command; this one dispatches and holds what they share ([`Context`]).

mod bundle;
mod config;
mod db;
mod docs;
mod download;
mod failure;
mod jobs;
mod rescan;
mod sources;
mod status;
mod submit;
mod workers;

use std::path::PathBuf;
use std::time::Duration;

use sluice_core::config::Config;
use sluice_core::store::Store;
use sluice_core::store::jobs::PageRequest;

use crate::{
    BundleCommand, Cli, Command, DbCommand, DocsCommand, JobsCommand, SourcesCommand, exit,
};

pub use failure::Failure;
use jobs::JobChange;

/// How long sluicectl waits for the bus or a daemon before calling it unavailable.
const BUS_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<(), Failure> {
    // These two read or edit the configuration file themselves.
    match &cli.command {
        Command::Config(command) => return config::config_command(&cli, command),
        Command::Workers { count } => return workers::workers(&cli, count),
        _ => {}
    }
    let config = load_config(&cli)?.1;
    let context = Context {
        config,
        json: cli.json,
    };
    match cli.command {
        Command::Status => context.status(),
        Command::Jobs(JobsCommand::List {
            state,
            kind,
            limit,
            cursor,
        }) => context.jobs_list(state, kind, limit, cursor),
        Command::Jobs(JobsCommand::Show { id }) => context.jobs_show(id),
        Command::Jobs(JobsCommand::Retry { id }) => context.job_change(id, JobChange::Retry),
        Command::Jobs(JobsCommand::Cancel { id }) => context.job_change(id, JobChange::Cancel),
        Command::Jobs(JobsCommand::Watch { id }) => context.jobs_watch(id),
        Command::Download(arguments) => context.download(arguments),
        Command::Submit { files, wait } => context.submit(files, wait),
        Command::Rescan { path } => context.rescan(path),
        Command::Bundle(BundleCommand::Add { name, files, wait }) => {
            context.bundle_add(&name, &files, wait.as_deref())
        }
        Command::Bundle(BundleCommand::List { limit, cursor }) => {
            context.bundle_list(limit, cursor)
        }
        Command::Bundle(BundleCommand::Show { id }) => context.bundle_show(id),
        Command::Bundle(BundleCommand::Cancel { id }) => context.bundle_change(id, false),
        Command::Bundle(BundleCommand::Delete { id }) => context.bundle_change(id, true),
        Command::Sources(SourcesCommand::List) => context.sources_list(),
        Command::Sources(SourcesCommand::Show { name }) => context.sources_show(&name),
        Command::Sources(SourcesCommand::Check { name, wait }) => {
            context.sources_check(&name, &wait)
        }
        Command::Docs(DocsCommand::List {
            query,
            limit,
            cursor,
        }) => match query.filter(|text| !text.trim().is_empty()) {
            Some(query) => context.docs_search(&query, limit, cursor),
            None => context.docs_list(limit, cursor),
        },
        Command::Docs(DocsCommand::Search {
            query,
            limit,
            cursor,
        }) => context.docs_search(&query, limit, cursor),
        Command::Docs(DocsCommand::Get { id, output, force }) => {
            context.docs_get(id, &output, force)
        }
        Command::Db(DbCommand::Check) => context.db_check(),
        Command::Db(DbCommand::Backup { file }) => context.db_backup(file),
        Command::Db(DbCommand::Vacuum) => context.db_vacuum(),
        Command::Db(DbCommand::Maintain) => context.db_maintain(),
        Command::Config(_) | Command::Workers { .. } => unreachable!("handled above"),
    }
}

/// The configuration file the command line names: `--config`, else `$SLUICE_CONFIG`, else
/// the default path; and that file loaded (the built-in defaults when the default file does
/// not exist, as the daemons do).
pub(super) fn load_config(cli: &Cli) -> Result<(PathBuf, Config), Failure> {
    Ok(match &cli.config {
        Some(path) => (path.clone(), Config::load(path)?),
        None => Config::load_from_env()?,
    })
}

/// The path `workers` edits: the one [`load_config`] would read.
pub(super) fn config_path(cli: &Cli) -> PathBuf {
    if let Some(path) = &cli.config {
        return path.clone();
    }
    match std::env::var_os(sluice_core::config::CONFIG_PATH_VARIABLE) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(sluice_core::config::DEFAULT_CONFIG_PATH),
    }
}

/// What every command that runs after the configuration is loaded shares.
struct Context {
    config: Config,
    json: bool,
}

impl Context {
    pub(super) fn open_store(&self) -> Result<Store, Failure> {
        Ok(Store::open(
            &self.config.store.path,
            &self.config.store_options(),
        )?)
    }

    pub(super) fn page(&self, limit: u32, cursor: Option<i64>) -> Result<PageRequest, Failure> {
        let max = self.config.limits.max_page_size;
        if limit == 0 || limit > max {
            return Err(Failure::invalid(format!(
                "--limit must be 1..={max} ([limits] max_page_size), got {limit}"
            )));
        }
        if cursor.is_some_and(|cursor| cursor <= 0) {
            return Err(Failure::invalid("--cursor must be a positive id"));
        }
        Ok(PageRequest {
            before_id: cursor,
            limit,
        })
    }

    /// Runs a future on a small runtime with a deadline; used for every bus interaction.
    pub(super) fn block_on<T>(&self, work: impl Future<Output = T>) -> Result<T, Failure> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| {
                Failure::new(exit::ERROR, format!("cannot start a runtime: {error}"))
            })?;
        runtime
            .block_on(async { tokio::time::timeout(BUS_TIMEOUT, work).await })
            .map_err(|_| {
                Failure::new(
                    exit::DAEMON_UNAVAILABLE,
                    format!(
                        "no answer on the {} within {BUS_TIMEOUT:?}",
                        self.config.bus.address
                    ),
                )
            })
    }
}
