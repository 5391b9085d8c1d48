//! Tests of loading: the shipped defaults, merging a user's file over them, the environment
//! variable, and every kind of bad input pointing at file, line, column and key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::*;

const USER_FILE: &str = "/etc/sluice/test.toml";

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new(USER_FILE))
}

fn load_ok(text: &str) -> Config {
    load(text).unwrap_or_else(|error| panic!("expected {text:?} to load, got: {error}"))
}

/// Loads `text`, expects an error of the given kind, and checks that both the location and
/// the message a person reads name the file, line, column and key, and say what is wrong.
#[track_caller]
fn assert_rejected(
    text: &str,
    expected_kind: &str,
    (line, column): (usize, usize),
    key: &str,
    explanation: &str,
) {
    let error = load(text).expect_err("bad configuration must be rejected");
    let kind = match &error {
        ConfigError::Read { .. } => "read",
        ConfigError::Syntax { .. } => "syntax",
        ConfigError::Schema { .. } => "schema",
        ConfigError::Invalid { .. } => "invalid",
    };
    let message = error.to_string();
    assert_eq!(kind, expected_kind, "wrong kind of error: {message}");
    let location = error.location().expect("content errors have a location");
    assert_eq!(location.path, Path::new(USER_FILE), "{message}");
    assert_eq!(
        (location.line, location.column),
        (line, column),
        "{message}"
    );
    assert_eq!(location.key.as_deref(), Some(key), "{message}");
    for part in [
        USER_FILE.to_owned(),
        format!("line {line}"),
        format!("column {column}"),
        format!("key `{key}`"),
        explanation.to_owned(),
    ] {
        assert!(
            message.contains(&part),
            "{message:?} should contain {part:?}"
        );
    }
}

#[test]
fn shipped_defaults_load_and_validate() {
    let config = defaults();
    assert_eq!(config.store.path, Path::new("/var/lib/sluice/sluice.db"));
    assert_eq!(config.store.durability, Durability::Full);
    assert_eq!(config.store.busy_timeout, Duration::from_secs(5));
    assert_eq!(config.bus.address, BusAddress::System);
    assert_eq!(config.jobs.lease, Duration::from_secs(30));
    assert_eq!(config.jobs.heartbeat_interval, Duration::from_secs(5));
    assert_eq!(config.jobs.max_attempts, 5);
    assert_eq!(config.jobs.retry_backoff_base, Duration::from_secs(1));
    assert_eq!(config.jobs.retry_backoff_max, Duration::from_secs(300));
    assert_eq!(config.jobs.claim_batch, 64);
    assert_eq!(config.service.stop_timeout, Duration::from_secs(20));
    assert_eq!(
        config.web.listen,
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.web.base_path, "/");
    assert_eq!(config.web.token_file, Path::new("/etc/sluice/api-token"));
    assert_eq!(
        config.web.read_token_file,
        Path::new("/etc/sluice/read-token")
    );
    assert!(!config.web.public_reads);
    assert_eq!(config.web.max_upload_size, 1 << 30);
    assert_eq!(config.web.allowed_hosts, ["127.0.0.1", "localhost"]);
    assert_eq!(config.web.max_event_streams, 1000);
    assert_eq!(config.watches.len(), 1);
    let inbox = &config.watches[0];
    assert_eq!(inbox.path, Path::new("/var/lib/sluice/inbox"));
    assert_eq!(inbox.mode, WatchMode::Consume);
    assert!(inbox.recursive);
    assert_eq!(inbox.watcher, Watcher::Auto);
    assert_eq!(inbox.poll_interval, Duration::from_secs(30));
    assert_eq!(inbox.quiet_period, Duration::from_secs(2));
    assert!(inbox.ignore.globs().is_empty());
    assert_eq!(config.ingest.workers, 2);
    assert_eq!(config.ingest.library, Path::new("/var/lib/sluice/library"));
    assert_eq!(config.ingest.text_max_bytes, 16 << 20);
    assert_eq!(config.ingest.job_timeout, Duration::from_secs(10 * 60));
    assert_eq!(config.ingest.max_pending, 10_000);
    assert!(config.processors.is_empty());
    assert_eq!(
        config.scraper.download_timeout,
        Duration::from_secs(6 * 3600)
    );
    assert_eq!(config.scraper.inbox, Path::new("/var/lib/sluice/inbox"));
    assert_eq!(config.scraper.staging, Path::new("/var/lib/sluice/staging"));
    assert_eq!(config.scraper.per_host_concurrency, 2);
    assert_eq!(config.scraper.politeness_delay, Duration::from_secs(1));
    assert!(!config.scraper.allow_private_addresses);
    assert_eq!(config.scraper.progress_interval, Duration::from_secs(1));
    assert_eq!(config.scraper.max_pending, 1000);
    assert!(config.sources.is_empty());
    assert_eq!(config.limits.max_payload_bytes, 64 << 10);
    assert_eq!(config.limits.max_string_length, 4096);
}

#[test]
fn shipped_file_loaded_as_a_user_file_equals_the_defaults() {
    let config = Config::from_toml_str(BUILT_IN_DEFAULTS, Path::new(DEFAULT_CONFIG_PATH))
        .expect("the shipped file loads as a user file");
    assert_eq!(config, defaults());
    assert_eq!(config.clone(), config);
}

