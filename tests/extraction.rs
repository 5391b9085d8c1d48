//! Built-in extraction and page-level search (issue 10), with the real daemons: a PDF, an
//! image, HTML and an archive uploaded over HTTP become documents with their metadata and
//! text; a PDF's pages are steps on its job's stream and hits of their own in a search; hostile
//! files (truncated, encrypted, 10,000 pages, a zip bomb, a decompression-bomb PNG) fail their
//! job with a clear error while the workers keep ingesting; a query is only ever words.

use std::io::Read;

use serde_json::Value;
use sluice_tests::documents::{
    encrypted_pdf, jpeg_with_exif, page_words, png, png_bomb, small_zip, text_pdf, zip_bomb,
};

use crate::support::{Suite, WEB_READ_TOKEN, http_agent, upload_waiting};

/// Uploads `bytes` as `name` and waits for its job; returns (status, the upload's job).
fn upload(suite: &Suite, name: &str, bytes: &[u8]) -> (u16, Value) {
    let (status, body) = upload_waiting(suite, name, bytes, "120s");
    (status, body["uploads"][0]["job"].clone())
}

/// The events of a finished job's stream (NDJSON), in order.
fn job_events(suite: &Suite, job_id: i64) -> Vec<Value> {
    let response = http_agent()
        .get(format!("{}/api/jobs/{job_id}/events", suite.web.origin))
        .header("Authorization", format!("Bearer {WEB_READ_TOKEN}"))
        .header("Accept", "application/x-ndjson")
        .call()
        .expect("job events");
    let mut text = String::new();
    response
        .into_body()
        .into_reader()
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

fn search(suite: &Suite, query: &str) -> (u16, Value) {
    let encoded: String = query
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect();
    suite.get(&format!("/api/documents?q={encoded}"))
}

/// Asserts a job succeeded and returns its document.
fn succeeded(status: u16, job: &Value, suite: &Suite) -> Value {
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "succeeded", "{job}\n{}", suite.logs());
    job["document"].clone()
}

