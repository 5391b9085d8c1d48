//! sluice-scraper: fetches the network into the inbox.
//!
//! Today it runs *downloads*: one URL → one file, submitted over D-Bus (`AddDownload`) or as a
//! row written by another process (the web API, sluicectl) through
//! `Store::create_download`. Either way a download is a `downloads` row plus a `download` job,
//! and the scraper claims those jobs from the queue like any worker: it wakes on `JobQueued`
//! signals and also polls slowly, since a lost signal must not lose work. Each claimed job
//! runs as a task ([`transfer`]) under the SSRF guard ([`guard`]) and the per-host limits
//! ([`hosts`]).
//!
//! The main loop owns everything that changes state: it claims jobs, starts and stops tasks,
//! answers D-Bus commands, reloads the configuration, publishes status and pings the
//! watchdog. Scheduled *sources* (page, links, feed; [`sources`]) are one more timer event
//! in [`Event`]: due sources are checked by tasks of their own, and what a check finds is
//! queued as `download` jobs through the same store call, policy and queue limit, so the
//! download machinery needs no change for them.

mod bundles;
mod guard;
mod hf;
mod hosts;
mod inbox;
#[cfg(test)]
mod loop_tests;
mod sources;
mod store_thread;
mod transfer;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use sluice_core::bus::{
    BusError, BusSetupError, CallerPolicy, DaemonState, DownloadOptions, Reply, ScraperCommand,
    ScraperService, ScraperStatus, SourceStates,
};
use sluice_core::config::Config;
use sluice_core::config::ConfigError;
use sluice_core::policy::{SubmitRules, validate_submission};
use sluice_core::runtime::{
    CommonArguments, ConfigReloader, Daemon, DaemonExit, Dependencies, Notifier, ReloadOutcome,
    RuntimeError, RuntimeFlavour, Signal, SignalReceiver, StartError, StatusLine, StopDeadline,
    WatchdogTicker, claimant_on,
};
use sluice_core::store::downloads::DOWNLOAD_JOB_KIND;
use sluice_core::store::{
    Claimant, ClaimedJob, DownloadError, DownloadOutcome, DownloadState, JobError, NewDownload,
    SourceError, SourceStatus, StoreError,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use guard::{build_client, build_source_client};
use hosts::HostLimiter;
use inbox::prepare_folders;
use store_thread::StoreHandle;
pub use transfer::WORKER_NAME;
use transfer::{Counters, Ended, StopRequest, TaskReport, TransferContext, TransferSettings};

/// At most this many downloads run at once, whatever the hosts; the per-host limit is the
/// politeness, this bounds open files and connections.
pub const MAX_ACTIVE_DOWNLOADS: usize = 8;

/// How often the queue is checked without a `JobQueued` signal (a signal may be lost; the
/// database is the truth).
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Every this many polls, partial files of downloads that ended elsewhere (cancelled through
/// the web API, deleted) are removed from staging.
const SWEEP_EVERY_POLLS: u32 = 12;

/// How often the schedule of the sources is looked at (a cheap read of a small table).
pub const SOURCE_TICK: Duration = Duration::from_secs(1);

/// How long `DeleteDownload` waits for a running download to stop.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Why the scraper could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScraperError {
    #[error("{0}")]
    Folders(String),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    BusSetup(#[from] BusSetupError),
    #[error("cannot subscribe to JobQueued signals: {0}")]
    Subscribe(#[source] zbus::Error),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

impl ScraperError {
    /// The exit status systemd sees for this failure.
    pub fn exit(&self) -> DaemonExit {
        match self {
            ScraperError::Folders(_) => DaemonExit::Config,
            ScraperError::Start(error) => error.exit(),
            ScraperError::Store(_) | ScraperError::BusSetup(_) | ScraperError::Subscribe(_) => {
                DaemonExit::Unavailable
            }
            ScraperError::Runtime(_) | ScraperError::HttpClient(_) => DaemonExit::Software,
        }
    }
}

/// Downloads URLs into sluice's inbox (a systemd service; see sluice-scraper(8)).
#[derive(Debug, clap::Parser)]
#[command(name = "sluice-scraper", version)]
pub struct Arguments {
    #[command(flatten)]
    pub common: CommonArguments,
}

/// `EINVAL`, the errno systemd shows for an invalid configuration.
const EINVAL: u32 = 22;

/// sluice-scraper as the shared start-up runs it ([`sluice_core::runtime::daemon_main`]).
#[derive(Debug)]
pub struct ScraperDaemon;

impl Daemon for ScraperDaemon {
    type Arguments = Arguments;
    type Error = ScraperError;
    const RUNTIME: RuntimeFlavour = RuntimeFlavour::MultiThread { worker_threads: 2 };

    fn common_arguments(arguments: &Arguments) -> &CommonArguments {
        &arguments.common
    }

    fn log_identifier(_arguments: &Arguments) -> String {
        "sluice-scraper".to_owned()
    }

    fn configuration_invalid(error: &ConfigError, notifier: &Notifier) {
        tracing::error!(error = %error, "invalid configuration: {error}");
        notifier.failed(EINVAL, &format!("invalid configuration: {error}"));
    }

    /// Staging and inbox must exist and share a file system (the finished file is renamed
    /// into the inbox); otherwise systemd shows `EXDEV` and the reason.
    fn prepare(
        _arguments: Arguments,
        config: &Config,
        _config_path: &Path,
        notifier: &Notifier,
    ) -> Result<ScraperDaemon, ScraperError> {
        if let Err(reason) = prepare_folders(&config.scraper.staging, &config.scraper.inbox) {
            notifier.failed(libc::EXDEV as u32, &reason);
            return Err(ScraperError::Folders(reason));
        }
        Ok(ScraperDaemon)
    }

    async fn run(self, dependencies: Dependencies) -> Result<(), ScraperError> {
        run(dependencies).await
    }

    fn report_failure(error: ScraperError) -> DaemonExit {
        tracing::error!(error = %error, "sluice-scraper stopped: {error}");
        error.exit()
    }
}

/// Everything the main loop reacts to.
#[derive(Debug)]
enum Event {
    WatchdogTick,
    Signal(Signal),
    Command(ScraperCommand),
    /// A `download` job was queued somewhere (our own `AddDownload` or another process).
    JobQueued,
    PollTick,
    StatusTick,
    TaskEnded(TaskReport),
    SourceTick,
    SourceChecked(sources::CheckReport),
}

/// The receivers the loop selects on, apart from the state it changes.
struct EventSources {
    watchdog: WatchdogTicker,
    signals: SignalReceiver,
    commands: mpsc::Receiver<ScraperCommand>,
    wakeups: mpsc::Receiver<()>,
    poll: Interval,
    status: Interval,
    reports: mpsc::UnboundedReceiver<TaskReport>,
    source_tick: Interval,
    checks: mpsc::UnboundedReceiver<sources::CheckReport>,
}

impl EventSources {
    async fn next(&mut self) -> Event {
        tokio::select! {
            () = self.watchdog.tick() => Event::WatchdogTick,
            signal = self.signals.recv() => Event::Signal(signal),
            Some(command) = self.commands.recv() => Event::Command(command),
            Some(()) = self.wakeups.recv() => Event::JobQueued,
            Some(report) = self.reports.recv() => Event::TaskEnded(report),
            _ = self.poll.tick() => Event::PollTick,
            _ = self.status.tick() => Event::StatusTick,
            _ = self.source_tick.tick() => Event::SourceTick,
            Some(report) = self.checks.recv() => Event::SourceChecked(report),
        }
    }
}

/// A download task the loop started.
#[derive(Debug)]
struct ActiveDownload {
    job: ClaimedJob,
    download_id: Option<i64>,
    stop: watch::Sender<StopRequest>,
    handle: JoinHandle<()>,
    /// Becomes `true` when the task has recorded its end and sent its report.
    ended: watch::Receiver<bool>,
}

/// A running download told to stop, and how to see that it has.
pub(crate) struct Stopping {
    download_id: i64,
    ended: watch::Receiver<bool>,
}

/// Waits, up to [`STOP_WAIT`] for all of them together, until every download in `stopping`
/// has ended (its task recorded the end; a task that is gone counts as ended).
async fn wait_until_stopped(stopping: Vec<Stopping>) -> Result<(), BusError> {
    let deadline = Instant::now() + STOP_WAIT;
    for mut download in stopping {
        let ended = tokio::time::timeout_at(deadline, download.ended.wait_for(|ended| *ended));
        if ended.await.is_err() {
            return Err(BusError::Busy(format!(
                "download {} did not stop within {STOP_WAIT:?}; try again",
                download.download_id
            )));
        }
    }
    Ok(())
}

/// Removes the partial file of a download from staging.
pub(crate) fn remove_part(settings: &TransferSettings, download_id: i64) {
    let part = inbox::part_path(&settings.staging, download_id);
    if let Err(error) = inbox::remove_part(&part) {
        tracing::warn!(
            error = %error,
            path = %part.display(),
            "cannot remove the partial file {} of download {download_id}: {error}",
            part.display()
        );
    }
}

type Reread = Box<dyn FnMut() -> Result<Config, String> + Send>;

struct Scraper {
    notifier: Notifier,
    /// The scraper's name and bus connection, recorded with every lease it takes.
    claimant: Claimant,
    reloader: ConfigReloader<Config, Reread>,
    service: Arc<ScraperService>,
    store: StoreHandle,
    context: TransferContext,
    active: HashMap<i64, ActiveDownload>,
    reports: mpsc::UnboundedSender<TaskReport>,
    stopping: bool,
    last_error: Option<String>,
    downloads_done: u64,
    downloads_failed: u64,
    polls: u32,
    rate_sample: (Instant, u64),
    bytes_per_second: f64,
    /// Source checks running, by source id.
    checking: HashMap<i64, JoinHandle<()>>,
    check_reports: mpsc::UnboundedSender<sources::CheckReport>,
    robots: sources::RobotsCache,
    /// The guarded client without automatic redirects, for source checks.
    source_client: reqwest::Client,
    /// Wakes the loop to claim jobs (a task that queued some sends it).
    wake: mpsc::Sender<()>,
    /// `hf://` names being resolved through the Hub, each in a task of its own.
    resolving: Vec<JoinHandle<()>>,
    /// Other work started by a command that may take a while (a delete waiting for its
    /// downloads to stop), so the loop goes on meanwhile; aborted at shutdown.
    background: Vec<JoinHandle<()>>,
}

/// Runs the scraper until SIGTERM, with the store, bus connection, signals and notifier it is
/// given. `dependencies.config_path` is re-read on SIGHUP. The staging and inbox folders must
/// be ready ([`ScraperDaemon`]'s `prepare` checks them).
pub async fn run(dependencies: Dependencies) -> Result<(), ScraperError> {
    let Dependencies {
        config,
        config_path,
        store,
        bus: connection,
        signals,
        notifier,
    } = dependencies;
    // rustls needs one process-wide crypto provider; ring keeps the build free of cmake.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scraper_config = &config.scraper;
    let store = StoreHandle::start(store);
    let client = build_client(scraper_config).map_err(ScraperError::HttpClient)?;
    let source_client = build_source_client(scraper_config).map_err(ScraperError::HttpClient)?;

    let sources: Vec<String> = config
        .sources
        .iter()
        .map(|source| source.name.clone())
        .collect();
    let (service, commands) = ScraperService::start(
        &connection,
        CallerPolicy::for_this_process(),
        ScraperStatus::starting(sources, &scraper_config.staging),
        scraper_config.progress_interval,
    )
    .await?;
    let service = Arc::new(service);
    let (wake_sender, wakeups) = mpsc::channel(1);
    subscribe_to_job_queued(&connection, wake_sender.clone()).await?;

    // Only one scraper runs (the bus name is exclusive), so download jobs still leased to
    // our name by another process belong to a predecessor that is gone (or cut off from the
    // bus, and then fenced): make them claimable now rather than when their lease runs out.
    // The ingest workers do the same when they see this name's connection leave the bus; this
    // covers a scraper that died while no worker was watching.
    let claimant = claimant_on(&connection, WORKER_NAME);
    let take_over = claimant.clone();
    let orphans = store
        .call(move |store| store.rescue_leases_of_predecessors(&take_over))
        .await;
    match orphans {
        Ok(jobs) => {
            for job in jobs {
                tracing::info!(
                    job_id = job.id,
                    attempt = job.attempt,
                    state = %job.state,
                    "rescued download job {} from an earlier scraper process: {}",
                    job.id,
                    job.outcome()
                );
            }
        }
        Err(error) => tracing::warn!(
            error = %error,
            "cannot take over the downloads an earlier scraper process held: {error}; they \
             are taken over when their leases expire"
        ),
    }

    let (reports, report_receiver) = mpsc::unbounded_channel();
    let (check_reports, check_receiver) = mpsc::unbounded_channel();
    let reread_path = config_path.clone();
    let reread: Reread = Box::new(move || {
        let config = Config::load(&reread_path).map_err(|error| error.to_string())?;
        prepare_folders(&config.scraper.staging, &config.scraper.inbox)?;
        Ok(config)
    });
    let context = TransferContext {
        store: store.clone(),
        service: Arc::clone(&service),
        client,
        settings: Arc::new(transfer_settings(&config)),
        hosts: HostLimiter::new(
            scraper_config.per_host_concurrency,
            scraper_config.politeness_delay,
        ),
        counters: Arc::new(Counters::default()),
    };
    let status_interval = config.service.status_interval;
    let mut scraper = Scraper {
        notifier,
        claimant,
        reloader: ConfigReloader::new(config, reread),
        service,
        store,
        context,
        active: HashMap::new(),
        reports,
        stopping: false,
        last_error: None,
        downloads_done: 0,
        downloads_failed: 0,
        polls: 0,
        rate_sample: (Instant::now(), 0),
        bytes_per_second: 0.0,
        checking: HashMap::new(),
        check_reports,
        robots: sources::RobotsCache::default(),
        source_client,
        wake: wake_sender,
        resolving: Vec::new(),
        background: Vec::new(),
    };
    {
        // Before any source check can prefill.
        let staging = scraper.context.settings.staging.clone();
        let _ = tokio::task::spawn_blocking(move || inbox::remove_stale_prefills(&staging)).await;
    }
    scraper.sync_sources(true).await;
    scraper.sweep_staging().await;
    scraper.settle_bundles().await;
    let mut sources = EventSources {
        watchdog: scraper.notifier.watchdog_ticker(),
        signals,
        commands,
        wakeups,
        poll: interval(POLL_INTERVAL),
        status: interval(status_interval),
        reports: report_receiver,
        source_tick: interval(SOURCE_TICK),
        checks: check_receiver,
    };
    let status = scraper.refresh_status().await;
    scraper.notifier.ready(&status);
    tracing::info!(
        inbox = %scraper.reloader.current().scraper.inbox.display(),
        staging = %scraper.reloader.current().scraper.staging.display(),
        "ready"
    );
    scraper.claim().await;

    loop {
        match sources.next().await {
            Event::WatchdogTick => scraper.notifier.watchdog_ping(),
            Event::Signal(Signal::Reload) => scraper.reload().await,
            Event::Signal(Signal::Terminate) => {
                scraper.shut_down(&mut sources).await;
                return Ok(());
            }
            Event::Command(command) => scraper.handle_command(command).await,
            Event::JobQueued => scraper.claim().await,
            Event::PollTick => {
                scraper.polls = scraper.polls.wrapping_add(1);
                if scraper.polls.is_multiple_of(SWEEP_EVERY_POLLS) {
                    scraper.sweep_staging().await;
                }
                scraper.settle_bundles().await;
                scraper.claim().await;
            }
            Event::StatusTick => {
                scraper.refresh_status().await;
            }
            Event::TaskEnded(report) => {
                scraper.task_ended(report);
                scraper.settle_bundles().await;
                scraper.claim().await;
                scraper.refresh_status().await;
            }
            Event::SourceTick => scraper.check_due_sources().await,
            Event::SourceChecked(report) => scraper.source_checked(report).await,
        }
    }
}

fn interval(period: Duration) -> Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

fn transfer_settings(config: &Config) -> TransferSettings {
    TransferSettings {
        staging: config.scraper.staging.clone(),
        inbox: config.scraper.inbox.clone(),
        max_download_size: config.scraper.max_download_size,
        allow_private_addresses: config.scraper.allow_private_addresses,
        progress_interval: config.scraper.progress_interval,
        heartbeat_interval: config.jobs.heartbeat_interval,
        lease: config.jobs.lease,
        download_timeout: config.scraper.download_timeout,
        hub_credentials: config
            .scraper
            .hf_credentials_file
            .clone()
            .map(|file| (config.scraper.hf_endpoint.clone(), file)),
        source_credentials: config
            .sources
            .iter()
            .filter_map(|source| {
                let file = source.credentials_file.clone()?;
                Some((source.name.clone(), (source.url.clone(), file)))
            })
            .collect(),
    }
}

/// Forwards every `JobQueued` signal for a download, from any sender, as a wake-up.
async fn subscribe_to_job_queued(
    connection: &zbus::Connection,
    wake: mpsc::Sender<()>,
) -> Result<(), ScraperError> {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .member("JobQueued")
        .build()
        .map_err(ScraperError::Subscribe)?;
    let mut stream =
        zbus::MessageStream::for_match_rule(rule, connection, std::num::NonZeroUsize::new(256))
            .await
            .map_err(ScraperError::Subscribe)?;
    tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            let Ok(message) = message else { continue };
            let body = message.body();
            if let Ok((kind, _job_id)) = body.deserialize::<(String, u64)>()
                && kind == DOWNLOAD_JOB_KIND
            {
                // A full channel already holds a wake-up; one is enough.
                let _ = wake.try_send(());
            }
        }
    });
    Ok(())
}

impl Scraper {
    /// Claims as many download jobs as there are free task slots and starts them.
    async fn claim(&mut self) {
        if self.stopping {
            return;
        }
        let free = MAX_ACTIVE_DOWNLOADS.saturating_sub(self.active.len());
        if free == 0 {
            return;
        }
        let lease = self.context.settings.lease;
        let claimant = self.claimant.clone();
        let claimed = self
            .store
            .call(move |store| store.claim_jobs(&claimant, &[DOWNLOAD_JOB_KIND], free, lease))
            .await;
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::error!(error = %error, "cannot claim download jobs: {error}");
                self.last_error = Some(format!("cannot claim download jobs: {error}"));
                return;
            }
        };
        for job in claimed {
            self.start_task(job);
        }
    }

    fn start_task(&mut self, job: ClaimedJob) {
        let (stop, stop_receiver) = watch::channel(StopRequest::Continue);
        let (ended_sender, ended) = watch::channel(false);
        let context = self.context.clone();
        let reports = self.reports.clone();
        let download_id = job
            .payload
            .get("download_id")
            .and_then(serde_json::Value::as_i64);
        let task_job = job.clone();
        let handle = tokio::spawn(async move {
            // A panic inside the download (a bug) must still end the job and send its report,
            // or the loop would keep its slot taken until the daemon stops.
            let download = transfer::run_download(context.clone(), task_job.clone(), stop_receiver);
            let report = match AssertUnwindSafe(download).catch_unwind().await {
                Ok(report) => report,
                Err(panic) => {
                    transfer::record_panic(
                        &context,
                        &task_job,
                        download_id,
                        &panic_message(&*panic),
                    )
                    .await
                }
            };
            let _ = reports.send(report);
            let _ = ended_sender.send(true);
        });
        self.active.insert(
            job.id,
            ActiveDownload {
                job,
                download_id,
                stop,
                handle,
                ended,
            },
        );
    }

    fn task_ended(&mut self, report: TaskReport) {
        self.active.remove(&report.job_id);
        match report.ended {
            Ended::Succeeded { .. } => self.downloads_done += 1,
            Ended::Failed { error } => {
                self.downloads_failed += 1;
                self.last_error = Some(error);
            }
            Ended::Retrying { error }
            | Ended::Postponed { error }
            | Ended::NotRecorded { error } => {
                self.last_error = Some(error);
            }
            Ended::Cancelled | Ended::Released => {}
        }
    }

    fn active_for_download(&self, download_id: i64) -> Option<i64> {
        self.active
            .values()
            .find(|active| active.download_id == Some(download_id))
            .map(|active| active.job.id)
    }

    async fn handle_command(&mut self, command: ScraperCommand) {
        match command {
            ScraperCommand::AddDownload {
                url,
                options,
                reply,
            } => {
                let result = self.add_download(url, options).await;
                let _ = reply.send(result);
            }
            ScraperCommand::CancelDownload { download_id, reply } => {
                let result = match bus_id(download_id) {
                    Ok(id) => self.cancel_download(id).await.map(|_| ()),
                    Err(error) => Err(error),
                };
                let _ = reply.send(result);
            }
            ScraperCommand::DeleteDownload { download_id, reply } => match bus_id(download_id) {
                Ok(id) => self.delete_download(id, reply).await,
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            ScraperCommand::AddBundle { bundle, reply } => self.add_bundle(bundle, reply).await,
            ScraperCommand::CancelBundle { bundle_id, reply } => {
                let result = match bundle_bus_id(bundle_id) {
                    Ok(id) => self.cancel_bundle(id).await,
                    Err(error) => Err(error),
                };
                let _ = reply.send(result);
            }
            ScraperCommand::DeleteBundle { bundle_id, reply } => match bundle_bus_id(bundle_id) {
                Ok(id) => self.delete_bundle(id, reply).await,
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            ScraperCommand::ScrapeNow { source, reply } => {
                let result = self.scrape_now(source).await;
                let _ = reply.send(result);
            }
        }
    }

    /// Makes the `sources` table match the configuration (at start and after a reload), and
    /// at start spreads out the checks that came due while the scraper was down.
    async fn sync_sources(&mut self, at_start: bool) {
        let definitions = sources::definitions(self.reloader.current());
        let synced = self
            .store
            .call(move |store| {
                let sync = store.sync_sources(&definitions, &mut sources::first_check_in)?;
                let spread = if at_start {
                    store.spread_overdue_sources(
                        Duration::from_secs(5),
                        &mut sources::first_check_in,
                    )?
                } else {
                    0
                };
                Ok::<_, SourceError>((sync, spread))
            })
            .await;
        match synced {
            Ok((sync, spread)) => {
                for name in &sync.added {
                    tracing::info!(source = %name, "source {name} added");
                }
                for name in &sync.changed {
                    tracing::info!(source = %name, "source {name} changed");
                }
                for name in &sync.disabled {
                    tracing::info!(source = %name, "source {name} removed from the configuration; disabled");
                }
                if spread > 0 {
                    tracing::info!("{spread} overdue sources spread over the next minute");
                }
            }
            Err(error) => {
                tracing::error!(error = %error, "cannot record the configured sources: {error}");
                self.last_error = Some(format!("cannot record the configured sources: {error}"));
            }
        }
        let names: Vec<String> = self
            .reloader
            .current()
            .sources
            .iter()
            .map(|source| source.name.clone())
            .collect();
        let _ = self
            .service
            .update_status(|status| status.sources = names)
            .await;
        self.publish_source_states().await;
    }

    /// Starts a check of every due source that is not being checked already.
    async fn check_due_sources(&mut self) {
        if self.stopping || self.checking.len() >= sources::MAX_ACTIVE_CHECKS {
            return;
        }
        let due = self
            .store
            .call(|store| store.due_sources(sluice_core::store::now_ms()))
            .await;
        let due = match due {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(error = %error, "cannot read the schedule of the sources: {error}");
                return;
            }
        };
        for source in due {
            if self.checking.len() >= sources::MAX_ACTIVE_CHECKS {
                break;
            }
            if !self.checking.contains_key(&source.id) {
                self.start_check(source);
            }
        }
    }

    fn start_check(&mut self, source: SourceStatus) {
        let config = self.reloader.current();
        let Some(source_config) = config
            .sources
            .iter()
            .find(|configured| configured.name == source.name)
            .cloned()
        else {
            return;
        };
        let context = sources::CheckContext {
            store: self.store.clone(),
            client: self.source_client.clone(),
            hosts: self.context.hosts.clone(),
            robots: self.robots.clone(),
            staging: config.scraper.staging.clone(),
            user_agent: config.scraper.user_agent.clone(),
            allow_private_addresses: config.scraper.allow_private_addresses,
            max_redirects: config.scraper.max_redirects,
            max_pending: config.scraper.max_pending,
            max_download_size: config.scraper.max_download_size,
            max_attempts: config.jobs.max_attempts,
        };
        let reports = self.check_reports.clone();
        let source_id = source.id;
        let name = source.name.clone();
        let handle = tokio::spawn(async move {
            let check = sources::run_check(context, source, source_config);
            let report = match AssertUnwindSafe(check).catch_unwind().await {
                Ok(report) => report,
                Err(panic) => {
                    let error = format!("the check panicked: {}", panic_message(&*panic));
                    tracing::error!(source = %name, "source {name}: {error}");
                    sources::CheckReport {
                        source_id,
                        name,
                        created: Vec::new(),
                        outcome: "failed",
                    }
                }
            };
            let _ = reports.send(report);
        });
        self.checking.insert(source_id, handle);
    }

    /// A check ended: announce its downloads, claim them, publish the source's state.
    async fn source_checked(&mut self, report: sources::CheckReport) {
        self.checking.remove(&report.source_id);
        for created in &report.created {
            if let Err(error) = self
                .service
                .job_queued(DOWNLOAD_JOB_KIND, created.job_id as u64)
                .await
            {
                tracing::warn!(error = %error, "cannot emit JobQueued for job {}: {error}", created.job_id);
            }
        }
        if let Err(error) = self
            .service
            .source_checked(&report.name, report.outcome, report.created.len() as u64)
            .await
        {
            tracing::warn!(error = %error, "cannot emit SourceChecked: {error}");
        }
        self.publish_source_states().await;
        if !report.created.is_empty() {
            self.claim().await;
        }
    }

    /// `ScrapeNow`: the source becomes due now and its check starts (unless one runs).
    async fn scrape_now(&mut self, name: String) -> Result<u64, BusError> {
        let lookup = name.clone();
        let (source, check) = self
            .store
            .call(move |store| store.check_source_now(&lookup))
            .await
            .map_err(|error| match error {
                SourceError::NotFound(_) | SourceError::Disabled(_) => {
                    BusError::NotFound(format!("source {name:?} is not configured"))
                }
                error => BusError::Internal(error.to_string()),
            })?;
        tracing::info!(source = %source.name, "source {} checked on request", source.name);
        if !self.checking.contains_key(&source.id) && !self.stopping {
            self.start_check(source);
        }
        Ok(check)
    }

    /// Publishes `SourceStates` from the store.
    async fn publish_source_states(&mut self) {
        let rows = self.store.call(|store| store.list_sources()).await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(error = %error, "cannot read the sources: {error}");
                return;
            }
        };
        let states: SourceStates = rows
            .into_iter()
            .filter(|row| row.enabled)
            .map(|row| {
                (
                    row.name,
                    (
                        row.last_outcome.unwrap_or_default(),
                        row.last_error.unwrap_or_default(),
                        row.last_checked_at_ms.unwrap_or(0),
                        row.next_check_at_ms,
                        row.checks,
                        row.items_seen,
                        row.downloads_made,
                    ),
                )
            })
            .collect();
        if let Err(error) = self
            .service
            .update_status(|status| status.source_states = states)
            .await
        {
            tracing::warn!(error = %error, "cannot publish status: {error}");
        }
    }

    async fn add_download(
        &mut self,
        url: String,
        options: DownloadOptions,
    ) -> Result<(u64, u64), BusError> {
        let config = self.reloader.current();
        let submitted = NewDownload {
            url,
            file_name: options.file_name,
            bundle: options.bundle,
            expected_sha256: options.sha256,
            max_bytes: options.max_bytes,
            source: options.source,
            max_attempts: Some(config.jobs.max_attempts),
        };
        let rules = SubmitRules {
            allow_private_addresses: config.scraper.allow_private_addresses,
            max_download_size: config.scraper.max_download_size,
        };
        let download = validate_submission(&submitted, &rules)?;
        let url = download.url().clone();
        let max_pending = config.scraper.max_pending;
        let created = self
            .store
            .call(move |store| store.create_download_within_limit(&download, max_pending))
            .await
            .map_err(|error| {
                if let Some(full) = error.queue_full() {
                    tracing::warn!(url = %url, "download of {url} refused: {full}");
                }
                bus_error(error)
            })?;
        tracing::info!(
            download_id = created.download_id,
            job_id = created.job_id,
            url = %url,
            "download {} queued as job {}: {url}",
            created.download_id,
            created.job_id
        );
        if let Err(error) = self
            .service
            .job_queued(DOWNLOAD_JOB_KIND, created.job_id as u64)
            .await
        {
            tracing::warn!(
                error = %error,
                "cannot emit JobQueued for job {}: {error}",
                created.job_id
            );
        }
        self.claim().await;
        Ok((created.download_id as u64, created.job_id as u64))
    }

    /// Cancels in the store, then stops the local task at once (without waiting for its next
    /// progress save) or, for a download that was only queued, removes its partial file.
    async fn cancel_download(&mut self, download_id: i64) -> Result<DownloadState, BusError> {
        let download = self
            .store
            .call(move |store| store.cancel_download(download_id))
            .await
            .map_err(bus_error)?;
        match download.state {
            DownloadState::Cancelled => {
                self.remove_part(download_id);
                if let Some(job_id) = download.job_id {
                    let _ = self.service.job_finished(job_id as u64, "cancelled").await;
                }
                let _ = self
                    .service
                    .download_finished(download_id as u64, "cancelled", b"\0")
                    .await;
                tracing::info!(download_id, "queued download {download_id} cancelled");
            }
            _ => {
                if let Some(job_id) = self.active_for_download(download_id)
                    && let Some(active) = self.active.get(&job_id)
                {
                    let _ = active.stop.send(StopRequest::Cancel);
                }
            }
        }
        Ok(download.state)
    }

    /// `DeleteDownload`: cancels the download if it has not ended; then, once a running one
    /// stopped, forgets it and removes its partial file ([`Scraper::forget_once_stopped`]).
    async fn delete_download(&mut self, download_id: i64, reply: Reply<()>) {
        let stopping = self.stop_download_for_delete(download_id).await;
        let store = self.store.clone();
        let settings = Arc::clone(&self.context.settings);
        self.forget_once_stopped(stopping, reply, async move {
            let deleted = store
                .call(move |store| store.delete_download(download_id))
                .await
                .map_err(bus_error)?;
            remove_part(&settings, download_id);
            tracing::info!(
                download_id,
                state = %deleted.state,
                "download {download_id} deleted (it was {})",
                deleted.state
            );
            Ok(())
        });
    }

    /// Cancels the download if it has not ended; returns how to wait for it if it runs.
    async fn stop_download_for_delete(
        &mut self,
        download_id: i64,
    ) -> Result<Vec<Stopping>, BusError> {
        let download = self
            .store
            .call(move |store| store.get_download(download_id))
            .await
            .map_err(bus_error)?;
        if download.state.is_finished() {
            return Ok(Vec::new());
        }
        self.cancel_download(download_id).await?;
        Ok(self.stopping(download_id).into_iter().collect())
    }

    /// The end every delete shares (`DeleteDownload`, `DeleteBundle`): `stopping` is what the
    /// cancel left running, or why it failed, which is then the answer. Otherwise, in a task
    /// of its own so the loop goes on, waits (up to [`STOP_WAIT`] in all) until those
    /// downloads stopped, then runs `forget` (the store rows and files to remove) and answers
    /// with its result; a download that does not stop in time is the answer instead, with
    /// nothing forgotten.
    pub(crate) fn forget_once_stopped(
        &mut self,
        stopping: Result<Vec<Stopping>, BusError>,
        reply: Reply<()>,
        forget: impl Future<Output = Result<(), BusError>> + Send + 'static,
    ) {
        let stopping = match stopping {
            Ok(stopping) => stopping,
            Err(error) => {
                let _ = reply.send(Err(error));
                return;
            }
        };
        self.spawn_background(async move {
            let result = match wait_until_stopped(stopping).await {
                Ok(()) => forget.await,
                Err(error) => Err(error),
            };
            let _ = reply.send(result);
        });
    }

    /// How to wait for the task of `download_id` to end, if one runs.
    fn stopping(&self, download_id: i64) -> Option<Stopping> {
        let job_id = self.active_for_download(download_id)?;
        let active = self.active.get(&job_id)?;
        Some(Stopping {
            download_id,
            ended: active.ended.clone(),
        })
    }

    /// Runs `work` beside the loop (aborted at shutdown).
    fn spawn_background(&mut self, work: impl Future<Output = ()> + Send + 'static) {
        self.background.retain(|task| !task.is_finished());
        self.background.push(tokio::spawn(work));
    }

    fn remove_part(&self, download_id: i64) {
        remove_part(&self.context.settings, download_id);
    }

    /// Removes `.part` files whose download is finished or gone (cancelled or deleted by
    /// another process while not running here), and the staging folders of bundles that are
    /// no longer running (a file that finished as its bundle failed may have recreated one).
    async fn sweep_staging(&mut self) {
        self.sweep_bundle_folders().await;
        let staging = self.context.settings.staging.clone();
        let parts = match inbox::part_files(&staging) {
            Ok(parts) => parts,
            Err(error) => {
                tracing::warn!(
                    error = %error,
                    "cannot list the staging folder {}: {error}",
                    staging.display()
                );
                return;
            }
        };
        for (download_id, path) in parts {
            if self.active_for_download(download_id).is_some() {
                continue;
            }
            let state = self
                .store
                .call(move |store| {
                    store
                        .get_download(download_id)
                        .map(|download| download.state)
                })
                .await;
            let stale = match state {
                Ok(state) => state.is_finished(),
                Err(DownloadError::NotFound(_)) => true,
                Err(_) => false,
            };
            if stale {
                tracing::info!(
                    download_id,
                    path = %path.display(),
                    "removing the stale partial file {} of download {download_id}",
                    path.display()
                );
                if let Err(error) = inbox::remove_part(&path) {
                    tracing::warn!(
                        error = %error,
                        "cannot remove the stale partial file {}: {error}",
                        path.display()
                    );
                }
            }
        }
    }

    async fn reload(&mut self) {
        self.service
            .update_status(|status| status.state = DaemonState::Reloading)
            .await
            .unwrap_or_else(
                |error| tracing::warn!(error = %error, "cannot publish status: {error}"),
            );
        let before = self.reloader.current().clone();
        match self.reloader.reload(&self.notifier) {
            ReloadOutcome::Applied => {
                self.apply_config(&before);
                self.last_error = None;
                self.sync_sources(false).await;
            }
            ReloadOutcome::KeptPrevious { status, .. } => self.last_error = Some(status),
        }
        self.refresh_status().await;
    }

    /// Applies a reloaded configuration to the next download attempts; running ones finish
    /// with the settings they started with.
    fn apply_config(&mut self, before: &Config) {
        let config = self.reloader.current().clone();
        if config.store.path != before.store.path || config.bus.address != before.bus.address {
            tracing::warn!("store.path and bus.address take effect at the next restart");
        }
        if let Ok(client) = build_source_client(&config.scraper) {
            self.source_client = client;
        }
        match build_client(&config.scraper) {
            Ok(client) => self.context.client = client,
            Err(error) => {
                tracing::error!(
                    error = %error,
                    "cannot rebuild the HTTP client ({error}); keeping the old one"
                );
            }
        }
        if !self.context.hosts.has_settings(
            config.scraper.per_host_concurrency,
            config.scraper.politeness_delay,
        ) {
            self.context.hosts = HostLimiter::new(
                config.scraper.per_host_concurrency,
                config.scraper.politeness_delay,
            );
        }
        self.context.settings = Arc::new(transfer_settings(&config));
    }

    /// Publishes the status (properties and `STATUS=`) and returns the line.
    async fn refresh_status(&mut self) -> String {
        let counts = self.store.call(|store| store.download_counts()).await;
        let queued = counts
            .as_ref()
            .map(|counts| counts[&DownloadState::Queued])
            .unwrap_or(0);
        let received = self.context.counters.bytes_received.load(Ordering::Relaxed);
        let now = Instant::now();
        let elapsed = now.duration_since(self.rate_sample.0).as_secs_f64();
        if elapsed >= 0.5 {
            self.bytes_per_second = received.saturating_sub(self.rate_sample.1) as f64 / elapsed;
            self.rate_sample = (now, received);
        }
        let running = self.active.len();
        let activity = if self.stopping {
            format!("stopping: {running} downloads to release")
        } else {
            format!(
                "{running} download{} running, {queued} queued",
                if running == 1 { "" } else { "s" }
            )
        };
        let line = StatusLine::new(activity)
            .detail(format_rate(self.bytes_per_second))
            .last_error(self.last_error.as_deref())
            .to_string();
        if !self.stopping {
            self.notifier.status(&line);
        }
        let state = if self.stopping {
            DaemonState::Stopping
        } else {
            DaemonState::Running
        };
        let (done, failed, last_error) = (
            self.downloads_done,
            self.downloads_failed,
            self.last_error.clone().unwrap_or_default(),
        );
        let status_line = line.clone();
        if let Err(error) = self
            .service
            .update_status(|status| {
                status.state = state;
                status.status = status_line;
                status.last_error = last_error;
                status.downloads_active = running as u32;
                status.downloads_done = done;
                status.downloads_failed = failed;
                status.bytes_downloaded = received;
            })
            .await
        {
            tracing::warn!(error = %error, "cannot publish status: {error}");
        }
        line
    }

    /// SIGTERM: take no new work, release every running download (their partial files stay
    /// for the resume), and give up on stragglers at the stop deadline.
    async fn shut_down(&mut self, sources: &mut EventSources) {
        self.stopping = true;
        let stop_timeout = self.reloader.current().service.stop_timeout;
        self.notifier.stopping(&format!(
            "stopping: releasing {} downloads",
            self.active.len()
        ));
        self.refresh_status().await;
        tracing::info!(downloads = self.active.len(), "stopping");
        for active in self.active.values() {
            let _ = active.stop.send(StopRequest::Release);
        }
        // A source check holds nothing that needs releasing: an item is recorded with its
        // downloads or not at all, so a check cut short is simply done again.
        for (_, check) in self.checking.drain() {
            check.abort();
        }
        // A resolution cut short records nothing; its caller is told the request was dropped.
        for task in self.resolving.drain(..).chain(self.background.drain(..)) {
            task.abort();
        }
        let deadline = StopDeadline::after(stop_timeout);
        while !self.active.is_empty() && !deadline.has_passed() {
            tokio::select! {
                Some(report) = sources.reports.recv() => self.task_ended(report),
                () = sources.watchdog.tick() => self.notifier.watchdog_ping(),
                () = tokio::time::sleep(deadline.remaining()) => {}
            }
        }
        for (job_id, active) in self.active.drain() {
            active.handle.abort();
            let what = match active.download_id {
                Some(download_id) => format!("download {download_id} (job {job_id})"),
                None => format!("download job {job_id}"),
            };
            tracing::warn!(
                job_id,
                "{what} did not stop in time; releasing it from the loop"
            );
            let token = active.job.lease_token.clone();
            let staging = self.context.settings.staging.clone();
            let download_id = active.download_id;
            let released = self
                .store
                .call(move |store| match download_id {
                    Some(download_id) => {
                        let part = inbox::part_path(&staging, download_id);
                        let bytes_done = inbox::part_size(&part).unwrap_or(0);
                        store
                            .finish_download(
                                download_id,
                                job_id,
                                &token,
                                &DownloadOutcome::Released { bytes_done },
                            )
                            .map(|_| ())
                    }
                    None => store
                        .release_job(job_id, &token)
                        .map_err(DownloadError::from),
                })
                .await;
            if let Err(error) = released {
                tracing::error!(job_id, error = %error, "cannot release download job {job_id}: {error}");
            }
        }
        tracing::info!("stopped");
    }
}

