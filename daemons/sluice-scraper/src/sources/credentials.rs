//! A source's `credentials_file`: what is added to the requests a check sends to the
//! source's own origin (scheme, host and port of its URL), never to another.
//!
//! The file is text, one credential per line; blank lines and lines starting with `#` are
//! ignored:
//!
//! ```text
//! bearer TOKEN              Authorization: Bearer TOKEN
//! basic USER:PASSWORD       Authorization: Basic base64(USER:PASSWORD)
//! Header-Name: value        that header, as written (e.g. X-Api-Key: 1234)
//! ```
//!
//! It is read at every check, so a rotated secret applies without a reload. Errors name the
//! file and the line, never its content.

use std::path::Path;

use reqwest::RequestBuilder;
use reqwest::header::{HeaderName, HeaderValue};

/// Larger credentials files are refused (a secret is a line, not a download).
pub const CREDENTIALS_MAX_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub enum Credential {
    Bearer(String),
    Basic { user: String, password: String },
    Header(HeaderName, HeaderValue),
}

/// Reads and parses `path`; the error is a sentence for the source's `last_error`.
pub fn read_credentials(path: &Path) -> Result<Vec<Credential>, String> {
    let shown = path.display();
    let metadata = std::fs::metadata(path)
        .map_err(|error| format!("cannot read credentials_file {shown}: {error}"))?;
    if metadata.len() > CREDENTIALS_MAX_BYTES {
        return Err(format!(
            "credentials_file {shown} is larger than {CREDENTIALS_MAX_BYTES} bytes"
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read credentials_file {shown}: {error}"))?;
    parse_credentials(&text)
        .map_err(|(line, problem)| format!("credentials_file {shown}, line {line}: {problem}"))
}

/// Parses the file's text; an error is `(line number, problem)`.
pub fn parse_credentials(text: &str) -> Result<Vec<Credential>, (usize, String)> {
    let mut credentials = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(token) = line.strip_prefix("bearer ") {
            credentials.push(Credential::Bearer(token.trim().to_owned()));
        } else if let Some(pair) = line.strip_prefix("basic ") {
            let Some((user, password)) = pair.trim().split_once(':') else {
                return Err((number, "basic needs USER:PASSWORD".to_owned()));
            };
            credentials.push(Credential::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            });
        } else if let Some((name, value)) = line.split_once(':') {
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| (number, "not a valid header name".to_owned()))?;
            let mut value = HeaderValue::from_str(value.trim())
                .map_err(|_| (number, "not a valid header value".to_owned()))?;
            value.set_sensitive(true);
            credentials.push(Credential::Header(name, value));
        } else {
            return Err((
                number,
                "expected `bearer TOKEN`, `basic USER:PASSWORD` or `Header-Name: value`".to_owned(),
            ));
        }
    }
    Ok(credentials)
}

/// Adds the credentials to a request (to the source's own origin only; the caller checks).
pub fn apply(mut request: RequestBuilder, credentials: &[Credential]) -> RequestBuilder {
    for credential in credentials {
        request = match credential {
            Credential::Bearer(token) => request.bearer_auth(token),
            Credential::Basic { user, password } => request.basic_auth(user, Some(password)),
            Credential::Header(name, value) => request.header(name.clone(), value.clone()),
        };
    }
    request
}

/// The credentials that may go with a download: `bearer` and `basic` only. A download follows
/// redirects inside the HTTP client, which drops `Authorization` when a redirect leads to
/// another host or port but would carry any other header there, so a header line is refused
/// with the reason instead of being sent. `file` names the file in the error.
pub fn for_downloads(credentials: Vec<Credential>, file: &str) -> Result<Vec<Credential>, String> {
    if let Some(Credential::Header(name, _)) = credentials
        .iter()
        .find(|credential| matches!(credential, Credential::Header(..)))
    {
        return Err(format!(
            "{file} has a header line ({name}: …), which downloads do not send: a download \
             follows redirects to other hosts, where only Authorization is dropped; use \
             `bearer TOKEN` or `basic USER:PASSWORD`"
        ));
    }
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_take_bearer_and_basic_but_never_a_header_line() {
        let allowed = parse_credentials("bearer abc\nbasic me:pw\n").unwrap();
        assert_eq!(for_downloads(allowed, "hub").unwrap().len(), 2);
        let with_header = parse_credentials("bearer abc\nX-Api-Key: 12\n").unwrap();
        let error = for_downloads(with_header, "/etc/sluice/credentials/hub").unwrap_err();
        assert!(
            error.contains("/etc/sluice/credentials/hub")
                && error.contains("x-api-key")
                && !error.contains("12"),
            "{error}"
        );
    }

    #[test]
    fn the_three_kinds_of_line_parse_and_errors_name_the_line() {
        let parsed =
            parse_credentials("# token\n\nbearer abc\nbasic me:p:w\nX-Api-Key: 12\n").unwrap();
        assert!(matches!(&parsed[0], Credential::Bearer(token) if token == "abc"));
        assert!(
            matches!(&parsed[1], Credential::Basic { user, password } if user == "me" && password == "p:w")
        );
        assert!(matches!(&parsed[2], Credential::Header(name, _) if name == "x-api-key"));
        let (line, _) = parse_credentials("bearer x\nbasic nopassword\n").unwrap_err();
        assert_eq!(line, 2);
        assert_eq!(parse_credentials("just words").unwrap_err().0, 1);
    }

    #[test]
    fn a_missing_file_is_a_sentence_naming_it() {
        let error = read_credentials(Path::new("/nonexistent/sluice-credentials")).unwrap_err();
        assert!(
            error.contains("/nonexistent/sluice-credentials") && error.contains("cannot read"),
            "{error}"
        );
    }
}
