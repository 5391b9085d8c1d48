//! The test harness: temporary directories, real child processes whose output the test can
//! wait on, and deadline-based waiting (tests never assume how fast a machine is).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sluice_core::store::{Durability, RetryPolicy, Store, StoreOptions};

/// Generous on purpose: a deadline only bounds how long a broken test hangs.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn store_options(durability: Durability) -> StoreOptions {
    StoreOptions {
        durability,
        busy_timeout: Duration::from_secs(30),
        retry: RetryPolicy {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
    }
}

pub fn open_store(path: &Path, durability: Durability) -> Store {
    Store::open(path, &store_options(durability)).expect("open store")
}

/// A child process whose stdout lines are collected as they arrive; killed when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    pub fn spawn(command: &mut Command) -> Process {
        let mut child = command
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Process {
            child,
            lines,
            reader: Some(reader),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a line starting with `prefix` and returns it.
    pub fn wait_for_line(&self, prefix: &str, timeout: Duration) -> String {
        let mut found = None;
        let appeared = wait_until(timeout, || {
            found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|line| line.starts_with(prefix))
                .cloned();
            found.is_some()
        });
        assert!(
            appeared,
            "no line starting with {prefix:?} within {timeout:?}; got {:?}",
            self.lines()
        );
        found.unwrap()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal child");
    }

    /// SIGKILL, then reap; returns every line the child wrote before it died.
    pub fn kill_hard(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.lines()
    }

    /// Waits for the process to exit on its own and returns its status and output.
    pub fn wait(mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return (status, self.lines());
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit within {timeout:?}; output {:?}",
                self.child.id(),
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The queue client helper program (tests/src/bin/queue-child.rs) for a database.
pub fn queue_child(database: &Path, durability: Durability) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_queue-child"));
    command
        .arg("--db")
        .arg(database)
        .arg("--durability")
        .arg(durability.as_str());
    command
}

pub fn temp_dir() -> (tempfile::TempDir, PathBuf) {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().to_path_buf();
    (directory, path)
}
