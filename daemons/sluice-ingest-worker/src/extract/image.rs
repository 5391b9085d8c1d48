//! Images: dimensions from the header (imagesize: nothing is decoded) and EXIF (kamadak-exif:
//! date taken, camera, orientation). Nothing here decodes pixels, so a decompression bomb
//! costs only its header, and the header is enough to refuse one: an image that declares
//! more than [`MAX_IMAGE_PIXELS`] fails its job, so no document, thumbnail job or processor
//! ever decodes it. Images within that bound but beyond what the thumbnailer decodes in
//! process (`thumbnails::MAX_DECODED_BYTES`) become documents without a thumbnail.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};

use exif::{In, Tag, Value as ExifValue};
use serde_json::{Map, Value, json};

/// The most pixels an image may declare: Pillow's threshold for its `DecompressionBombError`
/// (twice its warning of 89,478,485 pixels), which is what most image software refuses.
/// Above every camera sold (the largest make about 150 megapixels); a bomb of a few hundred
/// kilobytes declares far more (14,000 × 14,000 is 196 megapixels).
pub const MAX_IMAGE_PIXELS: u64 = 178_956_970;

pub(super) fn extract(file: &File) -> Result<Value, String> {
    let mut reader = BufReader::new(file);
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|error| format!("cannot read the image: {error}"))?;
    let size = imagesize::reader_size(&mut reader)
        .map_err(|error| format!("not a readable image: {error}"))?;
    refuse_a_bomb(size.width as u64, size.height as u64)?;
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

/// An error naming the limit when `width` × `height` is more than [`MAX_IMAGE_PIXELS`].
fn refuse_a_bomb(width: u64, height: u64) -> Result<(), String> {
    let pixels = width.saturating_mul(height);
    if pixels <= MAX_IMAGE_PIXELS {
        return Ok(());
    }
    Err(format!(
        "image bomb: the image declares {width}×{height} pixels ({} megapixels), more than \
         the limit of {} megapixels; it is refused without decoding it",
        megapixels(pixels),
        megapixels(MAX_IMAGE_PIXELS)
    ))
}

/// Pixels as megapixels with one decimal ("196.0").
fn megapixels(pixels: u64) -> String {
    format!("{:.1}", pixels as f64 / 1e6)
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
    fn an_image_declaring_more_pixels_than_the_limit_is_refused_by_its_header() {
        assert_eq!(refuse_a_bomb(12_000, 12_000), Ok(()));
        assert_eq!(refuse_a_bomb(MAX_IMAGE_PIXELS, 1), Ok(()));
        assert_eq!(
            refuse_a_bomb(14_000, 14_000),
            Err(
                "image bomb: the image declares 14000×14000 pixels (196.0 megapixels), more \
                 than the limit of 179.0 megapixels; it is refused without decoding it"
                    .to_owned()
            )
        );
        assert!(refuse_a_bomb(u64::MAX, u64::MAX).is_err());
    }

    #[test]
    fn exif_dates_become_iso_local_times() {
        assert_eq!(
            exif_date("2024:06:01 12:30:05").as_deref(),
            Some("2024-06-01T12:30:05")
        );
        assert_eq!(exif_date("    :  :     :  :  "), None);
    }
}
