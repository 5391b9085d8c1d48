//! sluice-core: everything the sluice daemons share — configuration, the SQLite store that is
//! both the status database and the durable job queue, the D-Bus interfaces with their
//! proxies, and the service runtime (sd_notify, watchdog, signals, journald logging).
//!
//! Daemon crates depend on this crate and never on each other; only this crate runs SQL.
//!
//! The modules are layered one way (ARCHITECTURE.md draws it), each using only those below:
//!
//! 1. `ingest` — plain types shared by producers and consumers of work (the ingest payload,
//!    job kinds, watch modes); no IO. Beside it `beneath`: opening, creating and renaming
//!    files beneath a root folder without following links, with only the OS below it.
//! 2. `store` (SQLite) and `bus` (D-Bus), side by side: each takes plain parameters, never
//!    the configuration, so either could get a second backend without touching the config.
//! 3. `config` (the file translated into those parameters), `runtime` on top. Beside them
//!    `content`: opening a catalogued document's bytes (store rows, opened with `beneath`).
//!
//! A test below reads the sources and fails when a module reaches upwards.

pub mod beneath;
pub mod bus;
pub mod config;
pub mod content;
pub mod inbox;
pub mod ingest;
pub mod policy;
pub mod runtime;
pub mod store;

#[cfg(test)]
mod layering {
    use std::path::Path;

    /// Which modules each layer must not name: everything above it, and its neighbour.
    const FORBIDDEN: &[(&str, &[&str])] = &[
        (
            "beneath.rs",
            &["policy", "ingest", "store", "bus", "config", "runtime"],
        ),
        ("ingest.rs", &["store", "bus", "config", "runtime"]),
        ("store", &["bus", "config", "runtime"]),
        ("bus", &["store", "config", "runtime"]),
        ("content.rs", &["bus", "config", "runtime"]),
    ];

    #[test]
    fn no_module_reaches_upwards() {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut violations = Vec::new();
        for (module, forbidden) in FORBIDDEN {
            for file in rust_files(&source.join(module)) {
                let text = std::fs::read_to_string(&file).expect("read a source file");
                for (number, line) in text.lines().enumerate() {
                    for upper in *forbidden {
                        if line.contains(&format!("crate::{upper}::"))
                            || line.contains(&format!("crate::{upper};"))
                            || line.contains(&format!("crate::{upper}::{{"))
                        {
                            violations.push(format!("{}:{}: {line}", file.display(), number + 1));
                        }
                    }
                }
            }
        }
        assert!(
            violations.is_empty(),
            "modules reaching upwards:\n{}",
            violations.join("\n")
        );
    }

    fn rust_files(path: &Path) -> Vec<std::path::PathBuf> {
        if path.is_file() {
            return vec![path.to_path_buf()];
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).expect("read a source folder") {
            let entry = entry.expect("a folder entry");
            files.extend(rust_files(&entry.path()));
        }
        files
    }
}
