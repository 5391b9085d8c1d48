//! A minimal daemon built on `sluice_core::runtime` exactly as the real daemons use it, for the
//! runtime's integration tests: it opens a store, reports READY, and runs one main loop over
//! the watchdog tick, signals and a job-claiming work timer.
//!
//! Test hooks: SIGUSR1 makes the loop block for an hour (a hung loop); the configuration file
//! is `label = <text>` lines (blank lines and `#` comments allowed); jobs of kind `noop` finish
//! at once, jobs of kind `slow` take `payload.duration_ms` milliseconds.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sluice_core::runtime::{
    self, ConfigReloader, DaemonExit, Notifier, ReloadOutcome, Signal, SignalReceiver, StatusLine,
    StopDeadline, WatchdogTicker,
};
use sluice_core::store::{ClaimedJob, Durability, RetryPolicy, Store, StoreOptions};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

#[derive(Debug, Parser)]
struct Arguments {
    /// The SQLite store to open before reporting READY.
    #[arg(long)]
    database: PathBuf,
    /// The configuration file, re-read on SIGHUP.
    #[arg(long)]
    config: PathBuf,
    /// How long a SIGTERM may take: the current job finishes within it or is released.
    #[arg(long, default_value = "5000")]
    stop_timeout_ms: u64,
    /// How often the loop looks for work and heartbeats its job.
    #[arg(long, default_value = "50")]
    work_interval_ms: u64,
    /// The lease taken on a claimed job.
    #[arg(long, default_value = "30000")]
    lease_ms: u64,
    /// The journal's SYSLOG_IDENTIFIER.
    #[arg(long, default_value = "runtime-probe")]
    identifier: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProbeConfig {
    label: String,
}

/// The job the loop is working on; its work is "wait until `finishes_at`".
#[derive(Debug)]
struct CurrentJob {
    claimed: ClaimedJob,
    finishes_at: Instant,
    span: tracing::Span,
}

const WORKER: &str = "runtime-probe";
const JOB_KINDS: &[&str] = &["noop", "slow"];
const EINVAL: u32 = 22;

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    if let Err(error) = runtime::init_logging(&arguments.identifier) {
        eprintln!("runtime-probe: {error}");
        return DaemonExit::Software.into();
    }
    let tokio_runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(tokio_runtime) => tokio_runtime,
        Err(error) => {
            tracing::error!(error = %error, "cannot start the tokio runtime");
            return DaemonExit::Software.into();
        }
    };
    tokio_runtime.block_on(run(arguments)).into()
}

async fn run(arguments: Arguments) -> DaemonExit {
    let notifier = Notifier::from_environment();
    let mut signals = match SignalReceiver::install() {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!(error = %error, "cannot install signal handlers");
            return DaemonExit::Software;
        }
    };
    let Ok(mut hang_requests) = signal(SignalKind::user_defined1()) else {
        tracing::error!("cannot install the SIGUSR1 handler");
        return DaemonExit::Software;
    };

    let config_path = arguments.config.clone();
    let initial = match read_config(&config_path) {
        Ok(config) => config,
        Err(reason) => {
            tracing::error!(error = %reason, path = %config_path.display(), "invalid configuration");
            notifier.failed(EINVAL, &format!("invalid configuration: {reason}"));
            return DaemonExit::Config;
        }
    };
    let mut reloader = ConfigReloader::new(initial, || read_config(&config_path));

    let options = StoreOptions {
        durability: Durability::Normal,
        // The shipped default, as a daemon would get it from the configuration.
        max_attempts: sluice_core::config::defaults().jobs.max_attempts,
        busy_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        },
    };
    let mut store = match Store::open(&arguments.database, &options) {
        Ok(store) => store,
        Err(error) => {
            tracing::error!(error = %error, "cannot open the store");
            notifier.failed(EINVAL, &format!("cannot open the store: {error}"));
            return DaemonExit::Unavailable;
        }
    };

    let lease = Duration::from_millis(arguments.lease_ms);
    let mut last_error: Option<String> = None;
    let mut current: Option<CurrentJob> = None;
    let status =
        |current: &Option<CurrentJob>, config: &ProbeConfig, last_error: &Option<String>| {
            let activity = match current {
                Some(job) => format!("working on job {}", job.claimed.id),
                None => "idle".to_owned(),
            };
            StatusLine::new(activity)
                .detail(format!("config {}", config.label))
                .last_error(last_error.as_deref())
                .to_string()
        };

    notifier.ready(&status(&current, reloader.current(), &last_error));
    tracing::info!(label = %reloader.current().label, "ready");

    let mut watchdog = notifier.watchdog_ticker();
    let mut work_timer = tokio::time::interval(Duration::from_millis(arguments.work_interval_ms));
    loop {
        tokio::select! {
            () = watchdog.tick() => notifier.watchdog_ping(),
            signal = signals.recv() => match signal {
                Signal::Reload => {
                    if let ReloadOutcome::KeptPrevious { status, .. } = reloader.reload(&notifier) {
                        last_error = Some(status);
                    }
                    notifier.status(&status(&current, reloader.current(), &last_error));
                }
                Signal::Terminate => {
                    return stop(&notifier, &mut store, &mut watchdog, current.take(), arguments.stop_timeout_ms).await;
                }
            },
            Some(()) = hang_requests.recv() => {
                notifier.status("simulating a hung loop");
                tracing::warn!("SIGUSR1: blocking the main loop");
                // Blocking the loop's thread on purpose: nothing else runs, including the
                // handling of watchdog ticks, which is the point of the test.
                std::thread::sleep(Duration::from_secs(3600));
            }
            _ = work_timer.tick() => {
                let changed = do_work(&mut store, &mut current, lease, &mut last_error);
                if changed {
                    notifier.status(&status(&current, reloader.current(), &last_error));
                }
            }
        }
    }
}

