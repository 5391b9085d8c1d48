//! What a search query may be, and its one translation into SQLite FTS5 syntax.
//!
//! A query is what a person types: words, "quoted phrases", and a `*` at the end of a word
//! for "starting with". Nothing else has a meaning: FTS5's operators (`AND`, `OR`, `NOT`,
//! `NEAR(…)`), column filters (`body:`), `^`, `+` and parentheses are words or separators like
//! any other text. Every term is written out as an FTS5 string (`"…"`, inner quotes doubled),
//! which FTS5 tokenizes exactly as it tokenized the indexed text, so `topsecret-f2-marker`
//! becomes the phrase `"topsecret-f2-marker"` (the three tokens next to each other) instead of
//! a filter on a column `f2`. Terms are joined with spaces, FTS5's implicit AND.
//!
//! [`SearchQuery`] can only be made here, and the store takes nothing else, so no text from
//! outside reaches `MATCH` untranslated.

use super::PolicyError;

/// Longest query accepted, in bytes.
pub const MAX_SEARCH_QUERY_BYTES: usize = 1024;
/// Most terms (words and phrases) in one query; each is one more index lookup.
pub const MAX_SEARCH_TERMS: usize = 32;

/// A checked query and its FTS5 form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    text: String,
    fts5: String,
}

impl SearchQuery {
    /// The query as the person typed it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The FTS5 `MATCH` expression: only quoted strings, `*` after a string, and spaces.
    pub fn fts5(&self) -> &str {
        &self.fts5
    }
}

/// Checks a query and translates it (see the module documentation). Refused with
/// `invalid_query`: an empty query, one with no word in it (`*`, `"--"`), one longer than
/// [`MAX_SEARCH_QUERY_BYTES`] or with more than [`MAX_SEARCH_TERMS`] terms. Control characters
/// (NUL included) separate words like spaces.
pub fn parse_search_query(text: &str) -> Result<SearchQuery, PolicyError> {
    if text.len() > MAX_SEARCH_QUERY_BYTES {
        return Err(PolicyError::InvalidQuery(format!(
            "a search query is at most {MAX_SEARCH_QUERY_BYTES} bytes; this one is {}",
            text.len()
        )));
    }
    let mut terms: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(|character: char| !is_separator(character)) {
        rest = &rest[start..];
        let (term, prefix, after) = if let Some(quoted) = rest.strip_prefix('"') {
            // A phrase runs to the next quote; an unbalanced one to the end of the query.
            match quoted.find('"') {
                Some(end) => (&quoted[..end], false, &quoted[end + 1..]),
                None => (quoted, false, ""),
            }
        } else {
            let end = rest
                .find(|character: char| is_separator(character) || character == '"')
                .unwrap_or(rest.len());
            let word = &rest[..end];
            match word.strip_suffix('*') {
                Some(stem) => (stem.trim_end_matches('*'), true, &rest[end..]),
                None => (word, false, &rest[end..]),
            }
        };
        rest = after;
        // A term without a letter or digit has no token for FTS5 to look up.
        if !term.chars().any(char::is_alphanumeric) {
            continue;
        }
        let cleaned = super::controls_as_spaces(term, false);
        let mut fts5 = format!("\"{}\"", cleaned.replace('"', "\"\""));
        if prefix {
            fts5.push('*');
        }
        terms.push(fts5);
        if terms.len() > MAX_SEARCH_TERMS {
            return Err(PolicyError::InvalidQuery(format!(
                "a search query has at most {MAX_SEARCH_TERMS} words and phrases"
            )));
        }
    }
    if terms.is_empty() {
        return Err(PolicyError::InvalidQuery(format!(
            "search query {:?} has no word to look for",
            super::truncate_to_bytes(text, 80)
        )));
    }
    Ok(SearchQuery {
        text: text.to_owned(),
        fts5: terms.join(" "),
    })
}

fn is_separator(character: char) -> bool {
    character.is_whitespace() || character.is_control()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fts5(text: &str) -> String {
        parse_search_query(text).unwrap().fts5().to_owned()
    }

    fn refused(text: &str) -> String {
        match parse_search_query(text) {
            Err(error) => {
                assert_eq!(error.code(), "invalid_query", "{error}");
                error.to_string()
            }
            Ok(query) => panic!("{text:?} was accepted as {:?}", query.fts5()),
        }
    }

    #[test]
    fn words_phrases_and_a_prefix_become_quoted_strings() {
        assert_eq!(fts5("river ledger"), r#""river" "ledger""#);
        assert_eq!(
            fts5("  \"north winter\"  copper"),
            r#""north winter" "copper""#
        );
        assert_eq!(fts5("quart*"), r#""quart"*"#);
        assert_eq!(fts5("quart**"), r#""quart"*"#);
        // A hyphenated word is one phrase of its tokens, not a column filter.
        assert_eq!(fts5("topsecret-f2-marker"), r#""topsecret-f2-marker""#);
    }

    #[test]
    fn fts5_syntax_is_only_text() {
        assert_eq!(fts5("NEAR(a b)"), r#""NEAR(a" "b)""#);
        assert_eq!(fts5("body:secret"), r#""body:secret""#);
        assert_eq!(fts5("a OR b NOT c"), r#""a" "OR" "b" "NOT" "c""#);
        assert_eq!(fts5("^start +plus"), r#""^start" "+plus""#);
        assert_eq!(fts5("say \"hi"), r#""say" "hi""#);
        assert_eq!(fts5("x\"y"), r#""x" "y""#);
        assert_eq!(fts5("nul\0in\u{1}side"), r#""nul" "in" "side""#);
        assert_eq!(fts5("\"in \u{7f}phrase\""), r#""in  phrase""#);
    }

    #[test]
    fn queries_without_words_or_too_big_are_refused() {
        for text in ["", "   ", "*", "\"\"", "\"", "-- ** ()", "\0"] {
            refused(text);
        }
        assert!(refused(&"a".repeat(10_000)).contains("at most 1024 bytes"));
        refused(&"w ".repeat(MAX_SEARCH_TERMS + 1));
        assert!(parse_search_query(&"w ".repeat(MAX_SEARCH_TERMS)).is_ok());
    }
}
