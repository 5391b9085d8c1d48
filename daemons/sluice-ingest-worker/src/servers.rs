//! Server processors (`[[processor]]` with `mode = "server"`): a long-lived program started
//! once per worker, when the worker starts, and kept for the worker's life, so a model it
//! loads is loaded once, not once per file (and is loading while the worker waits for its
//! first file). It answers one request per file.
//!
//! # Start and restart
//!
//! [`ProcessorServers::supervise`] runs at the start of every step that may claim jobs (see
//! `execute::Executor::step`): the first right after READY=1, then at least once a second
//! while the worker is idle (its poll is a step). It starts every configured server that is
//! not running, so each is spawned before the first claim and READY=1 never waits for one.
//! Starting is only a spawn: nothing waits for the program to load its model (the first
//! request's `timeout` covers that), so the first job waits a fork and exec per server at
//! most. A server that died, or that broke a request (see Faults), is started again after a
//! delay that doubles with each failure in a row, from [`RESTART_DELAY_FIRST`] up to
//! [`RESTART_DELAY_MAX`], each restart logged with the processor's name and the delay; a
//! server that answered a request, or ran [`RESTART_STABLE_AFTER`], starts the count again.
//! A file that needs a server that is not running does not wait for that delay: its request
//! starts the server at once, so a job's own retries bound how often it is started for them.
//!
//! # The protocol
//!
//! Line-delimited JSON: the worker writes one request line to the program's stdin and reads
//! one answer line from its stdout, one file at a time (the next request is written only after
//! the answer to the previous one). A request:
//!
//! ```json
//! {"id": 7, "path": "/var/lib/sluice/library/ab/cd/abcd…", "type": "image/png",
//!  "output_dir": "/tmp/sluice-ocr-Xy12/output-7"}
//! ```
//!
//! `path` is the file to read (its library path when consumed, its watched path when
//! indexed), `type` the detected MIME type, `output_dir` an empty folder for derived files.
//! The answer names the same `id` and any of:
//!
//! ```json
//! {"id": 7, "text": "words found", "metadata": {"lang": "eng"}, "files": ["page.hocr"]}
//! {"id": 7, "error": "cannot read the image", "retryable": false}
//! ```
//!
//! `text` is indexed with the document, `metadata` (any JSON value) is stored under
//! `processors.<name>`, `files` are names in `output_dir` filed into the library as derived
//! files. `error` fails the job (for good, or through the retry policy with
//! `"retryable": true`).
//!
//! # stderr
//!
//! A server's stderr is its log. From the moment it is spawned, a thread of its own
//! ([`drain_stderr`]) reads it to the end and forwards it to the worker's journal a line at a
//! time ("processor ocr (sluice-ingest-worker@1, pid 4242): loading model"), with the
//! processor, worker and pid as fields, and keeps its last [`STDERR_TAIL_BYTES`] for error
//! messages. A server that floods stderr can neither block on a full pipe (it is always read)
//! nor keep a job thread busy (the job thread never reads it) nor fill the journal: a line
//! is cut at [`STDERR_LINE_CHARS`], and lines are logged from a bucket of
//! [`STDERR_LINE_BURST`] refilled at [`STDERR_LINES_PER_SECOND`]; what the bucket refuses is
//! counted, not split into lines, and said once per [`STDERR_SUMMARY_INTERVAL`] at most.
//!
//! # Faults
//!
//! An answer must arrive within the processor's `timeout` (the first one after a start also
//! covers the program's start-up) and be at most `max_output` bytes. While a request is in
//! flight the server's process group is registered with the running job (`ProcessGroups`), so
//! a cancel, the job's timeout, a lost lease or the stop deadline kill it like any processor.
//! A server that times out, writes too much, exits, closes its stdout or answers anything but
//! a response line for the request is killed with its whole process group, and is started
//! again (see Start and restart). A crash or a timeout is retried like any failed attempt (so
//! the job in flight runs again on a fresh server); too much output and garbage fail the job
//! for good, since the same file would get the same answer. A server that writes when nobody
//! asked is restarted before the next request, so one stray line does not fail the next
//! job. A server whose `[[processor]]` entry changed on a reload is restarted with the new
//! one; one no longer configured is stopped. Every server is killed when the worker stops,
//! and none is started while it stops.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::config::{ProcessorConfig, ProcessorMode};
use sluice_core::ingest::seconds;
use sluice_core::policy;

