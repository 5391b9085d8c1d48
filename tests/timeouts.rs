//! Issue 9 (timeouts) and the one-shot processors of issue 10, with the real ingest worker on a
//! private bus: a job that hangs is stopped by `[ingest] job_timeout` with every process its
//! processor started, and retried until `dead`; a body stuck where no flag reaches it makes the
//! worker record the timeout and exit for systemd to restart it; processor output is stored
//! with the document; too much output, a non-zero exit and a processor's own timeout fail the
//! job clearly; cancellation and SIGTERM kill a processor's processes too.
//!
//! No outcome here depends on the machine's speed: a hanging processor sleeps 1000 s, so any
//! limit of a few seconds ends it, and every wait is for a condition with a generous deadline.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde_json::json;
use sluice_core::store::JobState;

use crate::ingest::{Suite, png_bytes};
use crate::support::{DEADLINE, retried_because, wait_until};

/// A script that leaves a grandchild in the background and blocks, recording its own pid and
/// the grandchild's on one line of `pids` per run.
fn hanging_script(root: &Path, pids: &Path) -> PathBuf {
    script(
        root,
        "hang.sh",
        &format!(
            "sleep 1000 &\necho \"$$ $!\" >> '{}'\nsleep 1000\n",
            pids.display()
        ),
    )
}

/// Writes an executable `/bin/sh` script named `name` into `root`.
pub(crate) fn script(root: &Path, name: &str, body: &str) -> PathBuf {
    let path = root.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A `[[processor]]` table running `program` on `{path}` (and `{mime}`), with `extra` keys.
/// The folder of `program` is `writable`: the test scripts record their pids there.
fn processor(name: &str, mime: &str, program: &Path, extra: &str) -> String {
    format!(
        "[[processor]]\nname = \"{name}\"\nmime = \"{mime}\"\nargv = [\"{}\", \"{{path}}\", \"{{mime}}\"]\nwritable = [\"{}\"]\n{extra}\n",
        program.display(),
        program.parent().expect("a script's folder").display()
    )
}

/// The pids written to `pids`, one line per run.
fn recorded_runs(pids: &Path) -> Vec<Vec<i32>> {
    std::fs::read_to_string(pids)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|pid| pid.parse().expect("a pid"))
                .collect()
        })
        .collect()
}

/// Whether `pid` is a live process (a zombie is dead: it only waits to be reaped).
fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            !matches!(state, Some('Z' | 'X'))
        }
    }
}

/// The live processes whose process group is `group`.
fn live_members_of_group(group: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(") ")?;
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    // state, ppid, pgrp
                    Some(fields.get(2)? == &group.to_string() && !matches!(fields[0], "Z" | "X"))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Every process of every recorded run is gone, and so is every member of its group; waits
/// a little, as the kernel delivers SIGKILL asynchronously.
pub(crate) fn assert_no_process_left(pids: &Path) {
    assert_first_runs_gone(pids, usize::MAX);
}

/// [`assert_no_process_left`] for the first `count` runs recorded in `pids` only: a server
/// processor is started again after it is killed, and the fresh one is meant to live.
pub(crate) fn assert_first_runs_gone(pids: &Path, count: usize) {
    let runs: Vec<Vec<i32>> = recorded_runs(pids).into_iter().take(count).collect();
    assert!(!runs.is_empty(), "the processor never ran");
    let gone = wait_until(DEADLINE, || {
        runs.iter().all(|run| {
            run.iter().all(|pid| !is_alive(*pid)) && live_members_of_group(run[0]).is_empty()
        })
    });
    if !gone {
        // Leave nothing behind for the next test, then fail.
        for pid in runs.iter().flatten() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
        }
        panic!("processes of the processor outlived their job: {runs:?}");
    }
}

