//! The TOML side of loading: parse the user's files (the configuration file and its
//! drop-ins) and the compiled-in defaults, merge them into one tree, and turn a byte span of
//! that tree back into file, line, column and key.
//!
//! Every document is parsed with spans. To tell afterwards which file a span points into,
//! the files are laid end to end: each is parsed from a copy shifted right by the total
//! length of the files before it plus one for each (leading spaces are insignificant in
//! TOML), and the defaults come last. A span's start therefore falls in exactly one file's
//! range. That keeps every value of the merged tree traceable to the line a person wrote
//! (or to the shipped default) without copying spans by hand.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, Location};
use super::{BUILT_IN_DEFAULTS, BUILT_IN_DEFAULTS_ORIGIN, ConfigFile};

/// The top-level keys whose value is a list of tables: a later file's list replaces the
/// earlier list as a whole instead of being merged entry by entry.
const LIST_KEYS: [&str; 3] = ["watch", "processor", "source"];

/// One text of a merged tree: where its spans start, and what it is.
#[derive(Debug)]
struct Segment<'a> {
    path: &'a Path,
    text: &'a str,
    /// The text preceded by `offset` spaces; spans of its tree index into this.
    shifted: String,
    offset: usize,
}

/// The texts a merged tree was built from, to map spans back to them: the user's files in
/// merge order (the configuration file, then its drop-ins), then the defaults.
#[derive(Debug)]
pub(super) struct Sources<'a> {
    /// The user's files, then the built-in defaults last.
    segments: Vec<Segment<'a>>,
}

impl<'a> Sources<'a> {
    pub(super) fn new(files: &'a [ConfigFile]) -> Self {
        let mut segments = Vec::with_capacity(files.len() + 1);
        let mut offset = 0;
        let texts = files
            .iter()
            .map(|file| (file.path.as_path(), file.text.as_str()))
            .chain([(Path::new(BUILT_IN_DEFAULTS_ORIGIN), BUILT_IN_DEFAULTS)]);
        for (path, text) in texts {
            let mut shifted = " ".repeat(offset);
            shifted.push_str(text);
            segments.push(Segment {
                path,
                text,
                shifted,
                offset,
            });
            offset += text.len() + 1;
        }
        Sources { segments }
    }

    fn defaults(&self) -> &Segment<'a> {
        self.segments
            .last()
            .expect("the defaults are always a segment")
    }

    /// Whether a span of the merged tree points into one of the user's files (not the
    /// defaults).
    pub(super) fn is_in_user_text(&self, span: &Range<usize>) -> bool {
        span.start < self.defaults().offset
    }

    /// The segment a span starts in.
    fn segment_of(&self, span: &Range<usize>) -> &Segment<'a> {
        self.segments
            .iter()
            .rev()
            .find(|segment| segment.offset <= span.start)
            .unwrap_or(&self.segments[0])
    }

    /// Parses every text and merges each over the ones before it: the user's files over the
    /// defaults, a drop-in over the configuration file and the drop-ins sorted before it.
    pub(super) fn merged_tree(&self) -> Result<Spanned<DeTable<'_>>, ConfigError> {
        let (defaults, user_files) = self
            .segments
            .split_last()
            .expect("the defaults are always a segment");
        let mut merged = DeTable::parse(&defaults.shifted).map_err(|error| {
            let span = error.span().unwrap_or(0..0);
            ConfigError::Syntax {
                location: self.locate(span),
                message: error.message().trim_end().to_owned(),
            }
        })?;
        for segment in user_files {
            let tree = DeTable::parse(&segment.shifted).map_err(|error| {
                let span = error.span().unwrap_or(0..0);
                // A tree parsed past the error still names the key the error sits in.
                let (partial_tree, _) = DeTable::parse_recoverable(&segment.shifted);
                let mut location = self.locate_in(&partial_tree, span.clone());
                if location.key.is_none() {
                    location.key =
                        key_on_line_before(partial_tree.get_ref(), &segment.shifted, span.start);
                }
                ConfigError::Syntax {
                    location,
                    message: error.message().trim_end().to_owned(),
                }
            })?;
            merge_table(merged.get_mut(), tree.into_inner(), true);
        }
        Ok(merged)
    }

    /// File, line, column (and, without a tree, no key) of a span.
    pub(super) fn locate(&self, span: Range<usize>) -> Location {
        let segment = self.segment_of(&span);
        let (line, column) = line_and_column(segment.text, span.start - segment.offset);
        Location {
            path: segment.path.to_path_buf(),
            line,
            column,
            key: None,
        }
    }

    /// File, line, column and the dotted key of the entry of `tree` the span falls in.
    pub(super) fn locate_in(&self, tree: &Spanned<DeTable<'_>>, span: Range<usize>) -> Location {
        let mut location = self.locate(span.clone());
        location.key = key_path_at(tree.get_ref(), span.start);
        location
    }
}

