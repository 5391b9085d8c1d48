//! sluice-ingest-worker: one process per systemd instance (`sluice-ingest-worker@N`) that
//! claims `ingest` and `noop` jobs from the shared queue and runs them, and, when none waits,
//! `thumbnail` jobs one at a time (see `execute::BACKGROUND_KINDS`).
//!
//! # Shape
//!
//! One main loop over a closed [`Event`] enum owns the decisions: when to claim, heartbeats,
//! D-Bus commands and signals, status, the watchdog, SIGTERM and SIGHUP. The blocking work —
//! database transactions and job bodies — runs in *steps* on a blocking thread
//! ([`execute::Executor::step`]); a step commits the previous batch's outcomes and claims the
//! next batch in one transaction (group commit), then runs the batch. While a step runs the
//! loop keeps turning: it heartbeats the claimed jobs on a second connection, forwards
//! progress, answers the bus and pings the watchdog.
//!
//! # When the worker looks at the queue
//!
//! Right after a step that claimed a full batch (the queue may hold more; a batch is as many
//! jobs as the last bodies suggest fit in 10 ms, up to `claim_batch`, see
//! `execute::claim_limit`); 2 ms (10 ms with full durability) after one
//! that claimed a partial batch (the linger that turns a trickle of jobs into batches, see
//! `CLAIM_LINGER_NORMAL`); when a `JobQueued` signal arrives ([`wakeup`]); and otherwise on a poll
//! that starts at 1 ms after the last claimed job and doubles up to 1 s while the queue stays
//! empty. An idle worker's poll is a read-only query that takes no write lock. The outcomes
//! of a batch are committed together with the next claim.
//!
//! # When another worker dies
//!
//! Every worker watches the other workers' and the scraper's bus names ([`bus::watch_departures`]).
//! When one's connection closes, the worker ends the leases that connection holds (the first
//! worker to try does it, the others find nothing) and looks at the queue at once, so a
//! killed worker's job runs again within milliseconds instead of when its lease expires. At
//! start, before READY, a worker ends the leases an earlier process of its own name still holds.
//! ARCHITECTURE.md ("A process that dies holding leases") says what is trusted and why.
//!
//! # Timeouts
//!
//! Every attempt has a wall-clock limit (`[ingest] job_timeout`) from the moment its body
//! starts. The body sees it itself, where it checks its flags, and stops with "timed out after
//! N s". The main loop also wakes at the deadline: it kills the job's processor process groups
//! (so a body waiting on a processor returns at once) and gives the body [`TIMEOUT_GRACE`] to
//! return. A body still running then is stuck where no flag reaches it; the loop records the
//! attempt as timed out under the job's lease token, settles the other jobs it holds, and the
//! worker exits with status 70 so that systemd starts a fresh one: the stuck thread cannot be
//! stopped, and a worker that stays alive with it would never claim again. ARCHITECTURE.md
//! ("Timeouts and child processes") says why this over the alternatives.

pub mod analyze;
mod daemon;
pub mod derived;
pub mod execute;
pub mod extract;
pub mod failure;
pub mod isolation;
mod job_signals;
pub mod library;
pub mod processors;
pub mod sandbox;
pub mod servers;
pub mod thumbnails;
pub mod wakeup;

pub use daemon::{Arguments, IngestWorkerDaemon, WorkerError};
use job_signals::{JobSignal, JobSignals};

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::bus::{
    self, BusError, BusSetupError, CallerPolicy, DEFAULT_PROGRESS_INTERVAL, DaemonState, Departure,
    IngestCommand, IngestService, IngestStatus,
};
use sluice_core::config::{Config, ConfigError};
use sluice_core::runtime::{
    CommonArguments, ConfigReloader, Daemon, DaemonExit, Dependencies, Notifier, ReloadOutcome,
    RuntimeFlavour, Signal, SignalReceiver, StartError, StatusLine, WatchdogTicker, claimant_on,
    open_another_store,
};
use sluice_core::store::{
    Claimant, Completion, Durability, Heartbeat, JobError, JobState, LeaseHolder, LeaseToken,
    RescuedJob, Store, StoreError,
};
use tokio::sync::{Notify, mpsc};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use execute::{Executor, JobEvent, RunningJobs, Settings, StepReport};
use servers::ProcessorServers;

