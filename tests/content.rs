//! Document content and thumbnails (issue 10) with the real daemons on a private bus: images
//! and a PDF uploaded get a thumbnail no larger than `[ingest] thumbnail_size`; content is
//! served with ranges, validators and headers that keep a browser from running it; an indexed
//! document is served from its folder until its file changes or goes; a decompression bomb
//! fails its job, an image too big to decode gets no thumbnail, and neither harms anything;
//! `sluicectl docs get`.

use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sluice_core::store::FileState;

use crate::support::{
    DEADLINE, DaemonProcess, Suite, WEB_READ_TOKEN, binary_path, http_agent, upload_waiting,
    wait_until,
};

/// The default `[ingest] thumbnail_size`, which the suite's configuration keeps.
const THUMBNAIL_SIZE: u64 = 256;

/// An answer: status, headers we look at, body bytes.
struct Reply {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn request(suite: &Suite, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let url = format!("{}{path}", suite.web.origin);
    let agent = http_agent();
    let authorization = format!("Bearer {WEB_READ_TOKEN}");
    let mut response = match method {
        "HEAD" => {
            let mut builder = agent.head(&url).header("Authorization", &authorization);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            builder.call()
        }
        _ => {
            let mut builder = agent.get(&url).header("Authorization", &authorization);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            builder.call()
        }
    }
    .expect("HTTP request");
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .unwrap_or_default(),
    }
}

/// Uploads `bytes` as `name` and waits for its job; returns the document of the finished job.
fn upload(suite: &Suite, name: &str, bytes: &[u8]) -> Value {
    let job = upload_job(suite, name, bytes);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", suite.logs());
    job["document"].clone()
}

/// Uploads `bytes` as `name`, waits for its job and returns the job, however it ended.
fn upload_job(suite: &Suite, name: &str, bytes: &[u8]) -> Value {
    let (_, body) = upload_waiting(suite, name, bytes, "60s");
    assert!(body["uploads"][0]["job"].is_object(), "{body}");
    body["uploads"][0]["job"].clone()
}

fn png_of(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 3 % 256) as u8,
            ((x + y) % 256) as u8,
        ])
    });
    encoded(
        image::DynamicImage::ImageRgb8(image),
        image::ImageFormat::Png,
    )
}

fn jpeg_of(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, 90, (y % 256) as u8])
    });
    encoded(
        image::DynamicImage::ImageRgb8(image),
        image::ImageFormat::Jpeg,
    )
}

fn encoded(image: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .expect("encode");
    bytes
}

/// A PNG of about 150 bytes whose header declares `width` × `height` pixels: the signature,
/// a valid IHDR chunk (with its CRC), and the end chunk.
fn bomb_png(width: u32, height: u32) -> Vec<u8> {
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
    let mut header = b"IHDR".to_vec();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&header);
    png.extend_from_slice(&crc32(&header).to_be_bytes());
    // The start of the pixel data: a zlib stream with one stored block of zeros, far short of
    // what the header promises, as a bomb's few compressed bytes would be.
    let mut data = b"IDAT\x78\x01\x01\x40\x00\xbf\xff".to_vec();
    data.extend_from_slice(&[0; 64]);
    png.extend_from_slice(&(data.len() as u32 - 4).to_be_bytes());
    png.extend_from_slice(&data);
    png.extend_from_slice(&crc32(&data).to_be_bytes());
    png.extend_from_slice(&0u32.to_be_bytes());
    png.extend_from_slice(b"IEND");
    png.extend_from_slice(&crc32(b"IEND").to_be_bytes());
    png
}