/// What a panic said, for the job's error (`panic!` with a literal or a formatted message).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "no message".to_owned()
    }
}

/// D-Bus ids are `u64`; the database's are positive `i64`.
fn bus_id(id: u64) -> Result<i64, BusError> {
    i64::try_from(id).map_err(|_| BusError::NotFound(format!("download {id} does not exist")))
}

fn bundle_bus_id(id: u64) -> Result<i64, BusError> {
    i64::try_from(id).map_err(|_| BusError::NotFound(format!("bundle {id} does not exist")))
}

/// Turns a store refusal into the named D-Bus error a caller sees.
fn bus_error(error: DownloadError) -> BusError {
    match error {
        DownloadError::InvalidArgument(message) => BusError::InvalidArgument(message),
        DownloadError::NotFound(id) => BusError::NotFound(format!("download {id} does not exist")),
        DownloadError::BundleNotFound(id) => {
            BusError::NotFound(format!("bundle {id} does not exist"))
        }
        error @ (DownloadError::InvalidState { .. }
        | DownloadError::BundleInvalidState { .. }
        | DownloadError::PartOfBundle { .. }) => BusError::WrongState(error.to_string()),
        DownloadError::Job(JobError::NotFound(id)) => {
            BusError::NotFound(format!("job {id} does not exist"))
        }
        DownloadError::Job(JobError::QueueFull(full)) => BusError::QueueFull(full.to_string()),
        error => BusError::Internal(error.to_string()),
    }
}