/// Merges `overlay` into `base`: tables are merged key by key (recursively), anything else —
/// including the top-level lists of tables — is replaced. The overlay's key is kept, so its
/// span points at the user's file.
fn merge_table<'i>(base: &mut DeTable<'i>, overlay: DeTable<'i>, top_level: bool) {
    for (key, value) in overlay {
        let name = key.get_ref().to_string();
        let replaces_whole = top_level && LIST_KEYS.contains(&name.as_str());
        let span = value.span();
        let value = match value.into_inner() {
            DeValue::Table(overlay_table) if !replaces_whole => {
                match base.get_mut(name.as_str()).map(Spanned::get_mut) {
                    Some(DeValue::Table(base_table)) => {
                        merge_table(base_table, overlay_table, false);
                        continue;
                    }
                    _ => DeValue::Table(overlay_table),
                }
            }
            other => other,
        };
        // Removing first makes the map take the overlay's key (and its span); a plain insert
        // would keep the old key.
        base.remove(name.as_str());
        base.insert(key, Spanned::new(span, value));
    }
}

/// The dotted path of the innermost key whose name or value contains `offset`.
fn key_path_at(table: &DeTable<'_>, offset: usize) -> Option<String> {
    search_table(table, offset, "")
}

/// The dotted path of the last key that starts before `offset` on the same line: where a
/// syntax error sits just past a value (an unclosed string, say), the key it belongs to.
fn key_on_line_before(table: &DeTable<'_>, text: &str, offset: usize) -> Option<String> {
    fn visit(table: &DeTable<'_>, offset: usize, prefix: &str, best: &mut Option<(usize, String)>) {
        for (key, value) in table {
            let path = join_key(prefix, key.get_ref());
            let start = key.span().start;
            if start <= offset
                && best
                    .as_ref()
                    .is_none_or(|(best_start, _)| start > *best_start)
            {
                *best = Some((start, path.clone()));
            }
            match value.get_ref() {
                DeValue::Table(inner) => visit(inner, offset, &path, best),
                DeValue::Array(array) => {
                    for (index, item) in array.iter().enumerate() {
                        if let DeValue::Table(inner) = item.get_ref() {
                            visit(inner, offset, &format!("{path}[{index}]"), best);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut best = None;
    visit(table, offset, "", &mut best);
    let (start, path) = best?;
    let same_line = !text.get(start..offset.min(text.len()))?.contains('\n');
    same_line.then_some(path)
}

fn search_table(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    for (key, value) in table {
        let path = join_key(prefix, key.get_ref());
        if let Some(found) = search_value(value, offset, &path) {
            return Some(found);
        }
        if span_contains(&key.span(), offset) || span_contains(&value.span(), offset) {
            return Some(path);
        }
    }
    None
}

fn search_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &str) -> Option<String> {
    match value.get_ref() {
        DeValue::Table(table) => search_table(table, offset, path),
        DeValue::Array(array) => array.iter().enumerate().find_map(|(index, item)| {
            let item_path = format!("{path}[{index}]");
            search_value(item, offset, &item_path)
                .or_else(|| span_contains(&item.span(), offset).then_some(item_path))
        }),
        _ => None,
    }
}

/// An empty span (the end of the input, say) contains the offset it sits at.
fn span_contains(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

fn join_key(prefix: &str, key: &str) -> String {
    let is_bare = !key.is_empty()
        && key
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "_-".contains(character));
    let key = if is_bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_from_one_and_count_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_and_column(text, 0), (1, 1));
        assert_eq!(line_and_column(text, 6), (2, 1));
        // "bé" is three bytes; the offset after it is column 3.
        assert_eq!(line_and_column(text, 9), (2, 3));
        assert_eq!(line_and_column(text, text.len()), (3, 1));
    }

    #[test]
    fn key_path_names_nested_tables_and_list_entries() {
        let text =
            "[store]\nbusy_timeout = \"5s\"\n[[watch]]\npath = \"/a\"\n[[watch]]\nmode = \"x\"\n";
        let tree = DeTable::parse(text).expect("valid TOML");
        let at = |needle: &str| text.find(needle).expect("needle in text");
        assert_eq!(
            key_path_at(tree.get_ref(), at("\"5s\"")).as_deref(),
            Some("store.busy_timeout")
        );
        assert_eq!(
            key_path_at(tree.get_ref(), at("\"x\"")).as_deref(),
            Some("watch[1].mode")
        );
        assert_eq!(
            key_path_at(tree.get_ref(), at("path")).as_deref(),
            Some("watch[0].path")
        );
    }
}