/// The shortest and longest wait between two polls of an idle queue.
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_secs(1);
/// After a batch that did not fill up (the worker has caught up with the producers), the next
/// claim waits a little, so that jobs arriving one by one are claimed and completed in
/// batches: every claim is a write transaction that the producers must wait for. With
/// `durability = "full"` each such transaction is an fsync, the scarce resource, so the wait
/// is longer there. A full batch is followed by the next claim at once, and an idle worker
/// answers a wake-up at once. (A linger derived from the measured transaction time was
/// tried: under contention that time is mostly waiting for the lock, and the linger grew
/// until it dominated the latency.)
const CLAIM_LINGER_NORMAL: Duration = Duration::from_millis(2);
const CLAIM_LINGER_FULL: Duration = Duration::from_millis(10);
/// How often properties are refreshed (and `STATUS=` when its text changed).
const PROPERTIES_INTERVAL: Duration = Duration::from_secs(1);
/// Progress is written to the database at most this often per job (signals are rate-limited
/// separately, by the bus service).
const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// After the stop deadline, how long bodies get to notice the abort before the worker releases
/// their jobs itself and exits.
const ABORT_GRACE: Duration = Duration::from_secs(2);
/// After a job's deadline, how long its body gets to notice and return before the worker
/// records the timeout itself and exits (see "Timeouts" above). A body checks its flags every
/// 50 ms and a processor's group is killed at the deadline, so only a body stuck in a call
/// that cannot be interrupted (or a commit waiting for a busy database, which the lease
/// fencing makes harmless to race) is still running after this.
const TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// Everything the main loop reacts to.
#[derive(Debug)]
enum Event {
    Command(IngestCommand),
    WakeUp,
    PollDue,
    ClaimDue,
    StepDone(Box<Result<StepOutput, JoinError>>),
    Job(JobEvent),
    HeartbeatDue,
    HeartbeatDone(Result<HeartbeatResults, JoinError>),
    PropertiesDue,
    StatusDue,
    WatchdogDue,
    Signal(Signal),
    StopDeadline,
    GiveUp,
    /// A running job's deadline passed, or the grace after one.
    TimeoutDue,
    /// Held job changes are due on the bus.
    SendJobChanges,
    /// Another worker's (or the scraper's) connection left the bus: end its leases.
    PeerGone(Departure),
    /// The leases of a departed peer were ended (or could not be).
    PeerRescued(Box<PeerRescue>),
    /// The bus connection is lost: no more departures will be seen.
    BusLost,
}

/// What ending a departed peer's leases did.
#[derive(Debug)]
struct PeerRescue {
    departure: Departure,
    reason: String,
    result: Result<Vec<RescuedJob>, JobError>,
}

/// What a step hands back: the executor (it owns the store connection), the report, and the
/// outcomes it was given in case its transaction failed and they must be tried again.
#[derive(Debug)]
struct StepOutput {
    executor: Executor,
    result: Result<StepReport, JobError>,
    given: Vec<Completion>,
}

