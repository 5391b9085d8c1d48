//! The accepted range of every duration and number key: what the daemons can live with, in
//! one place, so `sluicectl config check` refuses exactly what a daemon would fail on.

use std::ops::RangeInclusive;
use std::time::Duration;

/// The accepted range of one duration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub minimum: Duration,
    pub maximum: Duration,
}

pub(super) const fn range(minimum: Duration, maximum: Duration) -> DurationRange {
    DurationRange { minimum, maximum }
}

pub(super) const MILLISECOND: Duration = Duration::from_millis(1);
pub(super) const HOUR: Duration = Duration::from_secs(3600);
pub(super) const DAY: Duration = Duration::from_secs(24 * 3600);

// The upper bounds are what the daemons can live with, not what anyone should want: every
// duration ends up added to `Instant::now()`, as a tokio interval, a deadline or SQLite
// milliseconds, where an absurd value ("18446744073709551615s") panicked at start or on
// SIGTERM. Each is also far above any sensible setting, so no working file is refused.
// `config/sluice.toml` documents each range next to its key.
pub(super) const BUSY_TIMEOUT: DurationRange = range(MILLISECOND, HOUR);
/// The store refuses a lease outside 10 ms ..= 24 h (`store::jobs`), so the workers would
/// never claim a job.
pub(super) const LEASE: DurationRange = range(Duration::from_millis(10), DAY);
pub(super) const HEARTBEAT_INTERVAL: DurationRange =
    range(MILLISECOND, Duration::from_secs(12 * 3600));
pub(super) const RETRY_BACKOFF: DurationRange =
    range(MILLISECOND, Duration::from_secs(7 * 24 * 3600));
pub(super) const STOP_TIMEOUT: DurationRange = range(MILLISECOND, HOUR);
pub(super) const STATUS_INTERVAL: DurationRange = range(MILLISECOND, HOUR);
pub(super) const RECONCILE_INTERVAL: DurationRange =
    range(MILLISECOND, Duration::from_secs(7 * 24 * 3600));
pub(super) const POLL_INTERVAL: DurationRange = range(MILLISECOND, DAY);
pub(super) const QUIET_PERIOD: DurationRange = range(MILLISECOND, DAY);
pub(super) const PROCESSOR_TIMEOUT: DurationRange = range(MILLISECOND, DAY);
pub(super) const POLITENESS_DELAY: DurationRange = range(Duration::ZERO, HOUR);
pub(super) const REQUEST_TIMEOUT: DurationRange = range(MILLISECOND, HOUR);
pub(super) const PROGRESS_INTERVAL: DurationRange = range(MILLISECOND, HOUR);
/// A request waits at most this long for a job; a day is far beyond any client's patience.
pub(super) const MAX_WAIT: DurationRange = range(Duration::from_secs(1), DAY);
/// A job attempt or a download may legitimately run for hours (a 10 GiB file on a slow link);
/// a week is far beyond any of them and still fits every clock the daemons add it to.
pub(super) const JOB_TIMEOUT: DurationRange =
    range(MILLISECOND, Duration::from_secs(7 * 24 * 3600));
pub(super) const DOWNLOAD_TIMEOUT: DurationRange =
    range(MILLISECOND, Duration::from_secs(7 * 24 * 3600));
/// How long finished work is kept: at least a second (tests), at most ten years.
pub(super) const RETENTION_AGE: DurationRange = range(
    Duration::from_secs(1),
    Duration::from_secs(3650 * 24 * 3600),
);
pub(super) const SOURCE_EVERY: DurationRange =
    range(Duration::from_secs(1), Duration::from_secs(30 * 24 * 3600));

