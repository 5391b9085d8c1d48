//! `sluicectl docs list [--query TEXT]`: documents from the store, or full-text search hits;
//! `sluicectl docs get ID -o FILE`: a document's content.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sluice_core::content::{ContentError, ContentPlaces, OpenedContent, open_document_content};
use sluice_core::ingest::IngestMode;
use sluice_core::store::documents::DocumentFilter;

use super::{Context, Failure};
use crate::exit;
use crate::output::{print_json, print_line, print_table};

impl Context {
    pub(super) fn docs_list(
        &self,
        query: Option<String>,
        limit: u32,
        cursor: Option<i64>,
    ) -> Result<(), Failure> {
        let page = self.page(limit, cursor)?;
        let store = self.open_store()?;
        // Search hits and plain listings print the same: the document, plus the matching
        // snippet when searching.
        let (documents, next_cursor): (Vec<(sluice_core::store::Document, Option<String>)>, _) =
            match query.filter(|text| !text.trim().is_empty()) {
                Some(text) => {
                    let hits = store.search_documents(&text, page)?;
                    let next = hits.next_cursor;
                    (
                        hits.items
                            .into_iter()
                            .map(|hit| (hit.document, Some(hit.snippet)))
                            .collect(),
                        next,
                    )
                }
                None => {
                    let listed = store.list_documents(&DocumentFilter::default(), page)?;
                    let next = listed.next_cursor;
                    (
                        listed
                            .items
                            .into_iter()
                            .map(|document| (document, None))
                            .collect(),
                        next,
                    )
                }
            };
        if self.json {
            let items: Vec<Value> = documents
                .iter()
                .map(|(document, snippet)| {
                    let mut item = serde_json::to_value(document).unwrap_or_default();
                    if let Some(snippet) = snippet {
                        item["snippet"] = Value::from(snippet.as_str());
                    }
                    item
                })
                .collect();
            print_json(&json!({ "items": items, "next_cursor": next_cursor }));
            return Ok(());
        }
        let rows: Vec<Vec<String>> = documents
            .iter()
            .map(|(document, _)| {
                vec![
                    document.id.to_string(),
                    document.original_name.clone(),
                    document.mime.clone(),
                    document.size.to_string(),
                    document.sha256.chars().take(16).collect(),
                    document
                        .library_path
                        .as_ref()
                        .map(|path| path.display().to_string())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        print_table(&["ID", "NAME", "TYPE", "SIZE", "SHA256", "PATH"], &rows);
        if let Some(next) = next_cursor {
            print_line(&format!("more: --cursor {next}"));
        }
        Ok(())
    }
}

impl Context {
    /// `docs get ID -o FILE`: the document's bytes, found and checked by
    /// `sluice_core::content` exactly as sluice-web's `/content` does, copied while hashed.
    ///
    /// This reads the file directly rather than through sluice-web: sluicectl already reads
    /// the database directly for every read, the file is where the database says (no daemon
    /// needs to be up, no token to be read, no HTTP in between), and the checks are the same
    /// function the web uses, so both refuse the same things.
    pub(super) fn docs_get(&self, id: i64, output: &Path, force: bool) -> Result<(), Failure> {
        let store = self.open_store()?;
        let document = store.get_document(id)?;
        let index_roots: Vec<PathBuf> = self
            .config
            .watches
            .iter()
            .filter(|watch| watch.mode == IngestMode::Index)
            .map(|watch| watch.path.clone())
            .collect();
        let places = ContentPlaces {
            library: &self.config.ingest.library,
            index_roots: &index_roots,
        };
        let opened = match open_document_content(&document, &[], places) {
            Ok(opened) => Ok(opened),
            Err(_) if !index_roots.is_empty() => {
                let copies = store
                    .catalogued_copies(id)
                    .map_err(|error| Failure::new(exit::ERROR, format!("database: {error}")))?;
                open_document_content(&document, &copies, places)
            }
            Err(error) => Err(error),
        }
        .map_err(content_failure)?;
        drop(store);
        if output == Path::new("-") {
            let stdout = std::io::stdout();
            let mut sink = stdout.lock();
            copy_checked(&document, opened, &mut sink)?;
            return sink
                .flush()
                .map_err(|error| Failure::new(exit::ERROR, format!("cannot write: {error}")));
        }
        if !force && output.symlink_metadata().is_ok() {
            return Err(Failure::new(
                exit::ERROR,
                format!(
                    "{} exists; nothing was written (give --force to replace it)",
                    output.display()
                ),
            ));
        }
        let folder = match output.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let write_failure = |error: std::io::Error| {
            Failure::new(
                exit::ERROR,
                format!("cannot write {}: {error}", output.display()),
            )
        };
        // A temporary file beside FILE (the same file system, so the rename is atomic), with
        // the mode a new file gets from the umask.
        let mut temporary = tempfile::Builder::new()
            .prefix(".sluicectl-")
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(folder)
            .map_err(write_failure)?;
        copy_checked(&document, opened, temporary.as_file_mut())?;
        temporary.as_file().sync_all().map_err(write_failure)?;
        if force {
            temporary
                .persist(output)
                .map_err(|error| write_failure(error.error))?;
        } else {
            // No replacing even now: a FILE that appeared meanwhile is kept.
            temporary.persist_noclobber(output).map_err(|error| {
                if error.error.kind() == std::io::ErrorKind::AlreadyExists {
                    Failure::new(
                        exit::ERROR,
                        format!(
                            "{} exists; nothing was written (give --force to replace it)",
                            output.display()
                        ),
                    )
                } else {
                    write_failure(error.error)
                }
            })?;
        }
        if self.json {
            print_json(&json!({
                "document_id": document.id,
                "path": output.display().to_string(),
                "size": document.size,
                "blake3": document.blake3,
            }));
        } else {
            print_line(&format!(
                "wrote document {} ({}, {} bytes) to {}",
                document.id,
                document.original_name,
                document.size,
                output.display()
            ));
        }
        Ok(())
    }
}

/// Copies the opened content into `sink`, hashing it on the way; a short read or a hash that
/// is not the document's is an error (for standard output, after the bytes went out).
fn copy_checked(
    document: &sluice_core::store::Document,
    mut opened: OpenedContent,
    sink: &mut impl Write,
) -> Result<(), Failure> {
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut copied: u64 = 0;
    loop {
        let read = match opened.file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(Failure::new(
                    exit::ERROR,
                    format!("cannot read {}: {error}", opened.path.display()),
                ));
            }
        };
        hasher.update(&buffer[..read]);
        sink.write_all(&buffer[..read])
            .map_err(|error| Failure::new(exit::ERROR, format!("cannot write: {error}")))?;
        copied += read as u64;
    }
    let hash = hasher.finalize().to_hex();
    if copied != document.size || hash.as_str() != document.blake3 {
        return Err(Failure::new(
            exit::ERROR,
            format!(
                "{} changed while it was read: its bytes are not document {}'s content",
                opened.path.display(),
                document.id
            ),
        ));
    }
    Ok(())
}

fn content_failure(error: ContentError) -> Failure {
    match error {
        ContentError::Gone(message) => Failure::new(exit::NOT_FOUND, message),
        ContentError::Refused(message) if message.starts_with("no permission") => Failure::new(
            exit::ERROR,
            format!("{message} (reading the library needs root or membership of group sluice)"),
        ),
        error => Failure::new(exit::ERROR, error.to_string()),
    }
}
