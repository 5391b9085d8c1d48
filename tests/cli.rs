//! `sluicectl` as a real process against a temporary store and a private bus: its tables and
//! `--json`, its documented exit statuses, and where its changes go (org.sluice.Web1 when
//! sluice-web runs, the store when it does not).

use std::process::Output;

use serde_json::{Value, json};
use sluice_core::store::jobs::{JobState, NewJob};

use crate::support::{SuiteFixture, WebDaemon, binary_path};

fn sluicectl(fixture: &SuiteFixture, arguments: &[&str]) -> Output {
    std::process::Command::new(binary_path("sluicectl"))
        .arg("--config")
        .arg(&fixture.config_path)
        .args(arguments)
        .env_remove("SLUICE_CONFIG")
        .output()
        .expect("run sluicectl")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json_stdout(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", stdout(output)))
}

fn enqueue(fixture: &SuiteFixture, kind: &str) -> i64 {
    fixture.enqueue(kind)
}

/// A page with a kind looks at a window of job ids at most; `sluicectl jobs list --kind`
/// reads on through the windows, so a rare kind's jobs are listed whatever came after them.
#[test]
fn jobs_list_of_a_rare_kind_reads_on_past_the_window() {
    let fixture = SuiteFixture::new("", "");
    let rare = enqueue(&fixture, "rare");
    let window = sluice_core::store::jobs::KIND_WINDOW as usize;
    let many: Vec<NewJob> = (0..2 * window + window / 2)
        .map(|index| NewJob::new("noop", serde_json::json!({ "i": index })))
        .collect();
    fixture.store().enqueue_many(&many).unwrap();
    let newest = enqueue(&fixture, "rare");

    let output = sluicectl(&fixture, &["--json", "jobs", "list", "--kind", "rare"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let page = json_stdout(&output);
    let ids: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [newest, rare], "{page}");
    // A full page stops at its limit and says where to go on.
    let output = sluicectl(
        &fixture,
        &["--json", "jobs", "list", "--kind", "rare", "--limit", "1"],
    );
    let page = json_stdout(&output);
    assert_eq!(page["items"][0]["id"], newest, "{page}");
    let cursor = page["next_cursor"]
        .as_i64()
        .expect("a cursor to go on")
        .to_string();
    let output = sluicectl(
        &fixture,
        &[
            "--json", "jobs", "list", "--kind", "rare", "--cursor", &cursor,
        ],
    );
    let page = json_stdout(&output);
    assert_eq!(page["items"][0]["id"], rare, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
}

#[test]
fn jobs_print_as_tables_and_as_json() {
    let fixture = SuiteFixture::new("", "");
    let first = enqueue(&fixture, "noop");
    let second = enqueue(&fixture, "ingest");

    let output = sluicectl(&fixture, &["jobs", "list"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("KIND") && lines[0].contains("STATE"),
        "{text}"
    );
    assert!(
        lines[1].starts_with(&format!("{second} ")) && lines[1].contains("ingest"),
        "{text}"
    );
    assert!(
        lines[2].starts_with(&format!("{first} ")) && lines[2].contains("queued"),
        "{text}"
    );

    let output = sluicectl(&fixture, &["--json", "jobs", "list", "--kind", "noop"]);
    assert!(output.status.success());
    let page = json_stdout(&output);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["id"], first);

    let output = sluicectl(&fixture, &["jobs", "show", &first.to_string()]);
    assert!(output.status.success());
    let text = stdout(&output);
    assert!(
        text.contains("kind:") && text.contains("noop") && text.contains("FROM"),
        "{text}"
    );
    let output = sluicectl(&fixture, &["jobs", "show", &first.to_string(), "--json"]);
    let shown = json_stdout(&output);
    assert_eq!(shown["job"]["id"], first);
    assert_eq!(shown["history"][0]["to_state"], "queued");

    let output = sluicectl(&fixture, &["status"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("sluice-monitor") && text.contains("2 queued"),
        "{text}"
    );
    // The "system bus" is this test's own bus, which no systemd is on, on any machine.
    let output = std::process::Command::new(binary_path("sluicectl"))
        .arg("--config")
        .arg(&fixture.config_path)
        .args(["status", "--json"])
        .env_remove("SLUICE_CONFIG")
        .env("DBUS_SYSTEM_BUS_ADDRESS", fixture.bus.address())
        .output()
        .expect("run sluicectl");
    let status = json_stdout(&output);
    assert_eq!(status["jobs"]["queued"], 2);
    assert_eq!(status["bus_reachable"], true);
    // No systemd on this test's buses: the unit columns are unknown, not invented.
    assert_eq!(status["systemd_reachable"], false, "{status}");
    assert!(status["daemons"][0]["unit"].is_null(), "{status}");

    let output = sluicectl(
        &fixture,
        &["docs", "list", "--query", "nothing here", "--json"],
    );
    assert!(output.status.success());
    assert_eq!(json_stdout(&output)["items"], json!([]));
}

#[test]
fn exit_statuses_say_what_went_wrong_and_nothing_changes() {
    let fixture = SuiteFixture::new("", "");
    let job = enqueue(&fixture, "noop");
    let cases: &[(&[&str], i32)] = &[
        (&["jobs", "show", "999999"], 3),
        (&["jobs", "cancel", "999999"], 3),
        (&["jobs", "retry", "999999"], 3),
        (&["jobs", "list", "--state", "sleeping"], 4),
        (&["jobs", "list", "--limit", "0"], 4),
        (&["jobs", "cancel", "0"], 4),
        (&["download", "ftp://example.org/a"], 4),
        (&["download", "http://127.0.0.1/a"], 4),
        (&["download", "http://localhost/a"], 4),
        (
            &["download", "https://93.184.216.34/a", "--sha256", "abc"],
            4,
        ),
        (
            &["download", "https://93.184.216.34/a", "--name", "../x"],
            4,
        ),
        (&["rescan"], 5),
        (&["no-such-command"], 2),
        (&["jobs", "show", "abc"], 2),
    ];
    for (arguments, expected) in cases {
        let output = sluicectl(&fixture, arguments);
        assert_eq!(
            output.status.code(),
            Some(*expected),
            "{arguments:?}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        assert!(
            !stderr(&output).is_empty(),
            "{arguments:?} said nothing on stderr"
        );
    }
    // A job in the wrong state is an invalid argument (4), and it stays as it was.
    let output = sluicectl(&fixture, &["jobs", "retry", &job.to_string()]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert_eq!(
        fixture.store().get_job(job).unwrap().state,
        JobState::Queued
    );
    let output = sluicectl(&fixture, &["--json", "jobs", "show", "999999"]);
    assert_eq!(json_stdout(&output)["error"]["code"], "not_found");
    assert!(
        fixture
            .store()
            .list_downloads(
                &Default::default(),
                sluice_core::store::jobs::PageRequest {
                    before_id: None,
                    limit: 10
                }
            )
            .unwrap()
            .items
            .is_empty(),
        "no refused download left a row"
    );
    let help = stdout(&sluicectl(&fixture, &["--help"]));
    assert!(
        help.contains("Exit status") && help.contains("5  daemon unavailable"),
        "{help}"
    );
}

#[test]
fn without_daemons_changes_go_to_the_store() {
    let fixture = SuiteFixture::new("", "");
    let job = enqueue(&fixture, "noop");
    let output = sluicectl(&fixture, &["--json", "jobs", "cancel", &job.to_string()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        json_stdout(&output),
        json!({ "job_id": job, "state": "cancelled", "via": "store" })
    );
    assert_eq!(
        fixture.store().get_job(job).unwrap().state,
        JobState::Cancelled
    );

    let output = sluicectl(&fixture, &["jobs", "retry", &job.to_string()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), format!("job {job}: queued"));

    let output = sluicectl(
        &fixture,
        &[
            "--json",
            "download",
            "https://93.184.216.34/files/a.bin",
            "--bundle",
            "set-1",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let created = json_stdout(&output);
    assert_eq!(created["via"], "store");
    let download = fixture
        .store()
        .get_download(created["download_id"].as_i64().unwrap())
        .unwrap();
    assert_eq!(download.file_name, "a.bin");
    assert_eq!(download.bundle.as_deref(), Some("set-1"));
    assert_eq!(download.job_id, created["job_id"].as_i64());
}

#[test]
fn with_sluice_web_running_job_changes_go_through_web1() {
    let fixture = SuiteFixture::new("", "");
    let job = enqueue(&fixture, "noop");
    let _web = WebDaemon::start(&fixture);
    let output = sluicectl(&fixture, &["--json", "jobs", "cancel", &job.to_string()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        json_stdout(&output),
        json!({ "job_id": job, "state": "cancelled", "via": "dbus" })
    );
    assert_eq!(
        fixture.store().get_job(job).unwrap().state,
        JobState::Cancelled
    );
    // D-Bus errors keep their meaning: NotFound → 3, WrongState → 4.
    let output = sluicectl(&fixture, &["jobs", "cancel", "999999"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let output = sluicectl(&fixture, &["jobs", "cancel", &job.to_string()]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));

    let output = sluicectl(&fixture, &["status"]);
    let web_line = stdout(&output)
        .lines()
        .find(|line| line.starts_with("sluice-web"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        web_line.contains("yes") && web_line.contains("running"),
        "{web_line}"
    );
}

/// `sluicectl workers N` with N outside 1..=256 or not a whole number: a clear error naming
/// the range, exit status 4 (invalid argument), and the configuration file byte-identical.
#[test]
fn workers_refuses_a_bad_count_and_leaves_the_config_file_alone() {
    let fixture = SuiteFixture::new("", "# a comment that must survive\n");
    let before = std::fs::read(&fixture.config_path).unwrap();
    for bad in ["0", "257", "abc", "-1", "2.5", ""] {
        let output = sluicectl(&fixture, &["workers", bad]);
        assert_eq!(
            output.status.code(),
            Some(4),
            "workers {bad:?}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("must be a whole number from 1 to 256")
                && stderr(&output).contains(&format!("{bad:?}")),
            "workers {bad:?}: {}",
            stderr(&output)
        );
        assert_eq!(
            std::fs::read(&fixture.config_path).unwrap(),
            before,
            "workers {bad:?} changed the file"
        );
    }
    let output = sluicectl(&fixture, &["--json", "workers", "0"]);
    assert_eq!(json_stdout(&output)["error"]["code"], "invalid_argument");
    // No argument at all is a usage error.
    assert_eq!(sluicectl(&fixture, &["workers"]).status.code(), Some(2));
    assert_eq!(std::fs::read(&fixture.config_path).unwrap(), before);
}

/// A valid count when systemd cannot be reached (here the "system bus" is a private
/// dbus-daemon that no systemd is on): exit status 5 and the file unchanged, since writing it
/// would leave the configuration and the running suite disagreeing. Not root: refused first.
#[test]
fn workers_without_systemd_changes_nothing() {
    let fixture = SuiteFixture::new("", "");
    let before = std::fs::read(&fixture.config_path).unwrap();
    let output = std::process::Command::new(binary_path("sluicectl"))
        .arg("--config")
        .arg(&fixture.config_path)
        .args(["workers", "3"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", fixture.bus.address())
        .output()
        .expect("run sluicectl");
    if crate::support::have_root() {
        assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
        assert!(
            stderr(&output).contains("systemd cannot be reached on the system bus")
                && stderr(&output).contains("nothing changed"),
            "{}",
            stderr(&output)
        );
    } else {
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(
            stderr(&output).contains("needs root"),
            "{}",
            stderr(&output)
        );
    }
    assert_eq!(std::fs::read(&fixture.config_path).unwrap(), before);
}

/// `config check` accepts what the daemons accept and names file, line and key otherwise;
/// `config get ingest.workers` prints the bare number (the generator reads it).
#[test]
fn config_check_and_get_load_the_file_as_the_daemons_do() {
    let fixture = SuiteFixture::new("", "");
    let output = sluicectl(&fixture, &["config", "check"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("valid"), "{}", stdout(&output));
    let output = sluicectl(&fixture, &["config", "get", "ingest.workers"]);
    assert_eq!(stdout(&output), "2\n", "{}", stderr(&output));
    let output = sluicectl(&fixture, &["config", "get", "no.such.key"]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));

    let text = std::fs::read_to_string(&fixture.config_path).unwrap();
    std::fs::write(
        &fixture.config_path,
        text.replace("[ingest]\n", "[ingest]\nworkers = 0\n"),
    )
    .unwrap();
    for arguments in [
        &["config", "check"][..],
        &["config", "get", "ingest.workers"],
    ] {
        let output = sluicectl(&fixture, arguments);
        assert_eq!(output.status.code(), Some(1), "{arguments:?}");
        let message = stderr(&output);
        assert!(
            message.contains(&fixture.config_path.display().to_string())
                && message.contains("line ")
                && message.contains("ingest.workers"),
            "{arguments:?}: {message}"
        );
        assert!(stdout(&output).is_empty(), "{}", stdout(&output));
    }
}

/// Drop-ins (`sluice.toml.d/*.toml` beside the file) are merged in name order by every
/// reader: `config check` lists them, `config get` and the generator see their values, and
/// an error in one names that drop-in, its line and key.
#[test]
fn config_dropins_are_merged_by_check_get_and_the_generator() {
    let fixture = SuiteFixture::new("", "");
    let dropins = fixture.directory.path().join(format!(
        "{}.d",
        fixture.config_path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir(&dropins).unwrap();
    std::fs::write(dropins.join("20-later.toml"), "[ingest]\nworkers = 5\n").unwrap();
    std::fs::write(dropins.join("10-earlier.toml"), "[ingest]\nworkers = 4\n").unwrap();
    std::fs::write(dropins.join("README"), "not a drop-in").unwrap();
    let output = sluicectl(&fixture, &["config", "get", "ingest.workers"]);
    assert_eq!(stdout(&output), "5\n", "{}", stderr(&output));
    let output = sluicectl(&fixture, &["--json", "config", "check"]);
    let check = json_stdout(&output);
    assert_eq!(check["ingest"]["workers"], 5, "{check}");
    let listed: Vec<&str> = check["dropins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|path| path.as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            dropins.join("10-earlier.toml").to_str().unwrap(),
            dropins.join("20-later.toml").to_str().unwrap()
        ]
    );
    let output = sluicectl(&fixture, &["config", "check"]);
    assert!(
        stdout(&output).contains("with drop-in") && stdout(&output).contains("20-later.toml"),
        "{}",
        stdout(&output)
    );

    let generator =
        crate::support::workspace_root().join("packaging/systemd/sluice-worker-generator");
    let generated = fixture.directory.path().join("generated");
    let output = std::process::Command::new(&generator)
        .arg(&generated)
        .env("SLUICECTL", binary_path("sluicectl"))
        .env("SLUICE_CONFIG", &fixture.config_path)
        .env(
            "SLUICE_GENERATOR_LOG",
            fixture.directory.path().join("generator.log"),
        )
        .output()
        .expect("run the generator");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        std::fs::read_dir(generated.join("sluice.target.wants"))
            .unwrap()
            .count(),
        5
    );

    std::fs::write(
        dropins.join("30-bad.toml"),
        "# mine\n[ingest]\nworkers = 0\n",
    )
    .unwrap();
    let output = sluicectl(&fixture, &["config", "check"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("30-bad.toml")
            && message.contains("line 3")
            && message.contains("ingest.workers"),
        "{message}"
    );
}

/// The shipped generator, run as systemd runs it (one output directory argument): one
/// `sluice.target.wants/` link per configured instance, to the template; with an invalid
/// configuration no link at all, the reason logged, and exit status 0 (a generator must not
/// fail the boot).
#[test]
fn the_worker_generator_links_exactly_the_configured_instances() {
    let fixture = SuiteFixture::new("", "");
    let generator =
        crate::support::workspace_root().join("packaging/systemd/sluice-worker-generator");
    let log_file = fixture.directory.path().join("generator.log");
    let run = |output_directory: &std::path::Path| {
        std::process::Command::new(&generator)
            .arg(output_directory)
            .arg(output_directory.join("early"))
            .arg(output_directory.join("late"))
            .env("SLUICECTL", binary_path("sluicectl"))
            .env("SLUICE_CONFIG", &fixture.config_path)
            .env("SLUICE_GENERATOR_LOG", &log_file)
            .output()
            .expect("run the generator")
    };
    let text = std::fs::read_to_string(&fixture.config_path).unwrap();
    std::fs::write(
        &fixture.config_path,
        text.replace("[ingest]\n", "[ingest]\nworkers = 3\n"),
    )
    .unwrap();
    let three = fixture.directory.path().join("generated-3");
    let output = run(&three);
    assert!(output.status.success(), "{}", stderr(&output));
    let mut links: Vec<(String, std::path::PathBuf)> =
        std::fs::read_dir(three.join("sluice.target.wants"))
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    std::fs::read_link(entry.path()).unwrap(),
                )
            })
            .collect();
    links.sort();
    let template = std::path::PathBuf::from("/lib/systemd/system/sluice-ingest-worker@.service");
    assert_eq!(
        links,
        (1..=3)
            .map(|instance| (
                format!("sluice-ingest-worker@{instance}.service"),
                template.clone()
            ))
            .collect::<Vec<_>>()
    );

    std::fs::write(
        &fixture.config_path,
        text.replace("[ingest]\n", "[ingest]\nworkers = 300\n"),
    )
    .unwrap();
    let invalid = fixture.directory.path().join("generated-invalid");
    let output = run(&invalid);
    assert!(output.status.success(), "{}", stderr(&output));
    let logged = std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        logged.contains("no ingest worker instances wanted")
            && logged.contains("ingest.workers")
            && logged.contains("300"),
        "the generator logged {logged:?}"
    );
    assert!(
        !invalid.join("sluice.target.wants").exists(),
        "an invalid configuration still wanted workers"
    );
}
