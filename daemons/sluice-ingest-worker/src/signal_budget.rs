//! The token bucket that thins per-job D-Bus signals under load.

/// A token bucket for per-job signals.
#[derive(Debug)]
pub(crate) struct SignalBudget {
    per_second: f64,
    tokens: f64,
    refilled_at: std::time::Instant,
    skipped: u64,
}

impl SignalBudget {
    pub(crate) fn new(per_second: f64) -> SignalBudget {
        SignalBudget {
            per_second,
            tokens: per_second,
            refilled_at: std::time::Instant::now(),
            skipped: 0,
        }
    }

    pub(crate) fn take(&mut self) -> bool {
        self.take_at(std::time::Instant::now())
    }

    fn take_at(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.skipped += 1;
            if self.skipped.is_power_of_two() {
                tracing::debug!(skipped = self.skipped, "job signals thinned under load");
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_signal_budget_allows_a_burst_then_the_rate() {
        let mut budget = SignalBudget::new(10.0);
        let start = budget.refilled_at;
        let granted = (0..20).filter(|_| budget.take_at(start)).count();
        assert_eq!(granted, 10);
        assert!(!budget.take_at(start + Duration::from_millis(50)));
        assert!(budget.take_at(start + Duration::from_millis(150)));
        // A long quiet spell refills to the burst size, no more.
        let later = start + Duration::from_secs(3600);
        let granted = (0..20).filter(|_| budget.take_at(later)).count();
        assert_eq!(granted, 10);
    }
}
