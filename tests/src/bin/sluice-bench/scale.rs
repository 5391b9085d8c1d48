//! Issue 13's scale curves: how the cost grows with the work.
//!
//! `w2-scale --jobs N`: W2 (wrk on `GET /api/jobs/{id}`, as `w2`) and `GET /api/jobs?state=…`
//! pages against a real release sluice-web with N jobs already in the database, the
//! database's size per million jobs, and the time of `sluicectl jobs list --state …` (a whole
//! process: start, open the store, one page, print). The jobs are made through the store's
//! own calls, the way the queue makes them (`enqueue_many`, `claim_jobs`, `complete_jobs`, a
//! batch per transaction at `normal` durability): 99 of 100 succeeded, 1 of 100 failed
//! (permanently), none queued; the web then opens the file as shipped (`full`). Before the
//! web starts, the counts the status page and `/metrics` ask the store for and one page of
//! `?kind=` of a kind no job has are timed in-process, beside the GROUP BY and the walk that
//! the store ran for them before migration 11, on the same database.
//!
//! `reconcile --files N`: a real release sluice-monitor reconciling a tree of N files of 64
//! bytes (1,000 to a folder, mtimes an hour old so every file is complete) on its start:
//! `cold`, the first start (every file recorded and its ingest job queued, or held past
//! `[ingest] max_pending`), and `warm`, a restart over the same tree, everything recorded
//! already. Time from spawn to the monitor's "reconcile of … complete" line (the recorder's
//! last step, after every file the walk found), and the monitor's peak RSS (VmHWM).
//!
//! `ingest-big --gib N`: one real release sluice-ingest-worker ingesting one N GiB file (a
//! sparse file with 1 MiB of pseudo-random bytes at the start, so its reads cost no disk and
//! the numbers are the worker's own): the worker's peak RSS (VmHWM, and the largest of any
//! child it started), its throughput (size / claim → succeeded), and `b3sum` (its default
//! threads, and one thread), `sha256sum` and the two one after the other reading the same file.
//!
//! Each run records the 1-minute load average beside its numbers: the machine is shared.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sluice_core::ingest::WatchMode;
use sluice_core::store::{Completion, DetectedFile, Durability, JobState, NewJob, Outcome, Store};
use sluice_tests::process::binary_path;

use super::store_options;
use super::suite::{BENCH_READ_TOKEN, Suite};
use super::w2;

/// The 1-minute load average now (/proc/loadavg).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A field of /proc/PID/status in KiB (`VmHWM`, `VmRSS`), as MiB.
fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path)
        .map(|metadata| metadata.len())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// w2-scale

pub struct W2Scale {
    pub jobs: usize,
    pub runs: usize,
    pub load: w2::Load,
    /// Seconds of each list run (per state).
    pub list_seconds: u32,
    pub directory: PathBuf,
}

/// Makes `total` jobs through the store's calls, `batch` per transaction: enqueued, claimed,
/// and completed (every 100th failed for good, the others succeeded). Returns the ids of the
/// succeeded ones, for W2's requests.
pub fn seed(database: &Path, total: usize, batch: usize) -> anyhow::Result<Vec<i64>> {
    let mut store = Store::open(database, &store_options(Durability::Normal))?;
    let mut succeeded = Vec::with_capacity(total);
    let mut made = 0;
    while made < total {
        let count = batch.min(total - made);
        let jobs: Vec<NewJob> = (made..made + count)
            .map(|i| NewJob::new("noop", json!({ "i": i })))
            .collect();
        store.enqueue_many(&jobs)?;
        let claimed = store.claim_jobs(
            &"bench-seed".into(),
            &["noop"],
            count,
            Duration::from_secs(600),
        )?;
        let completions: Vec<Completion> = claimed
            .into_iter()
            .map(|job| {
                let i = job.payload["i"].as_u64().unwrap_or(0);
                let outcome = if i % 100 == 99 {
                    Outcome::Failed {
                        error: format!("bench seed: job {i} fails for good"),
                        retryable: false,
                    }
                } else {
                    succeeded.push(job.id);
                    Outcome::Succeeded {
                        result: json!({ "i": i, "t": now_micros() }),
                    }
                };
                Completion {
                    id: job.id,
                    outcome,
                    lease_token: job.lease_token,
                }
            })
            .collect();
        for outcome in store.complete_jobs(&completions)? {
            outcome?;
        }
        made += count;
        if made % 1_000_000 == 0 {
            eprintln!("seeded {made} of {total} jobs");
        }
    }
    // Closing the last connection folds the WAL into the file, as a daemon would find it.
    drop(store);
    Ok(succeeded)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}

