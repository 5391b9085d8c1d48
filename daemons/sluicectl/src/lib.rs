//! `sluicectl`: the command-line client of the sluice suite. Reads go straight to the store
//! (the database every daemon shares); changes go through the daemon that owns them over
//! D-Bus, or into the store directly when that daemon is not running (see `--help`).
//!
//! The suite ships one program (the `sluice` crate) that runs as `sluicectl` under that name;
//! it calls [`main`]. The command line ([`Cli`], [`command`]) is public so that the packaging's
//! man page and completion generator (`sluice-manual` in the tests crate) can read it without
//! running the program.

mod commands;
mod config_file;
mod output;
mod systemd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Runs sluicectl with this process's command line; its exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match commands::run(cli) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(failure) => {
            if json {
                output::print_json(&failure.json_error());
            }
            eprintln!("sluicectl: {}", failure.message);
            ExitCode::from(failure.exit_status)
        }
    }
}

/// Exit statuses scripts can rely on.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const INVALID_ARGUMENT: u8 = 4;
    pub const DAEMON_UNAVAILABLE: u8 = 5;
    /// `submit --wait`, `jobs watch`: a job ended failed, dead or cancelled (and
    /// `bundle add --wait`: the bundle did; `sources check`: the check did).
    pub const JOB_FAILED: u8 = 7;
    /// `submit --wait`, `bundle add --wait`, `sources check`: still running when the wait
    /// ended.
    pub const STILL_RUNNING: u8 = 8;
    /// sysexits' EX_TEMPFAIL, "try again later": the queue is at its limit and nothing was
    /// added. Far from the small statuses on purpose, so new ones can follow those.
    pub const QUEUE_FULL: u8 = 75;
}

const AFTER_HELP: &str = "\
Where changes go:
  jobs retry/cancel  org.sluice.Web1 (sluice-web); without it, the store directly
  submit             sluice-web's API ([web] listen, admin token from [web] token_file,
                     which the package makes readable by root only); without it: exit
                     status 5
  download           org.sluice.Scraper1 (sluice-scraper); without it, the store directly
                     (the download waits in the queue until the scraper runs)
  rescan             org.sluice.Monitor1 (sluice-monitor); without it: exit status 5
  workers N          its drop-in sluice.toml.d/90-sluicectl-workers.toml, then systemd
                     (org.freedesktop.systemd1) on the system bus; without systemd: exit
                     status 5 and nothing changed
Reads (status, jobs list/show, docs list) use the database named by [store] path; docs get
also reads the document's file itself (the library needs root or group sluice).