/// THE test of issue 9: a processor that blocks forever and leaves a grandchild behind, on a
/// job limited to 2 s. Each attempt times out, every process of the processor dies, the job
/// is retried and ends `dead` with the timeout in its error and history, and the worker goes
/// on to ingest the next file.
#[test]
fn a_hanging_processor_is_stopped_by_the_job_timeout_with_its_processes_and_the_worker_goes_on() {
    let (directory, root) = crate::support::scripts_dir();
    let pids = root.join("pids");
    let hang = hanging_script(&root, &pids);
    let mut suite = Suite::with_settings(
        "5s",
        "2s",
        "400ms",
        "job_timeout = \"2s\"",
        &processor("hang", "text/plain", &hang, ""),
    );
    let worker = suite.start_worker("1");
    let (id, _, _) = suite.enqueue_file("stuck.txt", b"hello world\n");
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Dead, "{job:?}");
    assert_eq!(job.attempts, 3, "{job:?}");
    let error = job.error.clone().unwrap_or_default();
    assert!(
        error.contains("timed out after 2 s (the [ingest] job_timeout)"),
        "{error}"
    );
    let history = suite.store.job_history(id).unwrap();
    let timed_out_retries = history
        .iter()
        .filter(|step| {
            step.to_state == JobState::Retrying
                && step
                    .error
                    .as_deref()
                    .is_some_and(|error| error.contains("timed out after 2 s"))
        })
        .count();
    assert_eq!(timed_out_retries, 2, "{history:#?}");
    assert_no_process_left(&pids);
    assert!(
        worker
            .log()
            .contains(&format!("job {id} ran past its limit of 2 s")),
        "{}",
        worker.log()
    );

    // The worker is not wedged: the next file (not text, so not processed) is ingested.
    let (next, _, filed) = suite.enqueue_file("next.png", &png_bytes());
    let job = suite.wait_for_end(next, &worker);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert!(filed.exists());
    drop(directory);
}

#[test]
fn processor_output_is_stored_with_the_document_as_json_or_text() {
    let (directory, root) = crate::support::scripts_dir();
    let words = script(
        &root,
        "words.sh",
        "printf '{\"words\": %d, \"mime\": \"%s\", \"path\": \"%s\"}\\n' \"$(wc -w < \"$1\")\" \"$2\" \"$1\"\n",
    );
    let first_line = script(&root, "first-line.sh", "head -n 1 \"$1\"\n");
    let never = script(&root, "never.sh", "exit 1\n");
    let tables = [
        processor("words", "text/*", &words, ""),
        processor("first-line", "text/plain", &first_line, ""),
        processor("images-only", "image/*", &never, ""),
    ]
    .concat();
    let mut suite = Suite::with_settings("5s", "2s", "400ms", "job_timeout = \"1m\"", &tables);
    let worker = suite.start_worker("1");

    // Consumed: processed where it was filed, in the library.
    let (id, _, filed) = suite.enqueue_file("note.txt", b"three small words\nand more\n");
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let document_id = job.result.as_ref().unwrap()["document_id"]
        .as_i64()
        .unwrap();
    let document = suite.store.get_document(document_id).unwrap();
    assert_eq!(
        document.metadata["processors"],
        json!({
            "words": {"words": 5, "mime": "text/plain", "path": filed.to_str().unwrap()},
            "first-line": "three small words\n",
        }),
        "{}",
        document.metadata
    );

    // Indexed: processed where it is.
    let indexed = suite.catalogue.join("kept.txt");
    std::fs::write(&indexed, b"one\n").unwrap();
    let payload = suite.ingest_payload(&indexed, &suite.catalogue.clone(), "index");
    let id = suite.enqueue("ingest", payload);
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let document_id = job.result.as_ref().unwrap()["document_id"]
        .as_i64()
        .unwrap();
    let document = suite.store.get_document(document_id).unwrap();
    assert_eq!(
        document.metadata["processors"]["words"],
        json!({"words": 1, "mime": "text/plain", "path": indexed.to_str().unwrap()})
    );
    assert!(indexed.exists(), "an indexed file stays in place");
    drop(directory);
}

