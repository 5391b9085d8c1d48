//! Who is waiting for which job: requests with `?wait=` and per-job event streams register
//! here and sleep until their job changes. Nothing polls per request and no thread waits:
//! a waiter is a future holding one shared [`Notify`] per job.
//!
//! Two things wake a job's waiters, and a waiter always re-reads the database after waking,
//! so a wake-up says only "look now":
//! - the D-Bus signal about the job (`JobStarted`, `JobProgress`, `JobFinished`,
//!   `JobsChanged`, …), which the main loop passes to [`JobWaiters::wake`] at once;
//! - the main loop's slow look at the job log ([`JobWaiters::catch_up`], every
//!   [`CATCH_UP_INTERVAL`] while anyone waits): one query for the jobs with log entries since
//!   the last look. It wakes the waiters of changes whose signal was lost, sent before this
//!   process started, or never sent (a lease rescued in another process), so signals only
//!   make waiting faster, never correct.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// How often the job log is read for changes while anyone waits.
pub const CATCH_UP_INTERVAL: Duration = Duration::from_secs(1);

/// Log entries read per query of the catch-up; it reads again while it gets this many.
const CATCH_UP_PAGE: u32 = 10_000;

#[derive(Debug, Default)]
pub struct JobWaiters {
    jobs: Mutex<HashMap<i64, Entry>>,
}

#[derive(Debug)]
struct Entry {
    notify: Arc<Notify>,
    waiters: usize,
}

/// One registered waiter; dropping it (the request ends, the client leaves) unregisters it.
#[derive(Debug)]
pub struct Waiter {
    registry: Arc<JobWaiters>,
    job_id: i64,
    notify: Arc<Notify>,
}

impl Waiter {
    /// The notification to await. Create it and call `enable()` on it *before* reading the
    /// database, so a change committed between the read and the await still wakes it.
    pub fn notify(&self) -> &Arc<Notify> {
        &self.notify
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut jobs = self.registry.lock();
        if let Some(entry) = jobs.get_mut(&self.job_id) {
            entry.waiters -= 1;
            if entry.waiters == 0 {
                jobs.remove(&self.job_id);
            }
        }
    }
}

impl JobWaiters {
    /// Registers a waiter for `job_id`.
    pub fn register(self: &Arc<Self>, job_id: i64) -> Waiter {
        let notify = {
            let mut jobs = self.lock();
            let entry = jobs.entry(job_id).or_insert_with(|| Entry {
                notify: Arc::new(Notify::new()),
                waiters: 0,
            });
            entry.waiters += 1;
            Arc::clone(&entry.notify)
        };
        Waiter {
            registry: Arc::clone(self),
            job_id,
            notify,
        }
    }

    /// Wakes every waiter of `job_id` (none: nothing happens).
    pub fn wake(&self, job_id: i64) {
        if let Some(entry) = self.lock().get(&job_id) {
            entry.notify.notify_waiters();
        }
    }

    /// How many jobs have waiters, and how many waiters there are.
    pub fn counts(&self) -> (usize, usize) {
        let jobs = self.lock();
        (jobs.len(), jobs.values().map(|entry| entry.waiters).sum())
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Wakes the waiters of every job with log entries after `*seen` and moves `*seen` to the
    /// newest entry. With nobody waiting it only moves `*seen` to the newest entry (one
    /// look-up of the largest id), so the first waiter never makes it read a backlog. Runs on
    /// a blocking thread with a store connection.
    pub fn catch_up(
        &self,
        store: &sluice_core::store::Store,
        seen: &mut i64,
    ) -> Result<usize, sluice_core::store::jobs::JobError> {
        if self.is_empty() {
            *seen = store.newest_job_log_id()?;
            return Ok(0);
        }
        let mut woken = 0;
        loop {
            let (jobs, newest, more) = store.jobs_logged_after(*seen, CATCH_UP_PAGE)?;
            *seen = newest;
            let jobs_with_waiters = {
                let registered = self.lock();
                jobs.into_iter()
                    .filter_map(|job_id| {
                        registered
                            .get(&job_id)
                            .map(|entry| Arc::clone(&entry.notify))
                    })
                    .collect::<Vec<_>>()
            };
            for notify in jobs_with_waiters {
                notify.notify_waiters();
                woken += 1;
            }
            if !more {
                return Ok(woken);
            }
        }
    }

    /// The map holds no invariant a panic could break halfway.
    fn lock(&self) -> MutexGuard<'_, HashMap<i64, Entry>> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_reaches_the_waiters_of_that_job_only_and_leaving_unregisters() {
        let registry = Arc::new(JobWaiters::default());
        let first = registry.register(7);
        let second = registry.register(7);
        let other = registry.register(8);
        assert_eq!(registry.counts(), (2, 3));
        let first_notify = Arc::clone(first.notify());
        let woken = first_notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let other_notify = Arc::clone(other.notify());
        let not_woken = other_notify.notified();
        tokio::pin!(not_woken);
        not_woken.as_mut().enable();
        registry.wake(7);
        tokio::time::timeout(Duration::from_secs(5), woken)
            .await
            .expect("the waiter of job 7 is woken");
        assert!(
            futures_util::FutureExt::now_or_never(&mut not_woken).is_none(),
            "the waiter of job 8 sleeps on"
        );
        drop(first);
        drop(second);
        assert_eq!(registry.counts(), (1, 1));
        drop(other);
        assert!(registry.is_empty());
    }
}
