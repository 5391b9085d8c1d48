//! Scheduled sources with the real sluice-scraper: a private dbus-daemon, a real SQLite file
//! and an HTTP fixture on 127.0.0.1 whose pages, feeds, ETags and robots.txt change between
//! checks. Checks are triggered with `ScrapeNow` or come from a short `every`; every wait is
//! for a condition with a deadline.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use sluice_core::bus::ScraperProxy;
use sluice_core::store::{Durability, SourceStatus, Store};

use crate::support::{
    BusPolicy, DEADLINE, DaemonProcess, FixtureRoute, HttpFixture, PrivateBus, open_store,
};

struct Setup {
    _directory: tempfile::TempDir,
    root: PathBuf,
    bus: PrivateBus,
    config_path: PathBuf,
}

impl Setup {
    /// A scraper configuration with `sources` (TOML `[[source]]` tables) and extra
    /// `[scraper]` lines.
    fn new(scraper: &str, sources: &str) -> Result<Setup> {
        let directory = tempfile::tempdir()?;
        let root = directory.path().to_path_buf();
        let bus = PrivateBus::start(BusPolicy::AllowEverything)?;
        let config_path = root.join("sluice.toml");
        let setup = Setup {
            _directory: directory,
            root,
            bus,
            config_path,
        };
        setup.write_config(scraper, sources)?;
        Ok(setup)
    }

    fn write_config(&self, scraper: &str, sources: &str) -> Result<()> {
        let root = self.root.display();
        let text = format!(
            r#"
[store]
path = "{root}/sluice.db"
durability = "normal"

[bus]
address = "{address}"

[jobs]
heartbeat_interval = "1s"
max_attempts = 2
retry_backoff_base = "100ms"
retry_backoff_max = "300ms"

[service]
status_interval = "1s"
stop_timeout = "5s"

[[watch]]
path = "{root}/inbox"
mode = "consume"

[ingest]
library = "{root}/library"

[scraper]
inbox = "{root}/inbox"
staging = "{root}/staging"
allow_private_addresses = true
politeness_delay = "0s"
progress_interval = "200ms"
request_timeout = "2s"
user_agent = "sluice-test/1"
{scraper}

{sources}
"#,
            address = self.bus.address(),
        );
        std::fs::write(&self.config_path, text).context("write the config")
    }

    fn store(&self) -> Store {
        open_store(&self.root.join("sluice.db"), Durability::Normal)
    }

    fn source(&self, name: &str) -> SourceStatus {
        self.store().get_source(name).expect("source row")
    }

    async fn start(&self) -> Result<DaemonProcess> {
        crate::support::start_scraper(&self.config_path, self.bus.address()).await
    }

    async fn proxy(&self) -> Result<ScraperProxy<'static>> {
        crate::support::scraper_proxy(self.bus.address()).await
    }

    /// Asks for a check now and waits until it is recorded; returns the source after it.
    async fn check_now(&self, name: &str) -> Result<SourceStatus> {
        let proxy = self.proxy().await?;
        let check = proxy.scrape_now(name).await?;
        self.wait_for_checks(name, check).await
    }

    async fn wait_for_checks(&self, name: &str, checks: u64) -> Result<SourceStatus> {
        let mut last = None;
        wait_for_within(
            CHECK_DEADLINE,
            &format!("check {checks} of source {name}"),
            || {
                let source = self.source(name);
                let done = source.checks >= checks;
                last = Some(source);
                done
            },
        )
        .await
        .with_context(|| format!("last seen: {last:?}"))?;
        Ok(last.expect("read once"))
    }

    /// URLs of the downloads the source made, in creation order.
    fn download_urls(&self) -> Vec<String> {
        let store = self.store();
        let page = store
            .list_downloads(
                &Default::default(),
                sluice_core::store::PageRequest {
                    before_id: None,
                    limit: 1000,
                },
            )
            .unwrap();
        let mut urls: Vec<String> = page
            .items
            .into_iter()
            .map(|download| download.url)
            .collect();
        urls.reverse();
        urls
    }
}

