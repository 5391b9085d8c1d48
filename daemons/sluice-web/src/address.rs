//! The submit-time half of the SSRF guard for downloads: only http and https, and no
//! loopback, private, link-local or metadata address unless `[scraper]
//! allow_private_addresses` says so.
//!
//! The scraper checks the resolved address again when it connects (and on every redirect),
//! which is the check that counts; this one gives the person submitting a clear 400 at once
//! instead of a job that fails later. A name that does not resolve now is accepted: DNS may
//! be down for a moment, and the scraper's own check still applies.

use std::net::IpAddr;
use std::time::Duration;

use sluice_core::store::downloads::{
    check_url_address, forbidden_address_reason, parse_download_url,
};
use url::{Host, Url};

use crate::error::ApiError;

/// How long the submit-time lookup may take before the URL is accepted unchecked.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Parses and checks a download URL (the store's shape and IP-literal checks, then the host
/// name); returns it parsed.
pub async fn check_download_url(text: &str, allow_private: bool) -> Result<Url, ApiError> {
    let url = parse_download_url(text)?;
    check_url_address(&url, allow_private)?;
    if allow_private {
        return Ok(url);
    }
    let Some(Host::Domain(name)) = url.host() else {
        return Ok(url);
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if is_local_name(&name) {
        return Err(forbidden(text, "names the local machine"));
    }
    let port = url.port_or_known_default().unwrap_or(80);
    let resolved: Vec<IpAddr> = match tokio::time::timeout(
        RESOLVE_TIMEOUT,
        tokio::net::lookup_host((name.as_str(), port)),
    )
    .await
    {
        Ok(Ok(resolved)) => resolved.map(|socket| socket.ip()).collect(),
        _ => Vec::new(),
    };
    for address in resolved {
        if let Some(reason) = forbidden_address_reason(address) {
            return Err(forbidden(
                text,
                &format!("resolves to {address}, a {reason} address"),
            ));
        }
    }
    Ok(url)
}

/// Whether a host name always means this machine (`localhost` and `*.localhost`, RFC 6761),
/// whatever DNS says. `name` is lower-case without a trailing dot.
pub fn is_local_name(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

fn forbidden(url: &str, reason: &str) -> ApiError {
    ApiError::InvalidArgument(format!(
        "url {url:?} {reason}; downloads may only reach public addresses unless [scraper] \
         allow_private_addresses = true"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_are_checked_for_scheme_credentials_and_local_hosts() {
        for bad in [
            "ftp://example.org/a",
            "file:///etc/passwd",
            "http://127.0.0.1:8080/x",
            "http://[::1]/x",
            "http://localhost/x",
            "http://LOCALHOST./x",
            "http://user:secret@example.org/x",
            "not a url",
        ] {
            assert!(
                matches!(
                    check_download_url(bad, false).await,
                    Err(ApiError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
        assert!(
            check_download_url("http://127.0.0.1:8080/x", true)
                .await
                .is_ok()
        );
        assert!(
            check_download_url("https://93.184.216.34/x", false)
                .await
                .is_ok()
        );
    }
}
