//! `sluicectl docs list` (documents, newest first), `sluicectl docs search QUERY` (pages whose
//! extracted text matches, best first) and `sluicectl docs get ID -o FILE` (a document's
//! content).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sluice_core::content::{ContentError, ContentPlaces, OpenedContent, open_document_content};
use sluice_core::ingest::IngestMode;
use sluice_core::policy::parse_search_query;
use sluice_core::store::documents::DocumentFilter;

use super::{Context, Failure};
use crate::exit;
use crate::output::{print_json, print_line, print_table};

impl Context {
    pub(super) fn docs_list(&self, limit: u32, cursor: Option<i64>) -> Result<(), Failure> {
        let page = self.page(limit, cursor)?;
        let store = self.open_store()?;
        let listed = store.list_documents(&DocumentFilter::default(), page)?;
        if self.json {
            print_json(&json!({ "items": listed.items, "next_cursor": listed.next_cursor }));
            return Ok(());
        }
        let rows: Vec<Vec<String>> = listed
            .items
            .iter()
            .map(|document| {
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
        if let Some(next) = listed.next_cursor {
            print_line(&format!("more: --cursor {next}"));
        }
        Ok(())
    }

    pub(super) fn docs_search(
        &self,
        query: &str,
        limit: u32,
        cursor: Option<i64>,
    ) -> Result<(), Failure> {
        let query = parse_search_query(query)?;
        let page = self.page(limit, cursor)?;
        let store = self.open_store()?;
        let hits = store.search_documents(&query, page)?;
        if self.json {
            // The same items as GET /api/documents?q=: the document's fields, page, snippet.
            let items: Vec<Value> = hits
                .items
                .iter()
                .map(|hit| {
                    let mut item = serde_json::to_value(&hit.document).unwrap_or_default();
                    item["page"] = hit.page.into();
                    item["snippet"] = hit.snippet.as_str().into();
                    item["rank"] = hit.rank.into();
                    item
                })
                .collect();
            print_json(&json!({ "items": items, "next_cursor": hits.next_cursor }));
            return Ok(());
        }
        let rows: Vec<Vec<String>> = hits
            .items
            .iter()
            .map(|hit| {
                vec![
                    hit.document.id.to_string(),
                    hit.document.original_name.clone(),
                    hit.page.map(|page| page.to_string()).unwrap_or_default(),
                    hit.snippet.clone(),
                ]
            })
            .collect();
        print_table(&["ID", "NAME", "PAGE", "SNIPPET"], &rows);
        if let Some(next) = hits.next_cursor {
            print_line(&format!("more: --cursor {next}"));
        }
        Ok(())
    }

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
