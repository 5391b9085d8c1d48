//! What each command does: read the store, or ask the owning daemon over D-Bus (falling back
//! to the store where that is safe), and map every failure to a documented exit status.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_core::bus::{
    self, BusError, DownloadOptions, MONITOR_BUS_NAME, MonitorProxy, SCRAPER_BUS_NAME,
    ScraperProxy, WEB_BUS_NAME, WebProxy, ingest_bus_name,
};
use sluice_core::config::{Config, ConfigError};
use sluice_core::policy::{self, NewDownload, PolicyError, SubmitRules};
use sluice_core::store::documents::{DocumentError, DocumentFilter};
use sluice_core::store::downloads::DownloadError;
use sluice_core::store::jobs::{JobError, JobFilter, JobState, PageRequest};
use sluice_core::store::{Store, StoreError};
use zbus::Connection;
use zbus::proxy::CacheProperties;

use crate::config_file::{self, EditError};
use crate::output::{print_fields, print_json, print_line, print_table};
use crate::systemd::{self, Systemd};
use crate::{Cli, Command, ConfigCommand, DocsCommand, DownloadArguments, JobsCommand, exit};

/// How long sluicectl waits for the bus or a daemon before calling it unavailable.
const BUS_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed command: the exit status and what to tell the person.
#[derive(Debug)]
pub struct Failure {
    pub exit_status: u8,
    pub message: String,
    /// The policy's code for a refused input (`invalid_url`, ...), shown as `reason` in
    /// `--json` error output next to the exit status's `code`.
    pub reason: Option<&'static str>,
}

impl Failure {
    fn new(exit_status: u8, message: impl Into<String>) -> Failure {
        Failure {
            exit_status,
            message: message.into(),
            reason: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(exit::INVALID_ARGUMENT, message)
    }

    /// The `error` object of `--json` output: `code` from the exit status, plus `reason`
    /// when the input policy refused an argument.
    pub fn json_error(&self) -> Value {
        let mut error = json!({ "code": self.code_name(), "message": self.message });
        if let Some(reason) = self.reason {
            error["reason"] = Value::from(reason);
        }
        json!({ "error": error })
    }

    /// The `code` in `--json` error output.
    pub fn code_name(&self) -> &'static str {
        match self.exit_status {
            exit::NOT_FOUND => "not_found",
            exit::INVALID_ARGUMENT => "invalid_argument",
            exit::DAEMON_UNAVAILABLE => "unavailable",
            exit::USAGE => "usage",
            _ => "error",
        }
    }
}

