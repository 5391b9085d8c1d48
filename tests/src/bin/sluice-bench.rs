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
//!
//! `w1-ceiling` and `w1-idle` (issue 13): W1's reference numbers, the enqueue rate alone and
//! the latency of one job at a time through idle workers; see `sluice-bench/w1_reference.rs`.
//!
//! `w3`: W3 folder-monitor latency — a real `sluice-monitor` (the release binary beside this
//! one) on a private `dbus-daemon` watches a fresh folder on tmpfs (the database on disk); this
//! process writes files of 64 bytes on a fixed schedule and measures close() → `FileDetected`
//! received over D-Bus (the signal is sent after the file's row and job are committed). The
//! burst variant writes 10,000 files back to back into a second fresh folder and reports the
//! create time, the time until the last file is committed, and missed files.
//!
//! `w2`: W2 status reads over HTTP — a real release `sluice-web` on a private bus serves
//! `GET /api/jobs/{id}` for 20,000 succeeded no-op jobs while `wrk` (tests/bench/ids.lua) asks
//! for random ids; reports requests/s, p50, p99, non-2xx responses and the web's CPU time per
//! request.
//!
//! `w4`: W4 memory — the whole suite (web, monitor, scraper, 2 ingest workers) as processes on
//! a private bus; the sum of their PSS when idle after every one said READY=1, and 1 s after
//! 20,000 no-op jobs enqueued here one call at a time were drained by the workers.
//!
//! `waiters` and `w5` (issue 9): see `sluice-bench/uploads.rs`.
//!
//! `w2-scale`, `reconcile` and `ingest-big` (issue 13): how the cost grows with the work; see
//! `sluice-bench/scale.rs`.
//!
//! `metrics` (issue 11): `GET /metrics` at a fixed rate; see `sluice-bench/metrics_load.rs`.
//!
//! `rescue`: issue 16's rescue time — a long no-op job held by a real `sluice-ingest-worker`
//! on a private bus, the worker killed with SIGKILL, and the time until the job is claimed
//! again (from the job's history), for each of `--kills` kills: `peer`, two workers, the other
//! one takes the job over when the bus says the killed one left; `restart`, one worker, a new
//! process of the same instance started at once takes its predecessor's job back (the unit's
//! `RestartSec=2s` comes on top of that on a real system). The lease is the shipped 30 s.
// A benchmark's output is its product.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use sluice_core::store::{
    Durability, JobFilter, JobState, NewJob, PageRequest, RetryPolicy, Store, StoreOptions,
};
use sluice_tests::bus::{BusPolicy, PrivateBus};
use sluice_tests::process::{DaemonProcess, SpawnOptions, binary_path};

