//! Rate limiting for progress signals, so a fast job cannot flood the bus while the first and
//! the last value of every job or download still always get through.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The default spacing between two progress signals for the same job or download.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Decides, per id, whether a progress update is worth a signal.
///
/// The start (fraction 0, or 0 bytes) and the end (fraction 1, or bytes == total) always pass:
/// a subscriber showing a progress bar must see it start and complete. In between, at most one
/// update per id per `min_interval` passes. The clock is an argument so tests can drive it.
#[derive(Debug)]
pub struct ProgressRateLimiter {
    min_interval: Duration,
    last_emitted: HashMap<u64, Instant>,
}

impl ProgressRateLimiter {
    pub fn new(min_interval: Duration) -> Self {
        ProgressRateLimiter {
            min_interval,
            last_emitted: HashMap::new(),
        }
    }

    /// Whether a job progress update of `fraction` (0.0..=1.0) for `job_id` should be emitted.
    pub fn allow_job_progress(&mut self, job_id: u64, fraction: f64, now: Instant) -> bool {
        let is_start = fraction <= 0.0;
        let is_end = fraction >= 1.0;
        self.allow(job_id, is_start, is_end, now)
    }

    /// Whether a download progress update (`bytes` of `total`, total 0 when unknown) should be
    /// emitted.
    pub fn allow_download_progress(
        &mut self,
        download_id: u64,
        bytes: u64,
        total: u64,
        now: Instant,
    ) -> bool {
        let is_start = bytes == 0;
        let is_end = total != 0 && bytes >= total;
        self.allow(download_id, is_start, is_end, now)
    }

    fn allow(&mut self, id: u64, is_start: bool, is_end: bool, now: Instant) -> bool {
        if is_end {
            // The id is finished; forgetting it keeps the map as small as the running work.
            self.last_emitted.remove(&id);
            return true;
        }
        let due = match self.last_emitted.get(&id) {
            Some(last) => now.saturating_duration_since(*last) >= self.min_interval,
            None => true,
        };
        if is_start || due {
            self.last_emitted.insert(id, now);
            true
        } else {
            false
        }
    }
}

/// Keeps a daemon bug (NaN, 1.7) from reaching subscribers as a nonsensical fraction.
pub(super) fn clamp_fraction(fraction: f64) -> f64 {
    if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    }
}

/// The limiter holds no invariant a panic could break halfway, so a poisoned lock is usable.
pub(super) fn lock_limiter(
    limiter: &Mutex<ProgressRateLimiter>,
) -> MutexGuard<'_, ProgressRateLimiter> {
    limiter
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intermediate_job_progress_is_spaced_but_start_and_end_always_pass() {
        let mut limiter = ProgressRateLimiter::new(Duration::from_millis(250));
        let start = Instant::now();
        let at = |millis| start + Duration::from_millis(millis);
        assert!(limiter.allow_job_progress(7, 0.0, at(0)));
        assert!(!limiter.allow_job_progress(7, 0.1, at(100)));
        assert!(!limiter.allow_job_progress(7, 0.2, at(249)));
        assert!(limiter.allow_job_progress(7, 0.3, at(250)));
        assert!(!limiter.allow_job_progress(7, 0.4, at(300)));
        // Another job has its own budget.
        assert!(limiter.allow_job_progress(8, 0.5, at(300)));
        assert!(limiter.allow_job_progress(7, 1.0, at(301)));
        // A repeated start passes even right after the previous signal.
        assert!(limiter.allow_job_progress(8, 0.0, at(301)));
    }

    #[test]
    fn first_update_of_an_id_passes_even_mid_way() {
        let mut limiter = ProgressRateLimiter::new(Duration::from_secs(3600));
        let now = Instant::now();
        assert!(limiter.allow_job_progress(1, 0.42, now));
        assert!(!limiter.allow_job_progress(1, 0.43, now));
    }

    #[test]
    fn fractions_are_clamped() {
        assert_eq!(clamp_fraction(f64::NAN), 0.0);
        assert_eq!(clamp_fraction(1.7), 1.0);
        assert_eq!(clamp_fraction(-0.2), 0.0);
        assert_eq!(clamp_fraction(0.5), 0.5);
    }

    #[test]
    fn download_progress_passes_start_and_completion() {
        let mut limiter = ProgressRateLimiter::new(Duration::from_secs(3600));
        let now = Instant::now();
        assert!(limiter.allow_download_progress(3, 0, 1000, now));
        assert!(!limiter.allow_download_progress(3, 10, 1000, now));
        assert!(!limiter.allow_download_progress(3, 999, 1000, now));
        assert!(limiter.allow_download_progress(3, 1000, 1000, now));
        // An unknown total (0) never counts as complete.
        assert!(limiter.allow_download_progress(4, 0, 0, now));
        assert!(!limiter.allow_download_progress(4, 5, 0, now));
    }
}
