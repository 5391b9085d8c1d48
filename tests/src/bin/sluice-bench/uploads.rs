//! Issue 9's numbers: what waiting clients cost (`waiters`), and W5 through the upload path
//! (`w5`).
//!
//! `waiters`: a release `sluice-web` on a private bus; N clients each send
//! `GET /api/jobs/{id}?wait=10m` for one queued job (no worker runs, so it stays queued) and
//! hold their connection. Reports the web's PSS before and with them (so the cost of one
//! waiter), then cancels the job and measures the time until every client has its answer.
//!
//! `w5`: the corpus of BENCHMARKS.md W5 (200 PDFs of 10 pages of about 2,000 words, a marker
//! word `tok<file>x<page>` on every page, generated here deterministically) uploaded to the
//! whole suite (web, monitor, 2 ingest workers) with 8 uploads in flight, each waiting for its
//! result (`?wait=`), as clients of the seed's `POST /process-pdf` did. Reports documents/s,
//! pages/s, submit → result p50/p99, CPU time per page of every daemon, the suite's PSS idle
//! and after, and how many of the 2,000 markers a search finds. Thumbnails are jobs of their
//! own that run after the ingests: the run then waits until every thumbnail job has ended and
//! reports when that was and the CPU per page with them counted too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sluice_core::ingest::THUMBNAIL_JOB_KIND;
use sluice_core::store::{Durability, JobState, NewJob, PageRequest, Store};

use crate::suite::{BENCH_READ_TOKEN, BENCH_TOKEN, Suite};