#[test]
fn a_processor_writing_more_than_max_output_fails_the_job_for_good_and_is_killed() {
    let (directory, root) = crate::support::scripts_dir();
    let pids = root.join("pids");
    let flood = script(
        &root,
        "flood.sh",
        &format!("echo \"$$\" >> '{}'\nexec yes\n", pids.display()),
    );
    let mut suite = Suite::with_settings(
        "5s",
        "2s",
        "400ms",
        "",
        &processor("flood", "text/plain", &flood, "max_output = \"64 KiB\""),
    );
    let worker = suite.start_worker("1");
    let (id, _, _) = suite.enqueue_file("flood.txt", b"a text file\n");
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Failed, "not retried: {job:?}");
    assert_eq!(job.attempts, 1);
    let error = job.error.unwrap_or_default();
    assert!(
        error.contains("processor flood wrote more than its max_output of 65536 bytes"),
        "{error}"
    );
    assert_no_process_left(&pids);
    assert_eq!(suite.documents().len(), 0);
    drop(directory);
}

#[test]
fn a_processor_exiting_non_zero_fails_the_job_naming_it_its_status_and_stderr() {
    let (directory, root) = crate::support::scripts_dir();
    let failing = script(
        &root,
        "ocr.sh",
        "echo 'starting' >&2\necho 'ocr: no such language: xx' >&2\nexit 3\n",
    );
    let mut suite = Suite::with_settings(
        "5s",
        "2s",
        "400ms",
        "",
        &processor("ocr", "text/plain", &failing, ""),
    );
    let worker = suite.start_worker("1");
    let (id, _, _) = suite.enqueue_file("scan.txt", b"a text file\n");
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Dead, "retried, then dead: {job:?}");
    let error = job.error.unwrap_or_default();
    assert!(
        error.contains(
            "processor ocr exited with status 3; the end of its stderr: starting\nocr: no such language: xx"
        ),
        "{error}"
    );
    assert_eq!(suite.documents().len(), 0);
    drop(directory);
}

/// A processor's own `timeout`, shorter than the job's, ends it first and names it.
#[test]
fn a_processor_timeout_shorter_than_the_job_timeout_names_the_processor() {
    let (directory, root) = crate::support::scripts_dir();
    let pids = root.join("pids");
    let hang = hanging_script(&root, &pids);
    let mut suite = Suite::with_settings(
        "5s",
        "2s",
        "400ms",
        "job_timeout = \"10m\"",
        &processor("slow", "text/plain", &hang, "timeout = \"500ms\""),
    );
    let worker = suite.start_worker("1");
    let (id, _, _) = suite.enqueue_file("slow.txt", b"a text file\n");
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Dead, "{job:?}");
    let history = suite.store.job_history(id).unwrap();
    assert!(
        retried_because(
            &history,
            "processor slow timed out after 0.5 s; it was killed with its process group"
        ),
        "{history:#?}"
    );
    assert_no_process_left(&pids);
    drop(directory);
}

#[test]
fn a_noop_job_sleeping_past_the_job_timeout_times_out_and_is_retried_until_dead() {
    let mut suite = Suite::with_settings("5s", "2s", "400ms", "job_timeout = \"1s\"", "");
    let worker = suite.start_worker("1");
    let id = suite.enqueue("noop", json!({"i": 1, "sleep_ms": 60_000}));
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Dead, "{job:?}");
    assert_eq!(job.attempts, 3);
    assert!(
        job.error
            .as_deref()
            .is_some_and(|error| error.contains("timed out after 1 s (the [ingest] job_timeout)")),
        "{job:?}"
    );
    let history = suite.store.job_history(id).unwrap();
    assert!(
        retried_because(&history, "timed out after 1 s"),
        "{history:#?}"
    );
    // A job within its limit still succeeds.
    let quick = suite.enqueue("noop", json!({"i": 2, "sleep_ms": 10}));
    assert_eq!(
        suite.wait_for_end(quick, &worker).state,
        JobState::Succeeded
    );
}

