//! Archives: the listing (names, sizes, modification times), from a zip's central directory
//! or a tar's entry headers. Nothing is decompressed or unpacked, so a zip bomb's content is
//! never produced; an archive whose entries claim to expand beyond what any real archive does
//! (more than [`MAX_EXPANSION`] times its size, and over [`BOMB_FLOOR`]) is refused all the
//! same, because whatever unpacks it later (a processor, a person) would fill a disk.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};

use serde_json::{Value, json};

/// Most entries listed in the metadata; the counts cover every entry.
pub const LISTED_ENTRIES: usize = 1000;
/// Most entries read from one archive.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Expansion ratio beyond which an archive is a bomb: deflate's own maximum is about 1032:1,
/// and real archives of text or logs stay far below 200:1.
pub const MAX_EXPANSION: u64 = 200;
/// Archives expanding to less than this are never refused, whatever the ratio.
pub const BOMB_FLOOR: u64 = 1 << 30;

pub(super) fn list_zip(file: &File) -> Result<Value, String> {
    let mut reader = BufReader::new(file);
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|error| format!("cannot read the archive: {error}"))?;
    let mut archive =
        zip::ZipArchive::new(reader).map_err(|error| format!("not a readable zip: {error}"))?;
    if archive.len() > MAX_ENTRIES {
        return Err(format!(
            "the zip has {} entries, more than {MAX_ENTRIES}",
            archive.len()
        ));
    }
    let mut listing = Listing::default();
    for index in 0..archive.len() {
        // Raw access reads the entry's header only; nothing is decompressed.
        let entry = archive
            .by_index_raw(index)
            .map_err(|error| format!("zip entry {index} is damaged: {error}"))?;
        listing.add(
            String::from_utf8_lossy(entry.name_raw()).into_owned(),
            entry.size(),
            entry.compressed_size(),
            entry.is_dir(),
        );
    }
    listing.finish("zip", file)
}

pub(super) fn list_tar(file: &File) -> Result<Value, String> {
    let mut reader = BufReader::new(file);
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|error| format!("cannot read the archive: {error}"))?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries_with_seek()
        .map_err(|error| format!("not a readable tar: {error}"))?;
    let mut listing = Listing::default();
    for entry in entries {
        let entry = entry.map_err(|error| format!("a tar entry is damaged: {error}"))?;
        if listing.entries >= MAX_ENTRIES {
            return Err(format!("the tar has more than {MAX_ENTRIES} entries"));
        }
        let name = entry
            .path()
            .map(|path| path.display().to_string())
            .unwrap_or_else(|_| String::from_utf8_lossy(&entry.path_bytes()).into_owned());
        let size = entry.header().size().unwrap_or(0);
        let is_directory = entry.header().entry_type().is_dir();
        listing.add(name, size, size, is_directory);
    }
    listing.finish("tar", file)
}

#[derive(Default)]
struct Listing {
    entries: usize,
    files: u64,
    expanded: u64,
    listed: Vec<Value>,
}

impl Listing {
    fn add(&mut self, name: String, size: u64, stored: u64, is_directory: bool) {
        self.entries += 1;
        if !is_directory {
            self.files += 1;
            self.expanded = self.expanded.saturating_add(size);
        }
        if self.listed.len() < LISTED_ENTRIES {
            self.listed.push(if is_directory {
                json!({ "name": name, "directory": true })
            } else {
                json!({ "name": name, "size": size, "stored": stored })
            });
        }
    }

    fn finish(self, format: &str, file: &File) -> Result<Value, String> {
        let size = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
        if self.expanded > BOMB_FLOOR && self.expanded / size.max(1) > MAX_EXPANSION {
            return Err(format!(
                "the {format} of {size} bytes would expand to {} bytes ({}:1): refused as an \
                 archive bomb",
                self.expanded,
                self.expanded / size.max(1)
            ));
        }
        Ok(json!({
            "archive": {
                "format": format,
                "entries": self.entries,
                "files": self.files,
                "expanded_size": self.expanded,
                "listing": self.listed,
                "listing_complete": self.entries <= LISTED_ENTRIES,
            }
        }))
    }
}
