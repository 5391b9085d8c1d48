//! Daemon main loops run in-process: `run` gets a real SQLite store in a temporary folder, a
//! connection to a real private `dbus-daemon` and signals through a channel, exactly what the
//! shared start-up would give it, and the test stops it with a SIGTERM sent on that channel.
//! No process, so what goes wrong shows up as a failed assertion with the daemon's state at
//! hand, not as a log to read.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use serde_json::json;
use sluice_core::config::Config;
use sluice_core::runtime::{Dependencies, Notifier, Signal, SignalReceiver, SignalSender};
use sluice_core::store::{INGEST_JOB_KIND, JobFilter, JobState, NewJob, PageRequest, Store};

use crate::support::{BusPolicy, DEADLINE, PrivateBus, wait_until};

/// A daemon's `run` going on its own thread, on the current-thread runtime both the monitor and
/// the worker use in production.
struct InProcessDaemon<E> {
    signals: SignalSender,
    thread: JoinHandle<Result<(), E>>,
}

impl<E: std::fmt::Debug + Send + 'static> InProcessDaemon<E> {
    /// Opens the store here (the test's side), then connects to the bus and calls `run` inside
    /// the daemon thread's runtime (a zbus connection belongs to the runtime it was made on).
    fn start<F, Running>(config: Config, config_path: PathBuf, run: F) -> InProcessDaemon<E>
    where
        F: FnOnce(Dependencies) -> Running + Send + 'static,
        Running: Future<Output = Result<(), E>>,
    {
        let store =
            Store::open(&config.store.path, &config.store_options()).expect("open the store");
        let (signals, signal_receiver) = SignalReceiver::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async move {
                let bus = sluice_core::bus::connect(&config.bus.address)
                    .await
                    .expect("connect to the private bus");
                run(Dependencies {
                    config,
                    config_path,
                    store,
                    bus,
                    signals: signal_receiver,
                    notifier: Notifier::disconnected(),
                })
                .await
            })
        });
        InProcessDaemon { signals, thread }
    }

    /// Sends SIGTERM through the channel and returns what `run` returned.
    fn stop(self) -> Result<(), E> {
        self.signals.send(Signal::Terminate);
        let stopped = wait_until(DEADLINE, || self.thread.is_finished());
        assert!(
            stopped,
            "the daemon did not stop within {DEADLINE:?} of SIGTERM"
        );
        self.thread
            .join()
            .expect("the daemon's thread does not panic")
    }
}

/// A temporary state folder with an inbox and a library, a private bus and a configuration
/// naming them.
struct StateFolder {
    bus: PrivateBus,
    directory: tempfile::TempDir,
}

impl StateFolder {
    fn new() -> StateFolder {
        let bus = PrivateBus::start(BusPolicy::AllowEverything).expect("private bus");
        let directory = tempfile::tempdir().expect("temp dir");
        for name in ["inbox", "library", "staging"] {
            std::fs::create_dir_all(directory.path().join(name)).expect("state folder");
        }
        StateFolder { bus, directory }
    }

    fn root(&self) -> &Path {
        self.directory.path()
    }

    fn inbox(&self) -> PathBuf {
        self.root().join("inbox")
    }

    fn config_path(&self) -> PathBuf {
        self.root().join("sluice.toml")
    }

    fn config(&self) -> Config {
        let text = format!(
            r#"[store]
path = "{root}/sluice.db"
durability = "normal"

[bus]
address = "{bus}"

[jobs]
lease = "2s"
heartbeat_interval = "400ms"

[service]
status_interval = "200ms"
stop_timeout = "5s"

[[watch]]
path = "{root}/inbox"
mode = "consume"
quiet_period = "200ms"

[ingest]
library = "{root}/library"

[scraper]
inbox = "{root}/inbox"
staging = "{root}/staging"
"#,
            root = self.root().display(),
            bus = self.bus.address(),
        );
        std::fs::write(self.config_path(), &text).expect("write the configuration");
        Config::from_toml_str(&text, &self.config_path()).expect("a valid configuration")
    }

    fn store(&self) -> Store {
        let config = self.config();
        Store::open(&config.store.path, &config.store_options()).expect("open the store")
    }
}

/// The paths of every queued ingest job.
fn queued_ingest_paths(store: &Store) -> Vec<String> {
    let page = store
        .list_jobs(
            &JobFilter {
                states: vec![JobState::Queued],
                kind: Some(INGEST_JOB_KIND.into()),
            },
            PageRequest {
                before_id: None,
                limit: 100,
            },
        )
        .expect("list the ingest jobs");
    page.items
        .into_iter()
        .filter_map(|job| job.payload["path"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_monitor_loop_queues_an_ingest_job_for_a_dropped_file_and_stops_on_sigterm() {
    let state = StateFolder::new();
    let monitor = InProcessDaemon::start(state.config(), state.config_path(), sluice_monitor::run);
    let observer = state.store();

    let dropped = state.inbox().join("report.txt");
    std::fs::write(&dropped, "a report").expect("drop a file into the inbox");
    let expected = dropped.to_string_lossy().into_owned();
    let queued = wait_until(DEADLINE, || {
        queued_ingest_paths(&observer).contains(&expected)
    });
    assert!(
        queued,
        "no ingest job for {expected}; queued: {:?}",
        queued_ingest_paths(&observer)
    );

    let stopped = monitor.stop();
    assert!(stopped.is_ok(), "{stopped:?}");
}

#[test]
fn the_ingest_worker_loop_claims_a_queued_job_runs_it_and_stops_on_sigterm() {
    let state = StateFolder::new();
    let mut store = state.store();
    let job_id = store
        .enqueue(&NewJob::new("noop", json!({"from": "in-process test"})).with_max_attempts(3))
        .expect("enqueue a noop job")
        .id;
    let worker = InProcessDaemon::start(
        state.config(),
        state.config_path(),
        |dependencies| async move { sluice_ingest_worker::run("1", dependencies).await },
    );

    let ended = wait_until(DEADLINE, || {
        store.get_job(job_id).expect("the job").state.is_terminal()
    });
    let job = store.get_job(job_id).expect("the job");
    assert!(ended, "job {job_id} never ended: {job:?}");
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let history = store.job_history(job_id).expect("the job's history");
    let ran_by: Vec<_> = history
        .iter()
        .filter(|transition| transition.to_state == JobState::Running)
        .map(|transition| transition.worker.as_deref())
        .collect();
    assert_eq!(ran_by, [Some("sluice-ingest-worker@1")], "{history:?}");

    let stopped = worker.stop();
    assert!(stopped.is_ok(), "{stopped:?}");
}