use crate::derived::file_derived;
use crate::failure::IngestFailure;
use crate::isolation::{Input, PrivateTemp};
use crate::processors::{
    DerivedTarget, ProcessGroups, ProcessorOutput, Sandbox, cannot_start, kill_group,
    processor_command,
};

/// How often a call looks at its deadline and its job's flags while the server is quiet.
const CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How much of the end of stderr is kept for error messages.
const STDERR_TAIL_BYTES: usize = 2048;
/// The longest stderr line logged; the rest of a longer line is dropped.
const STDERR_LINE_CHARS: usize = 1000;
/// How many stderr lines of one server may be logged at once, and how fast the allowance
/// comes back: a server's start-up chatter gets through, a flood gets ten lines a second.
const STDERR_LINE_BURST: f64 = 100.0;
const STDERR_LINES_PER_SECOND: f64 = 10.0;
/// How often, at most, a server's unlogged stderr is summed up in the journal.
const STDERR_SUMMARY_INTERVAL: Duration = Duration::from_secs(2);
/// How long an error message waits for the stderr of a server that exited to be read to its
/// end (a process it left behind may hold it open).
const STDERR_EOF_WAIT: Duration = Duration::from_millis(500);
/// How much of a garbage answer an error message quotes.
const QUOTED_ANSWER_CHARS: usize = 200;
/// The delay before a server that failed once is started again; it doubles with each
/// further failure in a row, up to [`RESTART_DELAY_MAX`].
const RESTART_DELAY_FIRST: Duration = Duration::from_secs(1);
const RESTART_DELAY_MAX: Duration = Duration::from_secs(60);
/// A server that ran this long before it died is not part of a crash loop: its restart
/// waits the first delay again.
const RESTART_STABLE_AFTER: Duration = Duration::from_secs(60);

/// One request line.
#[derive(Debug, Serialize)]
struct Request<'a> {
    id: u64,
    path: &'a Path,
    #[serde(rename = "type")]
    mime: &'a str,
    output_dir: &'a Path,
}

/// One answer line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    id: u64,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    retryable: bool,
}

/// The running servers of one worker, by processor name.
#[derive(Debug, Default)]
pub struct ProcessorServers {
    servers: HashMap<String, Server>,
    /// The servers that failed lately, by processor name, and when each may start again.
    failures: HashMap<String, Failures>,
    /// How many servers this worker has started, for its logs.
    starts: u64,
    /// `sluice-ingest-worker@1`: named in the lines forwarded from its servers' stderr.
    worker_name: String,
    /// The folders servers may read beneath (see `isolation`), as the last
    /// [`ProcessorServers::supervise`] was told.
    readable: Vec<PathBuf>,
}

impl ProcessorServers {
    /// No server runs yet; `worker_name` is the worker's, for the logs.
    pub fn new(worker_name: &str) -> ProcessorServers {
        ProcessorServers {
            worker_name: worker_name.to_owned(),
            ..ProcessorServers::default()
        }
    }