#[test]
fn shipped_file_documents_every_key_with_its_default() {
    let mut in_watch_entry = false;
    let mut comment_block: Vec<&str> = Vec::new();
    for (index, line) in BUILT_IN_DEFAULTS.lines().enumerate() {
        let line = line.trim();
        if let Some(comment) = line.strip_prefix('#') {
            comment_block.push(comment);
            continue;
        }
        if line.starts_with('[') {
            in_watch_entry = line == "[[watch]]";
        } else if let Some((key, _)) = line.split_once('=') {
            assert!(
                !comment_block.is_empty(),
                "line {}: key `{}` has no comment above it",
                index + 1,
                key.trim()
            );
            // The entries of the default [[watch]] list are examples of required keys; every
            // other key states its default.
            assert!(
                in_watch_entry || comment_block.iter().any(|text| text.contains("Default")),
                "line {}: the comment of `{}` does not state its default",
                index + 1,
                key.trim()
            );
        }
        comment_block.clear();
    }
}

/// The commented [[processor]] and [[source]] examples in the shipped file are valid when
/// uncommented, so a person copying them gets a working configuration.
#[test]
fn commented_examples_in_the_shipped_file_are_valid() {
    for header in ["# [[processor]]", "# [[source]]"] {
        let example: String = BUILT_IN_DEFAULTS
            .lines()
            .skip_while(|line| *line != header)
            .take_while(|line| line.starts_with('#'))
            .map(|line| format!("{}\n", line.trim_start_matches('#').trim_start()))
            .collect();
        assert!(example.len() > header.len(), "example {header} not found");
        let config = load_ok(&example);
        assert_eq!(
            config.processors.len() + config.sources.len(),
            1,
            "{example}"
        );
    }
}

#[test]
fn user_file_overrides_only_the_keys_it_sets() {
    let config = load_ok(
        "[store]\ndurability = \"normal\"\n\n[jobs]\nlease = \"1m\"\nheartbeat_interval = \"10s\"\n",
    );
    let defaults = defaults();
    assert_eq!(config.store.durability, Durability::Normal);
    assert_eq!(config.store.path, defaults.store.path);
    assert_eq!(config.store.busy_timeout, defaults.store.busy_timeout);
    assert_eq!(config.jobs.lease, Duration::from_secs(60));
    assert_eq!(config.jobs.heartbeat_interval, Duration::from_secs(10));
    assert_eq!(config.jobs.max_attempts, defaults.jobs.max_attempts);
    assert_eq!(config.web, defaults.web);
    assert_eq!(config.watches, defaults.watches);
}

#[test]
fn inline_and_dotted_tables_merge_like_table_headers() {
    let config = load_ok("store = { durability = \"normal\" }\nweb.base_path = \"/sluice\"\n");
    assert_eq!(config.store.durability, Durability::Normal);
    assert_eq!(config.store.path, defaults().store.path);
    assert_eq!(config.web.base_path, "/sluice");
    assert_eq!(config.web.listen, defaults().web.listen);
}

#[test]
fn user_lists_replace_the_default_list_and_take_entry_defaults() {
    let config = load_ok(
        r#"
[watch_defaults]
recursive = false

[[watch]]
path = "/srv/drop"
mode = "consume"
ignore = ["*.tmp", "cache/**"]

[[watch]]
path = "/srv/archive"
mode = "index"
watcher = "poll"
poll_interval = "5m"
"#,
    );
    assert_eq!(
        config.watches.len(),
        2,
        "the default inbox watch is replaced"
    );
    let (drop, archive) = (&config.watches[0], &config.watches[1]);
    assert_eq!(drop.path, Path::new("/srv/drop"));
    assert_eq!(drop.mode, WatchMode::Consume);
    assert!(!drop.recursive, "taken from the user's [watch_defaults]");
    assert_eq!(
        drop.watcher,
        Watcher::Auto,
        "taken from the shipped [watch_defaults]"
    );
    assert_eq!(drop.poll_interval, Duration::from_secs(30));
    assert_eq!(drop.ignore.globs().len(), 2);
    assert_eq!(archive.mode, WatchMode::Index);
    assert_eq!(archive.watcher, Watcher::Poll);
    assert_eq!(archive.poll_interval, Duration::from_secs(300));
    assert!(archive.ignore.globs().is_empty());
}

#[test]
fn an_empty_list_written_by_the_user_means_no_watches() {
    assert!(load_ok("watch = []\n").watches.is_empty());
}

#[test]
fn ignore_rules_always_skip_partial_and_hidden_files() {
    let config = load_ok(
        "[[watch]]\npath = \"/srv/drop\"\nmode = \"consume\"\nignore = [\"*.tmp\", \"cache/**\"]\n",
    );
    let rules = &config.watches[0].ignore;
    for ignored in [
        "movie.mkv.part",
        "sub/movie.mkv.part",
        ".hidden",
        ".git/config",
        "a/.cache/b.txt",
        "x.tmp",
        "deep/down/x.tmp",
        "cache/a/b.bin",
    ] {
        assert!(
            rules.is_ignored(Path::new(ignored)),
            "{ignored} should be ignored"
        );
    }
    for kept in [
        "./movie.mkv",
        "movie.mkv",
        "sub/report.pdf",
        "x.tmpl",
        "not-cache/a.bin",
        "partial.txt",
    ] {
        assert!(
            !rules.is_ignored(Path::new(kept)),
            "{kept} should not be ignored"
        );
    }
}

