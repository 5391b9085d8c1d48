//! The PDF corpus of W5 and of the content tests: deterministic text PDFs made with
//! [`crate::documents`] (the one PDF writer of the harness), so the same arguments always give
//! the same bytes.

use crate::documents::{page_words, text_pdf};

/// PDF number `file` of a corpus: `pages` pages of `words_per_page` words, page `p` carrying
/// the marker `tok<file>x<p>`.
pub fn pdf_of(file: usize, pages: usize, words_per_page: usize) -> Vec<u8> {
    let texts: Vec<String> = (0..pages)
        .map(|page| {
            page_words(
                (file * 1_000_003 + page) as u64,
                words_per_page,
                &format!("tok{file}x{page}"),
            )
        })
        .collect();
    text_pdf(&texts, &[])
}