/// Runs the worker `instance` until SIGTERM (then returns `Ok`) or a fatal error, with the
/// store, bus connection, signals and notifier it is given. `dependencies.config_path` is
/// re-read on SIGHUP.
pub async fn run(instance: &str, dependencies: Dependencies) -> Result<(), WorkerError> {
    let Dependencies {
        config,
        config_path,
        store: main_store,
        bus: connection,
        mut signals,
        notifier,
    } = dependencies;
    // A bad instance name is a usage error; `IngestWorkerDaemon::prepare` finds it before
    // anything is opened, this catches a caller that skipped it.
    bus::sanitize_instance(instance)?;
    let worker_name = format!("sluice-ingest-worker@{instance}");
    // Heartbeats and progress go through a second connection, so they never wait for a step.
    let side_store = Arc::new(Mutex::new(open_another_store(&main_store).await?));

    match isolation::confinement_available() {
        Ok(()) => tracing::info!(
            "processors, the PDF renderer and the extraction child run confined by Landlock: \
             they write nothing but their own temporary folders"
        ),
        Err(error) => tracing::warn!(
            "{error}: processors and the PDF renderer will not be started (they could write \
             the database), and the extraction child runs under its resource limits alone"
        ),
    }
    // Found once, at start: a package installed later is used after the next restart.
    let pdf_renderer = tokio::task::spawn_blocking(|| {
        thumbnails::find_pdftoppm(std::env::var_os("PATH").as_deref())
    })
    .await
    .ok()
    .flatten();
    match &pdf_renderer {
        Some(renderer) => tracing::info!(
            program = %renderer.program.display(),
            "PDF thumbnails by {} ({})",
            renderer.version,
            renderer.program.display()
        ),
        None => tracing::warn!(
            "pdftoppm not found on PATH (Debian package poppler-utils): PDFs get no thumbnail"
        ),
    }
    let mut initial_status = IngestStatus::starting(Vec::new());
    initial_status.pdf_thumbnailer = pdf_renderer
        .as_ref()
        .map(|renderer| renderer.version.clone())
        .unwrap_or_default();
    let (service, commands) = IngestService::start(
        &connection,
        instance,
        CallerPolicy::for_this_process(),
        initial_status,
        DEFAULT_PROGRESS_INTERVAL,
    )
    .await?;
    let wake = Arc::new(Notify::new());
    wakeup::subscribe(&connection, Arc::clone(&wake))
        .await
        .map_err(WorkerError::Subscribe)?;
    // Watching before taking over, so a peer that dies meanwhile is not missed.
    let departures = bus::watch_departures(&connection)
        .await
        .map_err(WorkerError::WatchDepartures)?;
    let claimant = claimant_on(&connection, &worker_name);
    take_over_from_predecessors(&side_store, &claimant).await;

    let (events_sender, events) = mpsc::unbounded_channel();
    let running = Arc::new(RunningJobs::default());
    let stopping = Arc::new(AtomicBool::new(false));
    let (rescue_sender, rescues) = mpsc::unbounded_channel();
    let executor = Executor {
        store: main_store,
        claimant,
        events: events_sender,
        running: Arc::clone(&running),
        stopping: Arc::clone(&stopping),
        servers: ProcessorServers::new(&worker_name),
        mean_body_time: None,
    };
    let settings = Arc::new(settings_from(&config, pdf_renderer.clone()));
    let heartbeat_interval = config.jobs.heartbeat_interval;
    let status_interval = config.service.status_interval;

    let mut worker = Worker {
        reloader: ConfigReloader::new(
            config,
            Box::new(move || Config::load(&config_path)) as Reread,
        ),
        settings,
        service,
        notifier,
        worker_name,
        commands,
        wake,
        events,
        executor: Some(executor),
        step: None,
        pending: Vec::new(),
        side_store,
        departures: Some(departures),
        rescues,
        rescue_sender,
        running,
        stopping,
        stop_deadline: None,
        give_up_at: None,
        wake_pending: true,
        claim_not_before: Instant::now(),
        poll_delay: POLL_MIN,
        next_poll: Instant::now(),
        heartbeat: None,
        heartbeat_ticker: ticker(heartbeat_interval),
        properties_ticker: ticker(PROPERTIES_INTERVAL),
        status_ticker: ticker(status_interval),
        watchdog: WatchdogTicker::new(None),
        progress_written: HashMap::new(),
        progress_write_busy: Arc::new(AtomicBool::new(false)),
        counters: Counters::default(),
        job_signals: JobSignals::new(),
        last_step_activity: Instant::now(),
        last_status_line: String::new(),
        timeout_checks: HashMap::new(),
        exit_error: None,
    };
    worker.watchdog = worker.notifier.watchdog_ticker();
    let ready_line = worker.status_line();
    worker.notifier.ready(&ready_line);
    worker.last_status_line = ready_line;
    worker.publish_properties(DaemonState::Running).await;
    tracing::info!(worker = %worker.worker_name, "ready: claiming ingest and noop jobs, and thumbnail jobs when those wait");

    loop {
        worker.maybe_start_step();
        if worker.finished_stopping() {
            break;
        }
        let event = worker.next_event(&mut signals).await;
        if worker.handle(event).await {
            break;
        }
    }
    worker.service_stopped().await;
    match worker.exit_error.take() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn settings_from(config: &Config, pdf_renderer: Option<thumbnails::PdfRenderer>) -> Settings {
    let claim_linger = match config.store.durability {
        Durability::Full => CLAIM_LINGER_FULL,
        Durability::Normal => CLAIM_LINGER_NORMAL,
    };
    Settings::from_config(config, claim_linger, pdf_renderer)
}

fn ticker(period: Duration) -> Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

type Reread = Box<dyn FnMut() -> Result<Config, ConfigError> + Send>;

/// Each heartbeated job with what the store said.
type HeartbeatResults = Vec<(i64, Result<Heartbeat, JobError>)>;

struct Worker {
    reloader: ConfigReloader<Config, Reread>,
    settings: Arc<Settings>,
    service: IngestService,
    notifier: Notifier,
    worker_name: String,
    commands: mpsc::Receiver<IngestCommand>,
    wake: Arc<Notify>,
    events: mpsc::UnboundedReceiver<JobEvent>,
    /// `None` while a step runs (the step owns it).
    executor: Option<Executor>,
    step: Option<JoinHandle<StepOutput>>,
    /// Outcomes to commit with the next step.
    pending: Vec<Completion>,
    side_store: Arc<Mutex<Store>>,
    /// Peers whose connection left the bus; `None` once the bus connection is lost.
    departures: Option<mpsc::UnboundedReceiver<Departure>>,
    rescues: mpsc::UnboundedReceiver<PeerRescue>,
    rescue_sender: mpsc::UnboundedSender<PeerRescue>,
    running: Arc<RunningJobs>,
    stopping: Arc<AtomicBool>,
    stop_deadline: Option<Instant>,
    give_up_at: Option<Instant>,
    /// There is a reason to claim: a wake-up, a poll, or a previous batch that found work.
    wake_pending: bool,
    /// The linger after a partial batch: no claim before this.
    claim_not_before: Instant,
    poll_delay: Duration,
    next_poll: Instant,
    heartbeat: Option<JoinHandle<HeartbeatResults>>,
    heartbeat_ticker: Interval,
    properties_ticker: Interval,
    status_ticker: Interval,
    watchdog: WatchdogTicker,
    progress_written: HashMap<i64, Instant>,
    progress_write_busy: Arc<AtomicBool>,
    counters: Counters,
    job_signals: JobSignals,
    last_step_activity: Instant,
    last_status_line: String,
    /// Jobs past their deadline whose body has until this instant to return, with the lease
    /// token of the attempt (the same job may be claimed again later).
    timeout_checks: HashMap<i64, (Instant, LeaseToken)>,
    /// Why the loop ended, when that is a failure systemd should see.
    exit_error: Option<WorkerError>,
}

#[derive(Debug, Default)]
struct Counters {
    done: u64,
    failed: u64,
    current_job: u64,
    last_error: Option<String>,
}

impl Worker {
    async fn next_event(&mut self, signals: &mut SignalReceiver) -> Event {
        let idle = self.step.is_none() && !self.is_stopping();
        let waiting_to_claim = idle && self.wake_pending;
        let polling = idle && !self.wake_pending;
        let claim_not_before = self.claim_not_before;
        let next_poll = self.next_poll;
        let stop_deadline = self.stop_deadline;
        let give_up_at = self.give_up_at;
        let send_job_changes_at = self.job_signals.flush_at();
        let timeout_due_at = self.next_timeout_check();
        tokio::select! {
            signal = signals.recv() => Event::Signal(signal),
            Some(command) = self.commands.recv() => Event::Command(command),
            Some(event) = self.events.recv() => Event::Job(event),
            output = join_optional(&mut self.step) => Event::StepDone(Box::new(output)),
            results = join_optional(&mut self.heartbeat) => Event::HeartbeatDone(results),
            () = self.wake.notified() => Event::WakeUp,
            () = tokio::time::sleep_until(next_poll), if polling => Event::PollDue,
            () = tokio::time::sleep_until(claim_not_before), if waiting_to_claim => Event::ClaimDue,
            _ = self.heartbeat_ticker.tick() => Event::HeartbeatDue,
            _ = self.properties_ticker.tick() => Event::PropertiesDue,
            _ = self.status_ticker.tick() => Event::StatusDue,
            () = self.watchdog.tick() => Event::WatchdogDue,
            () = sleep_until_optional(stop_deadline) => Event::StopDeadline,
            () = sleep_until_optional(give_up_at) => Event::GiveUp,
            () = sleep_until_optional(send_job_changes_at) => Event::SendJobChanges,
            () = sleep_until_optional(timeout_due_at) => Event::TimeoutDue,
            departure = recv_optional(&mut self.departures) => match departure {
                Some(departure) => Event::PeerGone(departure),
                None => Event::BusLost,
            },
            Some(rescue) = self.rescues.recv() => Event::PeerRescued(Box::new(rescue)),
        }
    }

    /// Handles one event; returns whether the loop must end now.
    async fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Command(command) => self.on_command(command),
            Event::WakeUp => self.wake_pending = true,
            Event::PollDue => self.wake_pending = true,
            // maybe_start_step, which runs before every wait, starts the step.
            Event::ClaimDue => {}
            Event::StepDone(output) => return self.on_step_done(*output),
            Event::Job(event) => self.on_job_event(event).await,
            Event::HeartbeatDue => self.start_heartbeat(),
            Event::HeartbeatDone(results) => self.on_heartbeats(results),
            Event::PropertiesDue => self.publish_properties(self.lifecycle_state()).await,
            Event::StatusDue => self.send_status(true),
            Event::WatchdogDue => self.on_watchdog(),
            Event::Signal(Signal::Terminate) => self.begin_stop().await,
            Event::Signal(Signal::Reload) => self.reload().await,
            Event::StopDeadline => {
                tracing::warn!("stop deadline reached; asking the running jobs to stop");
                self.stop_deadline = None;
                self.running.abort_all();
                self.running.kill_all_processes();
                self.give_up_at = Some(Instant::now() + ABORT_GRACE);
            }
            Event::SendJobChanges => {
                let held = self.job_signals.flush();
                self.send_job_signal(held).await;
            }
            Event::GiveUp => {
                self.give_up_at = None;
                self.settle_everything(None).await;
                return true;
            }
            Event::TimeoutDue => return self.on_timeouts().await,
            Event::PeerGone(departure) => self.rescue_from(departure),
            Event::PeerRescued(rescue) => self.on_peer_rescued(*rescue),
            Event::BusLost => {
                self.departures = None;
                tracing::warn!(
                    "lost the bus connection: jobs of workers that die now are taken over \
                     when their leases expire"
                );
            }
        }
        false
    }

    /// Ends the leases `departure`'s process held, on a blocking thread. Every worker that
    /// sees the departure tries; the first one ends them, the others find nothing left.
    fn rescue_from(&mut self, departure: Departure) {
        let holder = match LeaseHolder::new(departure.identity.clone()) {
            Ok(holder) => holder,
            Err(error) => {
                tracing::warn!(error = %error, "ignoring a departure with a malformed identity");
                return;
            }
        };
        let reason = format!(
            "its bus connection {} closed: the process exited or was cut off from the bus",
            departure.unique_name
        );
        let store = Arc::clone(&self.side_store);
        let results = self.rescue_sender.clone();
        tokio::task::spawn_blocking(move || {
            let result = lock_store(&store).rescue_leases_of(&holder, &reason);
            let _ = results.send(PeerRescue {
                departure,
                reason,
                result,
            });
        });
    }

    fn on_peer_rescued(&mut self, rescue: PeerRescue) {
        match rescue.result {
            Ok(jobs) => {
                log_rescued(&jobs, &rescue.reason);
                // Whoever ended them, the jobs are claimable now: look at once.
                self.wake_pending = true;
            }
            Err(error) => {
                tracing::warn!(
                    bus_name = %rescue.departure.bus_name,
                    error = %error,
                    "cannot take over the jobs of {} after it left the bus: {error}; they are \
                     taken over when their leases expire",
                    rescue.departure.bus_name
                );
            }
        }
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn lifecycle_state(&self) -> DaemonState {
        if self.is_stopping() {
            DaemonState::Stopping
        } else {
            DaemonState::Running
        }
    }

    fn finished_stopping(&self) -> bool {
        self.is_stopping() && self.step.is_none() && self.pending.is_empty()
    }

    /// Starts a step when none runs and there is something to commit or a reason to look.
    fn maybe_start_step(&mut self) {
        if self.step.is_some() {
            return;
        }
        let stopping = self.is_stopping();
        let claim = !stopping && self.wake_pending && Instant::now() >= self.claim_not_before;
        // Outcomes wait for the next claim (one transaction for both), except when stopping.
        let commit_only = stopping && !self.pending.is_empty();
        if !claim && !commit_only {
            return;
        }
        let Some(mut executor) = self.executor.take() else {
            return;
        };
        self.wake_pending = false;
        self.last_step_activity = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        let settings = Arc::clone(&self.settings);
        self.step = Some(tokio::task::spawn_blocking(move || {
            let given = pending.clone();
            let result = executor.step(pending, &settings, claim);
            StepOutput {
                executor,
                result,
                given,
            }
        }));
    }

    fn on_step_done(&mut self, output: Result<StepOutput, JoinError>) -> bool {
        self.step = None;
        let output = match output {
            Ok(output) => output,
            Err(error) => {
                // A panic in a job body: the executor (and its store) is gone. Exiting lets
                // systemd restart the worker; the claimed jobs' leases expire and are retried.
                tracing::error!(
                    error = %error,
                    "a job step panicked ({error}); exiting so that systemd restarts the worker"
                );
                return true;
            }
        };
        self.executor = Some(output.executor);
        match output.result {
            Ok(report) => {
                self.pending = report.pending;
                // Full against what the step could claim (`execute::claim_limit`), which is
                // `[jobs] claim_batch` for small jobs and down to 1 for heavy ones.
                if report.claimed >= report.claim_limit {
                    self.wake_pending = true;
                    self.poll_delay = POLL_MIN;
                } else if report.claimed > 0 {
                    self.wake_pending = true;
                    self.claim_not_before = Instant::now() + self.settings.claim_linger;
                    self.poll_delay = POLL_MIN;
                } else {
                    self.next_poll = Instant::now() + self.poll_delay;
                    self.poll_delay = (self.poll_delay * 2).min(POLL_MAX);
                }
            }
            Err(error) => {
                tracing::error!(
                    error = %error,
                    "cannot claim or complete jobs: {error}; trying again in {POLL_MAX:?}"
                );
                self.counters.last_error = Some(error.to_string());
                self.pending = output.given;
                self.poll_delay = POLL_MAX;
                self.next_poll = Instant::now() + POLL_MAX;
                if self.is_stopping() && !self.pending.is_empty() {
                    // Do not spin on a broken database while stopping: the leases of what is
                    // left expire and other workers retry those jobs.
                    self.pending.clear();
                }
            }
        }
        false
    }

    async fn on_job_event(&mut self, event: JobEvent) {
        self.last_step_activity = Instant::now();
        match event {
            JobEvent::Started { id, kind } => {
                self.counters.current_job = id as u64;
                self.progress_written.insert(id, Instant::now());
                let signal = self.job_signals.started(id as u64, kind, Instant::now());
                self.send_job_signal(signal).await;
            }
            JobEvent::Progress {
                id,
                fraction,
                message,
            } => {
                log_signal_error(
                    self.service
                        .job_progress(id as u64, fraction, &message)
                        .await
                        .map(|_| ()),
                );
                self.write_progress(id, fraction, message);
            }
            JobEvent::Finished { id, state, error } => {
                if self.counters.current_job == id as u64 {
                    self.counters.current_job = 0;
                }
                self.progress_written.remove(&id);
                match state {
                    JobState::Succeeded => self.counters.done += 1,
                    JobState::Failed | JobState::Dead | JobState::Retrying => {
                        self.counters.failed += 1;
                        if let Some(error) = error {
                            tracing::warn!(job_id = id, state = %state, error = %error, "job {id} {state}: {error}");
                            // STATUS= (`systemctl status` is for every user) and the bus
                            // property name the job, not the error: it may name a file in a
                            // folder other users cannot list. The journal and the store keep
                            // the whole error.
                            self.counters.last_error = Some(format!(
                                "job {id} {state} (sluicectl jobs show {id} says why)"
                            ));
                        }
                    }
                    _ => {}
                }
                let signal = self
                    .job_signals
                    .finished(id as u64, state.as_str(), Instant::now());
                self.send_job_signal(signal).await;
            }
        }
    }

    /// Sends a job's state change (or a batch of them) as [`JobSignals`] decided.
    async fn send_job_signal(&self, signal: Option<JobSignal>) {
        let result = match signal {
            None => return,
            Some(JobSignal::Started { job_id, kind }) => {
                self.service
                    .job_started(job_id, &kind, &self.worker_name)
                    .await
            }
            Some(JobSignal::Finished { job_id, state }) => {
                self.service.job_finished(job_id, &state).await
            }
            Some(JobSignal::Batch(changes)) => {
                self.service.jobs_changed(&self.worker_name, changes).await
            }
        };
        log_signal_error(result);
    }

    /// Saves a running job's progress at most once per [`PROGRESS_WRITE_INTERVAL`], on the
    /// side connection, never blocking the loop.
    fn write_progress(&mut self, id: i64, fraction: f64, message: String) {
        let due = self
            .progress_written
            .get(&id)
            .is_none_or(|last| last.elapsed() >= PROGRESS_WRITE_INTERVAL);
        if !due || self.progress_write_busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(job) = self.running.get(id) else {
            self.progress_write_busy.store(false, Ordering::Release);
            return;
        };
        self.progress_written.insert(id, Instant::now());
        let store = Arc::clone(&self.side_store);
        let busy = Arc::clone(&self.progress_write_busy);
        tokio::task::spawn_blocking(move || {
            let result = lock_store(&store).report_progress(
                id,
                &job.lease_token,
                fraction.clamp(0.0, 1.0),
                &message,
            );
            if let Err(error) = result
                && !matches!(error, JobError::LeaseLost { .. })
            {
                tracing::warn!(job_id = id, error = %error, "cannot save the progress of job {id}: {error}");
            }
            busy.store(false, Ordering::Release);
        });
    }

    fn on_command(&mut self, command: IngestCommand) {
        match command {
            IngestCommand::CancelJob { job_id, reply } => {
                let answer = match i64::try_from(job_id)
                    .ok()
                    .and_then(|id| self.running.get(id))
                {
                    Some(job) => {
                        tracing::info!(job_id, "cancelling job {job_id} on request");
                        job.cancel.store(true, Ordering::Relaxed);
                        job.process_groups.kill_all();
                        Ok(())
                    }
                    None => Err(BusError::NotFound(format!(
                        "worker {} is not running job {job_id}",
                        self.worker_name
                    ))),
                };
                let _ = reply.send(answer);
            }
        }
    }

    fn start_heartbeat(&mut self) {
        if self.heartbeat.is_some() || self.running.is_empty() {
            return;
        }
        let jobs = self.running.snapshot();
        let store = Arc::clone(&self.side_store);
        let lease = self.settings.lease;
        self.heartbeat = Some(tokio::task::spawn_blocking(move || {
            let mut store = lock_store(&store);
            jobs.into_iter()
                .map(|(id, job)| (id, store.heartbeat(id, &job.lease_token, lease)))
                .collect()
        }));
    }

    fn on_heartbeats(&mut self, results: Result<HeartbeatResults, JoinError>) {
        self.heartbeat = None;
        let results = match results {
            Ok(results) => results,
            Err(error) => {
                tracing::error!(error = %error, "the heartbeat task failed: {error}");
                return;
            }
        };
        for (id, result) in results {
            let Some(job) = self.running.get(id) else {
                continue;
            };
            match result {
                Ok(heartbeat) if heartbeat.cancel_requested => {
                    tracing::info!(
                        job_id = id,
                        "cancellation of job {id} requested; stopping it"
                    );
                    job.cancel.store(true, Ordering::Relaxed);
                    job.process_groups.kill_all();
                }
                Ok(_) => {}
                Err(JobError::LeaseLost { .. } | JobError::NotFound(_)) => {
                    tracing::warn!(job_id = id, "lease lost; abandoning the job");
                    job.abort.store(true, Ordering::Relaxed);
                    job.process_groups.kill_all();
                }
                Err(error) => {
                    tracing::warn!(
                        job_id = id,
                        error = %error,
                        "cannot renew the lease of job {id}: {error}; trying again at the next heartbeat"
                    );
                }
            }
        }
    }

    /// Pings only while the work moves: a step that has shown no sign of life (no job event)
    /// for a whole watchdog timeout is a hang, and systemd should restart the worker.
    fn on_watchdog(&mut self) {
        let timeout = self
            .notifier
            .watchdog()
            .map(|watchdog| watchdog.timeout())
            .unwrap_or(Duration::MAX);
        if self.step.is_some() && self.last_step_activity.elapsed() > timeout {
            let silent_for = self.last_step_activity.elapsed();
            tracing::error!(
                ?silent_for,
                "the running step shows no progress for {silent_for:?}; withholding the watchdog \
                 ping"
            );
            return;
        }
        self.notifier.watchdog_ping();
    }

    async fn begin_stop(&mut self) {
        if self.is_stopping() {
            return;
        }
        let stop_timeout = self.reloader.current().service.stop_timeout;
        tracing::info!(
            ?stop_timeout,
            "stopping: no new jobs; finishing or releasing the current ones"
        );
        self.stopping.store(true, Ordering::Relaxed);
        self.notifier
            .stopping("stopping: finishing or releasing the current job");
        self.stop_deadline = Some(Instant::now() + stop_timeout);
        self.publish_properties(DaemonState::Stopping).await;
    }

    /// The bodies did not stop in time (or one is stuck past its timeout, `timed_out`): settle
    /// every job this worker holds from the side connection before it exits. The stuck job
    /// fails as timed out (retried like any failed attempt); a job whose body returned gets
    /// the outcome it returned; the others are given back. Every change is a compare-and-set
    /// on the job's lease token, so a body still running cannot commit afterwards, and one
    /// that commits first makes this change nothing.
    async fn settle_everything(&mut self, timed_out: Option<(i64, String)>) {
        let killed = self.running.kill_all_processes();
        if killed > 0 {
            tracing::warn!(
                groups = killed,
                "killed {killed} processor process groups of jobs that did not stop"
            );
        }
        let jobs = self.running.snapshot();
        let ids: Vec<String> = jobs.iter().map(|(id, _)| id.to_string()).collect();
        tracing::warn!(
            jobs = jobs.len(),
            "jobs did not stop in time; settling them: {}",
            ids.join(", ")
        );
        let store = Arc::clone(&self.side_store);
        let settled = tokio::task::spawn_blocking(move || {
            let mut store = lock_store(&store);
            for (id, job) in jobs {
                let result = match (&timed_out, job.uncommitted_outcome()) {
                    (Some((stuck, error)), _) if *stuck == id => store
                        .fail_ingest(id, &job.lease_token, job.file_id, error, true)
                        .map(|state| format!("recorded as timed out: {state}"))
                        .map_err(|error| error.to_string()),
                    (_, Some(outcome)) if job.body_returned() => store
                        .complete_jobs(&[Completion {
                            id,
                            lease_token: job.lease_token.clone(),
                            outcome,
                        }])
                        .map_err(|error| error.to_string())
                        .and_then(|mut results| {
                            results
                                .pop()
                                .unwrap_or(Err(JobError::NotFound(id)))
                                .map_err(|error| error.to_string())
                        })
                        .map(|state| format!("its outcome recorded: {state}")),
                    _ => store
                        .release_job(id, &job.lease_token)
                        .map(|()| "released".to_owned())
                        .map_err(|error| error.to_string()),
                };
                match result {
                    Ok(what) => tracing::info!(job_id = id, "job {id} {what}"),
                    Err(error) => {
                        tracing::warn!(job_id = id, error = %error, "cannot settle job {id}: {error}");
                    }
                }
            }
        })
        .await;
        if let Err(error) = settled {
            tracing::error!(error = %error, "settling the jobs failed: {error}");
        }
    }

    /// The earliest instant the loop must look at timeouts: a started job's deadline not yet
    /// handled, or the end of a grace.
    fn next_timeout_check(&self) -> Option<Instant> {
        let deadlines = self
            .running
            .snapshot()
            .into_iter()
            .filter(|(_, job)| !job.body_returned() && !job.timed_out.load(Ordering::Relaxed))
            .filter_map(|(_, job)| job.deadline())
            .map(Instant::from_std);
        deadlines
            .chain(self.timeout_checks.values().map(|(at, _)| *at))
            .min()
    }

    /// Stops jobs past their deadline (kills their processes; their bodies see the timeout
    /// at their next check) and ends the worker when a body did not return within the grace.
    /// Returns whether the loop must end.
    async fn on_timeouts(&mut self) -> bool {
        let now = std::time::Instant::now();
        for (id, job) in self.running.snapshot() {
            let past_deadline = job.deadline().is_some_and(|deadline| deadline <= now);
            if !past_deadline || job.body_returned() || job.timed_out.swap(true, Ordering::Relaxed)
            {
                continue;
            }
            let killed = job.process_groups.kill_all();
            let limit = sluice_core::ingest::seconds(job.limit().unwrap_or_default());
            tracing::warn!(
                job_id = id,
                process_groups = killed,
                "job {id} ran past its limit of {limit} s ([ingest] job_timeout); stopping it \
                 and killing its {killed} processor process groups"
            );
            self.timeout_checks.insert(
                id,
                (Instant::now() + TIMEOUT_GRACE, job.lease_token.clone()),
            );
        }
        let now = Instant::now();
        let due: Vec<(i64, LeaseToken)> = self
            .timeout_checks
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(id, (_, token))| (*id, token.clone()))
            .collect();
        for (id, token) in due {
            self.timeout_checks.remove(&id);
            let Some(job) = self.running.get(id) else {
                continue;
            };
            if job.lease_token != token || job.body_returned() {
                continue;
            }
            let limit = sluice_core::ingest::seconds(job.limit().unwrap_or_default());
            let grace = sluice_core::ingest::seconds(TIMEOUT_GRACE);
            tracing::error!(
                job_id = id,
                "job {id} timed out after {limit} s and its body did not stop within {grace} s \
                 more; recording the timeout and exiting so that systemd starts a fresh worker"
            );
            self.stopping.store(true, Ordering::Relaxed);
            self.running.abort_all();
            let error = format!(
                "{}; it did not stop within {grace} s more, so its worker exited to be restarted",
                sluice_core::ingest::timed_out_after(
                    job.limit().unwrap_or_default(),
                    "[ingest] job_timeout"
                )
            );
            self.settle_everything(Some((id, error))).await;
            self.exit_error = Some(WorkerError::JobStuck { job_id: id });
            return true;
        }
        false
    }

    async fn reload(&mut self) {
        let before = self.reloader.current().clone();
        match self.reloader.reload(&self.notifier) {
            ReloadOutcome::Applied => {
                let config = self.reloader.current();
                if config.store.path != before.store.path
                    || config.bus.address != before.bus.address
                {
                    tracing::warn!(
                        "[store] path and [bus] address take effect at the next restart"
                    );
                }
                self.settings =
                    Arc::new(settings_from(config, self.settings.thumbnails.pdf.clone()));
                if config.jobs.heartbeat_interval != before.jobs.heartbeat_interval {
                    self.heartbeat_ticker = ticker(config.jobs.heartbeat_interval);
                }
                if config.service.status_interval != before.service.status_interval {
                    self.status_ticker = ticker(config.service.status_interval);
                }
                self.counters.last_error = None;
            }
            ReloadOutcome::KeptPrevious { reason, .. } => {
                self.counters.last_error = Some(format!("reload failed: {reason}"));
            }
        }
        self.publish_properties(self.lifecycle_state()).await;
    }

    fn status_line(&self) -> String {
        let activity = match (self.is_stopping(), self.counters.current_job) {
            (true, _) => "stopping".to_owned(),
            (false, 0) => "idle".to_owned(),
            (false, job) => format!("working on job {job}"),
        };
        StatusLine::new(activity)
            .detail(format!(
                "{} done, {} failed since start",
                self.counters.done, self.counters.failed
            ))
            .last_error(self.counters.last_error.as_deref())
            .to_string()
    }

    /// Sends `STATUS=` when the text changed, or always when `force` (the status interval).
    fn send_status(&mut self, force: bool) {
        let line = self.status_line();
        if force || line != self.last_status_line {
            self.notifier.status(&line);
            self.last_status_line = line;
        }
    }

    async fn publish_properties(&mut self, state: DaemonState) {
        self.send_status(false);
        let status = self.last_status_line.clone();
        let counters = &self.counters;
        let result = self
            .service
            .update_status(|current| {
                current.state = state;
                current.status = status;
                current.last_error = counters.last_error.clone().unwrap_or_default();
                current.current_job = counters.current_job;
                current.jobs_done = counters.done;
                current.jobs_failed = counters.failed;
            })
            .await;
        log_signal_error(result);
    }

    async fn service_stopped(&mut self) {
        let held = self.job_signals.flush();
        self.send_job_signal(held).await;
        tracing::info!(
            done = self.counters.done,
            failed = self.counters.failed,
            "stopped"
        );
        self.publish_properties(DaemonState::Stopping).await;
    }
}

