//! A bundle submission and its verdict: several downloads that land in the inbox as one
//! sub-folder, each file at a relative path inside it. [`NewBundle::validate`] checks the
//! folder name, every file (as a [`NewDownload`]) and every relative path, and that the
//! paths neither repeat nor nest inside one another; only it makes a [`ValidBundle`].
//!
//! A Hugging Face repository is named `hf://[datasets/]ORG/NAME[@REVISION]`
//! ([`parse_hf_reference`]); the scraper resolves it into files, which then pass the same
//! checks as a list a person sends.

use std::collections::BTreeSet;

use super::{
    MAX_NAME_BYTES, NewDownload, PolicyError, SubmitRules, ValidDownload, check_bundle_name,
    truncate_to_bytes, validate_submission,
};

/// Most files one bundle may hold (a model repository has a few dozen; each file is a job).
pub const MAX_BUNDLE_FILES: usize = 1000;
/// Longest relative path of a file inside a bundle, in bytes.
pub const MAX_RELATIVE_PATH_BYTES: usize = 1024;
/// Deepest relative path, in folders plus the file.
pub const MAX_RELATIVE_PATH_DEPTH: usize = 32;
/// The prefix that names a Hugging Face repository instead of a list of files.
pub const HF_PREFIX: &str = "hf://";

/// One file of a bundle as a caller sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBundleFile {
    pub url: String,
    /// Where the file goes inside the bundle's folder (`a/b.bin`); the URL's last path
    /// segment when `None`.
    pub path: Option<String>,
    /// 64 hex digits; a mismatch fails the file and with it the bundle.
    pub sha256: Option<String>,
    /// The size the file is expected to have, when known beforehand (the Hub lists it), so
    /// the bundle's total is known from the start. Not checked: the server's answer counts.
    pub size: Option<u64>,
    /// The git blob SHA-1 (40 hex digits) the file must have: `sha1("blob LEN\0" + content)`,
    /// what the Hub lists for a small file kept in git rather than LFS. A mismatch fails the
    /// file like a wrong SHA-256. Set by the `hf://` resolution only.
    pub git_sha1: Option<String>,
}

/// A bundle to submit: the folder's name in the inbox and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBundle {
    pub name: String,
    pub files: Vec<NewBundleFile>,
    /// `hf://…` when the files were resolved from a Hugging Face repository.
    pub origin: Option<String>,
    /// The commit a Hugging Face revision was pinned to.
    pub revision: Option<String>,
    /// Attempts per file; `None` = `[jobs] max_attempts`.
    pub max_attempts: Option<u32>,
}

/// One file that passed: the download (URL, file name, digest) and its relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidBundleFile {
    pub download: ValidDownload,
    pub relative_path: String,
    pub size: Option<u64>,
    /// 40 lowercase hex digits.
    pub git_sha1: Option<String>,
}

/// A bundle that passed [`NewBundle::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidBundle {
    name: String,
    origin: Option<String>,
    revision: Option<String>,
    files: Vec<ValidBundleFile>,
}