/// Waits until the thumbnail job queued with `document` (an upload's answer, which comes when
/// the ingest is done, before the thumbnail) has recorded its outcome, and returns the
/// document as it is then. While it is pending, `/thumbnail` says so.
fn with_thumbnail(suite: &Suite, document: &Value) -> Value {
    let id = document["id"].as_i64().unwrap();
    assert!(
        document["metadata"]["thumbnail_job"].is_i64(),
        "a thumbnail job is queued with the document: {document}"
    );
    let mut latest = document.clone();
    let recorded = |document: &Value| {
        let metadata = &document["metadata"];
        metadata.get("thumbnail").is_some() || metadata.get("thumbnail_error").is_some()
    };
    let done = wait_until(DEADLINE, || {
        if recorded(&latest) {
            return true;
        }
        let answer = request(suite, "GET", &format!("/api/documents/{id}/thumbnail"), &[]);
        let read = request(suite, "GET", &format!("/api/documents/{id}"), &[]).json();
        if answer.status == 404 && !recorded(&read) {
            // Still pending after the answer was given: the answer must have said so.
            assert_eq!(
                answer.json()["error"]["reason"],
                "thumbnail_pending",
                "{}",
                answer.json()
            );
            assert_eq!(answer.header("retry-after"), Some("1"));
        }
        latest = read;
        false
    });
    assert!(
        done,
        "the thumbnail of document {id} was never recorded: {latest}\n{}",
        suite.logs()
    );
    latest
}

/// Checks the thumbnail a document's metadata records (once its job has run) and the one
/// `/thumbnail` serves: a PNG of `expected` pixels, at most the configured size on each edge.
fn assert_thumbnail(suite: &Suite, document: &Value, expected: (u64, u64)) {
    let document = &with_thumbnail(suite, document);
    let id = document["id"].as_i64().unwrap();
    let thumbnail = &document["metadata"]["thumbnail"];
    assert_eq!(
        (thumbnail["width"].as_u64(), thumbnail["height"].as_u64()),
        (Some(expected.0), Some(expected.1)),
        "{document}\n{}",
        suite.logs()
    );
    assert!(expected.0 <= THUMBNAIL_SIZE && expected.1 <= THUMBNAIL_SIZE);
    let reply = request(suite, "GET", &format!("/api/documents/{id}/thumbnail"), &[]);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("content-type"), Some("image/png"));
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    let tag = reply.header("etag").expect("an ETag").to_owned();
    let picture = image::load_from_memory_with_format(&reply.body, image::ImageFormat::Png)
        .expect("the thumbnail is a PNG");
    assert_eq!(
        (u64::from(picture.width()), u64::from(picture.height())),
        expected
    );
    let again = request(
        suite,
        "GET",
        &format!("/api/documents/{id}/thumbnail"),
        &[("If-None-Match", &tag)],
    );
    assert_eq!(again.status, 304);
    // Filed in the library under the content hash.
    let blake3 = document["blake3"].as_str().unwrap();
    let filed = suite
        .library()
        .join(format!("thumbnails/{}/{blake3}.png", &blake3[..2]));
    assert_eq!(
        std::fs::read(filed).expect("the thumbnail file"),
        reply.body
    );
}

