//! Built-in extraction, chosen by the detected type: PDF (page count, document information,
//! the text of each page), images (dimensions, EXIF), HTML (text without markup) and
//! archives (zip, tar: the listing; nothing is unpacked). Plain text needs no parser and is
//! read while the file is hashed (`analyze`).
//!
//! Everything here runs in the *extraction child*, the worker binary started again with
//! [`CHILD_ARGUMENT`] (see `sandbox` for the parent's side and the limits). The child reads
//! the file from its stdin, a copy of the descriptor the worker opened and hashed, and writes
//! [`Record`]s to stdout, one JSON object per line: a record per page as it is read, then one
//! `done` (or `refused`) record with the metadata. It touches nothing else: no database, no
//! bus, no path.

mod archive;
mod html;
mod image;
mod pdf;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;

use nix::sys::resource::{Resource, setrlimit};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The hidden first argument that makes the worker binary the extraction child; the second
/// is the [`Request`] as JSON.
pub const CHILD_ARGUMENT: &str = "--extract";

/// Exit status of a child that could not start its work (bad arguments, no stdin).
const CHILD_USAGE: u8 = 64;

/// Which parser a file goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Pdf,
    Image,
    Html,
    Zip,
    Tar,
}

impl Kind {
    /// The parser for a detected MIME type, if any.
    pub fn for_mime(mime: &str) -> Option<Kind> {
        match mime {
            "application/pdf" => Some(Kind::Pdf),
            "text/html" => Some(Kind::Html),
            "application/zip" => Some(Kind::Zip),
            "application/x-tar" => Some(Kind::Tar),
            image if image.starts_with("image/") => Some(Kind::Image),
            _ => None,
        }
    }
}

/// What the worker asks of one child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub kind: Kind,
    /// Most text kept from the whole file (`[ingest] text_max_bytes`); pages past it are
    /// still counted and reported, with their text cut or empty.
    pub text_max_bytes: u64,
    /// A PDF with more pages is refused (`[ingest] max_pages`).
    pub max_pages: u32,
    /// RLIMIT_AS of the child, bytes (`[ingest] extract_max_memory`).
    pub max_memory: u64,
    /// RLIMIT_CPU of the child, seconds.
    pub max_cpu_seconds: u64,
}

/// One line of the child's stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Record {
    /// The text of page `number` (from 1), as far as the text budget allowed.
    Page { number: u32, text: String },
    /// The end: metadata to merge into the document's, and text without pages (HTML).
    Done {
        metadata: Value,
        text: Option<String>,
    },
    /// The file cannot be read as its type says: why, for the job's error.
    Refused { reason: String },
}

/// The child's side: set the limits on itself before reading a byte, then extract and report.
/// Called by `main` before anything else starts (no runtime, no logging, one thread).
pub fn child_main() -> ExitCode {
    let request: Request = match std::env::args()
        .nth(2)
        .map(|text| serde_json::from_str(&text))
    {
        Some(Ok(request)) => request,
        _ => {
            eprintln!("sluice-ingest-worker {CHILD_ARGUMENT}: expected a request as JSON");
            return ExitCode::from(CHILD_USAGE);
        }
    };
    // Confinement and limits first: from here on the file's content is in charge of what
    // this process does. Confined, it can write no file (not the database, not the library)
    // and signal no process outside; where the kernel has no Landlock, the limits below are
    // the wall (the worker said so at its start).
    if let Err(error) = crate::isolation::confine(crate::isolation::Grants::default()) {
        eprintln!("extracting unconfined: {error}");
    }
    let limits = [
        (Resource::RLIMIT_AS, request.max_memory, request.max_memory),
        // SIGXCPU at the soft limit, SIGKILL a second later.
        (
            Resource::RLIMIT_CPU,
            request.max_cpu_seconds,
            request.max_cpu_seconds.saturating_add(1),
        ),
        // No files written, no core dumps, no descriptors beyond what it has.
        (Resource::RLIMIT_FSIZE, 0, 0),
        (Resource::RLIMIT_CORE, 0, 0),
        (Resource::RLIMIT_NOFILE, 16, 16),
    ];
    for (resource, soft, hard) in limits {
        if let Err(error) = setrlimit(resource, soft, hard) {
            eprintln!("cannot set {resource:?}: {error}");
            return ExitCode::from(CHILD_USAGE);
        }
    }
    let file = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(descriptor) => File::from(descriptor),
        Err(error) => {
            eprintln!("no file on stdin: {error}");
            return ExitCode::from(CHILD_USAGE);
        }
    };
    let stdout = std::io::stdout();
    let mut sink = Sink::new(BufWriter::new(stdout.lock()), request.text_max_bytes);
    let outcome = match request.kind {
        Kind::Pdf => pdf::extract(&file, &request, &mut sink),
        Kind::Image => image::extract(&file),
        Kind::Html => html::extract(&file, &mut sink),
        Kind::Zip => archive::list_zip(&file),
        Kind::Tar => archive::list_tar(&file),
    };
    let last = match outcome {
        Ok(mut metadata) => {
            if sink.truncated
                && let Some(object) = metadata.as_object_mut()
            {
                object.insert("text_truncated".into(), Value::Bool(true));
            }
            Record::Done {
                metadata,
                text: sink.text.take(),
            }
        }
        Err(reason) => Record::Refused { reason },
    };
    match sink.write(&last).and_then(|()| sink.output.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // The parent went away or closed the pipe; nobody is left to tell.
        Err(_) => ExitCode::FAILURE,
    }
}

