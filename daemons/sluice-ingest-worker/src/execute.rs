//! The blocking half of the worker: one *step* claims a batch of jobs (committing the
//! outcomes of the previous batch in the same transaction — the group commit), runs their
//! bodies, and hands the outcomes that are not yet committed to the next step. Steps run on
//! a blocking thread; the main loop learns what happens through [`JobEvent`]s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sluice_core::config::{Config, ProcessorConfig, ProcessorMode};
use sluice_core::content::{ContentError, ContentPlaces, open_document_content};
use sluice_core::ingest::{
    FileVersion, INGEST_JOB_KIND, IngestMode, IngestPayload, MAX_SLEEP_MS, NOOP_JOB_KIND,
    THUMBNAIL_JOB_KIND,
};
use sluice_core::store::{
    Claimant, ClaimedJob, Completion, DocumentError, IngestRecord, JobError, JobState, LeaseToken,
    NewDocument, Outcome, Store,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::analyze::{Analysis, OpenedFile, analyze, open_beneath};
use crate::extract::Kind;
use crate::failure::IngestFailure;
use crate::library::{Filed, file_into_library, open_library_file};
use crate::processors::{DerivedTarget, ProcessGroups, ProcessorOutput, run_processor};
use crate::sandbox::{self, Extraction, Limits};
use crate::servers::ProcessorServers;
use crate::thumbnails::{self, Made, PdfRenderer, Thumbnailer};

/// The job kinds this worker claims in batches, first.
pub const KINDS: [&str; 2] = [INGEST_JOB_KIND, NOOP_JOB_KIND];

/// The kinds this worker claims one at a time, and only when a claim of [`KINDS`] found
/// nothing: thumbnails wait for every ingest, and a claimed batch of them could not hold up
/// an ingest that arrives while they run for longer than one.
pub const BACKGROUND_KINDS: [&str; 1] = [THUMBNAIL_JOB_KIND];

/// Most result steps a `noop` job may ask for (`"steps": n`).
pub const MAX_NOOP_STEPS: u64 = 100;

/// How often the result steps of a running extraction (one per page) are committed.
const STEP_FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// How often a slow body reports progress and looks at its cancel and stop flags.
const BODY_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How often a running processor reports progress (its job's flags are checked far more
/// often, see `processors`).
const PROCESSOR_PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// The parts of the configuration a step needs; rebuilt on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub claim_batch: usize,
    pub lease: Duration,
    pub library: PathBuf,
    pub max_file_size: u64,
    pub text_max_bytes: u64,
    /// `[ingest] max_pages` and `extract_max_memory`: limits of the extraction child.
    pub max_pages: u32,
    pub extract_max_memory: u64,
    /// The configured watched folders and their modes.
    pub watches: Vec<(PathBuf, IngestMode)>,
    /// The wait before the next claim after a batch that did not fill up.
    pub claim_linger: Duration,
    /// For crash tests only: pause this long after filing a file and before committing its
    /// document, the window in which a kill must not cause a second document. Set by whoever
    /// starts the process ([`PAUSE_BEFORE_COMMIT_VARIABLE`]), never by a job's payload, so a
    /// producer of jobs cannot make a worker wait.
    pub pause_before_commit: Option<Duration>,
    /// For crash tests only: the same pause in a `thumbnail` job, after the thumbnail file is
    /// filed and before it is recorded ([`PAUSE_BEFORE_THUMBNAIL_COMMIT_VARIABLE`]).
    pub pause_before_thumbnail_commit: Option<Duration>,
    /// `[ingest] job_timeout`: the wall-clock limit of one attempt of every kind this worker
    /// runs.
    pub job_timeout: Duration,
    /// The configured `[[processor]]` entries, in the order written.
    pub processors: Vec<ProcessorConfig>,
    /// The folders a server processor may read beneath (see `isolation`): the library and
    /// the `index` watched folders, where the files its requests name are; none that holds
    /// the database.
    pub server_readable: Vec<PathBuf>,
    /// `[ingest] thumbnail_size` and the PDF renderer found at start-up.
    pub thumbnails: Thumbnailer,
    /// For the wedged-body test only: a `noop` job's sleep ignores its flags, as a body stuck
    /// in a blocking call would ([`NOOP_IGNORES_FLAGS_VARIABLE`]). Set by whoever starts the
    /// process, never by a payload.
    pub noop_ignores_flags: bool,
}

/// The environment variable a crash test sets (in milliseconds) to hold an ingest job open
/// between filing and committing; see [`Settings::pause_before_commit`].
pub const PAUSE_BEFORE_COMMIT_VARIABLE: &str = "SLUICE_TEST_PAUSE_BEFORE_COMMIT_MS";

/// The environment variable a crash test sets (in milliseconds) to hold a `thumbnail` job open
/// between filing the thumbnail and recording it.
pub const PAUSE_BEFORE_THUMBNAIL_COMMIT_VARIABLE: &str =
    "SLUICE_TEST_PAUSE_BEFORE_THUMBNAIL_COMMIT_MS";

/// The environment variable (`1`) a test sets to make `noop` sleeps deaf to cancel, stop and
/// timeout; see [`Settings::noop_ignores_flags`].
pub const NOOP_IGNORES_FLAGS_VARIABLE: &str = "SLUICE_TEST_NOOP_IGNORES_FLAGS";

impl Settings {
    /// `pdf_renderer` is what the worker found at start (see `thumbnails::find_pdftoppm`); a
    /// reload keeps it.
    pub fn from_config(
        config: &Config,
        claim_linger: Duration,
        pdf_renderer: Option<PdfRenderer>,
    ) -> Settings {
        Settings {
            claim_batch: config.jobs.claim_batch as usize,
            lease: config.jobs.lease,
            library: config.ingest.library.clone(),
            max_file_size: config.ingest.max_file_size,
            text_max_bytes: config.ingest.text_max_bytes,
            max_pages: config.ingest.max_pages,
            extract_max_memory: config.ingest.extract_max_memory,
            watches: config
                .watches
                .iter()
                .map(|watch| (watch.path.clone(), watch.mode))
                .collect(),
            claim_linger,
            pause_before_commit: test_pause(PAUSE_BEFORE_COMMIT_VARIABLE),
            pause_before_thumbnail_commit: test_pause(PAUSE_BEFORE_THUMBNAIL_COMMIT_VARIABLE),
            job_timeout: config.ingest.job_timeout,
            processors: config.processors.clone(),
            server_readable: server_readable(config),
            thumbnails: Thumbnailer {
                max_edge: config.ingest.thumbnail_size,
                pdf: pdf_renderer,
            },
            noop_ignores_flags: std::env::var(NOOP_IGNORES_FLAGS_VARIABLE).as_deref() == Ok("1"),
        }
    }
}

/// [`Settings::server_readable`]: the library and the `index` watched folders, leaving out
/// (with a warning) any that holds the database's folder, which a processor may never read.
fn server_readable(config: &Config) -> Vec<PathBuf> {
    let database_folder = config.store.path.parent().unwrap_or(Path::new("/"));
    std::iter::once(&config.ingest.library)
        .chain(
            config
                .watches
                .iter()
                .filter(|watch| watch.mode == IngestMode::Index)
                .map(|watch| &watch.path),
        )
        .filter(|folder| {
            let holds_database = database_folder.starts_with(folder);
            if holds_database {
                tracing::warn!(
                    folder = %folder.display(),
                    "server processors may not read {}: it holds the database's folder {}, \
                     so the files there cannot be given to them",
                    folder.display(),
                    database_folder.display()
                );
            }
            !holds_database
        })
        .cloned()
        .collect()
}

/// A crash test's pause, from the environment variable `name` (milliseconds, at most
/// [`MAX_SLEEP_MS`]).
fn test_pause(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|milliseconds| milliseconds.parse().ok())
        .map(|milliseconds: u64| Duration::from_millis(milliseconds.min(MAX_SLEEP_MS)))
}

