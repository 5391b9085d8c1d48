//! The submit-time half of the SSRF guard for downloads, as the web API applies it: the
//! policy's checks of the submission (shape, IP-literal and local-name hosts, size limit),
//! then its lookup of the host name with a timeout.
//!
//! The scraper checks the resolved address again when it connects (and on every redirect),
//! which is the check that counts; this one gives the person submitting a clear 400 at once
//! instead of a job that fails later.

use sluice_core::policy::{
    NewDownload, SubmitRules, ValidDownload, resolve_download_host, validate_submission,
};

use crate::error::ApiError;

/// Checks a download submission the way every entry point does, plus the DNS lookup of its
/// host; returns what the store may record.
pub async fn check_download_submission(
    submitted: &NewDownload,
    rules: &SubmitRules,
) -> Result<ValidDownload, ApiError> {
    let download = validate_submission(submitted, rules)?;
    resolve_download_host(download.url(), rules.allow_private_addresses).await?;
    Ok(download)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow_private_addresses: bool) -> SubmitRules {
        SubmitRules {
            allow_private_addresses,
            max_download_size: 1 << 30,
        }
    }

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
                    check_download_submission(&NewDownload::new(bad), &rules(false)).await,
                    Err(ApiError::Refused(_))
                ),
                "{bad}"
            );
        }
        assert!(
            check_download_submission(&NewDownload::new("http://127.0.0.1:8080/x"), &rules(true))
                .await
                .is_ok()
        );
        assert!(
            check_download_submission(&NewDownload::new("https://93.184.216.34/x"), &rules(false))
                .await
                .is_ok()
        );
    }
}
