//! The scraper's main loop run in-process, with a real SQLite store in a temporary folder, a
//! real private `dbus-daemon` and signals sent through a channel: what the loop does with
//! what `run` is given, without a process around it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sluice_core::config::Config;
use sluice_core::runtime::{Dependencies, Notifier, Signal, SignalReceiver};
use sluice_core::store::{DownloadState, NewDownload, Store};

use crate::transfer::test_hooks::PANIC_MARKER;
use crate::{MAX_ACTIVE_DOWNLOADS, run};

const DEADLINE: Duration = Duration::from_secs(30);

/// A `dbus-daemon` with the stock session configuration (any name may be owned), killed when
/// dropped. The integration tests' harness has a fuller one; this crate cannot use it.
struct SessionBus {
    process: Child,
    address: String,
}

impl SessionBus {
    fn start() -> SessionBus {
        use std::io::{BufRead, BufReader};
        let mut process = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start dbus-daemon (package dbus-daemon)");
        let mut address = String::new();
        BufReader::new(process.stdout.take().expect("dbus-daemon's stdout"))
            .read_line(&mut address)
            .expect("dbus-daemon prints its address");
        SessionBus {
            process,
            address: address.trim().to_owned(),
        }
    }
}

impl Drop for SessionBus {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn config(root: &Path, bus_address: &str) -> Config {
    let text = format!(
        r#"[store]
path = "{root}/sluice.db"
durability = "normal"

[bus]
address = "{bus_address}"

[ingest]
library = "{root}/library"

[scraper]
inbox = "{root}/inbox"
staging = "{root}/staging"
allow_private_addresses = true

[service]
status_interval = "200ms"
stop_timeout = "5s"
"#,
        root = root.display(),
    );
    let path = root.join("sluice.toml");
    std::fs::write(&path, &text).expect("write the configuration");
    Config::from_toml_str(&text, &path).expect("a valid configuration")
}

/// Waits for `condition` to hold, checking every 20 ms, at most `DEADLINE`.
async fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// Before the fix, `tokio::spawn` swallowed a download task's panic: the job stayed running,
/// no report reached the loop, and the task's slot stayed taken until the daemon stopped.
/// One more panicking download than there are slots: the last one only runs if the panicking
/// ones gave their slots back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_download_fails_with_the_panic_and_frees_its_slot() {
    let bus = SessionBus::start();
    let folder = tempfile::tempdir().expect("temp dir");
    let root = folder.path();
    for name in ["inbox", "staging", "library"] {
        std::fs::create_dir_all(root.join(name)).expect("state folder");
    }
    let config = config(root, &bus.address);
    let mut store =
        Store::open(&config.store.path, &config.store_options()).expect("open the store");
    let download_ids: Vec<i64> = (0..=MAX_ACTIVE_DOWNLOADS)
        .map(|number| {
            let url = format!("http://127.0.0.1:9/{PANIC_MARKER}/{number}");
            store
                .create_download(&NewDownload::new(url).validate().expect("a valid download"))
                .expect("queue a download")
                .download_id
        })
        .collect();
    let observer = Store::open(&config.store.path, &config.store_options()).expect("observer");

    let bus_connection = sluice_core::bus::connect(&config.bus.address)
        .await
        .expect("connect to the private bus");
    let (signal_sender, signals) = SignalReceiver::channel();
    let scraper = tokio::spawn(run(Dependencies {
        config_path: root.join("sluice.toml"),
        config,
        store,
        bus: bus_connection,
        signals,
        notifier: Notifier::disconnected(),
    }));

    let all_failed = wait_until(|| {
        download_ids.iter().all(|id| {
            observer
                .get_download(*id)
                .is_ok_and(|download| download.state == DownloadState::Failed)
        })
    })
    .await;
    let downloads: Vec<_> = download_ids
        .iter()
        .map(|id| observer.get_download(*id).expect("the download"))
        .collect();
    assert!(
        all_failed,
        "every panicking download fails, the last one after a slot was freed: {downloads:#?}"
    );
    for download in &downloads {
        let error = download.error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with("download task panicked: test hook"),
            "download {}: {error}",
            download.id
        );
    }

    signal_sender.send(Signal::Terminate);
    let stopped = tokio::time::timeout(DEADLINE, scraper)
        .await
        .expect("the scraper stops on SIGTERM")
        .expect("the scraper's task does not panic");
    assert!(stopped.is_ok(), "{stopped:?}");
}
