//! `sluicectl docs list [--query TEXT]`: documents from the store, or full-text search hits.

use serde_json::{Value, json};
use sluice_core::store::documents::DocumentFilter;

use super::{Context, Failure};
use crate::output::{print_json, print_line, print_table};

impl Context {
    pub(super) fn docs_list(
        &self,
        query: Option<String>,
        limit: u32,
        cursor: Option<i64>,
    ) -> Result<(), Failure> {
        let page = self.page(limit, cursor)?;
        let store = self.open_store()?;
        // Search hits and plain listings print the same: the document, plus the matching
        // snippet when searching.
        let (documents, next_cursor): (Vec<(sluice_core::store::Document, Option<String>)>, _) =
            match query.filter(|text| !text.trim().is_empty()) {
                Some(text) => {
                    let hits = store.search_documents(&text, page)?;
                    let next = hits.next_cursor;
                    (
                        hits.items
                            .into_iter()
                            .map(|hit| (hit.document, Some(hit.snippet)))
                            .collect(),
                        next,
                    )
                }
                None => {
                    let listed = store.list_documents(&DocumentFilter::default(), page)?;
                    let next = listed.next_cursor;
                    (
                        listed
                            .items
                            .into_iter()
                            .map(|document| (document, None))
                            .collect(),
                        next,
                    )
                }
            };
        if self.json {
            let items: Vec<Value> = documents
                .iter()
                .map(|(document, snippet)| {
                    let mut item = serde_json::to_value(document).unwrap_or_default();
                    if let Some(snippet) = snippet {
                        item["snippet"] = Value::from(snippet.as_str());
                    }
                    item
                })
                .collect();
            print_json(&json!({ "items": items, "next_cursor": next_cursor }));
            return Ok(());
        }
        let rows: Vec<Vec<String>> = documents
            .iter()
            .map(|(document, _)| {
                vec![
                    document.id.to_string(),
                    document.original_name.clone(),
                    document.mime.clone(),
                    document.size.to_string(),
                    document.sha256.chars().take(16).collect(),
                    document
                        .library_path
                        .as_ref()
                        .map(|path| path.display().to_string())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        print_table(&["ID", "NAME", "TYPE", "SIZE", "SHA256", "PATH"], &rows);
        if let Some(next) = next_cursor {
            print_line(&format!("more: --cursor {next}"));
        }
        Ok(())
    }
}