/// Every duration key with its range, as the file names it (entries of `[[watch]]`,
/// `[[processor]]` and `[[source]]` share their `*_defaults` key's range).
pub const DURATION_KEYS: &[(&str, DurationRange)] = &[
    ("store.busy_timeout", BUSY_TIMEOUT),
    ("jobs.lease", LEASE),
    ("jobs.heartbeat_interval", HEARTBEAT_INTERVAL),
    ("jobs.retry_backoff_base", RETRY_BACKOFF),
    ("jobs.retry_backoff_max", RETRY_BACKOFF),
    ("service.stop_timeout", STOP_TIMEOUT),
    ("service.status_interval", STATUS_INTERVAL),
    ("monitor.reconcile_interval", RECONCILE_INTERVAL),
    ("watch_defaults.poll_interval", POLL_INTERVAL),
    ("watch_defaults.quiet_period", QUIET_PERIOD),
    ("ingest.job_timeout", JOB_TIMEOUT),
    ("processor_defaults.timeout", PROCESSOR_TIMEOUT),
    ("web.max_wait", MAX_WAIT),
    ("scraper.politeness_delay", POLITENESS_DELAY),
    ("scraper.request_timeout", REQUEST_TIMEOUT),
    ("scraper.progress_interval", PROGRESS_INTERVAL),
    ("scraper.download_timeout", DOWNLOAD_TIMEOUT),
    ("source_defaults.every", SOURCE_EVERY),
    ("retention.succeeded_jobs", RETENTION_AGE),
    ("retention.failed_jobs", RETENTION_AGE),
    ("retention.history", RETENTION_AGE),
    ("retention.finished_downloads", RETENTION_AGE),
];

/// Every whole-number key with its accepted range. The bounds come from what reads the value:
/// the store's attempt range and page size, the generator's worker count, and limits far
/// above any sensible setting for the rest.
pub const NUMBER_KEYS: &[(&str, RangeInclusive<u32>)] = &[
    ("jobs.max_attempts", MAX_ATTEMPTS),
    ("jobs.claim_batch", CLAIM_BATCH),
    ("web.max_event_streams", MAX_EVENT_STREAMS),
    ("ingest.workers", super::INGEST_WORKERS_RANGE),
    ("ingest.thumbnail_size", THUMBNAIL_SIZE),
    ("ingest.max_pending", MAX_PENDING),
    ("ingest.max_pages", MAX_PAGES),
    ("scraper.per_host_concurrency", PER_HOST_CONCURRENCY),
    ("scraper.max_redirects", MAX_REDIRECTS),
    ("scraper.max_pending", MAX_PENDING),
    ("limits.max_string_length", MAX_STRING_LENGTH),
    ("limits.max_page_size", MAX_PAGE_SIZE),
];

pub(super) const MAX_ATTEMPTS: RangeInclusive<u32> = crate::policy::MAX_ATTEMPTS_RANGE;
/// Each stream holds an open connection (a file descriptor) and about 11 KB for as long as
/// it lasts; a hundred thousand is far beyond what a `LimitNOFILE=` would sensibly back.
pub(super) const MAX_EVENT_STREAMS: RangeInclusive<u32> = 1..=100_000;
pub(super) const CLAIM_BATCH: RangeInclusive<u32> = 1..=10_000;
pub(super) const THUMBNAIL_SIZE: RangeInclusive<u32> = 1..=4096;
/// Pages of one PDF; every page is a row of the text index and a step in its job's log, and a
/// million is far beyond any real document.
pub(super) const MAX_PAGES: RangeInclusive<u32> = 1..=1_000_000;
pub(super) const PER_HOST_CONCURRENCY: RangeInclusive<u32> = 1..=1024;
pub(super) const MAX_REDIRECTS: RangeInclusive<u32> = 0..=100;
/// A queue limit: the store counts pending jobs up to the limit (never more rows than that),
/// so even the largest one is a bounded read; ten million is far beyond any real backlog.
pub(super) const MAX_PENDING: RangeInclusive<u32> = 1..=10_000_000;
pub(super) const MAX_STRING_LENGTH: RangeInclusive<u32> = 1..=u32::MAX;
/// The store answers at most this many rows per page; a larger setting was silently cut.
pub(super) const MAX_PAGE_SIZE: RangeInclusive<u32> = 1..=crate::store::jobs::MAX_PAGE_SIZE;
