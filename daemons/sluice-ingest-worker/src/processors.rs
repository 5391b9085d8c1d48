//! One-shot external processors (`[[processor]]` with `mode = "once"`): a program run once
//! per matching file, in its own process group, without network and with a private temporary
//! folder (`isolation`), whose stdout is stored with the document (and indexed when it is
//! text) and whose files left in `{output}` are filed as derived files (`derived`). The
//! server form is in `servers`; both end in a [`ProcessorOutput`].
//!
//! # Nothing a processor starts outlives its job
//!
//! The program is the leader of a new process group (`setpgid(0, 0)` at spawn), and every
//! way a run ends kills that whole group with SIGKILL: a normal exit (a background process
//! it left behind dies with it), its `timeout`, too much output, and the job being cancelled,
//! timing out or stopped. The group is registered with the running job ([`ProcessGroups`]),
//! so the worker's main loop kills it too when the job's wall-clock limit passes, even if the
//! body were not looking.
//!
//! A group id is a process id, which the kernel reuses once the process is reaped. The body
//! therefore notices the leader's exit without reaping it (`waitid` with `WNOWAIT`), kills
//! the group, removes it from the registry under the registry's lock, and only then reaps.
//! The main loop kills under the same lock, so it never signals a group id that may since
//! belong to someone else.
//!
//! A process that leaves its group on purpose (`setsid`) escapes this; the unit's
//! `KillMode=control-group` still ends it when the worker stops, and the worker stops reading
//! pipes such a process keeps open ([`DRAIN_GRACE`]).

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use serde_json::Value;
use sluice_core::config::ProcessorConfig;
use sluice_core::ingest::seconds;
use sluice_core::policy;

use crate::derived::file_derived;
use crate::failure::IngestFailure;
use crate::isolation::{self, Confinement, Input, PrivateTemp};

/// How often a run looks at its deadline and its job's flags while the program is quiet.
const CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How much of the end of stderr is kept for the error message.
const STDERR_TAIL_BYTES: usize = 2048;
/// After the program exited and its group was killed, how long its pipes may stay open
/// (held by a process that left the group) before the run stops reading them.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// Environment variables of the worker a processor must not inherit: they would let it talk
/// to systemd as if it were the worker.
const WITHHELD_VARIABLES: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// The process groups a running job's processors lead; see the module documentation.
#[derive(Debug, Default)]
pub struct ProcessGroups {
    groups: Mutex<Vec<Pid>>,
}

impl ProcessGroups {
    /// Kills every registered group with SIGKILL. Returns how many groups there were.
    pub fn kill_all(&self) -> usize {
        let groups = self.lock();
        for group in groups.iter() {
            kill_group(*group);
        }
        groups.len()
    }

    pub(crate) fn register(&self, group: Pid) {
        self.lock().push(group);
    }

    pub(crate) fn unregister(&self, group: Pid) {
        self.lock().retain(|registered| *registered != group);
    }

    /// The list holds no invariant a panic could break halfway.
    fn lock(&self) -> MutexGuard<'_, Vec<Pid>> {
        self.groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What one processor made of one file, in either form.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorOutput {
    /// Stored in the document's metadata under `processors.<name>`.
    pub metadata: Value,
    /// Indexed for search with the document's own text.
    pub text: Option<String>,
    /// The derived files, already filed into the library: the entries of the document's
    /// `derived_files`.
    pub files: Vec<Value>,
}

/// Where a processor's derived files go: the library and the content's hash.
#[derive(Debug, Clone, Copy)]
pub struct DerivedTarget<'a> {
    pub library: &'a Path,
    pub blake3: &'a str,
}

