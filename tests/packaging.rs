//! The package's files that are generated at build time, checked as Debian would check them:
//! the DEP-5 copyright file (Debian Policy 12.5) that packaging/build-deb.sh ships, written by
//! the same script the build runs.

use std::process::Command;

use sluice_tests::copyright;

use crate::support::{binary_path, skip, workspace_root};

/// Issue 17, finding 7: the copyright file said `Upstream-Name: sluicectl`, had no Files:
/// paragraphs and named none of the statically linked crates. packaging/copyright.sh writes
/// it now; this test runs the script as the build does, parses the result as DEP-5 and finds
/// every crate of the shipped binaries' graph (cargo metadata, normal dependencies on the
/// package's target, proc-macros aside) with its licence, SQLite's public-domain notice and
/// ring's licence. (lintian checks the same file in the built package: build-deb.sh.)
#[test]
fn the_copyright_file_is_dep5_and_names_every_linked_crate_with_its_licence() {
    let has_cargo_about = Command::new("cargo")
        .args(["about", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !has_cargo_about {
        skip(
            "needs cargo-about (cargo install cargo-about --locked --features cli; tests/install-needs.sh installs it)",
        );
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let output = directory.path().join("copyright");
    let written = Command::new(workspace_root().join("packaging/copyright.sh"))
        .arg(&output)
        .arg(binary_path("sluice-manual"))
        .output()
        .expect("run packaging/copyright.sh");
    assert!(
        written.status.success(),
        "packaging/copyright.sh failed: {}",
        String::from_utf8_lossy(&written.stderr)
    );
    let text = std::fs::read_to_string(&output).unwrap();

    // The shipped graph, found here again rather than trusted from the script.
    let metadata = Command::new("cargo")
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata");
    assert!(metadata.status.success());
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let crates = copyright::shipped_crates(&metadata).unwrap();
    assert!(
        crates.len() > 200,
        "only {} crates found in the shipped graph",
        crates.len()
    );
    copyright::check(&text, &crates).unwrap_or_else(|error| panic!("{error:#}"));

    let paragraphs = copyright::parse(&text).unwrap();
    let files = |pattern: &str| {
        paragraphs
            .iter()
            .find(|paragraph| {
                // "*", or a crate's own "vendor/NAME-VERSION/*".
                paragraph.value("Files").is_some_and(|files| {
                    files == pattern
                        || (files.starts_with(pattern)
                            && files.ends_with("/*")
                            && files.matches('/').count() == 2)
                })
            })
            .unwrap_or_else(|| panic!("no Files: {pattern}… paragraph"))
    };
    assert_eq!(files("*").value("License"), Some("MIT or Apache-2.0"));
    let sqlite = paragraphs
        .iter()
        .find(|paragraph| {
            paragraph.value("Files").is_some_and(|files| {
                files.starts_with("vendor/libsqlite3-sys-") && files.ends_with("/sqlite3/*")
            })
        })
        .expect("a paragraph for the bundled SQLite");
    assert_eq!(sqlite.value("License"), Some("public-domain"));
    assert_eq!(
        files("vendor/ring-").value("License"),
        Some("Apache-2.0 and ISC")
    );
    // Every stand-alone licence paragraph has its text or names Debian's copy, never only a URL.
    for paragraph in &paragraphs {
        if paragraph.value("Files").is_none()
            && let Some((_, name, body)) = paragraph.get("License")
            && paragraph.value("Format").is_none()
        {
            let body = body.join("\n");
            assert!(
                body.len() > 100 || body.contains("/usr/share/common-licenses/"),
                "License: {name} has no text: {body:?}"
            );
        }
    }
}