impl NewBundle {
    /// Checks the name, the number of files, each file with the download rules of
    /// [`validate_submission`] and each relative path with [`check_relative_path`]. Duplicate
    /// paths, and a path that is a folder of another (`a` and `a/b`), are refused.
    pub fn validate(&self, rules: &SubmitRules) -> Result<ValidBundle, PolicyError> {
        check_bundle_name(&self.name)?;
        if self.files.is_empty() || self.files.len() > MAX_BUNDLE_FILES {
            return Err(PolicyError::OutOfRange(format!(
                "a bundle holds 1..={MAX_BUNDLE_FILES} files, got {}",
                self.files.len()
            )));
        }
        let mut files = Vec::with_capacity(self.files.len());
        let mut paths = BTreeSet::new();
        for (index, file) in self.files.iter().enumerate() {
            let submitted = NewDownload {
                url: file.url.clone(),
                file_name: None,
                bundle: Some(self.name.clone()),
                expected_sha256: file.sha256.clone(),
                max_bytes: None,
                source: None,
                max_attempts: self.max_attempts,
            };
            let derived = validate_submission(&submitted, rules).map_err(|error| {
                with_message(&error, format!("file {index}: {}", error.message()))
            })?;
            let relative_path = match &file.path {
                Some(path) => path.clone(),
                None => derived.file_name().to_owned(),
            };
            check_relative_path(&relative_path).map_err(|error| {
                with_message(&error, format!("file {index}: {}", error.message()))
            })?;
            let file_name = relative_path
                .rsplit('/')
                .next()
                .unwrap_or(&relative_path)
                .to_owned();
            let submitted = NewDownload {
                file_name: Some(sanitized_file_name(&file_name)),
                ..submitted
            };
            let download = validate_submission(&submitted, rules)?;
            if !paths.insert(relative_path.clone()) {
                return Err(PolicyError::InvalidPath(format!(
                    "file {index}: path {:?} is given twice",
                    truncate_to_bytes(&relative_path, 100)
                )));
            }
            if let Some(size) = file.size
                && size > rules.max_download_size
            {
                return Err(PolicyError::OutOfRange(format!(
                    "file {index}: its size, {size} bytes, is more than [scraper] \
                     max_download_size ({} bytes)",
                    rules.max_download_size
                )));
            }
            let git_sha1 = match &file.git_sha1 {
                Some(digest)
                    if digest.len() == 40
                        && digest.bytes().all(|byte| byte.is_ascii_hexdigit()) =>
                {
                    Some(digest.to_ascii_lowercase())
                }
                Some(_) => {
                    return Err(PolicyError::InvalidSha256(format!(
                        "file {index}: a git blob SHA-1 is 40 hex digits"
                    )));
                }
                None => None,
            };
            files.push(ValidBundleFile {
                download,
                relative_path,
                size: file.size.filter(|size| *size <= i64::MAX as u64),
                git_sha1,
            });
        }
        // `a` and `a/b` cannot both be: one would be a file and a folder. In sorted order a
        // folder's files follow it directly (`a`, `a/b`; `a-x` sorts after `a/` only when
        // nothing under `a/` exists, since '-' < '/').
        for path in &paths {
            let folder = format!("{path}/");
            if paths
                .range(folder.clone()..)
                .next()
                .is_some_and(|next| next.starts_with(&folder))
            {
                return Err(PolicyError::InvalidPath(format!(
                    "path {:?} is both a file and the folder of another file",
                    truncate_to_bytes(path, 100)
                )));
            }
        }
        Ok(ValidBundle {
            name: self.name.clone(),
            origin: self.origin.clone(),
            revision: self.revision.clone(),
            files,
        })
    }
}

impl ValidBundle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref()
    }

    pub fn files(&self) -> &[ValidBundleFile] {
        &self.files
    }
}

/// Checks the path of a file inside a bundle: relative, 1..=1024 bytes, at most 32 elements
/// separated by `/`, each non-empty, not `.` or `..`, without `\`, control characters, white
/// space at either end or a `.part` ending, each at most 255 bytes. A leading `.` is allowed
/// (`.gitattributes`): the file is kept in the folder, the monitor just does not ingest it.
pub fn check_relative_path(path: &str) -> Result<(), PolicyError> {
    let shown = || truncate_to_bytes(path, 100);
    let refuse = |problem: &str| {
        Err(PolicyError::InvalidPath(format!(
            "path {:?} {problem}",
            shown()
        )))
    };
    if path.is_empty() {
        return refuse("must not be empty");
    }
    if path.len() > MAX_RELATIVE_PATH_BYTES {
        return refuse(&format!(
            "is {} bytes long, the limit is {MAX_RELATIVE_PATH_BYTES}",
            path.len()
        ));
    }
    if path.starts_with('/') {
        return refuse("must be relative to the bundle's folder, not absolute");
    }
    let elements: Vec<&str> = path.split('/').collect();
    if elements.len() > MAX_RELATIVE_PATH_DEPTH {
        return refuse(&format!(
            "has {} elements, the limit is {MAX_RELATIVE_PATH_DEPTH}",
            elements.len()
        ));
    }
    for element in elements {
        let problem = if element.is_empty() {
            Some("must not contain an empty element ('//' or a trailing '/')")
        } else if element == "." || element == ".." {
            Some("must not contain '.' or '..' elements")
        } else if element.len() > MAX_NAME_BYTES {
            Some("has an element longer than 255 bytes")
        } else if element.contains('\\') {
            Some("must not contain '\\'")
        } else if element.chars().any(char::is_control) {
            Some("must not contain control characters")
        } else if element.starts_with(char::is_whitespace) || element.ends_with(char::is_whitespace)
        {
            Some("must not have an element that begins or ends with white space")
        } else if element.ends_with(".part") {
            Some("must not end an element in .part (the monitor skips partial files)")
        } else {
            None
        };
        if let Some(problem) = problem {
            return refuse(problem);
        }
    }
    Ok(())
}

/// A Hugging Face repository a bundle is named after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfReference {
    /// `datasets` repositories live under other paths of the Hub than models.
    pub dataset: bool,
    /// `ORG/NAME`.
    pub repository: String,
    /// A branch, tag or commit; `main` when the reference names none.
    pub revision: String,
}

