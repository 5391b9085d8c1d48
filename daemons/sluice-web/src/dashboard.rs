//! A minimal server-rendered overview at the base path: job counts, the newest jobs and the
//! newest documents, as plain HTML with no script (the full dashboard is a later issue).

use actix_web::HttpResponse;
use actix_web::web::Data;
use sluice_core::store::documents::DocumentFilter;
use sluice_core::store::jobs::{JobFilter, PageRequest};

use crate::error::ApiError;
use crate::state::AppState;

/// Rows shown per table.
const ROWS: u32 = 20;

pub async fn dashboard(state: Data<AppState>) -> Result<HttpResponse, ApiError> {
    let page = PageRequest {
        before_id: None,
        limit: ROWS,
    };
    let (counts, jobs, documents) = state
        .with_store(move |store| {
            let counts = store.job_counts().map_err(ApiError::from)?;
            let jobs = store
                .list_jobs(&JobFilter::default(), page)
                .map_err(ApiError::from)?;
            let documents = store
                .list_documents(&DocumentFilter::default(), page)
                .map_err(ApiError::from)?;
            Ok::<_, ApiError>((counts, jobs, documents))
        })
        .await?;
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>sluice</title>\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}</style></head><body>\
         <h1>sluice</h1><h2>Jobs by state</h2><table><tr>",
    );
    for state_name in counts.keys() {
        html.push_str(&format!("<th>{}</th>", escape(state_name.as_str())));
    }
    html.push_str("</tr><tr>");
    for count in counts.values() {
        html.push_str(&format!("<td>{count}</td>"));
    }
    html.push_str(
        "</tr></table><h2>Newest jobs</h2><table><tr><th>id</th><th>kind</th><th>state</th>\
         <th>attempts</th><th>error</th></tr>",
    );
    for job in &jobs.items {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td></tr>",
            job.id,
            escape(&job.kind),
            job.state,
            job.attempts,
            job.max_attempts,
            escape(job.error.as_deref().unwrap_or(""))
        ));
    }
    html.push_str(
        "</table><h2>Newest documents</h2><table><tr><th>id</th><th>name</th><th>type</th>\
         <th>size</th><th>sha256</th></tr>",
    );
    for document in &documents.items {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            document.id,
            escape(&document.original_name),
            escape(&document.mime),
            document.size,
            escape(&document.sha256)
        ));
    }
    html.push_str("</table></body></html>");
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'",
        ))
        .body(html))
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}
