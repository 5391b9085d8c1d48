//! The dashboard in a real browser (issue 11): headless Chromium, driven over the DevTools
//! protocol, against the real suite (web, monitor, two workers, scraper, private bus) under a
//! non-root base path. It signs in (a wrong token first), uploads through the page's file
//! input, searches, watches a download's progress bar move and a job pass from running to
//! succeeded without a reload, and checks the page reported no error; a second test stops
//! sluice-web under the page and sees it reconnect and catch up. Screenshots go to
//! `target/test-artefacts/`.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::browser::{Browser, Page, artefacts_dir, chromium_path};
use sluice_tests::documents::{page_words, png, text_pdf};

use crate::support::{
    DEADLINE, FixtureRoute, HttpFixture, Suite, WEB_READ_TOKEN, WEB_TEST_TOKEN, WebDaemon, skip,
    wait_until,
};

/// The base path the dashboard is served under in these tests: every URL the page uses must
/// be relative to it.
const BASE_PATH: &str = "/ops";

/// A word that only the uploaded PDF contains.
const MARKER: &str = "zanzibar";

/// Chromium, or `None` (the test then returns) when it is not installed: skipped when not
/// root; as root (CI, where tests/install-needs.sh installs it) its absence fails the test.
fn chromium() -> Option<std::path::PathBuf> {
    let path = chromium_path();
    if path.is_none() {
        assert!(
            !nix::unistd::geteuid().is_root(),
            "chromium is not installed: tests/install-needs.sh installs it"
        );
        skip("needs chromium");
    }
    path
}

fn start_suite(fixture: &HttpFixture) -> Suite {
    fixture.route(
        "/feed.xml",
        FixtureRoute::page(
            "<?xml version=\"1.0\"?><rss version=\"2.0\"><channel><title>Reports</title>\
             <link>http://example.org/</link><description>reports</description></channel></rss>",
            "application/rss+xml",
            "\"feed-v1\"",
        ),
    );
    let sources = format!(
        "[[source]]\nname = \"reports\"\nurl = \"{}\"\nmode = \"feed\"\nevery = \"1h\"\n\
         pattern = '\\.pdf$'\n",
        fixture.url("/feed.xml")
    );
    Suite::start_configured(&format!("base_path = \"{BASE_PATH}\""), &sources, &[])
}

/// Opens the dashboard and signs in with `token`; returns when it shows live data.
fn open_signed_in(page: &mut Page, suite: &Suite, token: &str) -> anyhow::Result<()> {
    page.navigate(&format!("{}{BASE_PATH}/", suite.web.origin))?;
    page.wait_for(
        "the token form",
        "!document.getElementById('login').hidden",
        DEADLINE,
    )?;
    page.fill_and_submit("#token", token)?;
    wait_live(page)
}

fn wait_live(page: &mut Page) -> anyhow::Result<()> {
    page.wait_for(
        "the dashboard, live, with every daemon on the bus",
        "!document.getElementById('dashboard').hidden \
         && document.getElementById('connection').className === 'live' \
         && document.querySelectorAll('#daemons tbody tr').length >= 5 \
         && [...document.querySelectorAll('#daemons tbody tr')]\
              .every((row) => row.querySelector('.dot.on') !== null)",
        DEADLINE,
    )?;
    Ok(())
}

