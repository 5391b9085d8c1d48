//! sluice-monitor: the one process that watches the `[[watch]]` folders. It records every file
//! that becomes ready and queues its ingest job in the same transaction, reconciles each tree
//! with the database (at start, after lost events, periodically and on `Rescan`), and announces
//! what it queued with one `FileDetected` per file (which names the ingest job, so there is no
//! `JobQueued` beside it).
//!
//! It never drops a detected file: while the ingest queue is at `[ingest] max_pending`, new
//! versions are recorded *held* (no job yet), and the monitor queues them, oldest first, as
//! the workers make room. It notices the room through the workers' job signals
//! ([`drain`]), and looks on its status tick as well while files are held, and at start.
//!
//! One main loop over [`Event`] owns all decisions; the watchers (notify's threads), the walks
//! (blocking tasks) and the recorder (a thread with the database connection) only feed it.

mod daemon;
mod detect;
mod drain;
pub mod recorder;
pub mod walk;
pub mod watcher;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_core::bus::{
    BusError, BusSetupError, CallerPolicy, DaemonState, MonitorCommand, MonitorService,
    MonitorStatus, path_to_bytestring,
};
use sluice_core::config::{Config, ConfigError, WatchConfig};
use sluice_core::runtime::{
    CommonArguments, ConfigReloader, Daemon, DaemonExit, Dependencies, Notifier, ReloadOutcome,
    RuntimeError, RuntimeFlavour, Signal, StartError, StatusLine, StopDeadline,
};
use sluice_core::store::{DetectedFile, StoreError};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use recorder::{Recorder, RecorderCommand, RecorderReport};
use walk::{CHUNKS_IN_FLIGHT, FileVersion, WalkBudget, WalkSummary, WalkTicket, is_wanted, walk};
use watcher::{FolderWatcher, WatchError, WatchEvent, WatchMessage, WatchSink, start_watcher};

pub use daemon::{Arguments, MonitorDaemon, MonitorError};

/// The unit name, used as the log identifier.
pub const UNIT_NAME: &str = "sluice-monitor";

/// After files could not be recorded, the folders are walked again this long afterwards,
/// twice as long after each further failure, up to [`RECORD_RETRY_MAX`]: the files are
/// still there, and a walk records whatever is there then. Without it they waited for the
/// periodic reconcile (an hour by default) after the database's disk had been full.
const RECORD_RETRY_FIRST: Duration = Duration::from_secs(1);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(60);

/// Everything the main loop reacts to.
#[derive(Debug)]
enum Event {
    Command(MonitorCommand),
    Signal(Signal),
    WatchdogTick,
    StatusTick,
    ReconcileTick,
    PendingTick,
    /// An ingest worker said a job ended: the queue may have room for held files.
    IngestJobEnded,
    Internal(Internal),
}

/// Events from the monitor's own helpers (watchers, walks, the recorder).
#[derive(Debug)]
enum Internal {
    Watch(WatchEvent),
    /// Files a walk found, with their place in the walks' budget: the ticket goes to the
    /// recorder behind the files and comes back once they are committed.
    WalkChunk {
        generation: u64,
        watch: usize,
        files: Vec<FileVersion>,
        ticket: WalkTicket,
    },
    WalkDone {
        generation: u64,
        watch: usize,
        scope: PathBuf,
        reason: &'static str,
        summary: WalkSummary,
        elapsed: Duration,
    },
    /// The second walk of a new directory (see `WatchMessage::NewDirectory`).
    DelayedWalk {
        generation: u64,
        watch: usize,
        scope: PathBuf,
    },
    /// Time to walk again the folders of files that could not be recorded.
    RecordRetry,
    Recorder(RecorderReport),
}