/// Where the child's records go, and the text budget they share.
pub(crate) struct Sink<W: Write> {
    output: W,
    budget: usize,
    truncated: bool,
    text: Option<String>,
}

impl<W: Write> Sink<W> {
    fn new(output: W, text_max_bytes: u64) -> Sink<W> {
        Sink {
            output,
            budget: usize::try_from(text_max_bytes).unwrap_or(usize::MAX),
            truncated: false,
            text: None,
        }
    }

    /// Reports page `number` at once (the worker records it as a step while the file is
    /// still being read), its text cut to what is left of the budget.
    pub(crate) fn page(&mut self, number: u32, text: String) -> Result<(), String> {
        let text = self.spend(text);
        self.write(&Record::Page { number, text })
            .and_then(|()| self.output.flush())
            .map_err(|error| format!("cannot report page {number}: {error}"))
    }

    /// Keeps text without pages, cut to what is left of the budget; sent with `done`.
    pub(crate) fn whole_text(&mut self, text: String) {
        let text = self.spend(text);
        self.text = Some(text);
    }

    fn spend(&mut self, mut text: String) -> String {
        if text.len() > self.budget {
            let mut end = self.budget;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            self.truncated = true;
        }
        self.budget -= text.len();
        text
    }

    fn write(&mut self, record: &Record) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.output, record)?;
        self.output.write_all(b"\n")
    }
}

/// The whole file, read from offset 0 without moving the shared file offset.
pub(crate) fn read_all(file: &File) -> Result<Vec<u8>, String> {
    let size = file
        .metadata()
        .map_err(|error| format!("cannot stat the file: {error}"))?
        .len();
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(size).unwrap_or(usize::MAX))
        .map_err(|_| format!("the file ({size} bytes) does not fit the extraction's memory"))?;
    bytes.resize(size as usize, 0);
    let mut done = 0;
    while done < bytes.len() {
        match file.read_at(&mut bytes[done..], done as u64) {
            Ok(0) => break,
            Ok(read) => done += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(format!("cannot read the file: {error}")),
        }
    }
    bytes.truncate(done);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_budget_is_shared_by_pages_and_cut_on_a_character() {
        let mut output = Vec::new();
        let mut sink = Sink::new(&mut output, 7);
        sink.page(1, "abcd".into()).unwrap();
        sink.page(2, "éé".into()).unwrap(); // 4 bytes; 3 left: one é fits
        sink.page(3, "more".into()).unwrap(); // 1 left
        sink.page(4, "gone".into()).unwrap();
        assert!(sink.truncated);
        drop(sink);
        let records: Vec<Record> = String::from_utf8(output)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            records,
            vec![
                Record::Page {
                    number: 1,
                    text: "abcd".into()
                },
                Record::Page {
                    number: 2,
                    text: "é".into()
                },
                Record::Page {
                    number: 3,
                    text: "m".into()
                },
                Record::Page {
                    number: 4,
                    text: String::new()
                },
            ]
        );
    }

    #[test]
    fn kinds_follow_the_detected_type() {
        assert_eq!(Kind::for_mime("application/pdf"), Some(Kind::Pdf));
        assert_eq!(Kind::for_mime("image/jpeg"), Some(Kind::Image));
        assert_eq!(Kind::for_mime("application/x-tar"), Some(Kind::Tar));
        assert_eq!(Kind::for_mime("text/plain"), None);
    }
}