/// A body stuck where no flag reaches it (the test makes a noop sleep deaf to its flags): the
/// worker records the timeout under the job's lease, gives back the job it had claimed but not
/// started, and exits with status 70 for systemd to restart it.
#[test]
fn a_job_stuck_past_its_timeout_is_recorded_and_the_worker_exits_to_be_restarted() {
    let mut suite = Suite::with_settings("5s", "2s", "400ms", "job_timeout = \"1s\"", "");
    // Both queued before the worker starts, so one claim takes both.
    let stuck = suite.enqueue("noop", json!({"i": 1, "sleep_ms": 600_000}));
    let behind = suite.enqueue("noop", json!({"i": 2}));
    let mut worker = suite.start_worker_with("1", &[("SLUICE_TEST_NOOP_IGNORES_FLAGS", "1")]);
    let status = worker
        .wait_for_exit(DEADLINE)
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(status.code(), Some(70), "log:\n{}", worker.log());
    let job = suite.job(stuck);
    assert_eq!(job.state, JobState::Retrying, "{job:?}");
    assert_eq!(job.attempts, 1);
    let error = job.error.unwrap_or_default();
    assert!(
        error.contains("timed out after 1 s (the [ingest] job_timeout); it did not stop"),
        "{error}"
    );
    let behind = suite.job(behind);
    assert_eq!(
        (behind.state, behind.attempts),
        (JobState::Queued, 0),
        "the job claimed with it but not started is given back unused: {behind:?}"
    );
    assert!(
        worker.log().contains(&format!(
            "job {stuck} timed out after 1 s and its body did not stop"
        )),
        "{}",
        worker.log()
    );
    suite.store.cancel_job(stuck).unwrap();
}

#[test]
fn cancelling_a_job_kills_its_running_processor() {
    let (directory, root) = crate::support::scripts_dir();
    let pids = root.join("pids");
    let hang = hanging_script(&root, &pids);
    let mut suite = Suite::with_settings(
        "5s",
        "2s",
        "400ms",
        "",
        &processor("hang", "text/plain", &hang, ""),
    );
    let worker = suite.start_worker("1");
    let (id, _, _) = suite.enqueue_file("cancel.txt", b"a text file\n");
    suite.wait_for("the processor never started", &worker, || {
        !recorded_runs(&pids).is_empty()
    });
    suite.store.cancel_job(id).unwrap();
    assert_eq!(suite.wait_for_end(id, &worker).state, JobState::Cancelled);
    assert_no_process_left(&pids);
    drop(directory);
}

#[test]
fn sigterm_kills_a_running_processor_and_gives_its_job_back() {
    let (directory, root) = crate::support::scripts_dir();
    let pids = root.join("pids");
    let hang = hanging_script(&root, &pids);
    let mut suite = Suite::with_settings(
        "1s",
        "2s",
        "400ms",
        "",
        &processor("hang", "text/plain", &hang, ""),
    );
    let mut worker = suite.start_worker("1");
    let (id, _, _) = suite.enqueue_file("stop.txt", b"a text file\n");
    suite.wait_for("the processor never started", &worker, || {
        !recorded_runs(&pids).is_empty()
    });
    worker.signal(Signal::SIGTERM).expect("signal the worker");
    let status = worker
        .wait_for_exit(DEADLINE)
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(status.code(), Some(0), "log:\n{}", worker.log());
    assert_no_process_left(&pids);
    let job = suite.job(id);
    assert_eq!(job.state, JobState::Queued, "released: {job:?}");
    assert_eq!(job.attempts, 0, "a released job keeps its attempts");
    suite.store.cancel_job(id).unwrap();
    drop(directory);
}