/// `12.3 MB/s` (decimal units, as download tools show them).
pub fn format_rate(bytes_per_second: f64) -> String {
    let (value, unit) = if bytes_per_second >= 1e9 {
        (bytes_per_second / 1e9, "GB/s")
    } else if bytes_per_second >= 1e6 {
        (bytes_per_second / 1e6, "MB/s")
    } else if bytes_per_second >= 1e3 {
        (bytes_per_second / 1e3, "kB/s")
    } else {
        (bytes_per_second, "B/s")
    };
    format!("{value:.1} {unit}")
}

/// `sluice-scraper`'s entry point (the suite's one program calls it when run under that name): the shared
/// daemon start-up runs [`ScraperDaemon`] and turns the outcome into an exit status systemd
/// understands.
pub fn main() -> std::process::ExitCode {
    use std::process::Termination;
    sluice_core::runtime::daemon_main::<ScraperDaemon>().report()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_like_download_tools() {
        assert_eq!(format_rate(0.0), "0.0 B/s");
        assert_eq!(format_rate(12_300_000.0), "12.3 MB/s");
        assert_eq!(format_rate(1_500.0), "1.5 kB/s");
    }

    #[test]
    fn store_refusals_become_named_bus_errors() {
        assert!(matches!(
            bus_error(DownloadError::InvalidArgument("x".into())),
            BusError::InvalidArgument(_)
        ));
        assert!(matches!(
            bus_error(DownloadError::NotFound(3)),
            BusError::NotFound(_)
        ));
        assert!(matches!(
            bus_error(DownloadError::InvalidState {
                id: 1,
                state: DownloadState::Running,
                action: "delete"
            }),
            BusError::WrongState(_)
        ));
        let full = bus_error(DownloadError::Job(JobError::QueueFull(
            sluice_core::store::QueueFull {
                kind: DOWNLOAD_JOB_KIND.into(),
                pending: 2,
                limit: 2,
            },
        )));
        assert!(
            matches!(&full, BusError::QueueFull(message) if message.contains("limit is 2")),
            "{full:?}"
        );
        assert!(matches!(bus_id(u64::MAX), Err(BusError::NotFound(_))));
    }
}