#[test]
fn uploads_get_thumbnails_and_their_content_is_served_with_ranges_and_safe_headers() {
    let suite = Suite::start();

    let status = request(&suite, "GET", "/api/status", &[]).json();
    assert_eq!(status["thumbnails"]["size"], THUMBNAIL_SIZE, "{status}");
    let renderer = status["thumbnails"]["pdf"].as_str().unwrap_or_default();
    assert!(
        renderer.starts_with("pdftoppm "),
        "tests/install-needs.sh installs poppler-utils, yet the workers found no pdftoppm: \
         {status}"
    );

    let png = png_of(640, 480);
    let photo = upload(&suite, "photo.png", &png);
    assert_eq!(photo["mime"], "image/png");
    assert_thumbnail(&suite, &photo, (256, 192));
    let camera = upload(&suite, "camera.jpg", &jpeg_of(300, 500));
    assert_eq!(camera["mime"], "image/jpeg");
    assert_thumbnail(&suite, &camera, (154, 256));
    // An A4 page, portrait: the long edge is the height.
    let pdf = sluice_tests::pdf::pdf_of(7, 2, 40);
    let report = upload(&suite, "report.pdf", &pdf);
    assert_eq!(report["mime"], "application/pdf");
    assert_thumbnail(&suite, &report, (181, 256));

    // The whole content, with the headers that keep a browser from second-guessing it.
    let id = photo["id"].as_i64().unwrap();
    let path = format!("/api/documents/{id}/content");
    let tag = format!("\"{}\"", photo["blake3"].as_str().unwrap());
    let whole = request(&suite, "GET", &path, &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, png);
    assert_eq!(whole.header("content-type"), Some("image/png"));
    assert_eq!(whole.header("etag"), Some(tag.as_str()));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert_eq!(whole.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(whole.header("content-security-policy"), Some("sandbox"));
    assert_eq!(
        whole.header("content-disposition"),
        Some("inline; filename=\"photo.png\"")
    );
    let size = png.len();

    // Ranges: the first bytes, a middle piece, the last bytes.
    for (range, first, last) in [
        ("bytes=0-9", 0, 9),
        ("bytes=100-1099", 100, 1099),
        ("bytes=-50", size - 50, size - 1),
        (&format!("bytes={}-", size - 7) as &str, size - 7, size - 1),
    ] {
        let part = request(&suite, "GET", &path, &[("Range", range)]);
        assert_eq!(part.status, 206, "{range}");
        assert_eq!(
            part.header("content-range"),
            Some(format!("bytes {first}-{last}/{size}").as_str()),
            "{range}"
        );
        assert_eq!(part.body, png[first..=last], "{range}");
    }
    let beyond = request(
        &suite,
        "GET",
        &path,
        &[("Range", &format!("bytes={size}-"))],
    );
    assert_eq!(beyond.status, 416);
    assert_eq!(
        beyond.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    assert_eq!(beyond.json()["error"]["code"], "range_not_satisfiable");

    // Validators: the client's copy is current; a resumed range of other content gets the
    // whole new content; one of this content gets its range.
    let current = request(&suite, "GET", &path, &[("If-None-Match", &tag)]);
    assert_eq!(current.status, 304);
    assert!(current.body.is_empty());
    let stale = request(
        &suite,
        "GET",
        &path,
        &[("Range", "bytes=0-9"), ("If-Range", "\"0000\"")],
    );
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, png);
    let resumed = request(
        &suite,
        "GET",
        &path,
        &[("Range", "bytes=0-9"), ("If-Range", &tag)],
    );
    assert_eq!(resumed.status, 206);
    assert_eq!(resumed.body, png[..10]);

    // HEAD: the same headers, no body.
    let head = request(&suite, "HEAD", &path, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(head.header("etag"), Some(tag.as_str()));
    assert!(head.body.is_empty());

    // Active content is an attachment, whatever the type was detected as.
    let html = upload(
        &suite,
        "page.html",
        b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>\n",
    );
    let svg = upload(
        &suite,
        "logo.svg",
        b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>\n",
    );
    for (document, name) in [(&html, "page.html"), (&svg, "logo.svg")] {
        let id = document["id"].as_i64().unwrap();
        let reply = request(&suite, "GET", &format!("/api/documents/{id}/content"), &[]);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-disposition"),
            Some(format!("attachment; filename=\"{name}\"").as_str()),
            "{document}"
        );
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(reply.header("content-security-policy"), Some("sandbox"));
        // A type without thumbnails has none, and says so.
        let none = request(
            &suite,
            "GET",
            &format!("/api/documents/{id}/thumbnail"),
            &[],
        );
        assert_eq!(none.status, 404);
        assert!(
            document["metadata"].get("thumbnail_error").is_none(),
            "{document}"
        );
        assert!(
            document["metadata"].get("thumbnail_job").is_none(),
            "no thumbnail job for a type without thumbnails: {document}"
        );
    }
    let html_type = request(
        &suite,
        "GET",
        &format!("/api/documents/{}/content", html["id"]),
        &[],
    );
    assert!(
        html_type
            .header("content-type")
            .is_some_and(|value| value.starts_with("text/")),
        "{:?}",
        html_type.header("content-type")
    );
    let missing = request(&suite, "GET", "/api/documents/999999/content", &[]);
    assert_eq!(missing.status, 404);
}

#[test]
fn a_decompression_bomb_png_fails_its_job_a_big_one_gets_no_thumbnail_and_the_worker_goes_on() {
    let mut suite = Suite::start();
    // 100,000² pixels would be 40 GB decoded, 20,000² 1.6 GB: more pixels than any camera
    // makes, refused from the header by extraction, so the job fails for good.
    for (name, side, megapixels) in [
        ("bomb.png", 100_000, "10000.0"),
        ("square.png", 20_000, "400.0"),
    ] {
        let bomb = bomb_png(side, side);
        assert!(bomb.len() < 200);
        let job = upload_job(&suite, name, &bomb);
        assert_eq!(job["state"], "failed", "{job}\n{}", suite.logs());
        assert_eq!(
            job["error"].as_str().unwrap_or_default(),
            format!(
                "image bomb: the image declares {side}×{side} pixels ({megapixels} megapixels), \
                 more than the limit of 179.0 megapixels; it is refused without decoding it"
            ),
            "{job}"
        );
        assert!(job["document"].is_null(), "no document: {job}");
    }
    // Within that bound but beyond what the thumbnailer decodes (100 megapixels of RGBA is
    // 400 MB; 30,000 pixels is longer than its 20,000 a side): a document without thumbnail.
    for (name, width, height) in [("big.png", 10_000, 10_000), ("long.png", 30_000, 1_000)] {
        let bomb = bomb_png(width, height);
        let document = with_thumbnail(&suite, &upload(&suite, name, &bomb));
        let reason = document["metadata"]["thumbnail_error"]
            .as_str()
            .unwrap_or_default();
        assert!(
            reason.contains("limit"),
            "the reason should name the decoding limit: {document}"
        );
        assert!(
            document["metadata"].get("thumbnail").is_none(),
            "{document}"
        );
        let id = document["id"].as_i64().unwrap();
        let reply = request(
            &suite,
            "GET",
            &format!("/api/documents/{id}/thumbnail"),
            &[],
        );
        assert_eq!(reply.status, 404);
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .is_some_and(|message| message.contains("limit")),
            "{}",
            reply.json()
        );
    }
    for worker in &mut suite.workers {
        assert!(worker.is_running(), "{}", suite.logs());
    }
    // The workers go on: the next image gets its thumbnail.
    let after = upload(&suite, "after.png", &png_of(32, 16));
    assert_thumbnail(&suite, &after, (32, 16));
    assert!(
        suite.logs().contains("no thumbnail for content"),
        "the log says why: {}",
        suite.logs()
    );
}

