//! The store and job queue under real concurrency and real crashes: several OS processes on
//! one SQLite file, kill -9 at random moments, SIGSTOP past a lease, racing migrations.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::Rng;
use serde_json::json;
use sluice_core::store::{Durability, JobFilter, JobState, MIGRATIONS, NewJob, PageRequest, Store};

use crate::support::{
    DEADLINE, DaemonProcess, SpawnOptions, open_store, queue_child, temp_dir, wait_until,
};

/// Starts a queue-child with its stdout lines (its report) collected.
fn start_queue_child(command: &mut std::process::Command) -> DaemonProcess {
    DaemonProcess::spawn(command, SpawnOptions::named("queue-child").capture_stdout())
        .unwrap_or_else(|error| panic!("{error:#}"))
}

/// Waits for a queue-child to exit by itself; its exit status and every line it wrote.
fn finish(mut process: DaemonProcess) -> (std::process::ExitStatus, Vec<String>) {
    let status = process
        .wait_for_exit(DEADLINE)
        .unwrap_or_else(|error| panic!("{error:#}"));
    (status, process.lines())
}

fn enqueue_test_jobs(
    store: &mut Store,
    count: usize,
    payload: impl Fn(usize) -> serde_json::Value,
) {
    let jobs: Vec<NewJob> = (0..count)
        .map(|i| NewJob::new("test", payload(i)).with_max_attempts(10))
        .collect();
    for chunk in jobs.chunks(500) {
        store.enqueue_many(chunk).unwrap();
    }
}

fn all_jobs(store: &Store) -> Vec<sluice_core::store::Job> {
    let mut jobs = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_jobs(
                &JobFilter::default(),
                PageRequest {
                    before_id: cursor,
                    limit: 1000,
                },
            )
            .unwrap();
        jobs.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return jobs,
        }
    }
}

/// Asserts every job succeeded exactly once: one transition into `succeeded` in its history.
fn assert_each_succeeded_once(store: &Store) -> Vec<sluice_core::store::Job> {
    let jobs = all_jobs(store);
    for job in &jobs {
        assert_eq!(
            job.state,
            JobState::Succeeded,
            "job {} is {}",
            job.id,
            job.state
        );
        let successes = store
            .job_history(job.id)
            .unwrap()
            .iter()
            .filter(|transition| transition.to_state == JobState::Succeeded)
            .count();
        assert_eq!(successes, 1, "job {} succeeded {successes} times", job.id);
    }
    jobs
}

