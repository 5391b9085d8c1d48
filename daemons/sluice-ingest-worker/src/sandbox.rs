//! The worker's side of built-in extraction: every file whose type has a parser (PDF, image,
//! HTML, archive) is parsed by a child process, so a hostile file can end only that child.
//!
//! The child is this same program started again (`/proc/self/exe`, so an upgrade that
//! replaced the file on disk still runs the matching code) with the hidden
//! [`extract::CHILD_ARGUMENT`]. It gets:
//!
//! - the file on its stdin: a copy of the descriptor this worker opened (without following
//!   symlinks) and hashed, so it reads exactly the content that was hashed, and never a path;
//! - an empty environment (no `NOTIFY_SOCKET`, `WATCHDOG_*` or `LISTEN_*`: it cannot speak
//!   to systemd as the worker), "/" as its working folder, no other descriptor (Rust opens
//!   everything close-on-exec);
//! - a process group of its own, registered with the running job ([`ProcessGroups`]), so a
//!   cancel, the job's timeout or the worker's shutdown kills it like a processor;
//! - limits it sets on itself before reading a byte: address space
//!   (`[ingest] extract_max_memory`), CPU time (what is left of the job's timeout), no file
//!   writes, no core dumps, few descriptors.
//!
//! Its stdout is read as it comes, one JSON record a line: each page is handed to the job as
//! it arrives (a step in the job's log), and more than [`output_limit`] bytes kill it. How it
//! ended decides the job's error: a `refused` record is the parser's own reason; a death by a
//! signal or a non-zero exit names the limit it ran into where that is known.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use serde_json::Value;
use sluice_core::ingest::seconds;
use sluice_core::policy;

use crate::extract::{CHILD_ARGUMENT, Kind, Record, Request};
use crate::failure::IngestFailure;
use crate::processors::{ProcessGroups, kill_group};

/// The program the child runs: this one.
const SELF: &str = "/proc/self/exe";
/// How often the parent looks at the job's flags while the child is quiet.
const CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How much of the end of the child's stderr is kept for an error message.
const STDERR_TAIL_BYTES: usize = 2048;

/// What the child found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extraction {
    /// Merged into the document's metadata.
    pub metadata: Value,
    /// Text without pages (HTML).
    pub text: Option<String>,
    /// Each page's text, page 1 first (PDF).
    pub pages: Vec<String>,
}

/// The limits of one child.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub text_max_bytes: u64,
    pub max_pages: u32,
    pub max_memory: u64,
    /// CPU time; the wall clock is the job's own deadline, watched by `check`.
    pub cpu: Duration,
}

/// Most bytes of records a child may write for `text_max_bytes` of text: JSON escapes a byte
/// as at most six (`\u0000`), and each page's record adds its frame.
pub fn output_limit(limits: &Limits) -> u64 {
    limits
        .text_max_bytes
        .saturating_mul(6)
        .saturating_add(u64::from(limits.max_pages).saturating_mul(64))
        .saturating_add(4 << 20)
}

