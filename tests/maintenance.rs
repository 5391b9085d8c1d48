//! Care of the database with the real daemons running (issue 11): `sluicectl db backup` under
//! load gives a copy that a restarted suite serves every document from; a backup that cannot
//! be written says why and leaves nothing; `sluicectl db maintain` (retention, optimize,
//! checkpoint) running again and again while workers complete jobs loses nothing and never
//! touches a document; `sluicectl db check` and `vacuum`.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_core::store::JobState;
use sluice_core::store::jobs::NewJob;

use crate::support::{Suite, TmpfsMount, WebDaemon, binary_path, have_root, skip, wait_until};

/// How long the whole ingest of a batch may take on a slow, busy machine.
const INGEST_DEADLINE: Duration = Duration::from_secs(120);

fn sluicectl_with(config: &Path, arguments: &[&str]) -> Output {
    std::process::Command::new(binary_path("sluicectl"))
        .args(arguments)
        .env("SLUICE_CONFIG", config)
        .output()
        .expect("run sluicectl")
}

fn drop_files(suite: &Suite, prefix: &str, count: usize) {
    for index in 0..count {
        let staged = suite.root().join(format!(".{prefix}-{index}.tmp"));
        std::fs::write(&staged, format!("{prefix} file number {index}\n")).unwrap();
        std::fs::rename(&staged, suite.inbox().join(format!("{prefix}-{index}.txt"))).unwrap();
    }
}

fn document_names(suite: &Suite) -> Vec<String> {
    let mut names: Vec<String> = suite
        .fixture
        .store()
        .list_documents(
            &Default::default(),
            sluice_core::store::PageRequest {
                before_id: None,
                limit: 1000,
            },
        )
        .unwrap()
        .items
        .into_iter()
        .map(|document| document.original_name)
        .collect();
    names.sort();
    names
}

#[test]
fn a_backup_taken_under_load_restores_to_a_suite_with_every_document() {
    let mut suite = Suite::start();
    drop_files(&suite, "before", 60);
    // Taken while the workers ingest: a consistent snapshot, whatever it caught.
    let during = suite.root().join("during.db");
    let output = suite.sluicectl(&["--json", "db", "backup", during.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(answer["bytes"].as_u64().unwrap() > 0, "{answer}");
    let copy = crate::support::open_store(&during, sluice_core::store::Durability::Normal);
    assert_eq!(copy.integrity_check().unwrap(), vec!["ok".to_owned()]);
    assert!(copy.foreign_key_check().unwrap().is_empty());
    drop(copy);

    assert!(
        wait_until(INGEST_DEADLINE, || document_names(&suite).len() == 60),
        "{} of 60 documents\n{}",
        document_names(&suite).len(),
        suite.logs()
    );
    let expected = document_names(&suite);
    let after = suite.root().join("after.db");
    let output = suite.sluicectl(&["db", "backup", after.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    // A backup never replaces a file.
    let output = suite.sluicectl(&["db", "backup", after.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(4), "{output:?}");

    // Restore: stop everything, put the copy in place of the database, start again.
    suite.web.process.kill_hard();
    suite.scraper.kill_hard();
    suite.monitor.kill_hard();
    for worker in &mut suite.workers {
        worker.kill_hard();
    }
    let database = suite.fixture.database.clone();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
    }
    std::fs::copy(&after, &database).unwrap();
    suite.monitor = suite
        .fixture
        .start_daemon("sluice-monitor", &[], "monitor-restored.log");
    suite.web = WebDaemon::start(&suite.fixture);
    let output = suite.sluicectl(&["db", "check"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(document_names(&suite), expected);
    let (status, page) = suite.get("/api/documents?limit=500");
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 60);
}

#[test]
fn a_backup_that_cannot_be_written_says_why_and_leaves_nothing() {
    if !have_root() {
        skip("needs root to mount a small and a read-only file system");
        return;
    }
    let suite = Suite::start();
    drop_files(&suite, "filler", 40);
    assert!(wait_until(INGEST_DEADLINE, || document_names(&suite).len() == 40));

    let full = TmpfsMount::with_size("16k").expect("tmpfs");
    let target = full.path().join("copy.db");
    let output = suite.sluicectl(&["db", "backup", target.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("full"), "{message}");
    assert_eq!(
        std::fs::read_dir(full.path()).unwrap().count(),
        0,
        "a file was left"
    );

    let read_only = TmpfsMount::new().expect("tmpfs");
    let status = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(read_only.path())
        .status()
        .unwrap();
    assert!(status.success());
    let target = read_only.path().join("copy.db");
    let output = suite.sluicectl(&["db", "backup", target.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("copy.db"), "{message}");
    assert_eq!(std::fs::read_dir(read_only.path()).unwrap().count(), 0);
    let _ = std::process::Command::new("mount")
        .args(["-o", "remount,rw"])
        .arg(read_only.path())
        .status();

    let nowhere = suite.root().join("no/such/folder/copy.db");
    let output = suite.sluicectl(&["db", "backup", nowhere.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(!suite.root().join("no").exists());
}

#[test]
fn maintenance_while_workers_complete_jobs_loses_nothing_and_keeps_every_document() {
    let suite = Suite::start();
    // The same database, with every age at its shortest.
    let config = suite.root().join("retention.toml");
    let text = std::fs::read_to_string(&suite.fixture.config_path).unwrap();
    std::fs::write(
        &config,
        format!(
            "{text}\n[retention]\nsucceeded_jobs = \"1s\"\nfailed_jobs = \"1s\"\n\
             history = \"1s\"\nfinished_downloads = \"1s\"\n"
        ),
    )
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let maintainer = {
        let (config, stop) = (config.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let output = sluicectl_with(&config, &["--json", "db", "maintain"]);
                assert!(output.status.success(), "{output:?}");
                runs += 1;
            }
            runs
        })
    };
    let mut store = suite.fixture.store();
    let mut job_ids = Vec::new();
    for round in 0..20 {
        for index in 0..50 {
            job_ids.push(
                store
                    .enqueue(&NewJob::new("noop", json!({ "i": round * 50 + index })))
                    .unwrap()
                    .id,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop_files(&suite, "kept", 30);
    // Every job ends succeeded, and retention may then delete it; none is lost on the way
    // (queued, running or retrying forever) and none fails.
    let settled = wait_until(INGEST_DEADLINE, || {
        job_ids.iter().all(|id| match store.get_job(*id) {
            Ok(job) => job.state == JobState::Succeeded,
            Err(_) => true,
        })
    });
    assert!(settled, "{}", suite.logs());
    assert!(wait_until(INGEST_DEADLINE, || document_names(&suite).len() == 30));
    // Let retention see them all once more, then stop it.
    std::thread::sleep(Duration::from_millis(1100));
    let last = sluicectl_with(&config, &["--json", "db", "maintain"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = maintainer.join().unwrap();
    assert!(runs >= 1);
    assert!(last.status.success(), "{last:?}");
    let remaining = job_ids
        .iter()
        .filter(|id| store.get_job(**id).is_ok())
        .count();
    assert_eq!(
        remaining, 0,
        "every finished noop job is past its 1 s retention"
    );
    // Documents and their files stay.
    assert_eq!(document_names(&suite).len(), 30);
    assert_eq!(crate::support::files_under(&suite.library()).len(), 30);
    let output = suite.sluicectl(&["--json", "db", "check"]);
    assert!(output.status.success(), "{output:?}");
    let check: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(check["ok"], true, "{check}");
    let output = suite.sluicectl(&["db", "vacuum"]);
    assert!(output.status.success(), "{output:?}");
}
