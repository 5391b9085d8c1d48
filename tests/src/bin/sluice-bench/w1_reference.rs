//! W1's two reference numbers (issue 13), to read W1 against.
//!
//! `w1-ceiling`: the enqueue rate alone — this process enqueues N no-op jobs into a fresh
//! database with the production pragmas, one job per transaction (`Store::enqueue`, as W1's
//! producer does) and, for comparison, 64 per transaction (`Store::enqueue_many`), with no
//! consumer running. One job per transaction is the most any W1 producer can reach on this
//! machine: with consumers the same write lock is shared. Also the time of each single
//! enqueue call (p50/p99/max), where checkpoints and lock waits show.
//!
//! `w1-idle`: idle latency, the wake-up path — two real `sluice-ingest-worker` processes on a
//! private bus, one job at a time: the producer waits a gap (so the workers are idle, polling
//! at their slowest), enqueues one `noop` job, announces it with `JobQueued` as the web does,
//! and reads the job until it is `succeeded` (committed). Reports enqueue → committed and
//! enqueue → body ran, p50/p99/max.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sluice_core::store::{Durability, JobState, NewJob, Store};

use super::scale::load_average;
use super::{W1Suite, now_micros, percentile, store_options};

/// Jobs per transaction of the batched ceiling.
const CEILING_BATCH: usize = 64;

pub fn ceiling(total: usize, durability: Durability, directory: &Path) -> anyhow::Result<Value> {
    let load_before = load_average();
    let single = {
        let scratch = tempfile::tempdir_in(directory).context("scratch directory")?;
        let mut store = Store::open(
            &scratch.path().join("sluice.db"),
            &store_options(durability),
        )?;
        let mut call_micros = Vec::with_capacity(total);
        let started = Instant::now();
        for i in 0..total {
            let call_started = Instant::now();
            store.enqueue(&NewJob::new("noop", json!({ "i": i })))?;
            call_micros.push(call_started.elapsed().as_secs_f64() * 1e6);
        }
        let seconds = started.elapsed().as_secs_f64();
        call_micros.sort_by(f64::total_cmp);
        (total as f64 / seconds, call_micros)
    };
    let batched_rate = {
        let scratch = tempfile::tempdir_in(directory).context("scratch directory")?;
        let mut store = Store::open(
            &scratch.path().join("sluice.db"),
            &store_options(durability),
        )?;
        let jobs: Vec<NewJob> = (0..total)
            .map(|i| NewJob::new("noop", json!({ "i": i })))
            .collect();
        let started = Instant::now();
        for chunk in jobs.chunks(CEILING_BATCH) {
            store.enqueue_many(chunk)?;
        }
        total as f64 / started.elapsed().as_secs_f64()
    };
    let (single_rate, call_micros) = single;
    Ok(json!({
        "enqueue_rate_one_per_transaction": single_rate,
        "enqueue_call_p50_us": percentile(&call_micros, 0.50),
        "enqueue_call_p99_us": percentile(&call_micros, 0.99),
        "enqueue_call_max_us": call_micros.last().copied().unwrap_or(0.0),
        "enqueue_rate_64_per_transaction": batched_rate,
        "load_average": load_before,
    }))
}

pub struct Idle {
    pub jobs: usize,
    pub gap: Duration,
    pub workers: usize,
    pub batch: usize,
}

pub fn idle(settings: &Idle, durability: Durability, directory: &Path) -> anyhow::Result<Value> {
    let load_before = load_average();
    let mut suite = W1Suite::start(settings.batch, settings.workers, durability, directory)?;
    let mut committed_ms = Vec::with_capacity(settings.jobs);
    let mut ran_ms = Vec::with_capacity(settings.jobs);
    for i in 0..settings.jobs {
        std::thread::sleep(settings.gap);
        let enqueued_at_micros = now_micros();
        let started = Instant::now();
        let id = suite
            .store
            .enqueue(&NewJob::new("noop", json!({ "i": i })))?
            .id;
        suite.announce(id)?;
        let job = loop {
            let job = suite.store.get_job(id)?;
            if job.state == JobState::Succeeded {
                break job;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("job {id} is still {} after 60 s", job.state);
            }
            // A read of one row by id: cheap next to the workers' transactions.
            std::thread::sleep(Duration::from_micros(50));
        };
        committed_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let ran_at = job
            .result
            .as_ref()
            .and_then(|result| result["t"].as_u64())
            .context("succeeded noop job without t")?;
        ran_ms.push(ran_at.saturating_sub(enqueued_at_micros) as f64 / 1000.0);
    }
    suite.stop_workers()?;
    committed_ms.sort_by(f64::total_cmp);
    ran_ms.sort_by(f64::total_cmp);
    Ok(json!({
        "committed_p50_ms": percentile(&committed_ms, 0.50),
        "committed_p99_ms": percentile(&committed_ms, 0.99),
        "committed_max_ms": committed_ms.last().copied().unwrap_or(0.0),
        "ran_p50_ms": percentile(&ran_ms, 0.50),
        "ran_p99_ms": percentile(&ran_ms, 0.99),
        "ran_max_ms": ran_ms.last().copied().unwrap_or(0.0),
        "load_average": load_before,
    }))
}
