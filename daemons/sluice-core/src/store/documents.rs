//! Reading the catalogue: documents (unique content, deduplicated by BLAKE3) one at a time, a
//! page at a time, and by full-text search over their extracted text.

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;
use serde_json::Value;

use super::jobs::{MAX_PAGE_SIZE, Page, PageRequest};
use super::{Store, StoreError};

/// Longest search query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("document {0} not found")]
    NotFound(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for DocumentError {
    fn from(error: rusqlite::Error) -> Self {
        DocumentError::Store(StoreError::from(error))
    }
}

/// A document as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    pub id: i64,
    pub blake3: String,
    pub sha256: String,
    pub size: u64,
    pub mime: String,
    pub original_name: String,
    pub library_path: Option<String>,
    pub metadata: Value,
    /// How many more copies of this content were seen after the first.
    pub duplicates: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

const DOCUMENT_COLUMNS: &str = "d.id, d.blake3, d.sha256, d.size, d.mime, d.original_name, \
     d.library_path, d.metadata, d.duplicates, d.created_at, d.updated_at";

impl Store {
    pub fn get_document(&self, id: i64) -> Result<Document, DocumentError> {
        self.connection()
            .prepare_cached(&format!(
                "SELECT {DOCUMENT_COLUMNS} FROM documents d WHERE d.id = ?1"
            ))?
            .query_row([id], document_from_row)
            .optional()?
            .ok_or(DocumentError::NotFound(id))
    }

    /// Documents newest first, a page at a time.
    pub fn list_documents(&self, page: PageRequest) -> Result<Page<Document>, DocumentError> {
        self.search_documents(None, page)
    }

    /// Documents whose extracted text (title or body) contains every word of `query`, newest
    /// first; `None` or a blank query lists every document.
    ///
    /// Each word is searched as a literal (quoted for FTS5), so a query is never a syntax
    /// error and cannot use FTS5 operators: what a person types is what is searched.
    pub fn search_documents(
        &self,
        query: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<Document>, DocumentError> {
        if page.limit == 0 || page.limit > MAX_PAGE_SIZE {
            return Err(DocumentError::InvalidArgument(format!(
                "page size must be 1..={MAX_PAGE_SIZE}, got {}",
                page.limit
            )));
        }
        let match_expression = match query {
            Some(query) if query.len() > MAX_QUERY_BYTES => {
                return Err(DocumentError::InvalidArgument(format!(
                    "query is longer than {MAX_QUERY_BYTES} bytes"
                )));
            }
            Some(query) if query.chars().any(char::is_control) => {
                return Err(DocumentError::InvalidArgument(
                    "query must not contain control characters".into(),
                ));
            }
            Some(query) => literal_match_expression(query),
            None => None,
        };
        let mut items = match &match_expression {
            None => self
                .connection()
                .prepare_cached(&format!(
                    "SELECT {DOCUMENT_COLUMNS} FROM documents d
                     WHERE (?1 IS NULL OR d.id < ?1)
                     ORDER BY d.id DESC LIMIT ?2"
                ))?
                .query_map(params![page.before_id, page.limit + 1], document_from_row)?
                .collect::<Result<Vec<_>, _>>()?,
            Some(expression) => self
                .connection()
                .prepare_cached(&format!(
                    "SELECT {DOCUMENT_COLUMNS} FROM documents d
                     WHERE d.id IN (SELECT rowid FROM document_text WHERE document_text MATCH ?3)
                       AND (?1 IS NULL OR d.id < ?1)
                     ORDER BY d.id DESC LIMIT ?2"
                ))?
                .query_map(
                    params![page.before_id, page.limit + 1, expression],
                    document_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?,
        };
        let next_cursor = if items.len() > page.limit as usize {
            items.truncate(page.limit as usize);
            items.last().map(|document| document.id)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }
}

/// `hello "big" world` becomes `"hello" """big""" "world"`: every word a quoted FTS5 string
/// (implicitly AND-ed). `None` when there is no word at all.
fn literal_match_expression(query: &str) -> Option<String> {
    let words: Vec<String> = query
        .split_whitespace()
        .map(|word| format!("\"{}\"", word.replace('"', "\"\"")))
        .collect();
    if words.is_empty() {
        None
    } else {
        Some(words.join(" "))
    }
}

fn document_from_row(row: &Row<'_>) -> rusqlite::Result<Document> {
    let metadata: String = row.get(7)?;
    Ok(Document {
        id: row.get(0)?,
        blake3: row.get(1)?,
        sha256: row.get(2)?,
        size: unsigned_column(3, row.get(3)?)?,
        mime: row.get(4)?,
        original_name: row.get(5)?,
        library_path: row.get(6)?,
        metadata: serde_json::from_str(&metadata).map_err(|error| {
            rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, error.into())
        })?,
        duplicates: unsigned_column(8, row.get(8)?)?,
        created_at_ms: row.get(9)?,
        updated_at_ms: row.get(10)?,
    })
}

/// Counts are stored as SQLite integers (i64) and kept non-negative by CHECK constraints.
fn unsigned_column(index: usize, value: i64) -> rusqlite::Result<u64> {
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(index, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Durability;
    use crate::store::tests::open_temp;

    fn insert_document(store: &Store, id: i64, name: &str, text: &str) {
        store
            .connection()
            .execute(
                "INSERT INTO documents (id, blake3, sha256, size, mime, original_name,
                                        created_at, updated_at)
                 VALUES (?1, ?2, ?3, 5, 'text/plain', ?4, 1, 1)",
                params![id, format!("{id:064}"), format!("{id:064}"), name],
            )
            .unwrap();
        store
            .connection()
            .execute(
                "INSERT INTO document_text (rowid, title, body) VALUES (?1, ?2, ?3)",
                params![id, name, text],
            )
            .unwrap();
    }

    fn page(limit: u32) -> PageRequest {
        PageRequest {
            before_id: None,
            limit,
        }
    }

    #[test]
    fn documents_are_listed_newest_first_and_found_by_their_words() {
        let (_directory, store) = open_temp(Durability::Normal);
        insert_document(&store, 1, "a.txt", "the quick brown fox");
        insert_document(&store, 2, "b.txt", "a lazy dog");
        insert_document(&store, 3, "c.txt", "quick thinking");

        let listed = store.list_documents(page(2)).unwrap();
        assert_eq!(
            listed.items.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![3, 2]
        );
        assert_eq!(listed.next_cursor, Some(2));

        let found = store.search_documents(Some("quick"), page(10)).unwrap();
        assert_eq!(
            found.items.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![3, 1]
        );
        let found = store.search_documents(Some("quick fox"), page(10)).unwrap();
        assert_eq!(
            found.items.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(store.get_document(2).unwrap().original_name, "b.txt");
        assert!(matches!(
            store.get_document(9),
            Err(DocumentError::NotFound(9))
        ));
    }

    #[test]
    fn fts_operators_and_quotes_are_searched_literally_not_errors() {
        let (_directory, store) = open_temp(Durability::Normal);
        insert_document(&store, 1, "a.txt", "hello world");
        for query in ["\"unbalanced", "AND OR NOT", "hello*", "(x", "NEAR(a b)"] {
            store
                .search_documents(Some(query), page(10))
                .unwrap_or_else(|error| panic!("{query:?}: {error}"));
        }
        assert_eq!(
            store
                .search_documents(Some("   "), page(10))
                .unwrap()
                .items
                .len(),
            1
        );
        assert!(matches!(
            store.search_documents(Some("a\u{0}b"), page(10)),
            Err(DocumentError::InvalidArgument(_))
        ));
        assert!(matches!(
            store.search_documents(None, page(0)),
            Err(DocumentError::InvalidArgument(_))
        ));
    }
}