/// Runs the parser for `kind` on `file` in a child (see the module documentation).
/// `check` is asked about the job's flags (cancel, stop, timeout) at least every
/// [`CHECK_INTERVAL`]; `on_page(number, text)` is called as each page arrives. Either
/// returning an error ends the child and the extraction with that error.
pub fn extract(
    kind: Kind,
    file: &File,
    limits: &Limits,
    groups: &ProcessGroups,
    check: &mut dyn FnMut() -> Result<(), IngestFailure>,
    on_page: &mut dyn FnMut(u32, &str) -> Result<(), IngestFailure>,
) -> Result<Extraction, IngestFailure> {
    let request = Request {
        kind,
        text_max_bytes: limits.text_max_bytes,
        max_pages: limits.max_pages,
        max_memory: limits.max_memory,
        max_cpu_seconds: limits.cpu.as_secs().max(1),
    };
    let request_text = serde_json::to_string(&request).map_err(|error| {
        IngestFailure::Permanent(format!("cannot describe extraction: {error}"))
    })?;
    let stdin = file.try_clone().map_err(|error| {
        IngestFailure::Retryable(format!("cannot hand the file to the extractor: {error}"))
    })?;
    let mut child = Command::new(SELF)
        .arg(CHILD_ARGUMENT)
        .arg(request_text)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|error| {
            IngestFailure::Retryable(format!("cannot start the extractor: {error}"))
        })?;
    // The child called setpgid(0, 0) before exec, so its pid is its group's id.
    let group = Pid::from_raw(child.id() as i32);
    groups.register(group);
    let mut run = Run {
        child: &mut child,
        group,
        pending: Vec::new(),
        stderr_tail: Vec::new(),
        output_bytes: 0,
        output_limit: output_limit(limits),
        extraction: Extraction::default(),
        last: None,
    };
    let supervised = run.supervise(check, on_page);
    // Whatever happened, nothing of the child's group outlives the extraction.
    kill_group(group);
    groups.unregister(group);
    let status = run.child.wait();
    let (last, stderr) = (run.last.take(), run.stderr_text());
    let extraction = std::mem::take(&mut run.extraction);
    supervised?;
    let status = status.map_err(|error| {
        IngestFailure::Retryable(format!("cannot wait for the extractor: {error}"))
    })?;
    match last {
        Some(Record::Done { metadata, text }) => Ok(Extraction {
            metadata,
            text,
            ..extraction
        }),
        Some(Record::Refused { reason }) => Err(IngestFailure::Permanent(reason)),
        _ => Err(IngestFailure::Permanent(death(
            kind, status, limits, &stderr,
        ))),
    }
}

/// Why a child that gave no answer ended, for the job's error.
fn death(kind: Kind, status: std::process::ExitStatus, limits: &Limits, stderr: &str) -> String {
    let what = format!("the {kind:?} extractor", kind = kind).to_lowercase();
    let memory = || {
        format!(
            "{what} needed more than [ingest] extract_max_memory ({} MiB) and was stopped",
            limits.max_memory >> 20
        )
    };
    if stderr.contains("memory allocation of") || stderr.contains("capacity overflow") {
        return memory();
    }
    match (status.code(), status.signal()) {
        (_, Some(signal)) if signal == libc::SIGXCPU => format!(
            "{what} used more than {} s of CPU time and was stopped",
            seconds(limits.cpu)
        ),
        (_, Some(signal)) if signal == libc::SIGSEGV => format!(
            "{what} crashed (segmentation fault, likely its stack: a file nested too deeply)"
        ),
        (_, Some(signal)) if signal == libc::SIGABRT && stderr.contains("stack overflow") => {
            format!("{what} overflowed its stack (a file nested too deeply)")
        }
        (_, Some(signal)) => format!("{what} was killed by signal {signal}{}", tail_of(stderr)),
        (Some(101), _) => format!("{what} failed on this file{}", tail_of(stderr)),
        (Some(code), _) => format!("{what} exited with status {code}{}", tail_of(stderr)),
        (None, None) => format!("{what} ended with {status}"),
    }
}

fn tail_of(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// One child being read.
struct Run<'a> {
    child: &'a mut Child,
    group: Pid,
    /// Bytes of stdout after the last complete line.
    pending: Vec<u8>,
    stderr_tail: Vec<u8>,
    output_bytes: u64,
    output_limit: u64,
    extraction: Extraction,
    /// The `done` or `refused` record, once it came.
    last: Option<Record>,
}