/// One turn of work: finish or heartbeat the current job, or claim the next one. Returns
/// whether anything a person would see in STATUS= changed.
fn do_work(
    store: &mut Store,
    current: &mut Option<CurrentJob>,
    lease: Duration,
    last_error: &mut Option<String>,
) -> bool {
    if let Some(job) = current {
        let _entered = job.span.clone().entered();
        if Instant::now() >= job.finishes_at {
            let result = serde_json::json!({ "finished_by": WORKER });
            if let Err(error) = store.succeed_job(job.claimed.id, &job.claimed.lease_token, &result)
            {
                tracing::error!(error = %error, "cannot record the job's success");
                *last_error = Some(error.to_string());
            } else {
                tracing::info!("job succeeded");
            }
            *current = None;
            return true;
        }
        if let Err(error) = store.heartbeat(job.claimed.id, &job.claimed.lease_token, lease) {
            tracing::error!(error = %error, "heartbeat failed; dropping the job");
            *last_error = Some(error.to_string());
            *current = None;
            return true;
        }
        return false;
    }

    let claimed = match store.claim_jobs(&WORKER.into(), JOB_KINDS, 1, lease) {
        Ok(claimed) => claimed,
        Err(error) => {
            tracing::error!(error = %error, "cannot claim jobs");
            *last_error = Some(error.to_string());
            return true;
        }
    };
    let Some(claimed) = claimed.into_iter().next() else {
        return false;
    };
    let span = tracing::info_span!("job", job_id = claimed.id, kind = %claimed.kind);
    let duration = match claimed.kind.as_str() {
        "slow" => Duration::from_millis(claimed.payload["duration_ms"].as_u64().unwrap_or(0)),
        _ => Duration::ZERO,
    };
    span.in_scope(|| tracing::info!(attempt = claimed.attempt, "job claimed"));
    tracing::debug!(job_id = claimed.id, "claim details: {:?}", claimed.payload);
    *current = Some(CurrentJob {
        claimed,
        finishes_at: Instant::now() + duration,
        span,
    });
    true
}

/// The graceful stop: STOPPING=1, no new work, the current job finishes before the deadline
/// or is released, exit 0.
async fn stop(
    notifier: &Notifier,
    store: &mut Store,
    watchdog: &mut WatchdogTicker,
    current: Option<CurrentJob>,
    stop_timeout_ms: u64,
) -> DaemonExit {
    let Some(job) = current else {
        notifier.stopping("stopping");
        tracing::info!("stopping; no job in progress");
        return DaemonExit::Clean;
    };
    let _entered = job.span.clone().entered();
    notifier.stopping(&format!(
        "stopping: finishing or releasing job {}",
        job.claimed.id
    ));
    let deadline = StopDeadline::after(Duration::from_millis(stop_timeout_ms));
    // The wait still answers watchdog ticks: stopping is part of the loop's work.
    let finish = async {
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(job.finishes_at) => break,
                () = watchdog.tick() => notifier.watchdog_ping(),
            }
        }
    };
    let finished = deadline.finish_within(finish).await.is_ok();
    let id = job.claimed.id;
    let token = &job.claimed.lease_token;
    let recorded = if finished {
        tracing::info!("job finished before the stop deadline");
        store.succeed_job(id, token, &serde_json::json!({ "finished_by": WORKER }))
    } else {
        tracing::warn!("stop deadline reached; releasing the job");
        store.release_job(id, token)
    };
    match recorded {
        Ok(()) => DaemonExit::Clean,
        Err(error) => {
            // The lease expires by itself and the job is rescued, so this is not fatal for the
            // job; it is reported because it should not happen.
            tracing::error!(error = %error, "cannot record the job's end while stopping");
            DaemonExit::Failure
        }
    }
}

fn read_config(path: &Path) -> Result<ProbeConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let mut label = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected `key = value`", index + 1));
        };
        match key.trim() {
            "label" if !value.trim().is_empty() => label = Some(value.trim().to_owned()),
            "label" => return Err(format!("line {}: label is empty", index + 1)),
            other => return Err(format!("line {}: unknown key `{other}`", index + 1)),
        }
    }
    label
        .map(|label| ProbeConfig { label })
        .ok_or_else(|| "missing `label`".to_owned())
}
