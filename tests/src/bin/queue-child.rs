//! A queue client run as a real OS process by the store tests: workers that drain jobs, a
//! holder that keeps one lease (for the fencing test), a write storm (for kill -9 crash
//! consistency) and a bare open (for racing migrations). It links `sluice-core` directly,
//! the way every sluice daemon does.
// Talking to the parent test over stdout is this program's whole interface.
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::json;
use sluice_core::store::{Completion, Durability, JobError, NewJob, Outcome, Store};

#[derive(Parser)]
struct Arguments {
    #[arg(long)]
    db: PathBuf,
    #[arg(long, default_value = "normal")]
    durability: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drain jobs of the given kinds in batches until the queue stays empty for `idle_ms`.
    Worker {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "test")]
        kinds: String,
        #[arg(long, default_value_t = 500)]
        lease_ms: u64,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 1000)]
        idle_ms: u64,
    },
    /// Claim one job and heartbeat it, then try to complete it.
    Hold {
        #[arg(long)]
        lease_ms: u64,
        #[arg(long)]
        heartbeat_ms: u64,
        #[arg(long)]
        hold_ms: u64,
    },
    /// Enqueue (and drain some of) jobs as fast as possible, acknowledging each commit.
    Storm {
        #[arg(long, default_value_t = 8)]
        batch: usize,
    },
    /// Open the database (applying migrations) and print the schema version.
    Open,
}

fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    let durability = match arguments.durability.as_str() {
        "full" => Durability::Full,
        "normal" => Durability::Normal,
        other => bail!("unknown durability {other:?}"),
    };
    let options = sluice_tests::fixtures::store_options(durability);
    let mut store = Store::open(&arguments.db, &options)
        .with_context(|| format!("opening {}", arguments.db.display()))?;
    match arguments.command {
        Command::Worker {
            name,
            kinds,
            lease_ms,
            batch,
            idle_ms,
        } => run_worker(&mut store, &name, &kinds, lease_ms, batch, idle_ms),
        Command::Hold {
            lease_ms,
            heartbeat_ms,
            hold_ms,
        } => run_holder(&mut store, lease_ms, heartbeat_ms, hold_ms),
        Command::Storm { batch } => run_storm(&mut store, batch),
        Command::Open => {
            say(&format!("version {}", store.schema_version()?));
            Ok(())
        }
    }
}

/// Job bodies by payload: `{"sleep_ms": n}` works for n ms, `{"fail": "text"}` fails
/// (retryably), `{"crash": true}` kills this process mid-job; anything else succeeds with
/// `{"i": payload.i, "t": <µs since the epoch when the body ran>}` like the benchmark's noop.
fn run_worker(
    store: &mut Store,
    name: &str,
    kinds: &str,
    lease_ms: u64,
    batch: usize,
    idle_ms: u64,
) -> anyhow::Result<()> {
    let kinds: Vec<&str> = kinds.split(',').collect();
    let lease = Duration::from_millis(lease_ms);
    let mut completions: Vec<Completion> = Vec::new();
    let mut done = 0u64;
    let mut idle_since = Instant::now();
    say("ready");
    loop {
        let (results, claimed) =
            store.complete_and_claim(&completions, &name.into(), &kinds, batch, lease)?;
        done += results.iter().filter(|result| result.is_ok()).count() as u64;
        completions.clear();
        if claimed.is_empty() {
            if idle_since.elapsed() >= Duration::from_millis(idle_ms) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        idle_since = Instant::now();
        let claimed_at = Instant::now();
        for (index, job) in claimed.iter().enumerate() {
            // Keep the rest of the batch leased while a slow body runs.
            if claimed_at.elapsed() > lease / 3 {
                for waiting in &claimed[index..] {
                    store.heartbeat(waiting.id, &waiting.lease_token, lease)?;
                }
            }
            let payload = &job.payload;
            if payload.get("crash").is_some() {
                std::process::abort();
            }
            if let Some(milliseconds) = payload.get("sleep_ms").and_then(|value| value.as_u64()) {
                std::thread::sleep(Duration::from_millis(milliseconds));
            }
            let outcome = match payload.get("fail").and_then(|value| value.as_str()) {
                Some(error) => Outcome::Failed {
                    error: error.to_string(),
                    retryable: true,
                },
                None => Outcome::Succeeded {
                    result: json!({"i": payload.get("i"), "t": now_micros(), "by": name}),
                },
            };
            completions.push(Completion {
                id: job.id,
                lease_token: job.lease_token.clone(),
                outcome,
            });
        }
    }
    say(&format!("done {done}"));
    Ok(())
}

fn run_holder(
    store: &mut Store,
    lease_ms: u64,
    heartbeat_ms: u64,
    hold_ms: u64,
) -> anyhow::Result<()> {
    let lease = Duration::from_millis(lease_ms);
    let job = loop {
        if let Some(job) = store
            .claim_jobs(&"holder".into(), &["test"], 1, lease)?
            .pop()
        {
            break job;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    say(&format!("claimed {}", job.id));
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(hold_ms) {
        match store.heartbeat(job.id, &job.lease_token, lease) {
            Ok(_) => say("heartbeat ok"),
            Err(JobError::LeaseLost { .. }) => {
                say("heartbeat lease-lost");
                break;
            }
            Err(error) => return Err(error.into()),
        }
        std::thread::sleep(Duration::from_millis(heartbeat_ms));
    }
    match store.succeed_job(job.id, &job.lease_token, &json!({"by": "holder"})) {
        Ok(()) => say("succeed ok"),
        Err(JobError::LeaseLost { .. }) => say("succeed lease-lost"),
        Err(error) => return Err(error.into()),
    }
    Ok(())
}

/// Alternates enqueue batches with claim-and-complete batches, printing `ack <ids…>` after
/// each enqueue commit and `done <ids…>` after each completion commit.
fn run_storm(store: &mut Store, batch: usize) -> anyhow::Result<()> {
    let lease = Duration::from_secs(60);
    let mut sequence = 0u64;
    loop {
        let jobs: Vec<NewJob> = (0..batch)
            .map(|_| {
                sequence += 1;
                NewJob::new("storm", json!({"seq": sequence}))
            })
            .collect();
        let enqueued = store.enqueue_many(&jobs)?;
        say(&format!(
            "ack {}",
            enqueued
                .iter()
                .map(|job| job.id.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let claimed = store.claim_jobs(&"storm".into(), &["storm"], batch / 2, lease)?;
        let completions: Vec<Completion> = claimed
            .iter()
            .map(|job| Completion {
                id: job.id,
                lease_token: job.lease_token.clone(),
                outcome: Outcome::Succeeded {
                    result: json!({"seq": job.payload["seq"]}),
                },
            })
            .collect();
        let results = store.complete_jobs(&completions)?;
        let done: Vec<String> = completions
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .map(|(completion, _)| completion.id.to_string())
            .collect();
        if !done.is_empty() {
            say(&format!("done {}", done.join(" ")));
        }
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    // The parent may already be gone; nothing useful to do about a closed pipe.
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
