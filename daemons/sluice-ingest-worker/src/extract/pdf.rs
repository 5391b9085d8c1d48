//! PDF: page count, the document information dictionary (title, author, dates), and the text
//! of each page, with lopdf.
//!
//! The text is what the page's content stream shows (`Tj`, `TJ`, `'`, `"`), decoded with each
//! font's encoding, a line break where the text position moves and a space where `TJ` leaves
//! a gap: enough for search, without pdftotext's layout analysis. The page tree is walked once
//! (lopdf's own `extract_text` walks it again for every page, which is quadratic in pages).
//! A page that cannot be decoded counts in `unreadable_pages` and has no text; the rest of
//! the document is still read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;

use lopdf::content::Content;
use lopdf::{Document, Encoding, Object, ObjectId};
use serde_json::{Map, Value, json};

use super::{Request, Sink, read_all};

/// Most bytes one page's content streams (or one font's encoding data) may decompress to:
/// pages of text are kilobytes; this stops a small stream that inflates to gigabytes.
const MAX_DECOMPRESSED_PAGE_BYTES: usize = 64 << 20;
/// A `TJ` adjustment below this (thousandths of a text space unit) is a gap between words.
const WORD_GAP: f32 = -200.0;
/// How far from the end of the file the `%%EOF` marker must be.
const EOF_MARKER_WINDOW: usize = 1024;

pub(super) fn extract<W: Write>(
    file: &File,
    request: &Request,
    sink: &mut Sink<W>,
) -> Result<Value, String> {
    let bytes = read_all(file)?;
    // lopdf rebuilds a damaged cross-reference table by scanning, which also "reads" a file
    // cut off in the middle and silently loses its end. A complete PDF ends with %%EOF.
    let tail = &bytes[bytes.len().saturating_sub(EOF_MARKER_WINDOW)..];
    if !tail.windows(5).any(|window| window == b"%%EOF") {
        return Err(
            "the PDF is truncated or damaged: it does not end with the %%EOF marker".into(),
        );
    }
    let document =
        Document::load_mem(&bytes).map_err(|error| format!("not a readable PDF: {error}"))?;
    drop(bytes);
    // lopdf tries the empty user password itself; a document still encrypted needs another.
    if document.is_encrypted() {
        return Err("the PDF is encrypted with a password; its text cannot be read".into());
    }
    let pages = document.get_pages();
    if pages.len() > request.max_pages as usize {
        return Err(format!(
            "the PDF has {} pages, more than [ingest] max_pages ({})",
            pages.len(),
            request.max_pages
        ));
    }
    let mut metadata = information(&document);
    metadata.insert("pages".into(), json!(pages.len()));
    if document.was_encrypted() {
        metadata.insert("encrypted".into(), json!(true));
    }
    let mut unreadable = 0u32;
    for (number, page_id) in pages {
        let text = match page_text(&document, page_id) {
            Ok(text) => text,
            Err(_) => {
                unreadable += 1;
                String::new()
            }
        };
        sink.page(number, text)?;
    }
    if unreadable > 0 {
        metadata.insert("unreadable_pages".into(), json!(unreadable));
    }
    Ok(Value::Object(metadata))
}

/// Title, author, subject, creator, producer and the dates of the information dictionary.
fn information(document: &Document) -> Map<String, Value> {
    let mut metadata = Map::new();
    let Some(info) = document
        .trailer
        .get(b"Info")
        .ok()
        .and_then(|info| match info {
            Object::Reference(id) => document.get_dictionary(*id).ok(),
            Object::Dictionary(dictionary) => Some(dictionary),
            _ => None,
        })
    else {
        return metadata;
    };
    for (key, name) in [
        (&b"Title"[..], "title"),
        (b"Author", "author"),
        (b"Subject", "subject"),
        (b"Keywords", "keywords"),
        (b"Creator", "creator"),
        (b"Producer", "producer"),
    ] {
        if let Some(text) = info
            .get_deref(key, document)
            .ok()
            .and_then(|value| lopdf::decode_text_string(value).ok())
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())
        {
            metadata.insert(name.into(), json!(text));
        }
    }
    for (key, name) in [(&b"CreationDate"[..], "created"), (b"ModDate", "modified")] {
        if let Some(date) = info
            .get_deref(key, document)
            .ok()
            .and_then(|value| value.as_str().ok())
            .and_then(pdf_date)
        {
            metadata.insert(name.into(), json!(date));
        }
    }
    metadata
}

