//! The TOML side of loading: parse the user's file and the compiled-in defaults, merge them
//! into one tree, and turn a byte span of that tree back into file, line, column and key.
//!
//! Both documents are parsed with spans. To tell afterwards which file a span points into,
//! the defaults are parsed from a copy shifted right by the length of the user's text plus
//! one (leading spaces are insignificant in TOML): a span that starts before that offset is
//! in the user's file, any other is in the defaults. That keeps every value of the merged
//! tree traceable to the line a person wrote (or to the shipped default) without copying
//! spans by hand.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, Location};
use super::{BUILT_IN_DEFAULTS, BUILT_IN_DEFAULTS_ORIGIN};

/// The top-level keys whose value is a list of tables: a user's list replaces the default
/// list as a whole instead of being merged entry by entry.
const LIST_KEYS: [&str; 3] = ["watch", "processor", "source"];

/// The two texts a merged tree was built from, to map spans back to them.
#[derive(Debug)]
pub(super) struct Sources<'a> {
    user_text: &'a str,
    user_path: &'a Path,
    /// The defaults text preceded by `user_text.len() + 1` spaces; spans of the defaults
    /// tree index into this.
    shifted_defaults: String,
}

impl<'a> Sources<'a> {
    pub(super) fn new(user_text: &'a str, user_path: &'a Path) -> Self {
        let mut shifted_defaults = " ".repeat(user_text.len() + 1);
        shifted_defaults.push_str(BUILT_IN_DEFAULTS);
        Sources {
            user_text,
            user_path,
            shifted_defaults,
        }
    }

    /// Whether a span of the merged tree points into the user's text (not the defaults).
    pub(super) fn is_in_user_text(&self, span: &Range<usize>) -> bool {
        span.start < self.defaults_offset()
    }

    fn defaults_offset(&self) -> usize {
        self.user_text.len() + 1
    }

    /// Parses both texts and merges the user's tree over the defaults tree.
    pub(super) fn merged_tree(&self) -> Result<Spanned<DeTable<'_>>, ConfigError> {
        let user_tree = DeTable::parse(self.user_text).map_err(|error| {
            let span = error.span().unwrap_or(0..0);
            // A tree parsed past the error still names the key the error sits in.
            let (partial_tree, _) = DeTable::parse_recoverable(self.user_text);
            let mut location = self.locate_in(&partial_tree, span.clone());
            if location.key.is_none() {
                location.key =
                    key_on_line_before(partial_tree.get_ref(), self.user_text, span.start);
            }
            ConfigError::Syntax {
                location,
                message: error.message().trim_end().to_owned(),
            }
        })?;
        let mut defaults_tree = DeTable::parse(&self.shifted_defaults).map_err(|error| {
            let span = error.span().unwrap_or(0..0);
            ConfigError::Syntax {
                location: self.locate(span),
                message: error.message().trim_end().to_owned(),
            }
        })?;
        merge_table(defaults_tree.get_mut(), user_tree.into_inner(), true);
        Ok(defaults_tree)
    }

    /// File, line, column (and, without a tree, no key) of a span.
    pub(super) fn locate(&self, span: Range<usize>) -> Location {
        let (path, text, offset) = if self.is_in_user_text(&span) {
            (self.user_path.to_path_buf(), self.user_text, span.start)
        } else {
            (
                PathBuf::from(BUILT_IN_DEFAULTS_ORIGIN),
                BUILT_IN_DEFAULTS,
                span.start - self.defaults_offset(),
            )
        };
        let (line, column) = line_and_column(text, offset);
        Location {
            path,
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