impl HfReference {
    /// The bundle folder's name when the caller gives none: `ORG--NAME`, or
    /// `datasets--ORG--NAME` (the Hub cache's own naming, without its `models--`).
    pub fn folder_name(&self) -> String {
        let name = self.repository.replace('/', "--");
        if self.dataset {
            format!("datasets--{name}")
        } else {
            name
        }
    }

    /// `hf://[datasets/]ORG/NAME@REVISION`.
    pub fn to_uri(&self, revision: &str) -> String {
        let prefix = if self.dataset { "datasets/" } else { "" };
        format!("{HF_PREFIX}{prefix}{}@{revision}", self.repository)
    }
}

/// Whether a bundle name asks for a Hugging Face repository.
pub fn is_hf_reference(name: &str) -> bool {
    name.starts_with(HF_PREFIX)
}

/// Parses `hf://[datasets/]ORG/NAME[@REVISION]`. ORG and NAME are 1..=96 characters of
/// letters, digits, `-`, `_` and `.` (not starting with `.` or `-`, no `..`), as the Hub
/// allows; a revision is 1..=255 characters of those and `/`, without `..`.
pub fn parse_hf_reference(text: &str) -> Result<HfReference, PolicyError> {
    let refuse = |problem: &str| {
        Err(PolicyError::InvalidName(format!(
            "{:?} {problem}; expected hf://ORG/NAME[@REVISION] or \
             hf://datasets/ORG/NAME[@REVISION]",
            truncate_to_bytes(text, 100)
        )))
    };
    let Some(rest) = text.strip_prefix(HF_PREFIX) else {
        return refuse("does not start with hf://");
    };
    let (dataset, rest) = match rest.strip_prefix("datasets/") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let (repository, revision) = match rest.split_once('@') {
        Some((repository, revision)) => (repository, revision),
        None => (rest, "main"),
    };
    let parts: Vec<&str> = repository.split('/').collect();
    let [organization, name] = parts.as_slice() else {
        return refuse("must name one repository as ORG/NAME");
    };
    let repository_part = |part: &str| {
        !part.is_empty()
            && part.len() <= 96
            && !part.starts_with(['.', '-'])
            && !part.contains("..")
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !repository_part(organization) || !repository_part(name) {
        return refuse(
            "has an ORG or NAME that is not 1..=96 letters, digits, '-', '_' or '.' \
             (not starting with '.' or '-', without '..')",
        );
    }
    let revision_ok = !revision.is_empty()
        && revision.len() <= 255
        && !revision.contains("..")
        && !revision.starts_with('/')
        && !revision.ends_with('/')
        && revision
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !revision_ok {
        return refuse(
            "has a revision that is not 1..=255 letters, digits, '-', '_', '.' or '/' \
             (without '..')",
        );
    }
    Ok(HfReference {
        dataset,
        repository: (*repository).to_owned(),
        revision: revision.to_owned(),
    })
}

/// The download's own file name (its last path element), made acceptable to the file-name
/// rule, which refuses a leading `.` and `..` inside a name: the relative path, not this name,
/// decides where the file lands.
fn sanitized_file_name(name: &str) -> String {
    let mut name = name.replace("..", "_");
    if name.starts_with('.') {
        name.replace_range(0..1, "_");
    }
    name
}

fn with_message(error: &PolicyError, message: String) -> PolicyError {
    match error {
        PolicyError::InvalidUrl(_) => PolicyError::InvalidUrl(message),
        PolicyError::ForbiddenAddress(_) => PolicyError::ForbiddenAddress(message),
        PolicyError::InvalidFileName(_) => PolicyError::InvalidFileName(message),
        PolicyError::InvalidName(_) => PolicyError::InvalidName(message),
        PolicyError::InvalidSha256(_) => PolicyError::InvalidSha256(message),
        PolicyError::OutOfRange(_) => PolicyError::OutOfRange(message),
        PolicyError::InvalidPath(_) => PolicyError::InvalidPath(message),
        PolicyError::InvalidDuration(_) => PolicyError::InvalidDuration(message),
        PolicyError::InvalidEventId(_) => PolicyError::InvalidEventId(message),
        PolicyError::InvalidQuery(_) => PolicyError::InvalidQuery(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: SubmitRules = SubmitRules {
        allow_private_addresses: false,
        max_download_size: 1 << 30,
    };

    fn bundle(paths: &[&str]) -> NewBundle {
        NewBundle {
            name: "model".into(),
            files: paths
                .iter()
                .map(|path| NewBundleFile {
                    url: "https://example.org/f".into(),
                    path: Some((*path).to_owned()),
                    sha256: None,
                    size: None,
                    git_sha1: None,
                })
                .collect(),
            origin: None,
            revision: None,
            max_attempts: None,
        }
    }

    #[test]
    fn a_git_blob_sha1_is_forty_hex_digits_kept_in_lowercase() {
        let mut good = bundle(&["config.json"]);
        good.files[0].git_sha1 = Some("ABCDEF0123456789abcdef0123456789ABCDEF01".into());
        let valid = good.validate(&RULES).unwrap();
        assert_eq!(
            valid.files()[0].git_sha1.as_deref(),
            Some("abcdef0123456789abcdef0123456789abcdef01")
        );
        for bad in ["abc", "", &"g".repeat(40), &"a".repeat(41)] {
            let mut hostile = bundle(&["config.json"]);
            hostile.files[0].git_sha1 = Some(bad.to_owned());
            let error = hostile.validate(&RULES).unwrap_err();
            assert_eq!(error.code(), "invalid_sha256", "{bad:?}");
            assert!(error.to_string().contains("git blob SHA-1"), "{error}");
        }
    }

    #[test]
    fn relative_paths_stay_inside_the_folder() {
        for good in ["a.bin", "sub/dir/a.bin", ".gitattributes", "x..y"] {
            check_relative_path(good).unwrap();
        }
        let long = "a/".repeat(40) + "b";
        for bad in [
            "",
            "../x",
            "a/../x",
            "/etc/x",
            "a//b",
            "a/",
            "./a",
            "a\\b",
            "a\nb",
            "a.part",
            " a",
            long.as_str(),
        ] {
            assert_eq!(
                check_relative_path(bad).unwrap_err().code(),
                "invalid_path",
                "{bad:?}"
            );
        }
        assert!(check_relative_path(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn a_bundle_refuses_duplicates_nesting_and_too_many_files() {
        let valid = bundle(&["a/b.bin", "a/c.bin", ".gitattributes"])
            .validate(&RULES)
            .unwrap();
        assert_eq!(valid.files().len(), 3);
        assert_eq!(valid.files()[2].download.file_name(), "_gitattributes");
        assert_eq!(
            bundle(&["a", "a"]).validate(&RULES).unwrap_err().code(),
            "invalid_path"
        );
        assert_eq!(
            bundle(&["a", "a/b"]).validate(&RULES).unwrap_err().code(),
            "invalid_path"
        );
        bundle(&["a", "a-b/c"]).validate(&RULES).unwrap();
        let many: Vec<String> = (0..MAX_BUNDLE_FILES + 1).map(|i| format!("f{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            bundle(&many).validate(&RULES).unwrap_err().code(),
            "out_of_range"
        );
        assert_eq!(
            bundle(&[]).validate(&RULES).unwrap_err().code(),
            "out_of_range"
        );
        let mut bad_name = bundle(&["a"]);
        bad_name.name = "../up".into();
        assert_eq!(
            bad_name.validate(&RULES).unwrap_err().code(),
            "invalid_name"
        );
    }

    #[test]
    fn a_listed_size_above_the_download_limit_is_refused() {
        let mut listed = bundle(&["a.bin", "b.bin"]);
        listed.files[0].size = Some(1 << 30);
        listed.validate(&RULES).expect("a size at the limit");
        // A hostile listing's sizes would otherwise add up past what SQLite's sum() holds.
        listed.files[1].size = Some(i64::MAX as u64);
        let error = listed.validate(&RULES).unwrap_err();
        assert_eq!(error.code(), "out_of_range");
        assert!(
            error.message().contains("file 1") && error.message().contains("max_download_size")
        );
    }

    #[test]
    fn hf_references_name_a_repository_and_a_revision() {
        let model = parse_hf_reference("hf://org/model").unwrap();
        assert_eq!(
            (
                model.dataset,
                model.repository.as_str(),
                model.revision.as_str()
            ),
            (false, "org/model", "main")
        );
        assert_eq!(model.folder_name(), "org--model");
        let dataset = parse_hf_reference("hf://datasets/org/data@v1.0").unwrap();
        assert!(dataset.dataset);
        assert_eq!(dataset.revision, "v1.0");
        assert_eq!(dataset.folder_name(), "datasets--org--data");
        parse_hf_reference("hf://org/m@refs/pr/1").unwrap();
        for bad in [
            "org/model",
            "hf://org",
            "hf://org/model/extra",
            "hf://../model",
            "hf://org/mo del",
            "hf://org/model@",
            "hf://org/model@a/../b",
            "hf://org/model@/x",
        ] {
            assert_eq!(
                parse_hf_reference(bad).unwrap_err().code(),
                "invalid_name",
                "{bad:?}"
            );
        }
    }
}