/// A PDF date (`D:YYYYMMDDHHmmSSOHH'mm'`, everything after the year optional) as RFC 3339;
/// `None` when it is not one.
fn pdf_date(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let text = text.strip_prefix("D:").unwrap_or(text);
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    if digits.len() < 4 {
        return None;
    }
    let field = |start: usize, default: u32| -> u32 {
        digits
            .get(start..start + 2)
            .and_then(|part| part.parse().ok())
            .unwrap_or(default)
    };
    let year: u32 = digits[..4].parse().ok()?;
    let (month, day) = (field(4, 1), field(6, 1));
    let (hour, minute, second) = (field(8, 0), field(10, 0), field(12, 0));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let rest = &text[digits.len()..];
    let zone = match rest.chars().next() {
        Some(sign @ ('+' | '-')) => {
            let numbers: Vec<u32> = rest[1..]
                .split(|character: char| !character.is_ascii_digit())
                .filter(|part| !part.is_empty())
                .filter_map(|part| part.parse().ok())
                .collect();
            format!(
                "{sign}{:02}:{:02}",
                numbers.first().copied().unwrap_or(0).min(23),
                numbers.get(1).copied().unwrap_or(0).min(59)
            )
        }
        _ => "Z".into(),
    };
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{:02}{zone}",
        second.min(59)
    ))
}

/// The text a page shows; an error when its content cannot be had at all.
fn page_text(document: &Document, page_id: ObjectId) -> Result<String, lopdf::Error> {
    let encodings: BTreeMap<Vec<u8>, Encoding<'_>> = document
        .get_page_fonts(page_id)?
        .into_iter()
        .filter_map(|(name, font)| {
            font.get_font_encoding_with_limit(document, MAX_DECOMPRESSED_PAGE_BYTES)
                .ok()
                .map(|encoding| (name, encoding))
        })
        .collect();
    let content = document.get_page_content_with_limit(page_id, MAX_DECOMPRESSED_PAGE_BYTES)?;
    let mut text = String::with_capacity(content.len() / 2);
    let mut encoding: Option<&Encoding<'_>> = None;
    for operation in Content::decode_iter(&content) {
        // A content stream broken halfway keeps the text before the break.
        let Ok(operation) = operation else { break };
        let operands = &operation.operands;
        match operation.operator.as_str() {
            "Tf" => {
                encoding = operands
                    .first()
                    .and_then(|name| name.as_name().ok())
                    .and_then(|name| encodings.get(name));
            }
            "Tj" => show(&mut text, encoding, operands.first()),
            "TJ" => {
                for item in operands
                    .first()
                    .and_then(|array| array.as_array().ok())
                    .into_iter()
                    .flatten()
                {
                    match item {
                        Object::Integer(gap) if (*gap as f32) < WORD_GAP => {
                            separate(&mut text, ' ')
                        }
                        Object::Real(gap) if *gap < WORD_GAP => separate(&mut text, ' '),
                        other => show(&mut text, encoding, Some(other)),
                    }
                }
            }
            "'" => {
                separate(&mut text, '\n');
                show(&mut text, encoding, operands.first());
            }
            "\"" => {
                separate(&mut text, '\n');
                show(&mut text, encoding, operands.get(2));
            }
            "T*" | "Td" | "TD" | "Tm" | "ET" => separate(&mut text, '\n'),
            _ => {}
        }
    }
    Ok(text)
}

fn show(text: &mut String, encoding: Option<&Encoding<'_>>, operand: Option<&Object>) {
    if let (Some(encoding), Some(Object::String(bytes, _))) = (encoding, operand) {
        // A string the font cannot decode is skipped, not the page.
        let _ = encoding.write_to_string(bytes, text);
    }
}

/// Ends the current word or line, once.
fn separate(text: &mut String, separator: char) {
    if !text.is_empty() && !text.ends_with(char::is_whitespace) {
        text.push(separator);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdf_dates_become_rfc3339() {
        assert_eq!(
            pdf_date(b"D:20231105143000+01'00'").as_deref(),
            Some("2023-11-05T14:30:00+01:00")
        );
        assert_eq!(pdf_date(b"D:1999").as_deref(), Some("1999-01-01T00:00:00Z"));
        assert_eq!(
            pdf_date(b"D:20240229235959Z").as_deref(),
            Some("2024-02-29T23:59:59Z")
        );
        assert_eq!(pdf_date(b"yesterday"), None);
        assert_eq!(pdf_date(b"D:20241301"), None);
    }
}