    /// Keeps every server of `processors` running: stops those no longer configured as they
    /// were, forgets those that died (or broke a request), and starts each that is not
    /// running and whose restart delay is over. Called at the start of each step that may
    /// claim (the first right after READY=1), never while the worker stops.
    pub fn supervise(&mut self, processors: &[ProcessorConfig], readable: &[PathBuf]) {
        if self.readable != readable {
            // Servers started with other folders (a reload changed the library or the
            // watched folders) are started again with the new ones.
            self.readable = readable.to_vec();
            self.servers.clear();
        }
        self.retain_configured(processors);
        let now = Instant::now();
        for processor in processors
            .iter()
            .filter(|processor| processor.mode == ProcessorMode::Server)
        {
            let name = processor.name.as_str();
            if let Some(server) = self.servers.get_mut(name)
                && let Some(reason) = server.why_unusable()
            {
                let ran_for = server.started.elapsed();
                self.servers.remove(name);
                let delay = self.note_failure(name, ran_for);
                tracing::warn!(
                    processor = %name,
                    "processor {name}: its server {reason}; starting it again in {} (failure {} \
                     in a row)",
                    in_words(delay),
                    self.failures_in_a_row(name)
                );
            }
            if self.servers.contains_key(name)
                || self
                    .failures
                    .get(name)
                    .is_some_and(|failures| now < failures.not_before)
            {
                continue;
            }
            if let Err(failure) = self.start(processor) {
                let delay = self.note_failure(name, Duration::ZERO);
                tracing::warn!(
                    processor = %name,
                    "{failure}; trying again in {}",
                    in_words(delay)
                );
            }
        }
    }

    /// Stops the servers whose processor is no longer configured as it was.
    fn retain_configured(&mut self, processors: &[ProcessorConfig]) {
        self.failures
            .retain(|name, _| processors.iter().any(|processor| processor.name == *name));
        self.servers.retain(|name, server| {
            let kept = processors.contains(&server.config);
            if !kept {
                tracing::info!(
                    processor = %name,
                    "processor {name}: stopping its server (pid {}): its [[processor]] entry \
                     changed or was removed",
                    server.group
                );
            }
            kept
        });
    }

    /// Asks `processor`'s server (started first if it is not running) about the file at
    /// `path`. `check` is asked about the job's flags every [`CHECK_INTERVAL`] at most; an
    /// error from it ends the call and the server.
    pub fn call(
        &mut self,
        processor: &ProcessorConfig,
        path: &Path,
        mime: &str,
        target: DerivedTarget<'_>,
        groups: &ProcessGroups,
        check: &mut dyn FnMut() -> Result<(), IngestFailure>,
    ) -> Result<ProcessorOutput, IngestFailure> {
        let name = processor.name.as_str();
        if let Some(server) = self.servers.get_mut(name)
            && let Some(reason) = server.why_unusable()
        {
            tracing::warn!(
                processor = %name,
                "processor {name}: its server {reason}; starting it again"
            );
            self.servers.remove(name);
        }
        if !self.servers.contains_key(name)
            && let Err(failure) = self.start(processor)
        {
            self.note_failure(name, Duration::ZERO);
            return Err(failure);
        }
        let server = self
            .servers
            .get_mut(name)
            .expect("the server was started above");
        match server.ask(path, mime, target, groups, check) {
            Ok(output) => {
                self.failures.remove(name);
                Ok(output)
            }
            Err(Ask::Failed(failure)) => {
                // It answered: it works, whatever it thought of this file.
                self.failures.remove(name);
                Err(failure)
            }
            Err(Ask::Broken(failure)) => {
                // The server's state is unknown (or it is gone): it is killed now, and started
                // again by the next supervision or the next file that needs it.
                let ran_for = server.started.elapsed();
                self.servers.remove(name);
                let delay = self.note_failure(name, ran_for);
                tracing::info!(
                    processor = %name,
                    "processor {name}: its server is stopped; it starts again in {} (failure {} \
                     in a row), or at once for a file that needs it",
                    in_words(delay),
                    self.failures_in_a_row(name)
                );
                Err(failure)
            }
        }
    }

    /// Starts `processor`'s server and keeps it.
    fn start(&mut self, processor: &ProcessorConfig) -> Result<(), IngestFailure> {
        let name = processor.name.as_str();
        self.starts += 1;
        let server = Server::start(processor, &self.worker_name, &self.readable)?;
        tracing::info!(
            processor = %name,
            pid = server.group.as_raw(),
            "processor {name}: server started as pid {} (server start {} of this worker)",
            server.group,
            self.starts
        );
        self.servers.insert(name.to_owned(), server);
        Ok(())
    }