/// Ends the leases an earlier process of this worker's name still holds: this process owns the
/// name now, so that one is gone (or cut off from the bus, and then fenced).
async fn take_over_from_predecessors(store: &Arc<Mutex<Store>>, claimant: &Claimant) {
    let store = Arc::clone(store);
    let claimant = claimant.clone();
    let result = tokio::task::spawn_blocking(move || {
        lock_store(&store).rescue_leases_of_predecessors(&claimant)
    })
    .await;
    match result {
        Ok(Ok(jobs)) => log_rescued(&jobs, "held by an earlier process of this worker"),
        Ok(Err(error)) => tracing::warn!(
            error = %error,
            "cannot take over the jobs an earlier process of this worker held: {error}; they \
             are taken over when their leases expire"
        ),
        Err(error) => tracing::error!(error = %error, "the take-over task failed"),
    }
}

/// One line per rescued job, naming the job, whom it was taken from, why, and where it went.
fn log_rescued(jobs: &[RescuedJob], reason: &str) {
    for job in jobs {
        tracing::info!(
            job_id = job.id,
            worker = %job.worker,
            attempt = job.attempt,
            state = %job.state,
            "rescued job {} from {} ({reason}): {}",
            job.id,
            job.worker,
            job.outcome()
        );
    }
}

