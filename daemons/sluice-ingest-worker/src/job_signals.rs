//! Which job signals a worker sends, and when: every state change reaches the bus, none is
//! dropped. While the budget allows, each change is its own `JobStarted` or `JobFinished`;
//! beyond it (a flood of tiny jobs), changes are held for at most [`HOLD_AT_MOST`] and sent
//! together as one `JobsChanged`, in the order they happened, so the bus never becomes the
//! bottleneck and no subscriber (a waiter, the dashboard) misses an outcome. Only progress is
//! thinned, by the service's rate limiter.

use std::collections::HashMap;

use tokio::time::{Duration, Instant};

/// Single `JobStarted`/`JobFinished` signals per second at most (burst the same); above it,
/// changes travel in batches.
pub(crate) const SINGLE_SIGNALS_PER_SECOND: f64 = 200.0;

/// How long a change may wait for its batch.
pub(crate) const HOLD_AT_MOST: Duration = Duration::from_millis(50);

/// Most changes in one `JobsChanged`; a fuller batch goes at once.
pub(crate) const MOST_CHANGES_PER_BATCH: usize = 1000;

/// One job's change as `JobsChanged` carries it: job id, kind, new state.
pub(crate) type JobChange = (u64, String, String);

/// What to send now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JobSignal {
    Started { job_id: u64, kind: String },
    Finished { job_id: u64, state: String },
    Batch(Vec<JobChange>),
}

/// Decides, change by change, between a single signal now and a place in the next batch.
#[derive(Debug)]
pub(crate) struct JobSignals {
    budget: SignalBudget,
    held: Vec<JobChange>,
    held_since: Option<Instant>,
    /// The kind of each started job until it finishes (`JobFinished` has none).
    kinds: HashMap<u64, String>,
}

impl JobSignals {
    pub(crate) fn new() -> JobSignals {
        JobSignals {
            budget: SignalBudget::new(SINGLE_SIGNALS_PER_SECOND),
            held: Vec::new(),
            held_since: None,
            kinds: HashMap::new(),
        }
    }

    /// A job started on this worker.
    pub(crate) fn started(&mut self, job_id: u64, kind: String, now: Instant) -> Option<JobSignal> {
        self.kinds.insert(job_id, kind.clone());
        if self.single_allowed(now) {
            return Some(JobSignal::Started { job_id, kind });
        }
        self.hold((job_id, kind, "running".to_owned()), now)
    }

    /// A job reached `state` (succeeded, failed, retrying, cancelled, dead).
    pub(crate) fn finished(&mut self, job_id: u64, state: &str, now: Instant) -> Option<JobSignal> {
        let kind = self.kinds.remove(&job_id).unwrap_or_default();
        if self.single_allowed(now) {
            return Some(JobSignal::Finished {
                job_id,
                state: state.to_owned(),
            });
        }
        self.hold((job_id, kind, state.to_owned()), now)
    }

    /// When the held changes must go, if any are held.
    pub(crate) fn flush_at(&self) -> Option<Instant> {
        self.held_since.map(|since| since + HOLD_AT_MOST)
    }

    /// The held changes as one batch (none when nothing is held).
    pub(crate) fn flush(&mut self) -> Option<JobSignal> {
        self.held_since = None;
        if self.held.is_empty() {
            return None;
        }
        Some(JobSignal::Batch(std::mem::take(&mut self.held)))
    }

    /// A single signal may go only when nothing is held (it would overtake the held ones)
    /// and the budget has a token.
    fn single_allowed(&mut self, now: Instant) -> bool {
        self.held.is_empty() && self.budget.take_at(now)
    }

    fn hold(&mut self, change: JobChange, now: Instant) -> Option<JobSignal> {
        self.held.push(change);
        self.held_since.get_or_insert(now);
        if self.held.len() >= MOST_CHANGES_PER_BATCH {
            return self.flush();
        }
        None
    }
}

