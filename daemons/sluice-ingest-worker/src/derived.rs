//! Derived files: what a processor leaves in its output folder (a one-shot run's `{output}`,
//! a server request's `output_dir`), filed into the library beneath the content's hash as
//! `<library>/derived/<b3[0..2]>/<b3>/<processor>/<name>` and listed in the document's
//! metadata under `derived_files`.
//!
//! The output folder belongs to the processor, which may have put anything there: each name
//! must pass the file-name policy (one plain path element), each entry is opened without
//! following links and must be a regular file of at most `max_output` bytes (counted while it
//! is copied, so a file that grows meanwhile is cut off, not trusted), and at most
//! [`MAX_DERIVED_FILES`] are taken from one run. Every folder in the library is made and
//! opened beneath the library root without following links, and each file is written under a
//! temporary name, synced and renamed into place, so a retry replaces what an earlier attempt
//! left.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, renameat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde_json::{Value, json};
use sluice_core::beneath;

use crate::failure::IngestFailure;

/// Most derived files one processor run may leave.
pub const MAX_DERIVED_FILES: usize = 100;

/// Files `names` (all regular files of `output` when `None`) into the library for the content
/// `blake3`, as processor `processor`'s; returns the entries for `derived_files`.
pub fn file_derived(
    library: &Path,
    blake3: &str,
    processor: &str,
    output: &Path,
    names: Option<&[String]>,
    max_bytes: u64,
) -> Result<Vec<Value>, IngestFailure> {
    let refuse =
        |reason: String| IngestFailure::Permanent(format!("processor {processor}: {reason}"));
    let names: Vec<String> = match names {
        Some(names) => names.to_vec(),
        None => {
            let mut found = Vec::new();
            let entries = std::fs::read_dir(output).map_err(|error| {
                IngestFailure::Retryable(format!(
                    "processor {processor}: cannot list its output folder {}: {error}",
                    output.display()
                ))
            })?;
            for entry in entries {
                let entry = entry.map_err(|error| {
                    IngestFailure::Retryable(format!(
                        "processor {processor}: cannot list its output folder: {error}"
                    ))
                })?;
                found.push(entry.file_name().to_string_lossy().into_owned());
            }
            found.sort();
            found
        }
    };
    if names.is_empty() {
        return Ok(Vec::new());
    }
    if names.len() > MAX_DERIVED_FILES {
        return Err(refuse(format!(
            "left {} derived files; at most {MAX_DERIVED_FILES} are kept from one run",
            names.len()
        )));
    }
    for name in &names {
        sluice_core::policy::check_file_name("derived file", name)
            .map_err(|error| refuse(error.to_string()))?;
    }
    let source_folder = beneath::open_root(output).map_err(|error| {
        IngestFailure::Retryable(format!(
            "processor {processor}: cannot open its output folder {}: {error}",
            output.display()
        ))
    })?;
    let target = open_target_folder(library, blake3, processor)?;
    let mut listed = Vec::with_capacity(names.len());
    for name in &names {
        let source = beneath::open_beneath(
            &source_folder,
            Path::new(name),
            OFlag::O_RDONLY | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(|errno| match errno {
            Errno::ENOENT => refuse(format!("derived file {name:?} is not in its output folder")),
            Errno::ELOOP | Errno::EXDEV => refuse(format!(
                "derived file {name:?} is a symlink or on another file system; not taken"
            )),
            errno => IngestFailure::Retryable(format!(
                "processor {processor}: cannot open derived file {name:?}: {errno}"
            )),
        })?;
        let mut source = File::from(source);
        let is_file = source
            .metadata()
            .map(|metadata| metadata.file_type().is_file())
            .unwrap_or(false);
        if !is_file {
            return Err(refuse(format!(
                "derived file {name:?} is not a regular file; not taken"
            )));
        }
        let size =
            copy_into(&target, name, &mut source, max_bytes).map_err(|failure| match failure {
                CopyFailure::TooLarge => refuse(format!(
                    "derived file {name:?} is larger than its max_output of {max_bytes} bytes"
                )),
                CopyFailure::Read(error) => IngestFailure::Retryable(format!(
                    "processor {processor}: cannot read derived file {name:?}: {error}"
                )),
                CopyFailure::Write(errno) => {
                    let error = std::io::Error::from(errno);
                    IngestFailure::writing(
                        format!("cannot file derived file {name:?} into the library: {error}"),
                        &error,
                    )
                }
            })?;
        listed.push(json!({
            "processor": processor,
            "name": name,
            "size": size,
            "path": sluice_core::content::derived_path(blake3, processor, name),
        }));
    }
    Ok(listed)
}

enum CopyFailure {
    TooLarge,
    Read(std::io::Error),
    Write(Errno),
}

fn open_target_folder(
    library: &Path,
    blake3: &str,
    processor: &str,
) -> Result<File, IngestFailure> {
    std::fs::create_dir_all(library).map_err(|error| {
        IngestFailure::writing(
            format!("cannot create the library {}: {error}", library.display()),
            &error,
        )
    })?;
    let mut folder = beneath::open_root(library).map_err(|error| {
        IngestFailure::Retryable(format!(
            "cannot open the library {}: {error}",
            library.display()
        ))
    })?;
    let mut path = library.to_path_buf();
    for name in ["derived", &blake3[..2], blake3, processor] {
        path.push(name);
        folder = match beneath::open_or_create_directory(
            &folder,
            OsStr::new(name),
            Mode::from_bits_truncate(0o750),
        ) {
            Ok((opened, _created)) => opened,
            Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV) => {
                return Err(IngestFailure::Permanent(format!(
                    "library folder {} is not a plain folder inside the library (a symlink, a \
                     file or a mount point); no derived file is filed into it",
                    path.display()
                )));
            }
            Err(errno) => {
                let error = std::io::Error::from(errno);
                return Err(IngestFailure::writing(
                    format!("cannot create folder {}: {error}", path.display()),
                    &error,
                ));
            }
        };
    }
    Ok(folder)
}

