//! Per-host politeness: at most `per_host_concurrency` requests run against one host at once,
//! and two requests to the same host start at least `politeness_delay` apart. A host that
//! answered 429 or 503 with `Retry-After` is held until then ([`HostLimiter::hold`]): source
//! checks skip it, and downloads to it wait, since they share these gates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Shared by every download task; clones share the same gates.
#[derive(Debug, Clone)]
pub struct HostLimiter {
    gates: Arc<Mutex<HashMap<String, Arc<HostGate>>>>,
    per_host_concurrency: usize,
    politeness_delay: Duration,
}

#[derive(Debug)]
struct HostGate {
    slots: Arc<Semaphore>,
    next_start: tokio::sync::Mutex<Instant>,
}

/// Held while a request runs against the host; dropping it frees the slot.
#[derive(Debug)]
pub struct HostSlot {
    _permit: OwnedSemaphorePermit,
}

/// Gates of hosts that nobody used for this long are forgotten when the map grows.
const FORGET_IDLE_GATES_AFTER: usize = 1024;

impl HostLimiter {
    pub fn new(per_host_concurrency: u32, politeness_delay: Duration) -> HostLimiter {
        HostLimiter {
            gates: Arc::new(Mutex::new(HashMap::new())),
            per_host_concurrency: per_host_concurrency.max(1) as usize,
            politeness_delay,
        }
    }

    /// Whether this limiter applies the given settings (a reload with other values replaces
    /// it; downloads already holding a slot finish under the old one).
    pub fn has_settings(&self, per_host_concurrency: u32, politeness_delay: Duration) -> bool {
        self.per_host_concurrency == per_host_concurrency.max(1) as usize
            && self.politeness_delay == politeness_delay
    }

    /// Waits for a free slot on `host` (a `host:port` key) and for the politeness delay since
    /// the previous request to it started.
    pub async fn acquire(&self, host: &str) -> HostSlot {
        let gate = self.gate(host);
        let permit = Arc::clone(&gate.slots)
            .acquire_owned()
            .await
            .expect("host semaphores are never closed");
        let start_at = {
            let mut next_start = gate.next_start.lock().await;
            let start_at = (*next_start).max(Instant::now());
            *next_start = start_at + self.politeness_delay;
            start_at
        };
        tokio::time::sleep_until(start_at).await;
        HostSlot { _permit: permit }
    }

    /// Holds `host` until `until` (a `Retry-After`): the next request to it starts no earlier.
    pub async fn hold(&self, host: &str, until: Instant) {
        let gate = self.gate(host);
        let mut next_start = gate.next_start.lock().await;
        *next_start = (*next_start).max(until);
    }

    /// When the next request to `host` may start, if a hold puts that further away than the
    /// politeness delay alone would.
    pub async fn held_until(&self, host: &str) -> Option<Instant> {
        let gate = self.gate(host);
        let next_start = *gate.next_start.lock().await;
        (next_start > Instant::now() + self.politeness_delay).then_some(next_start)
    }

    fn gate(&self, host: &str) -> Arc<HostGate> {
        let mut gates = self
            .gates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if gates.len() > FORGET_IDLE_GATES_AFTER {
            let all_free = self.per_host_concurrency;
            gates.retain(|_, gate| {
                Arc::strong_count(gate) > 1 || gate.slots.available_permits() < all_free
            });
        }
        Arc::clone(gates.entry(host.to_owned()).or_insert_with(|| {
            Arc::new(HostGate {
                slots: Arc::new(Semaphore::new(self.per_host_concurrency)),
                next_start: tokio::sync::Mutex::new(Instant::now()),
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_host_gets_its_concurrency_and_spaced_starts() {
        let limiter = HostLimiter::new(2, Duration::from_secs(1));
        let started = Instant::now();
        let first = limiter.acquire("a:80").await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        let second = limiter.acquire("a:80").await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        // Another host is independent.
        let _other = limiter.acquire("b:80").await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        // The third request to a:80 waits for a slot as well as for the delay.
        let waiting = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire("a:80").await })
        };
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!waiting.is_finished(), "both slots are taken");
        drop(first);
        let third = waiting.await.unwrap();
        // It starts as soon as the slot is free: the delay since the second start has passed.
        assert_eq!(started.elapsed(), Duration::from_secs(11));
        drop((second, third));
    }
}