#[test]
fn processors_and_sources_load_with_their_defaults() {
    let config = load_ok(
        r#"
[processor_defaults]
max_output = 4096

[[processor]]
name = "ocr"
mime = "image/*"
argv = ["/usr/bin/tesseract", "{path}", "--type={mime}", "{{literal}}"]

[[source]]
name = "builds"
url = "https://example.org/builds/"
mode = "links"
selector = "a.download"
pattern = '\.tar\.gz$'
credentials_file = "/etc/sluice/credentials/builds"

[[source]]
name = "news"
url = "http://example.org/feed.xml"
mode = "feed"
every = "1h"
"#,
    );
    let processor = &config.processors[0];
    assert_eq!(processor.timeout, Duration::from_secs(300));
    assert_eq!(processor.max_output, 4096);
    assert!(processor.mime.matches("image/png"));
    assert!(!processor.mime.matches("application/pdf"));
    assert_eq!(
        processor.command_line(
            Path::new("/srv/in/a b.png"),
            "image/png",
            Path::new("/tmp/o")
        ),
        [
            "/usr/bin/tesseract",
            "/srv/in/a b.png",
            "--type=image/png",
            "{literal}"
        ]
        .map(OsString::from)
    );
    let (builds, news) = (&config.sources[0], &config.sources[1]);
    assert_eq!(builds.mode, SourceMode::Links);
    assert_eq!(builds.every, Duration::from_secs(15 * 60));
    assert_eq!(builds.selector.as_deref(), Some("a.download"));
    let pattern = builds.pattern.as_ref().expect("pattern set");
    assert!(pattern.0.is_match("https://example.org/x.tar.gz"));
    assert_eq!(
        builds.credentials_file.as_deref(),
        Some(Path::new("/etc/sluice/credentials/builds"))
    );
    assert_eq!(news.mode, SourceMode::Feed);
    assert_eq!(news.every, Duration::from_secs(3600));
    assert_eq!(news.url.as_str(), "http://example.org/feed.xml");
}

#[test]
fn job_and_download_timeouts_load_and_are_bounded() {
    let config = load_ok("[ingest]\njob_timeout = \"2s\"\n[scraper]\ndownload_timeout = \"90m\"\n");
    assert_eq!(config.ingest.job_timeout, Duration::from_secs(2));
    assert_eq!(
        config.scraper.download_timeout,
        Duration::from_secs(90 * 60)
    );
    assert_rejected(
        "[ingest]\njob_timeout = \"0s\"\n",
        "invalid",
        (2, 15),
        "ingest.job_timeout",
        "duration must be more than zero",
    );
    assert_rejected(
        "[ingest]\njob_timeout = \"8days\"\n",
        "invalid",
        (2, 15),
        "ingest.job_timeout",
        "must be at most \"7days\"",
    );
    assert_rejected(
        "[scraper]\ndownload_timeout = \"soon\"\n",
        "invalid",
        (2, 20),
        "scraper.download_timeout",
        "invalid duration \"soon\"",
    );
    assert_rejected(
        "[scraper]\ndownload_timeout = 60\n",
        "schema",
        (2, 20),
        "scraper.download_timeout",
        "invalid type",
    );
}

#[test]
fn bus_address_accepts_system_session_and_addresses() {
    assert_eq!(
        load_ok("[bus]\naddress = \"session\"\n").bus.address,
        BusAddress::Session
    );
    assert_eq!(
        load_ok("[bus]\naddress = \"unix:path=/run/x/bus\"\n")
            .bus
            .address,
        BusAddress::Address("unix:path=/run/x/bus".to_owned())
    );
}

// --- Bad input: each kind is rejected, pointing at file, line, column and key. ---

#[test]
fn unknown_top_level_key_is_rejected() {
    assert_rejected(
        "[store]\n\nlogging = 1\n",
        "schema",
        (3, 1),
        "store.logging",
        "unknown field `logging`",
    );
    assert_rejected(
        "colour = \"blue\"\n",
        "schema",
        (1, 1),
        "colour",
        "unknown field `colour`",
    );
}

#[test]
fn unknown_nested_key_is_rejected() {
    assert_rejected(
        "[store]\nbusy_timout = \"5s\"\n",
        "schema",
        (2, 1),
        "store.busy_timout",
        "unknown field `busy_timout`, expected one of `path`, `durability`, `busy_timeout`",
    );
    assert_rejected(
        "[[watch]]\npath = \"/srv/a\"\nmode = \"index\"\nrecursve = true\n",
        "schema",
        (4, 1),
        "watch[0].recursve",
        "unknown field `recursve`",
    );
}

#[test]
fn wrong_type_is_rejected() {
    assert_rejected(
        "[store]\nbusy_timeout = 5\n",
        "schema",
        (2, 16),
        "store.busy_timeout",
        "invalid type: integer `5`, expected a string",
    );
    assert_rejected(
        "[ingest]\nworkers = \"two\"\n",
        "schema",
        (2, 11),
        "ingest.workers",
        "invalid type: string \"two\"",
    );
    assert_rejected(
        "store = 3\n",
        "schema",
        (1, 9),
        "store",
        "expected the [store] table",
    );
    assert_rejected(
        "[scraper]\nallow_private_addresses = \"no\"\n",
        "schema",
        (2, 27),
        "scraper.allow_private_addresses",
        "expected a boolean",
    );
}

#[test]
fn missing_required_key_in_a_list_entry_is_rejected() {
    assert_rejected(
        "[[watch]]\npath = \"/srv/a\"\n",
        "schema",
        (1, 1),
        "watch[0]",
        "missing field `mode`",
    );
}

#[test]
fn relative_path_is_rejected() {
    assert_rejected(
        "[store]\npath = \"sluice.db\"\n",
        "invalid",
        (2, 8),
        "store.path",
        "path \"sluice.db\" must be absolute",
    );
    assert_rejected(
        "[ingest]\nlibrary = \"/var/lib/../tmp\"\n",
        "invalid",
        (2, 11),
        "ingest.library",
        "must not contain `..`",
    );
}

#[test]
fn bad_duration_is_rejected() {
    assert_rejected(
        "[jobs]\nlease = \"30 parsecs\"\n",
        "invalid",
        (2, 9),
        "jobs.lease",
        "invalid duration \"30 parsecs\"",
    );
    assert_rejected(
        "[service]\nstop_timeout = \"0s\"\n",
        "invalid",
        (2, 16),
        "service.stop_timeout",
        "duration must be more than zero",
    );
}

