//! The harness as the test modules name it: everything lives in the library part of this
//! crate (`tests/src/`), shared with the benchmark driver.

pub use sluice_tests::bus::*;
pub use sluice_tests::fixtures::*;
pub use sluice_tests::process::*;

/// A temporary folder for processor scripts that is not beneath `/tmp`: the configuration
/// refuses a processor's `writable` folder there (a shared folder), and the tests give the
/// scripts' folder as `writable`. It is beneath the build's own temporary folder.
pub fn scripts_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let directory =
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir for scripts");
    let path = directory.path().to_path_buf();
    (directory, path)
}

/// Uploads `bytes` as `name` to the whole suite with the admin token and `?wait=` for its job
/// (`wait`, such as "120s"): the answer's status and body, as JSON (the body's text as a JSON
/// string when it is not JSON).
pub fn upload_waiting(
    suite: &Suite,
    name: &str,
    bytes: &[u8],
    wait: &str,
) -> (u16, serde_json::Value) {
    let mut response = http_agent()
        .post(format!(
            "{}/api/documents?name={name}&wait={wait}",
            suite.web.origin
        ))
        .header("Authorization", format!("Bearer {WEB_TEST_TOKEN}"))
        .header("Content-Type", "application/octet-stream")
        .send(bytes)
        .expect("upload");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body)
}

/// Every job of `kind` in the store, oldest first, read page by page.
pub fn all_jobs_of_kind(
    store: &sluice_core::store::Store,
    kind: &str,
) -> Vec<sluice_core::store::Job> {
    let mut jobs = Vec::new();
    let mut before_id = None;
    loop {
        let page = store
            .list_jobs(
                &sluice_core::store::JobFilter {
                    states: Vec::new(),
                    kind: Some(kind.to_owned()),
                },
                sluice_core::store::PageRequest {
                    before_id,
                    limit: 1000,
                },
            )
            .expect("a page of jobs");
        jobs.extend(page.items);
        match page.next_cursor {
            Some(cursor) => before_id = Some(cursor),
            None => break,
        }
    }
    jobs.sort_by_key(|job| job.id);
    jobs
}
