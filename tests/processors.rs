//! External processors (issue 10) with the real ingest worker: the server form started once
//! per worker and kept across files; what either form gives back (text indexed for search,
//! metadata stored with the document, derived files filed in the library and listed);
//! processors without network and with a private temporary folder; the hostile servers
//! (one that hangs, writes 100 MB, exits 1, dies mid-job, answers garbage); and OCR with the
//! real `tesseract` from the shipped config's example, on a PNG of rendered words.
//!
//! The test programs are shell scripts speaking the protocol of `sluice-ingest-worker`'s
//! `servers` module. Nothing here depends on the machine's speed: a hanging server sleeps
//! 1000 s against a timeout of half a second, and every wait is for a condition.

use std::path::Path;

use serde_json::{Value, json};
use sluice_core::store::JobState;
use sluice_tests::documents::text_png;

use crate::ingest::{Suite, png_bytes};
use crate::support::{WEB_READ_TOKEN, WEB_TEST_TOKEN, http_agent, retried_because};
use crate::timeouts::{assert_first_runs_gone, assert_no_process_left, script};

/// The line of shell that sets `$id` to the request's id (requests start `{"id":N,`).
const READ_ID: &str = r#"id=$(printf '%s' "$line" | sed 's/^{"id":\([0-9]*\),.*/\1/')"#;

/// A `[[processor]]` table in server mode running `program`, with `extra` keys. The folder
/// of `program` is `writable`: the test scripts record their starts and pids there.
fn server(name: &str, mime: &str, program: &Path, extra: &str) -> String {
    format!(
        "[[processor]]\nname = \"{name}\"\nmime = \"{mime}\"\nmode = \"server\"\nargv = [\"{}\"]\nwritable = [\"{}\"]\n{extra}\n",
        program.display(),
        program.parent().expect("a script's folder").display()
    )
}

/// Uploads `content` as `name` to the whole suite, waiting for its job: the answer's JSON.
fn upload_and_wait(suite: &crate::support::Suite, name: &str, content: &[u8]) -> Value {
    crate::support::upload_waiting(suite, name, content, "120s").1
}

/// One worker's suite for processor tests: a 5 s stop timeout, a 2 s lease with heartbeats
/// every 400 ms, and `tables` (the `[[processor]]` entries) at the end of the file.
fn processor_suite(tables: &str) -> Suite {
    Suite::with_settings("5s", "2s", "400ms", "", tables)
}

/// The lines of a file a script appends to (none when it does not exist).
fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The worker is not wedged: a file no processor matches is still ingested.
fn assert_still_serving(suite: &mut Suite, worker: &crate::support::DaemonProcess) {
    let (next, _, filed) = suite.enqueue_file("next.png", &png_bytes());
    let job = suite.wait_for_end(next, worker);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", worker.log());
    assert!(filed.exists());
}

/// Stops `worker` with SIGTERM, as systemd does, and waits for its clean exit (which stops
/// its servers).
fn stop_worker(worker: &mut crate::support::DaemonProcess) {
    worker
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("signal the worker");
    let status = worker
        .wait_for_exit(crate::support::DEADLINE)
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(status.code(), Some(0), "log:\n{}", worker.log());
}

/// THE test of "models loaded once per worker": the server starts with its worker, before
/// any file arrives, and that one start serves fifty files, each with its own answer.
#[test]
fn a_server_processor_is_started_with_its_worker_and_once_across_fifty_files() {
    let (directory, root) = crate::support::scripts_dir();
    let starts = root.join("starts");
    let counter = script(
        &root,
        "counter.sh",
        &format!(
            "echo \"start $$\" >> '{starts}'\n\
             while IFS= read -r line; do\n\
               {READ_ID}\n\
               printf '{{\"id\":%s,\"text\":\"wordfromserver\",\"metadata\":{{\"request\":%s,\"pid\":%s}}}}\\n' \"$id\" \"$id\" \"$$\"\n\
             done\n",
            starts = starts.display()
        ),
    );
    let mut suite = processor_suite(&server(
        "counter",
        "text/plain",
        &counter,
        "timeout = \"30s\"",
    ));
    let worker = suite.start_worker("1");
    // Ready, and no file given: the server starts anyway, once.
    suite.wait_for("the server did not start with its worker", &worker, || {
        lines_of(&starts).len() == 1
    });
    let jobs: Vec<i64> = (0..50)
        .map(|index| {
            let content = format!("file number {index}\n");
            suite
                .enqueue_file(&format!("file-{index}.txt"), content.as_bytes())
                .0
        })
        .collect();
    let mut requests = Vec::new();
    for id in jobs {
        let job = suite.wait_for_end(id, &worker);
        assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", worker.log());
        let document = suite
            .store
            .get_document(job.result.unwrap()["document_id"].as_i64().unwrap())
            .unwrap();
        requests.push(document.metadata["processors"]["counter"]["request"].clone());
    }
    let started = lines_of(&starts);
    assert_eq!(started.len(), 1, "one start for fifty files: {started:?}");
    requests.sort_by_key(|request| request.as_u64());
    requests.dedup();
    assert_eq!(requests.len(), 50, "each file had its own request");
    assert!(
        worker
            .log()
            .contains("processor counter: server started as pid"),
        "{}",
        worker.log()
    );
    drop(directory);
}