#[test]
fn zero_and_out_of_range_limits_are_rejected() {
    assert_rejected(
        "[jobs]\nclaim_batch = 0\n",
        "invalid",
        (2, 15),
        "jobs.claim_batch",
        "must be more than zero",
    );
    assert_rejected(
        "[limits]\nmax_request_body = \"0 KiB\"\n",
        "invalid",
        (2, 20),
        "limits.max_request_body",
        "size must be more than zero",
    );
    assert_rejected(
        "[web]\nmax_upload_size = \"5 parsecs\"\n",
        "invalid",
        (2, 19),
        "web.max_upload_size",
        "unknown unit \"parsecs\"",
    );
    assert_rejected(
        "[ingest]\nworkers = 1000\n",
        "invalid",
        (2, 11),
        "ingest.workers",
        "1000 is out of range: must be from 1 to 256",
    );
    // Regression: the file accepted any count, the store refused every job above 1000.
    assert_rejected(
        "[jobs]\nmax_attempts = 1001\n",
        "invalid",
        (2, 16),
        "jobs.max_attempts",
        "1001 is out of range: must be from 1 to 1000",
    );
    assert_rejected(
        "[limits]\nmax_payload_bytes = -4\n",
        "schema",
        (2, 21),
        "limits.max_payload_bytes",
        "invalid value: integer `-4`",
    );
}

#[test]
fn bad_enum_value_is_rejected() {
    assert_rejected(
        "[store]\ndurability = \"fast\"\n",
        "invalid",
        (2, 14),
        "store.durability",
        "unknown value \"fast\": expected one of \"full\", \"normal\"",
    );
    assert_rejected(
        "[[watch]]\npath = \"/srv/a\"\nmode = \"eat\"\n",
        "invalid",
        (3, 8),
        "watch[0].mode",
        "expected one of \"consume\", \"index\"",
    );
    assert_rejected(
        "[watch_defaults]\nwatcher = \"fanotify\"\n",
        "invalid",
        (2, 11),
        "watch_defaults.watcher",
        "expected one of \"auto\", \"inotify\", \"poll\"",
    );
    assert_rejected(
        "[[source]]\nname = \"a\"\nurl = \"https://example.org/\"\nmode = \"rss\"\n",
        "invalid",
        (4, 8),
        "source[0].mode",
        "expected one of \"page\", \"links\", \"feed\"",
    );
}

#[test]
fn malformed_toml_is_rejected() {
    assert_rejected(
        "[store]\nbusy_timeout = \"5s\n",
        "syntax",
        (2, 19),
        "store.busy_timeout",
        "invalid TOML: invalid basic string",
    );
    assert_rejected(
        "[jobs]\nlease = 30s\n",
        "syntax",
        (2, 9),
        "jobs.lease",
        "invalid TOML: string values must be quoted",
    );
}

#[test]
fn bad_glob_is_rejected() {
    assert_rejected(
        "[watch_defaults]\nignore = [\"*.tmp\", \"[a-\"]\n",
        "invalid",
        (2, 20),
        "watch_defaults.ignore[1]",
        "invalid glob: unclosed character class",
    );
    assert_rejected(
        "[[processor]]\nname = \"p\"\nmime = \"image/{png\"\nargv = [\"/bin/true\"]\n",
        "invalid",
        (3, 8),
        "processor[0].mime",
        "invalid MIME glob",
    );
}

#[test]
fn bad_source_url_is_rejected() {
    let source =
        |url: &str| format!("[[source]]\nname = \"a\"\nurl = \"{url}\"\nmode = \"page\"\n");
    assert_rejected(
        &source("ftp://example.org/x"),
        "invalid",
        (3, 7),
        "source[0].url",
        "only http and https",
    );
    assert_rejected(
        &source("file:///etc/passwd"),
        "invalid",
        (3, 7),
        "source[0].url",
        "only http and https",
    );
    assert_rejected(
        &source("not a url"),
        "invalid",
        (3, 7),
        "source[0].url",
        "invalid URL",
    );
    assert_rejected(
        &source("https://user:secret@example.org/"),
        "invalid",
        (3, 7),
        "source[0].url",
        "must not contain credentials",
    );
}

#[test]
fn inconsistent_source_settings_are_rejected() {
    assert_rejected(
        "[[source]]\nname = \"a\"\nurl = \"https://example.org/\"\nmode = \"links\"\n",
        "invalid",
        (1, 1),
        "source[0]",
        "needs a `selector`",
    );
    assert_rejected(
        "[[source]]\nname = \"a\"\nurl = \"https://example.org/\"\nmode = \"page\"\nselector = \"a\"\n",
        "invalid",
        (5, 12),
        "source[0].selector",
        "only used in \"links\" mode",
    );
    assert_rejected(
        "[[source]]\nname = \"a\"\nurl = \"https://example.org/\"\nmode = \"feed\"\npattern = \"(\"\n",
        "invalid",
        (5, 11),
        "source[0].pattern",
        "invalid regular expression",
    );
    assert_rejected(
        "[[source]]\nname = \"a\"\nurl = \"https://a.example/\"\nmode = \"page\"\n\
         [[source]]\nname = \"a\"\nurl = \"https://b.example/\"\nmode = \"page\"\n",
        "invalid",
        (6, 8),
        "source[1].name",
        "name \"a\" is already used at line 2",
    );
    assert_rejected(
        "[[source]]\nname = \"a b\"\nurl = \"https://a.example/\"\nmode = \"page\"\n",
        "invalid",
        (2, 8),
        "source[0].name",
        "must be 1 to 64 letters",
    );
}

