//! The shape of a download URL: http or https, a host, no credentials, no spaces or control
//! characters, at most [`MAX_URL_BYTES`]. Which address the host means is `address`'s question.

use url::Url;

use super::{MAX_URL_BYTES, PolicyError, truncate_to_bytes};

/// Parses and checks a download URL and returns it parsed.
///
/// Two older copies disagreed; this keeps the stricter verdict of each: the D-Bus check
/// refused an empty authority the `url` crate would repair (`https:///path` becomes
/// `https://path/`), the store refused credentials (`http://user@host/`), which D-Bus let
/// through to be refused later.
pub fn parse_download_url(text: &str) -> Result<Url, PolicyError> {
    let quoted = || format!("{:?}", truncate_to_bytes(text, 100));
    let invalid = |reason: String| Err(PolicyError::InvalidUrl(reason));
    if text.is_empty() {
        return invalid("url must not be empty".into());
    }
    if text.len() > MAX_URL_BYTES {
        return invalid(format!(
            "url {}… is {} bytes long, the limit is {MAX_URL_BYTES}",
            quoted(),
            text.len()
        ));
    }
    if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return invalid(format!(
            "url {} must not contain spaces or control characters; percent-encode them",
            quoted()
        ));
    }
    let url = match Url::parse(text) {
        Ok(url) => url,
        Err(error) => return invalid(format!("url {}: {error}", quoted())),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return invalid(format!(
            "url {} has scheme {:?}; only http and https can be downloaded",
            quoted(),
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) || !has_written_host(text) {
        return invalid(format!("url {} has no host", quoted()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return invalid(format!(
            "url {} carries credentials; they would be stored and shown, so they are not \
             accepted",
            quoted()
        ));
    }
    Ok(url)
}

/// Whether the text itself names a host after `scheme://` (the parser would otherwise take
/// the first path segment of `https:///path` as the host).
fn has_written_host(text: &str) -> bool {
    let Some((_, rest)) = text.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '\\', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    !host.is_empty() && !host.starts_with(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        matches!(parse_download_url(text), Err(PolicyError::InvalidUrl(_)))
    }

    #[test]
    fn download_urls_need_http_and_a_host() {
        assert!(parse_download_url("https://example.org/a.bin").is_ok());
        assert!(parse_download_url("HTTP://example.org").is_ok());
        assert!(parse_download_url("http://example.org:8080/x?y#z").is_ok());
        for bad in [
            "",
            "ftp://example.org/a",
            "file:///etc/passwd",
            "https://",
            "https:///path",
            "http://:80/",
            "https://example.org/a b",
            "not a url",
            "garbage",
            "javascript:alert(1)",
            "http://user@example.org:8080/x?y#z",
            "http://user:secret@example.org/a",
            "http://example.org/a\u{0}b",
        ] {
            assert!(refused(bad), "{bad}");
        }
        let huge = format!("https://example.org/{}", "a".repeat(MAX_URL_BYTES));
        assert!(refused(&huge));
    }
}