fn text_of(page: &mut Page, selector: &str) -> anyhow::Result<String> {
    let selector = serde_json::to_string(selector)?;
    Ok(page
        .evaluate(&format!(
            "(document.querySelector({selector}) || {{ textContent: '' }}).textContent"
        ))?
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// The page's own headers: a strict Content-Security-Policy (scripts and styles from this
/// origin only, nothing inline), and its script and stylesheet under the base path.
fn check_page_headers(suite: &Suite) -> anyhow::Result<()> {
    let agent = crate::support::http_agent();
    let mut response = agent
        .get(format!("{}{BASE_PATH}/", suite.web.origin))
        .call()?;
    assert_eq!(response.status().as_u16(), 200);
    let policy = response.headers()["content-security-policy"]
        .to_str()?
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{directive} in {policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
    let html = response.body_mut().read_to_string()?;
    assert!(
        html.contains(&format!("src=\"{BASE_PATH}/dashboard.js\""))
            && html.contains(&format!("href=\"{BASE_PATH}/dashboard.css\""))
            && !html.contains("<script>")
            && !html.contains("<style"),
        "{html}"
    );
    for (asset, content_type) in [
        ("dashboard.js", "text/javascript; charset=utf-8"),
        ("dashboard.css", "text/css; charset=utf-8"),
    ] {
        let response = agent
            .get(format!("{}{BASE_PATH}/{asset}", suite.web.origin))
            .call()?;
        assert_eq!(response.status().as_u16(), 200, "{asset}");
        assert_eq!(response.headers()["content-type"], content_type, "{asset}");
    }
    Ok(())
}

fn click_job_action(page: &mut Page, job_id: i64, label: &str) -> anyhow::Result<()> {
    page.wait_for(
        &format!("the {label} button of job {job_id}"),
        &format!(
            "(() => {{ const button = [...document.querySelectorAll('#job-{job_id} button')]\
               .find((candidate) => candidate.textContent === '{label}'); \
               if (!button) return false; button.click(); return true; }})()"
        ),
        DEADLINE,
    )?;
    Ok(())
}

fn wait_job_badge(page: &mut Page, job_id: i64, state: &str) -> anyhow::Result<()> {
    page.wait_for(
        &format!("job {job_id} shown as {state}"),
        &format!(
            "(document.querySelector('#job-{job_id} .badge') || {{}}).textContent === '{state}'"
        ),
        DEADLINE,
    )?;
    Ok(())
}

fn save_screenshot(page: &mut Page, name: &str, width: u32, mobile: bool) -> anyhow::Result<()> {
    let png = page.screenshot(width, mobile)?;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = artefacts_dir().join(name);
    std::fs::write(&path, png)?;
    eprintln!("screenshot: {}", path.display());
    Ok(())
}

#[test]
fn the_dashboard_signs_in_uploads_searches_and_shows_progress_live() -> anyhow::Result<()> {
    let Some(chromium) = chromium() else {
        return Ok(());
    };
    let fixture = HttpFixture::start();
    // A download slow enough to be seen part-way: 96 chunks of 8 KiB, 80 ms apart.
    let body: Vec<u8> = (0..768 * 1024).map(|index| (index % 251) as u8).collect();
    fixture.route(
        "/big.bin",
        FixtureRoute::slow_file(body, 8 * 1024, Duration::from_millis(80)),
    );
    let suite = start_suite(&fixture);
    // A job no worker claims: it waits, to be cancelled and retried from the page.
    let waiting_job = suite.fixture.enqueue("report");
    check_page_headers(&suite)?;
    let browser = Browser::start(&chromium)?;
    let mut page = browser.new_page()?;

    // The page alone: the token form, no data.
    page.navigate(&format!("{}{BASE_PATH}/", suite.web.origin))?;
    page.wait_for(
        "the token form",
        "!document.getElementById('login').hidden && document.getElementById('dashboard').hidden",
        DEADLINE,
    )?;

    // A wrong token: a clear message, the form again, nothing loaded, nothing kept.
    page.fill_and_submit("#token", "not-the-token")?;
    let message = page.wait_for(
        "the wrong token's message",
        "document.getElementById('message').textContent.includes('refused') \
         && document.getElementById('message').textContent",
        DEADLINE,
    )?;
    assert!(
        message
            .as_str()
            .unwrap_or_default()
            .contains("the bearer token is wrong"),
        "{message}"
    );
    let half_loaded = page.evaluate(
        "({ form: !document.getElementById('login').hidden, \
            dashboard: !document.getElementById('dashboard').hidden, \
            rows: document.querySelectorAll('#daemons tr, #jobs tr, #documents article').length, \
            kept: sessionStorage.getItem('sluice-token') })",
    )?;
    assert_eq!(
        half_loaded,
        json!({ "form": true, "dashboard": false, "rows": 0, "kept": null })
    );
    // The refused requests are the only errors the page may have seen so far.
    let refused = page.errors()?;
    assert!(
        refused.iter().all(|error| error.contains("401")),
        "{refused:#?}"
    );
    let errors_before_sign_in = refused.len();

    // The admin token: everything loads, the stream is live, every daemon is on the bus.
    page.fill_and_submit("#token", WEB_TEST_TOKEN)?;
    wait_live(&mut page)?;
    assert_eq!(text_of(&mut page, "#message")?, "");
    let sources = text_of(&mut page, "#sources")?;
    assert!(sources.contains("reports"), "{sources}");
    // A marker that a reload would lose: everything below happens in this one page.
    page.evaluate("window.sameDocument = true")?;

    // Upload two files, as a person does.
    let files = tempfile::tempdir()?;
    let pdf_path = files.path().join("quarterly-report.pdf");
    std::fs::write(
        &pdf_path,
        text_pdf(
            &[page_words(1, 200, "harbour"), page_words(2, 200, MARKER)],
            &[("Title", "Quarterly report")],
        ),
    )?;
    let png_path = files.path().join("gradient.png");
    std::fs::write(&png_path, png(320, 200))?;
    // One file dropped on the drop zone, one chosen with the file input.
    page.drop_files("#dropzone", &[&png_path])?;
    page.wait_for(
        "the dropped file's upload",
        "document.getElementById('upload-status').textContent.startsWith('Uploaded gradient.png')",
        DEADLINE,
    )?;
    page.set_input_files("#file-input", &[&pdf_path])?;
    page.wait_for(
        "the chosen file's upload",
        "document.getElementById('upload-status').textContent\
           .startsWith('Uploaded quarterly-report.pdf')",
        DEADLINE,
    )?;
    page.wait_for(
        "both uploads as documents, the image with its thumbnail",
        "(() => { const text = document.getElementById('documents').textContent; \
           const image = document.querySelector('#documents img'); \
           return text.includes('quarterly-report.pdf') && text.includes('gradient.png') \
             && image !== null && image.complete && image.naturalWidth > 0; })()",
        DEADLINE,
    )?;

    // Search: the hit names its page and marks the word in the snippet.
    page.fill_and_submit("#query", MARKER)?;
    let hit = page.wait_for(
        "the search hit",
        &format!(
            "(() => {{ const mark = document.querySelector('#documents mark'); \
               return mark && mark.textContent === '{MARKER}' \
                 && mark.closest('article').textContent; }})()"
        ),
        DEADLINE,
    )?;
    let hit = hit.as_str().unwrap_or_default();
    assert!(
        hit.contains("quarterly-report.pdf") && hit.contains("page 2"),
        "{hit}"
    );
    assert!(
        !text_of(&mut page, "#documents")?.contains("gradient.png"),
        "only hits are listed while searching"
    );
    page.evaluate("document.getElementById('clear-search').click()")?;
    page.wait_for(
        "the full list again",
        "document.getElementById('documents').textContent.includes('gradient.png')",
        DEADLINE,
    )?;

    // A download: its progress bar moves, its job passes from running to succeeded, live.
    let (status, created) = suite.post_json(
        "/ops/api/downloads",
        &json!({ "url": fixture.url("/big.bin"), "file_name": "big.bin" }),
    );
    assert_eq!(status, 201, "{created}");
    let download_id = created["download"]["id"].as_i64().expect("download id");
    let job_id = created["job_id"].as_i64().expect("job id");
    let mut fractions: Vec<f64> = Vec::new();
    let mut job_states: Vec<String> = Vec::new();
    let mut screenshot_taken = false;
    let finished = wait_until(DEADLINE, || {
        let seen = page
            .evaluate(&format!(
                "(() => {{ const bar = document.querySelector('#running-download-{download_id} progress'); \
                   const badge = document.querySelector('#job-{job_id} .badge'); \
                   const done = document.querySelector('#download-{download_id} .badge'); \
                   return {{ fraction: bar && bar.max > 1 ? bar.value / bar.max : null, \
                     job: badge ? badge.textContent : null, \
                     download: done ? done.textContent : null }}; }})()"
            ))
            .expect("read the download's bar");
        if let Some(fraction) = seen["fraction"].as_f64()
            && fraction > 0.0
            && fraction < 1.0
            && !fractions.contains(&fraction)
        {
            fractions.push(fraction);
        }
        if let Some(state) = seen["job"].as_str()
            && job_states.last().map(String::as_str) != Some(state)
        {
            job_states.push(state.to_owned());
        }
        if !screenshot_taken && fractions.len() >= 2 {
            // The dashboard with work in flight: the picture the README shows.
            save_screenshot(&mut page, "dashboard.png", 1280, false).expect("screenshot");
            screenshot_taken = true;
        }
        seen["download"] == "succeeded" && seen["job"] == "succeeded"
    });
    assert!(
        finished,
        "the download did not show as succeeded; bar {fractions:?}, job {job_states:?}\n{}",
        suite.logs()
    );
    assert!(
        fractions.len() >= 2 && fractions.windows(2).all(|pair| pair[0] < pair[1]),
        "the progress bar moved forward through at least two values: {fractions:?}"
    );
    assert!(
        job_states.iter().any(|state| state == "running")
            && job_states.last().map(String::as_str) == Some("succeeded"),
        "the job row passed from running to succeeded: {job_states:?}"
    );
    page.wait_for(
        "the downloaded file as a document",
        "document.getElementById('documents').textContent.includes('big.bin')",
        DEADLINE,
    )?;
    let log = text_of(&mut page, "#log")?;
    assert!(
        log.contains(&format!("job {job_id} succeeded")),
        "the live log shows the job's end: {log}"
    );
    assert_eq!(
        page.evaluate("window.sameDocument === true")?,
        Value::Bool(true),
        "nothing above reloaded the page"
    );

    // Cancel and retry from the page, as the admin.
    click_job_action(&mut page, waiting_job, "Cancel")?;
    wait_job_badge(&mut page, waiting_job, "cancelled")?;
    click_job_action(&mut page, waiting_job, "Retry")?;
    wait_job_badge(&mut page, waiting_job, "queued")?;
    assert_eq!(
        suite.fixture.store().get_job(waiting_job)?.state.as_str(),
        "queued"
    );

    save_screenshot(&mut page, "dashboard-phone.png", 390, true)?;
    if !screenshot_taken {
        save_screenshot(&mut page, "dashboard.png", 1280, false)?;
    }
    let errors = page.errors()?;
    assert!(
        errors.len() == errors_before_sign_in,
        "the page reported errors after signing in: {:#?}",
        &errors[errors_before_sign_in..]
    );
    Ok(())
}

#[test]
fn the_dashboard_reconnects_after_sluice_web_restarts_and_catches_up() -> anyhow::Result<()> {
    let Some(chromium) = chromium() else {
        return Ok(());
    };
    let fixture = HttpFixture::start();
    let mut suite = start_suite(&fixture);
    let waiting_job = suite.fixture.enqueue("report");
    let browser = Browser::start(&chromium)?;
    let mut page = browser.new_page()?;
    // The read token: watching needs no more.
    open_signed_in(&mut page, &suite, WEB_READ_TOKEN)?;
    page.evaluate("window.sameDocument = true")?;

    // Changing anything needs the admin token: the page says so and nothing changes.
    click_job_action(&mut page, waiting_job, "Cancel")?;
    page.wait_for(
        "the read token's refusal",
        "document.getElementById('message').textContent.includes('needs the admin token')",
        DEADLINE,
    )?;
    assert_eq!(
        suite.fixture.store().get_job(waiting_job)?.state.as_str(),
        "queued"
    );
    let refused = page.errors()?;
    assert!(
        refused.len() == 1 && refused[0].contains("403"),
        "only the refused cancel: {refused:#?}"
    );
    page.events.clear();

    // sluice-web stops: the page says it is reconnecting.
    suite
        .web
        .process
        .terminate(DEADLINE)
        .map_err(|error| anyhow::anyhow!("{error:#}"))?;
    page.wait_for(
        "the page noticing the stream dropped",
        "document.getElementById('connection').className === 'reconnecting' \
         && document.getElementById('connection').textContent",
        DEADLINE,
    )?;

    // While it is down a file arrives and becomes a document: the page sees no event of it.
    std::fs::write(suite.inbox().join("while-down.png"), png(64, 64))?;
    let arrived = wait_until(DEADLINE, || {
        suite
            .fixture
            .store()
            .list_documents(
                &Default::default(),
                sluice_core::store::PageRequest {
                    before_id: None,
                    limit: 10,
                },
            )
            .is_ok_and(|page| page.items.len() == 1)
    });
    assert!(
        arrived,
        "the file did not become a document\n{}",
        suite.logs()
    );

    // sluice-web comes back on the same address (the page's origin).
    let config = std::fs::read_to_string(&suite.fixture.config_path)?;
    std::fs::write(
        &suite.fixture.config_path,
        config.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", suite.web.address),
        ),
    )?;
    suite.web = WebDaemon::start(&suite.fixture);

    // The page reconnects by itself and catches up with what it missed.
    wait_live(&mut page)?;
    page.wait_for(
        "the document that arrived during the drop",
        "document.getElementById('documents').textContent.includes('while-down.png')",
        DEADLINE,
    )?;
    let log = text_of(&mut page, "#log")?;
    assert!(log.contains("reconnected"), "{log}");

    // Events after the drop arrive live.
    std::fs::write(suite.inbox().join("after-restart.png"), png(48, 48))?;
    page.wait_for(
        "the new file's events and document",
        "document.getElementById('log').textContent.includes('after-restart.png') \
         && document.getElementById('documents').textContent.includes('after-restart.png')",
        DEADLINE,
    )?;
    assert_eq!(
        page.evaluate("window.sameDocument === true")?,
        Value::Bool(true),
        "the page was not reloaded"
    );
    assert_eq!(
        text_of(&mut page, "#message")?,
        "",
        "no error is left shown"
    );

    // The only errors: requests that could not reach sluice-web while it was down.
    let errors = page.errors()?;
    assert!(
        errors
            .iter()
            .all(|error| error.contains("Log.entryAdded (network)")
                && error.contains("ERR_CONNECTION_REFUSED")),
        "{errors:#?}"
    );
    Ok(())
}
