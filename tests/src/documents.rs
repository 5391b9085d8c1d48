//! Documents the tests and the benchmark make themselves: text PDFs (standard fonts, one
//! marker word a page, optional document information), the hostile ones (truncated, encrypted,
//! thousands of pages), images (a PNG, a JPEG with EXIF, a decompression-bomb PNG) and a zip
//! bomb.

use std::io::{Cursor, Write};

/// A PDF of `pages`, each page's text in Helvetica (a standard font, nothing embedded) at 5
/// points, 16 words a line; `info` is the document information dictionary (key, value), e.g.
/// `("Title", "Report")`, `("CreationDate", "D:20240102030405Z")`.
pub fn text_pdf(pages: &[String], info: &[(&str, &str)]) -> Vec<u8> {
    pdf_with(pages, info, None)
}

/// [`text_pdf`] with an `/Encrypt` dictionary of the standard security handler whose user
/// password is not empty: a reader without the password sees only ciphertext.
pub fn encrypted_pdf(pages: &[String]) -> Vec<u8> {
    pdf_with(pages, &[], Some(()))
}

/// The words of a page: `words` words from a fixed list through a fixed generator seeded with
/// `seed`, with `marker` in the middle.
pub fn page_words(seed: u64, words: usize, marker: &str) -> String {
    const WORDS: [&str; 32] = [
        "river",
        "sluice",
        "ledger",
        "account",
        "harbour",
        "quarterly",
        "figure",
        "report",
        "north",
        "delivery",
        "invoice",
        "machine",
        "gravel",
        "summary",
        "window",
        "garden",
        "station",
        "paper",
        "column",
        "number",
        "signal",
        "market",
        "winter",
        "copper",
        "letter",
        "orange",
        "bridge",
        "filter",
        "basket",
        "engine",
        "forest",
        "silver",
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut text = Vec::with_capacity(words);
    for index in 0..words {
        if index == words / 2 {
            text.push(marker.to_owned());
            continue;
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push(WORDS[(state % WORDS.len() as u64) as usize].to_owned());
    }
    text.join(" ")
}

fn pdf_with(pages: &[String], info: &[(&str, &str)], encrypt: Option<()>) -> Vec<u8> {
    let mut objects: Vec<String> = vec![
        "<< /Type /Catalog /Pages 2 0 R >>".into(),
        String::new(), // the page tree, once the pages are known
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".into(),
    ];
    let mut page_ids = Vec::with_capacity(pages.len());
    for text in pages {
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut content = String::from("BT /F1 5 Tf 6 TL 30 810 Td\n");
        for line in words.chunks(16) {
            content.push_str(&format!("({}) '\n", escape(&line.join(" "))));
        }
        content.push_str("ET\n");
        objects.push(format!(
            "<< /Length {} >>\nstream\n{content}endstream",
            content.len()
        ));
        let content_id = objects.len();
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] \
             /Resources << /Font << /F1 3 0 R >> >> /Contents {content_id} 0 R >>"
        ));
        page_ids.push(objects.len());
    }
    let kids: Vec<String> = page_ids.iter().map(|id| format!("{id} 0 R")).collect();
    objects[1] = format!(
        "<< /Type /Pages /Kids [{}] /Count {} >>",
        kids.join(" "),
        page_ids.len()
    );
    let mut trailer_extra = String::new();
    if !info.is_empty() {
        let entries: Vec<String> = info
            .iter()
            .map(|(key, value)| format!("/{key} ({})", escape(value)))
            .collect();
        objects.push(format!("<< {} >>", entries.join(" ")));
        trailer_extra.push_str(&format!(" /Info {} 0 R", objects.len()));
    }
    if encrypt.is_some() {
        // RC4 40-bit (V1 R2) with O and U values that match no empty user password.
        let o = "4a".repeat(32);
        let u = "b7".repeat(32);
        objects.push(format!(
            "<< /Filter /Standard /V 1 /R 2 /O <{o}> /U <{u}> /P -3904 >>"
        ));
        trailer_extra.push_str(&format!(
            " /Encrypt {} 0 R /ID [<{id}> <{id}>]",
            objects.len(),
            id = "0123456789abcdef".repeat(2)
        ));
    }
    let mut pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::with_capacity(objects.len());
    for (index, object) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", index + 1).as_bytes());
    }
    let xref = pdf.len();
    pdf.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        pdf.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    pdf.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R{trailer_extra} >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    pdf
}