/// Runs one-shot `processor` on the file at `path` and returns its output: stdout as the
/// metadata (the JSON value when it parses as JSON, else the text, which is also indexed),
/// and the files it left in `{output}`, filed into the library. `check` is asked about the
/// job's flags (cancel, stop, the job's own timeout) every [`CHECK_INTERVAL`] at most; an
/// error from it ends the run.
pub fn run_processor(
    processor: &ProcessorConfig,
    path: &Path,
    mime: &str,
    target: DerivedTarget<'_>,
    groups: &ProcessGroups,
    check: &mut dyn FnMut() -> Result<(), IngestFailure>,
) -> Result<ProcessorOutput, IngestFailure> {
    let name = &processor.name;
    let temp = PrivateTemp::new(name).map_err(|error| {
        IngestFailure::Retryable(format!(
            "processor {name}: cannot create its private temporary folder: {error}"
        ))
    })?;
    let output = temp.output_folder("output").map_err(|error| {
        IngestFailure::Retryable(format!(
            "processor {name}: cannot create its output folder: {error}"
        ))
    })?;
    // The file goes to the launcher on stdin, opened as the job opened it (the last
    // component not followed), so the processor may read that file and no other; the
    // launcher gives the processor an empty stdin in its place.
    let input = open_input(path).map_err(|error| {
        IngestFailure::Retryable(format!(
            "processor {name}: cannot open {} for it: {error}",
            path.display()
        ))
    })?;
    let program = Program {
        name,
        argv: processor.command_line(path, mime, &output),
        stdin: Stdio::from(input),
        timeout: processor.timeout,
        max_output: processor.max_output,
        sandbox: Some(Sandbox {
            temp: temp.path(),
            writable: &processor.writable,
            readable: &[],
        }),
    };
    let stdout = run_program(program, groups, check)?;
    let files = file_derived(
        target.library,
        target.blake3,
        name,
        &output,
        None,
        processor.max_output,
    )?;
    let metadata = output_value(stdout);
    let text = metadata
        .as_str()
        .filter(|text| !text.trim().is_empty())
        .map(str::to_owned);
    Ok(ProcessorOutput {
        metadata,
        text,
        files,
    })
}

/// A program the worker runs under the rules of a processor (see the module documentation):
/// a processor, or a helper of the worker's own such as `pdftoppm` for thumbnails.
#[derive(Debug)]
pub struct Program<'a> {
    /// The name errors give it ("processor NAME ...").
    pub name: &'a str,
    /// The program (an absolute path) and its arguments.
    pub argv: Vec<OsString>,
    pub stdin: Stdio,
    /// It is killed with its group after this long.
    pub timeout: Duration,
    /// It is killed with its group once it wrote more than this many bytes to stdout.
    pub max_output: u64,
    /// For a processor: where it may write (see `isolation`). `None` for the worker's own
    /// helpers, which may write nowhere.
    pub sandbox: Option<Sandbox<'a>>,
}

/// Where a processor may write: its private temporary folder (its `TMPDIR`), and the folders
/// its `writable` key names; and what it may read beyond the system's folders and the file
/// it is given (a server: the folders of the files its requests name).
#[derive(Debug, Clone, Copy)]
pub struct Sandbox<'a> {
    pub temp: &'a Path,
    pub writable: &'a [PathBuf],
    pub readable: &'a [PathBuf],
}

/// The file a one-shot processor works on, for its launcher's stdin: opened read-only
/// without following a symbolic link in its last component.
fn open_input(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Runs `program` in its own process group, registered in `groups`, and returns what it
/// wrote to stdout once it exited with status 0. `check` is asked about the job's flags
/// (cancel, stop, the job's own timeout) every [`CHECK_INTERVAL`] at most; an error from it
/// ends the run.
pub fn run_program(
    program: Program<'_>,
    groups: &ProcessGroups,
    check: &mut dyn FnMut() -> Result<(), IngestFailure>,
) -> Result<Vec<u8>, IngestFailure> {
    let Program {
        name,
        argv,
        stdin,
        timeout,
        max_output,
        sandbox,
    } = program;
    // A processor run once gets its file on stdin and reads its path; a helper (pdftoppm)
    // reads the file on its stdin.
    let input = if sandbox.is_some() {
        Input::StdinReplaced
    } else {
        Input::StdinKept
    };
    let mut command = processor_command(&argv, stdin, sandbox, input);
    let mut child = command
        .spawn()
        .map_err(|error| cannot_start(name, &argv[0], &error))?;
    // The child called setpgid(0, 0) before exec, so its pid is its group's id.
    let group = Pid::from_raw(child.id() as i32);
    groups.register(group);
    let mut run = Run {
        name,
        child: &mut child,
        group,
        groups,
        stdout: Vec::new(),
        stderr_tail: Vec::new(),
    };
    let ended = run.supervise(timeout, max_output, check);
    let (stdout, stderr_tail) = (std::mem::take(&mut run.stdout), run.stderr_text());
    let status = run.finish();
    tracing::debug!(processor = %name, ?status, "processor {name} ended: {status:?}");
    ended?;
    let status = status.map_err(|error| {
        IngestFailure::Retryable(format!("processor {name}: cannot wait for it: {error}"))
    })?;
    if !status.success() {
        // Killed because its job was cancelled, timed out or stopped (by the main loop,
        // which may be quicker than this run's own check): that is the job's failure.
        check()?;
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => format!("ended with {status}"),
        };
        let stderr = if stderr_tail.is_empty() {
            "its stderr was empty".to_owned()
        } else {
            format!("the end of its stderr: {stderr_tail}")
        };
        return Err(IngestFailure::Retryable(format!(
            "processor {name} {how}; {stderr}"
        )));
    }
    Ok(stdout)
}