impl From<PolicyError> for Failure {
    fn from(error: PolicyError) -> Failure {
        Failure {
            reason: Some(error.code()),
            ..Failure::invalid(error.to_string())
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Failure {
        Failure::new(exit::ERROR, format!("invalid configuration: {error}"))
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::new(exit::ERROR, format!("database: {error}"))
    }
}

impl From<JobError> for Failure {
    fn from(error: JobError) -> Failure {
        match error {
            JobError::NotFound(_) => Failure::new(exit::NOT_FOUND, error.to_string()),
            JobError::InvalidArgument(_) | JobError::InvalidState { .. } => {
                Failure::invalid(error.to_string())
            }
            JobError::LeaseLost { .. } => Failure::new(exit::ERROR, error.to_string()),
            JobError::Store(error) => error.into(),
        }
    }
}

impl From<DownloadError> for Failure {
    fn from(error: DownloadError) -> Failure {
        match error {
            DownloadError::NotFound(_) => Failure::new(exit::NOT_FOUND, error.to_string()),
            DownloadError::InvalidArgument(_) | DownloadError::InvalidState { .. } => {
                Failure::invalid(error.to_string())
            }
            DownloadError::Job(error) => error.into(),
            DownloadError::Store(error) => error.into(),
        }
    }
}

impl From<DocumentError> for Failure {
    fn from(error: DocumentError) -> Failure {
        match error {
            DocumentError::NotFound(_) | DocumentError::FileNotFound(_) => {
                Failure::new(exit::NOT_FOUND, error.to_string())
            }
            DocumentError::InvalidArgument(_) => Failure::invalid(error.to_string()),
            DocumentError::Job(error) => error.into(),
            DocumentError::Store(error) => error.into(),
        }
    }
}

impl From<BusError> for Failure {
    fn from(error: BusError) -> Failure {
        match error {
            BusError::NotFound(message) => Failure::new(exit::NOT_FOUND, message),
            BusError::InvalidArgument(message) => Failure {
                reason: policy::code_in_message(&message),
                ..Failure::invalid(message)
            },
            BusError::WrongState(message) => Failure::invalid(message),
            BusError::AccessDenied(message) => Failure::new(
                exit::ERROR,
                format!(
                    "permission denied: {message} (run as root or as a member of group sluice)"
                ),
            ),
            BusError::Busy(message) => Failure::new(exit::DAEMON_UNAVAILABLE, message),
            BusError::Internal(message) => {
                Failure::new(exit::ERROR, format!("the daemon failed: {message}"))
            }
            BusError::ZBus(error) => Failure::new(
                exit::DAEMON_UNAVAILABLE,
                format!("D-Bus call failed: {error}"),
            ),
        }
    }
}

impl From<EditError> for Failure {
    fn from(error: EditError) -> Failure {
        match error {
            EditError::InvalidCount { .. } => Failure::invalid(error.to_string()),
            _ => Failure::new(exit::ERROR, error.to_string()),
        }
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<(), Failure> {
    // These two read or edit the configuration file themselves.
    match &cli.command {
        Command::Config(command) => return config_command(&cli, command),
        Command::Workers { count } => return workers(&cli, count),
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
        Command::Download(arguments) => context.download(arguments),
        Command::Rescan { path } => context.rescan(path),
        Command::Docs(DocsCommand::List {
            query,
            limit,
            cursor,
        }) => context.docs_list(query, limit, cursor),
        Command::Config(_) | Command::Workers { .. } => unreachable!("handled above"),
    }
}

/// The configuration file the command line names: `--config`, else `$SLUICE_CONFIG`, else
/// the default path; and that file loaded (the built-in defaults when the default file does
/// not exist, as the daemons do).
fn load_config(cli: &Cli) -> Result<(PathBuf, Config), Failure> {
    Ok(match &cli.config {
        Some(path) => (path.clone(), Config::load(path)?),
        None => Config::load_from_env()?,
    })
}

/// The path `workers` edits: the one [`load_config`] would read.
fn config_path(cli: &Cli) -> PathBuf {
    if let Some(path) = &cli.config {
        return path.clone();
    }
    match std::env::var_os(sluice_core::config::CONFIG_PATH_VARIABLE) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(sluice_core::config::DEFAULT_CONFIG_PATH),
    }
}

/// `config check` and `config get KEY`. Both load the file exactly as the daemons do, so a
/// file they accept is one the daemons accept (sluice-worker-generator relies on `get`).
fn config_command(cli: &Cli, command: &ConfigCommand) -> Result<(), Failure> {
    let (path, config) = load_config(cli).map_err(|failure| Failure {
        message: failure.message.replacen(
            "invalid configuration: ",
            "invalid configuration:\n  ",
            1,
        ),
        ..failure
    })?;
    match command {
        ConfigCommand::Check => {
            let exists = path.exists();
            if cli.json {
                print_json(&json!({
                    "path": path,
                    "valid": true,
                    "file_exists": exists,
                    "ingest": { "workers": config.ingest.workers },
                }));
            } else if exists {
                print_line(&format!("{}: valid", path.display()));
            } else {
                print_line(&format!(
                    "{}: does not exist; the built-in defaults apply (valid)",
                    path.display()
                ));
            }
            Ok(())
        }
        ConfigCommand::Get { key } => {
            let value: Value = match key.as_str() {
                "ingest.workers" => config.ingest.workers.into(),
                "ingest.library" => config.ingest.library.to_string_lossy().into(),
                "store.path" => config.store.path.to_string_lossy().into(),
                "web.listen" => config.web.listen.to_string().into(),
                _ => {
                    return Err(Failure::invalid(format!(
                        "config get knows ingest.workers, ingest.library, store.path and \
                         web.listen, not {key:?}"
                    )));
                }
            };
            if cli.json {
                print_json(&json!({ "key": key, "value": value }));
            } else {
                match value {
                    Value::String(text) => print_line(&text),
                    other => print_line(&other.to_string()),
                }
            }
            Ok(())
        }
    }
}

/// `workers N`; the order of its checks is documented in its `--help`.
fn workers(cli: &Cli, count: &str) -> Result<(), Failure> {
    let workers = config_file::parse_worker_count(count)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(Failure::new(
            exit::ERROR,
            "workers needs root: it rewrites the configuration file and asks systemd to \
             start and stop units; nothing changed",
        ));
    }
    let path = config_path(cli);
    let current_text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        // Like the daemons: no file at the default path means the built-in defaults, and the
        // edit creates the file with just this key.
        Err(error)
            if error.kind() == std::io::ErrorKind::NotFound
                && cli.config.is_none()
                && path == Path::new(sluice_core::config::DEFAULT_CONFIG_PATH) =>
        {
            String::new()
        }
        Err(error) => {
            return Err(Failure::new(
                exit::ERROR,
                format!("cannot read {}: {error}; nothing changed", path.display()),
            ));
        }
    };
    let previous = Config::from_toml_str(&current_text, &path)
        .ok()
        .map(|config| config.ingest.workers);
    let edited = config_file::with_ingest_workers(&current_text, workers, &path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::new(exit::ERROR, format!("cannot start a runtime: {error}")))?;
    runtime.block_on(async {
        let (systemd, _version) = tokio::time::timeout(BUS_TIMEOUT, Systemd::connect())
            .await
            .map_err(|_| zbus::Error::Failure(format!("no answer within {BUS_TIMEOUT:?}")))
            .and_then(|connected| connected)
            .map_err(|error| {
                Failure::new(
                    exit::DAEMON_UNAVAILABLE,
                    format!(
                        "systemd cannot be reached on the system bus ({error}); nothing changed \
                         (without systemd, set [ingest] workers in {} by hand)",
                        path.display()
                    ),
                )
            })?;
        let config_changed = edited != current_text;
        if config_changed {
            config_file::replace_atomically(&path, &edited)?;
        }
        let after_write = |what: &str, error: zbus::Error| {
            Failure::new(
                exit::ERROR,
                format!(
                    "{} says workers = {workers}, but {what} failed: {error}",
                    path.display()
                ),
            )
        };
        tokio::time::timeout(systemd::JOB_DEADLINE, systemd.reload())
            .await
            .map_err(|_| zbus::Error::Failure("no answer".into()))
            .and_then(|reloaded| reloaded)
            .map_err(|error| after_write("systemctl daemon-reload", error))?;
        let units = systemd
            .sluice_units()
            .await
            .map_err(|error| after_write("listing the units", error))?;
        let target_active = units
            .iter()
            .any(|unit| unit.name == systemd::SLUICE_TARGET && unit.active_state == "active");
        let mut already_running = Vec::new();
        let mut starts = Vec::new();
        if target_active {
            for instance in 1..=workers {
                let unit = systemd::worker_unit(instance);
                let state = units.iter().find(|state| state.name == unit);
                if state.is_some_and(|state| state.active_state == "active") {
                    already_running.push(unit);
                } else {
                    starts.push(unit);
                }
            }
        }
        let stops: Vec<String> = units
            .iter()
            .filter(|unit| {
                systemd::worker_instance(&unit.name).is_some_and(|instance| instance > workers)
                    && unit.is_up()
            })
            .map(|unit| unit.name.clone())
            .collect();
        let outcomes = systemd
            .run_jobs(&starts, &stops, systemd::JOB_DEADLINE)
            .await
            .map_err(|error| after_write("starting and stopping the instances", error))?;
        report_workers(&WorkersReport {
            path: &path,
            workers,
            previous,
            config_changed,
            target_active,
            already_running: &already_running,
            starts: &starts,
            outcomes: &outcomes,
            json: cli.json,
        })
    })
}

struct WorkersReport<'a> {
    path: &'a Path,
    workers: u32,
    previous: Option<u32>,
    config_changed: bool,
    target_active: bool,
    already_running: &'a [String],
    starts: &'a [String],
    outcomes: &'a [systemd::JobOutcome],
    json: bool,
}