#[test]
fn concurrent_worker_processes_run_every_job_exactly_once() {
    let (_directory, root) = temp_dir();
    let database = root.join("sluice.db");
    let mut store = open_store(&database, Durability::Normal);
    let total = 4000;
    enqueue_test_jobs(&mut store, total, |i| json!({"i": i}));
    let workers: Vec<DaemonProcess> = (0..4)
        .map(|n| {
            start_queue_child(queue_child(&database, Durability::Normal).args([
                "worker",
                "--name",
                &format!("w{n}"),
                "--batch",
                "16",
            ]))
        })
        .collect();
    let mut done_total = 0;
    for worker in workers {
        let (status, lines) = finish(worker);
        assert!(status.success(), "worker failed: {lines:?}");
        let done: u64 = lines
            .iter()
            .find_map(|line| line.strip_prefix("done "))
            .expect("worker reports its count")
            .parse()
            .unwrap();
        done_total += done;
    }
    assert_eq!(
        done_total, total as u64,
        "completions acknowledged to workers"
    );
    let jobs = assert_each_succeeded_once(&store);
    assert_eq!(jobs.len(), total);
    assert!(jobs.iter().all(|job| job.attempts == 1));
    let workers_used: BTreeSet<String> = jobs
        .iter()
        .map(|job| {
            job.result.as_ref().unwrap()["by"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(workers_used.len() > 1, "only {workers_used:?} did any work");
}

#[test]
fn kill_9_chaos_loses_no_job_and_runs_none_twice() {
    let (_directory, root) = temp_dir();
    let database = root.join("sluice.db");
    let mut store = open_store(&database, Durability::Normal);
    let total = 3000;
    let lease = Duration::from_millis(300);
    // A little work per job so that kills land mid-batch.
    enqueue_test_jobs(&mut store, total, |i| json!({"i": i, "sleep_ms": 1}));
    let spawn = |name: &str| {
        start_queue_child(queue_child(&database, Durability::Normal).args([
            "worker",
            "--name",
            name,
            "--lease-ms",
            &lease.as_millis().to_string(),
            "--batch",
            "8",
            "--idle-ms",
            "3000",
        ]))
    };
    let mut workers: Vec<(String, DaemonProcess)> = (0..3)
        .map(|n| {
            let name = format!("w{n}-0");
            (name.clone(), spawn(&name))
        })
        .collect();
    let mut rng = rand::rng();
    let mut held_by_killed: BTreeMap<i64, String> = BTreeMap::new();
    let mut rescue_waits = Vec::new();
    for round in 1..=12 {
        std::thread::sleep(Duration::from_millis(rng.random_range(50..250)));
        let victim = rng.random_range(0..workers.len());
        let (name, mut process) = workers.swap_remove(victim);
        process.kill_hard();
        // The dead process can change nothing now: whatever it held is frozen until rescued.
        let held: Vec<i64> = store
            .list_jobs(
                &JobFilter {
                    states: vec![JobState::Running],
                    kind: None,
                },
                PageRequest {
                    before_id: None,
                    limit: 1000,
                },
            )
            .unwrap()
            .items
            .into_iter()
            .filter(|job| job.lease_owner.as_deref() == Some(name.as_str()))
            .map(|job| job.id)
            .collect();
        let killed_at = Instant::now();
        for id in &held {
            held_by_killed.insert(*id, name.clone());
        }
        let replacement = format!("w{victim}-{round}");
        workers.push((replacement.clone(), spawn(&replacement)));
        if !held.is_empty() {
            let rescued = wait_until(DEADLINE, || {
                held.iter().all(|id| {
                    let job = store.get_job(*id).unwrap();
                    job.state != JobState::Running || job.lease_owner.as_deref() != Some(&name)
                })
            });
            assert!(rescued, "jobs {held:?} of killed {name} never rescued");
            rescue_waits.push(killed_at.elapsed());
        }
    }
    for (_, worker) in workers {
        let (status, lines) = finish(worker);
        assert!(status.success(), "worker failed: {lines:?}");
    }
    let jobs = assert_each_succeeded_once(&store);
    assert_eq!(jobs.len(), total);
    assert!(
        !held_by_killed.is_empty(),
        "no kill landed while a worker held a job; the test proved nothing"
    );
    for (id, killed) in &held_by_killed {
        let job = store.get_job(*id).unwrap();
        assert!(
            job.attempts >= 2,
            "job {id} held by killed {killed} has {} attempts",
            job.attempts
        );
        let history = store.job_history(*id).unwrap();
        assert!(
            history
                .iter()
                .any(|transition| transition.to_state == JobState::Retrying
                    && transition.worker.as_deref() == Some(killed.as_str())
                    && transition
                        .error
                        .as_deref()
                        .unwrap_or("")
                        .contains("lease expired")),
            "job {id}: no rescue of {killed}'s lease in {history:?}"
        );
    }
    // Rescue comes from the next claim after the lease ran out: a few lease intervals, not
    // minutes. The bound is loose so that a slow machine cannot fail it.
    let slowest = rescue_waits.iter().max().unwrap();
    assert!(*slowest < lease * 20, "slowest rescue took {slowest:?}");
    eprintln!(
        "chaos: {} jobs held by killed workers rescued; rescue waits {:?}",
        held_by_killed.len(),
        rescue_waits
    );
}

#[test]
fn a_worker_stopped_past_its_lease_cannot_heartbeat_or_complete() {
    let (_directory, root) = temp_dir();
    let database = root.join("sluice.db");
    let mut store = open_store(&database, Durability::Full);
    let id = store.enqueue(&NewJob::new("test", json!({}))).unwrap().id;
    let holder = start_queue_child(queue_child(&database, Durability::Full).args([
        "hold",
        "--lease-ms",
        "300",
        "--heartbeat-ms",
        "30",
        "--hold-ms",
        "60000",
    ]));
    assert_eq!(
        holder.wait_for_line("claimed", DEADLINE),
        format!("claimed {id}")
    );
    holder.wait_for_line("heartbeat ok", DEADLINE);
    holder.signal(Signal::SIGSTOP).expect("stop the holder");
    // The lease is 300 ms: the job is claimable again soon after the holder stops.
    let mut second = None;
    let reclaimed = wait_until(DEADLINE, || {
        second = store
            .claim_jobs(&"second".into(), &["test"], 1, Duration::from_secs(30))
            .unwrap()
            .pop();
        second.is_some()
    });
    assert!(
        reclaimed,
        "job {id} of the stopped holder was not claimable again within {DEADLINE:?}: {:?}",
        store.get_job(id).unwrap()
    );
    let second = second.unwrap();
    assert_eq!((second.id, second.attempt), (id, 2));
    store
        .succeed_job(id, &second.lease_token, &json!({"by": "second"}))
        .unwrap();
    holder.signal(Signal::SIGCONT).expect("continue the holder");
    let (status, lines) = finish(holder);
    assert!(status.success(), "{lines:?}");
    assert!(
        lines.contains(&"heartbeat lease-lost".to_string()),
        "{lines:?}"
    );
    assert_eq!(lines.last().map(String::as_str), Some("succeed lease-lost"));
    let job = store.get_job(id).unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.result, Some(json!({"by": "second"})));
}

#[test]
fn a_job_that_always_fails_ends_dead_with_its_errors() {
    let (_directory, root) = temp_dir();
    let database = root.join("sluice.db");
    let mut store = open_store(&database, Durability::Normal);
    let id = store
        .enqueue(&NewJob::new("test", json!({"fail": "disk on fire"})).with_max_attempts(4))
        .unwrap()
        .id;
    let worker = start_queue_child(queue_child(&database, Durability::Normal).args([
        "worker",
        "--name",
        "w",
        "--idle-ms",
        "1500",
    ]));
    let (status, lines) = finish(worker);
    assert!(status.success(), "{lines:?}");
    let job = store.get_job(id).unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Dead, 4));
    let errors: Vec<_> = store
        .job_history(id)
        .unwrap()
        .into_iter()
        .filter_map(|transition| transition.error)
        .collect();
    assert_eq!(errors, vec!["disk on fire"; 4]);
}

