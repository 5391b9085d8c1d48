//! Keeps the running jobs' bus objects (`/org/sluice/job/<id>`, see
//! `sluice_core::bus::JobObjects`) in line with the store: one task, woken by every job signal
//! the web receives (one sync for a burst) and at least once per [`SYNC_INTERVAL`], so a lost
//! signal delays an object by at most that.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::bus::{JobObjects, MAX_JOB_OBJECTS, RunningJob};
use sluice_core::store::jobs::{Job, JobFilter, JobState, PageRequest};
use tokio::sync::Notify;

use crate::state::AppState;

/// The longest a job object lags the store when no signal arrives.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// After a wake-up, how long to let a burst of signals gather into one sync.
const GATHER: Duration = Duration::from_millis(50);

/// The job's object as the store says it is.
fn running_job(job: &Job) -> RunningJob {
    RunningJob {
        id: u64::try_from(job.id).unwrap_or_default(),
        kind: job.kind.clone(),
        cancelling: job.cancel_requested,
        progress: job.progress,
        message: job.progress_message.clone().unwrap_or_default(),
        worker: job.lease_owner.clone().unwrap_or_default(),
        attempt: job.attempts,
        started_at_ms: job
            .started_at_ms
            .and_then(|at| u64::try_from(at).ok())
            .unwrap_or_default(),
    }
}

/// Runs until the daemon stops.
pub async fn follow_running_jobs(state: AppState, mut objects: JobObjects, wake: Arc<Notify>) {
    let mut shutdown = state.shutdown();
    let mut ticker = tokio::time::interval(SYNC_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = wake.notified() => tokio::time::sleep(GATHER).await,
            _ = shutdown.changed() => return,
        }
        let filter = JobFilter {
            states: vec![JobState::Running],
            kind: None,
        };
        let page = PageRequest {
            before_id: None,
            limit: u32::try_from(MAX_JOB_OBJECTS).unwrap_or(u32::MAX),
        };
        let running = state
            .with_store(move |store| store.list_jobs(&filter, page))
            .await
            .map(|page| page.items.iter().map(running_job).collect::<Vec<_>>());
        let outcome = match running {
            Ok(running) => objects
                .sync(running)
                .await
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        let changes = match outcome {
            Ok(changes) => {
                reported = false;
                changes
            }
            Err(error) => {
                if !reported {
                    reported = true;
                    tracing::warn!(
                        error = %error,
                        "cannot bring the running jobs' D-Bus objects up to date ({error}); \
                         trying again every second"
                    );
                }
                continue;
            }
        };
        for (id, kind) in changes.removed {
            let store_id = i64::try_from(id).unwrap_or_default();
            let result = state
                .with_store(move |store| store.get_job(store_id))
                .await
                .map_or_else(
                    |_| "unknown".to_owned(),
                    |job| job.state.as_str().to_owned(),
                );
            if let Err(error) = objects.announce_removed(id, &kind, &result).await {
                tracing::warn!(
                    error = %error,
                    "cannot announce that job {id} stopped running ({result}): {error}"
                );
            }
        }
    }
}
