//! Reading one file safely and learning what it is: open without following symlinks, check
//! it is a regular file on the descriptor itself, then one pass over the bytes that computes
//! BLAKE3 and SHA-256 together, keeps the head for magic-byte detection and the text for the
//! full-text index.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use serde_json::{Value, json};
use sha2::Digest;
use sluice_core::beneath;

use crate::failure::IngestFailure;

/// Bytes read per step; progress and cancellation are checked between steps.
const CHUNK_BYTES: usize = 1024 * 1024;
/// How much of the start of a file is kept for type detection and image headers.
const HEAD_BYTES: usize = 64 * 1024;

/// An opened file and the directory it was opened from (kept for the move into the library).
#[derive(Debug)]
pub struct OpenedFile {
    pub file: File,
    pub directory: File,
    pub name: OsString,
    pub device: u64,
    pub inode: u64,
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
}

/// What one pass over a file found.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub blake3: String,
    pub sha256: String,
    pub size: u64,
    pub mime: String,
    pub metadata: Value,
    pub text: Option<String>,
}

/// Opens `relative` beneath the directory `root` without following any symlink on the way
/// (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a symlink anywhere in the path,
/// or a path that climbs out of `root`, is refused. Devices, FIFOs and directories are
/// refused after an `fstat` of the opened descriptor, so the check and the use are the same
/// file; so are files with more than one hard link (`ln /etc/shadow inbox/x` would otherwise
/// be read, and moved into the library as one more link to the original). A mount inside the
/// watched tree is not crossed (`RESOLVE_NO_XDEV`, see `sluice_core::beneath`). `Ok(None)`
/// means the file does not exist.
pub fn open_beneath(root: &Path, relative: &Path) -> Result<Option<OpenedFile>, IngestFailure> {
    let root_directory = open_directory(root)?;
    let (parent, name) = match (relative.parent(), relative.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        _ => {
            return Err(IngestFailure::Permanent(format!(
                "{} names no file",
                relative.display()
            )));
        }
    };
    let directory = if parent.as_os_str().is_empty() {
        root_directory
    } else {
        match resolve_beneath(
            &root_directory,
            parent,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        ) {
            Ok(descriptor) => File::from(descriptor),
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => return Err(open_refusal(root, relative, errno)),
        }
    };
    open_in_directory(directory, name)
        .map_err(|errno| open_refusal(root, relative, errno))
        .and_then(|opened| opened.map(check_regular).transpose())
        .and_then(|opened| {
            opened
                .map(|opened| check_not_linked(opened, root, relative))
                .transpose()
        })
}

/// Opens the entry `name` of an already opened directory, not following a symlink.
pub fn open_in_directory(directory: File, name: &OsStr) -> Result<Option<OpenedFile>, Errno> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    match resolve_beneath(
        &directory,
        Path::new(name),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
    ) {
        Ok(descriptor) => {
            let file = File::from(descriptor);
            let metadata = file
                .metadata()
                .map_err(|error| Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO)))?;
            Ok(Some(OpenedFile {
                file,
                directory,
                name: name.to_owned(),
                device: metadata.dev(),
                inode: metadata.ino(),
                size: metadata.size(),
                mtime_ns: metadata
                    .mtime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(metadata.mtime_nsec()),
            }))
        }
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => Err(errno),
    }
}

/// Opens a directory the configuration names (trusted: it may itself be a symlink).
pub fn open_directory(path: &Path) -> Result<File, IngestFailure> {
    beneath::open_root(path).map_err(|error| {
        IngestFailure::Retryable(format!("cannot open folder {}: {error}", path.display()))
    })
}