#[test]
fn a_processors_writable_folders_must_be_apart_from_sluices_own() {
    let config = load_ok(
        "[[processor]]\nname = \"p\"\nmime = \"*\"\nargv = [\"/bin/cat\"]\n\
         writable = [\"/var/cache/sluice-ocr\", \"/srv/models\"]\n",
    );
    assert_eq!(
        config.processors[0].writable,
        [Path::new("/var/cache/sluice-ocr"), Path::new("/srv/models")]
    );
    let table = "[[processor]]\nname = \"p\"\nmime = \"*\"\nargv = [\"/bin/cat\"]\n";
    // The shipped defaults: database in /var/lib/sluice, library, inbox and staging beneath
    // it; /srv/inbox is a watched folder of this file.
    for (folder, what) in [
        ("/var/lib/sluice/library/cache", "the library"),
        ("/var/lib/sluice/models", "the database's folder"),
        ("/srv/inbox/cache", "a watched folder"),
    ] {
        assert_rejected(
            &format!(
                "{table}writable = [\"{folder}\"]\n[[watch]]\npath = \"/srv/inbox\"\n\
                 mode = \"consume\"\n"
            ),
            "invalid",
            (5, 13),
            "processor[0].writable[0]",
            &format!("overlaps {what}"),
        );
    }
    // Shared temporary folders and the system's folders: never, nor beneath them (the
    // first ones) or above them (all of them). /var/cache/sluice-ocr above is fine.
    for (folder, reason) in [
        ("/", "holds /tmp, a shared or system folder"),
        ("/tmp", "is /tmp, a shared or system folder"),
        (
            "/tmp/ocr-cache",
            "is beneath /tmp, a shared or system folder",
        ),
        ("/var/tmp", "is /var/tmp, a shared or system folder"),
        (
            "/var/tmp/models",
            "is beneath /var/tmp, a shared or system folder",
        ),
        (
            "/usr/share/tesseract-ocr",
            "is beneath /usr, a shared or system folder",
        ),
        ("/etc", "is /etc, a shared or system folder"),
        ("/dev/shm", "is beneath /dev, a shared or system folder"),
        ("/run/user", "is beneath /run, a shared or system folder"),
        ("/var", "holds /var/tmp, a shared or system folder"),
        ("/var/lib", "holds /var/lib, a shared or system folder"),
        ("/var/cache", "holds /var/cache, a shared or system folder"),
        ("/home", "holds /home, a shared or system folder"),
        ("/opt", "holds /opt, a shared or system folder"),
    ] {
        assert_rejected(
            &format!("{table}writable = [\"{folder}\"]\n"),
            "invalid",
            (5, 13),
            "processor[0].writable[0]",
            &format!("{folder} {reason}: a processor's writable folder must be one of its own"),
        );
    }
    assert_rejected(
        &format!("{table}writable = [\"cache\"]\n"),
        "invalid",
        (5, 13),
        "processor[0].writable[0]",
        "must be absolute",
    );
    assert_rejected(
        &format!("{table}writable = [\"/srv/../var/lib/sluice\"]\n"),
        "invalid",
        (5, 13),
        "processor[0].writable[0]",
        "must not contain `..`",
    );
}

#[test]
fn bad_processor_command_is_rejected() {
    assert_rejected(
        "[[processor]]\nname = \"p\"\nmime = \"*\"\nargv = [\"tesseract\", \"{path}\"]\n",
        "invalid",
        (4, 9),
        "processor[0].argv[0]",
        "must be an absolute path",
    );
    assert_rejected(
        "[[processor]]\nname = \"p\"\nmime = \"*\"\nargv = [\"/bin/cat\", \"{paht}\"]\n",
        "invalid",
        (4, 21),
        "processor[0].argv[1]",
        "unknown placeholder {paht}",
    );
    assert_rejected(
        "[[processor]]\nname = \"p\"\nmime = \"*\"\nargv = []\n",
        "invalid",
        (4, 8),
        "processor[0].argv",
        "must name at least the program",
    );
}

#[test]
fn processor_modes_load_and_a_server_takes_no_placeholders() {
    let config = load_ok(
        "[[processor]]\nname = \"ocr\"\nmime = \"image/*\"\nargv = [\"/usr/bin/tesseract\", \"{path}\", \"{output}/ocr\"]\n\n\
         [[processor]]\nname = \"model\"\nmime = \"*\"\nmode = \"server\"\nargv = [\"/usr/bin/model-server\", \"--json\"]\n",
    );
    assert_eq!(config.processors[0].mode, ProcessorMode::Once);
    assert_eq!(
        config.processors[0].command_line(Path::new("/l/a.png"), "image/png", Path::new("/t/out")),
        ["/usr/bin/tesseract", "/l/a.png", "/t/out/ocr"].map(OsString::from)
    );
    assert_eq!(config.processors[1].mode, ProcessorMode::Server);
    assert_rejected(
        "[[processor]]\nname = \"p\"\nmime = \"*\"\nmode = \"daemon\"\nargv = [\"/bin/cat\"]\n",
        "invalid",
        (4, 8),
        "processor[0].mode",
        "unknown value \"daemon\": expected one of \"once\", \"server\"",
    );
    assert_rejected(
        "[[processor]]\nname = \"p\"\nmime = \"*\"\nmode = \"server\"\nargv = [\"/bin/cat\", \"{path}\"]\n",
        "invalid",
        (5, 21),
        "processor[0].argv[1]",
        "a server processor is started once for many files, so its argv takes no {path}",
    );
}