/// What the running step tells the main loop, as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    Started {
        id: i64,
        kind: String,
    },
    Progress {
        id: i64,
        fraction: f64,
        message: String,
    },
    /// The job's new state is committed.
    Finished {
        id: i64,
        state: JobState,
        error: Option<String>,
    },
}

/// A claimed job as the step and the main loop share it: the flags the loop sets, when the
/// body started, the process groups its processors lead, and its outcome once the body
/// returned (until that is committed).
#[derive(Debug)]
pub struct RunningJob {
    pub lease_token: LeaseToken,
    /// The ingest job's `files` row, so that a failure recorded by the main loop (a body that
    /// did not stop after its timeout) marks the file too.
    pub file_id: Option<i64>,
    /// Cancellation was requested (heartbeat or D-Bus): stop and record `cancelled`.
    pub cancel: AtomicBool,
    /// Stop now and give the job back (shutdown deadline, or the lease was lost).
    pub abort: AtomicBool,
    /// The main loop saw the job pass its deadline and killed its processes.
    pub timed_out: AtomicBool,
    /// When the body started, and its wall-clock limit; unset until then.
    started: OnceLock<(Instant, Duration)>,
    /// The body returned (its outcome, if it did not commit one itself, is in `outcome`).
    body_returned: AtomicBool,
    outcome: Mutex<Option<Outcome>>,
    /// The process groups of the processors running for this job.
    pub process_groups: ProcessGroups,
}

impl RunningJob {
    /// When the body's wall-clock limit passes; `None` before it started.
    pub fn deadline(&self) -> Option<Instant> {
        self.started.get().map(|(started, limit)| *started + *limit)
    }

    /// The body's wall-clock limit, once it started.
    pub fn limit(&self) -> Option<Duration> {
        self.started.get().map(|(_, limit)| *limit)
    }

    pub fn body_returned(&self) -> bool {
        self.body_returned.load(Ordering::Acquire)
    }

    /// The outcome the body returned that is not committed yet.
    pub fn uncommitted_outcome(&self) -> Option<Outcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether the body is past its wall-clock limit.
    fn is_past_deadline(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
            || self
                .deadline()
                .is_some_and(|deadline| Instant::now() >= deadline)
    }

    fn start_body(&self, limit: Duration) {
        let _ = self.started.set((Instant::now(), limit));
    }

    fn end_body(&self, outcome: Option<&Outcome>) {
        *self
            .outcome
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = outcome.cloned();
        self.body_returned.store(true, Ordering::Release);
    }
}

/// The jobs this worker holds leases on, shared between the step and the main loop.
#[derive(Debug, Default)]
pub struct RunningJobs {
    jobs: Mutex<HashMap<i64, Arc<RunningJob>>>,
}

impl RunningJobs {
    pub fn snapshot(&self) -> Vec<(i64, Arc<RunningJob>)> {
        self.lock()
            .iter()
            .map(|(id, job)| (*id, Arc::clone(job)))
            .collect()
    }