/// One `waiters` run.
pub fn waiters(clients: usize, directory: &Path) -> anyhow::Result<Value> {
    raise_open_file_limit(clients as u64 * 2 + 4096)?;
    let mut suite = Suite::prepare(Durability::Normal, directory)?;
    suite.start("sluice-web", "sluice-web", &[])?;
    suite.wait_ready(Duration::from_secs(30))?;
    let job_id = Store::open(&suite.database, &crate::store_options(Durability::Normal))?
        .enqueue(&NewJob::new("noop", json!({})))?
        .id;
    let web_pid = suite.daemons()[0].pid();
    std::thread::sleep(Duration::from_millis(500));
    let before = web_pss(&suite)?;
    let address = format!("127.0.0.1:{}", suite.web_port);
    let started = Instant::now();
    let mut streams = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut stream = TcpStream::connect(&address).context("connect to sluice-web")?;
        write!(
            stream,
            "GET /api/jobs/{job_id}?wait=10m HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Authorization: Bearer {BENCH_READ_TOKEN}\r\n\r\n"
        )?;
        streams.push(stream);
    }
    let connected = started.elapsed();
    // Every request is in: the web holds one socket per client.
    let deadline = Instant::now() + Duration::from_secs(60);
    while open_files(web_pid) < clients {
        if Instant::now() > deadline {
            bail!(
                "sluice-web holds {} files, fewer than {clients} clients",
                open_files(web_pid)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the last requests reach their wait.
    std::thread::sleep(Duration::from_secs(2));
    let with = web_pss(&suite)?;
    let cancelled_at = Instant::now();
    let mut cancel = TcpStream::connect(&address)?;
    write!(
        cancel,
        "POST /api/jobs/{job_id}/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {BENCH_TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    cancel.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 200") {
        bail!("the cancel was refused: {answer}");
    }
    let mut answered_200 = 0;
    for stream in &mut streams {
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        if &head == b"HTTP/1.1 200" {
            answered_200 += 1;
        }
    }
    let all_answered = cancelled_at.elapsed();
    Ok(json!({
        "clients": clients,
        "answered_200": answered_200,
        "connect_all_ms": connected.as_secs_f64() * 1000.0,
        "web_pss_before_kib": before,
        "web_pss_with_waiters_kib": with,
        "bytes_per_waiter": ((with as f64 - before as f64) * 1024.0 / clients as f64).max(0.0),
        "cancel_to_all_answered_ms": all_answered.as_secs_f64() * 1000.0,
    }))
}

fn web_pss(suite: &Suite) -> anyhow::Result<u64> {
    Ok(suite.pss()?.into_iter().map(|(_, pss)| pss.total).sum())
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// Raises this process's open-file limit (the daemons it starts inherit it) to `wanted`, or
/// to the hard limit when that is lower.
fn raise_open_file_limit(wanted: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let target = wanted.min(hard).max(soft);
    setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    Ok(())
}

/// Pages per PDF, PDFs in the corpus, words per page (BENCHMARKS.md W5).
const PAGES: usize = 10;
const FILES: usize = 200;
const WORDS_PER_PAGE: usize = 2000;
const IN_FLIGHT: usize = 8;

/// One `w5` run.
pub fn w5(directory: &Path) -> anyhow::Result<Value> {
    let corpus: Vec<Vec<u8>> = (0..FILES).map(pdf_of).collect();
    let mut suite = Suite::prepare(Durability::Full, directory)?;
    suite.start("sluice-web", "sluice-web", &[])?;
    suite.start("sluice-monitor", "sluice-monitor", &[])?;
    for instance in ["1", "2"] {
        suite.start(
            &format!("sluice-ingest-worker@{instance}"),
            "sluice-ingest-worker",
            &["--instance", instance],
        )?;
    }
    suite.wait_ready(Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(1));
    let idle: u64 = suite.pss()?.iter().map(|(_, pss)| pss.total).sum();
    let cpu_before = suite_cpu_ms(&suite);
    let load_before = load_average();
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(FILES)));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let corpus = Arc::new(corpus);
    let origin = format!("http://127.0.0.1:{}", suite.web_port);
    let started = Instant::now();
    let threads: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (next, latencies, failures, corpus, origin) = (
                Arc::clone(&next),
                Arc::clone(&latencies),
                Arc::clone(&failures),
                Arc::clone(&corpus),
                origin.clone(),
            );
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= FILES {
                        return;
                    }
                    let submitted = Instant::now();
                    let answer = agent
                        .post(format!(
                            "{origin}/api/documents?name=w5-{index:03}.pdf&wait=10m"
                        ))
                        .header("Authorization", format!("Bearer {BENCH_TOKEN}"))
                        .header("Content-Type", "application/pdf")
                        .send(&corpus[index][..]);
                    let elapsed = submitted.elapsed();
                    let outcome =
                        answer
                            .map_err(|error| error.to_string())
                            .and_then(|mut response| {
                                let status = response.status().as_u16();
                                let body = response
                                    .body_mut()
                                    .read_to_string()
                                    .map_err(|error| error.to_string())?;
                                let state =
                                    serde_json::from_str::<Value>(&body).ok().and_then(|body| {
                                        body["uploads"][0]["job"]["state"]
                                            .as_str()
                                            .map(str::to_owned)
                                    });
                                match (status, state.as_deref()) {
                                    (200, Some("succeeded")) => Ok(()),
                                    _ => Err(format!("{status}: {body}")),
                                }
                            });
                    match outcome {
                        Ok(()) => latencies
                            .lock()
                            .unwrap()
                            .push(elapsed.as_secs_f64() * 1000.0),
                        Err(error) => failures.lock().unwrap().push(error),
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("an upload thread panicked"))?;
    }
    let wall = started.elapsed().as_secs_f64();
    let load_after = load_average();
    let cpu_ms = suite_cpu_ms(&suite) - cpu_before;
    let store = Store::open(&suite.database, &crate::store_options(Durability::Full))?;
    let thumbnail_jobs = |state: Option<JobState>| -> anyhow::Result<u64> {
        Ok(store
            .job_counts_by_kind()?
            .into_iter()
            .filter(|(kind, job_state, _)| {
                kind == THUMBNAIL_JOB_KIND
                    && state.map_or(!job_state.is_terminal(), |state| *job_state == state)
            })
            .map(|(_, _, count)| count)
            .sum())
    };
    let drain_deadline = Instant::now() + Duration::from_secs(600);
    while thumbnail_jobs(None)? > 0 {
        if Instant::now() > drain_deadline {
            bail!("thumbnail jobs still pending 10 minutes after the last upload");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let thumbnails_done_s = started.elapsed().as_secs_f64();
    let cpu_with_thumbnails_ms = suite_cpu_ms(&suite) - cpu_before;
    let thumbnails_made = thumbnail_jobs(Some(JobState::Succeeded))?;
    std::thread::sleep(Duration::from_secs(1));
    let after: u64 = suite.pss()?.iter().map(|(_, pss)| pss.total).sum();
    let failures = failures.lock().unwrap().clone();
    if let Some(first) = failures.first() {
        eprintln!("w5: {} uploads failed; the first: {first}", failures.len());
    }
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort_by(f64::total_cmp);
    let mut markers_found = 0;
    for file in 0..FILES {
        for page in 0..PAGES {
            let hits = store.search_documents(
                &sluice_core::policy::parse_search_query(&format!("tok{file}x{page}"))?,
                PageRequest {
                    before_id: None,
                    limit: 1,
                },
            )?;
            if !hits.items.is_empty() {
                markers_found += 1;
            }
        }
    }
    let documents = latencies.len();
    let breakdown = ingest_breakdown(&store)?;
    Ok(json!({
        "documents": documents,
        "failed": failures.len(),
        "documents_per_s": documents as f64 / wall,
        "pages_per_s": (documents * PAGES) as f64 / wall,
        "latency_p50_ms": crate::percentile(&latencies, 0.5),
        "latency_p99_ms": crate::percentile(&latencies, 0.99),
        "cpu_ms_per_page": cpu_ms / (documents * PAGES).max(1) as f64,
        "thumbnails_made": thumbnails_made,
        "thumbnails_done_s": thumbnails_done_s,
        "ingest_done_s": wall,
        "cpu_ms_per_page_with_thumbnails":
            cpu_with_thumbnails_ms / (documents * PAGES).max(1) as f64,
        "pss_idle_mib": idle as f64 / 1024.0,
        "pss_after_mib": after as f64 / 1024.0,
        "markers_found": markers_found,
        "markers": FILES * PAGES,
        "ingest_breakdown_ms": breakdown,
        // The machine's 1-minute load average before and after the uploads: other work on
        // a shared machine is the first suspect of a slow run.
        "load_1m_before": load_before,
        "load_1m_after": load_after,
    }))
}

/// The 1-minute load average (`/proc/loadavg`), or -1 when it cannot be read.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(-1.0)
}

/// Where an upload's time goes, from the ingest jobs' own timestamps: p50/p99/max of the wait
/// in the queue (created → claimed) and of the claim to the recorded outcome (claimed →
/// finished: the body, the rest of its batch, and the wait for the commit that records it).
/// What is left of an upload's latency is the web's part (the upload written, the job
/// queued, the answer after the outcome's signal).
fn ingest_breakdown(store: &Store) -> anyhow::Result<Value> {
    let mut queued = Vec::new();
    let mut running = Vec::new();
    let mut before_id = None;
    loop {
        let page = store.list_jobs(
            &sluice_core::store::JobFilter {
                states: vec![JobState::Succeeded],
                kind: Some(sluice_core::ingest::INGEST_JOB_KIND.to_owned()),
            },
            PageRequest {
                before_id,
                limit: 500,
            },
        )?;
        for job in &page.items {
            if let (Some(started), Some(finished)) = (job.started_at_ms, job.finished_at_ms) {
                queued.push((started - job.created_at_ms) as f64);
                running.push((finished - started) as f64);
            }
        }
        match page.next_cursor {
            Some(cursor) => before_id = Some(cursor),
            None => break,
        }
    }
    let summary = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        json!({
            "p50": crate::percentile(values, 0.5),
            "p99": crate::percentile(values, 0.99),
            "max": values.last().copied().unwrap_or(0.0),
        })
    };
    Ok(json!({
        "queued": summary(&mut queued),
        "claimed_to_recorded": summary(&mut running),
    }))
}