#[test]
fn a_job_that_kills_its_worker_ends_dead_after_max_attempts() {
    let (_directory, root) = temp_dir();
    let database = root.join("sluice.db");
    let mut store = open_store(&database, Durability::Normal);
    let id = store
        .enqueue(&NewJob::new("test", json!({"crash": true})).with_max_attempts(3))
        .unwrap()
        .id;
    let healthy = store
        .enqueue(&NewJob::new("test", json!({"i": 1})))
        .unwrap()
        .id;
    let mut crashes = 0;
    let mut runs = 0;
    // Bounds the loop also when the workers stop crashing (then `crashes` stays below 10 and
    // only the clock ends it): 3 crashes with 200 ms leases take a few seconds.
    let deadline = Instant::now() + DEADLINE;
    // A supervisor's job: restart the worker each time it dies, as systemd would.
    while store.get_job(id).unwrap().state != JobState::Dead {
        assert!(
            crashes < 10,
            "job never went dead: {:?}",
            store.get_job(id).unwrap()
        );
        assert!(
            Instant::now() < deadline,
            "job not dead within {DEADLINE:?} after {runs} worker runs ({crashes} crashed): {:?}",
            store.get_job(id).unwrap()
        );
        runs += 1;
        let worker = start_queue_child(queue_child(&database, Durability::Normal).args([
            "worker",
            "--name",
            "w",
            "--lease-ms",
            "200",
            "--batch",
            "1",
            "--idle-ms",
            "1000",
        ]));
        let (status, _) = finish(worker);
        if !status.success() {
            crashes += 1;
        }
    }
    assert_eq!(crashes, 3);
    let job = store.get_job(id).unwrap();
    assert_eq!(job.attempts, 3);
    let rescues = store
        .job_history(id)
        .unwrap()
        .into_iter()
        .filter(|transition| {
            transition
                .error
                .as_deref()
                .unwrap_or("")
                .contains("lease expired")
        })
        .count();
    assert_eq!(rescues, 3);
    assert_eq!(store.get_job(healthy).unwrap().state, JobState::Succeeded);
}

#[test]
fn kill_9_during_a_write_storm_keeps_the_database_consistent_and_every_acknowledged_write() {
    for durability in [Durability::Full, Durability::Normal] {
        let (_directory, root) = temp_dir();
        let database = root.join("sluice.db");
        let mut rng = rand::rng();
        let mut acknowledged: BTreeSet<i64> = BTreeSet::new();
        let mut completed: BTreeSet<i64> = BTreeSet::new();
        for _ in 0..15 {
            let mut storm = start_queue_child(queue_child(&database, durability).args(["storm"]));
            storm.wait_for_line("ack", DEADLINE);
            std::thread::sleep(Duration::from_millis(rng.random_range(5..120)));
            for line in storm.kill_hard() {
                let mut words = line.split(' ');
                let target = match words.next() {
                    Some("ack") => &mut acknowledged,
                    Some("done") => &mut completed,
                    _ => continue,
                };
                target.extend(words.map(|id| id.parse::<i64>().unwrap()));
            }
            let store = open_store(&database, durability);
            assert_eq!(store.integrity_check().unwrap(), vec!["ok".to_string()]);
            for id in &acknowledged {
                store.get_job(*id).unwrap_or_else(|error| {
                    panic!("acknowledged job {id} lost ({durability:?}): {error}")
                });
            }
            for id in &completed {
                assert_eq!(store.get_job(*id).unwrap().state, JobState::Succeeded);
            }
        }
        assert!(
            acknowledged.len() > 100,
            "the storm wrote too little to prove anything"
        );
    }
}

#[test]
fn many_processes_opening_a_fresh_database_at_once_end_with_one_schema() {
    for round in 0..3 {
        let (_directory, root) = temp_dir();
        let database = root.join("sluice.db");
        let openers: Vec<DaemonProcess> = (0..12)
            .map(|_| start_queue_child(queue_child(&database, Durability::Full).arg("open")))
            .collect();
        for opener in openers {
            let (status, lines) = finish(opener);
            assert!(status.success(), "round {round}: opener failed: {lines:?}");
            assert_eq!(lines, vec![format!("version {}", MIGRATIONS.len())]);
        }
        let store = open_store(&database, Durability::Full);
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(store.integrity_check().unwrap(), vec!["ok".to_string()]);
        let applied = store.schema_history().unwrap();
        let versions: Vec<i64> = applied.iter().map(|(version, _)| *version).collect();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i64).collect::<Vec<_>>());
    }
}
