//! sluice's benchmark driver for the workloads of ../shared/BENCHMARKS.md. It prints numbers
//! and never fails because a machine is slow.
//!
//! `w1-lib`: W1 at the library level — this process enqueues N no-op jobs one call at a time
//! through `sluice-core` while two `queue-child worker` processes drain them in batches; it
//! reports the enqueue rate, the drain rate and per-job latency (time the body ran − time just
//! before its enqueue call), as the median of the runs with min–max, for each durability.
//!
//! `w1`: W1 through the real daemons — two `sluice-ingest-worker` processes on a private
//! `dbus-daemon` drain the `noop` jobs this process enqueues one call at a time. After an
//! enqueue the producer announces the queue with a `JobQueued` signal (as `org.sluice.Web1`
//! does) at most once per `--signal-interval-us`, so an idle worker wakes within about that
//! long without a signal per job; the workers' own poll (1 ms doubling to 1 s after the last
//! claim) catches whatever a skipped signal would have said.
// A benchmark's output is its product.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader};
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
    /// W1 job throughput through 2 real sluice-ingest-worker processes on a private bus.
    W1 {
        #[arg(long, default_value_t = 20_000)]
        jobs: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the databases go (a disk-backed directory, not tmpfs).
        #[arg(long, default_value = "/var/tmp")]
        directory: PathBuf,
        /// `[jobs] claim_batch` of the workers.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Worker processes.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Least time between two JobQueued wake-up signals of the producer; 0 sends none
        /// (the workers then rely on their polling alone).
        #[arg(long, default_value_t = 1000)]
        signal_interval_us: u64,
        /// Only this durability (full or normal); both when left out.
        #[arg(long)]
        durability: Option<String>,
    },
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
    },
}