#[test]
fn contradicting_settings_are_rejected_where_the_user_wrote_them() {
    // The heartbeat keeps its default (5s); the error points at the lease the user shortened.
    assert_rejected(
        "[jobs]\nlease = \"8s\"\n",
        "invalid",
        (2, 9),
        "jobs.lease",
        "jobs.heartbeat_interval (5s) must be at most half of jobs.lease (8s)",
    );
    assert_rejected(
        "[jobs]\nheartbeat_interval = \"20s\"\n",
        "invalid",
        (2, 22),
        "jobs.heartbeat_interval",
        "must be at most half of jobs.lease (30s)",
    );
    assert_rejected(
        "[jobs]\nretry_backoff_max = \"500ms\"\n",
        "invalid",
        (2, 21),
        "jobs.retry_backoff_max",
        "must be at least jobs.retry_backoff_base (1s)",
    );
    assert_rejected(
        "[[watch]]\npath = \"/srv/a\"\nmode = \"index\"\n[[watch]]\npath = \"/srv/a/b\"\nmode = \"index\"\n",
        "invalid",
        (5, 8),
        "watch[1].path",
        "overlaps watch[0].path (/srv/a)",
    );
    assert_rejected(
        "[[watch]]\npath = \"/var/lib/sluice\"\nmode = \"index\"\n",
        "invalid",
        (2, 8),
        "watch[0].path",
        "overlaps the library /var/lib/sluice/library",
    );
}

#[test]
fn bad_web_settings_are_rejected() {
    assert_rejected(
        "[web]\nlisten = \"localhost\"\n",
        "invalid",
        (2, 10),
        "web.listen",
        "invalid socket address",
    );
    assert_rejected(
        "[web]\nbase_path = \"sluice\"\n",
        "invalid",
        (2, 13),
        "web.base_path",
        "must start with \"/\"",
    );
    assert_rejected(
        "[web]\nbase_path = \"/sluice/\"\n",
        "invalid",
        (2, 13),
        "web.base_path",
        "must not end with",
    );
    assert_rejected(
        "[web]\nallowed_hosts = []\n",
        "invalid",
        (2, 17),
        "web.allowed_hosts",
        "at least one host",
    );
    assert_rejected(
        "[web]\nallowed_hosts = [\"localhost\", \"example.org:80/x\"]\n",
        "invalid",
        (2, 31),
        "web.allowed_hosts[1]",
        "is not a host name",
    );
    assert_rejected(
        "[bus]\naddress = \"sytem\"\n",
        "invalid",
        (2, 11),
        "bus.address",
        "invalid bus \"sytem\"",
    );
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("absent.toml");
    let error = Config::load(&path).expect_err("a missing file is an error");
    assert!(
        matches!(&error, ConfigError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    );
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn file_that_is_not_utf8_is_an_error_naming_it() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("latin1.toml");
    std::fs::write(&path, b"[store]\n# caf\xe9\n").unwrap();
    let error = Config::load(&path).expect_err("not UTF-8");
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("sluice.toml");
    std::fs::write(&path, "[ingest]\nworkers = 7\n").unwrap();
    assert_eq!(Config::load(&path).unwrap().ingest.workers, 7);
    std::fs::write(&path, "[ingest]\nworkers = 0\n").unwrap();
    let error = Config::load(&path).expect_err("zero workers");
    let location = error.location().expect("located");
    assert_eq!(location.path, path);
    assert_eq!((location.line, location.column), (2, 11));
}

#[test]
fn sluice_config_variable_names_the_file_to_load() {
    let directory = tempfile::tempdir().unwrap();
    let chosen = directory.path().join("chosen.toml");
    let default_path = directory.path().join("default.toml");
    std::fs::write(&chosen, "[ingest]\nworkers = 3\n").unwrap();
    std::fs::write(&default_path, "[ingest]\nworkers = 4\n").unwrap();

    let (path, config) = load_from_variable(Some(chosen.clone().into()), &default_path).unwrap();
    assert_eq!((path, config.ingest.workers), (chosen, 3));

    // Unset or empty: the default path.
    for unset in [None, Some(OsString::new())] {
        let (path, config) = load_from_variable(unset, &default_path).unwrap();
        assert_eq!((path, config.ingest.workers), (default_path.clone(), 4));
    }
}

#[test]
fn sluice_config_naming_a_missing_file_is_an_error() {
    let directory = tempfile::tempdir().unwrap();
    let missing = directory.path().join("missing.toml");
    let default_path = directory.path().join("default.toml");
    std::fs::write(&default_path, "").unwrap();
    let error = load_from_variable(Some(missing.clone().into()), &default_path)
        .expect_err("an explicitly named file must exist");
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );
}

#[test]
fn missing_default_file_means_built_in_defaults() {
    let directory = tempfile::tempdir().unwrap();
    let default_path = directory.path().join("not-installed.toml");
    let (path, config) = load_from_variable(None, &default_path).unwrap();
    assert_eq!(path, default_path);
    assert_eq!(config, defaults());
}

#[test]
fn invalid_default_file_is_not_replaced_by_defaults() {
    let directory = tempfile::tempdir().unwrap();
    let default_path = directory.path().join("sluice.toml");
    std::fs::write(&default_path, "[store]\ndurability = \"fast\"\n").unwrap();
    assert!(matches!(
        load_from_variable(None, &default_path),
        Err(ConfigError::Invalid { .. })
    ));
}

/// `[table]\nkey = value\n` for a dotted key, and the column its value starts at.
fn one_key(key: &str, value: &str) -> (String, usize) {
    let (table, name) = key.split_once('.').expect("dotted key");
    (
        format!("[{table}]\n{name} = {value}\n"),
        name.len() + " = ".len() + 1,
    )
}