/// A PDF literal string's body: backslash, parentheses escaped.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('(', "\\(")
        .replace(')', "\\)")
}

/// A small real PNG, `width` × `height`, a colour gradient.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 5) as u8, 128])
    });
    let mut bytes = Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .expect("encode PNG");
    bytes.into_inner()
}

/// A real JPEG with EXIF: date taken, camera make and model, orientation.
pub fn jpeg_with_exif(
    width: u32,
    height: u32,
    date_taken: &str,
    make: &str,
    model: &str,
    orientation: u16,
) -> Vec<u8> {
    use image::ImageEncoder;
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 3) as u8, 64])
    });
    let mut bytes = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 80);
    encoder
        .set_exif_metadata(exif_block(date_taken, make, model, orientation))
        .expect("the JPEG encoder takes EXIF");
    encoder
        .write_image(
            image.as_raw(),
            width,
            height,
            image::ExtendedColorType::Rgb8,
        )
        .expect("encode JPEG");
    bytes
}

/// An EXIF block (a little-endian TIFF structure): IFD0 with Make, Model, Orientation and a
/// pointer to the Exif IFD, which holds DateTimeOriginal.
fn exif_block(date_taken: &str, make: &str, model: &str, orientation: u16) -> Vec<u8> {
    let ascii = |text: &str| {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        bytes
    };
    let (make, model, date) = (ascii(make), ascii(model), ascii(date_taken));
    // Header (8) + IFD0 (2 + 4 × 12 + 4) + Exif IFD (2 + 12 + 4), then the values.
    let ifd0 = 8u32;
    let exif_ifd = ifd0 + 2 + 4 * 12 + 4;
    let mut data_at = exif_ifd + 2 + 12 + 4;
    let mut values = Vec::new();
    // A value of at most four bytes sits in the entry itself; a longer one is pointed to.
    let mut place = |bytes: &[u8]| {
        if bytes.len() <= 4 {
            let mut inline = [0u8; 4];
            inline[..bytes.len()].copy_from_slice(bytes);
            return u32::from_le_bytes(inline);
        }
        let at = data_at;
        values.extend_from_slice(bytes);
        data_at += bytes.len() as u32;
        at
    };
    let make_at = place(&make);
    let model_at = place(&model);
    let date_at = place(&date);
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&ifd0.to_le_bytes());
    let entry = |tiff: &mut Vec<u8>, tag: u16, kind: u16, count: u32, value: u32| {
        tiff.extend_from_slice(&tag.to_le_bytes());
        tiff.extend_from_slice(&kind.to_le_bytes());
        tiff.extend_from_slice(&count.to_le_bytes());
        tiff.extend_from_slice(&value.to_le_bytes());
    };
    tiff.extend_from_slice(&4u16.to_le_bytes());
    entry(&mut tiff, 0x010f, 2, make.len() as u32, make_at);
    entry(&mut tiff, 0x0110, 2, model.len() as u32, model_at);
    entry(&mut tiff, 0x0112, 3, 1, u32::from(orientation));
    entry(&mut tiff, 0x8769, 4, 1, exif_ifd);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    entry(&mut tiff, 0x9003, 2, date.len() as u32, date_at);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff.extend_from_slice(&values);
    tiff
}

