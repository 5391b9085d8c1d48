//! Bundles (issue 14) with the real sluice-scraper and sluice-web: a private dbus-daemon, a
//! real SQLite file and an HTTP fixture on 127.0.0.1 that serves the files and, for `hf://`
//! bundles, answers the Hugging Face Hub API's shape (revision, tree with LFS SHA-256,
//! resolve URLs). Every wait is for a condition with a deadline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use sluice_core::bus::{self, ScraperProxy};
use sluice_core::store::{Bundle, BundleState, Durability, Store};

use crate::support::{
    BusPolicy, DEADLINE, DaemonProcess, FixtureRoute, HttpFixture, PrivateBus, SuiteFixture,
    WEB_READ_TOKEN, WEB_TEST_TOKEN, WebDaemon, binary_path, files_under, http_agent, http_result,
    open_store, sha256_hex,
};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

struct Setup {
    fixture: SuiteFixture,
    root: PathBuf,
}

impl Setup {
    /// A scraper and web configuration; `scraper` adds `[scraper]` lines.
    fn new(scraper: &str) -> Result<Setup> {
        let directory = tempfile::tempdir()?;
        let root = directory.path().to_path_buf();
        let bus = PrivateBus::start(BusPolicy::AllowEverything)?;
        for folder in ["inbox", "staging", "library"] {
            std::fs::create_dir_all(root.join(folder))?;
        }
        std::fs::write(root.join("api-token"), format!("{WEB_TEST_TOKEN}\n"))?;
        std::fs::write(root.join("read-token"), format!("{WEB_READ_TOKEN}\n"))?;
        let config_path = root.join("sluice.toml");
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

[web]
listen = "127.0.0.1:0"
token_file = "{root}/api-token"
read_token_file = "{root}/read-token"

[limits]
max_request_body = "2 MiB"

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
request_timeout = "5s"
per_host_concurrency = 8
{scraper}
"#,
            root = root.display(),
            address = bus.address(),
        );
        std::fs::write(&config_path, text)?;
        Ok(Setup {
            fixture: SuiteFixture {
                database: root.join("sluice.db"),
                bus,
                directory,
                config_path,
            },
            root,
        })
    }

    fn store(&self) -> Store {
        open_store(&self.fixture.database, Durability::Normal)
    }

    fn inbox(&self) -> PathBuf {
        self.root.join("inbox")
    }

    fn bundle(&self, id: u64) -> Bundle {
        self.store().get_bundle(id as i64).expect("bundle row")
    }

    async fn start_scraper(&self) -> Result<DaemonProcess> {
        crate::support::start_scraper(&self.fixture.config_path, self.fixture.bus.address()).await
    }

    async fn proxy(&self) -> Result<ScraperProxy<'static>> {
        crate::support::scraper_proxy(self.fixture.bus.address()).await
    }

    async fn wait_for_bundle(
        &self,
        id: u64,
        what: &str,
        mut condition: impl FnMut(&Bundle) -> bool,
    ) -> Result<Bundle> {
        let started = Instant::now();
        loop {
            let bundle = self.bundle(id);
            if condition(&bundle) {
                return Ok(bundle);
            }
            ensure!(
                started.elapsed() < DEADLINE,
                "timed out waiting for {what}; last seen {bundle:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn body(seed: &str, length: usize) -> Vec<u8> {
    seed.bytes().cycle().take(length).collect()
}

fn files(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    list.iter()
        .map(|(url, path, sha)| ((*url).to_owned(), (*path).to_owned(), (*sha).to_owned()))
        .collect()
}

/// Relative paths of every file under `folder`, sorted.
fn relative_files(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = files_under(folder)
        .into_iter()
        .map(|path| {
            path.strip_prefix(folder)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_appears_as_one_folder_only_when_every_file_is_complete() -> Result<()> {
    let http = HttpFixture::start();
    let (a, b) = (body("a", 3000), body("b", 5000));
    let slow = body("c", 256 * 1024);
    http.route("/a.bin", FixtureRoute::file(a.clone()));
    http.route("/b.bin", FixtureRoute::file(b.clone()));
    // 16 KiB every 50 ms: about 0.8 s, long enough to look at the inbox while it runs.
    http.route(
        "/c.bin",
        FixtureRoute::slow_file(slow.clone(), 16 * 1024, Duration::from_millis(50)),
    );
    let setup = Setup::new("")?;
    let _scraper = setup.start_scraper().await?;
    let proxy = setup.proxy().await?;
    let mut finished = proxy.receive_bundle_finished().await?;
    let id = proxy
        .add_bundle(
            "model",
            files(&[
                (&http.url("/a.bin"), "a.bin", &sha256_hex(&a)),
                (&http.url("/b.bin"), "sub/dir/b.bin", ""),
                (&http.url("/c.bin"), "", &sha256_hex(&slow)),
            ]),
        )
        .await?;
    let running = setup
        .wait_for_bundle(id, "two files done", |bundle| bundle.files_done == 2)
        .await?;
    if running.state == BundleState::Running {
        assert!(
            relative_files(&setup.inbox()).is_empty(),
            "nothing is in the inbox while a file runs: {:?}",
            relative_files(&setup.inbox())
        );
    }
    let done = setup
        .wait_for_bundle(id, "the bundle placed", |bundle| {
            bundle.state != BundleState::Running
        })
        .await?;
    assert_eq!(done.state, BundleState::Succeeded, "{done:?}");
    assert_eq!((done.files_done, done.files_failed), (3, 0));
    assert_eq!(done.bytes_done, (a.len() + b.len() + slow.len()) as u64);
    let folder = setup.inbox().join("model");
    assert_eq!(done.final_path.as_deref(), Some(folder.to_str().unwrap()));
    assert_eq!(
        relative_files(&setup.inbox()),
        vec!["model/a.bin", "model/c.bin", "model/sub/dir/b.bin"]
    );
    assert_eq!(std::fs::read(folder.join("sub/dir/b.bin"))?, b);
    let signal = tokio::time::timeout(DEADLINE, futures_util::StreamExt::next(&mut finished))
        .await?
        .context("BundleFinished")?;
    let args = signal.args()?;
    assert_eq!(
        (*args.bundle_id(), *args.state(), *args.path()),
        (id, "succeeded", &bus::path_to_bytestring(&folder)[..])
    );
    assert_eq!(std::fs::read(folder.join("c.bin"))?, slow);
    assert!(
        relative_files(&setup.root.join("staging")).is_empty(),
        "staging is empty afterwards"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sha256_fails_the_bundle_clearly_and_nothing_reaches_the_inbox() -> Result<()> {
    let http = HttpFixture::start();
    http.route("/good.bin", FixtureRoute::file(body("g", 4000)));
    http.route("/bad.bin", FixtureRoute::file(body("b", 4000)));
    http.route(
        "/slow.bin",
        FixtureRoute::slow_file(body("s", 512 * 1024), 16 * 1024, Duration::from_millis(50)),
    );
    let setup = Setup::new("")?;
    let _scraper = setup.start_scraper().await?;
    let proxy = setup.proxy().await?;
    let wrong = "f".repeat(64);
    let id = proxy
        .add_bundle(
            "model",
            files(&[
                (&http.url("/good.bin"), "good.bin", ""),
                (&http.url("/bad.bin"), "weights/bad.bin", &wrong),
                (&http.url("/slow.bin"), "slow.bin", ""),
            ]),
        )
        .await?;
    let failed = setup
        .wait_for_bundle(id, "the bundle to fail", |bundle| {
            bundle.state != BundleState::Running
        })
        .await?;
    assert_eq!(failed.state, BundleState::Failed, "{failed:?}");
    let error = failed.error.clone().unwrap_or_default();
    assert!(
        error.contains("weights/bad.bin") && error.contains("SHA-256 mismatch"),
        "{error}"
    );
    // The other files stop too; nothing of the bundle is in the inbox or left in staging.
    let store = setup.store();
    let started = Instant::now();
    while !store
        .bundle_files(id as i64)?
        .iter()
        .all(|file| file.state.is_finished())
    {
        ensure!(started.elapsed() < DEADLINE, "the files never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(relative_files(&setup.inbox()).is_empty());
    let started = Instant::now();
    while !relative_files(&setup.root.join("staging")).is_empty() {
        ensure!(
            started.elapsed() < DEADLINE,
            "staging kept {:?}",
            relative_files(&setup.root.join("staging"))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_download_stops_the_bundle_and_delete_removes_its_folder() -> Result<()> {
    let http = HttpFixture::start();
    http.route("/quick.bin", FixtureRoute::file(body("q", 2000)));
    // 4 KiB every 100 ms: minutes for the whole file, so it is surely running when cancelled.
    http.route(
        "/slow.bin",
        FixtureRoute::slow_file(body("s", 4 << 20), 4 * 1024, Duration::from_millis(100)),
    );
    let setup = Setup::new("")?;
    let _scraper = setup.start_scraper().await?;
    let proxy = setup.proxy().await?;
    let id = proxy
        .add_bundle(
            "cancelled",
            files(&[
                (&http.url("/quick.bin"), "quick.bin", ""),
                (&http.url("/slow.bin"), "slow.bin", ""),
            ]),
        )
        .await?;
    setup
        .wait_for_bundle(id, "the slow file under way", |bundle| {
            bundle.files_done == 1 && bundle.bytes_done > 2000
        })
        .await?;
    proxy.cancel_bundle(id).await?;
    let cancelled = setup.bundle(id);
    assert_eq!(cancelled.state, BundleState::Cancelled);
    let started = Instant::now();
    while !relative_files(&setup.root.join("staging")).is_empty()
        || !setup
            .store()
            .bundle_files(id as i64)?
            .iter()
            .all(|file| file.state.is_finished())
    {
        ensure!(started.elapsed() < DEADLINE, "the cancel never completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(relative_files(&setup.inbox()).is_empty());
    let error = proxy.cancel_bundle(id).await.unwrap_err().to_string();
    assert!(error.contains("cancelled"), "{error}");

    proxy.delete_bundle(id).await?;
    assert!(setup.store().get_bundle(id as i64).is_err());

    // A complete bundle's delete removes its folder from the inbox, and nothing else.
    std::fs::write(setup.inbox().join("unrelated.txt"), b"stays")?;
    let id = proxy
        .add_bundle("kept", files(&[(&http.url("/quick.bin"), "q.bin", "")]))
        .await?;
    setup
        .wait_for_bundle(id, "the bundle placed", |bundle| {
            bundle.state == BundleState::Succeeded
        })
        .await?;
    assert!(setup.inbox().join("kept/q.bin").is_file());
    proxy.delete_bundle(id).await?;
    assert!(!setup.inbox().join("kept").exists());
    assert_eq!(relative_files(&setup.inbox()), vec!["unrelated.txt"]);
    let error = proxy.delete_bundle(id).await.unwrap_err().to_string();
    assert!(error.contains("does not exist"), "{error}");
    Ok(())
}

/// Synchronous, with a runtime of its own for the D-Bus calls: sluice-web's harness and the
/// HTTP client block.
#[test]
fn hostile_bundles_are_refused_with_a_clear_error_and_change_nothing() -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let http = HttpFixture::start();
    http.route("/f.bin", FixtureRoute::file(body("f", 100)));
    let setup = Setup::new("max_pending = 5")?;
    let mut scraper = runtime.block_on(setup.start_scraper())?;
    let web = WebDaemon::start(&setup.fixture);
    let agent = http_agent();
    let post = |request: Value| {
        http_result(
            agent
                .post(format!("{}/api/bundles", web.origin))
                .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
                .header("Content-Type", "application/json")
                .send(request.to_string()),
        )
    };
    let url = http.url("/f.bin");
    let file = |path: &str| json!({ "url": url, "path": path });
    let many: Vec<Value> = (0..10_000)
        .map(|index| file(&format!("f{index}")))
        .collect();
    for (request, expected) in [
        (
            json!({ "name": "m", "files": [file("../x")] }),
            "invalid_path",
        ),
        (
            json!({ "name": "m", "files": [file("/etc/x")] }),
            "invalid_path",
        ),
        (json!({ "name": "m", "files": [file("")] }), "invalid_path"),
        (
            json!({ "name": "m", "files": [file("a/\u{7}b")] }),
            "invalid_path",
        ),
        (
            json!({ "name": "m", "files": [file("a"), file("a")] }),
            "invalid_path",
        ),
        (json!({ "name": "m", "files": many }), "out_of_range"),
        (json!({ "name": "m", "files": [] }), "out_of_range"),
        (
            json!({ "name": "../m", "files": [file("a")] }),
            "invalid_name",
        ),
        (json!({ "name": "hf://../x", "files": [] }), "invalid_name"),
        (
            json!({ "name": "m", "files": [{ "url": url, "sha256": "xyz" }] }),
            "invalid_sha256",
        ),
        (
            json!({ "name": "m", "files": [{ "url": "ftp://example.org/a" }] }),
            "invalid_url",
        ),
    ] {
        let (status, answer) = post(request);
        assert_eq!(status, 400, "{answer}");
        let text = answer.to_string();
        assert!(text.contains(expected), "expected {expected}: {text}");
    }
    // Over D-Bus the same verdicts.
    let proxy = runtime.block_on(setup.proxy())?;
    let error = runtime
        .block_on(proxy.add_bundle("m", files(&[(&url, "../x", "")])))
        .unwrap_err()
        .to_string();
    assert!(error.contains("invalid_path"), "{error}");
    // The queue limit holds for the bundle as a whole: 6 files do not fit in 5.
    let six: Vec<Value> = (0..6).map(|index| file(&format!("f{index}"))).collect();
    let (status, answer) = post(json!({ "name": "m", "files": six }));
    assert_eq!(status, 429, "{answer}");

    let store = setup.store();
    let page = sluice_core::store::PageRequest {
        before_id: None,
        limit: 10,
    };
    assert!(store.list_bundles(page)?.items.is_empty());
    assert!(
        store
            .list_downloads(&Default::default(), page)?
            .items
            .is_empty()
    );
    assert!(relative_files(&setup.inbox()).is_empty());
    assert!(scraper.is_running());

    // A good one through the web API, listed, shown and deleted there.
    let (status, answer) = post(json!({ "name": "ok", "files": [file("x/f.bin")] }));
    assert_eq!(status, 201, "{answer}");
    let id = answer["bundle"]["id"].as_u64().context("bundle id")?;
    runtime.block_on(setup.wait_for_bundle(id, "the bundle placed", |bundle| {
        bundle.state == BundleState::Succeeded
    }))?;
    let read = |path: &str| {
        http_result(
            agent
                .get(format!("{}{path}", web.origin))
                .header("Authorization", format!("Bearer {WEB_READ_TOKEN}"))
                .call(),
        )
    };
    let (status, list) = read("/api/bundles");
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["id"].as_u64(), Some(id));
    let (status, shown) = read(&format!("/api/bundles/{id}"));
    assert_eq!(status, 200);
    assert_eq!(shown["bundle"]["state"], "succeeded");
    assert_eq!(shown["bundle"]["files_done"], 1);
    assert_eq!(shown["files"][0]["relative_path"], "x/f.bin");
    assert_eq!(read("/api/bundles/999").0, 404);
    let (status, answer) = http_result(
        agent
            .post(format!("{}/api/bundles/{id}/cancel", web.origin))
            .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
            .send_empty(),
    );
    assert_eq!(
        status, 409,
        "a finished bundle cannot be cancelled: {answer}"
    );
    let (status, _) = http_result(
        agent
            .delete(format!("{}/api/bundles/{id}", web.origin))
            .header("Authorization", format!("Bearer {WEB_READ_TOKEN}"))
            .call(),
    );
    assert_eq!(status, 403, "the read token cannot delete");
    let (status, answer) = http_result(
        agent
            .delete(format!("{}/api/bundles/{id}", web.origin))
            .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
            .call(),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(!setup.inbox().join("ok").exists());

    // Without the scraper a change is refused, not half done.
    scraper.terminate(DEADLINE)?;
    let (status, answer) = post(json!({ "name": "later", "files": [file("f.bin")] }));
    assert_eq!(status, 503, "{answer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_scraper_completes_the_bundle_exactly_once_after_a_restart() -> Result<()> {
    let http = HttpFixture::start();
    let quick = body("q", 3000);
    let slow = body("s", 1 << 20);
    http.route("/quick.bin", FixtureRoute::file(quick.clone()));
    // 64 KiB every 100 ms: about 1.6 s, killed half way.
    http.route(
        "/slow.bin",
        FixtureRoute::slow_file(slow.clone(), 64 * 1024, Duration::from_millis(100)),
    );
    let setup = Setup::new("")?;
    let mut scraper = setup.start_scraper().await?;
    let proxy = setup.proxy().await?;
    let id = proxy
        .add_bundle(
            "model",
            files(&[
                (&http.url("/quick.bin"), "quick.bin", &sha256_hex(&quick)),
                (&http.url("/slow.bin"), "big/slow.bin", &sha256_hex(&slow)),
            ]),
        )
        .await?;
    setup
        .wait_for_bundle(id, "the slow file half way", |bundle| {
            bundle.files_done == 1 && bundle.bytes_done > quick.len() as u64 + 64 * 1024
        })
        .await?;
    scraper.kill_hard();
    assert_eq!(setup.bundle(id).state, BundleState::Running);
    assert!(relative_files(&setup.inbox()).is_empty());

    let _scraper = setup.start_scraper().await?;
    let done = setup
        .wait_for_bundle(id, "the bundle placed after the restart", |bundle| {
            bundle.state != BundleState::Running
        })
        .await?;
    assert_eq!(done.state, BundleState::Succeeded, "{done:?}");
    assert_eq!(
        relative_files(&setup.inbox()),
        vec!["model/big/slow.bin", "model/quick.bin"],
        "placed exactly once"
    );
    assert_eq!(
        std::fs::read(setup.inbox().join("model/big/slow.bin"))?,
        slow
    );
    let resumed = http
        .requests_for("/slow.bin")
        .iter()
        .any(|request| request.range.is_some());
    assert!(resumed, "the slow file resumed with a range request");
    Ok(())
}

/// `sha1("blob LEN\0" + content)` in hex, as git (and the Hub) names a file.
fn git_blob_sha1(content: &[u8]) -> String {
    use sha1::Digest as _;
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", content.len()).as_bytes());
    hasher.update(content);
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The Hub's answers for `repository` at [`COMMIT`]: `prefix` is `/api/models` or
/// `/api/datasets`, `resolve` the download prefix (`` or `/datasets`).
fn serve_hub_repository(
    http: &HttpFixture,
    prefix: &str,
    resolve: &str,
    repository: &str,
    revision: &str,
    files: &[(&str, &[u8], bool)],
) {
    let siblings: Vec<Value> = files
        .iter()
        .map(|(path, _, _)| json!({ "rfilename": path }))
        .collect();
    http.route(
        &format!("{prefix}/{repository}/revision/{revision}"),
        FixtureRoute::json(&json!({ "id": repository, "sha": COMMIT, "siblings": siblings })),
    );
    let mut tree = vec![json!({ "type": "directory", "path": "weights", "oid": "1", "size": 0 })];
    for (path, content, lfs) in files {
        // Like the Hub: `oid` is the git blob SHA-1 (of the LFS pointer for an LFS file).
        let oid = if *lfs {
            git_blob_sha1(b"version https://git-lfs.github.com/spec/v1\n")
        } else {
            git_blob_sha1(content)
        };
        let mut entry = json!({
            "type": "file", "path": path, "size": content.len(), "oid": oid,
        });
        if *lfs {
            entry["lfs"] = json!({ "oid": sha256_hex(content), "size": content.len(),
                                    "pointerSize": 130 });
        }
        tree.push(entry);
        http.route(
            &format!("{resolve}/{repository}/resolve/{COMMIT}/{path}"),
            FixtureRoute::file(content.to_vec()),
        );
    }
    // Two pages, the first naming the second in a Link header, as the Hub pages long lists.
    let second = tree.split_off(2.min(tree.len()));
    let first_page = format!("{prefix}/{repository}/tree/{COMMIT}?recursive=true");
    let second_page = format!("{first_page}&cursor=page2");
    http.route(
        &first_page,
        FixtureRoute::Json {
            body: std::sync::Arc::new(Value::Array(tree).to_string().into_bytes()),
            headers: format!("Link: <{}>; rel=\"next\"\r\n", http.url(&second_page)),
        },
    );
    http.route(&second_page, FixtureRoute::json(&Value::Array(second)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hf_repositories_resolve_to_a_pinned_commit_models_and_datasets() -> Result<()> {
    let http = HttpFixture::start();
    let weights = body("w", 70_000);
    serve_hub_repository(
        &http,
        "/api/models",
        "",
        "org/tiny",
        "main",
        &[
            ("config.json", b"{\"layers\": 2}", false),
            ("weights/model.safetensors", &weights, true),
        ],
    );
    serve_hub_repository(
        &http,
        "/api/datasets",
        "/datasets",
        "org/data",
        "v1",
        &[("train.csv", b"a,b\n1,2\n", false)],
    );
    // Like the Hub, the large file is sent on to a CDN (another origin: another port).
    let cdn = HttpFixture::start();
    cdn.route("/blob/weights", FixtureRoute::file(weights.clone()));
    http.route(
        &format!("/org/tiny/resolve/{COMMIT}/weights/model.safetensors"),
        FixtureRoute::Redirect(cdn.url("/blob/weights")),
    );
    // A model whose LFS file does not match the SHA-256 the Hub gives.
    serve_hub_repository(
        &http,
        "/api/models",
        "",
        "org/broken",
        "main",
        &[("weights/model.safetensors", b"original", true)],
    );
    http.route(
        &format!("/org/broken/resolve/{COMMIT}/weights/model.safetensors"),
        FixtureRoute::file(b"tampered".to_vec()),
    );
    // A model whose small file (in git, not LFS) does not match its git blob SHA-1.
    serve_hub_repository(
        &http,
        "/api/models",
        "",
        "org/small",
        "main",
        &[("config.json", b"{\"layers\": 2}", false)],
    );
    http.route(
        &format!("/org/small/resolve/{COMMIT}/config.json"),
        FixtureRoute::file(b"{\"layers\": 3}".to_vec()),
    );
    let setup = Setup::new(&format!("hf_endpoint = \"{}\"", http.url("")))?;
    let credentials = setup.root.join("hf-token");
    std::fs::write(&credentials, "bearer hf_test_token\n")?;
    let config = std::fs::read_to_string(&setup.fixture.config_path)?.replace(
        "[scraper]\n",
        &format!(
            "[scraper]\nhf_credentials_file = \"{}\"\n",
            credentials.display()
        ),
    );
    std::fs::write(&setup.fixture.config_path, config)?;
    let _scraper = setup.start_scraper().await?;
    let proxy = setup.proxy().await?;

    let id = proxy.add_bundle("hf://org/tiny", Vec::new()).await?;
    let model = setup
        .wait_for_bundle(id, "the model placed", |bundle| {
            bundle.state != BundleState::Running
        })
        .await?;
    assert_eq!(model.state, BundleState::Succeeded, "{model:?}");
    assert_eq!(model.revision.as_deref(), Some(COMMIT));
    assert_eq!(
        model.origin.as_deref(),
        Some(format!("hf://org/tiny@{COMMIT}").as_str())
    );
    assert_eq!(
        relative_files(&setup.inbox().join("org--tiny")),
        vec!["config.json", "weights/model.safetensors"]
    );
    assert_eq!(
        std::fs::read(setup.inbox().join("org--tiny/weights/model.safetensors"))?,
        weights
    );
    let files = setup.store().bundle_files(id as i64)?;
    let lfs = files
        .iter()
        .find(|file| file.relative_path.as_deref() == Some("weights/model.safetensors"))
        .context("the LFS file")?;
    assert_eq!(
        lfs.expected_sha256.as_deref(),
        Some(sha256_hex(&weights).as_str())
    );
    assert!(
        lfs.url.contains(COMMIT),
        "pinned to the commit: {}",
        lfs.url
    );
    // The token went to the Hub's API and downloads, its own origin, and not on to the CDN.
    let token = Some("Bearer hf_test_token");
    let api = http.requests_for("/api/models/org/tiny/revision/main");
    assert_eq!(api[0].authorization.as_deref(), token);
    let hub_file = http.requests_for(&format!(
        "/org/tiny/resolve/{COMMIT}/weights/model.safetensors"
    ));
    assert_eq!(hub_file[0].authorization.as_deref(), token);
    let cdn_file = cdn.requests_for("/blob/weights");
    assert_eq!(cdn_file.len(), 1);
    assert_eq!(
        cdn_file[0].authorization, None,
        "no token across the redirect"
    );
    // A download someone adds by hand is not a file of an hf:// bundle: no token, even on
    // the Hub's origin.
    http.route("/by-hand/notes.txt", FixtureRoute::file(b"notes".to_vec()));
    proxy
        .add_download(&http.url("/by-hand/notes.txt"), Default::default())
        .await?;
    let started = Instant::now();
    while !setup.inbox().join("notes.txt").exists() {
        ensure!(
            started.elapsed() < DEADLINE,
            "the download by hand never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let by_hand = http.requests_for("/by-hand/notes.txt");
    assert_eq!(by_hand.len(), 1);
    assert_eq!(
        by_hand[0].authorization, None,
        "no token for a download by hand"
    );

    let id = proxy
        .add_bundle("hf://datasets/org/data@v1", Vec::new())
        .await?;
    let dataset = setup
        .wait_for_bundle(id, "the dataset placed", |bundle| {
            bundle.state != BundleState::Running
        })
        .await?;
    assert_eq!(dataset.state, BundleState::Succeeded, "{dataset:?}");
    assert_eq!(
        std::fs::read(setup.inbox().join("datasets--org--data/train.csv"))?,
        b"a,b\n1,2\n"
    );

    let error = proxy
        .add_bundle("hf://org/tiny@no-such-branch", Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("org/tiny")
            && error.contains("no-such-branch")
            && error.contains("does not exist"),
        "{error}"
    );

    let id = proxy.add_bundle("hf://org/broken", Vec::new()).await?;
    let broken = setup
        .wait_for_bundle(id, "the broken model to fail", |bundle| {
            bundle.state != BundleState::Running
        })
        .await?;
    assert_eq!(broken.state, BundleState::Failed);
    assert!(
        broken
            .error
            .as_deref()
            .unwrap_or("")
            .contains("SHA-256 mismatch"),
        "{broken:?}"
    );
    assert!(!setup.inbox().join("org--broken").exists());

    // The small files of the good model were checked by their git blob SHA-1.
    let config_file = files
        .iter()
        .find(|file| file.relative_path.as_deref() == Some("config.json"))
        .context("config.json")?;
    assert_eq!(config_file.expected_sha256, None, "no LFS SHA-256 for it");
    let job = setup
        .store()
        .get_job(config_file.job_id.context("its job")?)?;
    assert_eq!(
        job.payload["git_blob_sha1"],
        json!(git_blob_sha1(b"{\"layers\": 2}"))
    );
    let id = proxy.add_bundle("hf://org/small", Vec::new()).await?;
    let small = setup
        .wait_for_bundle(id, "the model with a wrong small file to fail", |bundle| {
            bundle.state != BundleState::Running
        })
        .await?;
    assert_eq!(small.state, BundleState::Failed);
    assert!(
        small
            .error
            .as_deref()
            .unwrap_or("")
            .contains("git blob SHA-1 mismatch"),
        "{small:?}"
    );
    assert!(!setup.inbox().join("org--small").exists());
    Ok(())
}

/// `sluicectl bundle` with its status, exit codes and `--json`.
fn sluicectl(setup: &Setup, arguments: &[&str]) -> (i32, String) {
    let output = Command::new(binary_path("sluicectl"))
        .arg("--config")
        .arg(&setup.fixture.config_path)
        .args(arguments)
        .output()
        .expect("run sluicectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluicectl_adds_lists_shows_and_deletes_bundles() -> Result<()> {
    let http = HttpFixture::start();
    let content = body("x", 1234);
    http.route("/x.bin", FixtureRoute::file(content.clone()));
    let setup = Setup::new("")?;
    let (status, text) = sluicectl(&setup, &["bundle", "add", "m", &http.url("/x.bin")]);
    assert_eq!(status, 5, "no scraper: {text}");
    let _scraper = setup.start_scraper().await?;
    let entry = format!(
        "deep/x.bin={}#sha256={}",
        http.url("/x.bin"),
        sha256_hex(&content)
    );
    let (status, text) = sluicectl(&setup, &["--json", "bundle", "add", "cli", &entry]);
    assert_eq!(status, 0, "{text}");
    let added: Value = serde_json::from_str(&text)?;
    let id = added["bundle"]["id"].as_u64().context("id")?;
    setup
        .wait_for_bundle(id, "the bundle placed", |bundle| {
            bundle.state == BundleState::Succeeded
        })
        .await?;
    assert_eq!(
        std::fs::read(setup.inbox().join("cli/deep/x.bin"))?,
        content
    );
    let (status, text) = sluicectl(&setup, &["bundle", "list"]);
    assert_eq!(status, 0, "{text}");
    assert!(text.contains("cli") && text.contains("succeeded"), "{text}");
    let (status, text) = sluicectl(&setup, &["bundle", "show", &id.to_string()]);
    assert_eq!(status, 0, "{text}");
    assert!(
        text.contains("deep/x.bin") && text.contains("1 done"),
        "{text}"
    );
    let bad = format!("../x={}", http.url("/x.bin"));
    let (status, text) = sluicectl(&setup, &["bundle", "add", "m", &bad]);
    assert_eq!(status, 4, "{text}");
    assert!(text.contains("invalid_path"), "{text}");
    let (status, text) = sluicectl(&setup, &["bundle", "cancel", &id.to_string()]);
    assert_eq!(status, 4, "a finished bundle cannot be cancelled: {text}");
    let (status, text) = sluicectl(&setup, &["bundle", "delete", &id.to_string()]);
    assert_eq!(status, 0, "{text}");
    assert!(!setup.inbox().join("cli").exists());
    let (status, text) = sluicectl(&setup, &["bundle", "show", &id.to_string()]);
    assert_eq!(status, 3, "{text}");
    Ok(())
}

/// `sluicectl bundle add --wait`: returns once the bundle has ended, its exit status saying
/// how (0 succeeded, 7 failed, 8 still running at the end of `--wait DURATION`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluicectl_bundle_add_waits_for_the_outcome() -> Result<()> {
    let http = HttpFixture::start();
    let content = body("w", 2000);
    http.route("/w.bin", FixtureRoute::file(content.clone()));
    // 1 KiB every 200 ms: 20 s, far longer than the 1 ms wait below.
    http.route(
        "/slow.bin",
        FixtureRoute::slow_file(body("s", 100 * 1024), 1024, Duration::from_millis(200)),
    );
    let setup = Setup::new("")?;
    let _scraper = setup.start_scraper().await?;
    let good = format!("{}#sha256={}", http.url("/w.bin"), sha256_hex(&content));
    let (status, text) = sluicectl(&setup, &["bundle", "add", "--wait", "waited", &good]);
    assert_eq!(status, 0, "{text}");
    assert!(text.contains("succeeded"), "{text}");
    assert_eq!(
        std::fs::read(setup.inbox().join("waited/w.bin"))?,
        content,
        "in the inbox when sluicectl returns"
    );
    let wrong = format!("{}#sha256={}", http.url("/w.bin"), "0".repeat(64));
    let (status, text) = sluicectl(&setup, &["bundle", "add", "--wait", "wrong", &wrong]);
    assert_eq!(status, 7, "{text}");
    assert!(text.contains("SHA-256 mismatch"), "{text}");
    let (status, text) = sluicectl(
        &setup,
        &[
            "bundle",
            "add",
            "--wait=1ms",
            "slow",
            &http.url("/slow.bin"),
        ],
    );
    assert_eq!(status, 8, "{text}");
    assert!(text.contains("still running"), "{text}");
    let (status, text) = sluicectl(
        &setup,
        &["bundle", "add", "--wait=soon", "x", &http.url("/w.bin")],
    );
    assert_eq!(status, 4, "{text}");
    Ok(())
}

/// Records bundle `name` with one file as the scraper leaves it once that file is done: the
/// file in `staging/bundle-ID/f.bin`, the download succeeded, the bundle still running.
/// Returns the bundle's id.
fn bundle_with_its_file_done(setup: &Setup, store: &mut Store, name: &str) -> Result<i64> {
    let bundle = sluice_core::policy::NewBundle {
        name: name.to_owned(),
        files: vec![sluice_core::policy::NewBundleFile {
            url: "http://127.0.0.1:9/f.bin".into(),
            path: Some("f.bin".into()),
            sha256: None,
            size: None,
            git_sha1: None,
        }],
        origin: None,
        revision: None,
        max_attempts: None,
    }
    .validate(&sluice_core::policy::SubmitRules {
        allow_private_addresses: true,
        max_download_size: 1 << 30,
    })?;
    let created = store.create_bundle_within_limit(&bundle, 100)?;
    let claimant = sluice_core::store::Claimant::named("test");
    let job = store
        .claim_jobs(&claimant, &["download"], 1, Duration::from_secs(60))?
        .remove(0);
    let download_id = job.payload["download_id"].as_i64().context("download id")?;
    let folder = setup
        .root
        .join(format!("staging/bundle-{}", created.bundle_id));
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join("f.bin"), name)?;
    store.finish_download(
        download_id,
        job.id,
        &job.lease_token,
        &sluice_core::store::DownloadOutcome::Succeeded {
            final_path: folder.join("f.bin").display().to_string(),
            bytes: name.len() as u64,
            sha256: sha256_hex(name.as_bytes()),
        },
    )?;
    Ok(created.bundle_id)
}

/// The two moments a kill can interrupt the placing of a bundle: after its target was
/// recorded but before the rename (the folder is still in staging), and after the rename but
/// before the success was recorded (the folder is at the target). Either way the restarted
/// scraper places it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_cut_short_by_a_kill_is_finished_exactly_once() -> Result<()> {
    let setup = Setup::new("")?;
    let mut store = setup.store();
    let before_rename = bundle_with_its_file_done(&setup, &mut store, "before")?;
    store.set_bundle_target(
        before_rename,
        &setup.inbox().join("before").display().to_string(),
    )?;
    let after_rename = bundle_with_its_file_done(&setup, &mut store, "after")?;
    let target = setup.inbox().join("after");
    store.set_bundle_target(after_rename, &target.display().to_string())?;
    std::fs::rename(
        setup.root.join(format!("staging/bundle-{after_rename}")),
        &target,
    )?;

    let _scraper = setup.start_scraper().await?;
    for id in [before_rename, after_rename] {
        let bundle = setup
            .wait_for_bundle(id as u64, "the placement finished", |bundle| {
                bundle.state != BundleState::Running
            })
            .await?;
        assert_eq!(bundle.state, BundleState::Succeeded, "{bundle:?}");
    }
    assert_eq!(
        relative_files(&setup.inbox()),
        vec!["after/f.bin", "before/f.bin"],
        "each folder placed once"
    );
    assert_eq!(
        setup.bundle(after_rename as u64).final_path.as_deref(),
        Some(target.to_str().unwrap())
    );
    assert!(relative_files(&setup.root.join("staging")).is_empty());
    Ok(())
}

/// Security finding M1: resolving an `hf://` name must not hold the scraper's main loop. A Hub
/// that never answers its API leaves the scraper answering D-Bus calls (a property and a
/// method the loop answers) and pinging the watchdog; the bundle then fails with the timeout
/// named, and nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_hub_does_not_hold_the_loop_and_fails_at_its_timeout() -> Result<()> {
    let http = HttpFixture::start();
    http.route(
        "/api/models/org/slow/revision/main",
        FixtureRoute::Hang(Duration::from_secs(120)),
    );
    let setup = Setup::new(&format!("hf_endpoint = \"{}\"", http.url("")))?;
    let scraper = crate::support::start_watched_scraper(
        &setup.fixture.config_path,
        setup.fixture.bus.address(),
        Duration::from_millis(1_000),
    )
    .await?;
    let notifications = scraper.notifications().context("a notify socket")?;
    let proxy = setup.proxy().await?;

    let adding = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = proxy.add_bundle("hf://org/slow", Vec::new()).await;
            (result, started.elapsed(), Instant::now())
        })
    };
    let asked = Instant::now();
    while http
        .requests_for("/api/models/org/slow/revision/main")
        .is_empty()
    {
        ensure!(asked.elapsed() < DEADLINE, "the Hub was never asked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pending_from = notifications.count();
    // The loop answers while the Hub has not: a property and methods it handles itself.
    assert_eq!(proxy.state().await?, "running");
    let error = proxy
        .cancel_download(999_999)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("does not exist"), "{error}");
    let error = proxy.scrape_now("no-such-source").await.unwrap_err();
    assert!(error.to_string().contains("not configured"), "{error}");
    let answered = Instant::now();
    // Two watchdog pings after the Hub was asked (one every half watchdog timeout).
    let (first, _) = notifications.wait_for_line(pending_from, "WATCHDOG=1", DEADLINE)?;
    let (_, second) = notifications.wait_for_line(first + 1, "WATCHDOG=1", DEADLINE)?;

    let (result, took, finished) = adding.await?;
    assert!(
        answered < finished && second.received < finished,
        "the calls were answered and the watchdog pinged while the resolution was pending"
    );
    let error = result.unwrap_err().to_string();
    assert!(
        error.contains("did not answer")
            && error.contains("org/slow")
            && error.contains("request_timeout"),
        "{error}"
    );
    // request_timeout is 5 s in this configuration; the failure comes no earlier.
    assert!(took >= Duration::from_secs(5), "failed after {took:?}");
    assert!(setup.store().get_bundle(1).is_err(), "nothing recorded");
    assert_eq!(proxy.state().await?, "running");
    Ok(())
}

/// `GET /api/events` forwards `BundleFinished` with the bundle's id, state and folder.
#[test]
fn the_event_stream_forwards_bundle_finished() -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let http = HttpFixture::start();
    http.route("/f.bin", FixtureRoute::file(body("f", 100)));
    let setup = Setup::new("")?;
    let _scraper = runtime.block_on(setup.start_scraper())?;
    let web = WebDaemon::start(&setup.fixture);
    let agent = http_agent();
    let lines = crate::support::event_stream_lines(&agent, &web.origin);
    loop {
        let line = lines.recv_timeout(DEADLINE)?;
        if line.starts_with(": connected") {
            break;
        }
    }
    let (status, created) = http_result(
        agent
            .post(format!("{}/api/bundles", web.origin))
            .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
            .header("Content-Type", "application/json")
            .send(
                json!({ "name": "evented", "files": [{ "url": http.url("/f.bin") }] }).to_string(),
            ),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["bundle"]["id"].as_u64().context("bundle id")?;
    let started = Instant::now();
    let mut event = false;
    loop {
        let remaining = DEADLINE
            .checked_sub(started.elapsed())
            .context("no BundleFinished event")?;
        let line = lines.recv_timeout(remaining)?;
        if line == "event: BundleFinished" {
            event = true;
            continue;
        }
        if event && let Some(data) = line.strip_prefix("data: ") {
            let data: Value = serde_json::from_str(data)?;
            assert_eq!(data["bundle_id"], json!(id), "{data}");
            assert_eq!(data["state"], json!("succeeded"), "{data}");
            assert_eq!(
                data["path"],
                json!(setup.inbox().join("evented").to_str().unwrap()),
                "{data}"
            );
            assert_eq!(data["interface"], json!("org.sluice.Scraper1"), "{data}");
            return Ok(());
        }
        event = false;
    }
}