/// A file that sets every duration and whole-number key to the largest value it accepts.
fn every_key_at_its_maximum() -> String {
    let mut tables: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for (key, range) in DURATION_KEYS {
        let (table, name) = key.split_once('.').unwrap();
        tables
            .entry(table)
            .or_default()
            .push(format!("{name} = \"{}ms\"", range.maximum.as_millis()));
    }
    for (key, range) in NUMBER_KEYS {
        let (table, name) = key.split_once('.').unwrap();
        tables
            .entry(table)
            .or_default()
            .push(format!("{name} = {}", range.end()));
    }
    let mut text = String::new();
    for (table, lines) in tables {
        text.push_str(&format!("[{table}]\n{}\n", lines.join("\n")));
    }
    text
}

#[test]
fn every_duration_key_refuses_a_value_above_its_maximum() {
    for (key, range) in DURATION_KEYS {
        let too_long = range.maximum + Duration::from_millis(1);
        let (text, column) = one_key(key, &format!("\"{}ms\"", too_long.as_millis()));
        assert_rejected(
            &text,
            "invalid",
            (2, column),
            key,
            &format!(
                "must be at most \"{}\"",
                humantime::format_duration(range.maximum)
            ),
        );
    }
}

#[test]
fn every_duration_key_refuses_a_value_below_its_minimum() {
    for (key, range) in DURATION_KEYS {
        if range.minimum <= Duration::from_millis(1) {
            // Zero is the only value below; it has its own message (or is allowed).
            let (text, _) = one_key(key, "\"0s\"");
            assert_eq!(
                load(&text).is_ok(),
                range.minimum.is_zero(),
                "{key} = \"0s\""
            );
            continue;
        }
        let too_short = range.minimum - Duration::from_millis(1);
        let (text, column) = one_key(key, &format!("\"{}ms\"", too_short.as_millis()));
        assert_rejected(
            &text,
            "invalid",
            (2, column),
            key,
            &format!(
                "must be at least \"{}\"",
                humantime::format_duration(range.minimum)
            ),
        );
    }
}

#[test]
fn a_busy_timeout_that_overflowed_the_store_is_refused() {
    assert_rejected(
        "[store]\nbusy_timeout = \"18446744073709551615s\"\n",
        "invalid",
        (2, 16),
        "store.busy_timeout",
        "must be at most \"1h\"",
    );
}

#[test]
fn a_lease_the_store_would_refuse_is_refused() {
    // The workers logged "lease must be between 10ms and 24h" every second and never claimed.
    assert_rejected(
        "[jobs]\nlease = \"25h\"\n",
        "invalid",
        (2, 9),
        "jobs.lease",
        "must be at most \"1day\"",
    );
    assert_rejected(
        "[jobs]\nlease = \"5ms\"\nheartbeat_interval = \"1ms\"\n",
        "invalid",
        (2, 9),
        "jobs.lease",
        "must be at least \"10ms\"",
    );
}

#[test]
fn huge_intervals_and_stop_timeouts_are_refused() {
    for key in [
        "service.status_interval",
        "service.stop_timeout",
        "monitor.reconcile_interval",
    ] {
        let (text, column) = one_key(key, "\"18446744073709551615s\"");
        assert_rejected(&text, "invalid", (2, column), key, "must be at most");
    }
}

#[test]
fn every_number_key_refuses_a_value_above_its_maximum() {
    for (key, range) in NUMBER_KEYS {
        let too_large = u64::from(*range.end()) + 1;
        let (text, column) = one_key(key, &too_large.to_string());
        assert_rejected(&text, "invalid", (2, column), key, "is out of range");
    }
    // The store answers at most 1000 rows; a larger page size was silently cut before.
    assert_rejected(
        "[limits]\nmax_page_size = 1001\n",
        "invalid",
        (2, 17),
        "limits.max_page_size",
        "must be from 1 to 1000",
    );
}

#[test]
fn queue_limits_are_read_and_refused_outside_their_range() {
    let config = load_ok("[ingest]\nmax_pending = 3\n[scraper]\nmax_pending = 10000000\n");
    assert_eq!(config.ingest.max_pending, 3);
    assert_eq!(config.scraper.max_pending, 10_000_000);
    // A queue that never has room would hold every detected file forever.
    assert_rejected(
        "[ingest]\nmax_pending = 0\n",
        "invalid",
        (2, 15),
        "ingest.max_pending",
        "must be more than zero",
    );
    assert_rejected(
        "[scraper]\nmax_pending = 10000001\n",
        "invalid",
        (2, 15),
        "scraper.max_pending",
        "10000001 is out of range: must be from 1 to 10000000",
    );
}

#[test]
fn every_key_at_its_maximum_gives_a_configuration_the_daemons_can_use() {
    let config = load_ok(&every_key_at_its_maximum());
    assert_eq!(config.jobs.lease, Duration::from_secs(24 * 3600));
    assert_eq!(
        config.limits.max_page_size,
        crate::store::jobs::MAX_PAGE_SIZE
    );
    let durations = [
        config.store.busy_timeout,
        config.jobs.lease,
        config.jobs.heartbeat_interval,
        config.jobs.retry_backoff_base,
        config.jobs.retry_backoff_max,
        config.service.stop_timeout,
        config.service.status_interval,
        config.monitor.reconcile_interval,
        config.scraper.politeness_delay,
        config.scraper.request_timeout,
        config.scraper.progress_interval,
        config.scraper.download_timeout,
        config.ingest.job_timeout,
    ]
    .into_iter()
    .chain(
        config
            .watches
            .iter()
            .flat_map(|watch| [watch.poll_interval, watch.quiet_period]),
    )
    .chain(DURATION_KEYS.iter().map(|(_, range)| range.maximum));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for duration in durations {
        // What the daemons do with a duration: deadlines, intervals, sleeps, milliseconds.
        let _ = std::time::Instant::now() + duration;
        let _ = tokio::time::Instant::now() + duration;
        let _ = crate::store::now_ms() + i64::try_from(duration.as_millis()).unwrap();
        runtime.block_on(async {
            let mut interval = tokio::time::interval(duration);
            interval.tick().await;
            let _ = tokio::time::timeout(Duration::ZERO, interval.tick()).await;
            let _ = tokio::time::timeout_at(
                tokio::time::Instant::now() + duration,
                std::future::ready(()),
            )
            .await;
            let _ = tokio::time::timeout(Duration::ZERO, tokio::time::sleep(duration)).await;
        });
    }
    // The store opens with the longest busy timeout and claims with the longest lease, and
    // the longest backoff fits its milliseconds.
    let directory = tempfile::tempdir().unwrap();
    let mut store =
        crate::store::Store::open(&directory.path().join("sluice.db"), &config.store_options())
            .expect("the store opens with the maximum busy_timeout");
    store
        .enqueue(&crate::store::jobs::NewJob::new(
            "noop",
            serde_json::json!({}),
        ))
        .unwrap();
    let claimed = store
        .claim_jobs(&"worker".into(), &["noop"], 1, config.jobs.lease)
        .expect("the store accepts the maximum lease");
    assert_eq!(claimed.len(), 1);
    let delay = config.store_options().retry.delay_after(u32::MAX);
    assert!(delay <= config.jobs.retry_backoff_max);
}