    fn failures_in_a_row(&self, name: &str) -> u32 {
        self.failures
            .get(name)
            .map_or(0, |failures| failures.in_a_row)
    }

    /// Counts a failure of `name`'s server, which ran for `ran_for`, and returns how long its
    /// restart waits.
    fn note_failure(&mut self, name: &str, ran_for: Duration) -> Duration {
        let failures = self.failures.entry(name.to_owned()).or_default();
        failures.in_a_row = if ran_for >= RESTART_STABLE_AFTER {
            1
        } else {
            failures.in_a_row.saturating_add(1)
        };
        let delay = restart_delay(failures.in_a_row);
        failures.not_before = Instant::now() + delay;
        delay
    }
}

/// The failures in a row of one processor's server.
#[derive(Debug)]
struct Failures {
    in_a_row: u32,
    /// No supervised start before this.
    not_before: Instant,
}

impl Default for Failures {
    fn default() -> Failures {
        Failures {
            in_a_row: 0,
            not_before: Instant::now(),
        }
    }
}

/// The delay before the restart after `in_a_row` failures in a row (from 1): the first
/// delay, doubled for each failure after the first, at most the longest.
fn restart_delay(in_a_row: u32) -> Duration {
    let doublings = in_a_row.saturating_sub(1).min(16);
    RESTART_DELAY_FIRST
        .saturating_mul(1 << doublings)
        .min(RESTART_DELAY_MAX)
}

/// "1 s", "2 s", "60 s".
fn in_words(delay: Duration) -> String {
    format!("{} s", delay.as_secs())
}

/// How a call ended without an answer to use.
enum Ask {
    /// The server answered with an error, or the answer's files could not be filed; it stays.
    Failed(IngestFailure),
    /// The server must go.
    Broken(IngestFailure),
}

/// One running server.
#[derive(Debug)]
struct Server {
    config: ProcessorConfig,
    child: Child,
    /// The server's pid, the id of the process group it leads.
    group: Pid,
    /// When it was spawned.
    started: Instant,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Bytes of stdout read but not yet part of an answer.
    unread: Vec<u8>,
    /// The end of stderr, kept by its drain thread.
    stderr: Arc<StderrTail>,
    /// The server's `TMPDIR`, holding each request's output folder; removed when it stops.
    temp: PrivateTemp,
    next_id: u64,
}

impl Server {
    fn start(
        config: &ProcessorConfig,
        worker_name: &str,
        readable: &[PathBuf],
    ) -> Result<Server, IngestFailure> {
        let name = &config.name;
        let temp = PrivateTemp::new(name).map_err(|error| {
            IngestFailure::Retryable(format!(
                "processor {name}: cannot create its private temporary folder: {error}"
            ))
        })?;
        let argv: Vec<std::ffi::OsString> = config.argv.iter().map(Into::into).collect();
        let sandbox = Sandbox {
            temp: temp.path(),
            writable: &config.writable,
            readable,
        };
        let mut command = processor_command(&argv, Stdio::piped(), Some(sandbox), Input::None);
        let mut child = command
            .spawn()
            .map_err(|error| cannot_start(name, &argv[0], &error))?;
        let group = Pid::from_raw(child.id() as i32);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            kill_group(group);
            let _ = child.wait();
            return Err(IngestFailure::Retryable(format!(
                "processor {name}: its pipes are missing"
            )));
        };
        // Writes must never block the job: a server that stops reading its requests is
        // found out by the request's deadline. stderr is read by a thread of its own, which
        // blocks on it.
        for descriptor in [stdin.as_fd(), stdout.as_fd()] {
            let _ = fcntl(descriptor, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        }
        let tail = Arc::new(StderrTail::default());
        let source = StderrSource {
            processor: name.clone(),
            worker: worker_name.to_owned(),
            pid: group.as_raw(),
        };
        let drained = Arc::clone(&tail);
        let spawned = std::thread::Builder::new()
            .name(format!("stderr-{name}"))
            .spawn(move || drain_stderr(stderr, &source, &drained));
        if let Err(error) = spawned {
            kill_group(group);
            let _ = child.wait();
            return Err(IngestFailure::Retryable(format!(
                "processor {name}: cannot start the thread that reads its stderr: {error}"
            )));
        }
        Ok(Server {
            config: config.clone(),
            child,
            group,
            started: Instant::now(),
            stdin,
            stdout,
            unread: Vec::new(),
            stderr: tail,
            temp,
            next_id: 1,
        })
    }