    pub fn get(&self, id: i64) -> Option<Arc<RunningJob>> {
        self.lock().get(&id).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn abort_all(&self) {
        for job in self.lock().values() {
            job.abort.store(true, Ordering::Relaxed);
        }
    }

    /// Kills the process groups of every job's processors; returns how many there were.
    pub fn kill_all_processes(&self) -> usize {
        self.lock()
            .values()
            .map(|job| job.process_groups.kill_all())
            .sum()
    }

    fn insert(&self, id: i64, lease_token: LeaseToken, file_id: Option<i64>) -> Arc<RunningJob> {
        let job = Arc::new(RunningJob {
            lease_token,
            file_id,
            cancel: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            started: OnceLock::new(),
            body_returned: AtomicBool::new(false),
            outcome: Mutex::new(None),
            process_groups: ProcessGroups::default(),
        });
        self.lock().insert(id, Arc::clone(&job));
        job
    }

    fn remove(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// The map holds no invariant a panic could break halfway.
    fn lock(&self) -> MutexGuard<'_, HashMap<i64, Arc<RunningJob>>> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How long the bodies of one claimed batch should take together, about: the claim after a
/// step takes as many jobs as the last step's bodies suggest fit in it (at least one, at most
/// `[jobs] claim_batch`). Outcomes are committed with the next claim, so a job's outcome waits
/// for the bodies after it in its batch; and jobs claimed into a batch wait for it while an
/// idle peer could run them. Tiny jobs (a noop, a short text file) still come 64 at a time;
/// a PDF of ten pages, some 10 ms of work, comes one at a time, recorded as soon as it is
/// done and never held from the other workers.
const TARGET_BATCH_TIME: Duration = Duration::from_millis(10);

/// What a step returns besides the store.
#[derive(Debug, Default)]
pub struct StepReport {
    pub claimed: usize,
    /// How many the step could have claimed: `claimed` below it means the queue had no more.
    pub claim_limit: usize,
    /// Outcomes to commit with the next step.
    pub pending: Vec<Completion>,
}

/// How many jobs the next claim takes: as many bodies of `mean_body_time` as fit in
/// [`TARGET_BATCH_TIME`], at least 1 and at most `claim_batch` (all of it before the first
/// body was timed).
pub fn claim_limit(claim_batch: usize, mean_body_time: Option<Duration>) -> usize {
    let Some(mean) = mean_body_time.filter(|mean| !mean.is_zero()) else {
        return claim_batch.max(1);
    };
    let fitting = TARGET_BATCH_TIME.as_nanos() / mean.as_nanos();
    usize::try_from(fitting)
        .unwrap_or(usize::MAX)
        .clamp(1, claim_batch.max(1))
}

/// Owns the worker's main store connection and runs steps on it.
#[derive(Debug)]
pub struct Executor {
    pub store: Store,
    /// The worker's name and its bus connection, recorded with every lease it takes.
    pub claimant: Claimant,
    pub events: UnboundedSender<JobEvent>,
    pub running: Arc<RunningJobs>,
    /// Set on SIGTERM: claim nothing more, give back claimed jobs that have not started.
    pub stopping: Arc<AtomicBool>,
    /// The server processors this worker started, kept across jobs.
    pub servers: ProcessorServers,
    /// How long the last step's ingest and noop bodies took each, on average (`None` before
    /// the first): what sizes the next claim (see [`TARGET_BATCH_TIME`]).
    pub mean_body_time: Option<Duration>,
}

impl Executor {
    /// Commits `pending`, claims (unless stopping or `claim` is false), runs the claimed bodies.
    pub fn step(
        &mut self,
        pending: Vec<Completion>,
        settings: &Settings,
        claim: bool,
    ) -> Result<StepReport, JobError> {
        let claim = claim && !self.stopping.load(Ordering::Relaxed);
        let claim_limit = claim_limit(settings.claim_batch, self.mean_body_time);
        if claim {
            // Before the claim, so a server is already starting when the file that needs it
            // arrives (see `servers`); the first step runs right after READY=1.
            self.servers
                .supervise(&settings.processors, &settings.server_readable);
        }
        let (results, mut claimed) = if claim {
            self.store.complete_and_claim(
                &pending,
                &self.claimant,
                &KINDS,
                claim_limit,
                settings.lease,
            )?
        } else if pending.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            (self.store.complete_jobs(&pending)?, Vec::new())
        };
        for (completion, result) in pending.iter().zip(results) {
            self.running.remove(completion.id);
            self.report_committed(completion.id, result, outcome_error(&completion.outcome));
        }
        if claim && claimed.is_empty() {
            // No ingest or noop job waits: one background job. The outcomes above are
            // committed, so a failure here only postpones it to the next claim.
            match self
                .store
                .claim_jobs(&self.claimant, &BACKGROUND_KINDS, 1, settings.lease)
            {
                Ok(background) => claimed = background,
                Err(error) => tracing::warn!(
                    error = %error,
                    "cannot claim a thumbnail job: {error}; trying again at the next claim"
                ),
            }
        }
        let mut report = StepReport {
            claimed: claimed.len(),
            claim_limit,
            pending: Vec::new(),
        };
        let (mut timed_bodies, mut body_time) = (0u32, Duration::ZERO);
        let handles: Vec<_> = claimed
            .iter()
            .map(|job| {
                let file_id = match job.kind.as_str() {
                    INGEST_JOB_KIND => job.payload.get("file_id").and_then(Value::as_i64),
                    _ => None,
                };
                self.running.insert(
                    job.id,
                    job.lease_token.clone(),
                    file_id.filter(|id| *id > 0),
                )
            })
            .collect();
        for (job, handle) in claimed.into_iter().zip(handles) {
            if self.stopping.load(Ordering::Relaxed) {
                report.pending.push(completion(&job, Outcome::Released));
                continue;
            }
            let _ = self.events.send(JobEvent::Started {
                id: job.id,
                kind: job.kind.clone(),
            });
            let span = tracing::info_span!("job", job_id = job.id, kind = %job.kind, attempt = job.attempt);
            let _entered = span.enter();
            handle.start_body(settings.job_timeout);
            let body_started = Instant::now();
            let outcome = match job.kind.as_str() {
                NOOP_JOB_KIND => Some(self.run_noop(&job, &handle, settings)),
                INGEST_JOB_KIND => self.run_ingest(&job, &handle, settings),
                THUMBNAIL_JOB_KIND => self.run_thumbnail(&job, &handle, settings),
                // Only the kinds in KINDS are claimed; this is a bug, not bad input.
                other => Some(Outcome::Failed {
                    error: format!("this worker has no body for job kind {other:?}"),
                    retryable: false,
                }),
            };
            // Every processor run kills and forgets its own group; one still registered here
            // would be a bug, and its processes must not outlive the job either way.
            handle.process_groups.kill_all();
            if KINDS.contains(&job.kind.as_str()) {
                timed_bodies += 1;
                body_time += body_started.elapsed();
            }
            handle.end_body(outcome.as_ref());
            if let Some(outcome) = outcome {
                report.pending.push(completion(&job, outcome));
            }
        }
        if timed_bodies > 0 {
            self.mean_body_time = Some(body_time / timed_bodies);
        }
        Ok(report)
    }

    fn report_committed(&self, id: i64, result: Result<JobState, JobError>, error: Option<String>) {
        match result {
            Ok(state) => {
                let error = if state == JobState::Succeeded || state == JobState::Queued {
                    None
                } else {
                    error
                };
                let _ = self.events.send(JobEvent::Finished { id, state, error });
            }
            Err(JobError::LeaseLost { .. }) => {
                tracing::warn!(
                    job_id = id,
                    "lease lost before the outcome was recorded; the job belongs to another worker now"
                );
            }
            Err(error) => {
                tracing::error!(job_id = id, error = %error, "cannot record the outcome of job {id}: {error}");
            }
        }
    }

    /// `noop`: echo `i`, stamp the time the body ran, optionally take `sleep_ms`.
    fn run_noop(&mut self, job: &ClaimedJob, handle: &RunningJob, settings: &Settings) -> Outcome {
        let ran_at = now_micros();
        let sleep_ms = match job.payload.get("sleep_ms") {
            None => 0,
            Some(value) => match value.as_u64() {
                Some(ms) if ms <= MAX_SLEEP_MS => ms,
                _ => {
                    return Outcome::Failed {
                        error: format!(
                            "noop payload: sleep_ms must be a whole number of milliseconds up to {MAX_SLEEP_MS}, got {value}"
                        ),
                        retryable: false,
                    };
                }
            },
        };
        let steps = match job.payload.get("steps") {
            None => 0,
            Some(value) => match value.as_u64() {
                Some(steps) if steps <= MAX_NOOP_STEPS => steps,
                _ => {
                    return Outcome::Failed {
                        error: format!(
                            "noop payload: steps must be a whole number up to {MAX_NOOP_STEPS}, got {value}"
                        ),
                        retryable: false,
                    };
                }
            },
        };
        if sleep_ms > 0 && settings.noop_ignores_flags {
            // The wedged-body test: a sleep nothing can interrupt, like a blocking call.
            std::thread::sleep(Duration::from_millis(sleep_ms));
        } else {
            // The sleep in `steps` slices, each followed by a result step recorded at once
            // (what a PDF's pages will do), so a stream sees them as they come.
            let slices = steps.max(1);
            for slice in 1..=slices {
                if sleep_ms > 0
                    && let Err(failure) = self.pause(
                        job.id,
                        handle,
                        Duration::from_millis(sleep_ms / slices),
                        "sleeping",
                    )
                {
                    return outcome_of(failure);
                }
                if steps > 0 {
                    let step = json!({ "step": "noop", "n": slice, "of": steps });
                    if let Err(error) =
                        self.store
                            .record_job_steps(job.id, &job.lease_token, &[step])
                    {
                        return match error {
                            JobError::LeaseLost { .. } => Outcome::Released,
                            error => Outcome::Failed {
                                error: format!("cannot record step {slice}: {error}"),
                                retryable: true,
                            },
                        };
                    }
                }
            }
        }
        Outcome::Succeeded {
            result: json!({ "i": job.payload.get("i").cloned().unwrap_or(Value::Null), "t": ran_at }),
        }
    }

    /// `ingest`: returns an outcome still to commit, or `None` when the body committed it
    /// itself (a success or failure tied to the document and file rows).
    fn run_ingest(
        &mut self,
        job: &ClaimedJob,
        handle: &RunningJob,
        settings: &Settings,
    ) -> Option<Outcome> {
        let file_id = job.payload.get("file_id").and_then(Value::as_i64);
        let result = IngestPayload::from_json(&job.payload)
            .map_err(|error| IngestFailure::Permanent(error.to_string()))
            .and_then(|payload| self.ingest(job, handle, settings, &payload));
        match result {
            Ok(()) => None,
            Err(IngestFailure::Cancelled) => Some(Outcome::Cancelled),
            Err(IngestFailure::Stopped) => Some(Outcome::Released),
            Err(IngestFailure::Superseded(reason)) => Some(Outcome::Succeeded {
                result: json!({ "superseded": true, "reason": reason }),
            }),
            Err(IngestFailure::NoSpace(error)) => {
                // Committed with the next claim, like any outcome that needs no other row:
                // the file row stays `detected`, since the job is not over.
                tracing::warn!(
                    error = %error,
                    "job {}: {error}; the job waits for space and runs again once there is \
                     some, without using an attempt",
                    job.id
                );
                Some(Outcome::Postponed { error })
            }
            Err(failure) => {
                let retryable = failure.is_retryable();
                let message = failure.to_string();
                tracing::warn!(error = %message, retryable, "ingest job {} failed: {message}", job.id);
                let committed = self.store.fail_ingest(
                    job.id,
                    &job.lease_token,
                    file_id.filter(|id| *id > 0),
                    &message,
                    retryable,
                );
                self.running.remove(job.id);
                self.report_committed(job.id, flatten(committed), Some(message));
                None
            }
        }
    }

    fn ingest(
        &mut self,
        job: &ClaimedJob,
        handle: &RunningJob,
        settings: &Settings,
        payload: &IngestPayload,
    ) -> Result<(), IngestFailure> {
        let configured_mode = settings
            .watches
            .iter()
            .find(|(root, _)| *root == payload.watch_root)
            .map(|(_, mode)| *mode)
            .ok_or_else(|| {
                IngestFailure::Permanent(format!(
                    "watch_root {} is not a configured [[watch]] folder; refused",
                    payload.watch_root.display()
                ))
            })?;
        if configured_mode != payload.mode {
            return Err(IngestFailure::Permanent(format!(
                "mode {} does not match the configured mode {} of {}",
                payload.mode.as_str(),
                configured_mode.as_str(),
                payload.watch_root.display()
            )));
        }
        let relative = payload
            .relative_path()
            .map_err(|error| IngestFailure::Permanent(error.to_string()))?;
        let original_name = relative
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();

        let opened = open_beneath(&payload.watch_root, relative)?;
        let (mut opened, recovering) = match opened {
            Some(opened) => (opened, false),
            None => (self.recover_filed_file(job, payload, settings)?, true),
        };
        if !recovering && let Some(queued) = payload.version() {
            let found = FileVersion {
                size: opened.size,
                mtime_ns: opened.mtime_ns,
                inode: opened.inode,
            };
            if found != queued {
                // The monitor queues a job per version; the newer job ingests this file.
                tracing::info!(
                    ?queued,
                    ?found,
                    "job {}: {} changed since this job was queued; leaving it to the newer job",
                    job.id,
                    payload.path.display()
                );
                return Err(IngestFailure::Superseded(format!(
                    "the file changed after this job was queued (queued {queued:?}, found {found:?})"
                )));
            }
        }
        if opened.size > settings.max_file_size {
            return Err(IngestFailure::Permanent(format!(
                "{} is {} bytes, larger than [ingest] max_file_size ({} bytes); not read",
                payload.path.display(),
                opened.size,
                settings.max_file_size
            )));
        }
        let mut analysis = self.analyze_with_progress(job, handle, &mut opened, settings)?;
        if analysis.mime == "text/plain" && is_markdown_name(&original_name) {
            analysis.mime = "text/markdown".into();
        }
        // The result steps of this attempt, replayed by the job's event stream: those of a
        // long extraction are committed as it goes (at most every STEP_FLUSH_INTERVAL), the
        // rest with the outcome (one transaction: they cost no commit of their own).
        let mut steps = vec![json!({
            "step": "analysed",
            "size": analysis.size,
            "mime": analysis.mime,
            "blake3": analysis.blake3,
            "sha256": analysis.sha256,
            "text_bytes": analysis.text.as_ref().map_or(0, String::len),
        })];
        let extraction =
            self.extract_with_steps(job, handle, settings, &analysis, &opened, &mut steps)?;
        let library_path = match payload.mode {
            IngestMode::Index => None,
            IngestMode::Consume if recovering => Some(
                settings
                    .library
                    .join(crate::library::relative_library_path(&analysis.blake3)),
            ),
            IngestMode::Consume => {
                // Durable note first: if this process dies after the move, the next attempt
                // knows which library file is this job's.
                self.store
                    .record_ingest_intent(job.id, &job.lease_token, &analysis.blake3)
                    .map_err(|error| {
                        store_failure(job.id, "note the file's hash before filing it", error)
                    })?;
                let (path, filed) =
                    file_into_library(&settings.library, &analysis.blake3, &mut opened)?;
                let how = match filed {
                    Filed::Moved => "",
                    Filed::AlreadyThere => " (the library already had it; the source was removed)",
                };
                tracing::info!(
                    library_path = %path.display(),
                    ?filed,
                    "job {}: filed {} into the library as {}{how}",
                    job.id,
                    payload.path.display(),
                    path.display()
                );
                steps.push(json!({
                    "step": "filed",
                    "library_path": path.display().to_string(),
                    "already_there": filed == Filed::AlreadyThere,
                }));
                Some(path)
            }
        };
        let processed_path = library_path.as_deref().unwrap_or(&payload.path);
        let mut metadata = analysis.metadata;
        let (mut text, mut pages) = (analysis.text, Vec::new());
        if let Some(extraction) = extraction {
            if let (Some(object), Value::Object(found)) =
                (metadata.as_object_mut(), extraction.metadata)
            {
                object.extend(found);
            }
            text = text.or(extraction.text);
            pages = extraction.pages;
        }
        if let Some(outputs) = self.run_processors(
            job,
            handle,
            settings,
            &analysis.blake3,
            &analysis.mime,
            processed_path,
        )? {
            if payload.mode == IngestMode::Index && !recovering {
                // An indexed file stays where its owner can change it: the outputs are only
                // this version's if the path still names the file that was hashed.
                check_unchanged(payload, relative, &opened)?;
            }
            let mut stored = serde_json::Map::new();
            let mut derived_files = Vec::new();
            let mut text_budget = (settings.text_max_bytes as usize).saturating_sub(
                text.as_ref().map_or(0, String::len) + pages.iter().map(String::len).sum::<usize>(),
            );
            for (name, output) in outputs {
                steps.push(json!({
                    "step": "processed",
                    "processor": name,
                    "output_bytes": output.metadata.to_string().len(),
                    "text_bytes": output.text.as_ref().map_or(0, String::len),
                    "files": output.files.len(),
                }));
                if let Some(found) = output.text {
                    // Indexed with the document's own text, within the same text_max_bytes.
                    let found = cut_to_bytes(&found, text_budget);
                    text_budget -= found.len();
                    if !found.is_empty() {
                        text = Some(match text.take() {
                            Some(existing) => format!("{existing}\n\n{found}"),
                            None => found.to_owned(),
                        });
                    }
                }
                stored.insert(name, output.metadata);
                derived_files.extend(output.files);
            }
            if !metadata.is_object() {
                metadata = json!({});
            }
            if let Some(object) = metadata.as_object_mut() {
                object.insert("processors".into(), Value::Object(stored));
                if !derived_files.is_empty() {
                    object.insert("derived_files".into(), Value::Array(derived_files));
                }
            }
        }
        // The thumbnail is a job of its own, queued with the document (see run_thumbnail).
        let wants_thumbnail = thumbnails::applies_to(&analysis.mime);
        if let Some(pause) = settings.pause_before_commit {
            self.pause(job.id, handle, pause, "filed; pausing before the commit")?;
        }
        let finished = self
            .store
            .finish_ingest_with_steps(
                &IngestRecord {
                    job_id: job.id,
                    lease_token: job.lease_token.clone(),
                    file_id: payload.file_id,
                    document: NewDocument {
                        blake3: analysis.blake3.clone(),
                        sha256: analysis.sha256,
                        size: analysis.size,
                        mime: analysis.mime,
                        original_name,
                        library_path,
                        metadata,
                        text,
                        pages,
                        wants_thumbnail,
                    },
                },
                &steps,
            )
            .map_err(|error| store_failure(job.id, "commit the document", error))?;
        tracing::info!(
            doc_id = finished.document_id,
            duplicate = finished.duplicate,
            blake3 = %analysis.blake3,
            "job {}: ingested {} as {} {}",
            job.id,
            payload.path.display(),
            if finished.duplicate {
                "a duplicate of document"
            } else {
                "document"
            },
            finished.document_id
        );
        self.running.remove(job.id);
        let _ = self.events.send(JobEvent::Finished {
            id: job.id,
            state: JobState::Succeeded,
            error: None,
        });
        Ok(())
    }

    /// Built-in extraction for types that have a parser, in its sandboxed child (see
    /// `sandbox`); `None` for other types and for content already catalogued (its document
    /// has it). Each page is a step in the job's log; the steps gathered so far are committed
    /// under the lease at most every [`STEP_FLUSH_INTERVAL`], so a long PDF shows its pages
    /// as they are read without a commit per page, and the rest stay in `steps` for the
    /// outcome's transaction.
    fn extract_with_steps(
        &mut self,
        job: &ClaimedJob,
        handle: &RunningJob,
        settings: &Settings,
        analysis: &Analysis,
        opened: &OpenedFile,
        steps: &mut Vec<Value>,
    ) -> Result<Option<Extraction>, IngestFailure> {
        let Some(kind) = Kind::for_mime(&analysis.mime) else {
            return Ok(None);
        };
        let known = self
            .store
            .find_document_by_blake3(&analysis.blake3)
            .map_err(|error| {
                store_failure(job.id, "look for the content in the catalogue", error)
            })?;
        if known.is_some() {
            return Ok(None);
        }
        let remaining = handle.deadline().map_or(settings.job_timeout, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        let limits = Limits {
            text_max_bytes: settings.text_max_bytes,
            max_pages: settings.max_pages,
            max_memory: settings.extract_max_memory,
            cpu: remaining,
        };
        let _ = self.events.send(JobEvent::Progress {
            id: job.id,
            fraction: 0.0,
            message: "extracting".into(),
        });
        let (store, events) = (&mut self.store, &self.events);
        let mut last_flush = Instant::now();
        let mut last_report = Instant::now();
        let mut on_page = |number: u32, text: &str| -> Result<(), IngestFailure> {
            steps.push(json!({ "step": "page", "page": number, "text_bytes": text.len() }));
            if last_report.elapsed() >= BODY_CHECK_INTERVAL {
                last_report = Instant::now();
                let _ = events.send(JobEvent::Progress {
                    id: job.id,
                    fraction: 0.0,
                    message: format!("extracted page {number}"),
                });
            }
            if last_flush.elapsed() >= STEP_FLUSH_INTERVAL {
                store
                    .record_job_steps(job.id, &job.lease_token, steps)
                    .map_err(|error| {
                        store_failure(job.id, "record extracted pages", error.into())
                    })?;
                steps.clear();
                last_flush = Instant::now();
            }
            Ok(())
        };
        let extraction = sandbox::extract(
            kind,
            &opened.file,
            &limits,
            &handle.process_groups,
            &mut || check_flags(handle),
            &mut on_page,
        )?;
        tracing::debug!(
            pages = extraction.pages.len(),
            "job {}: extracted {} pages",
            job.id,
            extraction.pages.len()
        );
        Ok(Some(extraction))
    }

    /// The source is gone: if an earlier attempt of this job moved it into the library (its
    /// intent says which hash), carry on with the library copy.
    fn recover_filed_file(
        &self,
        job: &ClaimedJob,
        payload: &IngestPayload,
        settings: &Settings,
    ) -> Result<OpenedFile, IngestFailure> {
        let missing = || {
            IngestFailure::Permanent(format!(
                "{} does not exist (removed before it was ingested)",
                payload.path.display()
            ))
        };
        if payload.mode != IngestMode::Consume {
            return Err(missing());
        }
        let Some(blake3) = self.store.ingest_intent(job.id).map_err(|error| {
            store_failure(job.id, "read the hash noted by an earlier attempt", error)
        })?
        else {
            return Err(missing());
        };
        let opened = open_library_file(&settings.library, &blake3)?.ok_or_else(missing)?;
        tracing::info!(
            %blake3,
            "job {}: {} was already filed by an earlier attempt (content {blake3}); finishing \
             from the library",
            job.id,
            payload.path.display()
        );
        Ok(opened)
    }

    /// Runs every processor whose `mime` glob matches on the file at `path`, in the order
    /// configured (a one-shot run, or a request to its server), and returns their outputs by
    /// name; `None` when none matches or the content is catalogued already (its outputs are
    /// stored with the existing document).
    fn run_processors(
        &mut self,
        job: &ClaimedJob,
        handle: &RunningJob,
        settings: &Settings,
        blake3: &str,
        mime: &str,
        path: &Path,
    ) -> Result<Option<Vec<(String, ProcessorOutput)>>, IngestFailure> {
        let matching: Vec<&ProcessorConfig> = settings
            .processors
            .iter()
            .filter(|processor| processor.mime.matches(mime))
            .collect();
        if matching.is_empty() {
            return Ok(None);
        }
        let known = self
            .store
            .find_document_by_blake3(blake3)
            .map_err(|error| {
                store_failure(job.id, "look for the content in the catalogue", error)
            })?;
        if let Some(document) = known {
            tracing::info!(
                doc_id = document.id,
                "job {}: content already catalogued as document {}; processors not run again",
                job.id,
                document.id
            );
            return Ok(None);
        }
        let mut outputs = Vec::with_capacity(matching.len());
        let target = DerivedTarget {
            library: &settings.library,
            blake3,
        };
        for (index, processor) in matching.iter().enumerate() {
            let message = format!("processor {}", processor.name);
            let fraction = index as f64 / matching.len() as f64;
            let mut last_report = Instant::now();
            let (events, servers) = (&self.events, &mut self.servers);
            let _ = events.send(JobEvent::Progress {
                id: job.id,
                fraction,
                message: message.clone(),
            });
            tracing::info!(
                processor = %processor.name,
                "job {}: running processor {} on {}",
                job.id,
                processor.name,
                path.display()
            );
            let mut check = || {
                check_flags(handle)?;
                // The main loop's watchdog wants signs of life from a long run.
                if last_report.elapsed() >= PROCESSOR_PROGRESS_INTERVAL {
                    last_report = Instant::now();
                    let _ = events.send(JobEvent::Progress {
                        id: job.id,
                        fraction,
                        message: message.clone(),
                    });
                }
                Ok(())
            };
            let groups = &handle.process_groups;
            let output = match processor.mode {
                ProcessorMode::Once => {
                    run_processor(processor, path, mime, target, groups, &mut check)?
                }
                ProcessorMode::Server => {
                    servers.call(processor, path, mime, target, groups, &mut check)?
                }
            };
            outputs.push((processor.name.clone(), output));
        }
        Ok(Some(outputs))
    }

    /// `thumbnail`: makes the thumbnail of a document's content, files it in the library and
    /// records it (or why there is none) with the job's success. Returns an outcome still to
    /// commit, or `None` when the body committed it itself.
    fn run_thumbnail(
        &mut self,
        job: &ClaimedJob,
        handle: &RunningJob,
        settings: &Settings,
    ) -> Option<Outcome> {
        let Some(document_id) = job
            .payload
            .get("document_id")
            .and_then(Value::as_i64)
            .filter(|id| *id > 0)
        else {
            return Some(Outcome::Failed {
                error: format!(
                    "thumbnail payload: document_id must be a positive document id, got {}",
                    job.payload
                ),
                retryable: false,
            });
        };
        match self.thumbnail(job, handle, settings, document_id) {
            Ok(()) => None,
            Err(failure) => {
                if !matches!(
                    failure,
                    IngestFailure::Stopped
                        | IngestFailure::Cancelled
                        | IngestFailure::Superseded(_)
                ) {
                    tracing::warn!(
                        doc_id = document_id,
                        error = %failure,
                        "thumbnail job {} of document {document_id} failed: {failure}",
                        job.id
                    );
                }
                Some(outcome_of(failure))
            }
        }
    }

    fn thumbnail(
        &mut self,
        job: &ClaimedJob,
        handle: &RunningJob,
        settings: &Settings,
        document_id: i64,
    ) -> Result<(), IngestFailure> {
        let document = match self.store.get_document(document_id) {
            Ok(document) => document,
            Err(DocumentError::NotFound(_)) => {
                return Err(IngestFailure::Permanent(format!(
                    "document {document_id} does not exist"
                )));
            }
            Err(error) => return Err(store_failure(job.id, "read the document", error)),
        };
        if ["thumbnail", "thumbnail_error"]
            .iter()
            .any(|key| document.metadata.get(key).is_some())
        {
            return Err(IngestFailure::Superseded(format!(
                "document {document_id} has its thumbnail (or the reason it has none) already"
            )));
        }
        let index_roots: Vec<PathBuf> = settings
            .watches
            .iter()
            .filter(|(_, mode)| *mode == IngestMode::Index)
            .map(|(root, _)| root.clone())
            .collect();
        let places = ContentPlaces {
            library: &settings.library,
            index_roots: &index_roots,
        };
        // Where sluice-web's /content reads it, with the same checks: a library file of the
        // catalogued size, or an indexed file that is still the catalogued version.
        let opened = match open_document_content(&document, &[], places) {
            Err(_) if !index_roots.is_empty() => {
                let copies = self.store.catalogued_copies(document_id).map_err(|error| {
                    IngestFailure::Retryable(format!(
                        "cannot read the files of document {document_id}: {error}"
                    ))
                })?;
                open_document_content(&document, &copies, places)
            }
            opened => opened,
        };
        let made = match opened {
            Ok(opened) => self.make_thumbnail(job, handle, settings, &document, &opened.file)?,
            Err(ContentError::Unreadable(reason)) => {
                return Err(IngestFailure::Retryable(reason));
            }
            Err(error) => Made::Failed(format!(
                "the content could not be read for a thumbnail: {error}"
            )),
        };
        if let Some(pause) = settings.pause_before_thumbnail_commit {
            self.pause(
                job.id,
                handle,
                pause,
                "thumbnail filed; pausing before the commit",
            )?;
        }
        let recorded = match &made {
            Made::Filed(thumbnail) => Ok(thumbnail),
            Made::Failed(reason) => Err(reason.clone()),
            Made::NotApplicable => Err(format!("{} content gets no thumbnail", document.mime)),
        };
        let state = self
            .store
            .finish_thumbnail(
                job.id,
                &job.lease_token,
                document_id,
                recorded.as_ref().map_err(String::as_str).copied(),
            )
            .map_err(|error| store_failure(job.id, "record the thumbnail", error))?;
        match &recorded {
            Ok(thumbnail) => tracing::info!(
                doc_id = document_id,
                blake3 = %document.blake3,
                "job {}: thumbnail of document {document_id} filed ({}×{} pixels)",
                job.id,
                thumbnail["width"],
                thumbnail["height"]
            ),
            // The reason was logged where it arose (a missing pdftoppm only once, at start),
            // and is in the metadata.
            Err(_) => tracing::info!(
                doc_id = document_id,
                blake3 = %document.blake3,
                "job {}: recorded that document {document_id} has no thumbnail \
                 (thumbnail_error in its metadata says why)",
                job.id
            ),
        }
        self.running.remove(job.id);
        let _ = self.events.send(JobEvent::Finished {
            id: job.id,
            state,
            error: None,
        });
        Ok(())
    }

    /// The thumbnail of `document`'s content, read from `file`. Fails only when the job
    /// itself ends (cancelled, stopped, timed out).
    fn make_thumbnail(
        &self,
        job: &ClaimedJob,
        handle: &RunningJob,
        settings: &Settings,
        document: &sluice_core::store::Document,
        file: &std::fs::File,
    ) -> Result<Made, IngestFailure> {
        let message = "thumbnail".to_owned();
        let _ = self.events.send(JobEvent::Progress {
            id: job.id,
            fraction: 0.0,
            message: message.clone(),
        });
        let mut last_report = Instant::now();
        let mut check = || {
            check_flags(handle)?;
            // The main loop's watchdog wants signs of life from a long render.
            if last_report.elapsed() >= PROCESSOR_PROGRESS_INTERVAL {
                last_report = Instant::now();
                let _ = self.events.send(JobEvent::Progress {
                    id: job.id,
                    fraction: 0.0,
                    message: message.clone(),
                });
            }
            Ok(())
        };
        thumbnails::make_thumbnail(
            &settings.thumbnails,
            &settings.library,
            &document.blake3,
            &document.mime,
            file,
            &handle.process_groups,
            &mut check,
        )
    }

    fn analyze_with_progress(
        &self,
        job: &ClaimedJob,
        handle: &RunningJob,
        opened: &mut OpenedFile,
        settings: &Settings,
    ) -> Result<Analysis, IngestFailure> {
        let size = opened.size.max(1);
        let mut last_report = Instant::now();
        let _ = self.events.send(JobEvent::Progress {
            id: job.id,
            fraction: 0.0,
            message: "hashing".into(),
        });
        analyze(opened, settings.text_max_bytes, |bytes_read| {
            check_flags(handle)?;
            if last_report.elapsed() >= BODY_CHECK_INTERVAL {
                last_report = Instant::now();
                let _ = self.events.send(JobEvent::Progress {
                    id: job.id,
                    fraction: bytes_read as f64 / size as f64,
                    message: "hashing".into(),
                });
            }
            Ok(())
        })
    }

    /// Waits `duration` in small steps, reporting progress and obeying cancel and abort.
    fn pause(
        &self,
        id: i64,
        handle: &RunningJob,
        duration: Duration,
        message: &str,
    ) -> Result<(), IngestFailure> {
        let started = Instant::now();
        loop {
            check_flags(handle)?;
            let elapsed = started.elapsed();
            if elapsed >= duration {
                return Ok(());
            }
            let _ = self.events.send(JobEvent::Progress {
                id,
                fraction: elapsed.as_secs_f64() / duration.as_secs_f64(),
                message: message.to_owned(),
            });
            std::thread::sleep(BODY_CHECK_INTERVAL.min(duration - elapsed));
        }
    }
}

/// The longest start of `text` of at most `max_bytes` bytes that ends on a character
/// boundary.
fn cut_to_bytes(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether a file's name says Markdown (its bytes say only text).
fn is_markdown_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".md") || lower.ends_with(".markdown")
}

fn check_flags(handle: &RunningJob) -> Result<(), IngestFailure> {
    if handle.cancel.load(Ordering::Relaxed) {
        Err(IngestFailure::Cancelled)
    } else if handle.abort.load(Ordering::Relaxed) {
        Err(IngestFailure::Stopped)
    } else if handle.is_past_deadline() {
        Err(IngestFailure::TimedOut(handle.limit().unwrap_or_default()))
    } else {
        Ok(())
    }
}

/// After the processors of an indexed file: the path must still name the file that was
/// hashed (same inode, size and modification time), or this job's results describe a
/// version that is gone and the job queued for the new version does the work.
fn check_unchanged(
    payload: &IngestPayload,
    relative: &Path,
    hashed: &OpenedFile,
) -> Result<(), IngestFailure> {
    let now = open_beneath(&payload.watch_root, relative)?;
    let same = now.as_ref().is_some_and(|now| {
        (now.device, now.inode, now.size, now.mtime_ns)
            == (hashed.device, hashed.inode, hashed.size, hashed.mtime_ns)
    });
    if same {
        Ok(())
    } else {
        Err(IngestFailure::Superseded(format!(
            "{} changed or went away while its processors ran",
            payload.path.display()
        )))
    }
}

fn outcome_of(failure: IngestFailure) -> Outcome {
    match failure {
        failure @ IngestFailure::TimedOut(_) => Outcome::Failed {
            error: failure.to_string(),
            retryable: true,
        },
        IngestFailure::Cancelled => Outcome::Cancelled,
        IngestFailure::Stopped => Outcome::Released,
        IngestFailure::Superseded(reason) => Outcome::Succeeded {
            result: json!({ "superseded": true, "reason": reason }),
        },
        IngestFailure::Permanent(error) => Outcome::Failed {
            error,
            retryable: false,
        },
        IngestFailure::Retryable(error) => Outcome::Failed {
            error,
            retryable: true,
        },
        IngestFailure::NoSpace(error) => Outcome::Postponed { error },
    }
}

fn outcome_error(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Failed { error, .. } | Outcome::Postponed { error } => Some(error.clone()),
        Outcome::Cancelled => Some("cancelled on request".into()),
        Outcome::Succeeded { .. } | Outcome::Released => None,
    }
}

fn completion(job: &ClaimedJob, outcome: Outcome) -> Completion {
    Completion {
        id: job.id,
        lease_token: job.lease_token.clone(),
        outcome,
    }
}

/// A lost lease stops the body (another worker owns the job); a full database disk is waited
/// out; other store errors are worth another attempt. `what` is what the body was doing.
fn store_failure(job_id: i64, what: &str, error: DocumentError) -> IngestFailure {
    match error {
        DocumentError::Job(JobError::LeaseLost { .. }) => {
            tracing::warn!(
                "job {job_id}: lease lost, so this worker could not {what}; the job belongs to \
                 another worker now and this attempt changes nothing"
            );
            IngestFailure::Stopped
        }
        DocumentError::FileNotFound(_) | DocumentError::InvalidArgument(_) => {
            IngestFailure::Permanent(error.to_string())
        }
        error if error.is_out_of_space() => {
            IngestFailure::NoSpace(format!("cannot {what}: {error}"))
        }
        error => IngestFailure::Retryable(format!("cannot {what}: {error}")),
    }
}

fn flatten(result: Result<JobState, DocumentError>) -> Result<JobState, JobError> {
    match result {
        Ok(state) => Ok(state),
        Err(DocumentError::Job(error)) => Err(error),
        Err(DocumentError::Store(error)) => Err(JobError::Store(error)),
        Err(error) => Err(JobError::InvalidArgument(error.to_string())),
    }
}

/// Microseconds since the Unix epoch: the `t` of a noop result.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_takes_as_many_jobs_as_fit_in_the_target_batch_time() {
        let micros = Duration::from_micros;
        assert_eq!(
            claim_limit(64, None),
            64,
            "all of it before any body was timed"
        );
        assert_eq!(
            claim_limit(64, Some(micros(20))),
            64,
            "tiny jobs: a full batch"
        );
        assert_eq!(claim_limit(64, Some(micros(1000))), 10);
        assert_eq!(
            claim_limit(64, Some(micros(12_000))),
            1,
            "a PDF: one at a time"
        );
        assert_eq!(claim_limit(64, Some(Duration::from_secs(60))), 1);
        assert_eq!(claim_limit(64, Some(Duration::ZERO)), 64);
        assert_eq!(claim_limit(1, Some(micros(1))), 1);
    }
}