async fn wait_for(what: &str, condition: impl FnMut() -> bool) -> Result<()> {
    wait_for_within(DEADLINE, what, condition).await
}

/// How long a test waits for a source's check to end: a check parses a whole page in a debug
/// build, which on a loaded machine takes many times what it takes on an idle one. A check that
/// hangs still fails the test, after this.
const CHECK_DEADLINE: Duration = Duration::from_secs(300);

async fn wait_for_within(
    deadline: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> Result<()> {
    let started = Instant::now();
    while !condition() {
        ensure!(started.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn links_page(paths: &[&str]) -> String {
    let mut html = String::from("<html><body><ul>");
    for path in paths {
        html.push_str(&format!(
            "<li><a class=\"file\" href=\"{path}\">{path}</a></li>"
        ));
    }
    html.push_str("<a href=\"/not-selected.bin\">other</a></ul></body></html>");
    html
}

fn links_source(fixture: &HttpFixture, every: &str) -> String {
    format!(
        r#"[[source]]
name = "builds"
url = "{}"
mode = "links"
every = "{every}"
selector = "a.file"
pattern = '\.bin$'
"#,
        fixture.url("/builds/")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_links_source_downloads_each_new_link_exactly_once_across_changes_and_restarts()
-> Result<()> {
    let fixture = HttpFixture::start();
    for name in ["a", "b", "c", "d"] {
        fixture.route(
            &format!("/builds/{name}.bin"),
            FixtureRoute::file(name.repeat(100).into_bytes()),
        );
    }
    fixture.route(
        "/builds/",
        FixtureRoute::page(
            links_page(&["a.bin", "/builds/b.bin", "notes.txt"]),
            "text/html",
            "\"v1\"",
        ),
    );
    let setup = Setup::new("", &links_source(&fixture, "1h"))?;
    let mut scraper = setup.start().await?;

    let source = setup.check_now("builds").await?;
    assert_eq!(
        source.last_outcome.as_deref(),
        Some("changed"),
        "{source:?}"
    );
    assert_eq!((source.items_seen, source.downloads_made), (2, 2));
    let base = fixture.url("/builds/");
    assert_eq!(
        setup.download_urls(),
        vec![format!("{base}a.bin"), format!("{base}b.bin")],
        "relative links resolved against the page; unselected and unmatched links left out"
    );

    // The same ETag: a conditional request, answered 304, records "unchanged".
    let source = setup.check_now("builds").await?;
    assert_eq!(source.last_outcome.as_deref(), Some("unchanged"));
    let page_requests = fixture.requests_for("/builds/");
    assert_eq!(
        page_requests.last().unwrap().if_none_match.as_deref(),
        Some("\"v1\"")
    );
    assert_eq!(
        page_requests.last().unwrap().user_agent.as_deref(),
        Some("sluice-test/1")
    );

    // A new ETag with the same content: the hash says unchanged.
    fixture.route(
        "/builds/",
        FixtureRoute::page(
            links_page(&["a.bin", "/builds/b.bin", "notes.txt"]),
            "text/html",
            "\"v2\"",
        ),
    );
    let source = setup.check_now("builds").await?;
    assert_eq!(source.last_outcome.as_deref(), Some("unchanged"));
    assert_eq!(source.etag.as_deref(), Some("\"v2\""));

    // The page changes: only the new link becomes a download.
    fixture.route(
        "/builds/",
        FixtureRoute::page(
            links_page(&["c.bin", "a.bin", "b.bin"]),
            "text/html",
            "\"v3\"",
        ),
    );
    let source = setup.check_now("builds").await?;
    assert_eq!(
        (source.items_seen, source.downloads_made),
        (3, 3),
        "{source:?}"
    );

    // kill -9, a restart, and a page that changed again: still once per link.
    scraper.kill_hard();
    fixture.route(
        "/builds/",
        FixtureRoute::page(
            links_page(&["d.bin", "c.bin", "a.bin"]),
            "text/html",
            "\"v4\"",
        ),
    );
    let _scraper = setup.start().await?;
    let source = setup.check_now("builds").await?;
    assert_eq!(
        (source.items_seen, source.downloads_made),
        (4, 4),
        "{source:?}"
    );
    assert_eq!(
        setup.download_urls(),
        ["a", "b", "c", "d"]
            .iter()
            .map(|name| format!("{base}{name}.bin"))
            .collect::<Vec<_>>()
    );
    // Each becomes a file in the inbox.
    wait_for("four files in the inbox", || {
        std::fs::read_dir(setup.root.join("inbox")).map_or(0, |entries| entries.count()) == 4
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_schedule_and_a_short_every_checks_again() -> Result<()> {
    let fixture = HttpFixture::start();
    fixture.route(
        "/builds/",
        FixtureRoute::page(links_page(&[]), "text/html", "\"v1\""),
    );
    let setup = Setup::new("", &links_source(&fixture, "1s"))?;
    let mut scraper = setup.start().await?;
    // Scheduled checks come on their own, one after another.
    setup.wait_for_checks("builds", 3).await?;
    let before = setup.source("builds");
    scraper.terminate(Duration::from_secs(10))?;
    let _scraper = setup.start().await?;
    let after = setup.source("builds");
    assert!(
        after.checks >= before.checks,
        "the count survives a restart"
    );
    assert_eq!(after.etag.as_deref(), Some("\"v1\""), "the validators too");
    setup.wait_for_checks("builds", after.checks + 1).await?;
    assert_eq!(
        setup.source("builds").last_outcome.as_deref(),
        Some("unchanged")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_source_downloads_enclosures_of_new_entries_by_guid() -> Result<()> {
    let fixture = HttpFixture::start();
    let item = |guid: &str| {
        format!(
            "<item><guid>{guid}</guid><title>{guid}</title>\
             <enclosure url=\"{}\" type=\"application/octet-stream\" length=\"3\"/></item>",
            fixture.url(&format!("/media/{guid}.bin"))
        )
    };
    let feed = |items: &[&str]| {
        format!(
            "<?xml version=\"1.0\"?><rss version=\"2.0\"><channel><title>f</title>{}</channel></rss>",
            items.iter().map(|guid| item(guid)).collect::<String>()
        )
    };
    fixture.route(
        "/feed.xml",
        FixtureRoute::page(feed(&["e1", "e2"]), "application/rss+xml", "\"f1\""),
    );
    let sources = format!(
        "[[source]]\nname = \"podcast\"\nurl = \"{}\"\nmode = \"feed\"\nevery = \"1h\"\npattern = '\\.bin$'\n",
        fixture.url("/feed.xml")
    );
    let setup = Setup::new("", &sources)?;
    let _scraper = setup.start().await?;
    let source = setup.check_now("podcast").await?;
    assert_eq!(
        (source.items_seen, source.downloads_made),
        (2, 2),
        "{source:?}"
    );
    fixture.route(
        "/feed.xml",
        FixtureRoute::page(feed(&["e3", "e2", "e1"]), "application/rss+xml", "\"f2\""),
    );
    let source = setup.check_now("podcast").await?;
    assert_eq!(
        (source.items_seen, source.downloads_made),
        (3, 3),
        "{source:?}"
    );
    assert!(
        setup
            .download_urls()
            .last()
            .unwrap()
            .ends_with("/media/e3.bin")
    );

    // A malformed feed is an error on the source, and the scraper carries on.
    fixture.route(
        "/feed.xml",
        FixtureRoute::page(
            "<rss><channel><item><guid>",
            "application/rss+xml",
            "\"f3\"",
        ),
    );
    let source = setup.check_now("podcast").await?;
    assert_eq!(source.last_outcome.as_deref(), Some("failed"));
    assert!(
        source
            .last_error
            .unwrap_or_default()
            .contains("not a valid")
    );
    fixture.route(
        "/feed.xml",
        FixtureRoute::page(feed(&["e4"]), "application/rss+xml", "\"f4\""),
    );
    let source = setup.check_now("podcast").await?;
    assert_eq!(source.downloads_made, 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robots_txt_is_honoured_revalidated_and_cut_at_its_cap() -> Result<()> {
    let fixture = HttpFixture::start();
    fixture.route("/builds/a.bin", FixtureRoute::file(b"a".to_vec()));
    fixture.route(
        "/builds/",
        FixtureRoute::page(links_page(&["a.bin"]), "text/html", "\"v1\""),
    );
    fixture.route(
        "/robots.txt",
        FixtureRoute::page(
            "User-agent: *\nAllow: /\nUser-agent: sluice-test\nDisallow: /builds/\n",
            "text/plain",
            "\"r1\"",
        ),
    );
    let setup = Setup::new("", &links_source(&fixture, "1s"))?;
    let _scraper = setup.start().await?;
    let source = setup.check_now("builds").await?;
    assert_eq!(
        source.last_outcome.as_deref(),
        Some("disallowed"),
        "{source:?}"
    );
    assert!(
        fixture.requests_for("/builds/").is_empty(),
        "the page was never fetched"
    );

    // robots.txt changes: 10 MB of comments, then nothing disallowed. Only the cap is read.
    let mut big = String::from("User-agent: *\nAllow: /\n");
    while big.len() < 10 * 1024 * 1024 {
        big.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    fixture.route(
        "/robots.txt",
        FixtureRoute::page(big, "text/plain", "\"r2\""),
    );
    let mut last = None;
    wait_for("a check allowed by the new robots.txt", || {
        let source = setup.source("builds");
        let done = source.downloads_made == 1;
        last = Some(source);
        done
    })
    .await
    .with_context(|| format!("{last:?}"))?;
    // The 304 of an unchanged robots.txt keeps the rules.
    let checks = setup.source("builds").checks;
    setup.wait_for_checks("builds", checks + 2).await?;
    assert!(
        fixture
            .requests_for("/robots.txt")
            .iter()
            .any(|request| request.if_none_match.as_deref() == Some("\"r2\"")),
        "robots.txt is revalidated conditionally"
    );
    assert_eq!(setup.source("builds").downloads_made, 1);
    Ok(())
}

/// A page-mode source fetches its page once per version: the check's response becomes the
/// download's file (its SHA-256 expected), with no second request for the download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_source_fetches_each_version_of_its_page_once() -> Result<()> {
    let fixture = HttpFixture::start();
    fixture.route(
        "/report/",
        FixtureRoute::page("<html>version 1</html>", "text/html", "\"v1\""),
    );
    let sources = format!(
        "[[source]]\nname = \"report\"\nurl = \"{}\"\nmode = \"page\"\nevery = \"1h\"\n",
        fixture.url("/report/")
    );
    let setup = Setup::new("", &sources)?;
    let _scraper = setup.start().await?;
    let inbox_files = || -> Vec<String> {
        let mut contents: Vec<String> = std::fs::read_dir(setup.root.join("inbox"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        contents.sort();
        contents
    };
    let source = setup.check_now("report").await?;
    assert_eq!(
        source.last_outcome.as_deref(),
        Some("changed"),
        "{source:?}"
    );
    wait_for("the page in the inbox", || inbox_files().len() == 1).await?;
    assert_eq!(inbox_files(), vec!["<html>version 1</html>"]);
    assert_eq!(
        fixture.requests_for("/report/").len(),
        1,
        "one request: the check's"
    );

    fixture.route(
        "/report/",
        FixtureRoute::page("<html>version 2</html>", "text/html", "\"v2\""),
    );
    let source = setup.check_now("report").await?;
    assert_eq!(
        source.last_outcome.as_deref(),
        Some("changed"),
        "{source:?}"
    );
    wait_for("the second version in the inbox", || {
        inbox_files().len() == 2
    })
    .await?;
    assert_eq!(
        inbox_files(),
        vec!["<html>version 1</html>", "<html>version 2</html>"]
    );
    assert_eq!(fixture.requests_for("/report/").len(), 2);
    let store = setup.store();
    let page = store.list_downloads(
        &Default::default(),
        sluice_core::store::PageRequest {
            before_id: None,
            limit: 10,
        },
    )?;
    assert!(
        page.items
            .iter()
            .all(|download| download.state == sluice_core::store::DownloadState::Succeeded),
        "{:?}",
        page.items
    );
    Ok(())
}

/// robots.txt decides the links a source finds too: a link it disallows for our User-Agent
/// (on the source's host or another) is not downloaded, the check's error says why, and the
/// link is not tried again; the others are downloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_robots_txt_disallows_are_not_downloaded_and_say_why() -> Result<()> {
    let fixture = HttpFixture::start();
    let other = HttpFixture::start();
    fixture.route("/builds/a.bin", FixtureRoute::file(b"a".to_vec()));
    fixture.route("/builds/private/x.bin", FixtureRoute::file(b"x".to_vec()));
    fixture.route(
        "/robots.txt",
        FixtureRoute::page(
            "User-agent: sluice-test\nDisallow: /builds/private/\n",
            "text/plain",
            "\"r1\"",
        ),
    );
    other.route("/y.bin", FixtureRoute::file(b"y".to_vec()));
    other.route(
        "/robots.txt",
        FixtureRoute::page("User-agent: *\nDisallow: /\n", "text/plain", "\"o1\""),
    );
    let elsewhere = other.url("/y.bin");
    fixture.route(
        "/builds/",
        FixtureRoute::page(
            links_page(&["a.bin", "private/x.bin", elsewhere.as_str()]),
            "text/html",
            "\"v1\"",
        ),
    );
    let setup = Setup::new("", &links_source(&fixture, "1h"))?;
    let _scraper = setup.start().await?;
    let source = setup.check_now("builds").await?;
    assert_eq!(
        source.last_outcome.as_deref(),
        Some("changed"),
        "{source:?}"
    );
    assert_eq!(
        (source.items_seen, source.downloads_made),
        (3, 1),
        "{source:?}"
    );
    let error = source.last_error.unwrap_or_default();
    assert!(
        error.contains("2 links not downloaded")
            && error.contains("robots.txt")
            && error.contains("sluice-test"),
        "{error}"
    );
    assert_eq!(setup.download_urls(), vec![fixture.url("/builds/a.bin")]);
    wait_for("a.bin in the inbox", || {
        setup.root.join("inbox/a.bin").exists()
    })
    .await?;
    assert!(fixture.requests_for("/builds/private/x.bin").is_empty());
    assert!(other.requests_for("/y.bin").is_empty());
    assert_eq!(other.requests_for("/robots.txt").len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_go_to_the_source_only_and_a_missing_file_fails_that_source_alone() -> Result<()>
{
    let fixture = HttpFixture::start();
    fixture.route(
        "/private/",
        FixtureRoute::page(links_page(&[]), "text/html", "\"p\""),
    );
    fixture.route(
        "/open/",
        FixtureRoute::page(links_page(&[]), "text/html", "\"o\""),
    );
    let setup = Setup::new("", "")?;
    let credentials = setup.root.join("credentials");
    std::fs::write(&credentials, "# the token\nbearer s3cret\nX-Api-Key: k1\n")?;
    let sources = format!(
        r#"[[source]]
name = "private"
url = "{private}"
mode = "page"
every = "1h"
credentials_file = "{credentials}"

[[source]]
name = "missing"
url = "{private}"
mode = "page"
every = "1h"
credentials_file = "{root}/no-such-file"

[[source]]
name = "open"
url = "{open}"
mode = "page"
every = "1h"
"#,
        private = fixture.url("/private/"),
        open = fixture.url("/open/"),
        credentials = credentials.display(),
        root = setup.root.display(),
    );
    setup.write_config("", &sources)?;
    let _scraper = setup.start().await?;
    let private = setup.check_now("private").await?;
    assert_eq!(
        private.last_outcome.as_deref(),
        Some("changed"),
        "{private:?}"
    );
    // The check's request carries them. (The download of the page that follows is refused:
    // a header line is not sent with downloads, which follow redirects in the client.)
    let request = fixture.requests_for("/private/").remove(0);
    assert_eq!(request.authorization.as_deref(), Some("Bearer s3cret"));
    let missing = setup.check_now("missing").await?;
    assert_eq!(missing.last_outcome.as_deref(), Some("failed"));
    let error = missing.last_error.unwrap_or_default();
    assert!(
        error.contains("no-such-file") && error.contains("credentials_file"),
        "{error}"
    );
    let open = setup.check_now("open").await?;
    assert_eq!(open.last_outcome.as_deref(), Some("changed"));
    assert!(
        fixture
            .requests_for("/open/")
            .iter()
            .all(|request| request.authorization.is_none())
    );
    Ok(())
}

/// A source's credentials go with the downloads it creates, to its own origin only: a link
/// on the source's host and port gets them, a link to another host does not, and neither does
/// the hop of a redirect from the source's host to another one; a download someone adds by
/// hand to the same host gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sources_credentials_go_with_its_downloads_to_its_origin_only() -> Result<()> {
    let fixture = HttpFixture::start();
    let other = HttpFixture::start();
    fixture.route("/builds/a.bin", FixtureRoute::file(b"aaaa".to_vec()));
    fixture.route("/by-hand.bin", FixtureRoute::file(b"hand".to_vec()));
    fixture.route(
        "/builds/moved.bin",
        FixtureRoute::Redirect(other.url("/mirror/moved.bin")),
    );
    other.route("/mirror/moved.bin", FixtureRoute::file(b"moved".to_vec()));
    other.route("/elsewhere.bin", FixtureRoute::file(b"else".to_vec()));
    let elsewhere = other.url("/elsewhere.bin");
    fixture.route(
        "/builds/",
        FixtureRoute::page(
            links_page(&["a.bin", "moved.bin", elsewhere.as_str()]),
            "text/html",
            "\"v1\"",
        ),
    );
    let setup = Setup::new("", "")?;
    let credentials = setup.root.join("credentials");
    std::fs::write(&credentials, "bearer s3cret\n")?;
    let sources = format!(
        "{}credentials_file = \"{}\"\n",
        links_source(&fixture, "1h"),
        credentials.display()
    );
    setup.write_config("", &sources)?;
    let _scraper = setup.start().await?;
    let source = setup.check_now("builds").await?;
    assert_eq!(source.downloads_made, 3, "{source:?}");
    let proxy = setup.proxy().await?;
    proxy
        .add_download(&fixture.url("/by-hand.bin"), Default::default())
        .await?;
    wait_for("four files in the inbox", || {
        std::fs::read_dir(setup.root.join("inbox")).map_or(0, |entries| entries.count()) == 4
    })
    .await?;

    let token = Some("Bearer s3cret");
    let authorization = |fixture: &HttpFixture, path: &str| {
        let requests = fixture.requests_for(path);
        assert_eq!(requests.len(), 1, "{path}: {requests:?}");
        requests[0].authorization.clone()
    };
    assert_eq!(authorization(&fixture, "/builds/").as_deref(), token);
    assert_eq!(authorization(&fixture, "/builds/a.bin").as_deref(), token);
    assert_eq!(
        authorization(&fixture, "/builds/moved.bin").as_deref(),
        token
    );
    assert_eq!(
        authorization(&other, "/mirror/moved.bin"),
        None,
        "not across the redirect to another port"
    );
    assert_eq!(
        authorization(&other, "/elsewhere.bin"),
        None,
        "another origin"
    );
    assert_eq!(
        authorization(&fixture, "/by-hand.bin"),
        None,
        "not the source's download"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_stalls_private_addresses_and_huge_pages_are_errors_on_the_source() -> Result<()>
{
    let fixture = HttpFixture::start();
    fixture.route(
        "/busy/",
        FixtureRoute::StatusWithHeaders {
            status: 429,
            headers: "Retry-After: 3600\r\n".into(),
        },
    );
    fixture.route(
        "/stall/",
        FixtureRoute::Stall {
            length: 100_000,
            sent: 1000,
            stall: Duration::from_secs(30),
        },
    );
    // Twenty times the cap on new items per check: a page of 20,000 links (about 1.2 MB).
    let many: Vec<String> = (0..20_000).map(|n| format!("f{n}.bin")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    fixture.route(
        "/many/",
        FixtureRoute::page(links_page(&many), "text/html", "\"m\""),
    );
    let source = |name: &str, path: &str| {
        format!(
            "[[source]]\nname = \"{name}\"\nurl = \"{}\"\nmode = \"links\"\nevery = \"1h\"\nselector = \"a.file\"\n",
            fixture.url(path)
        )
    };
    // `busy` is reached as localhost, another host than 127.0.0.1 for the per-host hold.
    let busy = source("busy", "/busy/").replace("127.0.0.1", "localhost");
    let sources = [busy, source("stall", "/stall/"), source("many", "/many/")].join("\n");
    // The 20,000 links are answered 404 by the fixture: their downloads fail fast.
    let setup = Setup::new("max_pending = 100000", &sources)?;
    let scraper = setup.start().await?;

    let busy = setup.check_now("busy").await?;
    assert_eq!(busy.last_outcome.as_deref(), Some("deferred"), "{busy:?}");
    let wait_ms = busy.next_check_at_ms - busy.last_checked_at_ms.unwrap();
    assert!(
        wait_ms >= 3_500_000,
        "next check after Retry-After: {wait_ms} ms"
    );

    let stall = setup.check_now("stall").await?;
    assert_eq!(stall.last_outcome.as_deref(), Some("failed"), "{stall:?}");

    let many = setup.check_now("many").await?;
    assert_eq!(many.last_outcome.as_deref(), Some("partial"), "{many:?}");
    assert_eq!(many.downloads_made, 1000, "the documented cap per check");
    assert_eq!(
        many.etag, None,
        "the next check reads the page again in full"
    );
    let high_water = std::fs::read_to_string(format!("/proc/{}/status", scraper.pid()))?
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(high_water < 512 * 1024, "peak memory {high_water} kB");
    let many = setup.check_now("many").await?;
    assert_eq!(many.downloads_made, 2000, "the next thousand");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_on_a_private_address_is_refused_by_the_guard() -> Result<()> {
    let fixture = HttpFixture::start();
    fixture.route(
        "/builds/",
        FixtureRoute::page(links_page(&[]), "text/html", "\"v1\""),
    );
    let setup = Setup::new("", &links_source(&fixture, "1h"))?;
    setup.write_config(
        "allow_private_addresses = false",
        &links_source(&fixture, "1h"),
    )?;
    // The key is set twice now; write it once.
    let text = std::fs::read_to_string(&setup.config_path)?.replacen(
        "allow_private_addresses = true\n",
        "",
        1,
    );
    std::fs::write(&setup.config_path, text)?;
    let _scraper = setup.start().await?;
    let source = setup.check_now("builds").await?;
    assert_eq!(source.last_outcome.as_deref(), Some("failed"));
    assert!(source.last_error.unwrap_or_default().contains("loopback"));
    assert!(fixture.requests().is_empty(), "nothing reached the server");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_sources_without_a_restart() -> Result<()> {
    let fixture = HttpFixture::start();
    fixture.route(
        "/builds/",
        FixtureRoute::page(links_page(&[]), "text/html", "\"v1\""),
    );
    let setup = Setup::new("", "")?;
    let scraper = setup.start().await?;
    let proxy = setup.proxy().await?;
    assert!(proxy.scrape_now("builds").await.is_err());
    setup.write_config("", &links_source(&fixture, "1h"))?;
    scraper.signal(nix::sys::signal::Signal::SIGHUP)?;
    wait_for("the new source", || {
        setup.store().get_source("builds").is_ok()
    })
    .await?;
    let source = setup.check_now("builds").await?;
    assert_eq!(source.last_outcome.as_deref(), Some("changed"));
    assert!(proxy.source_states().await?.contains_key("builds"));
    setup.write_config("", "")?;
    scraper.signal(nix::sys::signal::Signal::SIGHUP)?;
    wait_for("the source disabled", || !setup.source("builds").enabled).await?;
    assert!(proxy.scrape_now("builds").await.is_err());
    Ok(())
}

#[test]
fn an_invalid_selector_or_pattern_is_a_config_error_naming_file_line_and_key() {
    let directory = tempfile::tempdir().unwrap();
    for (line, expected) in [
        ("selector = \"a[[\"", "selector"),
        ("selector = \"a\"\npattern = \"(unclosed\"", "pattern"),
    ] {
        let path = directory.path().join("bad.toml");
        std::fs::write(
            &path,
            format!("[[source]]\nname = \"x\"\nurl = \"https://example.org/\"\nmode = \"links\"\n{line}\n"),
        )
        .unwrap();
        let error = sluice_core::config::Config::load(&path)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("bad.toml") && error.contains(expected) && error.contains("line"),
            "{error}"
        );
    }
}

/// The whole suite: a configured links source on a loopback server becomes a document, and
/// the API and sluicectl report the source.
#[test]
fn a_configured_links_source_produces_a_document_through_the_whole_suite() {
    let fixture = HttpFixture::start();
    let content = b"a report the source linked to, unique to this test\n".repeat(20);
    let sha256 = crate::support::sha256_hex(&content);
    fixture.route("/builds/report.txt", FixtureRoute::file(content));
    fixture.route(
        "/builds/",
        FixtureRoute::page(links_page(&["report.txt"]), "text/html", "\"v1\""),
    );
    let source = links_source(&fixture, "1s").replace(r"'\.bin$'", r"'\.txt$'");
    let suite = crate::support::Suite::start_with(&source, &[]);
    let mut documents = Vec::new();
    let arrived = crate::support::wait_every(Duration::from_millis(100), DEADLINE * 2, || {
        let (status, body) = suite.get("/api/documents");
        assert_eq!(status, 200, "{body}");
        documents = body["items"].as_array().cloned().unwrap_or_default();
        documents
            .iter()
            .any(|item| item["sha256"] == sha256.as_str())
    });
    assert!(
        arrived,
        "no document; fixture saw {:?}; logs:\n{}",
        fixture.requests(),
        suite.logs()
    );
    let (status, listed) = suite.get("/api/sources");
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["items"][0]["name"], "builds");
    let (status, source) = suite.get("/api/sources/builds");
    assert_eq!(status, 200, "{source}");
    assert_eq!(source["downloads_made"], 1);
    assert_eq!(suite.get("/api/sources/nothing").0, 404);
    let output = suite.sluicectl(&["sources", "show", "builds"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.contains("downloads made"),
        "{text}"
    );
    let output = suite.sluicectl(&["sources", "check", "builds"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
