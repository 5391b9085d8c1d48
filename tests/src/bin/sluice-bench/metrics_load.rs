//! `metrics` (issue 11): `GET /metrics` at a fixed rate (1,000 requests/s by default) against a
//! release sluice-web with the whole suite on a private bus (monitor, scraper, 2 ingest
//! workers, so every refresh reads 5 daemons over D-Bus) and 20,000 succeeded jobs in the
//! database (so every refresh counts them). Reports the rate reached, latency, non-200
//! answers, and sluice-web's CPU: idle beforehand, under the load, and per request.
//!
//! The load is paced, not flat out: each of `clients` threads sends its share on a fixed
//! schedule over its own keep-alive connection, which is how a crowd of Prometheus servers
//! (or a misconfigured one) would ask.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sluice_core::store::Durability;

use super::percentile;
use super::suite::{BENCH_READ_TOKEN, Suite, cpu_time};

pub struct Load {
    pub rate: u32,
    pub seconds: u32,
    pub clients: u32,
    pub jobs: usize,
}

pub fn run(load: &Load, runs: usize, directory: &Path) -> anyhow::Result<Vec<Value>> {
    if load.rate == 0 || load.clients == 0 || load.seconds == 0 {
        bail!("--rate, --clients and --seconds must be at least 1");
    }
    let mut suite = Suite::prepare(Durability::Full, directory)?;
    super::w2::populate(&suite.database, load.jobs)?;
    suite.start("sluice-web", "sluice-web", &[])?;
    suite.start("sluice-monitor", "sluice-monitor", &[])?;
    suite.start("sluice-scraper", "sluice-scraper", &[])?;
    for instance in ["1", "2"] {
        suite.start(
            &format!("sluice-ingest-worker@{instance}"),
            "sluice-ingest-worker",
            &["--instance", instance],
        )?;
    }
    suite.wait_ready(Duration::from_secs(60))?;
    let origin = format!("http://127.0.0.1:{}", suite.web_port);
    let first = fetch(&ureq_agent(), &origin)?;
    if !first.contains("sluice_daemon_up{daemon=\"sluice-ingest-worker@2\"} 1") {
        bail!("the first /metrics answer does not show the whole suite up:\n{first}");
    }
    let web_pid = suite.daemons()[0].pid();

    // Warm-up (connections, the blocking pool); not counted.
    pace(
        &origin,
        &Load {
            seconds: 2,
            ..*load
        },
    )?;
    let mut samples = Vec::new();
    for run in 1..=runs {
        // Idle: what the web costs with nobody asking, over the same time as the load.
        let idle_before = cpu_time(web_pid)?;
        let idle_started = Instant::now();
        std::thread::sleep(Duration::from_secs(u64::from(load.seconds)));
        let idle_cpu = cpu_time(web_pid)?.saturating_sub(idle_before);
        let idle_elapsed = idle_started.elapsed();

        let cpu_before = cpu_time(web_pid)?;
        let started = Instant::now();
        let mut sample = pace(&origin, load)?;
        let elapsed = started.elapsed();
        let cpu_used = cpu_time(web_pid)?.saturating_sub(cpu_before);
        let requests = sample["requests"].as_f64().unwrap_or(0.0).max(1.0);
        let idle_percent = idle_cpu.as_secs_f64() / idle_elapsed.as_secs_f64() * 100.0;
        let load_percent = cpu_used.as_secs_f64() / elapsed.as_secs_f64() * 100.0;
        sample["web_cpu_idle_percent_of_a_core"] = json!(idle_percent);
        sample["web_cpu_percent_of_a_core"] = json!(load_percent);
        sample["web_cpu_us_per_request"] = json!(cpu_used.as_secs_f64() * 1e6 / requests);
        sample["web_cpu_us_per_request_above_idle"] = json!(
            (cpu_used.as_secs_f64() - idle_percent / 100.0 * elapsed.as_secs_f64()).max(0.0) * 1e6
                / requests
        );
        eprintln!("metrics run {run}: {sample}");
        samples.push(sample);
    }
    Ok(samples)
}

/// `load.rate` requests a second for `load.seconds`, shared by `load.clients` threads.
fn pace(origin: &str, load: &Load) -> anyhow::Result<Value> {
    let total = u64::from(load.rate) * u64::from(load.seconds);
    let interval = Duration::from_secs_f64(1.0 / f64::from(load.rate));
    let started = Instant::now();
    let threads: Vec<_> = (0..u64::from(load.clients))
        .map(|client| {
            let origin = origin.to_owned();
            let clients = u64::from(load.clients);
            std::thread::spawn(move || -> (Vec<f64>, u64) {
                let agent = ureq_agent();
                let mut latencies = Vec::new();
                let mut failures = 0;
                let mut index = client;
                while index < total {
                    let due = started + interval * u32::try_from(index).unwrap_or(u32::MAX);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let sent = Instant::now();
                    match fetch(&agent, &origin) {
                        Ok(_) => latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
                        Err(_) => failures += 1,
                    }
                    index += clients;
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failures = 0;
    for thread in threads {
        let (some, failed) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        latencies.extend(some);
        failures += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(json!({
        "requests": (latencies.len() as u64 + failures) as f64,
        "requests_per_s": latencies.len() as f64 / elapsed,
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
        "non_200": failures as f64,
    }))
}

fn ureq_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(true)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn fetch(agent: &ureq::Agent, origin: &str) -> anyhow::Result<String> {
    agent
        .get(format!("{origin}/metrics"))
        .header("Authorization", format!("Bearer {BENCH_READ_TOKEN}"))
        .call()
        .context("GET /metrics")?
        .body_mut()
        .read_to_string()
        .context("reading /metrics")
}
