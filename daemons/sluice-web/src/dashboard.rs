//! The overview at the base path: a page that holds no data, and its script, which asks for
//! the API token once (kept in `sessionStorage`, sent as a bearer header, never a cookie, so
//! no cross-site request can use it) and shows job counts, the newest jobs and the newest
//! documents from the JSON API. Both are public; the data is not.

use actix_web::HttpResponse;
use actix_web::web::Data;

use crate::state::AppState;

/// The page's script, served by [`script`] from the same origin (the CSP allows no other).
const SCRIPT: &str = include_str!("../assets/dashboard.js");

/// Who may load what: scripts, data and styles from this origin only, no frames, no forms
/// posted elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     connect-src 'self'; style-src 'unsafe-inline'; form-action 'none'; \
     frame-ancestors 'none'; base-uri 'none'";

pub async fn dashboard(state: Data<AppState>) -> HttpResponse {
    let base = escape(&state.settings().base_path);
    let script_path = if base.ends_with('/') {
        format!("{base}dashboard.js")
    } else {
        format!("{base}/dashboard.js")
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>sluice</title><style>body{{font-family:sans-serif;margin:2em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .6em;\
         text-align:left}}</style></head><body data-base=\"{base}\"><h1>sluice</h1>\
         <p id=\"message\" role=\"status\"></p>\
         <form id=\"login\" hidden><label>API token (read or admin) \
         <input id=\"token\" type=\"password\" autocomplete=\"off\" required></label> \
         <button>Show</button></form>\
         <div id=\"data\" hidden><h2>Jobs by state</h2><table id=\"counts\"></table>\
         <h2>Newest jobs</h2><table id=\"jobs\"></table>\
         <h2>Newest documents</h2><table id=\"documents\"></table></div>\
         <script src=\"{script_path}\"></script></body></html>"
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(html)
}

pub async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(SCRIPT)
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
