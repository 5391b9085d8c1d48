//! Images: dimensions from the header (imagesize: nothing is decoded) and EXIF (kamadak-exif:
//! date taken, camera, orientation). Nothing here decodes pixels, so a decompression bomb
//! costs only its header; the thumbnailer, which decodes, bounds that itself and records why a
//! bomb has no thumbnail (`thumbnails`).

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};

use exif::{In, Tag, Value as ExifValue};
use serde_json::{Map, Value, json};

pub(super) fn extract(file: &File) -> Result<Value, String> {
    let mut reader = BufReader::new(file);
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|error| format!("cannot read the image: {error}"))?;
    let size = imagesize::reader_size(&mut reader)
        .map_err(|error| format!("not a readable image: {error}"))?;
    let mut metadata = Map::new();
    metadata.insert("width".into(), json!(size.width));
    metadata.insert("height".into(), json!(size.height));
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|error| format!("cannot read the image: {error}"))?;
    // Most images have no EXIF, and a damaged EXIF block is no reason to refuse the image.
    if let Ok(exif) = exif::Reader::new().read_from_container(&mut reader) {
        let mut found = Map::new();
        for (tag, name) in [
            (Tag::DateTimeOriginal, "date_taken"),
            (Tag::Make, "camera_make"),
            (Tag::Model, "camera_model"),
        ] {
            if let Some(text) = exif
                .get_field(tag, In::PRIMARY)
                .and_then(|field| ascii(&field.value))
            {
                let text = if tag == Tag::DateTimeOriginal {
                    exif_date(&text).unwrap_or(text)
                } else {
                    text
                };
                found.insert(name.into(), json!(text));
            }
        }
        if let Some(orientation) = exif
            .get_field(Tag::Orientation, In::PRIMARY)
            .and_then(|field| field.value.get_uint(0))
        {
            found.insert("orientation".into(), json!(orientation));
        }
        if !found.is_empty() {
            metadata.insert("exif".into(), Value::Object(found));
        }
    }
    Ok(Value::Object(metadata))
}

/// The first string of an ASCII field, trimmed; `None` when empty or not ASCII.
fn ascii(value: &ExifValue) -> Option<String> {
    match value {
        ExifValue::Ascii(strings) => strings
            .first()
            .map(|bytes| String::from_utf8_lossy(bytes).trim().to_owned())
            .filter(|text| !text.is_empty()),
        _ => None,
    }
}

/// EXIF's `YYYY:MM:DD HH:MM:SS` (local time, no zone) as `YYYY-MM-DDTHH:MM:SS`.
fn exif_date(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() >= 19
        && bytes[4] == b':'
        && bytes[7] == b':'
        && bytes[10] == b' '
        && [0..4, 5..7, 8..10, 11..13, 14..16, 17..19]
            .iter()
            .all(|range| bytes[range.clone()].iter().all(u8::is_ascii_digit));
    shape_ok.then(|| {
        format!(
            "{}-{}-{}T{}",
            &text[0..4],
            &text[5..7],
            &text[8..10],
            &text[11..19]
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exif_dates_become_iso_local_times() {
        assert_eq!(
            exif_date("2024:06:01 12:30:05").as_deref(),
            Some("2024-06-01T12:30:05")
        );
        assert_eq!(exif_date("    :  :     :  :  "), None);
    }
}