/// Runs the monitor until SIGTERM, with the store, bus connection, signals and notifier it is
/// given. `dependencies.config_path` is re-read on SIGHUP.
pub async fn run(dependencies: Dependencies) -> Result<(), MonitorError> {
    let Dependencies {
        config,
        config_path,
        store,
        bus: connection,
        mut signals,
        notifier,
    } = dependencies;
    let watched_paths: Vec<PathBuf> = config
        .watches
        .iter()
        .map(|watch| watch.path.clone())
        .collect();
    let (service, mut commands) = MonitorService::start(
        &connection,
        CallerPolicy::for_this_process(),
        MonitorStatus::starting(watched_paths, config.store.durability.as_str()),
    )
    .await?;

    let (internal_sender, mut internal) = unbounded_channel();
    let recorder_sender = internal_sender.clone();
    let recorder = Recorder::start(
        store,
        config.jobs.max_attempts,
        config.ingest.max_pending,
        move |report| {
            let _ = recorder_sender.send(Internal::Recorder(report));
        },
    )
    .map_err(MonitorError::Thread)?;
    let (job_end_sender, mut job_ends) = tokio::sync::mpsc::channel(1);
    if let Err(error) = drain::subscribe_to_job_ends(&connection, job_end_sender).await {
        // The status tick still looks while files are held; only the prompt wake-up is lost.
        tracing::warn!(
            error = %error,
            "cannot subscribe to the ingest workers' job signals ({error}); held files are \
             queued on the status tick only"
        );
    }

    let reload_path = config_path.clone();
    let mut monitor = Monitor {
        reloader: ConfigReloader::new(config, Box::new(move || Config::load(&reload_path))),
        service,
        notifier,
        recorder: Some(recorder),
        internal_sender,
        walk_budget: WalkBudget::new(CHUNKS_IN_FLIGHT),
        generation: 0,
        watches: Vec::new(),
        pending: HashMap::new(),
        unusable_names: HashSet::new(),
        files_detected: 0,
        jobs_queued: 0,
        files_known: None,
        files_held: 0,
        watch_events: 0,
        watch_overflows: 0,
        reconciles: 0,
        held_check_running: false,
        held_check_wanted: false,
        held_check_failed: false,
        stopping: false,
        last_detection: None,
        last_error: None,
        record_retry_delay: RECORD_RETRY_FIRST,
        record_retry_due: None,
    };
    // Watch first, then walk: a file that arrives during the start reconcile is seen by one
    // or the other, and recording it twice is harmless.
    monitor.start_watches()?;
    monitor.notifier.ready(&monitor.status_line());
    monitor.publish_status(DaemonState::Running).await;
    tracing::info!(folders = monitor.watches.len(), "monitor running");
    monitor.reconcile_all("start");
    // A previous run may have left held files; they are queued as soon as there is room.
    monitor.check_held_files();

    let mut watchdog = monitor.notifier.watchdog_ticker();
    let mut status_interval = interval_after(monitor.config().service.status_interval);
    let mut reconcile_interval = interval_after(monitor.config().monitor.reconcile_interval);
    let mut pending_interval = interval_after(monitor.pending_check_interval());
    loop {
        let event = tokio::select! {
            () = watchdog.tick() => Event::WatchdogTick,
            signal = signals.recv() => Event::Signal(signal),
            Some(command) = commands.recv() => Event::Command(command),
            Some(message) = internal.recv() => Event::Internal(message),
            _ = status_interval.tick() => Event::StatusTick,
            _ = reconcile_interval.tick() => Event::ReconcileTick,
            _ = pending_interval.tick() => Event::PendingTick,
            Some(()) = job_ends.recv() => Event::IngestJobEnded,
        };
        match event {
            Event::WatchdogTick => monitor.notifier.watchdog_ping(),
            Event::Signal(Signal::Terminate) => break,
            Event::Signal(Signal::Reload) => {
                if monitor.reload().await {
                    reconcile_interval =
                        interval_after(monitor.config().monitor.reconcile_interval);
                    status_interval = interval_after(monitor.config().service.status_interval);
                    pending_interval = interval_after(monitor.pending_check_interval());
                }
            }
            Event::Command(command) => monitor.handle_command(command),
            Event::Internal(message) => monitor.handle_internal(message).await,
            Event::StatusTick => {
                if monitor.files_held > 0 || monitor.held_check_failed {
                    // The fallback for lost or absent signals (lost signals are harmless).
                    monitor.check_held_files();
                }
                monitor.refresh_status().await;
            }
            Event::ReconcileTick => monitor.reconcile_all("periodic"),
            Event::PendingTick => monitor.check_pending(),
            Event::IngestJobEnded => {
                if monitor.files_held > 0 {
                    monitor.check_held_files();
                }
            }
        }
    }
    monitor.stop(internal).await;
    Ok(())
}

