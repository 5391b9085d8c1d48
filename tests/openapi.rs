//! The OpenAPI contract (issue 11): schemathesis (PyPI, in /opt/sluice-test-venv; installed by
//! tests/install-needs.sh) runs against the real suite on loopback with the document sluice-web
//! serves at `/api/openapi.json`, with every check but one: no server error, every status,
//! content type, header and body as documented, schema-invalid input refused with a 4xx,
//! requests without the token refused, an unknown method answered 405 with `Allow`, a deleted
//! download gone, a created one readable.
//!
//! Left out, and why:
//! - `GET /api/events` and `GET /api/jobs/{id}/events`: event streams stay open by design (until
//!   the client leaves or the job ends), so a request to them never completes by itself;
//!   tests/web.rs and tests/uploads.rs cover them;
//! - the `positive_data_acceptance` check: which schema-valid values are accepted depends on
//!   the configuration (`[web] max_wait`, `[limits] max_page_size`, `max_string_length`) and,
//!   for a download's URL, on DNS and the address policy, none of which a static schema can
//!   say; such refusals are 400s with the policy's reason, which the other checks still hold to
//!   the error schema.
//!
//! The run is bounded: at most `MAX_EXAMPLES` cases per operation, a request timeout, and
//! `[web] max_wait = "1s"` so no `?wait=` holds a request long.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_core::store::jobs::JobState;

use crate::support::{
    DEADLINE, Suite, WEB_READ_TOKEN, WEB_TEST_TOKEN, http_agent, skip, wait_until,
};

/// Cases per operation and phase; enough to reach every branch of the checks, small enough
/// that the run takes well under a minute here.
const MAX_EXAMPLES: u32 = 30;

/// schemathesis from the test venv or PATH; `None` after saying the test is skipped (a
/// failure as root, where tests/install-needs.sh installs it).
fn schemathesis() -> Option<PathBuf> {
    let venv = Path::new("/opt/sluice-test-venv/bin/schemathesis");
    if venv.is_file() {
        return Some(venv.to_path_buf());
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|directory| directory.join("schemathesis"))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        if nix::unistd::geteuid().is_root() {
            panic!(
                "schemathesis is missing although this runs as root: tests/install-needs.sh \
                 installs it into /opt/sluice-test-venv"
            );
        }
        skip("needs schemathesis (tests/install-needs.sh installs it into /opt/sluice-test-venv)");
    }
    found
}

#[test]
fn schemathesis_finds_no_server_error_and_every_answer_matches_the_openapi_document() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };
    let suite = Suite::start_configured("max_wait = \"1s\"", "", &[]);
    // Something to find: a document (so ids 1 exist for documents, files and jobs) and a job
    // that waits.
    std::fs::write(
        suite.inbox().join("contract.txt"),
        "the contract test's document\n",
    )
    .expect("write into the inbox");
    let ingested = wait_until(DEADLINE, || {
        suite.fixture.store().job_counts().unwrap()[&JobState::Succeeded] == 1
    });
    assert!(ingested, "the file was not ingested: {}", suite.logs());

    let mut response = http_agent()
        .get(format!("{}/api/openapi.json", suite.web.origin))
        .header("Authorization", format!("Bearer {WEB_READ_TOKEN}"))
        .call()
        .expect("GET /api/openapi.json");
    assert_eq!(response.status().as_u16(), 200);
    let document = response.body_mut().read_to_string().expect("the document");
    let schema = suite.root().join("openapi.json");
    std::fs::write(&schema, &document).expect("write the document");

    let seed: u64 = std::env::var("SLUICE_SCHEMATHESIS_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("schemathesis seed {seed} (SLUICE_SCHEMATHESIS_SEED={seed} repeats this run)");
    let report = suite.root().join("schemathesis-report");
    let output = Command::new(&schemathesis)
        .arg("run")
        .arg(&schema)
        .args(["--url", &suite.web.origin])
        .args(["-H", &format!("Authorization: Bearer {WEB_TEST_TOKEN}")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--exclude-path", "/api/events"])
        .args(["--exclude-path", "/api/jobs/{id}/events"])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        // One worker: with two, hypothesis describes strategies with `ast.parse` from two
        // threads at once, which Debian 12's Python 3.11 can fail at ("AST constructor
        // recursion depth mismatch"), a schemathesis run error that says nothing of the API.
        .args(["--request-timeout", "20", "--workers", "1"])
        .args(["--seed", &seed.to_string()])
        .args(["--generation-database", "none", "--no-color"])
        .arg("--report-dir")
        .arg(&report)
        .current_dir(suite.root())
        .output()
        .expect("run schemathesis");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found a problem (seed {seed}):\n{said}\n{}",
        suite.logs()
    );
    // Not a run that tested nothing: every documented operation but the two streams.
    assert!(said.contains("Tested: 27"), "{said}");
    assert!(!said.contains("panicked") && !suite.logs().contains("panicked"));
}