    /// Why this server cannot take a request now (it exited, or wrote to stdout while nobody
    /// asked), or `None`.
    fn why_unusable(&mut self) -> Option<String> {
        let _ = self.read_available();
        if let Some(status) = self.exit_status() {
            return Some(format!("{status}{}", self.stderr_note()));
        }
        if !self.unread.is_empty() {
            return Some(format!(
                "wrote to stdout while no request was open ({})",
                quote(&self.unread)
            ));
        }
        None
    }

    fn ask(
        &mut self,
        path: &Path,
        mime: &str,
        target: DerivedTarget<'_>,
        groups: &ProcessGroups,
        check: &mut dyn FnMut() -> Result<(), IngestFailure>,
    ) -> Result<ProcessorOutput, Ask> {
        let name = self.config.name.clone();
        let id = self.next_id;
        self.next_id += 1;
        let output_dir = self
            .temp
            .output_folder(&format!("output-{id}"))
            .map_err(|error| {
                Ask::Broken(IngestFailure::Retryable(format!(
                    "processor {name}: cannot create the output folder of request {id}: {error}"
                )))
            })?;
        let mut line = serde_json::to_vec(&Request {
            id,
            path,
            mime,
            output_dir: &output_dir,
        })
        .expect("a request serializes");
        line.push(b'\n');
        groups.register(self.group);
        let answer = self.exchange(&line, check);
        // Unregistered before anything can reap the server: its group id stays its own until
        // then (see `processors`).
        groups.unregister(self.group);
        let answer = answer.map_err(Ask::Broken)?;
        let answer: Answer = serde_json::from_slice(&answer).map_err(|error| {
            Ask::Broken(IngestFailure::Permanent(format!(
                "processor {name} answered something that is not a response line ({error}): \
                 {}; its server was killed and starts again for the next file",
                quote(&answer)
            )))
        })?;
        if answer.id != id {
            return Err(Ask::Broken(IngestFailure::Permanent(format!(
                "processor {name} answered request {} while request {id} was asked; its server \
                 was killed and starts again for the next file",
                answer.id
            ))));
        }
        let result = match answer.error {
            Some(error) => {
                let message = format!("processor {name} could not process the file: {error}");
                Err(Ask::Failed(if answer.retryable {
                    IngestFailure::Retryable(message)
                } else {
                    IngestFailure::Permanent(message)
                }))
            }
            None => file_derived(
                target.library,
                target.blake3,
                &name,
                &output_dir,
                Some(&answer.files),
                self.config.max_output,
            )
            .map(|files| ProcessorOutput {
                metadata: answer.metadata.unwrap_or(Value::Null),
                text: answer.text.filter(|text| !text.trim().is_empty()),
                files,
            })
            .map_err(Ask::Failed),
        };
        if let Err(error) = std::fs::remove_dir_all(&output_dir) {
            tracing::warn!(
                processor = %name,
                "processor {name}: cannot remove the output folder {}: {error}",
                output_dir.display()
            );
        }
        result
    }