/// A server that dies with no file in flight is started again without waiting for one, after
/// a delay that grows while it keeps dying (1 s, then 2 s) and starts over once it answered;
/// each restart is logged with the processor's name and why.
#[test]
fn a_server_that_dies_while_idle_is_restarted_after_a_growing_delay() {
    let (directory, root) = crate::support::scripts_dir();
    let pids = root.join("pids");
    let flaky = script(
        &root,
        "flaky.sh",
        &format!(
            "echo \"$$\" >> '{pids}'\n\
             start=$(wc -l < '{pids}')\n\
             if [ \"$start\" -le 2 ]; then\n\
               echo \"cannot load the model (start $start)\" >&2; exit 1\n\
             fi\n\
             while IFS= read -r line; do\n\
               {READ_ID}\n\
               printf '{{\"id\":%s,\"metadata\":{{\"pid\":%s}}}}\\n' \"$id\" \"$$\"\n\
             done\n",
            pids = pids.display()
        ),
    );
    let mut suite = processor_suite(&server("flaky", "text/plain", &flaky, "timeout = \"30s\""));
    let mut worker = suite.start_worker("1");
    suite.wait_for("not restarted until it stayed up", &worker, || {
        lines_of(&pids).len() == 3
    });
    let log = worker.log();
    for (start, delay) in [(1, 1), (2, 2)] {
        assert!(
            log.contains(&format!(
                "processor flaky: its server exited with status 1; the end of its stderr: cannot \
                 load the model (start {start}); starting it again in {delay} s (failure {start} \
                 in a row)"
            )),
            "{log}"
        );
    }
    let serving: i64 = lines_of(&pids)[2].parse().unwrap();
    let (id, _, _) = suite.enqueue_file("input.txt", b"hello\n");
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", worker.log());
    let document = suite
        .store
        .get_document(job.result.unwrap()["document_id"].as_i64().unwrap())
        .unwrap();
    assert_eq!(document.metadata["processors"]["flaky"]["pid"], serving);

    // It answered, so a death now is a first failure again: restarted after 1 s, idle.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serving as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    suite.wait_for("not restarted after it was killed", &worker, || {
        lines_of(&pids).len() == 4
    });
    assert!(
        worker.log().contains(
            "processor flaky: its server was killed by signal 9; starting it again in 1 s \
             (failure 1 in a row)"
        ),
        "{}",
        worker.log()
    );
    stop_worker(&mut worker);
    assert_no_process_left(&pids);
    drop(directory);
}

