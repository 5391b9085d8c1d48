//! Thumbnails (`[ingest] thumbnail_size`, the longest edge in pixels) of images and of the
//! first page of PDFs, made once per new content by a `thumbnail` job of its own (queued with
//! the document, run after the waiting ingests; see `execute::run_thumbnail`) and filed in the
//! library as `thumbnails/<b3[0..2]>/<b3>.png`. The document's metadata records the thumbnail
//! (`thumbnail`: path, width, height, bytes, blake3) or why there is none (`thumbnail_error`):
//! a thumbnail never holds up or fails the ingest.
//!
//! Untrusted bytes are decoded under bounds:
//! - Images are decoded by the `image` crate in this process, with limits checked from the
//!   header before any pixel buffer exists ([`MAX_IMAGE_EDGE`], [`MAX_DECODED_BYTES`]), so a
//!   decompression bomb (a tiny file declaring a huge picture) is refused with a message
//!   instead of exhausting memory. Decoding runs on its own thread and is waited for at most
//!   [`IMAGE_TIMEOUT`] (and never past the job's own deadline, cancel or stop); a decoder that
//!   overruns is left to finish on its own (bounded by the limits) and the document is filed
//!   without a thumbnail. [`image_thumbnail`] is a plain function from bytes to PNG, so it
//!   can move into a sandboxed child process as is.
//! - PDF pages are rendered by poppler's `pdftoppm` (found at start-up, [`find_pdftoppm`]),
//!   run like a processor (`processors::run_program`): its own process group registered with
//!   the job, so cancel, the job's timeout and shutdown kill it; [`PDF_TIMEOUT`]; its stdout
//!   (the PNG) capped. It reads the file from the descriptor the worker opened and checked
//!   (as stdin, reopened through `/proc/self/fd/0`), never by path, so a file swapped for a
//!   symlink after the check is not what it renders. Its PNG is decoded and encoded again
//!   under the same limits as any image before it is filed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};
use nix::errno::Errno;
use nix::fcntl::{OFlag, renameat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde_json::{Value, json};
use sluice_core::beneath;

use crate::failure::IngestFailure;
use crate::processors::{ProcessGroups, Program, run_program};

/// The longest edge of an image that is decoded for a thumbnail.
pub const MAX_IMAGE_EDGE: u32 = 20_000;
/// The most memory one decoded image may take (a 64-megapixel photo in RGBA is 256 MiB).
pub const MAX_DECODED_BYTES: u64 = 256 * 1024 * 1024;
/// How long an image decode is waited for.
pub const IMAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `pdftoppm` may take for a first page.
pub const PDF_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `pdftoppm -v` may take at start-up.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a wait for a decode looks at the job's flags.
const CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Image types a thumbnail is made of (the formats the `image` crate is built with here).
const IMAGE_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/tiff",
    "image/bmp",
];
const PDF_TYPE: &str = "application/pdf";

/// A finished thumbnail: PNG bytes and their size in pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnail {
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Why an image gave no thumbnail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThumbnailError {
    /// The image is larger than the decoding limits (a decompression bomb, or a huge scan).
    #[error("{0}")]
    TooLarge(String),
    /// The bytes are not a picture the decoder reads.
    #[error("{0}")]
    Undecodable(String),
}

/// The program that renders PDF pages, as found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdfRenderer {
    pub program: PathBuf,
    /// `pdftoppm 22.12.0`: shown in the worker's `PdfThumbnailer` property and `/api/status`.
    pub version: String,
}

/// What the worker makes thumbnails with.
#[derive(Debug, Clone, PartialEq)]
pub struct Thumbnailer {
    /// `[ingest] thumbnail_size`.
    pub max_edge: u32,
    pub pdf: Option<PdfRenderer>,
}

/// The outcome of [`make_thumbnail`] for the document's metadata.
#[derive(Debug, Clone, PartialEq)]
pub enum Made {
    /// Not a type thumbnails are made of.
    NotApplicable,
    /// Filed; the value goes under `thumbnail` in the metadata.
    Filed(Value),
    /// None could be made; the reason goes under `thumbnail_error`.
    Failed(String),
}