/// User + system CPU time of every daemon of the suite and of the children each has waited
/// for (an ingest worker's extraction children and `pdftoppm`), in milliseconds.
fn suite_cpu_ms(suite: &Suite) -> f64 {
    let ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    suite
        .daemons()
        .iter()
        .filter_map(|daemon| std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid())).ok())
        .filter_map(|stat| {
            let after_name = stat[stat.rfind(')')? + 1..].to_owned();
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            // utime, stime, cutime and cstime are fields 14 to 17 of stat; 12 to 15 after
            // the name.
            let ticks: f64 = (11..=14)
                .map(|index| fields.get(index)?.parse::<f64>().ok())
                .sum::<Option<f64>>()?;
            Some(ticks * 1000.0 / ticks_per_s)
        })
        .sum()
}

/// Writes the corpus as `w5-000.pdf` … `w5-199.pdf` (the names the uploads carry) into
/// `directory`, for the peers.
pub fn write_w5_corpus(directory: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(directory)
        .with_context(|| format!("create {}", directory.display()))?;
    for file in 0..FILES {
        let path = directory.join(format!("w5-{file:03}.pdf"));
        std::fs::write(&path, pdf_of(file)).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// PDF number `file` of the corpus (see `sluice_tests::pdf::pdf_of`).
pub fn pdf_of(file: usize) -> Vec<u8> {
    sluice_tests::pdf::pdf_of(file, PAGES, WORDS_PER_PAGE)
}