pub fn w2_scale(settings: &W2Scale) -> anyhow::Result<Vec<Value>> {
    let mut suite = Suite::prepare(Durability::Full, &settings.directory)?;
    let started = Instant::now();
    let ids = seed(&suite.database, settings.jobs, 10_000)?;
    let seed_seconds = started.elapsed().as_secs_f64();
    let database_bytes = file_bytes(&suite.database)
        + file_bytes(&suite.database.with_extension("db-wal"))
        + file_bytes(&suite.database.with_extension("db-shm"));
    eprintln!(
        "w2-scale: {} jobs seeded in {seed_seconds:.1} s, database {:.1} MiB",
        settings.jobs,
        database_bytes as f64 / 1_048_576.0
    );
    let counts = count_latencies(&suite.database)?;
    eprintln!(
        "w2-scale: counts and ?kind= at {} jobs: {counts}",
        settings.jobs
    );
    let ids_path = suite.scratch.path().join("ids.txt");
    let mut list = String::with_capacity(ids.len() * 9);
    for id in &ids {
        list.push_str(&format!("{id}\n"));
    }
    std::fs::write(&ids_path, list)?;
    drop(ids);
    let script = suite.scratch.path().join("ids.lua");
    std::fs::write(&script, w2::IDS_SCRIPT)?;
    suite.start("sluice-web", "sluice-web", &[])?;
    suite.wait_ready(Duration::from_secs(120))?;
    let origin = format!("http://127.0.0.1:{}", suite.web_port);
    let web_pid = suite.daemons()[0].pid();
    let probe = std::fs::read_to_string(&ids_path)?
        .lines()
        .next()
        .context("no succeeded job")?
        .parse()?;
    w2::check_one_response(suite.web_port, probe)?;
    // Warm-up (connections, caches, the blocking pool); not counted.
    w2::wrk(
        &origin,
        &script,
        &ids_path,
        &w2::Load {
            seconds: 2,
            ..settings.load
        },
    )?;
    let mut samples = Vec::new();
    for run in 1..=settings.runs {
        let load_1m = load_average();
        let mut sample = w2::wrk(&origin, &script, &ids_path, &settings.load)?;
        sample["load_1m"] = json!(load_1m);
        sample["jobs"] = json!(settings.jobs);
        sample["seed_s"] = json!(seed_seconds);
        sample["database_mib"] = json!(database_bytes as f64 / 1_048_576.0);
        sample["database_mib_per_million_jobs"] =
            json!(database_bytes as f64 / 1_048_576.0 / (settings.jobs as f64 / 1e6));
        // One page (the default 50) of each state: 99% of the jobs, 1%, and none at all.
        for state in ["succeeded", "failed", "queued"] {
            let listed = wrk_url(
                &format!("{origin}/api/jobs?state={state}"),
                settings.list_seconds,
            )?;
            for key in ["requests_per_second", "p50_ms", "p99_ms", "non_2xx"] {
                sample[format!("list_{state}_{key}")] = listed[key].clone();
            }
        }
        for state in ["succeeded", "queued"] {
            sample[format!("sluicectl_list_{state}_ms")] =
                json!(sluicectl_list(suite.config(), state)?);
        }
        sample["web_vmhwm_mib"] = json!(status_mib(web_pid, "VmHWM:"));
        if let Value::Object(counts) = &counts {
            for (key, value) in counts {
                sample[key.as_str()] = value.clone();
            }
        }
        eprintln!("w2-scale {} run {run}: {sample}", settings.jobs);
        samples.push(sample);
    }
    Ok(samples)
}