#[test]
fn without_pdftoppm_pdfs_get_no_thumbnail_and_the_worker_says_so_once() {
    let mut suite = Suite::start();
    // The suite's workers make way for one whose PATH has no pdftoppm.
    for worker in &mut suite.workers {
        worker
            .terminate(Duration::from_secs(30))
            .expect("stop a worker");
    }
    let mut command = std::process::Command::new(binary_path("sluice-ingest-worker"));
    command
        .args(["--instance", "1"])
        .env("SLUICE_CONFIG", &suite.fixture.config_path)
        .env("PATH", "/nonexistent");
    let mut worker = DaemonProcess::start(command, &suite.root().join("worker-bare.log"), "info");
    worker.wait_for_log_lines(&["ready: claiming"], 1, DEADLINE);
    suite.workers = vec![worker];

    let status = request(&suite, "GET", "/api/status", &[]).json();
    assert_eq!(status["thumbnails"]["pdf"], Value::Null, "{status}");
    for file in [1, 2] {
        let uploaded = upload(
            &suite,
            &format!("plain-{file}.pdf"),
            &sluice_tests::pdf::pdf_of(file, 1, 20),
        );
        let document = with_thumbnail(&suite, &uploaded);
        let reason = document["metadata"]["thumbnail_error"]
            .as_str()
            .unwrap_or_default();
        assert!(reason.contains("pdftoppm"), "{document}");
    }
    // Images still get theirs.
    let image = upload(&suite, "still.png", &png_of(300, 30));
    assert_thumbnail(&suite, &image, (256, 26));
    let log = suite.workers[0].log();
    assert_eq!(
        log.matches("pdftoppm").count(),
        1,
        "said once, at start, not for every PDF:\n{log}"
    );
}