/// A token bucket: `per_second` tokens a second, at most `per_second` saved up.
#[derive(Debug)]
struct SignalBudget {
    per_second: f64,
    tokens: f64,
    refilled_at: Option<Instant>,
}

impl SignalBudget {
    fn new(per_second: f64) -> SignalBudget {
        SignalBudget {
            per_second,
            tokens: per_second,
            refilled_at: None,
        }
    }

    fn take_at(&mut self, now: Instant) -> bool {
        let elapsed = self
            .refilled_at
            .map(|refilled_at| now.saturating_duration_since(refilled_at).as_secs_f64())
            .unwrap_or(0.0);
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.refilled_at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_budget_allows_a_burst_then_the_rate() {
        let mut budget = SignalBudget::new(10.0);
        let start = Instant::now();
        let granted = (0..20).filter(|_| budget.take_at(start)).count();
        assert_eq!(granted, 10);
        assert!(!budget.take_at(start + Duration::from_millis(50)));
        assert!(budget.take_at(start + Duration::from_millis(150)));
        // A long quiet spell refills to the burst size, no more.
        let later = start + Duration::from_secs(3600);
        let granted = (0..20).filter(|_| budget.take_at(later)).count();
        assert_eq!(granted, 10);
    }

    /// A flood of jobs: every start and every end is sent, singly or in a batch, in order.
    #[test]
    fn no_change_is_dropped_and_none_overtakes_another() {
        let mut signals = JobSignals::new();
        let start = Instant::now();
        let mut sent: Vec<JobChange> = Vec::new();
        let record = |signal: Option<JobSignal>, sent: &mut Vec<JobChange>| match signal {
            Some(JobSignal::Started { job_id, kind }) => {
                sent.push((job_id, kind, "running".into()))
            }
            Some(JobSignal::Finished { job_id, state }) => {
                sent.push((job_id, "noop".into(), state))
            }
            Some(JobSignal::Batch(changes)) => sent.extend(changes),
            None => {}
        };
        let jobs = 5000u64;
        for job_id in 1..=jobs {
            // Ten jobs a millisecond: far above the budget.
            let now = start + Duration::from_micros(job_id * 100);
            record(signals.started(job_id, "noop".into(), now), &mut sent);
            record(signals.finished(job_id, "succeeded", now), &mut sent);
            if signals.flush_at().is_some_and(|due| due <= now) {
                record(signals.flush(), &mut sent);
            }
        }
        record(signals.flush(), &mut sent);
        assert_eq!(sent.len() as u64, 2 * jobs, "every change was sent once");
        for (index, job_id) in (1..=jobs).enumerate() {
            assert_eq!(sent[2 * index], (job_id, "noop".into(), "running".into()));
            assert_eq!(
                sent[2 * index + 1],
                (job_id, "noop".into(), "succeeded".into())
            );
        }
        assert!(signals.flush_at().is_none() && signals.flush().is_none());
    }

    #[test]
    fn held_changes_wait_at_most_the_hold_time_and_a_full_batch_goes_at_once() {
        let mut signals = JobSignals::new();
        let start = Instant::now();
        for job_id in 0..SINGLE_SIGNALS_PER_SECOND as u64 {
            assert!(matches!(
                signals.started(job_id, "noop".into(), start),
                Some(JobSignal::Started { .. })
            ));
        }
        assert_eq!(signals.started(999_999, "ingest".into(), start), None);
        assert_eq!(signals.flush_at(), Some(start + HOLD_AT_MOST));
        let mut batch = None;
        for job_id in 0..MOST_CHANGES_PER_BATCH as u64 {
            batch = signals.finished(job_id, "succeeded", start + Duration::from_millis(1));
            if batch.is_some() {
                break;
            }
        }
        match batch {
            Some(JobSignal::Batch(changes)) => {
                assert_eq!(changes.len(), MOST_CHANGES_PER_BATCH);
                assert_eq!(changes[0], (999_999, "ingest".into(), "running".into()));
            }
            other => panic!("a full batch must go at once, got {other:?}"),
        }
        assert!(signals.flush_at().is_none());
    }
}
