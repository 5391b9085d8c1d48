//! What a check finds in a page or feed: the links a CSS selector picks out of HTML, or the
//! entries of an RSS, Atom or JSON Feed document with their enclosures and links. Pure
//! functions over bytes already read (at most [`super::MAX_BODY_BYTES`]); run on a blocking
//! thread, since a large document takes a while to parse.

use std::collections::HashSet;

use regex::Regex;
use url::Url;

/// One thing found: a link (its URL is its key) or a feed entry (its id is its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub key: String,
    pub urls: Vec<Url>,
}

/// The links `selector` picks out of `html` (the `href`, else `src`, of each selected
/// element), resolved against `base`, http(s) only, without fragments, matching `pattern`
/// when there is one, each once, in document order. html5ever parses any bytes the way a
/// browser would, so malformed HTML yields what a browser would see, never an error.
pub fn links(
    html: &[u8],
    base: &Url,
    selector: &str,
    pattern: Option<&Regex>,
) -> Result<Vec<Found>, String> {
    let selector = scraper::Selector::parse(selector)
        .map_err(|error| format!("invalid CSS selector {selector:?}: {error}"))?;
    let text = String::from_utf8_lossy(html);
    let document = scraper::Html::parse_document(&text);
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for element in document.select(&selector) {
        let Some(reference) = element
            .value()
            .attr("href")
            .or_else(|| element.value().attr("src"))
        else {
            continue;
        };
        let Some(url) = absolute(base, reference, pattern) else {
            continue;
        };
        if seen.insert(url.as_str().to_owned()) {
            found.push(Found {
                key: url.as_str().to_owned(),
                urls: vec![url],
            });
        }
    }
    Ok(found)
}

/// The entries of a feed with their enclosures and links (matching `pattern` when there is
/// one); an entry is keyed by its id (RSS guid, Atom id, JSON Feed id; feed-rs derives one
/// from the entry's content when the feed has none).
pub fn feed_entries(
    body: &[u8],
    base: &Url,
    pattern: Option<&Regex>,
) -> Result<Vec<Found>, String> {
    let feed = feed_rs::parser::Builder::new()
        .base_uri(Some(base.as_str()))
        .build()
        .parse(body)
        .map_err(|error| format!("not a valid RSS, Atom or JSON feed: {error}"))?;
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for entry in feed.entries {
        let key = format!("entry:{}", entry.id);
        if !seen.insert(key.clone()) {
            continue;
        }
        let mut urls: Vec<Url> = Vec::new();
        let references = entry
            .media
            .iter()
            .flat_map(|media| media.content.iter())
            .filter_map(|content| content.url.as_ref().map(|url| url.as_str().to_owned()))
            .chain(entry.links.iter().map(|link| link.href.clone()));
        for reference in references {
            if let Some(url) = absolute(base, &reference, pattern)
                && !urls.contains(&url)
            {
                urls.push(url);
            }
        }
        found.push(Found { key, urls });
    }
    Ok(found)
}

fn absolute(base: &Url, reference: &str, pattern: Option<&Regex>) -> Option<Url> {
    let mut url = base.join(reference.trim()).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    url.set_fragment(None);
    if let Some(pattern) = pattern
        && !pattern.is_match(url.as_str())
    {
        return None;
    }
    Some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://example.org/dir/page.html").unwrap()
    }

    #[test]
    fn links_are_selected_resolved_filtered_and_deduplicated() {
        let html = br#"<html><body><a class="d" href="a.tar.gz">A</a>
            <a class="d" href="/b.tar.gz#frag">B</a><a class="d" href="a.tar.gz">again</a>
            <a class="other" href="c.tar.gz">no</a><a class="d" href="mailto:x@y">mail</a>
            <a class="d" href="notes.txt">text</a><p><a class="d" href="https://cdn.example/e.tar.gz">"#;
        let pattern = Regex::new(r"\.tar\.gz$").unwrap();
        let found = links(html, &base(), "a.d", Some(&pattern)).unwrap();
        let keys: Vec<&str> = found.iter().map(|found| found.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "http://example.org/dir/a.tar.gz",
                "http://example.org/b.tar.gz",
                "https://cdn.example/e.tar.gz"
            ]
        );
        // Malformed HTML and bytes that are not text parse, to no links.
        assert_eq!(
            links(b"\xff\xfe<<a<<>>\0", &base(), "a", None).unwrap(),
            vec![]
        );
    }

    #[test]
    fn rss_atom_and_json_feeds_give_entries_with_enclosures_and_links() {
        let rss = br#"<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
            <item><guid>one</guid><link>http://example.org/1.html</link>
            <enclosure url="http://example.org/1.mp3" type="audio/mpeg" length="1"/></item>
            <item><guid>two</guid><link>/2.html</link></item></channel></rss>"#;
        let entries = feed_entries(rss, &base(), None).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].key, "entry:one");
        let urls: Vec<&str> = entries[0].urls.iter().map(Url::as_str).collect();
        assert_eq!(
            urls,
            vec!["http://example.org/1.mp3", "http://example.org/1.html"]
        );
        assert_eq!(entries[1].urls[0].as_str(), "http://example.org/2.html");

        let atom = br#"<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom">
            <title>t</title><id>f</id><updated>2024-01-01T00:00:00Z</updated>
            <entry><id>urn:a</id><title>a</title><updated>2024-01-01T00:00:00Z</updated>
            <link href="http://example.org/a.pdf"/></entry></feed>"#;
        let entries = feed_entries(atom, &base(), Some(&Regex::new("pdf$").unwrap())).unwrap();
        assert_eq!(entries[0].key, "entry:urn:a");
        assert_eq!(entries[0].urls[0].as_str(), "http://example.org/a.pdf");

        let json = br#"{"version":"https://jsonfeed.org/version/1.1","title":"t","items":[
            {"id":"j1","url":"http://example.org/j1","attachments":[
              {"url":"http://example.org/j1.zip","mime_type":"application/zip"}]}]}"#;
        let entries = feed_entries(json, &base(), None).unwrap();
        assert_eq!(entries[0].key, "entry:j1");
        assert!(
            entries[0]
                .urls
                .iter()
                .any(|url| url.as_str() == "http://example.org/j1.zip"),
            "{entries:?}"
        );
    }

    #[test]
    fn a_malformed_feed_is_an_error_not_a_panic() {
        let error = feed_entries(b"<rss><channel><item>", &base(), None).unwrap_err();
        assert!(error.contains("not a valid"), "{error}");
        assert!(feed_entries(b"\0\xff garbage", &base(), None).is_err());
    }
}