/// Whether content of type `mime` gets a thumbnail (or a reason why not).
pub fn applies_to(mime: &str) -> bool {
    IMAGE_TYPES.contains(&mime) || mime == PDF_TYPE
}

/// Scales the image in `reader` (any format the crate reads here, guessed from its bytes) to
/// fit `max_edge` pixels on its longest edge, turned upright by its EXIF orientation, and
/// encodes it as PNG. Refuses an image beyond the limits from its header, before decoding it.
/// A picture already small enough keeps its size.
pub fn image_thumbnail(
    reader: impl BufRead + Seek,
    max_edge: u32,
) -> Result<Thumbnail, ThumbnailError> {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_EDGE);
    limits.max_image_height = Some(MAX_IMAGE_EDGE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|error| ThumbnailError::Undecodable(format!("cannot read the image: {error}")))?;
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    let decoded_bytes = decoder.total_bytes();
    if width > MAX_IMAGE_EDGE || height > MAX_IMAGE_EDGE || decoded_bytes > MAX_DECODED_BYTES {
        return Err(too_large(width, height));
    }
    let orientation = decoder.orientation().map_err(decode_error)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);
    if image.width() > max_edge || image.height() > max_edge {
        image = image.thumbnail(max_edge, max_edge);
    }
    let image = if image.color().has_alpha() {
        DynamicImage::ImageRgba8(image.to_rgba8())
    } else {
        DynamicImage::ImageRgb8(image.to_rgb8())
    };
    let mut png = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|error| {
            ThumbnailError::Undecodable(format!("cannot encode the thumbnail: {error}"))
        })?;
    Ok(Thumbnail {
        png,
        width: image.width(),
        height: image.height(),
    })
}

/// Looks for `pdftoppm` in the folders of `path_variable` (the worker's `PATH`) and asks it
/// for its version. `None` when it is not installed or does not answer.
pub fn find_pdftoppm(path_variable: Option<&OsStr>) -> Option<PdfRenderer> {
    let program = std::env::split_paths(path_variable?)
        .filter(|folder| folder.is_absolute())
        .map(|folder| folder.join("pdftoppm"))
        .find(|candidate| is_executable(candidate))?;
    let version = program_version(&program)?;
    Some(PdfRenderer { program, version })
}

/// Makes, files and describes the thumbnail of a document of type `mime`, whose bytes are
/// `file` (the descriptor the worker hashed). Only the job's own end (cancelled, stopped,
/// timed out) is an error; every other failure is [`Made::Failed`] with the reason, logged
/// (except a missing `pdftoppm`, which the worker said once, at start).
pub fn make_thumbnail(
    thumbnailer: &Thumbnailer,
    library: &Path,
    blake3: &str,
    mime: &str,
    file: &File,
    groups: &ProcessGroups,
    check: &mut dyn FnMut() -> Result<(), IngestFailure>,
) -> Result<Made, IngestFailure> {
    let made = if IMAGE_TYPES.contains(&mime) {
        thumbnail_of_image(file, thumbnailer.max_edge, check)
    } else if mime == PDF_TYPE {
        match &thumbnailer.pdf {
            Some(renderer) => thumbnail_of_pdf(renderer, file, thumbnailer.max_edge, groups, check),
            None => {
                return Ok(Made::Failed(
                    "PDFs get no thumbnail: pdftoppm (Debian package poppler-utils) was not \
                     found when this worker started"
                        .into(),
                ));
            }
        }
    } else {
        return Ok(Made::NotApplicable);
    };
    let thumbnail = match made {
        Ok(thumbnail) => thumbnail,
        Err(Unmade::Job(failure)) => return Err(failure),
        Err(Unmade::Failed(reason)) => {
            tracing::warn!(
                %blake3,
                reason = %reason,
                "no thumbnail for content {blake3} ({mime}): {reason}"
            );
            return Ok(Made::Failed(reason));
        }
    };
    match file_thumbnail(library, blake3, &thumbnail.png) {
        Ok(relative) => Ok(Made::Filed(json!({
            "path": relative,
            "width": thumbnail.width,
            "height": thumbnail.height,
            "bytes": thumbnail.png.len(),
            "blake3": blake3::hash(&thumbnail.png).to_hex().to_string(),
        }))),
        Err(reason) => {
            tracing::warn!(%blake3, reason = %reason, "no thumbnail for content {blake3}: {reason}");
            Ok(Made::Failed(reason))
        }
    }
}

