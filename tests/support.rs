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