    /// Writes `request` and reads the answer line (without its newline).
    fn exchange(
        &mut self,
        request: &[u8],
        check: &mut dyn FnMut() -> Result<(), IngestFailure>,
    ) -> Result<Vec<u8>, IngestFailure> {
        let name = self.config.name.clone();
        let deadline = Instant::now() + self.config.timeout;
        let max_output = self.config.max_output;
        let mut written = 0;
        loop {
            if let Some(end) = self.unread.iter().position(|byte| *byte == b'\n') {
                if written < request.len() {
                    return Err(IngestFailure::Permanent(format!(
                        "processor {name} answered before it read its request: {}; its server \
                         was killed and starts again for the next file",
                        quote(&self.unread[..end])
                    )));
                }
                let mut answer: Vec<u8> = self.unread.drain(..=end).collect();
                answer.pop();
                if answer.len() as u64 > max_output {
                    return Err(too_long(&name, max_output));
                }
                return Ok(answer);
            }
            if self.unread.len() as u64 > max_output {
                return Err(too_long(&name, max_output));
            }
            check()?;
            if let Some(status) = self.exit_status() {
                let _ = self.read_available();
                if self.unread.contains(&b'\n') {
                    // It answered, then exited: the answer counts, and the next file finds
                    // the server gone and starts it again.
                    continue;
                }
                // Killed because its job was cancelled, timed out or stopped (by the main
                // loop, after the check above): that is the job's failure, not the server's.
                check()?;
                return Err(IngestFailure::Retryable(format!(
                    "processor {name}: its server {status} while it worked on this file{}; it \
                     starts again for the next attempt",
                    self.stderr_note()
                )));
            }
            if Instant::now() >= deadline {
                return Err(IngestFailure::Retryable(format!(
                    "processor {name} did not answer within its timeout of {} s; its server was \
                     killed with its process group and starts again for the next attempt",
                    seconds(self.config.timeout)
                )));
            }
            let wait = CHECK_INTERVAL.min(deadline.saturating_duration_since(Instant::now()));
            let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
            let wants_to_write = written < request.len();
            let (stdout_ready, stdin_ready) = {
                // Index 0 stdout, 1 stdin (or a second stdout entry that asks for nothing).
                let mut descriptors = [
                    PollFd::new(self.stdout.as_fd(), PollFlags::POLLIN),
                    if wants_to_write {
                        PollFd::new(self.stdin.as_fd(), PollFlags::POLLOUT)
                    } else {
                        PollFd::new(self.stdout.as_fd(), PollFlags::empty())
                    },
                ];
                match poll(&mut descriptors, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(error) => {
                        return Err(IngestFailure::Retryable(format!(
                            "processor {name}: cannot poll its pipes: {error}"
                        )));
                    }
                }
                let events = |index: usize| {
                    descriptors
                        .get(index)
                        .and_then(|descriptor| descriptor.revents())
                        .unwrap_or(PollFlags::empty())
                };
                (
                    !events(0).is_empty(),
                    wants_to_write && !events(1).is_empty(),
                )
            };
            if stdin_ready {
                match self.stdin.write(&request[written..]) {
                    Ok(count) => written += count,
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(error) => {
                        // A closed stdin (EPIPE): the server is exiting; its exit says more.
                        self.wait_briefly_for_exit();
                        check()?;
                        let status = self
                            .exit_status()
                            .unwrap_or_else(|| format!("closed its stdin ({error})"));
                        return Err(IngestFailure::Retryable(format!(
                            "processor {name}: its server {status} before it took the request{}; \
                             it starts again for the next attempt",
                            self.stderr_note()
                        )));
                    }
                }
            }
            if stdout_ready {
                let at_end = self.read_available();
                if at_end && !self.unread.contains(&b'\n') {
                    self.wait_briefly_for_exit();
                    check()?;
                    let status = self
                        .exit_status()
                        .unwrap_or_else(|| "closed its stdout".to_owned());
                    return Err(IngestFailure::Retryable(format!(
                        "processor {name}: its server {status} while it worked on this file{}; \
                         it starts again for the next attempt",
                        self.stderr_note()
                    )));
                }
            }
        }
    }