async fn recv_optional<T>(receiver: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn join_optional<T>(handle: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match handle {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_optional(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn lock_store(store: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    // A panic while holding the store leaves SQLite's own state consistent (an open
    // transaction is rolled back when its guard drops), so the connection stays usable.
    store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn log_signal_error(result: zbus::Result<()>) {
    if let Err(error) = result {
        tracing::warn!(error = %error, "cannot emit a D-Bus signal: {error}");
    }
}

/// `sluice-ingest-worker --instance N`'s entry point (the suite's one program calls it when run
/// under that name, or as `/proc/self/exe`): the process systemd starts as
/// `sluice-ingest-worker@N.service`, which the shared daemon start-up runs as
/// [`IngestWorkerDaemon`]. Started by a worker with the hidden `--extract` argument, it is
/// instead that worker's extraction child for one file ([`sandbox`]), and with
/// `--launch-processor` the launcher that starts a processor confined ([`isolation`]), decided
/// before anything else starts.
pub fn main() -> std::process::ExitCode {
    use std::process::Termination;
    if std::env::args_os().nth(1).as_deref() == Some(extract::CHILD_ARGUMENT.as_ref()) {
        return extract::child_main();
    }
    if std::env::args_os().nth(1).as_deref() == Some(isolation::LAUNCHER_ARGUMENT.as_ref()) {
        return isolation::launcher_main();
    }
    isolation::enable_launcher();
    sluice_core::runtime::daemon_main::<IngestWorkerDaemon>().report()
}