/// Copies `source` to `name` in `folder` (through a temporary name); returns its size.
fn copy_into(
    folder: &File,
    name: &str,
    source: &mut File,
    max_bytes: u64,
) -> Result<u64, CopyFailure> {
    let temporary = format!(".{name}.part-{}", std::process::id());
    let descriptor = beneath::open_beneath(
        folder,
        Path::new(&temporary),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC,
        Mode::from_bits_truncate(0o640),
    )
    .map_err(CopyFailure::Write)?;
    let mut target = File::from(descriptor);
    let result = (|| {
        let to_errno =
            |error: std::io::Error| Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO));
        let mut buffer = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let read = match source.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(CopyFailure::Read(error)),
            };
            size += read as u64;
            if size > max_bytes {
                return Err(CopyFailure::TooLarge);
            }
            target
                .write_all(&buffer[..read])
                .map_err(|error| CopyFailure::Write(to_errno(error)))?;
        }
        target
            .sync_all()
            .map_err(|error| CopyFailure::Write(to_errno(error)))?;
        renameat(folder, temporary.as_str(), folder, name).map_err(CopyFailure::Write)?;
        Ok(size)
    })();
    if result.is_err() {
        let _ = unlinkat(folder, temporary.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "ab12000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn files_are_filed_beneath_the_hash_and_listed() {
        let (library, output) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(output.path().join("b.txt"), b"bee").unwrap();
        std::fs::write(output.path().join("a.hocr"), b"<html>").unwrap();
        let listed = file_derived(library.path(), HASH, "ocr", output.path(), None, 1024).unwrap();
        assert_eq!(listed[0]["name"], "a.hocr");
        assert_eq!(listed[1]["size"], 3);
        let path = listed[1]["path"].as_str().unwrap();
        assert_eq!(path, format!("derived/ab/{HASH}/ocr/b.txt"));
        assert_eq!(std::fs::read(library.path().join(path)).unwrap(), b"bee");
    }

    #[test]
    fn hostile_outputs_are_refused_clearly() {
        let (library, output) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::os::unix::fs::symlink("/etc/passwd", output.path().join("link")).unwrap();
        std::fs::write(output.path().join("big"), vec![0u8; 2048]).unwrap();
        let refused = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
            file_derived(
                library.path(),
                HASH,
                "ocr",
                output.path(),
                Some(&names),
                1024,
            )
            .unwrap_err()
            .to_string()
        };
        assert!(
            refused(&["link"]).contains("is a symlink"),
            "{}",
            refused(&["link"])
        );
        assert!(refused(&["big"]).contains("larger than its max_output of 1024 bytes"));
        assert!(
            refused(&["../x"]).contains("derived file \"../x\" must be a single name"),
            "{}",
            refused(&["../x"])
        );
        assert!(refused(&["absent"]).contains("is not in its output folder"));
    }
}