    /// Reads whatever stdout holds now without blocking, kept up to one byte past
    /// `max_output` (enough to know it is too much). Returns whether stdout is at its end.
    fn read_available(&mut self) -> bool {
        let mut buffer = [0u8; 64 * 1024];
        let mut at_end = false;
        loop {
            if self.unread.len() as u64 > self.config.max_output {
                break;
            }
            match self.stdout.read(&mut buffer) {
                Ok(0) => {
                    at_end = true;
                    break;
                }
                Ok(count) => self.unread.extend_from_slice(&buffer[..count]),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        at_end
    }

    /// How the server ended ("exited with status 1"), without reaping it, or `None` while
    /// it runs.
    fn exit_status(&self) -> Option<String> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.group), flags) {
            Ok(WaitStatus::Exited(_, code)) => Some(format!("exited with status {code}")),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                Some(format!("was killed by signal {}", signal as i32))
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => None,
            Ok(other) => Some(format!("ended ({other:?})")),
            Err(error) => Some(format!("cannot be waited for ({error})")),
        }
    }

    /// A server that closed a pipe is usually exiting: give it a moment, so the error can
    /// say how it ended.
    fn wait_briefly_for_exit(&self) {
        let until = Instant::now() + Duration::from_millis(500);
        while self.exit_status().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The end of the server's stderr for an error message. A server that exited has its
    /// stderr read to the end first (for at most [`STDERR_EOF_WAIT`]), so the message has its
    /// last words.
    fn stderr_note(&self) -> String {
        if self.exit_status().is_some() {
            self.stderr.wait_for_end(STDERR_EOF_WAIT);
        }
        let tail = self.stderr.tail();
        let text = policy::controls_as_spaces(String::from_utf8_lossy(&tail).trim(), true);
        if text.is_empty() {
            String::new()
        } else {
            format!("; the end of its stderr: {text}")
        }
    }
}

impl Drop for Server {
    /// Kills the server's process group, then reaps it (it is registered with no job at
    /// this point, so its group id cannot be reused before the kill).
    fn drop(&mut self) {
        kill_group(self.group);
        match self.child.wait() {
            Ok(status) => tracing::debug!(
                processor = %self.config.name,
                "processor {}: server pid {} stopped ({:?})",
                self.config.name,
                self.group,
                status.code().or(status.signal())
            ),
            Err(error) => tracing::warn!(
                processor = %self.config.name,
                "processor {}: cannot reap server pid {}: {error}",
                self.config.name,
                self.group
            ),
        }
    }
}

/// Whose stderr a drain thread reads, for its log lines.
#[derive(Debug, Clone)]
struct StderrSource {
    processor: String,
    worker: String,
    pid: i32,
}

/// The end of a server's stderr, shared by its drain thread and the error messages.
#[derive(Debug, Default)]
struct StderrTail {
    state: Mutex<TailState>,
    ended: Condvar,
}

#[derive(Debug, Default)]
struct TailState {
    bytes: Vec<u8>,
    at_end: bool,
}

impl StderrTail {
    fn push(&self, bytes: &[u8]) {
        let mut state = self.lock();
        state.bytes.extend_from_slice(bytes);
        let excess = state.bytes.len().saturating_sub(STDERR_TAIL_BYTES);
        state.bytes.drain(..excess);
    }

    fn end(&self) {
        self.lock().at_end = true;
        self.ended.notify_all();
    }

