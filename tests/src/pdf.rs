//! Deterministic PDF files for the tests and the benchmarks, written by hand (the format's
//! text subset is small): the same arguments always give the same bytes.

/// PDF number `file` of a corpus: `pages` pages of `words_per_page` words in Helvetica (a
/// standard font, nothing embedded), page `p` carrying the marker `tok<file>x<p>`. The words
/// come from a fixed list through a fixed generator, so every run has the same corpus.
pub fn pdf_of(file: usize, pages: usize, words_per_page: usize) -> Vec<u8> {
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
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (file as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut next_word = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        WORDS[(state % WORDS.len() as u64) as usize]
    };
    let mut objects: Vec<String> = vec![
        "<< /Type /Catalog /Pages 2 0 R >>".into(),
        String::new(), // the page tree, once the pages are known
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".into(),
    ];
    let mut page_ids = Vec::new();
    for page in 0..pages {
        let marker = words_per_page / 2;
        let mut lines = Vec::new();
        let mut line = Vec::new();
        for word in 0..words_per_page {
            if word == marker {
                line.push(format!("tok{file}x{page}"));
            } else {
                line.push(next_word().to_owned());
            }
            if line.len() == 16 {
                lines.push(line.join(" "));
                line.clear();
            }
        }
        if !line.is_empty() {
            lines.push(line.join(" "));
        }
        let mut content = String::from("BT /F1 5 Tf 6 TL 30 810 Td\n");
        for text in &lines {
            content.push_str(&format!("({text}) '\n"));
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
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    pdf
}