Exit status:
  0  success
  1  any other error (database, D-Bus, permission)
  2  usage error (unknown command or option)
  3  not found (unknown job, download or document id)
  4  invalid argument (malformed value, or a job in a state that does not allow it)
  5  daemon unavailable (the daemon that must do it is not running, or the bus is down)
  7  submit --wait, jobs watch: a job ended failed, dead or cancelled; bundle add --wait:
     the bundle failed or was cancelled; sources check: the check failed
  8  submit --wait, bundle add --wait, sources check: still running when the wait ended
  75 queue full: the download queue is at [scraper] max_pending (download) or the ingest
     queue at [ingest] max_pending (submit); nothing was added, try again once some jobs
     have finished (sysexits' EX_TEMPFAIL)";

/// Command-line client for the sluice daemon suite.
#[derive(Debug, Parser)]
#[command(version, after_help = AFTER_HELP)]
pub struct Cli {
    /// The configuration file (default: $SLUICE_CONFIG, else /etc/sluice/sluice.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show each daemon (running, state, status line) and the job counts.
    Status,
    /// List, show, retry or cancel jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Download a URL (http or https) into the inbox.
    Download(DownloadArguments),
    /// Upload files for ingest through sluice-web (POST /api/documents), one job each;
    /// with --wait, wait for every job's outcome.
    Submit {
        /// The files to upload; each keeps its own name.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Wait for every job to end, at most this long (e.g. 30s, 5m; default and maximum:
        /// [web] max_wait). Exit status 7 when a job fails, 8 when one is still running.
        #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "")]
        wait: Option<String>,
    },
    /// Ask the monitor to reconcile a watched folder (or all of them) with the database.
    Rescan {
        /// A folder inside a watched folder; all watched folders when left out.
        path: Option<PathBuf>,
    },
    /// Download several files into one folder of the inbox, or a Hugging Face repository;
    /// list, show, cancel or delete bundles.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// List or show the scheduled sources, or check one now.
    #[command(subcommand)]
    Sources(SourcesCommand),
    /// List or search documents.
    #[command(subcommand)]
    Docs(DocsCommand),
    /// Check, back up, vacuum or maintain the database (safe while the daemons run).
    #[command(subcommand)]
    Db(DbCommand),
    /// Check the configuration file, or print one of its values.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Set how many ingest workers run (1 to 256), in the configuration and live.
    #[command(long_about = WORKERS_LONG_ABOUT)]
    Workers {
        /// The number of sluice-ingest-worker@N instances, 1 to 256.
        #[arg(allow_hyphen_values = true, value_name = "N")]
        count: String,
    },
}

const WORKERS_LONG_ABOUT: &str = "\
Set how many ingest workers run (1 to 256), in the configuration and live.

In order, stopping at the first failure with nothing changed:
  1. N is checked (a whole number from 1 to 256; otherwise exit status 4).
  2. It needs root: it writes a configuration drop-in and asks systemd to start and stop
     units (otherwise exit status 1).
  3. [ingest] workers = N is written as sluicectl's own drop-in,
     sluice.toml.d/90-sluicectl-workers.toml beside the configuration file (the file the
     other commands read: --config, $SLUICE_CONFIG, else /etc/sluice/sluice.toml), and the
     configuration with it (the file, then every *.toml drop-in in name order) is checked
     with the daemons' own loader: an invalid result, or a drop-in sorted after it that sets
     workers too, is exit status 1.
  4. systemd must answer on the system bus (otherwise exit status 5): changing the
     configuration without it would leave the running suite and the configuration
     disagreeing.
Then the drop-in is replaced atomically (a temporary file in the same directory, fsynced,
renamed), systemd is reloaded (so sluice-worker-generator makes sluice.target want
sluice-ingest-worker@1..N), and, when sluice.target is active, instances 1..N are started
and waited for until each is ready (READY=1). Running instances above N are stopped. When
sluice.target is not active, nothing is started: the N instances start with it. A start or
stop that fails after the drop-in was written is reported with exit status 1; the drop-in
keeps N (see systemctl status for the unit). An instance above N cannot be started by
hand: its ConditionPathExists= on the generator's link skips it.

The packaged /etc/sluice/sluice.toml (a conffile) is never written, so an upgrade that ships
a new one does not ask about it. The drop-in overrides [ingest] workers of that file: to set
the count by hand, edit or remove the drop-in, then run systemctl daemon-reload and
systemctl restart sluice.target.";

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// SQLite's integrity check and foreign-key check; exit status 1 when either finds a
    /// problem.
    Check,
    /// Write a consistent copy of the database to FILE with SQLite's online backup, while
    /// the daemons keep writing. FILE must not exist; nothing is left behind on failure. To
    /// restore: stop sluice.target, put the copy in place of [store] path (removing its
    /// -wal and -shm files), owned by _sluice:sluice, and start sluice.target.
    Backup {
        /// The new file (a plain SQLite database).
        file: PathBuf,
    },
    /// Rebuild the database file without its free pages (waits for the write lock).
    Vacuum,
    /// Delete finished work older than [retention] says, then PRAGMA optimize and a WAL
    /// checkpoint; sluice-maintenance.timer runs this daily. Documents are never deleted.
    Maintain,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load the configuration file as the daemons do and say whether it is valid; an
    /// invalid one is reported with its file, line, column and key (exit status 1).
    Check,
    /// Print one value of the loaded configuration (built-in defaults applied); exit
    /// status 1 when the file is invalid. Keys: ingest.workers, store.path, web.listen,
    /// ingest.library.
    Get {
        /// A dotted key, e.g. ingest.workers.
        key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first.
    List {
        /// Only jobs in these states (comma-separated: queued, running, retrying, succeeded,
        /// failed, cancelled, dead).
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after this cursor (the `next` value printed by the previous page).
        #[arg(long)]
        cursor: Option<i64>,
    },
    /// One job with its history.
    Show { id: i64 },
    /// Queue a failed, dead or cancelled job again.
    Retry { id: i64 },
    /// Cancel a job (a running one stops at its next heartbeat).
    Cancel { id: i64 },
    /// Follow a job until it ends: its transitions, progress (a bar on a terminal, plain
    /// lines when piped; NDJSON with --json) and steps. Exit status 0 when it succeeds, 7
    /// when it fails, is cancelled or dies.
    Watch { id: i64 },
}

#[derive(Debug, Args)]
pub struct DownloadArguments {
    pub url: String,
    /// Expected SHA-256 (64 hex digits); a mismatch fails the download.
    #[arg(long)]
    pub sha256: Option<String>,
    /// File name in the inbox (default: the URL's last path segment).
    #[arg(long)]
    pub name: Option<String>,
    /// Size limit in bytes for this download.
    #[arg(long)]
    pub max_bytes: Option<u64>,
    /// Put the file in this bundle's sub-folder.
    #[arg(long)]
    pub bundle: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Queue a bundle through org.sluice.Scraper1.AddBundle: NAME is the folder's name in the
    /// inbox and each FILE is `[PATH=]URL[#sha256=HEX]` (PATH inside the folder, default the
    /// URL's file name; the digest is checked); or NAME is hf://ORG/NAME[@REVISION] (or
    /// hf://datasets/ORG/NAME[@REVISION]) without FILEs. Exit status 5 without a running
    /// scraper, 4 for a refused name, path or file, 75 when the queue has no room for all.
    /// With --wait, wait until the bundle ends: exit status 7 when it failed or was
    /// cancelled, 8 when it still ran after --wait DURATION.
    #[command(after_help = BUNDLE_ADD_EXAMPLES)]
    Add {
        name: String,
        #[arg(value_name = "FILE")]
        files: Vec<String>,
        /// Wait until the bundle ends: `--wait` without a limit, `--wait=DURATION` at most
        /// that long (e.g. --wait=30m; the `=` is needed, since NAME follows).
        #[arg(
            long,
            value_name = "DURATION",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = ""
        )]
        wait: Option<String>,
    },
    /// Bundles, newest first, with files done/total, bytes and state.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        cursor: Option<i64>,
    },
    /// One bundle with its files.
    Show { id: i64 },
    /// Cancel a running bundle; nothing of it reaches the inbox.
    Cancel { id: i64 },
    /// Cancel if needed, then forget the bundle and remove its folder from staging and, when
    /// it had succeeded, from the inbox.
    Delete { id: i64 },
}