    fn tail(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    /// Waits until stderr is read to its end, at most `limit`.
    fn wait_for_end(&self, limit: Duration) {
        let state = self.lock();
        let _ = self
            .ended
            .wait_timeout_while(state, limit, |state| !state.at_end);
    }

    /// The state holds no invariant a panic could break halfway.
    fn lock(&self) -> std::sync::MutexGuard<'_, TailState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The drain thread of one server's stderr: reads it to its end, keeps its tail and forwards
/// it to the journal a line at a time within the rate limit (see the module's "stderr").
fn drain_stderr(mut stderr: ChildStderr, source: &StderrSource, tail: &StderrTail) {
    let mut limiter = StderrLimiter::new(Instant::now());
    let mut line = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let count = match stderr.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::warn!(
                    processor = %source.processor,
                    "processor {}: cannot read its server's stderr: {error}",
                    source.processor
                );
                break;
            }
        };
        let bytes = &buffer[..count];
        tail.push(bytes);
        let now = Instant::now();
        for piece in bytes.split_inclusive(|byte| *byte == b'\n') {
            let complete = piece.ends_with(b"\n");
            if line.len() < STDERR_LINE_CHARS * 4 {
                line.extend_from_slice(&piece[..piece.len().min(STDERR_LINE_CHARS * 4)]);
            }
            if complete {
                limiter.line(now, &line, source);
                line.clear();
            }
        }
        limiter.summarize_if_due(now, source);
    }
    if !line.is_empty() {
        limiter.line(Instant::now(), &line, source);
    }
    limiter.summarize(source);
    tail.end();
}

/// The token bucket of one server's stderr lines, and what it refused since it last said so.
struct StderrLimiter {
    allowance: f64,
    refilled: Instant,
    refused: u64,
    last_summary: Instant,
}

impl StderrLimiter {
    fn new(now: Instant) -> StderrLimiter {
        StderrLimiter {
            allowance: STDERR_LINE_BURST,
            refilled: now,
            refused: 0,
            last_summary: now,
        }
    }

    fn allows(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.allowance =
            (self.allowance + elapsed * STDERR_LINES_PER_SECOND).min(STDERR_LINE_BURST);
        self.refilled = now;
        if self.allowance >= 1.0 {
            self.allowance -= 1.0;
            true
        } else {
            self.refused += 1;
            false
        }
    }

    /// Logs `line` (a line of stderr, maybe with its newline) if the bucket allows.
    fn line(&mut self, now: Instant, line: &[u8], source: &StderrSource) {
        if !self.allows(now) {
            return;
        }
        let text: String = policy::controls_as_spaces(
            &String::from_utf8_lossy(line)
                .trim_end()
                .chars()
                .take(STDERR_LINE_CHARS)
                .collect::<String>(),
            false,
        );
        tracing::info!(
            processor = %source.processor,
            worker = %source.worker,
            pid = source.pid,
            "processor {} ({}, pid {}): {text}",
            source.processor,
            source.worker,
            source.pid
        );
    }

    fn summarize_if_due(&mut self, now: Instant, source: &StderrSource) {
        if self.refused > 0 && now.duration_since(self.last_summary) >= STDERR_SUMMARY_INTERVAL {
            self.summarize(source);
            self.last_summary = now;
        }
    }

    fn summarize(&mut self, source: &StderrSource) {
        if self.refused == 0 {
            return;
        }
        tracing::warn!(
            processor = %source.processor,
            worker = %source.worker,
            pid = source.pid,
            "processor {} ({}, pid {}): {} more lines of stderr not logged (at most {} a \
             second are)",
            source.processor,
            source.worker,
            source.pid,
            self.refused,
            STDERR_LINES_PER_SECOND
        );
        self.refused = 0;
    }
}

fn too_long(name: &str, max_output: u64) -> IngestFailure {
    IngestFailure::Permanent(format!(
        "processor {name} wrote an answer longer than its max_output of {max_output} bytes; its \
         server was killed with its process group and starts again for the next file"
    ))
}

/// The start of `bytes` as text fit for an error message.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut quoted: String = text.chars().take(QUOTED_ANSWER_CHARS).collect();
    if text.chars().count() > QUOTED_ANSWER_CHARS {
        quoted.push('…');
    }
    format!("{quoted:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_delay_doubles_with_failures_in_a_row_and_is_bounded() {
        let delays: Vec<u64> = (1..=9)
            .map(|in_a_row| restart_delay(in_a_row).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(restart_delay(u32::MAX), RESTART_DELAY_MAX);
    }
}