/// A tokio interval whose first tick is one period from now (the start does its own work).
fn interval_after(period: Duration) -> tokio::time::Interval {
    let period = period.max(Duration::from_millis(1));
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// One watched folder at run time.
#[derive(Debug)]
struct WatchState {
    config: WatchConfig,
    watcher: FolderWatcher,
    /// The scope being walked now, if any.
    walking: Option<PathBuf>,
    /// Scopes waiting for the current walk to end (the folder itself means all of it).
    queued_scopes: VecDeque<(PathBuf, &'static str)>,
}

/// A file seen but not known to be complete: it counts once its size and mtime stay the same
/// for the quiet period.
#[derive(Debug, Clone)]
struct PendingFile {
    watch: usize,
    version: FileVersion,
    observed_at: Instant,
}

type Reread = Box<dyn FnMut() -> Result<Config, ConfigError> + Send>;

struct Monitor {
    reloader: ConfigReloader<Config, Reread>,
    service: MonitorService,
    notifier: Notifier,
    recorder: Option<Recorder>,
    internal_sender: UnboundedSender<Internal>,
    /// Bounds the walked files not yet committed, so a reconcile's memory does not grow with
    /// the tree.
    walk_budget: WalkBudget,
    /// Bumped when a reload replaces the watchers, so their late messages are dropped.
    generation: u64,
    watches: Vec<WatchState>,
    pending: HashMap<PathBuf, PendingFile>,
    /// Files skipped because their names are not UTF-8, each reported once (see
    /// [`Monitor::skip_unusable_name`]).
    unusable_names: HashSet<PathBuf>,
    files_detected: u64,
    jobs_queued: u64,
    files_known: Option<u64>,
    /// Files recorded without an ingest job because the queue was full, at the last look.
    files_held: u64,
    /// Watcher messages handled, overflows among them, and walks finished, since the start;
    /// published for `/metrics`.
    watch_events: u64,
    watch_overflows: u64,
    reconciles: u64,
    /// A `QueueHeld` is with the recorder; another request waits for its answer
    /// (`held_check_wanted`), so a flood of job signals makes one look at a time.
    held_check_running: bool,
    held_check_wanted: bool,
    /// The last look failed, so `files_held` may be wrong; the status tick looks again.
    held_check_failed: bool,
    /// SIGTERM arrived; the recorder's last reports must not publish `running` again.
    stopping: bool,
    /// When the last file was detected, by the wall clock: the status line shows it as a
    /// time, not an age, so it stays the same (and emits nothing) while nothing happens.
    last_detection: Option<SystemTime>,
    last_error: Option<String>,
    /// The wait before the next walk after files could not be recorded.
    record_retry_delay: Duration,
    /// When the walk after a failed recording is due, while one is scheduled.
    record_retry_due: Option<Instant>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Monitor")
            .field("generation", &self.generation)
            .field("watches", &self.watches.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Monitor {
    fn config(&self) -> &Config {
        self.reloader.current()
    }

    fn start_watches(&mut self) -> Result<(), WatchError> {
        let internal_sender = self.internal_sender.clone();
        // notify's threads put their messages straight on the loop's queue, in arrival order.
        // A send fails only while the daemon stops, when nothing is left to do with them.
        let sink: WatchSink = Arc::new(move |event| {
            let _ = internal_sender.send(Internal::Watch(event));
        });
        let mut watches = Vec::new();
        for (index, watch) in self.config().watches.iter().enumerate() {
            let watcher = start_watcher(watch, index, self.generation, Arc::clone(&sink))?;
            tracing::info!(
                path = %watch.path.display(),
                mode = ?watch.mode,
                polling = watcher.is_polling(),
                "watching {} ({} mode, {})",
                watch.path.display(),
                watch.mode.as_str(),
                if watcher.is_polling() { "polling" } else { "inotify" }
            );
            watches.push(WatchState {
                config: watch.clone(),
                watcher,
                walking: None,
                queued_scopes: VecDeque::new(),
            });
        }
        self.watches = watches;
        Ok(())
    }

    fn pending_check_interval(&self) -> Duration {
        let shortest = self
            .config()
            .watches
            .iter()
            .map(|watch| watch.quiet_period)
            .min()
            .unwrap_or(Duration::from_secs(1));
        (shortest / 4).clamp(Duration::from_millis(25), Duration::from_millis(500))
    }

    fn handle_command(&mut self, command: MonitorCommand) {
        match command {
            MonitorCommand::Rescan { path, reply } => {
                let _ = reply.send(self.rescan(path));
            }
        }
    }

    /// `Rescan`: the bus object already checked the path lexically against the watched
    /// folders; it is checked again here against the configuration in force now.
    fn rescan(&mut self, path: Option<PathBuf>) -> Result<u64, BusError> {
        match path {
            None => {
                self.reconcile_all("rescan requested");
                Ok(self.watches.len() as u64)
            }
            Some(path) => {
                let index = self
                    .watches
                    .iter()
                    .position(|watch| path.starts_with(&watch.config.path))
                    .ok_or_else(|| {
                        BusError::InvalidArgument(format!(
                            "path {:?} is not inside a watched folder",
                            path.display()
                        ))
                    })?;
                self.reconcile(index, path, "rescan requested");
                Ok(1)
            }
        }
    }

    async fn handle_internal(&mut self, message: Internal) {
        match message {
            Internal::Watch(event) => {
                if event.generation == self.generation && event.watch < self.watches.len() {
                    self.handle_watch_message(event.watch, event.message);
                }
            }
            Internal::WalkChunk {
                generation,
                watch,
                files,
                ticket,
            } => {
                if generation == self.generation {
                    for file in files {
                        self.consider_walked(watch, file);
                    }
                    self.send_to_recorder(RecorderCommand::ReturnTicket(ticket));
                }
            }
            Internal::WalkDone {
                generation,
                watch,
                scope,
                reason,
                summary,
                elapsed,
            } => {
                if generation == self.generation {
                    self.reconciles += 1;
                    self.finish_walk(watch, scope, reason, summary, elapsed);
                }
            }
            Internal::DelayedWalk {
                generation,
                watch,
                scope,
            } => {
                if generation == self.generation {
                    self.reconcile(watch, scope, "directory created, second look");
                }
            }
            Internal::RecordRetry => {
                self.record_retry_due = None;
                self.reconcile_all("files not recorded, trying again");
            }
            Internal::Recorder(report) => self.handle_report(report).await,
        }
    }

    fn handle_watch_message(&mut self, index: usize, message: WatchMessage) {
        self.watch_events += 1;
        match message {
            WatchMessage::Closed(path) => self.file_ready(index, &path),
            WatchMessage::MovedIn(path) => match std::fs::symlink_metadata(&path) {
                Ok(metadata) if metadata.is_dir() => {
                    self.reconcile(index, path, "directory moved in")
                }
                Ok(_) => self.file_ready(index, &path),
                Err(_) => {}
            },
            WatchMessage::NewDirectory(path) => {
                // Files may be created in the new directory before notify has added its
                // watch; walking it catches those, and a second walk once the watch surely
                // exists catches the ones written meanwhile.
                self.reconcile(index, path.clone(), "directory created");
                self.reconcile_later(index, path, Duration::from_millis(250));
            }
            WatchMessage::Changed(path) => match std::fs::symlink_metadata(&path) {
                Ok(metadata) if metadata.is_file() => {
                    let version = FileVersion::from_metadata(path, &metadata);
                    self.make_pending(index, version);
                }
                _ => {}
            },
            WatchMessage::Left(path) => {
                self.pending
                    .retain(|pending_path, _| !pending_path.starts_with(&path));
                let mode = self.watches[index].config.mode;
                self.send_to_recorder(RecorderCommand::Sweep { prefix: path, mode });
            }
            WatchMessage::Rescan => {
                self.watch_overflows += 1;
                let root = self.watches[index].config.path.clone();
                tracing::warn!(
                    path = %root.display(),
                    "events were lost for {} (inotify overflow); reconciling the folder",
                    root.display()
                );
                self.reconcile(index, root, "events lost");
            }
            WatchMessage::Failed(error) => {
                let path = self.watches[index].config.path.display();
                tracing::warn!(path = %path, error = %error, "watcher error on {path}: {error}");
                self.last_error = Some(format!("watcher: {error}"));
            }
        }
    }

    async fn handle_report(&mut self, report: RecorderReport) {
        match report {
            RecorderReport::Recorded {
                detections,
                elapsed,
            } => {
                self.record_retry_delay = RECORD_RETRY_FIRST;
                let new = detections.iter().filter(|detection| detection.new).count();
                if new > 0 {
                    self.last_detection = Some(SystemTime::now());
                    self.files_detected += new as u64;
                    self.jobs_queued += new as u64;
                    if let Some(known) = &mut self.files_known {
                        *known += new as u64;
                    }
                }
                tracing::debug!(
                    files = detections.len(),
                    new,
                    elapsed_us = elapsed.as_micros() as u64,
                    "recorded"
                );
                for detection in detections.iter().filter(|detection| detection.new) {
                    self.announce_queued(detection, "detected").await;
                }
                let held: Vec<PathBuf> = detections
                    .iter()
                    .filter(|detection| detection.is_held())
                    .map(|detection| detection.path.clone())
                    .collect();
                if !held.is_empty() {
                    tracing::info!(
                        files = held.len(),
                        "held {}: the ingest queue is full ([ingest] max_pending = {}); queued \
                         as it drains",
                        recorder::describe_paths(&held),
                        self.config().ingest.max_pending
                    );
                    self.check_held_files();
                }
            }
            RecorderReport::HeldChecked { queued, gone, held } => {
                self.held_check_running = false;
                self.held_check_failed = false;
                let held_changed = self.files_held != held;
                self.files_held = held;
                if !queued.is_empty() {
                    self.last_detection = Some(SystemTime::now());
                    self.files_detected += queued.len() as u64;
                    self.jobs_queued += queued.len() as u64;
                }
                for detection in &queued {
                    self.announce_queued(detection, "held file").await;
                }
                if gone > 0 {
                    tracing::info!(
                        gone,
                        "{gone} held files left their folder before they were queued: marked gone"
                    );
                    self.files_known = None;
                }
                if !queued.is_empty() || gone > 0 {
                    tracing::info!(
                        queued = queued.len(),
                        held,
                        "queued {} held files as the ingest queue drained; {held} still held",
                        queued.len(),
                    );
                }
                if held_changed && !self.stopping {
                    // FilesHeld at once, not at the next status tick: it is what a person
                    // watching a backlog looks at.
                    self.publish_status(DaemonState::Running).await;
                }
                if std::mem::take(&mut self.held_check_wanted) {
                    self.check_held_files();
                }
            }
            RecorderReport::HeldCheckFailed(error) => {
                self.held_check_running = false;
                self.held_check_failed = true;
                tracing::error!(
                    error = %error,
                    "cannot queue held files: {error}; trying again at the next status tick"
                );
                self.last_error = Some(format!("cannot queue held files: {error}"));
            }
            RecorderReport::Swept { prefix, gone } => {
                if gone > 0 {
                    tracing::info!(
                        path = %prefix.display(),
                        gone,
                        "files left their folder {}: {gone} marked gone",
                        prefix.display()
                    );
                    self.files_known = None;
                }
                // The sweep is the recorder's last step of a reconcile (after every file the
                // walk found): from here the database agrees with the folder.
                tracing::info!(
                    path = %prefix.display(),
                    gone,
                    "reconcile of {} complete: every file found is recorded, {gone} marked gone",
                    prefix.display()
                );
            }
            RecorderReport::Counted(count) => self.files_known = Some(count),
            RecorderReport::NotRecorded { paths, error } => {
                let delay = self.schedule_record_retry();
                let files = recorder::describe_paths(&paths);
                tracing::error!(
                    error = %error,
                    files = paths.len(),
                    "cannot record {files}: {error}; walking the folders again in {delay:?}"
                );
                self.last_error = Some(format!("cannot record {files}: {error}"));
            }
            RecorderReport::Failed(error) => {
                tracing::error!(error = %error, "store error: {error}");
                self.last_error = Some(error);
            }
        }
    }

    /// Logs a file whose ingest job was just queued ("detected …" or "held file …") and
    /// announces it with one `FileDetected`, which names the job: the workers wake on it as on
    /// another daemon's `JobQueued`, and a second signal would say the same again.
    async fn announce_queued(&self, detection: &sluice_core::store::Detection, what: &str) {
        let Some(job_id) = detection.job_id else {
            return;
        };
        let path = detection.path.to_string_lossy();
        tracing::info!(
            path = %path,
            file_id = detection.file_id,
            job_id,
            "{what} {path}: ingest job {job_id} queued"
        );
        let emitted = self
            .service
            .file_detected(
                &path_to_bytestring(&detection.path),
                detection.file_id as u64,
                job_id as u64,
            )
            .await;
        if let Err(error) = emitted {
            tracing::warn!(
                error = %error,
                "cannot emit FileDetected for {path} (job {job_id}): {error}; consumers poll \
                 the database"
            );
        }
    }

    /// Asks the recorder to queue held files while the ingest queue has room (and to count
    /// them); one request at a time, a second one waits for the first answer.
    fn check_held_files(&mut self) {
        if self.held_check_running {
            self.held_check_wanted = true;
            return;
        }
        let watches = self
            .watches
            .iter()
            .map(|watch| (watch.config.path.clone(), watch.config.mode))
            .collect();
        self.held_check_running = true;
        self.send_to_recorder(RecorderCommand::QueueHeld { watches });
    }

    /// Walks every folder again after the current retry delay, unless a walk is already
    /// scheduled; returns how long until the walk.
    fn schedule_record_retry(&mut self) -> Duration {
        if let Some(due) = self.record_retry_due {
            return due.saturating_duration_since(Instant::now());
        }
        let delay = self.record_retry_delay;
        self.record_retry_due = Some(Instant::now() + delay);
        self.record_retry_delay = (delay * 2).min(RECORD_RETRY_MAX);
        let sender = self.internal_sender.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = sender.send(Internal::RecordRetry);
        });
        delay
    }

    fn status_line(&self) -> String {
        let polling = self
            .watches
            .iter()
            .filter(|watch| watch.watcher.is_polling())
            .count();
        let folders = match (self.watches.len(), polling) {
            (1, 0) => "watching 1 folder".to_owned(),
            (count, 0) => format!("watching {count} folders"),
            (count, polling) => format!("watching {count} folders ({polling} polled)"),
        };
        let mut line = StatusLine::new(folders);
        if let Some(known) = self.files_known {
            line = line.detail(format!("{known} files"));
        }
        if self.files_held > 0 {
            line = line.detail(format!("{} held (ingest queue full)", self.files_held));
        }
        line = line.detail(match self.last_detection {
            Some(at) => format!("last detection {}", humantime::format_rfc3339_seconds(at)),
            None => "no detection yet".to_owned(),
        });
        let walking = self
            .watches
            .iter()
            .filter(|watch| watch.walking.is_some())
            .count();
        if walking > 0 {
            line = line.detail(format!("reconciling {walking}"));
        }
        if !self.pending.is_empty() {
            line = line.detail(format!("{} settling", self.pending.len()));
        }
        line.last_error(self.last_error.as_deref()).to_string()
    }

    async fn refresh_status(&mut self) {
        self.send_to_recorder(RecorderCommand::Count);
        let line = self.status_line();
        self.notifier.status(&line);
        self.publish_status(DaemonState::Running).await;
    }

    async fn publish_status(&self, state: DaemonState) {
        let line = self.status_line();
        let polling_paths = self
            .watches
            .iter()
            .filter(|watch| watch.watcher.is_polling())
            .map(|watch| watch.config.path.clone())
            .collect();
        let watched_paths = self
            .watches
            .iter()
            .map(|watch| watch.config.path.clone())
            .collect();
        let (files_detected, jobs_queued, files_held) =
            (self.files_detected, self.jobs_queued, self.files_held);
        let (watch_events, watch_overflows, reconciles) =
            (self.watch_events, self.watch_overflows, self.reconciles);
        let last_error = self.last_error.clone().unwrap_or_default();
        let durability = self.config().store.durability.as_str().to_owned();
        let result = self
            .service
            .update_status(|status| {
                status.state = state;
                status.status = line;
                status.last_error = last_error;
                status.watched_paths = watched_paths;
                status.polling_paths = polling_paths;
                status.durability = durability;
                status.files_detected = files_detected;
                status.jobs_queued = jobs_queued;
                status.files_held = files_held;
                status.watch_events = watch_events;
                status.watch_overflows = watch_overflows;
                status.reconciles = reconciles;
            })
            .await;
        if let Err(error) = result {
            tracing::warn!(error = %error, "cannot publish the status on the bus: {error}");
        }
    }

    /// SIGHUP: re-read the configuration; new watches replace the old ones (followed by a full
    /// reconcile). Returns whether the new configuration is in force.
    async fn reload(&mut self) -> bool {
        let before = self.config().clone();
        match self.reloader.reload(&self.notifier) {
            ReloadOutcome::KeptPrevious { reason, .. } => {
                self.last_error = Some(format!("reload failed: {reason}"));
                self.publish_status(DaemonState::Running).await;
                false
            }
            ReloadOutcome::Applied => {
                let after = self.config().clone();
                if after.store != before.store || after.bus != before.bus {
                    tracing::warn!("[store] and [bus] changes take effect at the next restart");
                }
                if after.ingest.max_pending != before.ingest.max_pending {
                    self.send_to_recorder(RecorderCommand::SetMaxPending(after.ingest.max_pending));
                }
                if after.watches != before.watches {
                    self.generation += 1;
                    self.pending.clear();
                    let previous = std::mem::take(&mut self.watches);
                    if let Err(error) = self.start_watches() {
                        // Keep watching with what still works: a bad folder must not stop the
                        // others. The old watchers were dropped with `previous`.
                        tracing::error!(
                            error = %error,
                            "cannot apply the new watches ({error}); watching none until the \
                             next reload"
                        );
                        self.last_error = Some(error.to_string());
                    }
                    drop(previous);
                    self.reconcile_all("configuration reloaded");
                }
                // A larger limit, or a folder watched again, may let held files go now.
                self.check_held_files();
                self.notifier.ready(&self.status_line());
                self.publish_status(DaemonState::Running).await;
                true
            }
        }
    }

    /// SIGTERM: stop watching, commit what is queued (within the stop timeout), exit.
    async fn stop(mut self, mut internal: UnboundedReceiver<Internal>) {
        self.stopping = true;
        self.notifier
            .stopping("stopping: committing detected files");
        self.publish_status(DaemonState::Stopping).await;
        self.watches.clear();
        let deadline = StopDeadline::after(self.config().service.stop_timeout);
        if let Some(recorder) = self.recorder.take() {
            let finished = deadline
                .finish_within(async {
                    let finishing = recorder.finish();
                    tokio::pin!(finishing);
                    // Keep announcing what the recorder still commits while it drains.
                    loop {
                        tokio::select! {
                            () = &mut finishing => break,
                            Some(Internal::Recorder(report)) = internal.recv() => {
                                self.handle_report(report).await;
                            }
                        }
                    }
                })
                .await;
            if finished.is_err() {
                tracing::warn!(
                    "stop timeout passed with files still queued; the next start's reconcile finds them"
                );
            }
        }
        tracing::info!(files_detected = self.files_detected, "monitor stopped");
    }
}

/// How long ago `mtime_ns` was, by the wall clock (zero for times in the future).
fn age_of(mtime_ns: i64) -> Duration {
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as i64)
        .unwrap_or(0);
    Duration::from_nanos(now_ns.saturating_sub(mtime_ns).max(0) as u64)
}

/// `sluice-monitor`'s entry point (the suite's one program calls it when run under that name): the shared
/// daemon start-up runs [`MonitorDaemon`] and turns the outcome into an exit status systemd
/// understands.
pub fn main() -> std::process::ExitCode {
    use std::process::Termination;
    sluice_core::runtime::daemon_main::<MonitorDaemon>().report()
}
