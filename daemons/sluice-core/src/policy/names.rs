//! Names and digests a download carries: the file name in the inbox, the bundle sub-folder,
//! the source name, the expected SHA-256.

use url::Url;

use super::{MAX_NAME_BYTES, PolicyError, truncate_to_bytes};

/// The name used when neither the caller nor the URL gives one.
pub const FALLBACK_FILE_NAME: &str = "download";

/// Checks a file name for the inbox: one path element the monitor will not skip (no `/`,
/// `\`, `..`, leading `.`, control characters or NUL, no `.part` ending), 1..=255 bytes.
///
/// The D-Bus object used to let `\` and `x..y` through to be refused by the store; every entry
/// point now refuses them up front.
pub fn check_file_name(argument: &str, name: &str) -> Result<(), PolicyError> {
    match name_problem(name) {
        Some(problem) => Err(PolicyError::InvalidFileName(format!(
            "{argument} {:?} {problem}",
            truncate_to_bytes(name, 100)
        ))),
        None => Ok(()),
    }
}

/// [`check_file_name`] for a name given as bytes (a path from the file system, a form field):
/// it must be UTF-8 as well. Returns the name as text.
pub fn check_file_name_bytes<'name>(
    argument: &str,
    name: &'name [u8],
) -> Result<&'name str, PolicyError> {
    let text = std::str::from_utf8(name).map_err(|_| {
        PolicyError::InvalidFileName(format!(
            "{argument} {:?} is not valid UTF-8",
            String::from_utf8_lossy(&name[..name.len().min(100)])
        ))
    })?;
    check_file_name(argument, text)?;
    Ok(text)
}

/// Checks a bundle name: it becomes a sub-folder of the inbox, so it follows the file-name
/// rules (the D-Bus copy only refused `/`, `.` and `..`; the stricter store rule wins).
pub fn check_bundle_name(bundle: &str) -> Result<(), PolicyError> {
    check_name_with("bundle", bundle, name_problem)
}

/// Checks a source name: 1..=255 bytes, one path element, no control characters.
pub fn check_source_name(source: &str) -> Result<(), PolicyError> {
    check_name("source", source)
}

/// Checks a short name such as a source name: non-empty, bounded, printable, one path
/// element.
pub fn check_name(argument: &str, value: &str) -> Result<(), PolicyError> {
    check_name_with(argument, value, |value| {
        if value.is_empty() {
            Some("must not be empty".to_owned())
        } else if value.len() > MAX_NAME_BYTES {
            Some(format!(
                "is {} bytes long, the limit is {MAX_NAME_BYTES}",
                value.len()
            ))
        } else if value.chars().any(char::is_control) {
            Some("must not contain control characters".to_owned())
        } else if value.contains('/') || value.contains('\\') || value == "." || value == ".." {
            Some("must be a single name, not a path".to_owned())
        } else {
            None
        }
    })
}

/// Checks an expected SHA-256 and returns it in lower case.
pub fn check_sha256(digest: &str) -> Result<String, PolicyError> {
    if digest.len() == 64 && digest.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        Ok(digest.to_ascii_lowercase())
    } else {
        Err(PolicyError::InvalidSha256(format!(
            "sha256 must be 64 hexadecimal digits, got {:?}",
            truncate_to_bytes(digest, 80)
        )))
    }
}

/// The name a download gets in the inbox when the caller gives none: the URL's last path
/// segment, percent-decoded, made safe; [`FALLBACK_FILE_NAME`] when nothing usable is left.
pub fn file_name_from_url(url: &Url) -> String {
    let segment = url
        .path_segments()
        .and_then(|mut segments| segments.rfind(|segment| !segment.is_empty()))
        .unwrap_or("");
    let decoded = percent_decode(segment);
    let mut name: String = decoded
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    while name.contains("..") {
        name = name.replace("..", ".");
    }
    let name = name.trim_start_matches('.').trim().to_owned();
    let mut name = if name.is_empty() {
        FALLBACK_FILE_NAME.to_owned()
    } else {
        name
    };
    if name.ends_with(".part") {
        // The monitor skips *.part files; the download must not look like one.
        name.push_str(".download");
    }
    truncate_to_bytes(&name, MAX_NAME_BYTES)
}