fn main() -> anyhow::Result<()> {
    match Arguments::parse().command {
        Workload::W1 {
            jobs,
            runs,
            directory,
            batch,
            workers,
            signal_interval_us,
            durability,
        } => {
            let durabilities = match durability.as_deref() {
                None => vec![Durability::Normal, Durability::Full],
                Some("normal") => vec![Durability::Normal],
                Some("full") => vec![Durability::Full],
                Some(other) => bail!("unknown durability {other:?}; use full or normal"),
            };
            let settings = W1Settings {
                total: jobs,
                batch,
                workers,
                signal_interval: Duration::from_micros(signal_interval_us),
            };
            let mut report = Vec::new();
            for durability in durabilities {
                let mut samples = Vec::new();
                for run in 1..=runs {
                    let sample = run_w1(&settings, durability, &directory)?;
                    eprintln!("w1 {} run {run}: {sample}", durability.as_str());
                    samples.push(sample);
                }
                report.push(summarize("w1", durability, &samples));
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Workload::W1Lib {
            jobs,
            runs,
            directory,
            batch,
            consumers,
        } => {
            let mut report = Vec::new();
            for durability in [Durability::Normal, Durability::Full] {
                let mut samples = Vec::new();
                for run in 1..=runs {
                    let sample = run_w1_lib(jobs, durability, &directory, batch, consumers)?;
                    eprintln!("w1-lib {} run {run}: {sample}", durability.as_str());
                    samples.push(sample);
                }
                report.push(summarize("w1-lib", durability, &samples));
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
    let mut consumers: Vec<Child> = (0..consumer_count)
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
        .collect::<Result<_, _>>()?;
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
    loop {
        let succeeded = store.job_counts()?[&JobState::Succeeded];
        if succeeded as usize >= total {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {succeeded} of {total} jobs succeeded after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let drain_seconds = started.elapsed().as_secs_f64();
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

struct W1Settings {
    total: usize,
    batch: usize,
    workers: usize,
    signal_interval: Duration,
}

fn run_w1(
    settings: &W1Settings,
    durability: Durability,
    directory: &Path,
) -> anyhow::Result<Value> {
    let scratch = tempfile::tempdir_in(directory).context("scratch directory")?;
    let root = scratch.path();
    let bus = BenchBus::start(root)?;
    let database = root.join("sluice.db");
    for folder in ["inbox", "library", "staging"] {
        std::fs::create_dir_all(root.join(folder))?;
    }
    let config_path = root.join("sluice.toml");
    std::fs::write(
        &config_path,
        format!(
            "[store]\npath = \"{database}\"\ndurability = \"{durability}\"\n\
             [bus]\naddress = \"{address}\"\n\
             [jobs]\nclaim_batch = {batch}\n\
             [ingest]\nlibrary = \"{root}/library\"\n\
             [[watch]]\npath = \"{root}/inbox\"\nmode = \"consume\"\n\
             [scraper]\ninbox = \"{root}/inbox\"\nstaging = \"{root}/staging\"\n",
            database = database.display(),
            durability = durability.as_str(),
            address = bus.address,
            batch = settings.batch,
            root = root.display(),
        ),
    )?;
    let options = StoreOptions {
        durability,
        busy_timeout: Duration::from_secs(30),
        retry: RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        },
    };
    let mut store = Store::open(&database, &options)?;
    let worker_program = sibling_program("sluice-ingest-worker")?;
    let mut workers = Vec::new();
    for instance in 1..=settings.workers {
        let log = root.join(format!("worker-{instance}.log"));
        let child = Command::new(&worker_program)
            .args(["--instance", &instance.to_string()])
            .env("SLUICE_CONFIG", &config_path)
            .env("SLUICE_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting sluice-ingest-worker")?;
        workers.push(ChildGuard(child));
        wait_for_file_line(&log, "ready", Duration::from_secs(30))?;
    }

    // The producer's own bus connection, used only to announce new jobs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let connection = runtime.block_on(sluice_core::bus::connect(
        &sluice_core::bus::BusAddress::Address(bus.address.clone()),
    ))?;
    let mut last_signal: Option<Instant> = None;
    let mut signals_sent = 0u64;

    let total = settings.total;
    let mut enqueued_at_micros = vec![0u64; total];
    let started = Instant::now();
    for (i, slot) in enqueued_at_micros.iter_mut().enumerate() {
        *slot = now_micros();
        let id = store.enqueue(&NewJob::new("noop", json!({ "i": i })))?.id;
        let due = !settings.signal_interval.is_zero()
            && last_signal.is_none_or(|last| last.elapsed() >= settings.signal_interval);
        if due {
            runtime.block_on(connection.emit_signal(
                None::<&str>,
                "/org/sluice/Web1",
                "org.sluice.Web1",
                "JobQueued",
                &("noop", id as u64),
            ))?;
            last_signal = Some(Instant::now());
            signals_sent += 1;
        }
    }
    let enqueue_seconds = started.elapsed().as_secs_f64();
    loop {
        let succeeded = store.job_counts()?[&JobState::Succeeded];
        if succeeded as usize >= total {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {succeeded} of {total} jobs succeeded after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let drain_seconds = started.elapsed().as_secs_f64();
    for worker in &mut workers {
        worker.terminate();
    }
    drop(workers);

    let mut latencies_ms = Vec::with_capacity(total);
    collect_latencies(&store, &enqueued_at_micros, &mut latencies_ms)?;
    latencies_ms.sort_by(f64::total_cmp);
    Ok(json!({
        "enqueue_rate": total as f64 / enqueue_seconds,
        "drain_rate": total as f64 / drain_seconds,
        "latency_p50_ms": percentile(&latencies_ms, 0.50),
        "latency_p99_ms": percentile(&latencies_ms, 0.99),
        "latency_max_ms": latencies_ms.last().copied().unwrap_or(0.0),
        "signals_sent": signals_sent,
    }))
}

fn collect_latencies(
    store: &Store,
    enqueued_at_micros: &[u64],
    latencies_ms: &mut Vec<f64>,
) -> anyhow::Result<()> {
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
            None => return Ok(()),
        }
    }
}

/// A private `dbus-daemon` that allows everything, killed when dropped.
struct BenchBus {
    process: Child,
    address: String,
}

impl BenchBus {
    fn start(directory: &Path) -> anyhow::Result<BenchBus> {
        let config = directory.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={}</listen>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_type="method_call"/>
    <allow send_type="signal"/><allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/><allow receive_type="method_call"/>
    <allow receive_type="method_return"/><allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"#,
                directory.join("bus.socket").display()
            ),
        )?;
        let mut process = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start dbus-daemon")?;
        let mut line = String::new();
        BufReader::new(process.stdout.take().context("dbus-daemon stdout")?)
            .read_line(&mut line)?;
        if line.trim().is_empty() {
            let _ = process.kill();
            bail!("dbus-daemon printed no address");
        }
        Ok(BenchBus {
            process,
            address: line.trim().to_owned(),
        })
    }
}

impl Drop for BenchBus {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A child killed (after a SIGTERM, if `terminate` was not called) when dropped.
struct ChildGuard(Child);

impl ChildGuard {
    /// SIGTERM and wait: the workers stop gracefully.
    fn terminate(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_file_line(path: &Path, needle: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} never said {needle:?}: {text}", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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