/// Why [`make_thumbnail`] made none: the job ended, or this one thumbnail failed.
enum Unmade {
    Job(IngestFailure),
    Failed(String),
}

fn thumbnail_of_image(
    file: &File,
    max_edge: u32,
    check: &mut dyn FnMut() -> Result<(), IngestFailure>,
) -> Result<Thumbnail, Unmade> {
    let mut reader = file
        .try_clone()
        .map_err(|error| Unmade::Failed(format!("cannot read the image again: {error}")))?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|error| Unmade::Failed(format!("cannot read the image again: {error}")))?;
    let (sender, receiver) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("thumbnail".into())
        .spawn(move || {
            let _ = sender.send(image_thumbnail(BufReader::new(reader), max_edge));
        });
    if let Err(error) = spawned {
        return Err(Unmade::Failed(format!("cannot start decoding: {error}")));
    }
    let deadline = Instant::now() + IMAGE_TIMEOUT;
    loop {
        match receiver.recv_timeout(CHECK_INTERVAL) {
            Ok(Ok(thumbnail)) => return Ok(thumbnail),
            Ok(Err(error)) => return Err(Unmade::Failed(error.to_string())),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Unmade::Failed(
                    "the image decoder failed (it panicked)".into(),
                ));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        check().map_err(Unmade::Job)?;
        if Instant::now() >= deadline {
            return Err(Unmade::Failed(format!(
                "decoding the image took longer than {} s",
                IMAGE_TIMEOUT.as_secs()
            )));
        }
    }
}

fn thumbnail_of_pdf(
    renderer: &PdfRenderer,
    file: &File,
    max_edge: u32,
    groups: &ProcessGroups,
    check: &mut dyn FnMut() -> Result<(), IngestFailure>,
) -> Result<Thumbnail, Unmade> {
    let stdin = file
        .try_clone()
        .map_err(|error| Unmade::Failed(format!("cannot hand the PDF to pdftoppm: {error}")))?;
    let mut argv: Vec<OsString> = vec![renderer.program.clone().into_os_string()];
    for argument in ["-png", "-singlefile", "-f", "1", "-l", "1", "-scale-to"] {
        argv.push(argument.into());
    }
    argv.push(max_edge.to_string().into());
    argv.push("/proc/self/fd/0".into());
    let program = Program {
        name: "pdftoppm",
        argv,
        stdin: Stdio::from(stdin),
        timeout: PDF_TIMEOUT,
        // An RGB picture of max_edge² pixels, uncompressed, plus room for PNG's framing.
        max_output: 3 * u64::from(max_edge) * u64::from(max_edge) + 64 * 1024,
        // The worker's own helper, not a configured processor: no temporary folder (it
        // writes its picture to stdout), so it may write nowhere, and no network.
        sandbox: None,
    };
    let png = run_program(program, groups, check).map_err(|failure| match failure {
        failure @ (IngestFailure::Cancelled
        | IngestFailure::Stopped
        | IngestFailure::TimedOut(_)) => Unmade::Job(failure),
        failure => Unmade::Failed(format!(
            "pdftoppm could not render the first page: {failure}"
        )),
    })?;
    // What pdftoppm wrote is decoded and encoded again under the image limits: only a PNG
    // of the expected size is filed.
    let thumbnail = image_thumbnail(Cursor::new(png), max_edge)
        .map_err(|error| Unmade::Failed(format!("pdftoppm's picture is not usable: {error}")))?;
    Ok(thumbnail)
}