fn check_name_with(
    argument: &str,
    value: &str,
    problem: impl Fn(&str) -> Option<String>,
) -> Result<(), PolicyError> {
    match problem(value) {
        Some(problem) => Err(PolicyError::InvalidName(format!(
            "{argument} {:?} {problem}",
            truncate_to_bytes(value, 100)
        ))),
        None => Ok(()),
    }
}

/// What is wrong with `name` as one element of a path in the inbox, if anything.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("must not be empty".to_owned())
    } else if name.len() > MAX_NAME_BYTES {
        Some(format!(
            "is {} bytes long, the limit is {MAX_NAME_BYTES}",
            name.len()
        ))
    } else if name.contains('/') || name.contains('\\') {
        Some("must be a single name, without '/' or '\\'".to_owned())
    } else if name.contains("..") {
        Some("must not contain '..'".to_owned())
    } else if name.starts_with('.') {
        Some("must not start with '.' (the monitor skips dot-files)".to_owned())
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters".to_owned())
    } else if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        Some("must not begin or end with white space (such names are easily mistaken)".to_owned())
    } else if name.ends_with(".part") {
        Some("must not end in .part (the monitor skips partial files)".to_owned())
    } else {
        None
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |byte: u8| (byte as char).to_digit(16);
        if bytes[index] == b'%'
            && index + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[index + 1]), hex(bytes[index + 2]))
        {
            decoded.push((high * 16 + low) as u8);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_single_elements_the_monitor_picks_up() {
        check_file_name("file_name", "model v2.bin").unwrap();
        for bad in [
            "",
            "a/b",
            "a\\b",
            "..",
            "x..y",
            ".hidden",
            "x.part",
            "a\nb",
            "a\u{0}b",
            "a\u{7}b",
            " ",
            " a.bin",
            "a.bin ",
            "\u{a0}",
            "a.bin\u{3000}",
        ] {
            let error = check_file_name("file_name", bad).unwrap_err();
            assert_eq!(error.code(), "invalid_file_name", "{bad:?}");
        }
        assert!(check_file_name("file_name", &"n".repeat(256)).is_err());
        assert!(check_file_name("file_name", &"n".repeat(255)).is_ok());
        assert_eq!(
            check_file_name_bytes("file_name", b"a\xffb")
                .unwrap_err()
                .code(),
            "invalid_file_name"
        );
        assert_eq!(
            check_file_name_bytes("file_name", b"ok.bin").unwrap(),
            "ok.bin"
        );
    }

    #[test]
    fn bundle_and_source_names_are_single_elements() {
        check_bundle_name("model-x").unwrap();
        check_source_name("hourly-news").unwrap();
        for bad in ["a/b", "..", "", "../up", ".hidden", "a\\b"] {
            assert_eq!(check_bundle_name(bad).unwrap_err().code(), "invalid_name");
        }
        for bad in ["a/b", "..", "", "a\nb"] {
            assert_eq!(check_source_name(bad).unwrap_err().code(), "invalid_name");
        }
        assert!(check_source_name(&"s".repeat(256)).is_err());
    }

    #[test]
    fn sha256_is_64_hex_digits_and_comes_back_lower_case() {
        assert_eq!(check_sha256(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
        for bad in ["abc", &"g".repeat(64), &"a".repeat(65)] {
            assert_eq!(check_sha256(bad).unwrap_err().code(), "invalid_sha256");
        }
    }

    #[test]
    fn names_derived_from_urls_are_safe() {
        let name = |text: &str| file_name_from_url(&Url::parse(text).unwrap());
        assert_eq!(name("https://example.org/dir/file.tar.gz"), "file.tar.gz");
        assert_eq!(name("https://example.org/dir/"), "dir");
        assert_eq!(name("https://example.org/"), FALLBACK_FILE_NAME);
        assert_eq!(name("https://example.org/a%2Fb"), "a_b");
        assert_eq!(name("https://example.org/.bashrc"), "bashrc");
        assert_eq!(name("https://example.org/%2E%2E"), FALLBACK_FILE_NAME);
        assert_eq!(name("https://example.org/x.part"), "x.part.download");
        assert_eq!(name("https://example.org/%00evil"), "_evil");
        let long = name(&format!("https://example.org/{}", "é".repeat(200)));
        assert!(long.len() <= MAX_NAME_BYTES);
        for text in [
            "https://example.org/dir/file.tar.gz",
            "https://example.org/a%2Fb",
            "https://example.org/.bashrc",
            "https://example.org/x.part",
        ] {
            check_file_name("file_name", &name(text)).unwrap();
        }
    }
}