/// The command for a processor's (or helper's) program: its own process group, in `/`,
/// without the worker's systemd variables, pipes for stdout and stderr, no network, and
/// confined (see `isolation::confine`) so that it reads the system's folders and the file it
/// works on, and writes nothing but, for a processor (`sandbox` given), beneath its private
/// temporary folder (its `TMPDIR`) and the folders of its `writable` key. `stdin` is the file
/// it works on for the worker's helpers (`sandbox` `None`: `pdftoppm`, which keeps it) and
/// for a one-shot processor (`Input::StdinReplaced`); a server's is a pipe (`Input::None`).
pub(crate) fn processor_command(
    argv: &[OsString],
    stdin: Stdio,
    sandbox: Option<Sandbox<'_>>,
    input: Input,
) -> Command {
    let writable: Vec<&Path> = sandbox
        .map(|sandbox| {
            std::iter::once(sandbox.temp)
                .chain(sandbox.writable.iter().map(PathBuf::as_path))
                .collect()
        })
        .unwrap_or_default();
    let readable: Vec<&Path> = sandbox
        .map(|sandbox| sandbox.readable.iter().map(PathBuf::as_path).collect())
        .unwrap_or_default();
    let argv = isolation::isolated_argv(
        argv,
        Confinement {
            readable: &readable,
            writable: &writable,
            input,
        },
    );
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir("/")
        .process_group(0);
    for variable in WITHHELD_VARIABLES {
        command.env_remove(variable);
    }
    if let Some(sandbox) = sandbox {
        command.env("TMPDIR", sandbox.temp);
    }
    command
}

/// The failure of a program that did not start.
pub(crate) fn cannot_start(
    name: &str,
    program: &OsString,
    error: &std::io::Error,
) -> IngestFailure {
    IngestFailure::Retryable(format!(
        "processor {name}: cannot start {}: {error}",
        program.to_string_lossy()
    ))
}

/// The stored form of a processor's stdout: JSON when it parses as JSON, else text (bytes
/// that are not UTF-8 replaced).
pub fn output_value(stdout: Vec<u8>) -> Value {
    match serde_json::from_slice::<Value>(&stdout) {
        Ok(value) => value,
        Err(_) => Value::String(match String::from_utf8(stdout) {
            Ok(text) => text,
            Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
        }),
    }
}

/// One run in progress.
struct Run<'a> {
    name: &'a str,
    child: &'a mut Child,
    group: Pid,
    groups: &'a ProcessGroups,
    stdout: Vec<u8>,
    stderr_tail: Vec<u8>,
}

/// Which pipe a read was from.
#[derive(Clone, Copy, PartialEq)]
enum Pipe {
    Stdout,
    Stderr,
}

