//! How many connections sluice-web holds at once, from its open-file limit (`LimitNOFILE=`):
//! each connection is an open file, and a server that runs out of them cannot accept even
//! `/healthz` ("Too many open files"). Below the limit actix stops accepting and leaves new
//! connections in the kernel's backlog until others close, which a client sees as a short
//! wait instead of a refusal.

/// Open files kept for everything that is not a client connection: up to
/// [`BLOCKING_THREADS_PER_WORKER`] store connections per HTTP worker plus the pool's idle ones
/// and each worker thread's own (a SQLite connection in WAL mode holds three files: the
/// database, `-wal` and `-shm`), the listener, the bus, the runtimes' event queues and the
/// log. That is about 1,650; the rest is margin.
pub const RESERVED_FILES: u64 = 2048;

/// Threads per HTTP worker that run store work ([`crate::state::AppState::with_store`]), each
/// with a store connection while it runs. Set here rather than left to actix (512 divided by
/// the number of CPUs), so that [`RESERVED_FILES`] holds on any machine; 256 is what actix
/// chose on the two-core machines sluice is measured on.
pub const BLOCKING_THREADS_PER_WORKER: usize = 256;

/// actix's own default per worker; a huge open-file limit does not raise it, so the memory
/// connections take stays what it was.
const MAX_CONNECTIONS_PER_WORKER: u64 = 25_000;

/// The connections and event streams an open-file limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    pub open_file_limit: u64,
    /// Client connections held at once, over all workers.
    pub connections: u64,
}

impl ConnectionBudget {
    /// The budget of this process, from its soft `RLIMIT_NOFILE`; when that cannot be read,
    /// from 1024, the usual soft limit, so the daemon still starts.
    pub fn of_this_process() -> ConnectionBudget {
        use nix::sys::resource::{Resource, getrlimit};
        let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, _hard)) => soft,
            Err(error) => {
                tracing::warn!(error = %error, "cannot read the open-file limit ({error}); assuming 1024");
                1024
            }
        };
        ConnectionBudget::for_open_file_limit(limit)
    }

    /// With a limit too small for [`RESERVED_FILES`], half of it stays reserved.
    pub fn for_open_file_limit(open_file_limit: u64) -> ConnectionBudget {
        let reserved = RESERVED_FILES.min(open_file_limit / 2);
        ConnectionBudget {
            open_file_limit,
            connections: open_file_limit - reserved,
        }
    }

    /// actix's `max_connections`, which counts per worker.
    pub fn per_worker(&self, workers: usize) -> usize {
        let workers = workers.max(1) as u64;
        let per_worker = (self.connections / workers).clamp(1, MAX_CONNECTIONS_PER_WORKER);
        usize::try_from(per_worker).unwrap_or(usize::MAX)
    }

    /// The event streams allowed for a configured `[web] max_event_streams`: at most half the
    /// connections, so that streams, which never end by themselves, cannot take every
    /// connection and leave `/healthz` and the API waiting.
    pub fn stream_limit(&self, configured: u32) -> u32 {
        let half = u32::try_from(self.connections / 2).unwrap_or(u32::MAX);
        configured.min(half).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_limit_holds_the_default_streams_and_ten_thousand_idle_connections() {
        // units/sluice-web.service sets LimitNOFILE=16384; [web] max_event_streams is 1000.
        let budget = ConnectionBudget::for_open_file_limit(16384);
        assert_eq!(budget.connections, 16384 - RESERVED_FILES);
        assert!(budget.connections >= 1000 + 10_000 + 1000, "{budget:?}");
        assert_eq!(budget.stream_limit(1000), 1000);
        assert_eq!(budget.per_worker(2), 7168);
    }

    #[test]
    fn a_small_limit_keeps_half_for_the_daemon_and_half_the_rest_from_streams() {
        let budget = ConnectionBudget::for_open_file_limit(1024);
        assert_eq!(budget.connections, 512);
        assert_eq!(budget.stream_limit(1000), 256);
        assert_eq!(budget.stream_limit(10), 10);
        assert_eq!(budget.per_worker(2), 256);
    }

    #[test]
    fn degenerate_limits_still_allow_one_of_each() {
        let budget = ConnectionBudget::for_open_file_limit(0);
        assert_eq!(budget.per_worker(2), 1);
        assert_eq!(budget.stream_limit(1000), 1);
        let huge = ConnectionBudget::for_open_file_limit(u64::MAX);
        assert_eq!(huge.per_worker(2), 25_000);
        assert_eq!(huge.stream_limit(100_000), 100_000);
    }
}
