//! sluice's benchmark driver for the workloads of ../shared/BENCHMARKS.md. It prints numbers
//! and never fails because a machine is slow.
//!
//! `w1-lib`: W1 at the library level — this process enqueues N no-op jobs one call at a time
//! through `sluice-core` while two `queue-child worker` processes drain them in batches; it
//! reports the enqueue rate, the drain rate and per-job latency (time the body ran − time just
//! before its enqueue call), as the median of the runs with min–max, for each durability.
// A benchmark's output is its product.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use sluice_core::store::{
    Durability, JobFilter, JobState, NewJob, PageRequest, RetryPolicy, Store, StoreOptions,
};

#[derive(Parser)]
struct Arguments {
    #[command(subcommand)]
    command: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// W1 job throughput at the library level (producer + 2 consumer processes).
    W1Lib {
        #[arg(long, default_value_t = 20_000)]
        jobs: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the databases go (a disk-backed directory, not tmpfs).
        #[arg(long, default_value = "/var/tmp")]
        directory: PathBuf,
        /// Jobs a consumer claims and completes per transaction.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Consumer processes; 0 measures enqueue alone (no drain).
        #[arg(long, default_value_t = 2)]
        consumers: usize,
        /// Enqueue everything first, then start the consumers (the "full backlog" variant the
        /// peers' latency figures were taken with).
        #[arg(long)]
        preload: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Arguments::parse().command {
        Workload::W1Lib {
            jobs,
            runs,
            directory,
            batch,
            consumers,
            preload,
        } => {
            let mut report = Vec::new();
            for durability in [Durability::Normal, Durability::Full] {
                let mut samples = Vec::new();
                for run in 1..=runs {
                    let sample =
                        run_w1_lib(jobs, durability, &directory, batch, consumers, preload)?;
                    eprintln!("w1-lib {} run {run}: {sample}", durability.as_str());
                    samples.push(sample);
                }
                let name = if preload { "w1-lib-backlog" } else { "w1-lib" };
                report.push(summarize(name, durability, &samples));
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}

fn run_w1_lib(
    total: usize,
    durability: Durability,
    directory: &Path,
    batch: usize,
    consumer_count: usize,
    preload: bool,
) -> anyhow::Result<Value> {
    let scratch = tempfile::tempdir_in(directory).context("scratch directory")?;
    let database = scratch.path().join("sluice.db");
    let options = StoreOptions {
        durability,
        busy_timeout: Duration::from_secs(30),
        retry: RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        },
    };
    let mut store = Store::open(&database, &options)?;
    let worker_program = sibling_program("queue-child")?;
    let spawn_consumers = || -> anyhow::Result<Vec<Child>> {
        (0..consumer_count)
            .map(|n| {
                Command::new(&worker_program)
                    .arg("--db")
                    .arg(&database)
                    .args(["--durability", durability.as_str(), "worker"])
                    .args(["--name", &format!("bench-{n}"), "--kinds", "noop"])
                    .args(["--batch", &batch.to_string(), "--idle-ms", "600000"])
                    .stdout(Stdio::null())
                    .spawn()
                    .context("starting a consumer")
            })
            .collect::<Result<_, _>>()
    };
    let mut consumers = if preload {
        Vec::new()
    } else {
        spawn_consumers()?
    };
    // Let the consumers open the database before the clock starts.
    std::thread::sleep(Duration::from_millis(300));

    let mut enqueued_at_micros = vec![0u64; total];
    let started = Instant::now();
    for (i, slot) in enqueued_at_micros.iter_mut().enumerate() {
        *slot = now_micros();
        store.enqueue(&NewJob::new("noop", json!({ "i": i })))?;
    }
    let enqueue_seconds = started.elapsed().as_secs_f64();
    if consumer_count == 0 {
        return Ok(json!({ "enqueue_rate": total as f64 / enqueue_seconds }));
    }
    // With a preloaded backlog the drain clock starts when the consumers do.
    let drain_started = if preload {
        consumers = spawn_consumers()?;
        Instant::now()
    } else {
        started
    };
    loop {
        let succeeded = store.job_counts()?[&JobState::Succeeded];
        if succeeded as usize >= total {
            break;
        }
        if drain_started.elapsed() > Duration::from_secs(600) {
            bail!("only {succeeded} of {total} jobs succeeded after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    for consumer in &mut consumers {
        let _ = consumer.kill();
        let _ = consumer.wait();
    }

    let mut latencies_ms = Vec::with_capacity(total);
    let mut cursor = None;
    loop {
        let page = store.list_jobs(
            &JobFilter {
                states: vec![JobState::Succeeded],
                kind: Some("noop".into()),
            },
            PageRequest {
                before_id: cursor,
                limit: 1000,
            },
        )?;
        for job in &page.items {
            let result = job
                .result
                .as_ref()
                .context("succeeded job without result")?;
            let index = result["i"].as_u64().context("result without i")? as usize;
            let ran_at = result["t"].as_u64().context("result without t")?;
            latencies_ms.push(ran_at.saturating_sub(enqueued_at_micros[index]) as f64 / 1000.0);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    latencies_ms.sort_by(f64::total_cmp);
    Ok(json!({
        "enqueue_rate": total as f64 / enqueue_seconds,
        "drain_rate": total as f64 / drain_seconds,
        "latency_p50_ms": percentile(&latencies_ms, 0.50),
        "latency_p99_ms": percentile(&latencies_ms, 0.99),
        "latency_max_ms": latencies_ms.last().copied().unwrap_or(0.0),
    }))
}

/// Median with min and max of every metric over the runs.
fn summarize(workload: &str, durability: Durability, samples: &[Value]) -> Value {
    let mut metrics = serde_json::Map::new();
    if let Some(first) = samples.first().and_then(Value::as_object) {
        for key in first.keys() {
            let mut values: Vec<f64> = samples
                .iter()
                .filter_map(|sample| sample[key].as_f64())
                .collect();
            values.sort_by(f64::total_cmp);
            metrics.insert(
                key.clone(),
                json!({
                    "median": percentile(&values, 0.5),
                    "min": values.first(),
                    "max": values.last(),
                }),
            );
        }
    }
    json!({
        "workload": workload,
        "durability": durability.as_str(),
        "runs": samples.len(),
        "metrics": metrics,
    })
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index]
}

fn sibling_program(name: &str) -> anyhow::Result<PathBuf> {
    let own = std::env::current_exe().context("locating this program")?;
    let sibling = own.with_file_name(name);
    if !sibling.exists() {
        bail!(
            "{} not found; build the sluice-tests binaries first",
            sibling.display()
        );
    }
    Ok(sibling)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}