impl Run<'_> {
    /// Reads the child's output until it exits and its pipes are at their end, or until the
    /// job's flags, too much output or a bad record end it early.
    fn supervise(
        &mut self,
        check: &mut dyn FnMut() -> Result<(), IngestFailure>,
        on_page: &mut dyn FnMut(u32, &str) -> Result<(), IngestFailure>,
    ) -> Result<(), IngestFailure> {
        let mut stdout = self.child.stdout.take();
        let mut stderr = self.child.stderr.take();
        loop {
            self.read_ready(&mut stdout, &mut stderr, on_page)?;
            if self.output_bytes > self.output_limit {
                return Err(IngestFailure::Permanent(format!(
                    "the extractor wrote more than {} bytes; it was stopped",
                    self.output_limit
                )));
            }
            check()?;
            if stdout.is_none() && stderr.is_none() {
                return Ok(());
            }
            // The pipes end when the child exits (nothing else of its group holds them),
            // unless something of its group lives on: then the exit is what counts.
            if stdout.is_none() && self.has_exited()? {
                return Ok(());
            }
        }
    }

    fn read_ready(
        &mut self,
        stdout: &mut Option<ChildStdout>,
        stderr: &mut Option<ChildStderr>,
        on_page: &mut dyn FnMut(u32, &str) -> Result<(), IngestFailure>,
    ) -> Result<(), IngestFailure> {
        let timeout = PollTimeout::try_from(CHECK_INTERVAL).unwrap_or(PollTimeout::MAX);
        let (stdout_ready, stderr_ready) = {
            let mut descriptors = Vec::with_capacity(2);
            if let Some(pipe) = stdout.as_ref() {
                descriptors.push((true, PollFd::new(pipe.as_fd(), PollFlags::POLLIN)));
            }
            if let Some(pipe) = stderr.as_ref() {
                descriptors.push((false, PollFd::new(pipe.as_fd(), PollFlags::POLLIN)));
            }
            let mut polled: Vec<PollFd<'_>> = descriptors
                .iter()
                .map(|(_, descriptor)| descriptor.clone())
                .collect();
            match poll(&mut polled, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(error) => {
                    return Err(IngestFailure::Retryable(format!(
                        "cannot poll the extractor's output: {error}"
                    )));
                }
            }
            let ready = |wanted: bool| {
                descriptors
                    .iter()
                    .zip(&polled)
                    .any(|((is_stdout, _), descriptor)| {
                        *is_stdout == wanted && descriptor.any().unwrap_or(false)
                    })
            };
            (ready(true), ready(false))
        };
        let mut buffer = [0u8; 64 * 1024];
        if stdout_ready && let Some(pipe) = stdout.as_mut() {
            match pipe.read(&mut buffer) {
                Ok(0) => *stdout = None,
                Ok(count) => {
                    self.output_bytes += count as u64;
                    self.pending.extend_from_slice(&buffer[..count]);
                    self.take_lines(on_page)?;
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return Err(IngestFailure::Retryable(format!(
                        "cannot read the extractor's output: {error}"
                    )));
                }
            }
        }
        if stderr_ready && let Some(pipe) = stderr.as_mut() {
            match pipe.read(&mut buffer) {
                Ok(0) => *stderr = None,
                Ok(count) => {
                    self.stderr_tail.extend_from_slice(&buffer[..count]);
                    let excess = self.stderr_tail.len().saturating_sub(STDERR_TAIL_BYTES);
                    self.stderr_tail.drain(..excess);
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                // stderr only explains a failure; losing it is no reason for one.
                Err(_) => *stderr = None,
            }
        }
        Ok(())
    }

    /// Handles the complete lines received so far.
    fn take_lines(
        &mut self,
        on_page: &mut dyn FnMut(u32, &str) -> Result<(), IngestFailure>,
    ) -> Result<(), IngestFailure> {
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|byte| *byte == b'\n') {
            let line = &self.pending[start..start + end];
            start += end + 1;
            let record: Record = serde_json::from_slice(line).map_err(|error| {
                IngestFailure::Permanent(format!("the extractor answered garbage: {error}"))
            })?;
            if self.last.is_some() {
                return Err(IngestFailure::Permanent(
                    "the extractor wrote past its last record".into(),
                ));
            }
            match record {
                Record::Page { number, text } => {
                    let expected = self.extraction.pages.len() as u32 + 1;
                    if number != expected {
                        return Err(IngestFailure::Permanent(format!(
                            "the extractor reported page {number} where page {expected} was due"
                        )));
                    }
                    on_page(number, &text)?;
                    self.extraction.pages.push(text);
                }
                last => self.last = Some(last),
            }
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// Whether the child has exited, without reaping it: its pid, the group's id, stays
    /// reserved until it is killed and reaped.
    fn has_exited(&self) -> Result<bool, IngestFailure> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.group), flags) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => Ok(false),
            Ok(_) => Ok(true),
            Err(error) => Err(IngestFailure::Retryable(format!(
                "cannot wait for the extractor: {error}"
            ))),
        }
    }

    fn stderr_text(&self) -> String {
        policy::controls_as_spaces(String::from_utf8_lossy(&self.stderr_tail).trim(), false)
    }
}