#[test]
fn dropins_merge_over_the_file_in_name_order_and_errors_name_the_dropin() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("sluice.toml");
    std::fs::write(&path, "[ingest]\nworkers = 2\nthumbnail_size = 300\n").unwrap();
    assert_eq!(
        dropin_directory(&path),
        directory.path().join("sluice.toml.d")
    );
    // No drop-in directory: the file alone.
    assert_eq!(Config::load(&path).unwrap().ingest.workers, 2);

    let dropins = dropin_directory(&path);
    std::fs::create_dir(&dropins).unwrap();
    std::fs::write(dropins.join("20-more.toml"), "[ingest]\nworkers = 5\n").unwrap();
    std::fs::write(dropins.join("10-less.toml"), "[ingest]\nworkers = 3\n").unwrap();
    // Neither hidden files nor other suffixes are drop-ins (an editor's backup, say).
    std::fs::write(dropins.join(".30-hidden.toml"), "[ingest]\nworkers = 7\n").unwrap();
    std::fs::write(dropins.join("40-backup.toml~"), "[ingest]\nworkers = 8\n").unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.ingest.workers, 5, "the last drop-in by name wins");
    assert_eq!(
        config.ingest.thumbnail_size, 300,
        "keys not in a drop-in stay"
    );

    // A list of tables in a drop-in replaces the file's list as a whole.
    std::fs::write(
        &path,
        "[[watch]]\npath = \"/srv/a\"\nmode = \"consume\"\n[[watch]]\npath = \"/srv/b\"\nmode = \"consume\"\n",
    )
    .unwrap();
    std::fs::write(
        dropins.join("50-watch.toml"),
        "[[watch]]\npath = \"/srv/c\"\nmode = \"consume\"\n",
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let watched: Vec<&Path> = config
        .watches
        .iter()
        .map(|watch| watch.path.as_path())
        .collect();
    assert_eq!(watched, [Path::new("/srv/c")]);

    // An error in a drop-in names the drop-in, its line and the key.
    std::fs::write(
        dropins.join("60-bad.toml"),
        "# local\n[ingest]\nworkers = 0\n",
    )
    .unwrap();
    let error = Config::load(&path).unwrap_err();
    let location = error.location().expect("a located error");
    assert_eq!(location.path, dropins.join("60-bad.toml"), "{error}");
    assert_eq!(location.line, 3, "{error}");
    assert_eq!(location.key.as_deref(), Some("ingest.workers"), "{error}");
    std::fs::write(dropins.join("60-bad.toml"), "[ingest\n").unwrap();
    let error = Config::load(&path).unwrap_err();
    assert!(matches!(error, ConfigError::Syntax { .. }), "{error}");
    assert_eq!(error.location().unwrap().path, dropins.join("60-bad.toml"));
    std::fs::remove_file(dropins.join("60-bad.toml")).unwrap();

    // A name used twice in a drop-in is refused with the line of the first.
    std::fs::write(
        dropins.join("70-sources.toml"),
        "[[source]]\nname = \"x\"\nurl = \"https://example.org/a\"\nmode = \"page\"\n\
         [[source]]\nname = \"x\"\nurl = \"https://example.org/b\"\nmode = \"page\"\n",
    )
    .unwrap();
    let error = Config::load(&path).unwrap_err();
    assert_eq!(
        error.location().unwrap().path,
        dropins.join("70-sources.toml")
    );
    assert!(
        error.to_string().contains("already used at line 2"),
        "{error}"
    );
    std::fs::remove_file(dropins.join("70-sources.toml")).unwrap();

    // A drop-in that cannot be read is an error naming it, not a silent skip.
    std::fs::create_dir(dropins.join("80-directory.toml")).unwrap();
    let error = Config::load(&path).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }), "{error}");
    assert!(error.to_string().contains("80-directory.toml"), "{error}");
}

#[test]
fn dropins_apply_without_a_file_at_the_default_path() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("sluice.toml");
    std::fs::create_dir(dropin_directory(&path)).unwrap();
    std::fs::write(
        dropin_directory(&path).join("90-sluicectl-workers.toml"),
        "[ingest]\nworkers = 4\n",
    )
    .unwrap();
    let (used, config) = load_from_variable(None, &path).unwrap();
    assert_eq!(used, path);
    assert_eq!(config.ingest.workers, 4);
    // A file named explicitly must exist, drop-ins or not.
    let error = load_from_variable(Some(path.clone().into_os_string()), &path).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }), "{error}");
}