/// Prints what `workers` did; fails (exit status 1) when a job did not end `done`.
fn report_workers(report: &WorkersReport<'_>) -> Result<(), Failure> {
    let failed: Vec<&systemd::JobOutcome> = report
        .outcomes
        .iter()
        .filter(|outcome| outcome.result != "done")
        .collect();
    let outcome_json = |starting: bool| -> Vec<Value> {
        report
            .outcomes
            .iter()
            .filter(|outcome| report.starts.contains(&outcome.unit) == starting)
            .map(|outcome| {
                json!({
                    "unit": outcome.unit,
                    "result": outcome.result,
                    "seconds": outcome.took.as_secs_f64(),
                })
            })
            .collect()
    };
    if report.json {
        print_json(&json!({
            "config_path": report.path,
            "workers": report.workers,
            "previous_workers": report.previous,
            "config_changed": report.config_changed,
            "target_active": report.target_active,
            "already_running": report.already_running,
            "started": outcome_json(true),
            "stopped": outcome_json(false),
        }));
    } else {
        let was = match report.previous {
            Some(previous) if report.config_changed => format!(" (was {previous})"),
            _ if report.config_changed => String::new(),
            _ => " (unchanged)".to_owned(),
        };
        print_line(&format!(
            "{}: [ingest] workers = {}{was}",
            report.path.display(),
            report.workers
        ));
        print_line(&format!(
            "systemd reloaded: sluice.target wants sluice-ingest-worker@1..{}",
            report.workers
        ));
        if !report.target_active {
            print_line("sluice.target is not active: no instance started; they start with it");
        }
        for outcome in report.outcomes {
            let verb = if report.starts.contains(&outcome.unit) {
                "started"
            } else {
                "stopped"
            };
            if outcome.result == "done" {
                print_line(&format!(
                    "{verb} {} in {:.2}s",
                    outcome.unit,
                    outcome.took.as_secs_f64()
                ));
            } else {
                print_line(&format!(
                    "not {verb}: {} (job result {})",
                    outcome.unit, outcome.result
                ));
            }
        }
        if !report.already_running.is_empty() {
            print_line(&format!(
                "already running: {}",
                report.already_running.join(", ")
            ));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        let units: Vec<String> = failed
            .iter()
            .map(|outcome| format!("{} ({})", outcome.unit, outcome.result))
            .collect();
        Err(Failure::new(
            exit::ERROR,
            format!(
                "the configuration says workers = {}, but these jobs did not finish: {}; see \
                 systemctl status and journalctl -u for each",
                report.workers,
                units.join(", ")
            ),
        ))
    }
}

struct Context {
    config: Config,
    json: bool,
}

#[derive(Debug, Clone, Copy)]
enum JobChange {
    Retry,
    Cancel,
}

impl Context {
    fn open_store(&self) -> Result<Store, Failure> {
        Ok(Store::open(
            &self.config.store.path,
            &self.config.store_options(),
        )?)
    }

    fn page(&self, limit: u32, cursor: Option<i64>) -> Result<PageRequest, Failure> {
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
    fn block_on<T>(&self, work: impl Future<Output = T>) -> Result<T, Failure> {
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

    fn status(&self) -> Result<(), Failure> {
        let store = self.open_store()?;
        let counts = store.job_counts()?;
        let workers = self.config.ingest.workers;
        let address = self.config.bus.address.clone();
        let daemons = self.block_on(async move {
            match bus::connect(&address).await {
                Ok(connection) => Some(daemon_states(&connection, workers).await),
                Err(_) => None,
            }
        })?;
        let bus_reachable = daemons.is_some();
        let daemons = daemons.unwrap_or_else(|| {
            daemon_names(workers)
                .into_iter()
                .map(|(name, bus_name)| DaemonRow {
                    name,
                    bus_name,
                    running: false,
                    state: None,
                    status: None,
                })
                .collect()
        });
        if self.json {
            print_json(&json!({
                "bus_reachable": bus_reachable,
                "daemons": daemons.iter().map(|daemon| json!({
                    "name": daemon.name,
                    "bus_name": daemon.bus_name,
                    "running": daemon.running,
                    "state": daemon.state,
                    "status": daemon.status,
                })).collect::<Vec<_>>(),
                "jobs": counts.iter().map(|(state, count)| (state.as_str().to_owned(), Value::from(*count))).collect::<serde_json::Map<_, _>>(),
            }));
            return Ok(());
        }
        if !bus_reachable {
            print_line(&format!(
                "the {} cannot be reached; daemon states are unknown",
                self.config.bus.address
            ));
        }
        let rows: Vec<Vec<String>> = daemons
            .iter()
            .map(|daemon| {
                vec![
                    daemon.name.clone(),
                    if daemon.running { "yes" } else { "no" }.to_owned(),
                    daemon.state.clone().unwrap_or_else(|| "-".into()),
                    daemon.status.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print_table(&["DAEMON", "RUNNING", "STATE", "STATUS"], &rows);
        let summary: Vec<String> = counts
            .iter()
            .map(|(state, count)| format!("{count} {state}"))
            .collect();
        print_line(&format!("jobs: {}", summary.join(", ")));
        Ok(())
    }

    fn jobs_list(
        &self,
        state: Option<String>,
        kind: Option<String>,
        limit: u32,
        cursor: Option<i64>,
    ) -> Result<(), Failure> {
        let page = self.page(limit, cursor)?;
        let mut filter = JobFilter::default();
        for name in state.iter().flat_map(|text| text.split(',')) {
            if !name.is_empty() {
                filter.states.push(name.trim().parse::<JobState>()?);
            }
        }
        filter.kind = kind.filter(|kind| !kind.is_empty());
        let store = self.open_store()?;
        let jobs = store.list_jobs(&filter, page)?;
        if self.json {
            print_json(&serde_json::to_value(&jobs).unwrap_or_default());
            return Ok(());
        }
        let rows: Vec<Vec<String>> = jobs
            .items
            .iter()
            .map(|job| {
                vec![
                    job.id.to_string(),
                    job.kind.clone(),
                    job.state.to_string(),
                    format!("{}/{}", job.attempts, job.max_attempts),
                    job.progress
                        .map(|fraction| format!("{:.0}%", fraction * 100.0))
                        .unwrap_or_else(|| "-".into()),
                    job.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print_table(
            &["ID", "KIND", "STATE", "ATTEMPTS", "PROGRESS", "ERROR"],
            &rows,
        );
        if let Some(next) = jobs.next_cursor {
            print_line(&format!("more: --cursor {next}"));
        }
        Ok(())
    }

    fn jobs_show(&self, id: i64) -> Result<(), Failure> {
        let store = self.open_store()?;
        let job = store.get_job(id)?;
        let history = store.job_history(id)?;
        if self.json {
            print_json(&json!({ "job": job, "history": history }));
            return Ok(());
        }
        let optional = |value: Option<String>| value.unwrap_or_else(|| "-".into());
        print_fields(&[
            ("id", job.id.to_string()),
            ("kind", job.kind.clone()),
            ("state", job.state.to_string()),
            ("attempts", format!("{}/{}", job.attempts, job.max_attempts)),
            ("priority", job.priority.to_string()),
            ("payload", job.payload.to_string()),
            ("worker", optional(job.lease_owner.clone())),
            (
                "progress",
                optional(
                    job.progress
                        .map(|fraction| format!("{:.0}%", fraction * 100.0)),
                ),
            ),
            (
                "result",
                optional(job.result.as_ref().map(Value::to_string)),
            ),
            ("error", optional(job.error.clone())),
        ]);
        let rows: Vec<Vec<String>> = history
            .iter()
            .map(|transition| {
                vec![
                    transition.at_ms.to_string(),
                    transition
                        .from_state
                        .map(|state| state.to_string())
                        .unwrap_or_else(|| "-".into()),
                    transition.to_state.to_string(),
                    transition.attempt.to_string(),
                    transition.worker.clone().unwrap_or_default(),
                    transition.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print_line("");
        print_table(
            &["AT_MS", "FROM", "TO", "ATTEMPT", "WORKER", "ERROR"],
            &rows,
        );
        Ok(())
    }

    /// Retry or cancel through `org.sluice.Web1` when sluice-web runs (it also wakes the
    /// workers), else in the store directly, which every worker sees at its next poll or
    /// heartbeat.
    fn job_change(&self, id: i64, change: JobChange) -> Result<(), Failure> {
        let job_id = u64::try_from(id).ok().filter(|id| *id > 0).ok_or_else(|| {
            Failure::invalid(format!("job id must be a positive number, got {id}"))
        })?;
        let address = self.config.bus.address.clone();
        let through_bus = self.block_on(async move {
            let connection = bus::connect(&address).await.ok()?;
            if !bus::name_has_owner(&connection, WEB_BUS_NAME).await {
                return None;
            }
            let proxy = match WebProxy::builder(&connection)
                .cache_properties(CacheProperties::No)
                .build()
                .await
            {
                Ok(proxy) => proxy,
                Err(error) => return Some(Err(BusError::ZBus(error))),
            };
            Some(match change {
                JobChange::Retry => proxy.retry_job(job_id).await.map(|()| "queued".to_owned()),
                JobChange::Cancel => proxy.cancel_job(job_id).await,
            })
        })?;
        let (state, via) = match through_bus {
            Some(result) => (result?, "dbus"),
            None => {
                let mut store = self.open_store()?;
                let job = match change {
                    JobChange::Retry => store.retry_job(id)?,
                    JobChange::Cancel => store.cancel_job(id)?,
                };
                let state = if job.state == JobState::Running {
                    "cancelling".to_owned()
                } else {
                    job.state.to_string()
                };
                (state, "store")
            }
        };
        if self.json {
            print_json(&json!({ "job_id": id, "state": state, "via": via }));
        } else {
            print_line(&format!("job {id}: {state}"));
        }
        Ok(())
    }

    /// Through `org.sluice.Scraper1.AddDownload` when the scraper runs; else recorded in the
    /// store after the same checks, to be fetched when the scraper starts.
    fn download(&self, arguments: DownloadArguments) -> Result<(), Failure> {
        // The same policy as the scraper's D-Bus object and the web API, including the
        // lookup of the host name (on this command's runtime, with the policy's timeout).
        let submitted = NewDownload {
            url: arguments.url.clone(),
            file_name: arguments.name.clone(),
            bundle: arguments.bundle.clone(),
            expected_sha256: arguments.sha256.clone(),
            max_bytes: arguments.max_bytes,
            source: None,
            max_attempts: self.config.jobs.max_attempts,
        };
        let rules = SubmitRules {
            allow_private_addresses: self.config.scraper.allow_private_addresses,
            max_download_size: self.config.scraper.max_download_size,
        };
        let download = policy::validate_submission(&submitted, &rules)?;
        let resolve_url = download.url().clone();
        self.block_on(async move {
            policy::resolve_download_host(&resolve_url, rules.allow_private_addresses).await
        })??;
        let options = DownloadOptions {
            sha256: arguments.sha256.clone(),
            bundle: arguments.bundle.clone(),
            file_name: arguments.name.clone(),
            max_bytes: arguments.max_bytes,
            source: None,
        };
        let address = self.config.bus.address.clone();
        let url = arguments.url.clone();
        let variants = options.to_variants();
        let through_bus = self.block_on(async move {
            let connection = bus::connect(&address).await.ok()?;
            if !bus::name_has_owner(&connection, SCRAPER_BUS_NAME).await {
                return None;
            }
            let proxy = match ScraperProxy::builder(&connection)
                .cache_properties(CacheProperties::No)
                .build()
                .await
            {
                Ok(proxy) => proxy,
                Err(error) => return Some(Err(BusError::ZBus(error))),
            };
            Some(proxy.add_download(&url, variants).await)
        })?;
        let (download_id, job_id, via) = match through_bus {
            Some(result) => {
                let (download_id, job_id) = result?;
                (download_id as i64, job_id as i64, "dbus")
            }
            None => {
                let mut store = self.open_store()?;
                let created = store.create_download(&download)?;
                (created.download_id, created.job_id, "store")
            }
        };
        if self.json {
            print_json(&json!({ "download_id": download_id, "job_id": job_id, "via": via }));
        } else {
            print_line(&format!("download {download_id} queued as job {job_id}"));
            if via == "store" {
                print_line("sluice-scraper is not running; it fetches the download when it starts");
            }
        }
        Ok(())
    }

    /// Only the monitor can walk the folders, so without it this fails with status 5.
    fn rescan(&self, path: Option<PathBuf>) -> Result<(), Failure> {
        let path = match path {
            Some(path) => std::path::absolute(&path)
                .map_err(|error| Failure::invalid(format!("path {}: {error}", path.display())))?
                .to_string_lossy()
                .into_owned(),
            None => String::new(),
        };
        let address = self.config.bus.address.clone();
        let requested = path.clone();
        let result = self.block_on(async move {
            let connection = bus::connect(&address).await.ok()?;
            if !bus::name_has_owner(&connection, MONITOR_BUS_NAME).await {
                return None;
            }
            let proxy = match MonitorProxy::builder(&connection)
                .cache_properties(CacheProperties::No)
                .build()
                .await
            {
                Ok(proxy) => proxy,
                Err(error) => return Some(Err(BusError::ZBus(error))),
            };
            Some(proxy.rescan(&requested).await)
        })?;
        let folders = result.ok_or_else(|| {
            Failure::new(
                exit::DAEMON_UNAVAILABLE,
                "sluice-monitor is not running (org.sluice.Monitor1 has no owner); start it to rescan",
            )
        })??;
        if self.json {
            print_json(&json!({ "path": path, "folders_queued": folders }));
        } else {
            print_line(&format!("rescan queued for {folders} watched folder(s)"));
        }
        Ok(())
    }

    fn docs_list(
        &self,
        query: Option<String>,
        limit: u32,
        cursor: Option<i64>,
    ) -> Result<(), Failure> {
        let page = self.page(limit, cursor)?;
        let store = self.open_store()?;
        // Search hits and plain listings print the same: the document, plus the matching
        // snippet when searching.
        let (documents, next_cursor): (Vec<(sluice_core::store::Document, Option<String>)>, _) =
            match query.filter(|text| !text.trim().is_empty()) {
                Some(text) => {
                    let hits = store.search_documents(&text, page)?;
                    let next = hits.next_cursor;
                    (
                        hits.items
                            .into_iter()
                            .map(|hit| (hit.document, Some(hit.snippet)))
                            .collect(),
                        next,
                    )
                }
                None => {
                    let listed = store.list_documents(&DocumentFilter::default(), page)?;
                    let next = listed.next_cursor;
                    (
                        listed
                            .items
                            .into_iter()
                            .map(|document| (document, None))
                            .collect(),
                        next,
                    )
                }
            };
        if self.json {
            let items: Vec<Value> = documents
                .iter()
                .map(|(document, snippet)| {
                    let mut item = serde_json::to_value(document).unwrap_or_default();
                    if let Some(snippet) = snippet {
                        item["snippet"] = Value::from(snippet.as_str());
                    }
                    item
                })
                .collect();
            print_json(&json!({ "items": items, "next_cursor": next_cursor }));
            return Ok(());
        }
        let rows: Vec<Vec<String>> = documents
            .iter()
            .map(|(document, _)| {
                vec![
                    document.id.to_string(),
                    document.original_name.clone(),
                    document.mime.clone(),
                    document.size.to_string(),
                    document.sha256.chars().take(16).collect(),
                    document
                        .library_path
                        .as_ref()
                        .map(|path| path.display().to_string())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        print_table(&["ID", "NAME", "TYPE", "SIZE", "SHA256", "PATH"], &rows);
        if let Some(next) = next_cursor {
            print_line(&format!("more: --cursor {next}"));
        }
        Ok(())
    }
}

struct DaemonRow {
    name: String,
    bus_name: String,
    running: bool,
    state: Option<String>,
    status: Option<String>,
}

fn daemon_names(workers: u32) -> Vec<(String, String)> {
    let mut names = vec![
        ("sluice-monitor".to_owned(), MONITOR_BUS_NAME.to_owned()),
        ("sluice-scraper".to_owned(), SCRAPER_BUS_NAME.to_owned()),
        ("sluice-web".to_owned(), WEB_BUS_NAME.to_owned()),
    ];
    for instance in 1..=workers {
        names.push((
            format!("sluice-ingest-worker@{instance}"),
            ingest_bus_name(&instance.to_string()),
        ));
    }
    names
}

async fn daemon_states(connection: &Connection, workers: u32) -> Vec<DaemonRow> {
    let mut rows = Vec::new();
    for (name, bus_name) in daemon_names(workers) {
        let running = bus::name_has_owner(connection, &bus_name).await;
        let (state, status) = if running {
            read_state(connection, &bus_name)
                .await
                .unwrap_or((None, None))
        } else {
            (None, None)
        };
        rows.push(DaemonRow {
            name,
            bus_name,
            running,
            state,
            status,
        });
    }
    rows
}

type StatePair = (Option<String>, Option<String>);

async fn read_state(connection: &Connection, bus_name: &str) -> zbus::Result<StatePair> {
    let mut properties = bus::daemon_properties(connection, bus_name).await?;
    let mut text = |name: &str| {
        properties
            .remove(name)
            .and_then(|value| String::try_from(value).ok())
    };
    Ok((text("State"), text("Status")))
}