/// Both forms' output with the whole suite: text found by `GET /api/documents?q=`, metadata
/// in the document's answer, derived files in the library beneath the content hash and
/// listed; and both ran without network and with a private `TMPDIR`.
#[test]
fn processor_text_metadata_and_derived_files_are_searchable_stored_and_listed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (root, _) = crate::support::scripts_dir();
    // Can it reach a port this test listens on? (bash's /dev/tcp: a real connect.)
    let network_probe = format!(
        "if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then net=yes; else net=no; fi"
    );
    let summarizer = script(
        root.path(),
        "summarizer.sh",
        &format!(
            "while IFS= read -r line; do\n\
               {READ_ID}\n\
               dir=$(printf '%s' \"$line\" | sed 's/.*\"output_dir\":\"\\([^\"]*\\)\".*/\\1/')\n\
               echo 'a summary' > \"$dir/summary.txt\"\n\
               {network_probe}\n\
               printf '{{\"id\":%s,\"text\":\"quokkamarker from the server\",\"metadata\":{{\"network\":\"%s\",\"tmpdir\":\"%s\"}},\"files\":[\"summary.txt\"]}}\\n' \"$id\" \"$net\" \"$TMPDIR\"\n\
             done\n"
        ),
    );
    let counter = script(
        root.path(),
        "count.sh",
        &format!(
            "{network_probe}\necho \"$net $TMPDIR\" > \"$2/probe.txt\"\n\
             echo '<script>alert(1)</script>' > \"$2/view.html\"\n\
             echo wombatmarker counted $(wc -w < \"$1\") words\n"
        ),
    );
    // bash, for /dev/tcp.
    for program in [&summarizer, &counter] {
        let text = std::fs::read_to_string(program).unwrap();
        std::fs::write(program, text.replacen("#!/bin/sh", "#!/bin/bash", 1)).unwrap();
    }
    let tables = format!(
        "{}[[processor]]\nname = \"count\"\nmime = \"text/plain\"\nargv = [\"{}\", \"{{path}}\", \"{{output}}\"]\n",
        server("summary", "text/plain", &summarizer, ""),
        counter.display()
    );
    let suite = crate::support::Suite::start_with(&tables, &[]);
    let body = upload_and_wait(&suite, "notes.txt", b"some plain words to process\n");
    let job = &body["uploads"][0]["job"];
    assert_eq!(job["state"], "succeeded", "{body}\n{}", suite.logs());
    let document_id = job["document"]["id"].as_i64().expect("document id");

    for (word, what) in [("quokkamarker", "server"), ("wombatmarker", "one-shot")] {
        let (status, found) = suite.get(&format!("/api/documents?q={word}"));
        assert_eq!(status, 200, "{found}");
        let ids: Vec<i64> = found["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|item| item["id"].as_i64())
            .collect();
        assert_eq!(
            ids,
            [document_id],
            "the {what}'s text is searchable: {found}"
        );
    }

    let (status, document) = suite.get(&format!("/api/documents/{document_id}"));
    assert_eq!(status, 200, "{document}");
    let metadata = &document["metadata"];
    assert_eq!(
        metadata["processors"]["summary"]["network"], "no",
        "{metadata}"
    );
    assert_eq!(
        metadata["processors"]["count"],
        "wombatmarker counted 5 words\n"
    );
    let blake3 = document["blake3"].as_str().unwrap();
    let derived = metadata["derived_files"].as_array().expect("derived_files");
    let paths: Vec<(&str, &str)> = derived
        .iter()
        .map(|file| {
            (
                file["name"].as_str().unwrap(),
                file["path"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        paths,
        [
            (
                "summary.txt",
                format!("derived/{}/{blake3}/summary/summary.txt", &blake3[..2]).as_str()
            ),
            (
                "probe.txt",
                format!("derived/{}/{blake3}/count/probe.txt", &blake3[..2]).as_str()
            ),
            (
                "view.html",
                format!("derived/{}/{blake3}/count/view.html", &blake3[..2]).as_str()
            ),
        ]
    );
    let library = suite.library();
    assert_eq!(
        std::fs::read_to_string(library.join(paths[0].1)).unwrap(),
        "a summary\n"
    );
    // The one-shot run had no network either, and a TMPDIR of its own, gone after the run.
    let probe = std::fs::read_to_string(library.join(paths[1].1)).unwrap();
    let (network, tmpdir) = probe.trim().split_once(' ').expect("two words");
    assert_eq!(network, "no", "{probe}");
    let temp_base = std::env::temp_dir();
    assert!(
        Path::new(tmpdir).starts_with(&temp_base)
            && Path::new(tmpdir)
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("sluice-count-")),
        "{tmpdir}"
    );
    assert!(!Path::new(tmpdir).exists(), "{tmpdir} outlived its run");
    // The server's TMPDIR lives as long as the server, private to its user.
    let server_tmpdir = metadata["processors"]["summary"]["tmpdir"]
        .as_str()
        .unwrap();
    let mode = std::fs::metadata(server_tmpdir).map(|metadata| {
        use std::os::unix::fs::PermissionsExt;
        metadata.permissions().mode() & 0o777
    });
    assert_eq!(mode.ok(), Some(0o700), "{server_tmpdir}");

    // Served with the read token, like the content: ranges, a validator, nosniff, and active
    // content as an attachment.
    let base = format!("/api/documents/{document_id}/derived");
    let summary = fetch(&suite, &format!("{base}/summary/summary.txt"), &[]);
    assert_eq!(summary.0, 200, "{}", String::from_utf8_lossy(&summary.2));
    assert_eq!(summary.2, b"a summary\n");
    assert_eq!(summary.1["content-type"], "text/plain");
    assert_eq!(summary.1["x-content-type-options"], "nosniff");
    assert_eq!(summary.1["content-security-policy"], "sandbox");
    assert_eq!(
        summary.1["content-disposition"],
        "inline; filename=\"summary.txt\""
    );
    let tag = summary.1["etag"].clone();
    let part = fetch(
        &suite,
        &format!("{base}/summary/summary.txt"),
        &[("Range", "bytes=2-8")],
    );
    assert_eq!((part.0, part.2.as_slice()), (206, &b"summary"[..]));
    assert_eq!(part.1["content-range"], "bytes 2-8/10");
    let cached = fetch(
        &suite,
        &format!("{base}/summary/summary.txt"),
        &[("If-None-Match", &tag)],
    );
    assert_eq!(cached.0, 304);
    let html = fetch(&suite, &format!("{base}/count/view.html"), &[]);
    assert_eq!(html.0, 200);
    assert_eq!(html.1["content-type"], "application/octet-stream");
    assert_eq!(
        html.1["content-disposition"],
        "attachment; filename=\"view.html\""
    );
    // Only what the document lists, by plain names.
    for (path, status) in [
        (format!("{base}/count/summary.txt"), 404),
        (format!("{base}/summary/nothing.txt"), 404),
        (format!("{base}/count/..%2F..%2F..%2Fsluice.db"), 400),
        (format!("{base}/..%2Fcount/probe.txt"), 400),
        (
            "/api/documents/999999/derived/count/probe.txt".to_owned(),
            404,
        ),
    ] {
        let answer = fetch(&suite, &path, &[]);
        assert_eq!(
            answer.0,
            status,
            "{path}: {}",
            String::from_utf8_lossy(&answer.2)
        );
    }
    drop(listener);
}

/// A `GET` with the read token: status, headers (lower-case names) and body.
fn fetch(
    suite: &crate::support::Suite,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, std::collections::HashMap<String, String>, Vec<u8>) {
    let mut request = http_agent()
        .get(format!("{}{path}", suite.web.origin))
        .header("Authorization", format!("Bearer {WEB_READ_TOKEN}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().expect("HTTP request");
    let found = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let body = response.body_mut().read_to_vec().unwrap_or_default();
    (response.status().as_u16(), found, body)
}

/// Security finding L6: a server's stderr was only kept as a tail. It is forwarded to the
/// worker's journal a line at a time, naming the processor, the worker and the pid, read on
/// its own thread from the start; a server that floods it gets a bounded number of lines
/// logged and a count of the rest, and its requests are answered as if it were quiet.
#[test]
fn a_servers_stderr_is_logged_line_by_line_and_a_flood_of_it_is_bounded() {
    let (directory, root) = crate::support::scripts_dir();
    let chatty = script(
        &root,
        "chatty.sh",
        &format!(
            "echo 'loading the model' >&2\n\
             yes 'flood of stderr' >&2 &\n\
             while IFS= read -r line; do\n\
               {READ_ID}\n\
               printf '{{\"id\":%s,\"text\":\"chattyword\"}}\\n' \"$id\"\n\
             done\n"
        ),
    );
    let mut suite = processor_suite(&server(
        "chatty",
        "text/plain",
        &chatty,
        "timeout = \"30s\"",
    ));
    let worker = suite.start_worker("1");
    for index in 0..3 {
        let (id, _, _) = suite.enqueue_file(&format!("chat-{index}.txt"), b"some words\n");
        let job = suite.wait_for_end(id, &worker);
        assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", worker.log());
    }
    let pid_prefix = "processor chatty (sluice-ingest-worker@1, pid ";
    suite.wait_for("the flood was never summed up", &worker, || {
        worker.log().contains("more lines of stderr not logged")
    });
    let log = worker.log();
    assert!(
        log.contains(pid_prefix) && log.contains("): loading the model"),
        "the first line is logged with the processor, worker and pid:\n{}",
        &log[..log.len().min(4000)]
    );
    let logged = log.matches("): flood of stderr").count();
    assert!(
        (1..=1000).contains(&logged),
        "{logged} flood lines logged: a bucket of 100 and 10 a second"
    );
    let refused: u64 = log
        .lines()
        .filter_map(|line| {
            let (before, _) = line.split_once(" more lines of stderr not logged")?;
            before.rsplit(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    assert!(
        refused > 10 * logged as u64,
        "the flood was counted, not logged: {refused} refused, {logged} logged"
    );
    assert!(
        log.len() < 1024 * 1024,
        "the log stays small: {} bytes",
        log.len()
    );
    assert_still_serving(&mut suite, &worker);
    drop(directory);
}

#[test]
fn a_hanging_server_is_killed_at_its_timeout_with_its_group_and_the_worker_goes_on() {
    let (directory, root) = crate::support::scripts_dir();
    let pids = root.join("pids");
    let hang = script(
        &root,
        "hang.sh",
        &format!(
            "sleep 1000 &\necho \"$$ $!\" >> '{}'\nwhile IFS= read -r line; do sleep 1000; done\n",
            pids.display()
        ),
    );
    let mut suite = Suite::with_settings(
        "5s",
        "2s",
        "400ms",
        "job_timeout = \"10m\"",
        &server("stuck", "text/plain", &hang, "timeout = \"500ms\""),
    );
    let mut worker = suite.start_worker("1");
    let (id, _, _) = suite.enqueue_file("stuck.txt", b"hello\n");
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Dead, "{job:?}");
    let history = suite.store.job_history(id).unwrap();
    assert!(
        retried_because(
            &history,
            "processor stuck did not answer within its timeout of 0.5 s; its server was killed \
             with its process group and starts again for the next attempt"
        ),
        "{history:#?}"
    );
    // One server for each attempt, each gone with its group, and a fourth started after the
    // last death, ready for the next file; it stops with its worker.
    suite.wait_for("no fresh server after the last attempt", &worker, || {
        lines_of(&pids).len() == 4
    });
    assert_first_runs_gone(&pids, 3);
    assert_still_serving(&mut suite, &worker);
    stop_worker(&mut worker);
    assert_no_process_left(&pids);
    drop(directory);
}

#[test]
fn a_server_writing_100_mb_is_cut_at_max_output_and_fails_the_job_for_good() {
    let (directory, root) = crate::support::scripts_dir();
    let pids = root.join("pids");
    let flood = script(
        &root,
        "flood.sh",
        &format!(
            "echo \"$$\" >> '{}'\n\
             while IFS= read -r line; do\n\
               {READ_ID}\n\
               printf '{{\"id\":%s,\"text\":\"' \"$id\"\n\
               head -c 104857600 /dev/zero | tr '\\0' x\n\
               printf '\"}}\\n'\n\
             done\n",
            pids.display()
        ),
    );
    let mut suite = processor_suite(&server(
        "flood",
        "text/plain",
        &flood,
        "max_output = \"1 MiB\"",
    ));
    let mut worker = suite.start_worker("1");
    let (id, _, _) = suite.enqueue_file("flood.txt", b"hello\n");
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Failed, "not retried: {job:?}");
    assert_eq!(job.attempts, 1);
    let error = job.error.unwrap_or_default();
    assert!(
        error.contains(
            "processor flood wrote an answer longer than its max_output of 1048576 bytes; its \
             server was killed with its process group"
        ),
        "{error}"
    );
    assert_first_runs_gone(&pids, 1);
    assert_eq!(suite.documents().len(), 0);
    assert_still_serving(&mut suite, &worker);
    stop_worker(&mut worker);
    assert_no_process_left(&pids);
    drop(directory);
}

#[test]
fn a_server_exiting_1_fails_each_attempt_with_its_status_and_stderr() {
    let (directory, root) = crate::support::scripts_dir();
    let starts = root.join("starts");
    let failing = script(
        &root,
        "failing.sh",
        &format!(
            "echo \"start $$\" >> '{}'\nIFS= read -r line\necho 'model file missing' >&2\nexit 1\n",
            starts.display()
        ),
    );
    let mut suite = processor_suite(&server("model", "text/plain", &failing, ""));
    let worker = suite.start_worker("1");
    let (id, _, _) = suite.enqueue_file("input.txt", b"hello\n");
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Dead, "retried, then dead: {job:?}");
    assert_eq!(job.attempts, 3);
    let error = job.error.unwrap_or_default();
    assert!(
        error.contains(
            "processor model: its server exited with status 1 while it worked on this file; the \
             end of its stderr: model file missing; it starts again for the next attempt"
        ),
        "{error}"
    );
    // One start with the worker and one after each of the three deaths (the last waits
    // 4 s: the third failure in a row), ready for the next file.
    suite.wait_for("not restarted after each death", &worker, || {
        lines_of(&starts).len() == 4
    });
    let log = worker.log();
    for (delay, in_a_row) in [("1 s", 1), ("2 s", 2), ("4 s", 3)] {
        assert!(
            log.contains(&format!(
                "processor model: its server is stopped; it starts again in {delay} (failure \
                 {in_a_row} in a row), or at once for a file that needs it"
            )),
            "{log}"
        );
    }
    assert_still_serving(&mut suite, &worker);
    drop(directory);
}

/// A server that dies in the middle of a job is started again and the job is retried on
/// the fresh server, which succeeds.
#[test]
fn a_server_dying_mid_job_is_restarted_and_the_job_retried_succeeds() {
    let (directory, root) = crate::support::scripts_dir();
    let (starts, died) = (root.join("starts"), root.join("died-once"));
    let fragile = script(
        &root,
        "fragile.sh",
        &format!(
            "echo \"start $$\" >> '{starts}'\n\
             while IFS= read -r line; do\n\
               if [ ! -e '{died}' ]; then : > '{died}'; kill -9 $$; fi\n\
               {READ_ID}\n\
               printf '{{\"id\":%s,\"metadata\":{{\"survived\":true}}}}\\n' \"$id\"\n\
             done\n",
            starts = starts.display(),
            died = died.display()
        ),
    );
    let mut suite = processor_suite(&server("fragile", "text/plain", &fragile, ""));
    let worker = suite.start_worker("1");
    let (id, _, _) = suite.enqueue_file("input.txt", b"hello\n");
    let job = suite.wait_for_end(id, &worker);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", worker.log());
    assert_eq!(job.attempts, 2, "{job:?}");
    let history = suite.store.job_history(id).unwrap();
    assert!(
        retried_because(
            &history,
            "processor fragile: its server was killed by signal 9 while it worked on this file"
        ),
        "{history:#?}"
    );
    assert_eq!(lines_of(&starts).len(), 2);
    let document = suite
        .store
        .get_document(job.result.unwrap()["document_id"].as_i64().unwrap())
        .unwrap();
    assert_eq!(
        document.metadata["processors"]["fragile"],
        json!({"survived": true})
    );
    drop(directory);
}

#[test]
fn a_server_answering_garbage_fails_the_job_clearly_and_is_restarted() {
    let (directory, root) = crate::support::scripts_dir();
    let starts = root.join("starts");
    let chatty = script(
        &root,
        "chatty.sh",
        &format!(
            "echo \"start $$\" >> '{}'\nwhile IFS= read -r line; do echo 'Loading model... done'; done\n",
            starts.display()
        ),
    );
    let mut suite = processor_suite(&server("chatty", "text/plain", &chatty, ""));
    let worker = suite.start_worker("1");
    for (index, name) in ["first.txt", "second.txt"].iter().enumerate() {
        let (id, _, _) = suite.enqueue_file(name, format!("file {index}\n").as_bytes());
        let job = suite.wait_for_end(id, &worker);
        assert_eq!(job.state, JobState::Failed, "not retried: {job:?}");
        let error = job.error.unwrap_or_default();
        assert!(
            error.starts_with("processor chatty answered something that is not a response line (")
                && error.contains("\"Loading model... done\"; its server was killed"),
            "{error}"
        );
    }
    // The one started with the worker, and a fresh one after each garbage answer.
    suite.wait_for("no fresh server after each garbage answer", &worker, || {
        lines_of(&starts).len() == 3
    });
    assert_still_serving(&mut suite, &worker);
    drop(directory);
}

/// The shipped config's commented OCR example, uncommented, with the real `tesseract`: a PNG
/// of rendered words becomes a document whose words a search finds.
#[test]
fn ocr_with_tesseract_makes_a_png_of_words_searchable() {
    if !Path::new("/usr/bin/tesseract").exists() {
        if nix::unistd::geteuid().is_root() {
            panic!("/usr/bin/tesseract is missing; tests/install-needs.sh installs it");
        }
        crate::support::skip("needs tesseract");
        return;
    }
    let shipped = include_str!("../config/sluice.toml");
    let example: String = shipped
        .lines()
        .skip_while(|line| *line != "# [[processor]]")
        .take_while(|line| line.starts_with('#'))
        .map(|line| format!("{}\n", line.trim_start_matches('#').trim_start()))
        .collect();
    assert!(example.contains("/usr/bin/tesseract"), "{example}");
    let suite = crate::support::Suite::start_with(&example, &[]);
    let png = text_png("SLUICE READS WORDS", 12);
    let mut response = http_agent()
        .post(format!(
            "{}/api/documents?name=scan.png&wait=120s",
            suite.web.origin
        ))
        .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
        .header("Content-Type", "application/octet-stream")
        .send(&png[..])
        .expect("upload");
    let body = response.body_mut().read_to_string().unwrap_or_default();
    let body: Value = serde_json::from_str(&body).expect("JSON");
    let job = &body["uploads"][0]["job"];
    assert_eq!(job["state"], "succeeded", "{body}\n{}", suite.logs());
    let document_id = job["document"]["id"].as_i64().expect("document id");
    let (_, document) = suite.get(&format!("/api/documents/{document_id}"));
    let (status, found) = suite.get("/api/documents?q=sluice");
    assert_eq!(status, 200, "{found}");
    let ids: Vec<i64> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| item["id"].as_i64())
        .collect();
    assert_eq!(
        ids,
        [document_id],
        "tesseract read: {:?}\n{found}",
        document["metadata"]["processors"]["ocr"]
    );
}

/// A server that answers, except for a file whose text says "hang"; each start records its
/// pid and a background sleeper's, to prove the whole group dies.
fn selective_server(root: &Path, pids: &Path) -> std::path::PathBuf {
    script(
        root,
        "selective.sh",
        &format!(
            "sleep 1000 &\necho \"$$ $!\" >> '{pids}'\n\
             while IFS= read -r line; do\n\
               {READ_ID}\n\
               path=$(printf '%s' \"$line\" | sed 's/.*\"path\":\"\\([^\"]*\\)\".*/\\1/')\n\
               if grep -q hang \"$path\"; then sleep 1000; fi\n\
               printf '{{\"id\":%s,\"metadata\":{{\"pid\":%s}}}}\\n' \"$id\" \"$$\"\n\
             done\n",
            pids = pids.display()
        ),
    )
}

/// A cancel while a server works on the job kills the server's whole group (it cannot be
/// told to drop one request); the next file starts a fresh server.
#[test]
fn cancelling_a_job_kills_its_busy_server_and_the_next_file_gets_a_fresh_one() {
    let (directory, root) = crate::support::scripts_dir();
    let pids = root.join("pids");
    let selective = selective_server(&root, &pids);
    let mut suite = processor_suite(&server("selective", "text/plain", &selective, ""));
    let mut worker = suite.start_worker("1");
    let (id, _, _) = suite.enqueue_file("slow.txt", b"please hang\n");
    suite.wait_for("the server never started", &worker, || {
        !lines_of(&pids).is_empty()
    });
    suite.wait_for("the job never reached its server", &worker, || {
        suite
            .job(id)
            .progress_message
            .is_some_and(|message| message == "processor selective")
    });
    suite.store.cancel_job(id).unwrap();
    assert_eq!(suite.wait_for_end(id, &worker).state, JobState::Cancelled);
    assert_first_runs_gone(&pids, 1);

    let (next, _, _) = suite.enqueue_file("quick.txt", b"quick\n");
    let job = suite.wait_for_end(next, &worker);
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", worker.log());
    assert_eq!(lines_of(&pids).len(), 2, "a fresh server");
    stop_worker(&mut worker);
    assert_no_process_left(&pids);
    drop(directory);
}

/// A server lives as long as its worker: SIGTERM stops the worker cleanly and its servers
/// with it; a reload that changes the server's entry replaces the server.
#[test]
fn a_reload_that_changes_a_server_replaces_it_and_stopping_the_worker_stops_it() {
    let (directory, root) = crate::support::scripts_dir();
    let pids = root.join("pids");
    let selective = selective_server(&root, &pids);
    let mut suite = processor_suite(&server(
        "selective",
        "text/plain",
        &selective,
        "timeout = \"30s\"",
    ));
    let mut worker = suite.start_worker("1");
    let (first, _, _) = suite.enqueue_file("one.txt", b"one\n");
    assert_eq!(
        suite.wait_for_end(first, &worker).state,
        JobState::Succeeded
    );
    let (again, _, _) = suite.enqueue_file("two.txt", b"two\n");
    assert_eq!(
        suite.wait_for_end(again, &worker).state,
        JobState::Succeeded
    );
    assert_eq!(lines_of(&pids).len(), 1, "kept across files");

    let config = std::fs::read_to_string(&suite.config_path).unwrap();
    std::fs::write(
        &suite.config_path,
        config.replace("timeout = \"30s\"", "timeout = \"31s\""),
    )
    .unwrap();
    worker
        .signal(nix::sys::signal::Signal::SIGHUP)
        .expect("signal the worker");
    worker.wait_for_log_lines(&["configuration reloaded"], 1, crate::support::DEADLINE);
    let (third, _, _) = suite.enqueue_file("three.txt", b"three\n");
    assert_eq!(
        suite.wait_for_end(third, &worker).state,
        JobState::Succeeded
    );
    let runs = lines_of(&pids);
    assert_eq!(
        runs.len(),
        2,
        "the changed entry got a new server: {runs:?}"
    );
    assert!(
        worker
            .log()
            .contains("processor selective: stopping its server (pid "),
        "{}",
        worker.log()
    );

    stop_worker(&mut worker);
    assert_no_process_left(&pids);
    drop(directory);
}

/// The shell lines that try what a confined processor must not do and what it may, and set
/// `$report` to a JSON object of the outcomes: read the database and its `-shm` file, list
/// the state directory, read the file it was given, open the database for writing (without
/// writing a byte), create a file in the library and in the state directory, create one in
/// its own `TMPDIR`, change the database's mode (to what it is: `chmod u+r`), and send signal
/// 0 to the worker (its parent). The script sets `$database`, `$state`, `$worker` and
/// `$input` first.
fn confinement_probe() -> String {
    // The commands name shell variables the scripts set first (`try`'s own $1 would hide a
    // script's positional parameters).
    let (database, state, worker_pid, input) = ("$database", "$state", "$worker", "$input");
    format!(
        "try() {{ if (eval \"$1\") 2>/dev/null; then echo allowed; else echo refused; fi; }}\n\
         db=$(try ': >> \"{database}\"')\n\
         read_db=$(try 'head -c 16 \"{database}\" > /dev/null')\n\
         read_wal=$(try 'head -c 1 \"{database}-shm\" > /dev/null')\n\
         list_state=$(try 'ls \"{state}\" > /dev/null')\n\
         input=$(try 'grep -q words \"{input}\"')\n\
         mode=$(try 'chmod u+r \"{database}\"')\n\
         library=$(try ': > \"{state}/library/planted-$$\"')\n\
         state=$(try ': > \"{state}/planted-$$\"')\n\
         tmp=$(try ': > \"$TMPDIR/mine\"')\n\
         signal=$(try 'kill -0 {worker_pid}')\n\
         report=\"{{\\\"read_database\\\":\\\"$read_db\\\",\\\"read_shm\\\":\\\"$read_wal\\\",\\\"list_state\\\":\\\"$list_state\\\",\\\"input\\\":\\\"$input\\\",\\\"database\\\":\\\"$db\\\",\\\"mode\\\":\\\"$mode\\\",\\\"library\\\":\\\"$library\\\",\\\"state\\\":\\\"$state\\\",\\\"tmpdir\\\":\\\"$tmp\\\",\\\"signal\\\":\\\"$signal\\\"}}\"\n"
    )
}

/// Whether this kernel scopes signals (Landlock ABI 6, Linux 6.12).
fn kernel_scopes_signals() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse::<u32>().ok());
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (6, 12)
}

/// The security review's finding: processors run as the daemons' user, which may write the
/// database, so a processor could plant a download row (and have the scraper send a
/// source's credentials anywhere). Confined by Landlock, a one-shot processor and a server
/// may each write only their own `TMPDIR`: opening the database for writing, creating a file
/// in the library or the state directory, and signalling the worker are all refused. The
/// next review's finding: they could read everything, the live database included (and hold
/// a read lock on its `-shm`, stalling writers). Now reading the database or its `-shm` file
/// and listing the state directory are refused, and reading the file they are given works.
#[test]
fn processors_write_only_their_temporary_folder_not_the_database_or_the_library() {
    let root = tempfile::tempdir().unwrap();
    let oneshot = script(
        root.path(),
        "oneshot-probe.sh",
        &format!(
            "input=$1 database=$2 state=$3 worker=$PPID\n{}printf '%s' \"$report\"\n",
            confinement_probe()
        ),
    );
    let server_program = script(
        root.path(),
        "server-probe.sh",
        &format!(
            "database=$1 state=$2 worker=$PPID\n\
             while IFS= read -r line; do\n\
               {READ_ID}\n\
               input=$(printf '%s' \"$line\" | sed 's/.*\"path\":\"\\([^\"]*\\)\".*/\\1/')\n\
               {}\
               printf '{{\"id\":%s,\"metadata\":%s}}\\n' \"$id\" \"$report\"\n\
             done\n",
            confinement_probe()
        ),
    );
    let tables = format!(
        "[[processor]]\nname = \"server_probe\"\nmime = \"text/plain\"\nmode = \"server\"\n\
         argv = [\"{}\", \"{{root}}/sluice.db\", \"{{root}}\"]\n\
         [[processor]]\nname = \"oneshot_probe\"\nmime = \"text/plain\"\n\
         argv = [\"{}\", \"{{path}}\", \"{{root}}/sluice.db\", \"{{root}}\"]\n",
        server_program.display(),
        oneshot.display()
    );
    let mut suite = crate::support::Suite::start_with(&tables, &[]);
    let body = upload_and_wait(&suite, "probe.txt", b"words for the probes\n");
    let job = &body["uploads"][0]["job"];
    if suite.logs().contains("Landlock is not available") {
        // A kernel without Landlock: the processors are not started at all.
        assert_ne!(job["state"], "succeeded", "{body}\n{}", suite.logs());
        assert!(suite.logs().contains("cannot confine it with Landlock"));
        return;
    }
    assert_eq!(job["state"], "succeeded", "{body}\n{}", suite.logs());
    let document_id = job["document"]["id"].as_i64().expect("document id");
    let (status, document) = suite.get(&format!("/api/documents/{document_id}"));
    assert_eq!(status, 200, "{document}");
    let signal = if kernel_scopes_signals() {
        "refused"
    } else {
        "allowed"
    };
    for name in ["server_probe", "oneshot_probe"] {
        let report = &document["metadata"]["processors"][name];
        assert_eq!(
            report,
            &json!({
                "read_database": "refused",
                "read_shm": "refused",
                "list_state": "refused",
                "input": "allowed",
                "database": "refused",
                "mode": "refused",
                "library": "refused",
                "state": "refused",
                "tmpdir": "allowed",
                "signal": signal,
            }),
            "{name}: {}",
            document["metadata"]
        );
    }
    // Nothing was planted anywhere; the workers are alive and the database is whole.
    for folder in [suite.root().to_path_buf(), suite.library()] {
        let planted: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("planted"))
            .collect();
        assert!(planted.is_empty(), "{planted:?} in {}", folder.display());
    }
    for worker in &mut suite.workers {
        assert!(worker.is_running(), "{}", worker.log());
    }
    let (status, jobs) = suite.get("/api/jobs?state=failed");
    assert_eq!(status, 200, "{jobs}");
    assert_eq!(jobs["items"], json!([]), "{jobs}");
}