#[path = "sluice-bench/metrics_load.rs"]
mod metrics_load;
#[path = "sluice-bench/scale.rs"]
mod scale;
#[path = "sluice-bench/uploads.rs"]
mod uploads;
#[path = "sluice-bench/w1_reference.rs"]
mod w1_reference;

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
        /// Enqueue everything first, then start the consumers (the "full backlog" variant the
        /// peers' latency figures were taken with).
        #[arg(long)]
        preload: bool,
    },
    /// W1's ceiling: the enqueue rate alone (no consumers), one job per transaction and 64.
    W1Ceiling {
        #[arg(long, default_value_t = 20_000)]
        jobs: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the databases go (a disk-backed directory, not tmpfs).
        #[arg(long, default_value = "/var/tmp")]
        directory: PathBuf,
    },
    /// W1's idle latency: one job at a time through 2 real workers, enqueue → committed.
    W1Idle {
        #[arg(long, default_value_t = 500)]
        jobs: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Milliseconds between one job's commit and the next enqueue (the workers go idle).
        #[arg(long, default_value_t = 20)]
        gap_ms: u64,
        /// Where the databases go (a disk-backed directory, not tmpfs).
        #[arg(long, default_value = "/var/tmp")]
        directory: PathBuf,
    },
    /// W3 folder-monitor latency and burst, through the real sluice-monitor.
    W3 {
        #[arg(long, default_value_t = 1000)]
        files: usize,
        /// Milliseconds between two files of the latency run.
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        #[arg(long, default_value_t = 10_000)]
        burst: usize,
        /// Files already in the watched tree (in folders of 1,000 under `existing/`, an hour
        /// old) when the monitor starts; each run waits for its reconcile to record them all
        /// (and raises `[ingest] max_pending` so that they and the new files are queued, not
        /// held) before the first new file is written.
        #[arg(long, default_value_t = 0)]
        existing: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the watched folders go (tmpfs, as BENCHMARKS.md asks).
        #[arg(long, default_value = "/dev/shm")]
        watch_directory: PathBuf,
        /// Where the databases go (a disk-backed directory).
        #[arg(long, default_value = "/var/tmp")]
        directory: PathBuf,
    },
    /// Issue 11: GET /metrics at a fixed rate against the whole suite; sluice-web's CPU.
    Metrics {
        /// Requests per second, spread evenly.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Seconds of each run (and of the idle measurement before it).
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Client threads, each with its own keep-alive connection.
        #[arg(long, default_value_t = 8)]
        clients: u32,
        /// Succeeded jobs in the database, which every refresh counts.
        #[arg(long, default_value_t = 20_000)]
        jobs: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the database goes (a disk-backed directory).
        #[arg(long, default_value = "/var/tmp")]
        directory: PathBuf,
    },
    /// W2 status reads over HTTP through the real sluice-web, loaded by wrk.
    W2 {
        #[arg(long, default_value_t = 20_000)]
        jobs: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds of each wrk run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        #[arg(long, default_value_t = 64)]
        connections: u32,
        #[arg(long, default_value_t = 2)]
        threads: u32,
        /// Where the database goes (a disk-backed directory).
        #[arg(long, default_value = "/var/tmp")]
        directory: PathBuf,
    },
    /// Issue 16: kill -9 → the killed worker's job claimed again, by a peer and by a restart.
    Rescue {
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Where the database goes (a disk-backed directory).
        #[arg(long, default_value = "/var/tmp")]
        directory: PathBuf,
    },
    /// Issue 9: N clients waiting on one job at once; the web's memory and the fan-out time.
    Waiters {
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the database goes (a disk-backed directory).
        #[arg(long, default_value = "/var/tmp")]
        directory: PathBuf,
    },
    /// W5 document processing through the upload path (8 uploads in flight, each waiting).
    W5 {
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the state goes (a disk-backed directory).
        #[arg(long, default_value = "/var/tmp")]
        directory: PathBuf,
    },
    /// Writes the W5 corpus (`w5-000.pdf` …) into a folder, for the peers
    /// (`tests/bench/w5_peers.py`) to be measured on the same files.
    W5Corpus {
        /// The folder to write into (created if missing).
        directory: PathBuf,
    },
    /// Issue 13: W2 and `GET /api/jobs?state=…` with N jobs in the database, its size, and
    /// `sluicectl jobs list`.
    W2Scale {
        #[arg(long, default_value_t = 1_000_000)]
        jobs: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds of each W2 wrk run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Seconds of each list run (per state).
        #[arg(long, default_value_t = 5)]
        list_seconds: u32,
        /// Where the database goes (a disk-backed directory).
        #[arg(long, default_value = "/var/tmp")]
        directory: PathBuf,
    },
    /// Issue 13: the monitor's reconcile of a tree of N files (first start and restart).
    Reconcile {
        #[arg(long, default_value_t = 100_000)]
        files: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the tree and the database go (a disk-backed directory).
        #[arg(long, default_value = "/var/tmp")]
        directory: PathBuf,
    },
    /// Issue 13: one ingest worker on one big (sparse) file; peak RSS and throughput beside
    /// b3sum and sha256sum.
    IngestBig {
        #[arg(long, default_value_t = 10)]
        gib: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the file, the library and the database go (one disk-backed file system).
        #[arg(long, default_value = "/var/tmp")]
        directory: PathBuf,
    },
    /// W4 memory of the whole suite, idle and after a W1 drain.
    W4 {
        #[arg(long, default_value_t = 20_000)]
        jobs: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Ingest worker processes.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// The durability the suite runs with (the shipped default is full).
        #[arg(long, default_value = "full")]
        durability: String,
        /// Where the state goes (a disk-backed directory).
        #[arg(long, default_value = "/var/tmp")]
        directory: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Arguments::parse().command {
        Workload::W2Scale {
            jobs,
            runs,
            seconds,
            list_seconds,
            directory,
        } => {
            let settings = scale::W2Scale {
                jobs,
                runs,
                load: w2::Load {
                    seconds,
                    connections: 64,
                    threads: 2,
                },
                list_seconds,
                directory,
            };
            let samples = scale::w2_scale(&settings)?;
            let name = format!("w2-scale-{jobs}");
            let report = vec![summarize(&name, Durability::Full, &samples)];
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Workload::Reconcile {
            files,
            runs,
            directory,
        } => {
            let samples = scale::reconcile(files, runs, &directory)?;
            let name = format!("reconcile-{files}");
            let report = vec![summarize(&name, Durability::Full, &samples)];
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Workload::IngestBig {
            gib,
            runs,
            directory,
        } => {
            let samples = scale::ingest_big(gib, runs, &directory)?;
            let name = format!("ingest-{gib}gib");
            let report = vec![summarize(&name, Durability::Full, &samples)];
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Workload::Waiters {
            clients,
            runs,
            directory,
        } => {
            let mut samples = Vec::new();
            for run in 1..=runs {
                let sample = uploads::waiters(clients, &directory)?;
                eprintln!("waiters run {run}: {sample}");
                samples.push(sample);
            }
            let report = vec![summarize("waiters", Durability::Normal, &samples)];
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Workload::W5 { runs, directory } => {
            let mut samples = Vec::new();
            for run in 1..=runs {
                let sample = uploads::w5(&directory)?;
                eprintln!("w5 run {run}: {sample}");
                samples.push(sample);
            }
            let report = vec![summarize("w5", Durability::Full, &samples)];
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Workload::W5Corpus { directory } => {
            uploads::write_w5_corpus(&directory)?;
            eprintln!("w5 corpus written to {}", directory.display());
            Ok(())
        }
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
            report_per_durability("w1", &durabilities, runs, |durability| {
                run_w1(&settings, durability, &directory)
            })
        }
        Workload::W1Lib {
            jobs,
            runs,
            directory,
            batch,
            consumers,
            preload,
        } => {
            let name = if preload { "w1-lib-backlog" } else { "w1-lib" };
            report_per_durability(name, &BOTH_DURABILITIES, runs, |durability| {
                run_w1_lib(jobs, durability, &directory, batch, consumers, preload)
            })
        }
        Workload::W1Ceiling {
            jobs,
            runs,
            directory,
        } => report_per_durability("w1-ceiling", &BOTH_DURABILITIES, runs, |durability| {
            w1_reference::ceiling(jobs, durability, &directory)
        }),
        Workload::W1Idle {
            jobs,
            runs,
            gap_ms,
            directory,
        } => {
            let settings = w1_reference::Idle {
                jobs,
                gap: Duration::from_millis(gap_ms),
                workers: 2,
                batch: 64,
            };
            report_per_durability("w1-idle", &BOTH_DURABILITIES, runs, |durability| {
                w1_reference::idle(&settings, durability, &directory)
            })
        }
        Workload::W3 {
            files,
            interval_ms,
            burst,
            existing,
            runs,
            watch_directory,
            directory,
        } => {
            let tree = w3::Tree {
                existing,
                watch_directory,
                directory,
            };
            let mut report = Vec::new();
            for durability in [Durability::Full, Durability::Normal] {
                let mut latency_samples = Vec::new();
                let mut burst_samples = Vec::new();
                for run in 1..=runs {
                    let sample = w3::latency_run(
                        files,
                        Duration::from_millis(interval_ms),
                        durability,
                        &tree,
                    )?;
                    eprintln!("w3 {} run {run}: {sample}", durability.as_str());
                    latency_samples.push(sample);
                    let sample = w3::burst_run(burst, durability, &tree)?;
                    eprintln!("w3-burst {} run {run}: {sample}", durability.as_str());
                    burst_samples.push(sample);
                }
                let (latency, burst) = if existing == 0 {
                    ("w3", "w3-burst")
                } else {
                    ("w3-existing", "w3-existing-burst")
                };
                report.push(summarize(latency, durability, &latency_samples));
                report.push(summarize(burst, durability, &burst_samples));
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Workload::W2 {
            jobs,
            runs,
            seconds,
            connections,
            threads,
            directory,
        } => {
            let load = w2::Load {
                seconds,
                connections,
                threads,
            };
            let samples = w2::run(jobs, runs, &load, &directory)?;
            let report = vec![summarize("w2", Durability::Full, &samples)];
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Workload::Metrics {
            rate,
            seconds,
            clients,
            jobs,
            runs,
            directory,
        } => {
            let load = metrics_load::Load {
                rate,
                seconds,
                clients,
                jobs,
            };
            let samples = metrics_load::run(&load, runs, &directory)?;
            let report = vec![summarize("metrics", Durability::Full, &samples)];
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Workload::Rescue { kills, directory } => {
            let mut report = Vec::new();
            for way in [rescue::Way::Peer, rescue::Way::Restart] {
                let samples = rescue::run(way, kills, &directory)?;
                report.push(summarize(way.name(), Durability::Full, &samples));
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Workload::W4 {
            jobs,
            runs,
            workers,
            durability,
            directory,
        } => {
            let durability = match durability.as_str() {
                "full" => Durability::Full,
                "normal" => Durability::Normal,
                other => bail!("--durability must be full or normal, not {other:?}"),
            };
            let mut samples = Vec::new();
            for run in 1..=runs {
                let sample = w4::run(jobs, workers, durability, &directory)?;
                eprintln!("w4 {} run {run}: {sample}", durability.as_str());
                samples.push(sample);
            }
            let report = vec![summarize("w4", durability, &samples)];
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
    let options = store_options(durability);
    let mut store = Store::open(&database, &options)?;
    let worker_program = binary_path("queue-child");
    let spawn_consumers = || -> anyhow::Result<Vec<DaemonProcess>> {
        (0..consumer_count)
            .map(|n| {
                let name = format!("bench-{n}");
                let mut command = Command::new(&worker_program);
                command
                    .arg("--db")
                    .arg(&database)
                    .args(["--durability", durability.as_str(), "worker"])
                    .args(["--name", &name, "--kinds", "noop"])
                    .args(["--batch", &batch.to_string(), "--idle-ms", "600000"]);
                DaemonProcess::spawn(&mut command, SpawnOptions::named(&name))
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
        consumer.kill_hard();
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

/// W1's suite: a private bus, `workers` real `sluice-ingest-worker` processes (READY) on a
/// fresh database in a scratch folder, the producer's store, and the producer's own bus
/// connection, used only to announce new jobs.
struct W1Suite {
    store: Store,
    workers: Vec<DaemonProcess>,
    runtime: tokio::runtime::Runtime,
    connection: zbus::Connection,
    _scratch: Scratch,
}

/// A benchmark suite's scratch folder beneath `directory`: a private bus, the database's
/// path, the inbox, library and staging folders and a configuration naming them all.
/// `store_keys` are more lines of `[store]`, `sections` more sections.
struct Scratch {
    folder: tempfile::TempDir,
    bus: PrivateBus,
    database: PathBuf,
    config_path: PathBuf,
}

impl Scratch {
    fn new(directory: &Path, store_keys: &str, sections: &str) -> anyhow::Result<Scratch> {
        let folder = tempfile::tempdir_in(directory).context("scratch directory")?;
        let root = folder.path();
        let bus = PrivateBus::start(BusPolicy::AllowEverything)?;
        let database = root.join("sluice.db");
        for name in ["inbox", "library", "staging"] {
            std::fs::create_dir_all(root.join(name))?;
        }
        let config_path = root.join("sluice.toml");
        std::fs::write(
            &config_path,
            format!(
                "[store]\npath = \"{database}\"\n{store_keys}\
                 [bus]\naddress = \"{address}\"\n\
                 {sections}\
                 [ingest]\nlibrary = \"{root}/library\"\n\
                 [[watch]]\npath = \"{root}/inbox\"\nmode = \"consume\"\n\
                 [scraper]\ninbox = \"{root}/inbox\"\nstaging = \"{root}/staging\"\n",
                database = database.display(),
                address = bus.address(),
                root = root.display(),
            ),
        )?;
        Ok(Scratch {
            folder,
            bus,
            database,
            config_path,
        })
    }

    fn root(&self) -> &Path {
        self.folder.path()
    }
}

impl W1Suite {
    fn start(
        batch: usize,
        worker_count: usize,
        durability: Durability,
        directory: &Path,
    ) -> anyhow::Result<W1Suite> {
        let scratch = Scratch::new(
            directory,
            &format!("durability = \"{}\"\n", durability.as_str()),
            &format!("[jobs]\nclaim_batch = {batch}\n"),
        )?;
        let (root, config_path) = (scratch.root(), &scratch.config_path);
        let store = Store::open(&scratch.database, &store_options(durability))?;
        let worker_program = binary_path("sluice-ingest-worker");
        let mut workers = Vec::new();
        for instance in 1..=worker_count {
            let mut command = Command::new(&worker_program);
            command
                .args(["--instance", &instance.to_string()])
                .env("SLUICE_CONFIG", config_path)
                .env("SLUICE_LOG", "info");
            let options = SpawnOptions::named(&format!("sluice-ingest-worker@{instance}"))
                .log_to(&root.join(format!("worker-{instance}.log")))
                .notify();
            let mut worker = DaemonProcess::spawn(&mut command, options)?;
            worker.wait_for_ready(Duration::from_secs(30))?;
            workers.push(worker);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let connection = runtime.block_on(sluice_core::bus::connect(
            &sluice_core::bus::BusAddress::Address(scratch.bus.address().to_owned()),
        ))?;
        Ok(W1Suite {
            store,
            workers,
            runtime,
            connection,
            _scratch: scratch,
        })
    }

    /// Announces a queued `noop` job, as `org.sluice.Web1` does after an enqueue.
    fn announce(&self, id: i64) -> anyhow::Result<()> {
        self.runtime.block_on(self.connection.emit_signal(
            None::<&str>,
            "/org/sluice/Web1",
            "org.sluice.Web1",
            "JobQueued",
            &("noop", id as u64),
        ))?;
        Ok(())
    }

    /// SIGTERM: the workers stop gracefully.
    fn stop_workers(&mut self) -> anyhow::Result<()> {
        for worker in &mut self.workers {
            worker
                .terminate(Duration::from_secs(60))
                .context("stopping a worker")?;
        }
        self.workers.clear();
        Ok(())
    }
}

fn run_w1(
    settings: &W1Settings,
    durability: Durability,
    directory: &Path,
) -> anyhow::Result<Value> {
    let load_before = scale::load_average();
    let mut suite = W1Suite::start(settings.batch, settings.workers, durability, directory)?;
    let mut last_signal: Option<Instant> = None;
    let mut signals_sent = 0u64;

    let total = settings.total;
    let mut enqueued_at_micros = vec![0u64; total];
    let started = Instant::now();
    for (i, slot) in enqueued_at_micros.iter_mut().enumerate() {
        *slot = now_micros();
        let id = suite
            .store
            .enqueue(&NewJob::new("noop", json!({ "i": i })))?
            .id;
        let due = !settings.signal_interval.is_zero()
            && last_signal.is_none_or(|last| last.elapsed() >= settings.signal_interval);
        if due {
            suite.announce(id)?;
            last_signal = Some(Instant::now());
            signals_sent += 1;
        }
    }
    let enqueue_seconds = started.elapsed().as_secs_f64();
    loop {
        let succeeded = suite.store.job_counts()?[&JobState::Succeeded];
        if succeeded as usize >= total {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {succeeded} of {total} jobs succeeded after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let drain_seconds = started.elapsed().as_secs_f64();
    suite.stop_workers()?;

    let mut latencies_ms = Vec::with_capacity(total);
    collect_latencies(&suite.store, &enqueued_at_micros, &mut latencies_ms)?;
    latencies_ms.sort_by(f64::total_cmp);
    Ok(json!({
        "enqueue_rate": total as f64 / enqueue_seconds,
        "drain_rate": total as f64 / drain_seconds,
        "latency_p50_ms": percentile(&latencies_ms, 0.50),
        "latency_p99_ms": percentile(&latencies_ms, 0.99),
        "latency_max_ms": latencies_ms.last().copied().unwrap_or(0.0),
        "signals_sent": signals_sent,
        "load_average": load_before,
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

/// Median with min and max of every metric over the runs.
/// The durabilities a W1 workload runs at, in the order of its report.
const BOTH_DURABILITIES: [Durability; 2] = [Durability::Normal, Durability::Full];

/// Runs a workload `runs` times at each durability, says each sample on stderr and prints
/// the summaries (median, min, max of every metric) as the workload's JSON report.
fn report_per_durability(
    name: &str,
    durabilities: &[Durability],
    runs: usize,
    mut run: impl FnMut(Durability) -> anyhow::Result<Value>,
) -> anyhow::Result<()> {
    let mut report = Vec::new();
    for &durability in durabilities {
        let mut samples = Vec::new();
        for number in 1..=runs {
            let sample = run(durability)?;
            eprintln!("{name} {} run {number}: {sample}", durability.as_str());
            samples.push(sample);
        }
        report.push(summarize(name, durability, &samples));
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn summarize(workload: &str, durability: Durability, samples: &[Value]) -> Value {
    let mut metrics = serde_json::Map::new();
    if let Some(first) = samples.first().and_then(Value::as_object) {
        for key in first.keys() {
            let mut values: Vec<f64> = samples
                .iter()
                .filter_map(|sample| sample[key].as_f64())
                .collect();
            if values.is_empty() {
                // Not a number (e.g. the name of the largest process): every run's value.
                let all: Vec<Value> = samples.iter().map(|sample| sample[key].clone()).collect();
                metrics.insert(key.clone(), Value::Array(all));
                continue;
            }
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

mod w3 {
    //! The W3 driver: a private bus, a real monitor, files written on a schedule.

    use std::collections::HashMap;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use anyhow::{Context, bail};
    use futures_util::StreamExt;
    use serde_json::{Value, json};
    use sluice_core::bus::{self, BusAddress};
    use sluice_core::store::Durability;
    use sluice_tests::bus::{BusPolicy, PrivateBus};
    use sluice_tests::process::{DaemonProcess, SpawnOptions, binary_path};

    use super::percentile;

    /// 64 bytes, the W3 file size.
    const CONTENT: &[u8; 64] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// close() → FileDetected for `total` files written `interval` apart.
    pub fn latency_run(
        total: usize,
        interval: Duration,
        durability: Durability,
        tree: &Tree,
    ) -> anyhow::Result<Value> {
        let suite = Suite::start(durability, tree)?;
        let closed_at: Vec<Instant> = {
            let folder = suite.folder.clone();
            let started = Instant::now();
            (0..total)
                .map(|index| {
                    let due = started + interval * index as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    write_file(&folder.join(format!("w3-{index:05}"))).map(|()| Instant::now())
                })
                .collect::<anyhow::Result<_>>()?
        };
        suite.wait_for_detections(total, Duration::from_secs(10));
        let detected = suite.detections();
        let mut latencies_ms: Vec<f64> = (0..total)
            .filter_map(|index| {
                let path = suite.folder.join(format!("w3-{index:05}"));
                detected.get(path.to_str()?).map(|received| {
                    received
                        .saturating_duration_since(closed_at[index])
                        .as_secs_f64()
                        * 1000.0
                })
            })
            .collect();
        latencies_ms.sort_by(f64::total_cmp);
        let missed = total - latencies_ms.len();
        Ok(json!({
            "p50_ms": percentile(&latencies_ms, 0.50),
            "p99_ms": percentile(&latencies_ms, 0.99),
            "max_ms": latencies_ms.last().copied().unwrap_or(0.0),
            "missed": missed as f64,
            "existing": tree.existing as f64,
            "existing_recorded_s": suite.existing_recorded_s,
        }))
    }

    /// `total` files back to back; the time to create them, until the last is committed, and
    /// the files never recorded.
    pub fn burst_run(total: usize, durability: Durability, tree: &Tree) -> anyhow::Result<Value> {
        let suite = Suite::start(durability, tree)?;
        let started = Instant::now();
        for index in 0..total {
            write_file(&suite.folder.join(format!("burst-{index:05}")))?;
        }
        let create_seconds = started.elapsed().as_secs_f64();
        // Signals are the fast path; the database is the truth for what was recorded.
        suite.wait_for_detections(total, Duration::from_secs(60));
        let last_signal = suite.detections().values().max().copied();
        let store =
            sluice_core::store::Store::open(&suite.database, &super::store_options(durability))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let recorded = loop {
            let recorded = count_files(&store)?.saturating_sub(tree.existing);
            if recorded >= total || Instant::now() >= deadline {
                break recorded;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let committed_seconds = match last_signal {
            Some(at) if suite.detections().len() >= total => {
                at.saturating_duration_since(started).as_secs_f64()
            }
            _ => started.elapsed().as_secs_f64(),
        };
        Ok(json!({
            "create_s": create_seconds,
            "last_committed_s": committed_seconds,
            "missed": (total - recorded.min(total)) as f64,
            "signals_missed": (total - suite.detections().len().min(total)) as f64,
            "existing": tree.existing as f64,
        }))
    }

    fn count_files(store: &sluice_core::store::Store) -> anyhow::Result<usize> {
        Ok(store.file_counts()?.values().sum::<u64>() as usize)
    }

    fn write_file(path: &Path) -> anyhow::Result<()> {
        let mut file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all(CONTENT)?;
        drop(file);
        Ok(())
    }

    /// Where a run's folders go, and how many files its watched tree holds before it starts.
    pub struct Tree {
        pub existing: usize,
        pub watch_directory: PathBuf,
        pub directory: PathBuf,
    }

    /// Writes `count` files of 64 bytes under `folder`, 1,000 to a subfolder, an hour old (so
    /// the monitor takes each as complete at once).
    fn write_existing(folder: &Path, count: usize) -> anyhow::Result<()> {
        let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        for index in 0..count {
            let subfolder = folder.join(format!("d{:04}", index / 1000));
            if index % 1000 == 0 {
                std::fs::create_dir_all(&subfolder)?;
            }
            let path = subfolder.join(format!("e{index:07}"));
            write_file(&path)?;
            std::fs::File::options()
                .write(true)
                .open(&path)?
                .set_modified(an_hour_ago)?;
        }
        Ok(())
    }

    /// Waits (up to a minute) until process `pid` has used no CPU time for `quiet`.
    fn wait_until_idle(pid: i32, quiet: Duration) -> anyhow::Result<()> {
        let cpu_ticks = || -> anyhow::Result<u64> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
            // utime and stime are the 12th and 13th fields after the ")" closing the name.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .context("a /proc stat line")?
                .1
                .split_whitespace()
                .collect();
            Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = cpu_ticks()?;
        let mut since = Instant::now();
        while since.elapsed() < quiet {
            if Instant::now() > deadline {
                bail!("the monitor was still busy after a minute");
            }
            std::thread::sleep(Duration::from_millis(50));
            let now = cpu_ticks()?;
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
        Ok(())
    }

    /// A private bus, a monitor watching a fresh folder, and the FileDetected signals
    /// received (path → time of receipt).
    struct Suite {
        folder: PathBuf,
        database: PathBuf,
        detections: Arc<Mutex<HashMap<String, Instant>>>,
        /// Spawn → every file of the tree recorded and announced (0 for an empty tree).
        existing_recorded_s: f64,
        // The monitor before the bus: fields drop in order, so the monitor is killed first.
        _monitor: DaemonProcess,
        _bus: PrivateBus,
        _watch_scratch: tempfile::TempDir,
        _scratch: tempfile::TempDir,
    }

    impl Suite {
        fn start(durability: Durability, tree: &Tree) -> anyhow::Result<Suite> {
            let scratch = tempfile::tempdir_in(&tree.directory).context("scratch directory")?;
            let watch_scratch =
                tempfile::tempdir_in(&tree.watch_directory).context("watch scratch directory")?;
            let folder = watch_scratch.path().join("inbox");
            std::fs::create_dir(&folder)?;
            write_existing(&folder.join("existing"), tree.existing)?;
            // Room in the queue for the tree and every file a run writes (the shipped 10,000
            // would hold most of a large tree, and the new files after it).
            let queue = if tree.existing == 0 {
                String::new()
            } else {
                format!("max_pending = {}\n", tree.existing + 100_000)
            };
            let bus = PrivateBus::start(BusPolicy::AllowEverything)?;
            let address = bus.address().to_owned();
            let database = scratch.path().join("sluice.db");
            let config = scratch.path().join("sluice.toml");
            std::fs::write(
                &config,
                format!(
                    "[store]\npath = \"{}\"\ndurability = \"{}\"\n[bus]\naddress = \"{address}\"\n\
                     [[watch]]\npath = \"{}\"\nmode = \"consume\"\n[ingest]\nlibrary = \"{}\"\n{queue}",
                    database.display(),
                    durability.as_str(),
                    folder.display(),
                    scratch.path().join("library").display(),
                ),
            )?;
            let detections = Arc::new(Mutex::new(HashMap::new()));
            let subscribed = subscribe(&address, Arc::clone(&detections))?;
            let mut command = Command::new(binary_path("sluice-monitor"));
            command
                .arg("--config")
                .arg(&config)
                .env("SLUICE_LOG", "warn");
            let monitor = DaemonProcess::spawn(
                &mut command,
                SpawnOptions::named("sluice-monitor").log_to(&scratch.path().join("monitor.log")),
            )?;
            let spawned = Instant::now();
            subscribed.wait_for_monitor()?;
            let mut suite = Suite {
                folder,
                database,
                detections,
                existing_recorded_s: 0.0,
                _monitor: monitor,
                _bus: bus,
                _watch_scratch: watch_scratch,
                _scratch: scratch,
            };
            if tree.existing > 0 {
                // Each file of the tree is announced once, when its job is queued: then the
                // reconcile is done, and the run starts with no announcement of it left.
                suite.wait_for_detections(tree.existing, Duration::from_secs(60));
                let announced = suite.detections().len();
                if announced < tree.existing {
                    bail!(
                        "the monitor announced {announced} of the {} files of the tree",
                        tree.existing
                    );
                }
                // After the last announcement the reconcile still sweeps the tree for vanished
                // files: the run starts once the monitor has used no CPU for half a second.
                wait_until_idle(suite._monitor.pid().as_raw(), Duration::from_millis(500))?;
                suite.existing_recorded_s = spawned.elapsed().as_secs_f64();
                suite.detections.lock().unwrap().clear();
            }
            Ok(suite)
        }

        fn detections(&self) -> HashMap<String, Instant> {
            self.detections.lock().unwrap().clone()
        }

        fn wait_for_detections(&self, total: usize, patience: Duration) {
            let mut last_count = 0;
            let mut last_progress = Instant::now();
            loop {
                let count = self.detections.lock().unwrap().len();
                if count >= total {
                    return;
                }
                if count != last_count {
                    last_count = count;
                    last_progress = Instant::now();
                } else if last_progress.elapsed() > patience {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Receives FileDetected on a thread of its own; `wait_for_monitor` returns once the
    /// monitor owns its name.
    struct Subscription {
        ready: std::sync::mpsc::Receiver<anyhow::Result<()>>,
    }

    impl Subscription {
        fn wait_for_monitor(&self) -> anyhow::Result<()> {
            self.ready
                .recv_timeout(Duration::from_secs(30))
                .context("the monitor did not start")?
        }
    }

    fn subscribe(
        address: &str,
        detections: Arc<Mutex<HashMap<String, Instant>>>,
    ) -> anyhow::Result<Subscription> {
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let address = address.to_owned();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async move {
                let setup = async {
                    let connection = bus::connect(&BusAddress::Address(address)).await?;
                    let rule = zbus::MatchRule::builder()
                        .msg_type(zbus::message::Type::Signal)
                        .interface("org.sluice.Monitor1")
                        .member("FileDetected")
                        .build()?;
                    let stream =
                        zbus::MessageStream::for_match_rule(rule, &connection, None).await?;
                    let dbus = zbus::fdo::DBusProxy::new(&connection).await?;
                    let started = Instant::now();
                    while !dbus
                        .name_has_owner("org.sluice.Monitor1".try_into()?)
                        .await?
                    {
                        if started.elapsed() > Duration::from_secs(30) {
                            bail!("the monitor never owned its bus name");
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok::<_, anyhow::Error>((connection, stream))
                };
                let (_connection, mut stream) = match setup.await {
                    Ok(parts) => parts,
                    Err(error) => {
                        let _ = ready_sender.send(Err(error));
                        return;
                    }
                };
                // The start reconcile of an empty folder is immediate, but give it a moment.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = ready_sender.send(Ok(()));
                while let Some(Ok(message)) = stream.next().await {
                    let received = Instant::now();
                    // The path is a byte string (`ay` with a trailing NUL); the files this
                    // benchmark writes have UTF-8 names.
                    if let Ok((path, _file_id, _job_id)) =
                        message.body().deserialize::<(Vec<u8>, u64, u64)>()
                    {
                        let path = bus::bytestring_to_path_lossy(&path)
                            .to_string_lossy()
                            .into_owned();
                        detections.lock().unwrap().insert(path, received);
                    }
                }
            });
        });
        Ok(Subscription { ready })
    }
}

mod suite {
    //! The suite as processes, for W2 and W4: a private bus, one configuration file, daemons
    //! each given a `NOTIFY_SOCKET` of this program's own (so "started" means READY=1), and
    //! their memory.

    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use sluice_core::store::Durability;
    use sluice_tests::bus::{BusPolicy, PrivateBus};
    use sluice_tests::process::{DaemonProcess, SpawnOptions, binary_path};

    /// The admin token file's content: for the uploads of W5 and the cancel of `waiters`.
    pub const BENCH_TOKEN: &str = "bench-token-0123456789abcdef";
    /// The read token W2's requests carry (tests/bench/ids.lua sends the same one).
    pub const BENCH_READ_TOKEN: &str = "bench-read-token-0123456789abcdef";

    pub struct Suite {
        pub database: PathBuf,
        pub scratch: tempfile::TempDir,
        pub web_port: u16,
        config: PathBuf,
        /// `SLUICE_LOG` of the daemons started from now on (`warn` unless a workload needs
        /// a line it logs at info).
        pub log_level: &'static str,
        // The daemons before the bus: fields drop in order, so the daemons are killed first.
        daemons: Vec<Daemon>,
        _bus: PrivateBus,
    }

    pub struct Daemon {
        pub name: String,
        process: DaemonProcess,
    }

    impl Daemon {
        pub fn pid(&self) -> u32 {
            self.process.pid().as_raw() as u32
        }

        /// Start → READY=1, once it came.
        pub fn ready_after(&self) -> Option<Duration> {
            self.process.ready_after()
        }
    }

    impl Suite {
        /// A bus and a configuration; no daemon yet.
        pub fn prepare(durability: Durability, directory: &Path) -> anyhow::Result<Suite> {
            let scratch = tempfile::tempdir_in(directory).context("scratch directory")?;
            let root = scratch.path();
            for folder in ["inbox", "staging", "library"] {
                std::fs::create_dir(root.join(folder))?;
            }
            std::fs::write(root.join("api-token"), format!("{BENCH_TOKEN}\n"))?;
            std::fs::write(root.join("read-token"), format!("{BENCH_READ_TOKEN}\n"))?;
            let bus = PrivateBus::start(BusPolicy::AllowEverything)?;
            // A free port now; nothing else on this machine races for it in a benchmark.
            let web_port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let database = root.join("sluice.db");
            let config = root.join("sluice.toml");
            std::fs::write(
                &config,
                format!(
                    "[store]\npath = \"{database}\"\ndurability = \"{durability}\"\n\n\
                     [bus]\naddress = \"{address}\"\n\n\
                     [web]\nlisten = \"127.0.0.1:{web_port}\"\ntoken_file = \"{root}/api-token\"\n\
                     read_token_file = \"{root}/read-token\"\n\n\
                     [[watch]]\npath = \"{root}/inbox\"\nmode = \"consume\"\n\n\
                     [ingest]\nlibrary = \"{root}/library\"\n\n\
                     [scraper]\ninbox = \"{root}/inbox\"\nstaging = \"{root}/staging\"\n",
                    database = database.display(),
                    durability = durability.as_str(),
                    address = bus.address(),
                    root = root.display(),
                ),
            )?;
            Ok(Suite {
                database,
                scratch,
                web_port,
                config,
                log_level: "warn",
                daemons: Vec::new(),
                _bus: bus,
            })
        }

        /// Starts the release program `program` (beside this one) as `name`.
        pub fn start(
            &mut self,
            name: &str,
            program: &str,
            arguments: &[&str],
        ) -> anyhow::Result<()> {
            let mut command = Command::new(binary_path(program));
            command
                .args(arguments)
                .env("SLUICE_CONFIG", &self.config)
                .env("SLUICE_LOG", self.log_level);
            let options = SpawnOptions::named(name)
                .log_to(&self.scratch.path().join(format!("{name}.log")))
                .notify();
            let process = DaemonProcess::spawn(&mut command, options)?;
            self.daemons.push(Daemon {
                name: name.to_owned(),
                process,
            });
            Ok(())
        }

        /// Waits until every daemon has sent READY=1.
        pub fn wait_ready(&mut self, patience: Duration) -> anyhow::Result<()> {
            let deadline = Instant::now() + patience;
            for daemon in &mut self.daemons {
                let left = deadline.saturating_duration_since(Instant::now());
                daemon.process.wait_for_ready(left)?;
            }
            Ok(())
        }

        /// The configuration file every daemon is started with (for `sluicectl`).
        pub fn config(&self) -> &Path {
            &self.config
        }

        /// Stops the daemon started as `name` (SIGTERM, then waits) and forgets it.
        pub fn stop(&mut self, name: &str) -> anyhow::Result<()> {
            let index = self
                .daemons
                .iter()
                .position(|daemon| daemon.name == name)
                .with_context(|| format!("no daemon {name} was started"))?;
            let mut daemon = self.daemons.remove(index);
            daemon.process.terminate(Duration::from_secs(60))?;
            Ok(())
        }

        pub fn daemons(&self) -> &[Daemon] {
            &self.daemons
        }

        pub fn log_of(&self, name: &str) -> String {
            self.daemons
                .iter()
                .find(|daemon| daemon.name == name)
                .map(|daemon| daemon.process.log())
                .unwrap_or_default()
        }

        /// PSS of each daemon with its descendants, by name.
        pub fn pss(&self) -> anyhow::Result<Vec<(String, Pss)>> {
            self.daemons
                .iter()
                .map(|daemon| {
                    let total = process_tree(daemon.pid())
                        .into_iter()
                        .map(pss_of)
                        .sum::<anyhow::Result<Pss>>()?;
                    Ok((daemon.name.clone(), total))
                })
                .collect()
        }
    }

    /// `pid` and every process below it.
    pub(crate) fn process_tree(pid: u32) -> Vec<u32> {
        let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let child: u32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                // The command name may hold spaces and parentheses; fields restart after the last ')'.
                let after_name = &stat[stat.rfind(')')? + 1..];
                let parent: u32 = after_name.split_whitespace().nth(1)?.parse().ok()?;
                Some((child, parent))
            })
            .collect();
        let mut tree = vec![pid];
        let mut index = 0;
        while index < tree.len() {
            let parent = tree[index];
            tree.extend(
                parents
                    .iter()
                    .filter(|(_, of)| *of == parent)
                    .map(|(child, _)| *child),
            );
            index += 1;
        }
        tree
    }

    /// PSS of one process in KiB: total, anonymous (heap, stacks) and file-backed (mostly the
    /// program's own code and data, shared only between instances of the same program).
    fn pss_of(pid: u32) -> anyhow::Result<Pss> {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
        let field = |name: &str| {
            rollup.lines().find_map(|line| {
                line.strip_prefix(name)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        };
        Ok(Pss {
            total: field("Pss:")
                .with_context(|| format!("no Pss line in /proc/{pid}/smaps_rollup"))?,
            anonymous: field("Pss_Anon:").unwrap_or(0),
            file: field("Pss_File:").unwrap_or(0),
        })
    }

    /// KiB.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Pss {
        pub total: u64,
        pub anonymous: u64,
        pub file: u64,
    }

    impl std::iter::Sum for Pss {
        fn sum<I: Iterator<Item = Pss>>(parts: I) -> Pss {
            parts.fold(Pss::default(), |sum, part| Pss {
                total: sum.total + part.total,
                anonymous: sum.anonymous + part.anonymous,
                file: sum.file + part.file,
            })
        }
    }

    /// CPU time (user + system) `pid` has used so far, all threads.
    pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let after_name = &stat[stat.rfind(')').context("malformed stat")? + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // Fields 14 and 15 of stat(5); the slice starts at field 3.
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // /proc reports clock ticks of USER_HZ, which the Linux ABI fixes at 100 per second.
        const TICKS_PER_SECOND: u64 = 100;
        Ok(Duration::from_micros(ticks * 1_000_000 / TICKS_PER_SECOND))
    }
}

mod w2 {
    //! The W2 driver: 20,000 succeeded no-op jobs, a release sluice-web, wrk.

    use std::io::{Read, Write};
    use std::path::Path;
    use std::process::Command;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use anyhow::{Context, bail};
    use serde_json::{Value, json};
    use sluice_core::store::{Completion, Durability, NewJob, Outcome, Store};

    use super::store_options;
    use super::suite::{BENCH_READ_TOKEN, Suite, cpu_time};

    /// wrk's script: GET /api/jobs/<random id from the file after `--`>.
    pub(super) const IDS_SCRIPT: &str = include_str!("../../bench/ids.lua");

    pub struct Load {
        pub seconds: u32,
        pub connections: u32,
        pub threads: u32,
    }

    pub fn run(
        jobs: usize,
        runs: usize,
        load: &Load,
        directory: &Path,
    ) -> anyhow::Result<Vec<Value>> {
        let mut suite = Suite::prepare(Durability::Full, directory)?;
        let ids = populate(&suite.database, jobs)?;
        let ids_path = suite.scratch.path().join("ids.txt");
        let mut list = String::with_capacity(ids.len() * 6);
        for id in &ids {
            list.push_str(&format!("{id}\n"));
        }
        std::fs::write(&ids_path, list)?;
        let script = suite.scratch.path().join("ids.lua");
        std::fs::write(&script, IDS_SCRIPT)?;
        suite.start("sluice-web", "sluice-web", &[])?;
        suite.wait_ready(Duration::from_secs(30))?;
        let origin = format!("http://127.0.0.1:{}", suite.web_port);
        check_one_response(suite.web_port, ids[ids.len() / 2])?;
        let web_pid = suite.daemons()[0].pid();

        // Warm-up (connections, caches, the blocking pool); not counted.
        wrk(
            &origin,
            &script,
            &ids_path,
            &Load {
                seconds: 2,
                ..*load
            },
        )?;
        let mut samples = Vec::new();
        for run in 1..=runs {
            let cpu_before = cpu_time(web_pid)?;
            let mut sample = wrk(&origin, &script, &ids_path, load)?;
            let cpu_used = cpu_time(web_pid)?.saturating_sub(cpu_before);
            let requests = sample["requests"].as_f64().unwrap_or(0.0).max(1.0);
            sample["web_cpu_us_per_request"] = json!(cpu_used.as_secs_f64() * 1e6 / requests);
            eprintln!("w2 run {run}: {sample}");
            samples.push(sample);
        }
        Ok(samples)
    }

    /// Enqueues `total` no-op jobs and completes them the way a worker does, so each answer
    /// carries a realistic succeeded job (payload, result, times).
    pub(super) fn populate(database: &Path, total: usize) -> anyhow::Result<Vec<i64>> {
        let mut store = Store::open(database, &store_options(Durability::Normal))?;
        let mut ids = Vec::with_capacity(total);
        let indexes: Vec<usize> = (0..total).collect();
        for chunk in indexes.chunks(1000) {
            let jobs: Vec<NewJob> = chunk
                .iter()
                .map(|i| NewJob::new("noop", json!({ "i": i })))
                .collect();
            ids.extend(
                store
                    .enqueue_many(&jobs)?
                    .into_iter()
                    .map(|enqueued| enqueued.id),
            );
        }
        loop {
            let claimed = store.claim_jobs(
                &"bench-populate".into(),
                &["noop"],
                1000,
                Duration::from_secs(600),
            )?;
            if claimed.is_empty() {
                break;
            }
            let completions: Vec<Completion> = claimed
                .into_iter()
                .map(|job| Completion {
                    id: job.id,
                    outcome: Outcome::Succeeded {
                        result: json!({ "i": job.payload["i"], "t": now_micros() }),
                    },
                    lease_token: job.lease_token,
                })
                .collect();
            for outcome in store.complete_jobs(&completions)? {
                outcome?;
            }
        }
        Ok(ids)
    }

    fn now_micros() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_micros() as u64)
            .unwrap_or(0)
    }

    /// One request by hand, so a benchmark of 404s or errors is caught before it is run.
    pub(super) fn check_one_response(port: u16, id: i64) -> anyhow::Result<()> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET /api/jobs/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Authorization: Bearer {BENCH_READ_TOKEN}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if !response.starts_with("HTTP/1.1 200") || !response.contains("\"succeeded\"") {
            bail!("GET /api/jobs/{id} did not answer a succeeded job: {response}");
        }
        Ok(())
    }

    pub(super) fn wrk(
        origin: &str,
        script: &Path,
        ids: &Path,
        load: &Load,
    ) -> anyhow::Result<Value> {
        let output = Command::new("wrk")
            .arg(format!("-t{}", load.threads))
            .arg(format!("-c{}", load.connections))
            .arg(format!("-d{}s", load.seconds))
            .arg("--latency")
            .arg("-s")
            .arg(script)
            .arg(origin)
            .arg("--")
            .arg(ids)
            .output()
            .context("running wrk (apt-get install wrk)")?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "wrk failed ({}): {text}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
    }

    /// requests/s, p50, p99, non-2xx (wrk counts "non-2xx or 3xx") and socket errors.
    pub fn parse_wrk(text: &str) -> anyhow::Result<Value> {
        let mut requests_per_second = None;
        let mut requests = None;
        let mut p50 = None;
        let mut p99 = None;
        let mut non_2xx = 0.0;
        let mut socket_errors = 0.0;
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("Requests/sec:") {
                requests_per_second = Some(rest.trim().parse::<f64>()?);
            } else if let Some(rest) = line.strip_prefix("50%") {
                p50 = Some(milliseconds(rest.trim())?);
            } else if let Some(rest) = line.strip_prefix("99%") {
                p99 = Some(milliseconds(rest.trim())?);
            } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
                non_2xx = rest.trim().parse()?;
            } else if let Some(rest) = line.strip_prefix("Socket errors:") {
                socket_errors = rest
                    .split(',')
                    .filter_map(|part| part.split_whitespace().last()?.parse::<f64>().ok())
                    .sum();
            } else if line.contains(" requests in ") {
                requests = line
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<f64>().ok());
            }
        }
        Ok(json!({
            "requests_per_second": requests_per_second.context("no Requests/sec")?,
            "p50_ms": p50.context("no 50% latency")?,
            "p99_ms": p99.context("no 99% latency")?,
            "non_2xx": non_2xx,
            "socket_errors": socket_errors,
            "requests": requests.context("no request count")?,
        }))
    }

    /// wrk's durations: `635.91us`, `1.23ms`, `1.00s`, `2.00m`.
    fn milliseconds(text: &str) -> anyhow::Result<f64> {
        for (suffix, factor) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)] {
            if let Some(number) = text.strip_suffix(suffix) {
                return Ok(number.parse::<f64>()? * factor);
            }
        }
        bail!("not a wrk duration: {text:?}")
    }
}

mod w4 {
    //! The W4 driver: the whole suite idle, then after a W1 drain through the ingest workers.

    use std::path::Path;
    use std::time::{Duration, Instant};

    use anyhow::bail;
    use serde_json::{Value, json};
    use sluice_core::store::{Durability, JobState, NewJob, Store};

    use super::store_options;
    use super::suite::{Pss, Suite};

    pub fn run(
        jobs: usize,
        workers: usize,
        durability: Durability,
        directory: &Path,
    ) -> anyhow::Result<Value> {
        let mut suite = Suite::prepare(durability, directory)?;
        let started = Instant::now();
        suite.start("sluice-web", "sluice-web", &[])?;
        suite.start("sluice-monitor", "sluice-monitor", &[])?;
        suite.start("sluice-scraper", "sluice-scraper", &[])?;
        let instances: Vec<String> = (1..=workers).map(|n| n.to_string()).collect();
        for instance in &instances {
            suite.start(
                &format!("sluice-ingest-worker@{instance}"),
                "sluice-ingest-worker",
                &["--instance", instance],
            )?;
        }
        suite.wait_ready(Duration::from_secs(60))?;
        let all_ready_ms = started.elapsed().as_secs_f64() * 1000.0;
        // Idle: let start-up work (reconcile, first polls, status lines) settle.
        std::thread::sleep(Duration::from_secs(3));
        let idle = suite.pss()?;

        let mut sample = json!({ "all_ready_ms": all_ready_ms });
        record(&mut sample, "idle", &idle);
        if workers > 0 && jobs > 0 {
            let drain_seconds = drain(&suite, jobs, durability)?;
            sample["w1_drain_rate"] = json!(jobs as f64 / drain_seconds);
            std::thread::sleep(Duration::from_secs(1));
            let after = suite.pss()?;
            record(&mut sample, "after_w1", &after);
        }
        for daemon in suite.daemons() {
            if let Some(ready) = daemon.ready_after() {
                sample[format!("ready_ms.{}", daemon.name)] = json!(ready.as_secs_f64() * 1000.0);
            }
        }
        Ok(sample)
    }

    /// Total and largest process, in MiB, plus every process's own figure.
    fn record(sample: &mut Value, label: &str, pss: &[(String, Pss)]) {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let total: Pss = pss.iter().map(|(_, pss)| *pss).sum();
        let (largest_name, largest) = pss
            .iter()
            .max_by_key(|(_, pss)| pss.total)
            .cloned()
            .unwrap_or_default();
        sample[format!("{label}_pss_total_mib")] = json!(mib(total.total));
        sample[format!("{label}_pss_anonymous_mib")] = json!(mib(total.anonymous));
        sample[format!("{label}_pss_file_mib")] = json!(mib(total.file));
        sample[format!("{label}_pss_largest_mib")] = json!(mib(largest.total));
        sample[format!("{label}_largest_process")] = json!(largest_name);
        for (name, pss) in pss {
            sample[format!("{label}_pss_mib.{name}")] = json!(mib(pss.total));
        }
    }

    /// W1 through the real workers: one enqueue call per job, then wait for all succeeded.
    fn drain(suite: &Suite, total: usize, durability: Durability) -> anyhow::Result<f64> {
        let mut store = Store::open(&suite.database, &store_options(durability))?;
        let started = Instant::now();
        for i in 0..total {
            store.enqueue(&NewJob::new("noop", json!({ "i": i })))?;
        }
        loop {
            let counts = store.job_counts()?;
            let succeeded = counts.get(&JobState::Succeeded).copied().unwrap_or(0) as usize;
            if succeeded >= total {
                return Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!(
                    "only {succeeded} of {total} jobs succeeded after 10 minutes; worker log: {}",
                    suite.log_of("sluice-ingest-worker@1")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

mod rescue {
    //! The rescue driver: kill -9 the worker that holds a job, time until it is claimed again.

    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use anyhow::{Context, bail};
    use serde_json::{Value, json};
    use sluice_core::bus::{BusAddress, connect, ingest_proxy};
    use sluice_core::store::{Durability, JobState, NewJob, Store};
    use sluice_tests::process::{DaemonProcess, SpawnOptions, binary_path};

    use super::{Scratch, now_micros, store_options};

    /// Who takes the killed worker's job.
    #[derive(Debug, Clone, Copy)]
    pub enum Way {
        /// The other of two workers, told by the bus.
        Peer,
        /// The next process of the same instance, at its start.
        Restart,
    }

    impl Way {
        pub fn name(self) -> &'static str {
            match self {
                Way::Peer => "rescue-peer",
                Way::Restart => "rescue-restart",
            }
        }
    }

    /// One sample per kill: `{"rescue_ms": …}`, kill → claimed again.
    pub fn run(way: Way, kills: usize, directory: &Path) -> anyhow::Result<Vec<Value>> {
        // The shipped lease (30 s) and durability (full).
        let scratch = Scratch::new(directory, "", "")?;
        let (root, config_path) = (scratch.root().to_path_buf(), scratch.config_path.clone());
        let bus = &scratch.bus;
        let mut store = Store::open(&scratch.database, &store_options(Durability::Full))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let connection =
            runtime.block_on(connect(&BusAddress::Address(bus.address().to_owned())))?;
        let instances: &[&str] = match way {
            Way::Peer => &["1", "2"],
            Way::Restart => &["1"],
        };
        let mut workers = Vec::new();
        for instance in instances {
            workers.push(start_worker(&config_path, &root, instance)?);
        }
        let mut samples = Vec::new();
        for kill in 1..=kills {
            let id = store
                .enqueue(&NewJob::new(
                    "noop",
                    json!({ "i": kill, "sleep_ms": 600_000 }),
                ))?
                .id;
            let holder = wait_for(&store, id, 1, JobState::Running)?
                .worker
                .context("a running job names its worker")?;
            let index = instances
                .iter()
                .position(|instance| holder == format!("sluice-ingest-worker@{instance}"))
                .with_context(|| format!("job {id} is held by {holder}"))?;
            let killed_at_ms = (now_micros() / 1000) as i64;
            workers[index].kill_hard();
            if let Way::Restart = way {
                workers[index] = start_worker(&config_path, &root, instances[index])?;
            }
            let claimed_again = wait_for(&store, id, 2, JobState::Running)?;
            let rescue_ms = claimed_again.at_ms - killed_at_ms;
            eprintln!(
                "{} kill {kill}: claimed again after {rescue_ms} ms",
                way.name()
            );
            samples.push(json!({ "rescue_ms": rescue_ms }));
            // Stop the job where it runs now, so the next kill finds every worker idle.
            let runner = claimed_again
                .worker
                .context("a running job names its worker")?;
            let instance = runner
                .trim_start_matches("sluice-ingest-worker@")
                .to_owned();
            runtime.block_on(async {
                ingest_proxy(&connection, &instance)
                    .await?
                    .cancel_job(id as u64)
                    .await
            })?;
            wait_for(&store, id, 2, JobState::Cancelled)?;
            if let Way::Peer = way {
                workers[index] = start_worker(&config_path, &root, instances[index])?;
            }
        }
        Ok(samples)
    }

    fn start_worker(config: &Path, root: &Path, instance: &str) -> anyhow::Result<DaemonProcess> {
        let mut command = Command::new(binary_path("sluice-ingest-worker"));
        command
            .args(["--instance", instance])
            .env("SLUICE_CONFIG", config)
            .env("SLUICE_LOG", "info");
        let log: PathBuf = root.join(format!("worker-{instance}.log"));
        let options = SpawnOptions::named(&format!("sluice-ingest-worker@{instance}"))
            .log_to(&log)
            .notify();
        let mut worker = DaemonProcess::spawn(&mut command, options)?;
        worker.wait_for_ready(Duration::from_secs(30))?;
        Ok(worker)
    }

    /// Waits for job `id`'s transition to `state` at `attempt`; returns it.
    fn wait_for(
        store: &Store,
        id: i64,
        attempt: u32,
        state: JobState,
    ) -> anyhow::Result<sluice_core::store::JobTransition> {
        let started = Instant::now();
        loop {
            let found = store
                .job_history(id)?
                .into_iter()
                .find(|step| step.to_state == state && step.attempt == attempt);
            if let Some(step) = found {
                return Ok(step);
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("job {id} never reached {state} at attempt {attempt}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn store_options(durability: Durability) -> StoreOptions {
    StoreOptions {
        durability,
        // The shipped default, as a daemon would get it from the configuration.
        max_attempts: sluice_core::config::defaults().jobs.max_attempts,
        busy_timeout: Duration::from_secs(30),
        retry: RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        },
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}
