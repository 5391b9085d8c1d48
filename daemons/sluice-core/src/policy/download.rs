//! A download submission and its verdict: [`NewDownload`] is what a caller asks for,
//! [`ValidDownload`] what the store may record. Only [`NewDownload::validate`] makes a
//! `ValidDownload`, so the store never sees a value these rules have not passed.

use url::Url;

use super::{
    MAX_ATTEMPTS_RANGE, PolicyError, check_bundle_name, check_download_target, check_file_name,
    check_sha256, check_source_name, file_name_from_url, parse_download_url,
};

/// A download to submit. Only `url` is required; [`NewDownload::new`] leaves the rest unset,
/// attempts included (the store then uses its configured `[jobs] max_attempts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDownload {
    /// http or https, with a host, without credentials.
    pub url: String,
    /// The name in the inbox; derived from the URL's last path segment when `None`.
    pub file_name: Option<String>,
    /// A sub-folder of the inbox that groups several downloads.
    pub bundle: Option<String>,
    /// 64 hex digits; the download fails if the file's SHA-256 differs.
    pub expected_sha256: Option<String>,
    /// Size limit in bytes for this download (the configured limit applies as well).
    pub max_bytes: Option<u64>,
    /// Name of the configured source this download belongs to; the store checks it exists.
    pub source: Option<String>,
    /// Attempts before the job is `dead`; `None` = `[jobs] max_attempts`.
    pub max_attempts: Option<u32>,
}

/// The configured limits a submission is judged against, passed in by the caller so this
/// module does not read the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitRules {
    /// `[scraper] allow_private_addresses`.
    pub allow_private_addresses: bool,
    /// `[scraper] max_download_size`: a per-download `max_bytes` may not exceed it.
    pub max_download_size: u64,
}

/// A submission that passed [`NewDownload::validate`]: the normalized URL, the file name
/// (given or derived) and the lower-case digest, plus the caller's other values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidDownload {
    url: Url,
    file_name: String,
    bundle: Option<String>,
    expected_sha256: Option<String>,
    max_bytes: Option<u64>,
    source: Option<String>,
    max_attempts: Option<u32>,
}

impl NewDownload {
    pub fn new(url: impl Into<String>) -> NewDownload {
        NewDownload {
            url: url.into(),
            file_name: None,
            bundle: None,
            expected_sha256: None,
            max_bytes: None,
            source: None,
            max_attempts: None,
        }
    }

    /// Checks the shape of every field (not the URL's address, see [`validate_submission`])
    /// and settles the values to store. No IO.
    pub fn validate(&self) -> Result<ValidDownload, PolicyError> {
        let url = parse_download_url(&self.url)?;
        let file_name = match &self.file_name {
            Some(name) => {
                check_file_name("file_name", name)?;
                name.clone()
            }
            None => file_name_from_url(&url),
        };
        if let Some(bundle) = &self.bundle {
            check_bundle_name(bundle)?;
        }
        let expected_sha256 = match &self.expected_sha256 {
            Some(digest) => Some(check_sha256(digest)?),
            None => None,
        };
        if let Some(max_bytes) = self.max_bytes {
            check_max_bytes(max_bytes)?;
        }
        if let Some(source) = &self.source {
            check_source_name(source)?;
        }
        if let Some(max_attempts) = self.max_attempts
            && !MAX_ATTEMPTS_RANGE.contains(&max_attempts)
        {
            return Err(PolicyError::OutOfRange(format!(
                "max_attempts {max_attempts} is out of range {}..={}",
                MAX_ATTEMPTS_RANGE.start(),
                MAX_ATTEMPTS_RANGE.end()
            )));
        }
        Ok(ValidDownload {
            url,
            file_name,
            bundle: self.bundle.clone(),
            expected_sha256,
            max_bytes: self.max_bytes,
            source: self.source.clone(),
            max_attempts: self.max_attempts,
        })
    }
}