#[test]
fn indexed_and_consumed_content_is_refused_once_its_file_changed_or_went() {
    let mut suite = Suite::start_with(
        "[[watch]]\npath = \"{root}/indexed\"\nmode = \"index\"\n",
        &["indexed/sub"],
    );
    let indexed = suite.root().join("indexed/sub/notes.txt");
    let original = b"indexed notes, version one\n".to_vec();
    std::fs::write(&indexed, &original).unwrap();
    let mut document_id = None;
    assert!(
        wait_until(DEADLINE, || {
            document_id = suite
                .files()
                .into_iter()
                .find(|file| file.path == indexed && file.state == FileState::Ingested)
                .and_then(|file| file.document_id);
            document_id.is_some()
        }),
        "the indexed file was not catalogued: {}",
        suite.logs()
    );
    let id = document_id.unwrap();
    let path = format!("/api/documents/{id}/content");
    let reply = request(&suite, "GET", &path, &[("Range", "bytes=8-12")]);
    assert_eq!(reply.status, 206);
    assert_eq!(reply.body, original[8..=12]);
    let whole = request(&suite, "GET", &path, &[]);
    assert_eq!(whole.body, original);
    assert_eq!(
        whole.header("content-type"),
        Some("text/plain; charset=utf-8")
    );

    // With the monitor stopped, the catalogue keeps describing version one while the file
    // changes under it: the web and sluicectl must notice on their own.
    suite
        .monitor
        .terminate(Duration::from_secs(30))
        .expect("stop the monitor");
    std::thread::sleep(Duration::from_millis(20));
    let changed = b"indexed notes, VERSION TWO\n".to_vec();
    assert_eq!(changed.len(), original.len());
    std::fs::write(&indexed, &changed).unwrap();
    let reply = request(&suite, "GET", &path, &[]);
    assert_eq!(
        reply.status,
        409,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("changed"), "{message}");
    assert!(!reply.body.windows(7).any(|window| window == b"VERSION"));
    let output = suite.sluicectl(&["docs", "get", &id.to_string(), "-o", "-"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");

    std::fs::remove_file(&indexed).unwrap();
    let reply = request(&suite, "GET", &path, &[]);
    assert_eq!(reply.status, 404);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("gone"), "{message}");
    let output = suite.sluicectl(&["docs", "get", &id.to_string(), "-o", "-"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");

    // A consumed document: its library file truncated, then removed.
    let consumed = upload(&suite, "ledger.txt", b"ledger line one\nledger line two\n");
    let id = consumed["id"].as_i64().unwrap();
    let library_path = consumed["library_path"].as_str().unwrap().to_owned();
    std::fs::write(&library_path, b"ledger").unwrap();
    let reply = request(&suite, "GET", &format!("/api/documents/{id}/content"), &[]);
    assert_eq!(reply.status, 409);
    std::fs::remove_file(&library_path).unwrap();
    let reply = request(&suite, "GET", &format!("/api/documents/{id}/content"), &[]);
    assert_eq!(reply.status, 404);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("gone")),
        "{}",
        reply.json()
    );
}

#[test]
fn sluicectl_docs_get_writes_atomically_refuses_to_overwrite_and_writes_to_stdout() {
    let suite = Suite::start();
    let content = b"quarterly ledger\n".repeat(5000);
    let document = upload(&suite, "ledger.txt", &content);
    let id = document["id"].as_i64().unwrap().to_string();
    let directory = tempfile::tempdir().unwrap();
    let target = directory.path().join("copy.txt");
    let target_text = target.to_str().unwrap();

    let output = suite.sluicectl(&["docs", "get", &id, "-o", target_text]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(std::fs::read(&target).unwrap(), content);

    // Not again over it without --force; the file is left as it was.
    std::fs::write(&target, b"mine").unwrap();
    let output = suite.sluicectl(&["docs", "get", &id, "-o", target_text]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--force"),
        "{output:?}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"mine");
    let output = suite.sluicectl(&["docs", "get", &id, "-o", target_text, "--force"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(std::fs::read(&target).unwrap(), content);
    // No temporary file is left beside it.
    assert_eq!(names_in(directory.path()), vec!["copy.txt".to_owned()]);

    let output = suite.sluicectl(&["docs", "get", &id, "-o", "-"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, content);

    let output = suite.sluicectl(&["docs", "get", "999999", "-o", "-"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
}

fn names_in(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
