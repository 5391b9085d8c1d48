//! Configuration fuzzing (issue 12): `sluicectl config check` accepts a file exactly when
//! every daemon can live with it. Every duration and whole-number key is tried at both ends
//! of its range, all at once, then at random values (each key present or not, within its
//! range or just outside it). For a file `config check` accepts, each of the four daemons
//! must start (READY=1) and stop cleanly on SIGTERM (exit 0); for a file it refuses, each
//! daemon must refuse it too: exit 78 (EX_CONFIG) without panicking.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use sluice_core::config::{DURATION_KEYS, NUMBER_KEYS};

use crate::support::{
    BusPolicy, DEADLINE, DaemonProcess, PrivateBus, SpawnOptions, WEB_READ_TOKEN, WEB_TEST_TOKEN,
    binary_path,
};

/// The daemons and the arguments each is started with.
const DAEMONS: [(&str, &[&str]); 4] = [
    ("sluice-monitor", &[]),
    ("sluice-scraper", &[]),
    ("sluice-ingest-worker", &["--instance", "1"]),
    ("sluice-web", &[]),
];

/// Random files tried per run, on top of the two with every key at an end of its range: half
/// with every value in its range, half with one value just outside it.
const RANDOM_FILES: usize = 12;

/// A state directory and a private bus for one configuration file at a time.
struct Bench {
    bus: PrivateBus,
    directory: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        let bus = PrivateBus::start(BusPolicy::AllowEverything).expect("private bus");
        let directory = tempfile::tempdir().expect("temp dir");
        let root = directory.path();
        for folder in ["inbox", "staging", "library"] {
            std::fs::create_dir_all(root.join(folder)).unwrap();
        }
        std::fs::write(root.join("api-token"), format!("{WEB_TEST_TOKEN}\n")).unwrap();
        std::fs::write(root.join("read-token"), format!("{WEB_READ_TOKEN}\n")).unwrap();
        Bench { bus, directory }
    }

    fn root(&self) -> &Path {
        self.directory.path()
    }

    /// Writes `sluice.toml` with the keys in `values` (dotted key → TOML value) on top of
    /// what every file needs here (paths in the temp dir, the private bus, a free port).
    fn write_config(&self, values: &BTreeMap<String, String>) -> std::path::PathBuf {
        let root = self.root().display().to_string();
        let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut add = |table: &str, line: String| {
            tables.entry(table.to_owned()).or_default().push(line);
        };
        add("store", format!("path = \"{root}/sluice.db\""));
        add("bus", format!("address = \"{}\"", self.bus.address()));
        add("web", "listen = \"127.0.0.1:0\"".to_owned());
        add("web", format!("token_file = \"{root}/api-token\""));
        add("web", format!("read_token_file = \"{root}/read-token\""));
        add("ingest", format!("library = \"{root}/library\""));
        add("scraper", format!("inbox = \"{root}/inbox\""));
        add("scraper", format!("staging = \"{root}/staging\""));
        for (key, value) in values {
            let (table, name) = key.split_once('.').expect("dotted key");
            add(table, format!("{name} = {value}"));
        }
        let mut text = String::new();
        for (table, lines) in &tables {
            text.push_str(&format!("[{table}]\n{}\n\n", lines.join("\n")));
        }
        text.push_str(&format!(
            "[[watch]]\npath = \"{root}/inbox\"\nmode = \"consume\"\n"
        ));
        let path = self.root().join("sluice.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// What `sluicectl config check` says of the file: accepted, or its message.
    fn config_check(&self, config: &Path) -> Result<(), String> {
        let output = Command::new(binary_path("sluicectl"))
            .args(["config", "check"])
            .env("SLUICE_CONFIG", config)
            .output()
            .expect("run sluicectl");
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Holds the rule for one file: accepted ⇒ every daemon starts and stops cleanly;
    /// refused ⇒ every daemon refuses it with EX_CONFIG. `what` names the file in failures.
    fn check_the_rule(&self, values: &BTreeMap<String, String>, what: &str) -> bool {
        let config = self.write_config(values);
        let text = std::fs::read_to_string(&config).unwrap();
        let accepted = self.config_check(&config);
        if let Err(message) = &accepted {
            eprintln!("{what}: refused: {}", message.trim());
        }
        for (daemon, arguments) in DAEMONS {
            let mut command = Command::new(binary_path(daemon));
            command
                .args(arguments)
                .env("SLUICE_CONFIG", &config)
                .env("SLUICE_LOG", "info");
            let mut process = DaemonProcess::spawn(
                &mut command,
                SpawnOptions::named(daemon)
                    .log_to(&self.root().join(format!("{daemon}.log")))
                    .notify(),
            )
            .unwrap_or_else(|error| panic!("{error:#}"));
            match &accepted {
                Ok(()) => {
                    process.wait_for_ready(DEADLINE).unwrap_or_else(|error| {
                        panic!("{what}: config check accepted it but {error:#}\n{text}")
                    });
                    let status = process
                        .terminate(DEADLINE)
                        .unwrap_or_else(|error| panic!("{what}: {error:#}\n{text}"));
                    assert!(
                        status.success(),
                        "{what}: {daemon} stopped with {status} on SIGTERM: {}\n{text}",
                        process.log()
                    );
                }
                Err(message) => {
                    let status = process.wait_for_exit(DEADLINE).unwrap_or_else(|error| {
                        panic!(
                            "{what}: config check refused it ({message}) but {daemon} runs \
                                 with it: {error:#}\n{text}"
                        )
                    });
                    assert_eq!(
                        status.code(),
                        Some(78),
                        "{what}: config check refused it ({message}); {daemon} exited with \
                         {status}: {}\n{text}",
                        process.log()
                    );
                }
            }
            assert!(
                !process.log().contains("panicked"),
                "{what}: {daemon} panicked: {}\n{text}",
                process.log()
            );
        }
        accepted.is_ok()
    }
}

fn duration_value(duration: Duration) -> String {
    format!("\"{}ms\"", duration.as_millis())
}

/// Every key at one end of its range.
fn every_key_at(maximum: bool) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    for (key, range) in DURATION_KEYS {
        let end = if maximum {
            range.maximum
        } else {
            range.minimum
        };
        values.insert((*key).to_owned(), duration_value(end));
    }
    for (key, range) in NUMBER_KEYS {
        let end = if maximum { range.end() } else { range.start() };
        values.insert((*key).to_owned(), end.to_string());
    }
    values
}

#[test]
fn every_key_at_both_ends_of_its_range_is_accepted_and_every_daemon_lives_with_it() {
    let bench = Bench::new();
    for (maximum, what) in [
        (false, "every key at its minimum"),
        (true, "every key at its maximum"),
    ] {
        assert!(
            bench.check_the_rule(&every_key_at(maximum), what),
            "{what}: config check must accept the ends of every range"
        );
    }
}

/// `[scraper] hf_endpoint` and `hf_credentials_file` (issue 14) are not numbers or durations;
/// their ends are the shapes a URL or a path may take. Each accepted file must suit every
/// daemon, each refused one be refused by every daemon.
#[test]
fn the_hub_endpoint_and_its_credentials_file_are_checked_like_every_key() {
    let bench = Bench::new();
    let accepted: &[(&str, &str)] = &[
        ("scraper.hf_endpoint", "\"http://127.0.0.1:9\""),
        ("scraper.hf_endpoint", "\"https://hub.example.org/mirror/\""),
        (
            "scraper.hf_credentials_file",
            "\"/etc/sluice/credentials/hf\"",
        ),
    ];
    for (key, value) in accepted {
        let values = BTreeMap::from([((*key).to_owned(), (*value).to_owned())]);
        assert!(
            bench.check_the_rule(&values, &format!("{key} = {value}")),
            "{key} = {value} must be accepted"
        );
    }
    let refused: &[(&str, &str)] = &[
        ("scraper.hf_endpoint", "\"ftp://hub.example.org\""),
        (
            "scraper.hf_endpoint",
            "\"https://user:secret@hub.example.org\"",
        ),
        (
            "scraper.hf_endpoint",
            "\"https://hub.example.org/?token=1\"",
        ),
        ("scraper.hf_endpoint", "\"not a url\""),
        ("scraper.hf_endpoint", "\"\""),
        ("scraper.hf_endpoint", "42"),
        ("scraper.hf_credentials_file", "\"relative/token\""),
    ];
    for (key, value) in refused {
        let values = BTreeMap::from([((*key).to_owned(), (*value).to_owned())]);
        assert!(
            !bench.check_the_rule(&values, &format!("{key} = {value}")),
            "{key} = {value} must be refused"
        );
    }
}

#[test]
fn config_check_accepts_a_random_file_exactly_when_every_daemon_does() {
    let seed: u64 = std::env::var("SLUICE_CONFIG_FUZZ_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("config fuzzing seed {seed} (SLUICE_CONFIG_FUZZ_SEED={seed} repeats this run)");
    let mut random = rand::rngs::StdRng::seed_from_u64(seed);
    let bench = Bench::new();
    let mut accepted = 0;
    for round in 0..RANDOM_FILES {
        let mut values = BTreeMap::new();
        let outside = round % 2 == 1;
        for (key, range) in DURATION_KEYS {
            if random.random_bool(0.5) {
                continue;
            }
            let (low, high) = (range.minimum.as_millis(), range.maximum.as_millis());
            let millis = match random.random_range(0..10) {
                2 => low,
                3 => high,
                // Spread over the orders of magnitude, not only near the top.
                _ => {
                    let exponent = random.random_range(0.0..=((high - low + 1) as f64).log10());
                    low + (10f64.powf(exponent) as u128).min(high - low)
                }
            };
            values.insert(
                (*key).to_owned(),
                duration_value(Duration::from_millis(millis as u64)),
            );
        }
        for (key, range) in NUMBER_KEYS {
            if random.random_bool(0.5) {
                continue;
            }
            let (low, high) = (u64::from(*range.start()), u64::from(*range.end()));
            let number = random.random_range(low..=high);
            values.insert((*key).to_owned(), number.to_string());
        }
        if !outside {
            // The keys that depend on each other are drawn together, so that most in-range
            // files are accepted (the rules between them have their own tests).
            let lease = random.random_range(10..=24 * 3600 * 1000u64);
            let heartbeat = random.random_range(1..=lease / 2);
            let base = random.random_range(1..=7 * 24 * 3600 * 1000u64);
            let most = random.random_range(base..=7 * 24 * 3600 * 1000u64);
            for (key, millis) in [
                ("jobs.lease", lease),
                ("jobs.heartbeat_interval", heartbeat),
                ("jobs.retry_backoff_base", base),
                ("jobs.retry_backoff_max", most),
            ] {
                values.insert(
                    key.to_owned(),
                    duration_value(Duration::from_millis(millis)),
                );
            }
        } else {
            // One value just outside its range: config check and every daemon must refuse.
            let index = random.random_range(0..DURATION_KEYS.len() + NUMBER_KEYS.len());
            let (key, value) = match DURATION_KEYS.get(index) {
                Some((key, range)) if range.minimum.is_zero() || random.random_bool(0.5) => (
                    key,
                    duration_value(range.maximum + Duration::from_millis(1)),
                ),
                Some((key, range)) => (
                    key,
                    duration_value(range.minimum - Duration::from_millis(1)),
                ),
                None => {
                    let (key, range) = &NUMBER_KEYS[index - DURATION_KEYS.len()];
                    let value = if *range.start() == 0 || random.random_bool(0.5) {
                        u64::from(*range.end()) + 1
                    } else {
                        u64::from(*range.start()) - 1
                    };
                    (key, value.to_string())
                }
            };
            values.insert((*key).to_owned(), value);
        }
        let what = format!("random file {round} of seed {seed}");
        let was_accepted = bench.check_the_rule(&values, &what);
        assert!(
            !(outside && was_accepted),
            "{what}: a value outside its range was accepted: {values:?}"
        );
        if was_accepted {
            accepted += 1;
        }
    }
    eprintln!("{accepted} of {RANDOM_FILES} random files were accepted");
}

/// `[web] metrics_access` takes "token" or "loopback", and every daemon lives with each;
/// anything else is refused by `config check` and every daemon alike, naming the key's line
/// and the words it takes.
#[test]
fn metrics_access_is_token_or_loopback_and_nothing_else() {
    let bench = Bench::new();
    for word in ["token", "loopback"] {
        let values = BTreeMap::from([("web.metrics_access".to_owned(), format!("\"{word}\""))]);
        assert!(
            bench.check_the_rule(&values, &format!("metrics_access = {word:?}")),
            "config check must accept metrics_access = {word:?}"
        );
    }
    for bad in ["\"public\"", "\"\"", "\"Token\"", "true", "1"] {
        let values = BTreeMap::from([("web.metrics_access".to_owned(), bad.to_owned())]);
        assert!(
            !bench.check_the_rule(&values, &format!("metrics_access = {bad}")),
            "config check must refuse metrics_access = {bad}"
        );
        let message = bench
            .config_check(&bench.write_config(&values))
            .unwrap_err();
        assert!(message.contains("metrics_access"), "{message}");
    }
    let values = BTreeMap::from([("web.metrics_access".to_owned(), "\"public\"".to_owned())]);
    let message = bench
        .config_check(&bench.write_config(&values))
        .unwrap_err();
    assert!(
        message.contains("expected one of \"token\", \"loopback\""),
        "{message}"
    );
}