/// Hashes and inspects the whole file in one pass. `on_chunk(bytes_read)` is called after
/// every chunk and may stop the pass by returning an error (cancellation, shutdown).
pub fn analyze(
    opened: &mut OpenedFile,
    text_max_bytes: u64,
    mut on_chunk: impl FnMut(u64) -> Result<(), IngestFailure>,
) -> Result<Analysis, IngestFailure> {
    let mut blake3_hasher = blake3::Hasher::new();
    let mut sha256_hasher = sha2::Sha256::new();
    let mut head = Vec::with_capacity(HEAD_BYTES.min(opened.size as usize));
    let mut text = TextScan::new(text_max_bytes);
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut total: u64 = 0;
    loop {
        let read = match opened.file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(IngestFailure::Retryable(format!(
                    "cannot read the file: {error}"
                )));
            }
        };
        let chunk = &buffer[..read];
        blake3_hasher.update(chunk);
        sha256_hasher.update(chunk);
        if head.len() < HEAD_BYTES {
            let wanted = (HEAD_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..wanted]);
        }
        text.feed(chunk);
        total += read as u64;
        on_chunk(total)?;
    }
    if total != opened.size {
        return Err(IngestFailure::Retryable(format!(
            "the file changed while it was read ({} bytes at open, {total} read)",
            opened.size
        )));
    }
    let (mime, mut metadata, text) = describe(&head, total, text);
    if let Some(object) = metadata.as_object_mut() {
        object.insert("size".into(), json!(total));
    }
    Ok(Analysis {
        blake3: blake3_hasher.finalize().to_hex().to_string(),
        sha256: hex(&sha256_hasher.finalize()),
        size: total,
        mime,
        metadata,
        text,
    })
}

fn check_regular(opened: OpenedFile) -> Result<OpenedFile, IngestFailure> {
    let file_type = opened
        .file
        .metadata()
        .map_err(|error| IngestFailure::Retryable(format!("cannot stat the file: {error}")))?
        .file_type();
    if file_type.is_file() {
        Ok(opened)
    } else {
        Err(IngestFailure::Permanent(format!(
            "{} is not a regular file (it is {}); refused",
            Path::new(&opened.name).display(),
            describe_file_type(&file_type)
        )))
    }
}

/// Refuses a file that is also linked from elsewhere. Checked on the opened descriptor, after
/// `openat2`, so the file checked is the file read and filed.
fn check_not_linked(
    opened: OpenedFile,
    root: &Path,
    relative: &Path,
) -> Result<OpenedFile, IngestFailure> {
    let metadata = opened
        .file
        .metadata()
        .map_err(|error| IngestFailure::Retryable(format!("cannot stat the file: {error}")))?;
    let path = root.join(relative);
    if metadata.nlink() > 1 {
        return Err(IngestFailure::Permanent(format!(
            "{} has {} hard links; refusing to ingest a file linked from elsewhere",
            path.display(),
            metadata.nlink()
        )));
    }
    Ok(opened)
}