impl Run<'_> {
    /// Reads the pipes until the program exits, or ends the run early with why. On return
    /// the group is killed (whatever happened) and the pipes are drained.
    fn supervise(
        &mut self,
        timeout: Duration,
        max_output: u64,
        check: &mut dyn FnMut() -> Result<(), IngestFailure>,
    ) -> Result<(), IngestFailure> {
        let deadline = Instant::now() + timeout;
        let mut stdout = self.child.stdout.take();
        let mut stderr = self.child.stderr.take();
        let result = loop {
            let wait = CHECK_INTERVAL.min(deadline.saturating_duration_since(Instant::now()));
            if let Err(failure) = self.read_ready(&mut stdout, &mut stderr, wait) {
                break Err(failure);
            }
            if self.stdout.len() as u64 > max_output {
                break Err(IngestFailure::Permanent(format!(
                    "processor {} wrote more than its max_output of {} bytes to stdout; it was \
                     killed",
                    self.name, max_output
                )));
            }
            match self.has_exited() {
                Ok(true) => break Ok(()),
                Ok(false) => {}
                Err(error) => {
                    break Err(IngestFailure::Retryable(format!(
                        "processor {}: cannot wait for it: {error}",
                        self.name
                    )));
                }
            }
            if let Err(failure) = check() {
                break Err(failure);
            }
            if Instant::now() >= deadline {
                break Err(IngestFailure::Retryable(format!(
                    "processor {} timed out after {} s; it was killed with its process group",
                    self.name,
                    seconds(timeout)
                )));
            }
        };
        // Whatever the program left running in its group dies now; what it wrote before is
        // still in the pipes.
        kill_group(self.group);
        let drain_until = Instant::now() + DRAIN_GRACE;
        while (stdout.is_some() || stderr.is_some()) && Instant::now() < drain_until {
            let wait = drain_until.saturating_duration_since(Instant::now());
            if self.read_ready(&mut stdout, &mut stderr, wait).is_err() {
                break;
            }
            if self.stdout.len() as u64 > max_output {
                if result.is_ok() {
                    return Err(IngestFailure::Permanent(format!(
                        "processor {} wrote more than its max_output of {} bytes to stdout",
                        self.name, max_output
                    )));
                }
                break;
            }
        }
        result
    }

    /// Waits up to `wait` for either pipe to have data, and reads what is there. A pipe at
    /// its end is set to `None`.
    fn read_ready(
        &mut self,
        stdout: &mut Option<std::process::ChildStdout>,
        stderr: &mut Option<std::process::ChildStderr>,
        wait: Duration,
    ) -> Result<(), IngestFailure> {
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        let ready = {
            let mut descriptors = Vec::with_capacity(2);
            let mut pipes = Vec::with_capacity(2);
            if let Some(pipe) = stdout.as_ref() {
                descriptors.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
                pipes.push(Pipe::Stdout);
            }
            if let Some(pipe) = stderr.as_ref() {
                descriptors.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
                pipes.push(Pipe::Stderr);
            }
            match poll(&mut descriptors, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(error) => {
                    return Err(IngestFailure::Retryable(format!(
                        "processor {}: cannot poll its output: {error}",
                        self.name
                    )));
                }
            }
            descriptors
                .iter()
                .zip(pipes)
                .filter(|(descriptor, _)| descriptor.any().unwrap_or(false))
                .map(|(_, pipe)| pipe)
                .collect::<Vec<_>>()
        };
        let mut buffer = [0u8; 64 * 1024];
        for pipe in ready {
            // poll said there is data or an end: one read does not block.
            let read = match pipe {
                Pipe::Stdout => stdout.as_mut().map(|pipe| pipe.read(&mut buffer)),
                Pipe::Stderr => stderr.as_mut().map(|pipe| pipe.read(&mut buffer)),
            };
            match read {
                None => {}
                Some(Ok(0)) => match pipe {
                    Pipe::Stdout => *stdout = None,
                    Pipe::Stderr => *stderr = None,
                },
                Some(Ok(count)) => match pipe {
                    Pipe::Stdout => self.stdout.extend_from_slice(&buffer[..count]),
                    Pipe::Stderr => {
                        self.stderr_tail.extend_from_slice(&buffer[..count]);
                        let excess = self.stderr_tail.len().saturating_sub(STDERR_TAIL_BYTES);
                        self.stderr_tail.drain(..excess);
                    }
                },
                Some(Err(error)) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Some(Err(error)) => {
                    return Err(IngestFailure::Retryable(format!(
                        "processor {}: cannot read its output: {error}",
                        self.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether the program (the group's leader) has exited, without reaping it: its pid, the
    /// group's id, stays reserved until [`Run::finish`].
    fn has_exited(&self) -> Result<bool, Errno> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.group), flags) {
            Ok(WaitStatus::StillAlive) => Ok(false),
            Ok(_) => Ok(true),
            Err(Errno::EINTR) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Kills the group once more, forgets it, then reaps the leader.
    fn finish(self) -> std::io::Result<ExitStatus> {
        kill_group(self.group);
        self.groups.unregister(self.group);
        self.child.wait()
    }

    fn stderr_text(&self) -> String {
        policy::controls_as_spaces(String::from_utf8_lossy(&self.stderr_tail).trim(), true)
    }
}

/// SIGKILL to every process of `group`. A group that is already empty is no error.
pub(crate) fn kill_group(group: Pid) {
    if let Err(error) = killpg(group, Signal::SIGKILL)
        && error != Errno::ESRCH
    {
        tracing::warn!(error = %error, "cannot kill process group {group}: {error}");
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::config::Config;

    use super::*;

    /// A processor running `/bin/sh -c script` on `{path}`, loaded as the config would.
    fn shell(script: &str, timeout: &str, max_output: &str) -> ProcessorConfig {
        let text = format!(
            "[[processor]]\nname = \"test\"\nmime = \"*\"\nargv = [\"/bin/sh\", \"-c\", {script:?}, \"sh\", \"{{path}}\"]\ntimeout = \"{timeout}\"\nmax_output = \"{max_output}\"\n"
        );
        Config::from_toml_str(&text, Path::new("/test.toml"))
            .unwrap_or_else(|error| panic!("{error}"))
            .processors
            .remove(0)
    }

    fn run(processor: &ProcessorConfig) -> (Result<Value, IngestFailure>, ProcessGroups) {
        let groups = ProcessGroups::default();
        let library = tempfile::tempdir().unwrap();
        let result = run_processor(
            processor,
            Path::new("/etc/hostname"),
            "text/plain",
            target(library.path()),
            &groups,
            &mut || Ok(()),
        );
        (result.map(|output| output.metadata), groups)
    }

    fn target(library: &Path) -> DerivedTarget<'_> {
        DerivedTarget {
            library,
            blake3: "ab12000000000000000000000000000000000000000000000000000000000000",
        }
    }

    fn is_alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !matches!(
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next()),
                Some('Z' | 'X')
            )
        })
    }

    /// Waits (up to a generous deadline) for the pids in `file` to be gone.
    fn assert_gone(file: &Path) {
        let pids = std::fs::read_to_string(file).expect("the script wrote its pids");
        let deadline = Instant::now() + Duration::from_secs(30);
        while pids.split_whitespace().any(is_alive) {
            assert!(Instant::now() < deadline, "still alive: {pids}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_successful_run_returns_its_output_and_leaves_nothing_behind() {
        let directory = tempfile::tempdir().unwrap();
        let pids = directory.path().join("pids");
        let processor = shell(
            &format!(
                "sleep 1000 & echo $! > {}; printf '{{{{\"file\": \"%s\"}}}}' \"$1\"",
                pids.display()
            ),
            "1m",
            "1 MiB",
        );
        let (result, groups) = run(&processor);
        assert_eq!(
            result.unwrap(),
            serde_json::json!({"file": "/etc/hostname"})
        );
        assert_gone(&pids);
        assert_eq!(groups.kill_all(), 0, "the group was forgotten");
    }

    #[test]
    fn a_run_past_its_timeout_is_killed_with_its_group() {
        let directory = tempfile::tempdir().unwrap();
        let pids = directory.path().join("pids");
        let processor = shell(
            &format!("sleep 1000 & echo $$ $! > {}; sleep 1000", pids.display()),
            "300ms",
            "1 MiB",
        );
        let (result, _) = run(&processor);
        let error = result.unwrap_err();
        assert!(
            matches!(&error, IngestFailure::Retryable(message) if message.contains("processor test timed out after 0.3 s")),
            "{error:?}"
        );
        assert_gone(&pids);
    }

    #[test]
    fn too_much_output_is_a_permanent_failure() {
        let processor = shell("exec yes", "1m", "10 KiB");
        let (result, _) = run(&processor);
        let error = result.unwrap_err();
        assert!(
            matches!(&error, IngestFailure::Permanent(message) if message.contains("more than its max_output of 10240 bytes")),
            "{error:?}"
        );
    }

    #[test]
    fn a_failed_run_names_its_status_and_the_end_of_stderr() {
        let long_noise = "x".repeat(5000);
        let processor = shell(
            &format!("echo {long_noise} >&2; echo 'bad input' >&2; exit 4"),
            "1m",
            "1 MiB",
        );
        let (result, _) = run(&processor);
        let IngestFailure::Retryable(message) = result.unwrap_err() else {
            panic!("a non-zero exit is retried");
        };
        assert!(
            message.starts_with("processor test exited with status 4; the end of its stderr: "),
            "{message}"
        );
        assert!(message.ends_with("xxx\nbad input"), "{message}");
        assert!(
            message.len() < STDERR_TAIL_BYTES + 200,
            "only the tail is kept"
        );
    }

    #[test]
    fn a_stopped_job_ends_the_run_with_its_own_failure() {
        let directory = tempfile::tempdir().unwrap();
        let pids = directory.path().join("pids");
        let processor = shell(
            &format!("echo $$ > {}; sleep 1000", pids.display()),
            "1m",
            "1 MiB",
        );
        let groups = ProcessGroups::default();
        let started = Instant::now();
        let library = tempfile::tempdir().unwrap();
        let result = run_processor(
            &processor,
            Path::new("/etc/hostname"),
            "text/plain",
            target(library.path()),
            &groups,
            &mut || {
                if started.elapsed() > Duration::from_millis(200) {
                    Err(IngestFailure::Cancelled)
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(result.unwrap_err(), IngestFailure::Cancelled);
        assert_gone(&pids);
    }

    #[test]
    fn output_is_json_when_it_parses_and_text_otherwise() {
        assert_eq!(
            output_value(b"{\"pages\": 3}\n".to_vec()),
            serde_json::json!({"pages": 3})
        );
        assert_eq!(output_value(b"hello\n".to_vec()), Value::from("hello\n"));
        assert_eq!(output_value(b"a\xffb".to_vec()), Value::from("a\u{fffd}b"));
    }
}
