//! Finding and opening the bytes of a catalogued document, its thumbnail and its processors'
//! derived files, for whoever hands them out (sluice-web's `/content`, `/thumbnail` and
//! `/derived`, `sluicectl docs get`, the worker's thumbnail job).
//!
//! A document's bytes are in one of two places: the library, for consumed files
//! (`Document::library_path`), or a watched folder in index mode, where the file stays and its
//! owner may change or remove it at any time. Every open goes beneath the configured folder
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` ([`crate::beneath`]), so neither a
//! symlink planted in a folder nor a row naming a path outside it leads anywhere else, and
//! the checks are made on the opened descriptor, so the file checked is the file read:
//!
//! - it must be a regular file of the document's size;
//! - an indexed file must also still be the version the catalogue recorded: the file row is
//!   `ingested` or `duplicate` for this document, and the descriptor's inode, size and
//!   modification time are the row's (the same identity the monitor and the worker use).
//!   Hashing the file again would prove more but costs a read of the whole file per request.
//!
//! A file that is no longer there is [`ContentError::Gone`]; one that is there but is not the
//! catalogued version is [`ContentError::Changed`]; neither is ever answered with the bytes
//! that happen to be at the path now.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::beneath;
use crate::store::{Document, FileRecord, FileState};

/// Where documents may be read from: the library and the watched folders in index mode.
#[derive(Debug, Clone, Copy)]
pub struct ContentPlaces<'a> {
    pub library: &'a Path,
    pub index_roots: &'a [PathBuf],
}

/// An opened document file, checked to hold the catalogued content.
#[derive(Debug)]
pub struct OpenedContent {
    pub file: File,
    pub size: u64,
    /// Where it was opened, for messages.
    pub path: PathBuf,
}

/// Why a document's bytes cannot be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// No file holds the content any more (removed, moved away, or never kept).
    #[error("{0}")]
    Gone(String),
    /// The file at the catalogued place is no longer the catalogued content.
    #[error("{0}")]
    Changed(String),
    /// The place is not one sluice reads from (outside its folder, through a symlink, not a
    /// regular file, no permission).
    #[error("{0}")]
    Refused(String),
    /// Reading failed for another reason (an IO error worth trying again).
    #[error("{0}")]
    Unreadable(String),
}

/// Opens the bytes of `document`: its library file when it has one, else the newest of its
/// `copies` (from [`crate::store::Store::catalogued_copies`]) that lies in an index folder and
/// is still the catalogued version. When none can be used, the error says why the most
/// telling one could not (a changed file over a gone one).
pub fn open_document_content(
    document: &Document,
    copies: &[FileRecord],
    places: ContentPlaces<'_>,
) -> Result<OpenedContent, ContentError> {
    let mut refusals = Vec::new();
    if let Some(library_path) = &document.library_path {
        match open_library_copy(document, library_path, places.library) {
            Ok(opened) => return Ok(opened),
            Err(error) => refusals.push(error),
        }
    }
    for copy in copies {
        let usable = copy.document_id == Some(document.id)
            && matches!(copy.state, FileState::Ingested | FileState::Duplicate)
            && places.index_roots.contains(&copy.watch_root);
        if !usable {
            continue;
        }
        match open_indexed_copy(document, copy) {
            Ok(opened) => return Ok(opened),
            Err(error) => refusals.push(error),
        }
    }
    let most_telling = refusals
        .iter()
        .position(|error| matches!(error, ContentError::Changed(_)))
        .or_else(|| {
            refusals
                .iter()
                .position(|error| !matches!(error, ContentError::Gone(_)))
        })
        .unwrap_or(0);
    if refusals.is_empty() {
        return Err(ContentError::Gone(format!(
            "document {} ({}) has no file sluice can read: it is not in the library and no \
             indexed file holds this version of it any more",
            document.id, document.original_name
        )));
    }
    Err(refusals.swap_remove(most_telling))
}

/// Opens the thumbnail at `relative` (as recorded in a document's metadata) beneath the
/// library. Only the shape the worker writes, `thumbnails/<2 hex>/<64 hex>.png`, is accepted,
/// whatever the database says. `Ok(None)` when the file is not there.
pub fn open_thumbnail(
    library: &Path,
    relative: &str,
) -> Result<Option<OpenedContent>, ContentError> {
    if !is_thumbnail_path(relative) {
        return Err(ContentError::Refused(format!(
            "{relative:?} is not a thumbnail path sluice writes"
        )));
    }
    match open_regular(library, Path::new(relative)) {
        Ok(opened) => Ok(Some(opened)),
        Err(ContentError::Gone(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Opens processor `processor`'s derived file `name` of content `blake3` beneath the library
/// (where the worker files it, [`derived_path`]; the path is made here from the names, never
/// read from the database). Each name must be one plain path element (the file-name policy);
/// `Ok(None)` when the file is not there.
pub fn open_derived(
    library: &Path,
    blake3: &str,
    processor: &str,
    name: &str,
) -> Result<Option<OpenedContent>, ContentError> {
    let plain_hash = blake3.len() == 64
        && blake3
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
    if !plain_hash {
        return Err(ContentError::Refused(format!(
            "{blake3:?} is not a content hash"
        )));
    }
    for (what, value) in [("processor", processor), ("derived file", name)] {
        crate::policy::check_file_name(what, value)
            .map_err(|error| ContentError::Refused(error.to_string()))?;
    }
    match open_regular(library, Path::new(&derived_path(blake3, processor, name))) {
        Ok(opened) => Ok(Some(opened)),
        Err(ContentError::Gone(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// `derived/<b3[0..2]>/<b3>/<processor>/<name>`: where the worker files processor
/// `processor`'s derived file `name` of content `blake3`, relative to the library.
pub fn derived_path(blake3: &str, processor: &str, name: &str) -> String {
    format!("derived/{}/{blake3}/{processor}/{name}", &blake3[..2])
}

/// `thumbnails/ab/ab…(64 hex).png`, the one place the worker files a thumbnail.
pub fn thumbnail_path(blake3: &str) -> String {
    format!("thumbnails/{}/{blake3}.png", &blake3[..2])
}

fn is_thumbnail_path(relative: &str) -> bool {
    let mut parts = relative.split('/');
    let (Some("thumbnails"), Some(shard), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some(hash) = name.strip_suffix(".png") else {
        return false;
    };
    let hex = |text: &str| {
        text.bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    };
    hash.len() == 64 && hex(hash) && shard == &hash[..2]
}

fn open_library_copy(
    document: &Document,
    library_path: &Path,
    library: &Path,
) -> Result<OpenedContent, ContentError> {
    let relative = library_path.strip_prefix(library).map_err(|_| {
        ContentError::Refused(format!(
            "document {}'s library file {} is outside the configured library {}",
            document.id,
            library_path.display(),
            library.display()
        ))
    })?;
    let opened = open_regular(library, relative).map_err(|error| match error {
        ContentError::Gone(_) => ContentError::Gone(format!(
            "document {} ({}) is gone from the library: {} does not exist",
            document.id,
            document.original_name,
            library_path.display()
        )),
        other => other,
    })?;
    if opened.size != document.size {
        return Err(ContentError::Changed(format!(
            "the library file {} of document {} is {} bytes, not the {} bytes catalogued; it \
             was damaged and is not handed out",
            library_path.display(),
            document.id,
            opened.size,
            document.size
        )));
    }
    Ok(opened)
}

fn open_indexed_copy(
    document: &Document,
    copy: &FileRecord,
) -> Result<OpenedContent, ContentError> {
    let relative = copy.path.strip_prefix(&copy.watch_root).map_err(|_| {
        ContentError::Refused(format!(
            "file row {} names {}, outside its watched folder {}",
            copy.id,
            copy.path.display(),
            copy.watch_root.display()
        ))
    })?;
    let opened = open_regular(&copy.watch_root, relative).map_err(|error| match error {
        ContentError::Gone(_) => ContentError::Gone(format!(
            "document {} ({}) is gone: {} was removed after it was catalogued",
            document.id,
            document.original_name,
            copy.path.display()
        )),
        other => other,
    })?;
    let metadata = opened.file.metadata().map_err(|error| {
        ContentError::Unreadable(format!("cannot stat {}: {error}", copy.path.display()))
    })?;
    let mtime_ns = metadata
        .mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(metadata.mtime_nsec());
    let same_version = (metadata.ino(), metadata.size(), mtime_ns)
        == (copy.inode, copy.size, copy.mtime_ns)
        && copy.size == document.size;
    if !same_version {
        return Err(ContentError::Changed(format!(
            "{} changed after it was catalogued as document {} ({} bytes then, {} bytes now, or \
             modified or replaced); its bytes now are not document {}'s content",
            copy.path.display(),
            document.id,
            document.size,
            metadata.size(),
            document.id
        )));
    }
    Ok(opened)
}

/// Opens `relative` beneath the configured folder `root`, not following links, and checks
/// that it is a regular file.
fn open_regular(root: &Path, relative: &Path) -> Result<OpenedContent, ContentError> {
    let path = root.join(relative);
    let root_directory = beneath::open_root(root).map_err(|error| {
        ContentError::Unreadable(format!("cannot open folder {}: {error}", root.display()))
    })?;
    // O_NONBLOCK: a FIFO planted at the path must not make the open wait for a writer.
    let descriptor = beneath::open_beneath(
        &root_directory,
        relative,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(|errno| match errno {
        Errno::ENOENT => ContentError::Gone(format!("{} does not exist", path.display())),
        Errno::ELOOP => ContentError::Refused(format!(
            "{} is or passes through a symlink; symlinks are never followed",
            path.display()
        )),
        Errno::EXDEV => ContentError::Refused(format!(
            "{} leads outside its folder or into another file system mounted inside it",
            path.display()
        )),
        Errno::EACCES | Errno::EPERM => {
            ContentError::Refused(format!("no permission to read {}", path.display()))
        }
        errno => ContentError::Unreadable(format!("cannot open {}: {errno}", path.display())),
    })?;
    let file = File::from(descriptor);
    let metadata = file.metadata().map_err(|error| {
        ContentError::Unreadable(format!("cannot stat {}: {error}", path.display()))
    })?;
    if !metadata.file_type().is_file() {
        return Err(ContentError::Changed(format!(
            "{} is no longer a regular file",
            path.display()
        )));
    }
    Ok(OpenedContent {
        size: metadata.size(),
        file,
        path,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use serde_json::json;

    use super::*;

    fn document(id: i64, size: u64, library_path: Option<PathBuf>) -> Document {
        Document {
            id,
            blake3: "a".repeat(64),
            sha256: "b".repeat(64),
            size,
            mime: "text/plain".into(),
            original_name: "notes.txt".into(),
            library_path,
            metadata: json!({}),
            duplicates: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn row_for(id: i64, root: &Path, path: &Path, document_id: i64) -> FileRecord {
        let metadata = std::fs::metadata(path).unwrap();
        FileRecord {
            id,
            watch_root: root.to_path_buf(),
            path: path.to_path_buf(),
            size: metadata.size(),
            mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
            inode: metadata.ino(),
            version_key: String::new(),
            state: FileState::Ingested,
            job_id: None,
            document_id: Some(document_id),
            first_seen_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn read_all(mut opened: OpenedContent) -> Vec<u8> {
        let mut bytes = Vec::new();
        opened.file.read_to_end(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn a_library_file_is_opened_when_it_has_the_catalogued_size() {
        let library = tempfile::tempdir().unwrap();
        let path = library.path().join("aa/bb/file");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"hello").unwrap();
        let places = ContentPlaces {
            library: library.path(),
            index_roots: &[],
        };
        let opened = open_document_content(&document(1, 5, Some(path.clone())), &[], places);
        assert_eq!(read_all(opened.unwrap()), b"hello");

        let damaged = open_document_content(&document(1, 6, Some(path.clone())), &[], places);
        assert!(
            matches!(damaged, Err(ContentError::Changed(_))),
            "{damaged:?}"
        );
        std::fs::remove_file(&path).unwrap();
        let gone = open_document_content(&document(1, 5, Some(path)), &[], places);
        assert!(matches!(gone, Err(ContentError::Gone(_))), "{gone:?}");
        let outside = open_document_content(
            &document(1, 5, Some(PathBuf::from("/etc/passwd"))),
            &[],
            places,
        );
        assert!(
            matches!(outside, Err(ContentError::Refused(_))),
            "{outside:?}"
        );
    }

    #[test]
    fn an_indexed_file_is_opened_only_while_it_is_the_catalogued_version() {
        let folder = tempfile::tempdir().unwrap();
        let library = tempfile::tempdir().unwrap();
        let root = folder.path().to_path_buf();
        let path = root.join("sub/notes.txt");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"first").unwrap();
        let row = row_for(3, &root, &path, 1);
        let roots = [root.clone()];
        let places = ContentPlaces {
            library: library.path(),
            index_roots: &roots,
        };
        let opened =
            open_document_content(&document(1, 5, None), std::slice::from_ref(&row), places);
        assert_eq!(read_all(opened.unwrap()), b"first");

        // A row of another folder (a consume folder, say) or state is not a place to read.
        let elsewhere = ContentPlaces {
            library: library.path(),
            index_roots: &[],
        };
        let refused =
            open_document_content(&document(1, 5, None), std::slice::from_ref(&row), elsewhere);
        assert!(matches!(refused, Err(ContentError::Gone(_))), "{refused:?}");

        // Rewritten with other bytes of the same length: the modification time tells.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"other").unwrap();
        let changed =
            open_document_content(&document(1, 5, None), std::slice::from_ref(&row), places);
        assert!(
            matches!(changed, Err(ContentError::Changed(_))),
            "{changed:?}"
        );

        std::fs::remove_file(&path).unwrap();
        let gone = open_document_content(&document(1, 5, None), std::slice::from_ref(&row), places);
        assert!(matches!(gone, Err(ContentError::Gone(_))), "{gone:?}");

        // A symlink where the file was is refused, not followed.
        std::fs::write(folder.path().join("secret"), b"first").unwrap();
        std::os::unix::fs::symlink(folder.path().join("secret"), &path).unwrap();
        let linked =
            open_document_content(&document(1, 5, None), std::slice::from_ref(&row), places);
        assert!(
            matches!(linked, Err(ContentError::Refused(_))),
            "{linked:?}"
        );
    }

    #[test]
    fn only_thumbnail_paths_the_worker_writes_are_opened() {
        let library = tempfile::tempdir().unwrap();
        let hash = "ab".repeat(32);
        let relative = thumbnail_path(&hash);
        assert_eq!(relative, format!("thumbnails/ab/{hash}.png"));
        assert!(open_thumbnail(library.path(), &relative).unwrap().is_none());
        std::fs::create_dir_all(library.path().join("thumbnails/ab")).unwrap();
        std::fs::write(library.path().join(&relative), b"png").unwrap();
        assert_eq!(
            read_all(open_thumbnail(library.path(), &relative).unwrap().unwrap()),
            b"png"
        );
        for bad in [
            "../etc/passwd",
            "thumbnails/ab/../../x.png",
            &format!("thumbnails/cd/{hash}.png"),
            &format!("/thumbnails/ab/{hash}.png"),
            "thumbnails/ab/short.png",
        ] {
            assert!(
                matches!(
                    open_thumbnail(library.path(), bad),
                    Err(ContentError::Refused(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn derived_files_are_opened_only_by_plain_names_beneath_the_library() {
        let library = tempfile::tempdir().unwrap();
        let hash = "cd".repeat(32);
        let relative = derived_path(&hash, "ocr", "page.txt");
        assert_eq!(relative, format!("derived/cd/{hash}/ocr/page.txt"));
        assert!(
            open_derived(library.path(), &hash, "ocr", "page.txt")
                .unwrap()
                .is_none()
        );
        std::fs::create_dir_all(library.path().join(format!("derived/cd/{hash}/ocr"))).unwrap();
        std::fs::write(library.path().join(&relative), b"words").unwrap();
        let opened = open_derived(library.path(), &hash, "ocr", "page.txt").unwrap();
        assert_eq!(read_all(opened.unwrap()), b"words");
        for (blake3, processor, name) in [
            (hash.as_str(), "ocr", "../../../../etc/passwd"),
            (hash.as_str(), "ocr", "sub/page.txt"),
            (hash.as_str(), "..", "page.txt"),
            (hash.as_str(), "ocr", ""),
            ("../cd", "ocr", "page.txt"),
        ] {
            assert!(
                matches!(
                    open_derived(library.path(), blake3, processor, name),
                    Err(ContentError::Refused(_))
                ),
                "{blake3} {processor} {name}"
            );
        }
        // A symlink in the library is not followed.
        std::os::unix::fs::symlink(
            "/etc/passwd",
            library.path().join(derived_path(&hash, "ocr", "link")),
        )
        .unwrap();
        assert!(matches!(
            open_derived(library.path(), &hash, "ocr", "link"),
            Err(ContentError::Refused(_))
        ));
    }
}