/// Writes `png` as `<library>/thumbnails/<b3[0..2]>/<b3>.png`: each folder made with `mkdirat`
/// and opened without following links beneath the configured library, the file written under
/// a temporary name, fsynced and renamed into place (replacing a thumbnail an earlier attempt
/// left). Returns the path relative to the library, as recorded in the metadata.
fn file_thumbnail(library: &Path, blake3: &str, png: &[u8]) -> Result<String, String> {
    std::fs::create_dir_all(library)
        .map_err(|error| format!("cannot create the library {}: {error}", library.display()))?;
    let mut folder = beneath::open_root(library)
        .map_err(|error| format!("cannot open the library {}: {error}", library.display()))?;
    let mut path = library.to_path_buf();
    for name in ["thumbnails", &blake3[..2]] {
        path.push(name);
        folder = match beneath::open_or_create_directory(
            &folder,
            OsStr::new(name),
            Mode::from_bits_truncate(0o750),
        ) {
            Ok((opened, _created)) => opened,
            Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV) => {
                return Err(format!(
                    "library folder {} is not a plain folder inside the library (a symlink, a \
                     file or a mount point); no thumbnail is filed into it",
                    path.display()
                ));
            }
            Err(errno) => return Err(format!("cannot create folder {}: {errno}", path.display())),
        };
    }
    let name = format!("{blake3}.png");
    let temporary = format!(".{name}.part-{}", std::process::id());
    let written = write_new_file(&folder, &temporary, png)
        .and_then(|()| renameat(&folder, temporary.as_str(), &folder, name.as_str()))
        .and_then(|()| {
            folder
                .sync_all()
                .map_err(|error| Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO)))
        });
    if let Err(errno) = written {
        let _ = unlinkat(&folder, temporary.as_str(), UnlinkatFlags::NoRemoveDir);
        return Err(format!(
            "cannot write the thumbnail {}: {errno}",
            path.join(&name).display()
        ));
    }
    Ok(sluice_core::content::thumbnail_path(blake3))
}

fn write_new_file(folder: &File, name: &str, bytes: &[u8]) -> Result<(), Errno> {
    let descriptor = beneath::open_beneath(
        folder,
        Path::new(name),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC,
        Mode::from_bits_truncate(0o640),
    )?;
    let mut file = File::from(descriptor);
    let to_errno =
        |error: std::io::Error| Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO));
    file.write_all(bytes).map_err(to_errno)?;
    file.sync_all().map_err(to_errno)
}

fn decode_error(error: ImageError) -> ThumbnailError {
    match error {
        ImageError::Limits(limit) => ThumbnailError::TooLarge(format!(
            "the image is beyond the decoding limits ({limit}); thumbnails are made of images \
             up to {MAX_IMAGE_EDGE}×{MAX_IMAGE_EDGE} pixels and {} MiB decoded",
            MAX_DECODED_BYTES / (1024 * 1024)
        )),
        error => ThumbnailError::Undecodable(format!("cannot decode the image: {error}")),
    }
}