const BUNDLE_ADD_EXAMPLES: &str = "\
Examples:
  sluicectl bundle add model weights/a.bin=https://example.org/a.bin#sha256=9f86d0...
  sluicectl bundle add hf://openai-community/gpt2@main
  sluicectl bundle add hf://datasets/org/data@v1.0
  sluicectl bundle add --wait=2h hf://openai-community/gpt2";

#[derive(Debug, Subcommand)]
pub enum SourcesCommand {
    /// Every source: mode, last outcome, last and next check, items seen, downloads made.
    List,
    /// One source in full, with its last error.
    Show { name: String },
    /// Check a source now (org.sluice.Scraper1.ScrapeNow) and wait for the outcome, at most
    /// --wait (default 60s). Exit status 5 without a running scraper, 3 for an unknown
    /// source, 7 when the check failed, 8 when it had not ended in time.
    Check {
        name: String,
        #[arg(long, default_value = "60s", value_name = "DURATION")]
        wait: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DocsCommand {
    /// Documents, newest first; with --query the same as `docs search`.
    List {
        #[arg(long)]
        query: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        cursor: Option<i64>,
    },
    /// Write a document's content to FILE (`-o -`: standard output).
    #[command(long_about = DOCS_GET_LONG_ABOUT)]
    Get {
        /// The document's id.
        id: i64,
        /// Where to write the content; `-` writes it to standard output.
        #[arg(
            short = 'o',
            long = "output",
            value_name = "FILE",
            allow_hyphen_values = true
        )]
        output: PathBuf,
        /// Replace FILE when it exists (without it, an existing FILE is left alone).
        #[arg(long)]
        force: bool,
    },
    /// Search the extracted text: the pages that have every word, best first, with the
    /// matches in [brackets].
    #[command(long_about = SEARCH_LONG_ABOUT)]
    Search {
        /// Words, "quoted phrases", and a * at the end of a word for words that start with it.
        #[arg(allow_hyphen_values = true)]
        query: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Where to go on: the `more: --cursor N` of the previous page.
        #[arg(long)]
        cursor: Option<i64>,
    },
}

const DOCS_GET_LONG_ABOUT: &str = "\
Write a document's content to FILE (`-o -`: standard output).

The content is read from where sluice keeps it, the way sluice-web serves it: the library
file of a consumed document, or the file in its index folder, opened beneath its folder
without following symlinks and only while it is still the catalogued version (same inode,
size and modification time). It is hashed while it is copied, and a copy whose BLAKE3 is not
the document's is an error. Reading the library needs root or membership of group sluice.

FILE is written under a temporary name beside it and renamed into place once complete and
flushed, so it never holds part of a document. An existing FILE is an error unless --force
is given.

Exit status: 0 written; 3 no such document, or its file is gone; 1 the file changed since it
was catalogued, FILE exists, or another failure.";

const SEARCH_LONG_ABOUT: &str = "\
Search the extracted text: the pages that have every word, best first (bm25), with the
matches in [brackets]. A PDF is searched page by page; a text file, HTML or a processor's
output as one text without pages.

The query is what a person types: words, \"quoted phrases\", and a * at the end of a word for
every word that starts with it (report*). Nothing else has a meaning: OR, NOT, NEAR, colons,
brackets and other punctuation are searched as text, and a hyphenated word
(topsecret-f2-marker) finds its parts next to each other. A query with no word in it, longer
than 1024 bytes or with more than 32 words is refused (invalid_query, exit status 4).";

/// The command line, for the man pages and shell completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