/// Milliseconds (median of 5, after one not counted) of `Store::job_counts` (the status page,
/// `sluicectl status`), `Store::job_counts_by_kind` (`/metrics`) and one page of 50 of
/// `Store::list_jobs` with a kind no job has; and, for comparison on the same database, the
/// queries the store ran for each before migration 11: `count(*) … GROUP BY state` (then a
/// pass over `jobs_by_state`), `GROUP BY kind, state` (a pass over the table) and the walk of
/// the table newest first for a page of the kind.
fn count_latencies(database: &Path) -> anyhow::Result<Value> {
    fn median_ms(mut run: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
        run()?;
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            run()?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }
    let store = Store::open(database, &store_options(Durability::Full))?;
    let connection = rusqlite::Connection::open_with_flags(
        database,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let connection = &connection;
    let old_query = |sql: &'static str| {
        move || -> anyhow::Result<()> {
            let mut statement = connection.prepare_cached(sql)?;
            let rows = statement.query_map([], |_| Ok(()))?;
            for row in rows {
                row?;
            }
            Ok(())
        }
    };
    let kind_page = || -> anyhow::Result<()> {
        store.list_jobs(
            &sluice_core::store::JobFilter {
                states: Vec::new(),
                kind: Some("absent".into()),
            },
            sluice_core::store::PageRequest {
                before_id: None,
                limit: 50,
            },
        )?;
        Ok(())
    };
    Ok(json!({
        "job_counts_ms": median_ms(|| store.job_counts().map(|_| ()).map_err(Into::into))?,
        "job_counts_by_kind_ms": median_ms(|| store.job_counts_by_kind().map(|_| ()).map_err(Into::into))?,
        "list_absent_kind_ms": median_ms(kind_page)?,
        "before_group_by_state_ms":
            median_ms(old_query("SELECT state, count(*) FROM jobs GROUP BY state"))?,
        "before_group_by_kind_and_state_ms":
            median_ms(old_query("SELECT kind, state, count(*) FROM jobs GROUP BY kind, state"))?,
        "before_list_absent_kind_ms": median_ms(old_query(
            "SELECT id FROM jobs WHERE kind = 'absent' ORDER BY id DESC LIMIT 51"
        ))?,
    }))
}

