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

/// Each sluice interface of a daemon's own object: the bus name and object path of a daemon
/// that implements it. (`org.sluice.Job1` is on a running job's object, whose path has the
/// job's id: the test makes one.)
const INTERFACES: [(&str, &str, &str); 4] = [
    (
        "org.sluice.Monitor1",
        "org.sluice.Monitor1",
        "/org/sluice/Monitor1",
    ),
    (
        "org.sluice.Scraper1",
        "org.sluice.Scraper1",
        "/org/sluice/Scraper1",
    ),
    (
        "org.sluice.Ingest1",
        "org.sluice.Ingest1.Worker1",
        "/org/sluice/Ingest1/1",
    ),
    ("org.sluice.Web1", "org.sluice.Web1", "/org/sluice/Web1"),
];

/// Issue 17, finding 6: the package ships each interface's introspection XML in
/// /usr/share/dbus-1/interfaces/ (from packaging/dbus/interfaces/), where client authors and
/// code generators (gdbus-codegen, zbus-xmlgen) look. This test starts the real daemons on a
/// private bus and keeps the shipped files equal to what they introspect (sluice's interface
/// elements; org.freedesktop.* are the bus library's), org.sluice.Job1 of a running job's
/// object among them. After changing an interface, rewrite the files with
/// `SLUICE_REGENERATE_INTERFACES=1` and this test.
#[test]
fn the_shipped_interface_xml_is_what_the_running_daemons_introspect() {
    let suite = crate::support::Suite::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let connection = suite.fixture.connect(&runtime);
    // A running job, so sluice-web serves its object: a kind no worker of the suite claims,
    // claimed here under a worker's name.
    let job = suite.fixture.enqueue("interface-probe");
    suite
        .fixture
        .store()
        .claim_jobs(
            &"sluice-ingest-worker@1".into(),
            &["interface-probe"],
            1,
            std::time::Duration::from_secs(600),
        )
        .unwrap()
        .pop()
        .expect("the probe job is claimed");
    let job_path = sluice_core::bus::job_object_path(job as u64);
    let job_interface = ("org.sluice.Job1", "org.sluice.Web1", job_path.as_str());
    let regenerate = std::env::var("SLUICE_REGENERATE_INTERFACES").as_deref() == Ok("1");
    let folder = workspace_root().join("packaging/dbus/interfaces");
    let mut stale = Vec::new();
    for (interface, destination, path) in INTERFACES.into_iter().chain([job_interface]) {
        let introspect = || {
            runtime.block_on(async {
                zbus::fdo::IntrospectableProxy::builder(&connection)
                    .destination(destination)
                    .path(path)
                    .build()
                    .await?
                    .introspect()
                    .await
            })
        };
        // The web makes a running job's object at its next sync (within a second).
        let mut xml = String::new();
        let served = crate::support::wait_until(crate::support::DEADLINE, || {
            xml = introspect().unwrap_or_else(|error| format!("error: {error}"));
            interface_element(&xml, interface).is_some()
        });
        assert!(served, "{destination} {path} has no {interface}:\n{xml}");
        let running = interface_element(&xml, interface).expect("found above");
        let file = folder.join(format!("{interface}.xml"));
        if regenerate {
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(&file, interface_file(interface, &running)).unwrap();
            continue;
        }
        let shipped = std::fs::read_to_string(&file).unwrap_or_default();
        if interface_element(&shipped, interface).map(|element| normalised(&element))
            != Some(normalised(&running))
        {
            stale.push(format!("{}", file.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "the shipped interface XML differs from what the daemons introspect: {}; rewrite it \
         with SLUICE_REGENERATE_INTERFACES=1 cargo nextest run -p sluice-tests --test \
         integration packaging::the_shipped_interface_xml (and update sluice-dbus(7))",
        stale.join(", ")
    );
}

/// The `<interface name="NAME">…</interface>` element of introspection XML.
fn interface_element(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<interface name=\"{name}\">"))?;
    let length = xml[start..].find("</interface>")? + "</interface>".len();
    Some(xml[start..start + length].to_owned())
}

/// The element's lines without their indentation, so the file may be indented as XML is.
fn normalised(element: &str) -> Vec<String> {
    element
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// An interface file as /usr/share/dbus-1/interfaces/ holds them.
fn interface_file(name: &str, element: &str) -> String {
    let mut text = String::from(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n",
    );
    text.push_str(&format!(
        "<!-- {name}: written from the running daemon's introspection by \
         SLUICE_REGENERATE_INTERFACES=1 (tests/packaging.rs); see sluice-dbus(7). -->\n<node>\n"
    ));
    // The element starts at its tag; its other lines keep the indentation they have under
    // the introspected <node>, where the interface itself sits two spaces in.
    for (number, line) in element.lines().enumerate() {
        let line = line.trim_end();
        if number == 0 {
            text.push_str("  ");
        }
        if !line.trim().is_empty() {
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push_str("</node>\n");
    text
}

/// Issue 13: the daemons and sluicectl are one program file (daemons/sluice, run under each
/// name), so that the code they share is in memory once; what keeps them apart is that each
/// daemon's code can use only its own crate's dependencies. This checks the crates that belong
/// to one program: only that program's crate depends on them (normal dependencies of the
/// workspace's crates, the tests crate aside), and the `sluice` crate depends on nothing but
/// the five programs' crates. (`cargo metadata --no-deps` reads the manifests; nothing is
/// built.)
#[test]
fn each_programs_own_dependencies_are_used_by_its_crate_alone() {
    let output = Command::new("cargo")
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut users: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut of_sluice = Vec::new();
    for package in metadata["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        if name == "sluice-tests" {
            continue;
        }
        for dependency in package["dependencies"].as_array().unwrap() {
            if !dependency["kind"].is_null() {
                continue;
            }
            let dependency = dependency["name"].as_str().unwrap().to_owned();
            if name == "sluice" {
                of_sluice.push(dependency.clone());
            }
            users.entry(dependency).or_default().push(name.to_owned());
        }
    }
    of_sluice.sort();
    assert_eq!(
        of_sluice,
        [
            "sluice-ingest-worker",
            "sluice-monitor",
            "sluice-scraper",
            "sluice-web",
            "sluicectl"
        ],
        "the sluice program's crate links more than the five programs"
    );
    let owned = [
        (
            "sluice-web",
            &[
                "actix-web",
                "actix-multipart",
                "listenfd",
                "prometheus-client",
            ][..],
        ),
        ("sluice-scraper", &["reqwest", "rustls", "feed-rs"][..]),
        ("sluice-monitor", &["notify"][..]),
        (
            "sluice-ingest-worker",
            &[
                "lopdf",
                "image",
                "landlock",
                "seccompiler",
                "zip",
                "tar",
                "kamadak-exif",
                "html5gum",
            ][..],
        ),
        ("sluicectl", &["ureq"][..]),
    ];
    for (owner, dependencies) in owned {
        for dependency in dependencies {
            assert_eq!(
                users.get(*dependency).map(Vec::as_slice),
                Some(&[owner.to_owned()][..]),
                "{dependency} belongs to {owner} alone"
            );
        }
    }
}