#[test]
fn a_multi_page_pdf_becomes_a_document_with_pages_metadata_steps_and_search_hits() {
    let suite = Suite::start();
    let pages: Vec<String> = (1..=4)
        .map(|page| page_words(page, 300, &format!("quillmark{page}")))
        .collect();
    let pdf = text_pdf(
        &pages,
        &[
            ("Title", "Harbour (quarterly) report"),
            ("Author", "R. Fisher"),
            ("CreationDate", "D:20240102030405+01'00'"),
            ("ModDate", "D:20240203040506Z"),
        ],
    );
    let (status, job) = upload(&suite, "harbour.pdf", &pdf);
    let document = succeeded(status, &job, &suite);
    assert_eq!(document["mime"], "application/pdf");
    let metadata = &document["metadata"];
    assert_eq!(metadata["pages"], 4, "{metadata}");
    assert_eq!(metadata["title"], "Harbour (quarterly) report");
    assert_eq!(metadata["author"], "R. Fisher");
    assert_eq!(metadata["created"], "2024-01-02T03:04:05+01:00");
    assert_eq!(metadata["modified"], "2024-02-03T04:05:06Z");

    // One step per page on the job's stream, in page order, after the analysis.
    let events = job_events(&suite, job["id"].as_i64().unwrap());
    let steps: Vec<&Value> = events
        .iter()
        .filter(|event| event["event"] == "step")
        .map(|event| &event["step"])
        .collect();
    let names: Vec<&str> = steps
        .iter()
        .map(|step| step["step"].as_str().unwrap())
        .collect();
    // Analysed first, then the pages, then what filing recorded (the thumbnail is a job of
    // its own, after the ingest).
    assert_eq!(
        names[..6],
        ["analysed", "page", "page", "page", "page", "filed"],
        "{events:?}"
    );
    assert!(!names[6..].contains(&"page"), "{names:?}");
    let numbers: Vec<i64> = steps
        .iter()
        .filter(|step| step["step"] == "page")
        .map(|step| step["page"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4]);

    // A page's marker finds that document and that page, with the marker highlighted.
    for page in 1..=4 {
        let (status, hits) = search(&suite, &format!("quillmark{page}"));
        assert_eq!(status, 200, "{hits}");
        let items = hits["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{hits}");
        assert_eq!(items[0]["id"], document["id"]);
        assert_eq!(items[0]["page"], page);
        let snippet = items[0]["snippet"].as_str().unwrap();
        assert!(snippet.contains(&format!("[quillmark{page}]")), "{snippet}");
    }
    // A prefix finds every page, best first, a page of hits at a time.
    let (status, first) = suite.get("/api/documents?q=quillmark*&limit=3");
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    let cursor = first["next_cursor"].as_i64().expect("a next page");
    let (_, rest) = suite.get(&format!(
        "/api/documents?q=quillmark*&limit=3&cursor={cursor}"
    ));
    assert_eq!(rest["items"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest["next_cursor"], Value::Null);

    // sluicectl finds the same page.
    let output = suite.sluicectl(&["--json", "docs", "search", "quillmark3"]);
    assert!(output.status.success(), "{output:?}");
    let hits: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(hits["items"][0]["page"], 3, "{hits}");
    let output = suite.sluicectl(&["docs", "search", "quillmark2"]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("harbour.pdf") && table.contains("[quillmark2]"),
        "{table}"
    );
}

#[test]
fn images_html_text_and_archives_are_described() {
    let suite = Suite::start();
    let (status, job) = upload(
        &suite,
        "camera.jpg",
        &jpeg_with_exif(64, 48, "2024:06:01 12:30:05", "Nikon", "Z 6", 6),
    );
    let document = succeeded(status, &job, &suite);
    let metadata = &document["metadata"];
    assert_eq!(document["mime"], "image/jpeg");
    assert_eq!(
        (metadata["width"].clone(), metadata["height"].clone()),
        (64.into(), 48.into())
    );
    assert_eq!(
        metadata["exif"]["date_taken"], "2024-06-01T12:30:05",
        "{metadata}"
    );
    assert_eq!(metadata["exif"]["camera_make"], "Nikon");
    assert_eq!(metadata["exif"]["camera_model"], "Z 6");
    assert_eq!(metadata["exif"]["orientation"], 6);

    let (status, job) = upload(&suite, "plain.png", &png(30, 20));
    let document = succeeded(status, &job, &suite);
    assert_eq!(document["metadata"]["width"], 30);
    assert_eq!(document["metadata"]["exif"], Value::Null);

    let html = b"<!DOCTYPE html><html><head><title>Lantern notes</title>\
        <script>var hiddenscriptword = 1;</script></head>\
        <body><p>The <b>glowworm</b> &amp; the moth</p></body></html>";
    let (status, job) = upload(&suite, "notes.html", html);
    let document = succeeded(status, &job, &suite);
    assert_eq!(document["mime"], "text/html");
    assert_eq!(document["metadata"]["title"], "Lantern notes");
    let (_, hits) = search(&suite, "glowworm moth");
    assert_eq!(hits["items"][0]["id"], document["id"], "{hits}");
    assert_eq!(hits["items"][0]["page"], Value::Null);
    let (_, hits) = search(&suite, "hiddenscriptword");
    assert_eq!(hits["items"].as_array().unwrap().len(), 0, "{hits}");
    let (_, hits) = search(&suite, "b");
    assert!(
        !hits["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|hit| hit["id"] == document["id"]),
        "markup is not text: {hits}"
    );

    let (status, job) = upload(&suite, "README.md", b"# Title\n\nsome *markdown* text\n");
    let document = succeeded(status, &job, &suite);
    assert_eq!(document["mime"], "text/markdown");

    let archive = small_zip(&[("docs/a.txt", b"alpha"), ("docs/b.txt", b"beta beta")]);
    let (status, job) = upload(&suite, "bundle.zip", &archive);
    let document = succeeded(status, &job, &suite);
    let listing = &document["metadata"]["archive"];
    assert_eq!(listing["format"], "zip", "{document}");
    assert_eq!(listing["files"], 2);
    assert_eq!(listing["listing"][1]["name"], "docs/b.txt");
    assert_eq!(listing["listing"][1]["size"], 9);
}

#[test]
fn hostile_files_fail_their_job_clearly_and_the_next_file_is_ingested() {
    let suite = Suite::start();
    let good_pages: Vec<String> = (1..=2)
        .map(|page| page_words(page, 50, &format!("survivor{page}")))
        .collect();
    let good = text_pdf(&good_pages, &[]);
    let truncated = good[..good.len() * 2 / 3].to_vec();
    let many_pages: Vec<String> = (0..10_000).map(|page| format!("page {page}")).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated.pdf", truncated, "truncated"),
        (
            "locked.pdf",
            encrypted_pdf(&good_pages),
            "encrypted with a password",
        ),
        (
            "huge.pdf",
            text_pdf(&many_pages, &[]),
            "has 10000 pages, more than [ingest] max_pages (5000)",
        ),
        ("bomb.zip", zip_bomb(3 << 29), "archive bomb"),
        // 196 megapixels in a few hundred kilobytes: refused from its header, never decoded.
        (
            "bomb.png",
            png_bomb(14_000),
            "image bomb: the image declares 14000×14000 pixels (196.0 megapixels), more than \
             the limit of 179.0 megapixels",
        ),
    ];
    for (index, (name, bytes, expected)) in cases.into_iter().enumerate() {
        let (status, job) = upload(&suite, name, &bytes);
        assert_eq!(status, 200, "{name}: {job}");
        assert_eq!(job["state"], "failed", "{name}: {job}\n{}", suite.logs());
        let error = job["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{name}: {error}");
        // The workers keep serving: a good file right after is ingested and searchable.
        let mut next = good_pages.clone();
        next.push(format!("after{index}"));
        let (status, job) = upload(&suite, &format!("after-{index}.pdf"), &text_pdf(&next, &[]));
        succeeded(status, &job, &suite);
        let (_, hits) = search(&suite, &format!("after{index}"));
        assert_eq!(hits["items"][0]["page"], 3, "{hits}");
    }
    for worker in &suite.workers {
        assert!(!worker.log().contains("panicked"), "{}", suite.logs());
    }
}

#[test]
fn a_query_is_only_words_whatever_it_contains() {
    let suite = Suite::start();
    let (status, job) = upload(
        &suite,
        "secret.txt",
        b"the topsecret-f2-marker sits near the body: of the text\n",
    );
    let document = succeeded(status, &job, &suite);
    // Each of these is a plain search for its words: 200, never a 500 or an FTS5 error.
    for (query, found) in [
        ("topsecret-f2-marker", true),
        ("\"topsecret f2", true),
        ("NEAR( topsecret", true),
        ("body:", true),
        ("nosuch:column", false),
        ("top*", true),
        ("sits OR nothing", false),
    ] {
        let (status, hits) = search(&suite, query);
        assert_eq!(status, 200, "{query:?}: {hits}");
        let ids: Vec<&Value> = hits["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|hit| &hit["id"])
            .collect();
        assert_eq!(ids.contains(&&document["id"]), found, "{query:?}: {hits}");
    }
    // Queries with no word in them, or too long: 400 with the policy's code.
    for query in ["*", "\"\"", "\0", &"x".repeat(10_000)] {
        let (status, body) = search(&suite, query);
        assert_eq!(status, 400, "{query:?}: {body}");
        assert_eq!(body["error"]["reason"], "invalid_query", "{body}");
    }
    let output = suite.sluicectl(&["docs", "search", "*"]);
    assert_eq!(output.status.code(), Some(4), "{output:?}");
}
