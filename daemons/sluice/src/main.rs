//! `sluice`: the suite's one program. The package installs it once, as
//! `/usr/lib/sluice/sluice`, and links each daemon's and sluicectl's name to it
//! (`/usr/sbin/sluice-monitor`, …, `/usr/bin/sluicectl`); run under a name, it is that program,
//! chosen from the name it was started as (`argv[0]`), before anything else runs.
//!
//! The daemons stay separate processes and units, each with its own command line, bus name,
//! journal identifier and unit hardening; what they share is the file, so the code pages
//! common to all of them (tokio, zbus, SQLite, sluice-core) are in memory once for the whole
//! suite instead of once per program. A daemon's code still uses only its own crate's
//! dependencies (only sluice-web links actix, only sluice-scraper an HTTP client; the tests
//! check it), and the code of the others is never paged in.
//!
//! An ingest worker starts its extraction child and its processor launcher as
//! `/proc/self/exe` (the file it runs, even after an upgrade replaced it on disk), so that name
//! is the worker's too.

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;

/// A name this program answers to, and the program's `main`.
type Program = (&'static str, fn() -> ExitCode);

/// The names this program answers to, with what each runs.
const PROGRAMS: [Program; 5] = [
    ("sluice-monitor", sluice_monitor::main),
    ("sluice-scraper", sluice_scraper::main),
    ("sluice-ingest-worker", sluice_ingest_worker::main),
    ("sluice-web", sluice_web::main),
    ("sluicectl", sluicectl::main),
];

/// How a worker starts itself again (see the module documentation).
const SELF: &str = "/proc/self/exe";

/// The exit status for a name this program does not answer to (sysexits' EX_USAGE, as the
/// daemons use for a bad command line).
const USAGE: u8 = 64;

fn main() -> ExitCode {
    let started_as = std::env::args_os().next().unwrap_or_default();
    let name = if started_as == SELF {
        OsStr::new("sluice-ingest-worker")
    } else {
        Path::new(&started_as).file_name().unwrap_or_default()
    };
    match PROGRAMS.iter().find(|(program, _)| name == *program) {
        Some((_, run)) => run(),
        None => {
            let names: Vec<&str> = PROGRAMS.iter().map(|(program, _)| *program).collect();
            eprintln!(
                "sluice: started as {:?}, which is none of its programs; run it under one of \
                 their names: {} (the package links them to this file in /usr/sbin and \
                 /usr/bin)",
                name,
                names.join(", ")
            );
            ExitCode::from(USAGE)
        }
    }
}