/// wrk on one URL with the read token: 2 threads, 8 connections.
fn wrk_url(url: &str, seconds: u32) -> anyhow::Result<Value> {
    let output = Command::new("wrk")
        .args(["-t2", "-c8", &format!("-d{seconds}s"), "--latency"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {BENCH_READ_TOKEN}"))
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed ({}): {text}", output.status);
    }
    w2::parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

/// Milliseconds of one `sluicectl jobs list --state STATE` (the release binary), the whole
/// process; it must answer with a table.
fn sluicectl_list(config: &Path, state: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let output = Command::new(binary_path("sluicectl"))
        .args(["--config"])
        .arg(config)
        .args(["jobs", "list", "--state", state])
        .stdin(Stdio::null())
        .output()
        .context("running sluicectl")?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    if !output.status.success() {
        bail!(
            "sluicectl jobs list --state {state} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(elapsed)
}

// ---------------------------------------------------------------------------------------------
// reconcile

/// Files a folder of the tree holds.
const FILES_PER_FOLDER: usize = 1000;

/// Writes the tree (N files of 64 bytes, 1,000 to a folder, an hour old) once.
fn write_tree(tree: &Path, files: usize) -> anyhow::Result<()> {
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for i in 0..files {
        let folder = tree.join(format!("d{:05}", i / FILES_PER_FOLDER));
        if i % FILES_PER_FOLDER == 0 {
            std::fs::create_dir_all(&folder)?;
        }
        let mut file = std::fs::File::create(folder.join(format!("f{i:07}.txt")))?;
        writeln!(file, "{i:063}")?;
        file.set_modified(an_hour_ago)?;
    }
    Ok(())
}

pub fn reconcile(files: usize, runs: usize, directory: &Path) -> anyhow::Result<Vec<Value>> {
    let tree_home = tempfile::tempdir_in(directory).context("tree directory")?;
    let tree = tree_home.path().join("tree");
    let started = Instant::now();
    write_tree(&tree, files)?;
    eprintln!(
        "reconcile: {files} files written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut samples = Vec::new();
    for run in 1..=runs {
        let mut suite = Suite::prepare(Durability::Full, directory)?;
        suite.log_level = "info";
        let inbox = suite.scratch.path().join("inbox");
        std::fs::remove_dir(&inbox)?;
        std::fs::rename(&tree, &inbox)?;
        let result = reconcile_run(&mut suite, files);
        // The tree goes back for the next run whatever happened.
        drop(suite.stop("sluice-monitor"));
        std::fs::rename(&inbox, &tree)?;
        let sample = result?;
        eprintln!("reconcile {files} run {run}: {sample}");
        samples.push(sample);
    }
    Ok(samples)
}

fn reconcile_run(suite: &mut Suite, files: usize) -> anyhow::Result<Value> {
    let mut sample = json!({ "files": files });
    for phase in ["cold", "warm"] {
        if phase == "warm" {
            suite.stop("sluice-monitor")?;
        }
        sample[format!("{phase}_load_1m")] = json!(load_average());
        // The log file is appended to across restarts: wait for one more completion line.
        let log_path = suite.scratch.path().join("sluice-monitor.log");
        let completions = || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .matches(" complete: every file found is recorded")
                .count()
        };
        let before = completions();
        let started = Instant::now();
        suite.start("sluice-monitor", "sluice-monitor", &[])?;
        let pid = suite
            .daemons()
            .iter()
            .find(|daemon| daemon.name == "sluice-monitor")
            .map(|daemon| daemon.pid())
            .context("the monitor")?;
        let deadline = started + Duration::from_secs(3600);
        while completions() <= before {
            if Instant::now() > deadline {
                bail!(
                    "the monitor's reconcile did not complete within an hour:\n{}",
                    suite.log_of("sluice-monitor")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        sample[format!("{phase}_s")] = json!(started.elapsed().as_secs_f64());
        sample[format!("{phase}_vmhwm_mib")] = json!(status_mib(pid, "VmHWM:"));
        let store = Store::open(&suite.database, &store_options(Durability::Full))?;
        let recorded: u64 = store.file_counts()?.values().sum();
        if recorded != files as u64 {
            bail!("{phase}: {recorded} files recorded, not {files}");
        }
    }
    Ok(sample)
}

// ---------------------------------------------------------------------------------------------
// ingest-big

pub fn ingest_big(gib: u64, runs: usize, directory: &Path) -> anyhow::Result<Vec<Value>> {
    let mut samples = Vec::new();
    for run in 1..=runs {
        let sample = ingest_run(gib, run, directory)?;
        eprintln!("ingest-big {gib} GiB run {run}: {sample}");
        samples.push(sample);
    }
    Ok(samples)
}

fn ingest_run(gib: u64, run: usize, directory: &Path) -> anyhow::Result<Value> {
    let size = gib << 30;
    let mut suite = Suite::prepare(Durability::Full, directory)?;
    let inbox = suite.scratch.path().join("inbox");
    let path = inbox.join(format!("big-{run}.bin"));
    {
        let mut file = std::fs::File::create(&path)?;
        // 1 MiB that differs from run to run (so each run is new content), then a hole.
        let mut state = now_micros() | 1;
        let mut head = Vec::with_capacity(1 << 20);
        while head.len() < 1 << 20 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            head.extend_from_slice(&state.to_le_bytes());
        }
        file.write_all(&head)?;
        file.set_len(size)?;
        file.set_modified(SystemTime::now() - Duration::from_secs(3600))?;
    }
    let metadata = std::fs::metadata(&path)?;
    {
        use std::os::unix::fs::MetadataExt;
        // What the monitor records for a file it found (the same store call).
        let mut store = Store::open(&suite.database, &store_options(Durability::Full))?;
        store.record_detected_files(
            &[DetectedFile {
                watch_root: inbox.clone(),
                path: path.clone(),
                mode: WatchMode::Consume,
                size: metadata.len(),
                mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
                inode: metadata.ino(),
            }],
            3,
            1000,
        )?;
    }
    let load_1m = load_average();
    let started = Instant::now();
    suite.start(
        "sluice-ingest-worker@1",
        "sluice-ingest-worker",
        &["--instance", "1"],
    )?;
    let pid = suite.daemons()[0].pid();
    let store = Store::open(&suite.database, &store_options(Durability::Full))?;
    let mut child_peak_mib: f64 = 0.0;
    let job = loop {
        // Every process below the worker (`process_tree` starts with the worker itself).
        for child in super::suite::process_tree(pid).into_iter().skip(1) {
            if let Some(peak) = status_mib(child, "VmHWM:") {
                child_peak_mib = child_peak_mib.max(peak);
            }
        }
        let job = store.get_job(1)?;
        if job.state.is_terminal() {
            break job;
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the ingest job did not end within an hour");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let worker_peak_mib = status_mib(pid, "VmHWM:");
    if job.state != JobState::Succeeded {
        bail!(
            "the ingest job ended {}: {:?}\n{}",
            job.state,
            job.error,
            suite.log_of("sluice-ingest-worker@1")
        );
    }
    let ingest_s = (job.finished_at_ms.unwrap_or(0) - job.started_at_ms.unwrap_or(0)) as f64 / 1e3;
    let filed = find_regular_file(&suite.scratch.path().join("library"))?
        .context("no file in the library after the ingest")?;
    let mib = size as f64 / 1_048_576.0;
    let mut sample = json!({
        "gib": gib,
        "load_1m": load_1m,
        "worker_vmhwm_mib": worker_peak_mib,
        "child_vmhwm_mib": child_peak_mib,
        "ingest_s": ingest_s,
        "ingest_mib_per_s": mib / ingest_s.max(1e-9),
    });
    let sha256 = time_command(Command::new("sha256sum").arg(&filed))?;
    sample["sha256sum_mib_per_s"] = json!(mib / sha256);
    match Command::new("b3sum").arg("--version").output() {
        Ok(output) if output.status.success() => {
            let b3 = time_command(Command::new("b3sum").arg(&filed))?;
            let b3_one = time_command(
                Command::new("b3sum")
                    .args(["--num-threads", "1"])
                    .arg(&filed),
            )?;
            sample["b3sum_mib_per_s"] = json!(mib / b3);
            sample["b3sum_1_thread_mib_per_s"] = json!(mib / b3_one);
            // The worker's one pass computes both: the two tools one after the other.
            sample["b3sum_1_thread_then_sha256sum_mib_per_s"] = json!(mib / (b3_one + sha256));
        }
        _ => eprintln!("b3sum not found (cargo install b3sum): its numbers are left out"),
    }
    std::fs::remove_file(&filed)?;
    Ok(sample)
}

/// Seconds `command` took; it must succeed.
fn time_command(command: &mut Command) -> anyhow::Result<f64> {
    let started = Instant::now();
    let output = command.stdout(Stdio::null()).output()?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

fn find_regular_file(folder: &Path) -> anyhow::Result<Option<PathBuf>> {
    for entry in std::fs::read_dir(folder)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_file() {
            return Ok(Some(entry.path()));
        }
        if kind.is_dir()
            && let Some(found) = find_regular_file(&entry.path())?
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}
