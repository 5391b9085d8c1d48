//! Stopping on SIGTERM within a deadline: the current job either finishes in time or is
//! released, so that systemd never has to SIGKILL a daemon in the middle of a job.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The moment by which a stopping daemon must have finished or released its current job.
///
/// Set it from the configured stop timeout when the [`super::Signal::Terminate`] arrives, and
/// keep that timeout comfortably below the unit's `TimeoutStopSec=`, which is when systemd
/// stops asking and kills.
#[derive(Debug, Clone, Copy)]
pub struct StopDeadline {
    deadline: Instant,
}

/// The job did not finish before the stop deadline; release it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stop deadline passed before the job finished")]
pub struct DeadlinePassed;

impl StopDeadline {
    /// A deadline `stop_timeout` from now.
    pub fn after(stop_timeout: Duration) -> StopDeadline {
        StopDeadline {
            deadline: Instant::now() + stop_timeout,
        }
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn has_passed(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Runs `work` (typically "finish the current job") until the deadline. On
    /// [`DeadlinePassed`] the future has been dropped, so the caller releases the job's lease
    /// next; the job then goes back to the queue without using up an attempt.
    pub async fn finish_within<F: Future>(&self, work: F) -> Result<F::Output, DeadlinePassed> {
        tokio::time::timeout_at(self.deadline, work)
            .await
            .map_err(|_elapsed| DeadlinePassed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn work_that_fits_finishes_and_work_that_does_not_is_cut_off() {
        let deadline = StopDeadline::after(Duration::from_secs(10));
        let quick = deadline.finish_within(async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "done"
        });
        assert_eq!(quick.await, Ok("done"));
        assert_eq!(deadline.remaining(), Duration::from_secs(7));

        let slow = deadline.finish_within(tokio::time::sleep(Duration::from_secs(60)));
        assert_eq!(slow.await, Err(DeadlinePassed));
        assert!(deadline.has_passed());
        assert_eq!(deadline.remaining(), Duration::ZERO);
    }
}