fn too_large(width: u32, height: u32) -> ThumbnailError {
    ThumbnailError::TooLarge(format!(
        "the image declares {width}×{height} pixels, beyond the decoding limits; thumbnails are \
         made of images up to {MAX_IMAGE_EDGE}×{MAX_IMAGE_EDGE} pixels and {} MiB decoded",
        MAX_DECODED_BYTES / (1024 * 1024)
    ))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// `pdftoppm 22.12.0` from the first line of `pdftoppm -v` (which poppler prints on stderr).
fn program_version(program: &Path) -> Option<String> {
    let mut child = Command::new(program)
        .arg("-v")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    while child.try_wait().ok()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().ok()?;
    let text = [output.stderr, output.stdout].concat();
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().find(|line| line.contains("version"))?;
    let version = line.rsplit(' ').next()?.trim();
    (!version.is_empty()).then(|| format!("pdftoppm {version}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_of(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        let mut bytes = Vec::new();
        DynamicImage::ImageRgb8(image)
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        bytes
    }

    /// A valid PNG signature and IHDR chunk (with its CRC) declaring `width` × `height`
    /// pixels, and nothing else: a few dozen bytes that claim gigabytes.
    pub fn bomb_png(width: u32, height: u32) -> Vec<u8> {
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&width.to_be_bytes());
        chunk.extend_from_slice(&height.to_be_bytes());
        chunk.extend_from_slice(&[8, 6, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
        // The start of the pixel data: a zlib stream with one stored block of zeros, far
        // short of what the header promises, as a bomb's few compressed bytes would be.
        let mut data = b"IDAT\x78\x01\x01\x40\x00\xbf\xff".to_vec();
        data.extend_from_slice(&[0; 64]);
        png.extend_from_slice(&(data.len() as u32 - 4).to_be_bytes());
        png.extend_from_slice(&data);
        png.extend_from_slice(&crc32(&data).to_be_bytes());
        png.extend_from_slice(&[0, 0, 0, 0]);
        png.extend_from_slice(b"IEND");
        png.extend_from_slice(&crc32(b"IEND").to_be_bytes());
        png
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn a_large_image_is_scaled_to_the_longest_edge_and_a_small_one_kept() {
        let thumbnail = image_thumbnail(Cursor::new(png_of(600, 300)), 64).unwrap();
        assert_eq!((thumbnail.width, thumbnail.height), (64, 32));
        let decoded = image::load_from_memory(&thumbnail.png).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (64, 32));
        let small = image_thumbnail(Cursor::new(png_of(20, 10)), 64).unwrap();
        assert_eq!((small.width, small.height), (20, 10));
    }

    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        for (width, height) in [(100_000, 100_000), (20_000, 20_000)] {
            let error = image_thumbnail(Cursor::new(bomb_png(width, height)), 64).unwrap_err();
            assert!(
                matches!(error, ThumbnailError::TooLarge(_)),
                "{width}×{height}: {error}"
            );
            assert!(error.to_string().contains("limit"), "{error}");
        }
        let error = image_thumbnail(Cursor::new(b"not an image".to_vec()), 64).unwrap_err();
        assert!(matches!(error, ThumbnailError::Undecodable(_)), "{error}");
    }

    #[test]
    fn a_thumbnail_is_filed_under_its_hash_without_following_links() {
        let library = tempfile::tempdir().unwrap();
        let hash = "cd".repeat(32);
        let relative = file_thumbnail(library.path(), &hash, b"png bytes").unwrap();
        assert_eq!(relative, format!("thumbnails/cd/{hash}.png"));
        assert_eq!(
            std::fs::read(library.path().join(&relative)).unwrap(),
            b"png bytes"
        );
        // Again (a retried job): replaced, no temporary file left.
        file_thumbnail(library.path(), &hash, b"new bytes").unwrap();
        let names: Vec<_> = std::fs::read_dir(library.path().join("thumbnails/cd"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");

        // A symlinked shard folder is refused, and nothing is written where it points.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), library.path().join("thumbnails/ef")).unwrap();
        let error = file_thumbnail(library.path(), &"ef".repeat(32), b"x").unwrap_err();
        assert!(error.contains("not a plain folder"), "{error}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn pdftoppm_is_found_on_the_path_or_said_missing() {
        assert_eq!(
            find_pdftoppm(Some(OsStr::new("/nonexistent:relative/bin"))),
            None
        );
        assert_eq!(find_pdftoppm(None), None);
        if let Some(renderer) = find_pdftoppm(std::env::var_os("PATH").as_deref()) {
            assert!(renderer.version.starts_with("pdftoppm "), "{renderer:?}");
        }
    }
}
