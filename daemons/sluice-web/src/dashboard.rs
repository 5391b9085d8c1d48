//! The dashboard at the base path: a page that holds no data, its script and its stylesheet
//! (embedded in the binary, served from the same origin: the Content-Security-Policy allows
//! no other, and no inline script or style). The script asks for the API token once (kept in
//! `sessionStorage`, sent as a bearer header, never a cookie, so no cross-site request can
//! use it), loads status, queue, downloads, sources and documents from the JSON API and
//! follows `GET /api/events` with `fetch()` (an `EventSource` cannot send the header),
//! reconnecting with backoff and re-reading everything after a drop. All three are public;
//! the data is not.

use actix_web::HttpResponse;
use actix_web::web::Data;

use crate::state::AppState;

/// The page's script, served by [`script`].
const SCRIPT: &str = include_str!("../assets/dashboard.js");

/// The page's stylesheet, served by [`stylesheet`].
const STYLESHEET: &str = include_str!("../assets/dashboard.css");

/// Who may load what: scripts, styles and data from this origin only; images from this origin
/// and from `blob:` (thumbnails are fetched with the token and shown from a blob); no frames,
/// no forms posted anywhere, no `<base>`.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The page itself: the skeleton the script fills in. Nothing in it but the base path comes
/// from the configuration, and that is escaped.
pub async fn dashboard(state: Data<AppState>) -> HttpResponse {
    let base = escape(state.settings().base_path.trim_end_matches('/'));
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>sluice</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{base}/dashboard.css">
<script src="{base}/dashboard.js" defer></script>
</head>
<body data-base="{base}">
<header>
<h1>sluice</h1>
<span id="connection" role="status" hidden>connecting</span>
<span id="updated"></span>
<button id="logout" class="quiet small" type="button" hidden>Forget token</button>
</header>
<p id="message" role="alert"></p>
<form id="login" hidden>
<h2>Sign in</h2>
<label for="token">API token: the read token to watch, the admin token to upload, retry and cancel. It is kept in this tab only.</label>
<input id="token" name="token" type="password" autocomplete="off" spellcheck="false" required>
<button type="submit">Open dashboard</button>
</form>
<main id="dashboard" hidden>
<div class="grid">
<section id="daemons-card"><h2>Daemons <small id="store-path"></small></h2>
<div class="scroll"><table id="daemons"></table></div></section>
<section id="queue-card"><h2>Queue</h2><div class="counts" id="counts"></div>
<div class="scroll"><table id="kinds"></table></div></section>
<section id="activity-card"><h2>Running now <small id="activity-summary"></small></h2>
<div class="activity" id="activity"></div></section>
<section id="jobs-card"><h2>Recent jobs</h2><div class="scroll"><table id="jobs"></table></div></section>
<section id="downloads-card"><h2>Downloads</h2><div class="scroll"><table id="downloads"></table></div></section>
<section id="sources-card"><h2>Sources</h2><div class="scroll"><table id="sources"></table></div></section>
<section id="documents-card" class="wide"><h2>Documents <small id="documents-summary"></small></h2>
<form id="search" role="search"><input id="query" type="search" placeholder="Search pages: words, &quot;a phrase&quot;, prefix*" aria-label="Search documents">
<button type="submit">Search</button><button id="clear-search" class="quiet" type="button">Clear</button></form>
<div id="dropzone">Drop files here to upload, or <label for="file-input">choose files</label>
<input id="file-input" type="file" multiple></div>
<p id="upload-status" role="status"></p>
<div class="documents" id="documents"></div></section>
<section id="log-card" class="wide"><h2>Live events</h2><ol id="log"></ol></section>
</div>
</main>
</body>
</html>
"#
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cache-Control", "no-cache"))
        .body(html)
}

pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn stylesheet() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLESHEET)
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Cache-Control", "no-cache"))
        .body(body)
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