/// A real decompression bomb: a valid grayscale PNG of `side` × `side` black pixels, a few
/// hundred kilobytes that decode to `side²` bytes.
pub fn png_bomb(side: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, side, side);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().expect("PNG header");
        let mut stream = writer.stream_writer().expect("PNG stream");
        let row = vec![0u8; side as usize];
        for _ in 0..side {
            stream.write_all(&row).expect("PNG row");
        }
        stream.finish().expect("PNG end");
    }
    bytes
}

/// A real zip bomb: one entry of `expanded` zero bytes, deflated at the best ratio (about a
/// thousandth of it).
pub fn zip_bomb(expanded: u64) -> Vec<u8> {
    let mut archive = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(9))
        .large_file(expanded >= u32::MAX as u64);
    archive.start_file("zeros.bin", options).expect("zip entry");
    let chunk = vec![0u8; 1 << 20];
    let mut left = expanded;
    while left > 0 {
        let now = left.min(chunk.len() as u64) as usize;
        archive.write_all(&chunk[..now]).expect("zip data");
        left -= now as u64;
    }
    archive.finish().expect("zip end").into_inner()
}

/// A small ordinary zip: a few text entries in a folder.
pub fn small_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut archive = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        archive.start_file(*name, options).expect("zip entry");
        archive.write_all(bytes).expect("zip data");
    }
    archive.finish().expect("zip end").into_inner()
}

/// A PNG of `text` (capital letters and spaces from [`GLYPHS`]) in black on white, drawn with
/// a 5×7 bitmap font, each font pixel a `scale`×`scale` square: a picture of words for the
/// OCR test, made without any font file of the machine's.
pub fn text_png(text: &str, scale: u32) -> Vec<u8> {
    let margin = 6 * scale;
    let advance = 6 * scale;
    let width = 2 * margin + advance * text.chars().count() as u32;
    let height = 2 * margin + 7 * scale;
    let mut image = image::GrayImage::from_pixel(width, height, image::Luma([255]));
    for (index, character) in text.chars().enumerate() {
        if character == ' ' {
            continue;
        }
        let rows = GLYPHS
            .iter()
            .find(|(glyph, _)| *glyph == character)
            .unwrap_or_else(|| panic!("no glyph for {character:?}"))
            .1;
        for (row, bits) in rows.iter().enumerate() {
            for column in 0..5u32 {
                if bits & (0b10000 >> column) == 0 {
                    continue;
                }
                let left = margin + advance * index as u32 + column * scale;
                let top = margin + row as u32 * scale;
                for y in top..top + scale {
                    for x in left..left + scale {
                        image.put_pixel(x, y, image::Luma([0]));
                    }
                }
            }
        }
    }
    let mut bytes = Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .expect("encode PNG");
    bytes.into_inner()
}

/// The letters [`text_png`] can draw: 7 rows of 5 bits each, the top row first.
pub const GLYPHS: &[(char, [u8; 7])] = &[
    (
        'A',
        [
            0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001,
        ],
    ),
    (
        'C',
        [
            0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110,
        ],
    ),
    (
        'D',
        [
            0b11110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11110,
        ],
    ),
    (
        'E',
        [
            0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111,
        ],
    ),
    (
        'H',
        [
            0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001,
        ],
    ),
    (
        'I',
        [
            0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
    ),
    (
        'K',
        [
            0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001,
        ],
    ),
    (
        'L',
        [
            0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111,
        ],
    ),
    (
        'M',
        [
            0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001,
        ],
    ),
    (
        'N',
        [
            0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0b10001,
        ],
    ),
    (
        'O',
        [
            0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
        ],
    ),
    (
        'P',
        [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000,
        ],
    ),
    (
        'R',
        [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001,
        ],
    ),
    (
        'S',
        [
            0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110,
        ],
    ),
    (
        'T',
        [
            0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100,
        ],
    ),
    (
        'U',
        [
            0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
        ],
    ),
    (
        'W',
        [
            0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010,
        ],
    ),
];