fn describe_file_type(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_symlink() {
        "a symlink"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

fn resolve_beneath(directory: &File, path: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
    beneath::open_beneath(directory, path, flags, nix::sys::stat::Mode::empty())
}

fn open_refusal(root: &Path, relative: &Path, errno: Errno) -> IngestFailure {
    let path = root.join(relative);
    match errno {
        Errno::ELOOP => IngestFailure::Permanent(format!(
            "{} is or passes through a symlink; symlinks are never followed",
            path.display()
        )),
        Errno::EXDEV => IngestFailure::Permanent(format!(
            "{} leads outside its watched folder or into another file system mounted inside \
             it; refused",
            path.display()
        )),
        Errno::ENOTDIR => IngestFailure::Permanent(format!(
            "a component of {} is not a directory",
            path.display()
        )),
        Errno::EACCES | Errno::EPERM => {
            IngestFailure::Permanent(format!("no permission to read {}", path.display()))
        }
        errno => IngestFailure::Retryable(format!("cannot open {}: {errno}", path.display())),
    }
}

/// Detects the type: magic bytes first, then a text check, else `application/octet-stream`.
fn describe(head: &[u8], size: u64, text: TextScan) -> (String, Value, Option<String>) {
    if size == 0 {
        return ("application/x-empty".into(), json!({}), None);
    }
    if let Some(kind) = infer::get(head) {
        let mut metadata = json!({ "extension": kind.extension() });
        if kind.matcher_type() == infer::MatcherType::Image
            && let Ok(dimensions) = imagesize::blob_size(head)
        {
            metadata["width"] = json!(dimensions.width);
            metadata["height"] = json!(dimensions.height);
        }
        return (kind.mime_type().to_owned(), metadata, None);
    }
    match text.finish() {
        Some((encoding, lines, body)) => (
            "text/plain".into(),
            json!({ "encoding": encoding, "lines": lines }),
            Some(body),
        ),
        None => ("application/octet-stream".into(), json!({}), None),
    }
}

/// Follows the bytes to decide whether they are text, keeping at most `limit` bytes of it.
struct TextScan {
    limit: usize,
    kept: Vec<u8>,
    plausible: bool,
    newlines: u64,
    last_byte: Option<u8>,
    total: u64,
}

impl TextScan {
    fn new(limit: u64) -> TextScan {
        TextScan {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            kept: Vec::new(),
            plausible: true,
            newlines: 0,
            last_byte: None,
            total: 0,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        if !self.plausible || chunk.is_empty() {
            return;
        }
        let starts_utf16 = self.total == 0 && utf16_bom(chunk).is_some();
        let utf16 = starts_utf16 || (self.total > 0 && utf16_bom(&self.kept).is_some());
        // A NUL byte (outside UTF-16) or other C0 controls mean binary, not text.
        if !utf16
            && chunk
                .iter()
                .any(|byte| *byte == 0 || (*byte < 0x20 && !b"\t\n\r\x0c\x1b".contains(byte)))
        {
            self.plausible = false;
            self.kept = Vec::new();
            return;
        }
        self.newlines += chunk.iter().filter(|byte| **byte == b'\n').count() as u64;
        self.last_byte = chunk.last().copied();
        self.total += chunk.len() as u64;
        if self.kept.len() < self.limit {
            let wanted = (self.limit - self.kept.len()).min(chunk.len());
            self.kept.extend_from_slice(&chunk[..wanted]);
        }
    }

    /// (encoding, lines, text) when the content is text.
    fn finish(self) -> Option<(&'static str, u64, String)> {
        if !self.plausible {
            return None;
        }
        let truncated = self.total > self.kept.len() as u64;
        let lines = self.newlines + u64::from(self.last_byte.is_some_and(|byte| byte != b'\n'));
        if let Some(big_endian) = utf16_bom(&self.kept) {
            let units: Vec<u16> = self.kept[2..]
                .chunks_exact(2)
                .map(|pair| {
                    if big_endian {
                        u16::from_be_bytes([pair[0], pair[1]])
                    } else {
                        u16::from_le_bytes([pair[0], pair[1]])
                    }
                })
                .collect();
            let text = String::from_utf16_lossy(&units);
            let lines = text.lines().count() as u64;
            let encoding = if big_endian { "utf-16be" } else { "utf-16le" };
            return Some((encoding, lines, text));
        }
        let bytes = self
            .kept
            .strip_prefix(b"\xef\xbb\xbf")
            .unwrap_or(&self.kept);
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                let encoding = if text.is_ascii() { "ascii" } else { "utf-8" };
                Some((encoding, lines, text.to_owned()))
            }
            // A cut in the middle of a character at the kept limit is still UTF-8.
            Err(error) if truncated && error.error_len().is_none() => Some((
                "utf-8",
                lines,
                String::from_utf8_lossy(&bytes[..error.valid_up_to()]).into_owned(),
            )),
            // No NULs or controls but not UTF-8: a legacy 8-bit encoding; Latin-1 maps every
            // byte to a character, which keeps the words searchable.
            Err(_) => Some((
                "iso-8859-1",
                lines,
                bytes.iter().map(|byte| char::from(*byte)).collect(),
            )),
        }
    }
}

/// `Some(big_endian)` when the bytes start with a UTF-16 byte order mark.
fn utf16_bom(bytes: &[u8]) -> Option<bool> {
    match bytes {
        [0xfe, 0xff, ..] => Some(true),
        [0xff, 0xfe, ..] => Some(false),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyze_bytes(bytes: &[u8]) -> Analysis {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("f"), bytes).unwrap();
        let mut opened = open_beneath(directory.path(), Path::new("f"))
            .unwrap()
            .unwrap();
        analyze(&mut opened, 1024, |_| Ok(())).unwrap()
    }

    #[test]
    fn hashes_match_the_reference_implementations() {
        let analysis = analyze_bytes(b"abc");
        assert_eq!(
            analysis.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(analysis.blake3, blake3::hash(b"abc").to_hex().to_string());
        assert_eq!(analysis.mime, "text/plain");
        assert_eq!(analysis.metadata["encoding"], "ascii");
        assert_eq!(analysis.metadata["lines"], 1);
    }

    #[test]
    fn types_come_from_magic_bytes() {
        // A PNG signature and an IHDR chunk of 3×2 pixels.
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&3u32.to_be_bytes());
        png.extend_from_slice(&2u32.to_be_bytes());
        png.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        let analysis = analyze_bytes(&png);
        assert_eq!(analysis.mime, "image/png");
        assert_eq!(analysis.metadata["width"], 3);
        assert_eq!(analysis.metadata["height"], 2);
        assert_eq!(analyze_bytes(b"%PDF-1.7\n").mime, "application/pdf");
        assert_eq!(
            analyze_bytes(b"\x00\x01\x02binary").mime,
            "application/octet-stream"
        );
        assert_eq!(analyze_bytes(b"").mime, "application/x-empty");
    }

    #[test]
    fn text_encodings_and_lines_are_guessed() {
        let utf8 = analyze_bytes("grüße\nzwei\n".as_bytes());
        assert_eq!(utf8.metadata["encoding"], "utf-8");
        assert_eq!(utf8.metadata["lines"], 2);
        assert_eq!(utf8.text.as_deref(), Some("grüße\nzwei\n"));
        let latin1 = analyze_bytes(b"caf\xe9 au lait");
        assert_eq!(latin1.metadata["encoding"], "iso-8859-1");
        assert_eq!(latin1.text.as_deref(), Some("café au lait"));
        let utf16 = analyze_bytes(b"\xff\xfeh\0i\0");
        assert_eq!(utf16.metadata["encoding"], "utf-16le");
        assert_eq!(utf16.text.as_deref(), Some("hi"));
    }

    #[test]
    fn long_text_is_cut_at_the_limit_on_a_character_boundary() {
        let text = "é".repeat(1000); // 2000 bytes, limit 1024 cuts no character in half
        let analysis = analyze_bytes(text.as_bytes());
        assert_eq!(analysis.text.unwrap().chars().count(), 512);
        let odd = format!("a{}", "é".repeat(1000)); // the cut falls inside a character
        let analysis = analyze_bytes(odd.as_bytes());
        assert_eq!(analysis.metadata["encoding"], "utf-8");
        assert_eq!(analysis.text.unwrap().len(), 1023);
    }

    #[test]
    fn symlinks_devices_and_escapes_are_refused() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path();
        std::fs::write(root.join("target"), b"secret").unwrap();
        std::os::unix::fs::symlink(root.join("target"), root.join("link")).unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::fs::write(root.join("real/inner"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("dirlink")).unwrap();
        nix::unistd::mkfifo(
            &root.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        for (relative, expected) in [
            ("link", "symlink"),
            ("dirlink/inner", "symlink"),
            ("fifo", "FIFO"),
            ("real", "directory"),
        ] {
            let error = open_beneath(root, Path::new(relative)).unwrap_err();
            assert!(
                matches!(&error, IngestFailure::Permanent(message) if message.contains(expected)),
                "{relative}: {error:?}"
            );
        }
        std::fs::hard_link(root.join("real/inner"), root.join("hardlink")).unwrap();
        let linked = open_beneath(root, Path::new("hardlink")).unwrap_err();
        assert!(
            matches!(&linked, IngestFailure::Permanent(m) if m.contains("has 2 hard links")),
            "{linked:?}"
        );
        std::fs::remove_file(root.join("hardlink")).unwrap();
        let devices = open_beneath(Path::new("/dev"), Path::new("null")).unwrap_err();
        assert!(matches!(&devices, IngestFailure::Permanent(m) if m.contains("device")));
        assert!(open_beneath(root, Path::new("missing")).unwrap().is_none());
        assert!(
            open_beneath(root, Path::new("nodir/missing"))
                .unwrap()
                .is_none()
        );
        assert!(
            open_beneath(root, Path::new("real/inner"))
                .unwrap()
                .is_some()
        );
    }
}