/// Checks a per-download size limit: at least 1 byte and storable (at most `i64::MAX`).
pub fn check_max_bytes(max_bytes: u64) -> Result<(), PolicyError> {
    if max_bytes == 0 || max_bytes > i64::MAX as u64 {
        return Err(PolicyError::OutOfRange(format!(
            "max_bytes must be 1..={}, got {max_bytes}",
            i64::MAX
        )));
    }
    Ok(())
}

/// Everything a submission from a person must pass, the same over D-Bus, the web API and
/// sluicectl: [`NewDownload::validate`], the address of an IP-literal or local host, and
/// `max_bytes` within the configured `max_download_size`. Host names that need DNS are
/// [`super::resolve_download_host`]'s (async, with a timeout).
///
/// The configured size limit used to be checked at submit time by the web API only; D-Bus
/// and sluicectl accepted a larger `max_bytes` and the scraper applied the configured limit
/// while downloading. The stricter verdict (refuse at once) now holds everywhere.
pub fn validate_submission(
    download: &NewDownload,
    rules: &SubmitRules,
) -> Result<ValidDownload, PolicyError> {
    let valid = download.validate()?;
    check_download_target(&valid.url, rules.allow_private_addresses)?;
    if let Some(max_bytes) = valid.max_bytes
        && max_bytes > rules.max_download_size
    {
        return Err(PolicyError::OutOfRange(format!(
            "max_bytes {max_bytes} is above the configured limit of {} bytes \
             ([scraper] max_download_size)",
            rules.max_download_size
        )));
    }
    Ok(valid)
}

impl ValidDownload {
    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    pub fn bundle(&self) -> Option<&str> {
        self.bundle.as_deref()
    }

    pub fn expected_sha256(&self) -> Option<&str> {
        self.expected_sha256.as_deref()
    }

    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// The submitter's attempts, or `None` for the store's configured ones.
    pub fn max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: SubmitRules = SubmitRules {
        allow_private_addresses: false,
        max_download_size: 1 << 30,
    };

    #[test]
    fn a_submission_settles_its_name_digest_and_url() {
        let mut new = NewDownload::new("https://example.org/files/model%20v2.bin?x=1");
        new.expected_sha256 = Some("AB".repeat(32));
        new.bundle = Some("model-x".into());
        let valid = validate_submission(&new, &RULES).unwrap();
        assert_eq!(valid.file_name(), "model v2.bin");
        assert_eq!(valid.expected_sha256(), Some("ab".repeat(32).as_str()));
        assert_eq!(valid.bundle(), Some("model-x"));
        // Not invented here: the store applies `[jobs] max_attempts`.
        assert_eq!(valid.max_attempts(), None);
    }

    #[test]
    fn each_bad_field_is_refused_with_its_code() {
        let with = |change: &dyn Fn(&mut NewDownload)| {
            let mut new = NewDownload::new("https://example.org/a.bin");
            change(&mut new);
            new
        };
        for (case, code) in [
            (NewDownload::new("ftp://example.org/a"), "invalid_url"),
            (NewDownload::new("http://10.0.0.1/a"), "forbidden_address"),
            (
                with(&|new| new.file_name = Some("../x".into())),
                "invalid_file_name",
            ),
            (with(&|new| new.bundle = Some("a/b".into())), "invalid_name"),
            (with(&|new| new.source = Some("".into())), "invalid_name"),
            (
                with(&|new| new.expected_sha256 = Some("abc".into())),
                "invalid_sha256",
            ),
            (with(&|new| new.max_bytes = Some(0)), "out_of_range"),
            (with(&|new| new.max_bytes = Some(2 << 30)), "out_of_range"),
            (with(&|new| new.max_attempts = Some(0)), "out_of_range"),
        ] {
            let error = validate_submission(&case, &RULES).unwrap_err();
            assert_eq!(error.code(), code, "{case:?}: {error}");
        }
        // Without the submit-time rules only the shape is checked (rows other processes
        // write are guarded by the scraper when it connects).
        NewDownload::new("http://10.0.0.1/a").validate().unwrap();
    }
}
