//! `hf://` bundles: a Hugging Face repository resolved through the Hub's HTTP API into the
//! files of one commit. `GET {hub}/api/{models|datasets}/{repo}/revision/{revision}` gives the
//! commit (`sha`) the revision points at now; `GET …/tree/{commit}?recursive=true` lists the
//! files with their sizes and, for files stored with LFS, their SHA-256 (`lfs.oid`), for the
//! others their git blob SHA-1 (`oid`); either is checked once the file is downloaded. Each
//! file is downloaded from `{hub}/[datasets/]{repo}/resolve/{commit}/{path}`, so the bundle is
//! pinned to that commit whatever the branch does later.
//!
//! The requests go through the guarded client (every address and redirect checked), with the
//! `[scraper] hf_credentials_file` header on the Hub's own origin only.

use serde::Deserialize;
use sluice_core::policy::{HfReference, MAX_BUNDLE_FILES, NewBundleFile};
use url::Url;

use crate::guard;
use crate::sources::credentials::{self, Credential};

/// The Hub's answers are small JSON documents; a larger one is refused, not buffered.
const MAX_API_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Pages of a file list followed at most (the Hub sends up to 1,000 entries a page, folders
/// included, and a bundle holds at most `MAX_BUNDLE_FILES` files).
const MAX_TREE_PAGES: usize = 50;

/// A repository at one commit, as bundle files.
#[derive(Debug)]
pub struct Resolved {
    pub commit: String,
    pub files: Vec<NewBundleFile>,
}

#[derive(Debug, Deserialize)]
struct RevisionInfo {
    sha: String,
}

#[derive(Debug, Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    size: Option<u64>,
    /// The git blob SHA-1 of the file as stored in git (for an LFS file, of its pointer).
    oid: Option<String>,
    lfs: Option<LfsInfo>,
}

#[derive(Debug, Deserialize)]
struct LfsInfo {
    oid: String,
}

/// What the resolution needs from the configuration.
pub struct Hub<'a> {
    pub client: &'a reqwest::Client,
    pub endpoint: &'a Url,
    pub credentials_file: Option<&'a std::path::Path>,
    pub allow_private_addresses: bool,
    /// Each API request, its answer read whole, must be done within this
    /// (`[scraper] request_timeout`); a Hub that stalls fails the resolution with that reason.
    pub request_timeout: std::time::Duration,
}

/// Resolves `reference` into its files at the commit its revision points at. The error is a
/// sentence for the caller (it names the repository, the revision and the Hub).
pub async fn resolve(hub: &Hub<'_>, reference: &HfReference) -> Result<Resolved, String> {
    // The API's answers may redirect like downloads do, so the same rule: bearer or basic.
    let credentials = match hub.credentials_file {
        Some(path) => credentials::for_downloads(
            credentials::read_credentials(path)
                .map_err(|error| format!("[scraper] hf_credentials_file: {error}"))?,
            &format!("[scraper] hf_credentials_file {}", path.display()),
        )?,
        None => Vec::new(),
    };
    let kind = if reference.dataset {
        "datasets"
    } else {
        "models"
    };
    let what = format!(
        "{} {} at revision {:?}",
        if reference.dataset {
            "dataset"
        } else {
            "model"
        },
        reference.repository,
        reference.revision
    );
    let revision_url = api_url(
        hub.endpoint,
        &["api", kind],
        &reference.repository,
        &["revision", &reference.revision],
    );
    let info: RevisionInfo = get_json(hub, &revision_url, &credentials, &what).await?;
    let commit = info.sha;
    if commit.len() != 40 || !commit.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(format!(
            "the Hub answered a commit {:?} for {what}, which is not 40 hex digits",
            commit.chars().take(80).collect::<String>()
        ));
    }
    let mut tree_url = api_url(
        hub.endpoint,
        &["api", kind],
        &reference.repository,
        &["tree", &commit],
    );
    tree_url.set_query(Some("recursive=true"));
    // The Hub lists a large tree a page at a time, each page naming the next in a `Link`
    // header; a next page elsewhere than the Hub is not followed.
    let mut tree: Vec<TreeEntry> = Vec::new();
    let mut next = Some(tree_url);
    let mut pages = 0;
    while let Some(page_url) = next.take() {
        pages += 1;
        if pages > MAX_TREE_PAGES {
            return Err(format!(
                "the Hub's file list of {what} has more than {MAX_TREE_PAGES} pages"
            ));
        }
        let (page, link): (Vec<TreeEntry>, _) =
            get_json_page(hub, &page_url, &credentials, &what).await?;
        // Only files are kept: a listing padded with folder entries costs nothing here.
        tree.extend(page.into_iter().filter(|entry| entry.kind == "file"));
        if tree.len() > MAX_BUNDLE_FILES {
            return Err(format!(
                "{what} has more than {MAX_BUNDLE_FILES} files, the most a bundle holds"
            ));
        }
        next = link
            .as_deref()
            .and_then(next_link)
            .and_then(|target| page_url.join(&target).ok())
            .filter(|target| target.origin() == hub.endpoint.origin());
    }
    let mut files = Vec::new();
    for entry in tree.into_iter().filter(|entry| entry.kind == "file") {
        let mut prefix = Vec::new();
        if reference.dataset {
            prefix.push("datasets");
        }
        let mut url = api_url(
            hub.endpoint,
            &prefix,
            &reference.repository,
            &["resolve", &commit],
        );
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(entry.path.split('/'));
        }
        // An LFS file is checked by its SHA-256; a small file kept in git by its blob SHA-1
        // (the `oid` of an LFS file is its pointer's, so it is not used for one).
        let (sha256, git_sha1) = match entry.lfs {
            Some(lfs) => (Some(lfs.oid), None),
            None => (None, entry.oid),
        };
        files.push(NewBundleFile {
            url: url.to_string(),
            path: Some(entry.path),
            size: entry.size,
            sha256,
            git_sha1,
        });
    }
    if files.is_empty() {
        return Err(format!("{what} has no files at commit {commit}"));
    }
    Ok(Resolved { commit, files })
}

/// `{endpoint}/{before…}/{ORG}/{NAME}/{after…}`, each piece one percent-encoded segment (a
/// revision such as `refs/pr/1` is one segment, its `/` encoded, as the Hub expects).
fn api_url(endpoint: &Url, before: &[&str], repository: &str, after: &[&str]) -> Url {
    let mut url = endpoint.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty();
        segments.extend(before);
        segments.extend(repository.split('/'));
        segments.extend(after);
    }
    url
}

async fn get_json<T: serde::de::DeserializeOwned>(
    hub: &Hub<'_>,
    url: &Url,
    credentials: &[Credential],
    what: &str,
) -> Result<T, String> {
    Ok(get_json_page(hub, url, credentials, what).await?.0)
}

/// The URL of `rel="next"` in a `Link` header, if there is one.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, parameters) = link.split_once(';')?;
        let is_next = parameters
            .split(';')
            .any(|parameter| parameter.trim().replace(' ', "") == "rel=\"next\"");
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_owned())
    })
}

/// [`get_json`] that also returns the response's `Link` header.
async fn get_json_page<T: serde::de::DeserializeOwned>(
    hub: &Hub<'_>,
    url: &Url,
    credentials: &[Credential],
    what: &str,
) -> Result<(T, Option<String>), String> {
    guard::check_target(url, hub.allow_private_addresses)
        .map_err(|refused| format!("cannot ask the Hub about {what}: {refused}"))?;
    let request =
        credentials::apply(hub.client.get(url.clone()), credentials).timeout(hub.request_timeout);
    let timed_out = || {
        format!(
            "the Hub ({url}) did not answer about {what} within {:?} ([scraper] request_timeout)",
            hub.request_timeout
        )
    };
    let mut response = request.send().await.map_err(|error| {
        if error.is_timeout() {
            return timed_out();
        }
        format!(
            "cannot ask the Hub ({url}) about {what}: {}",
            guard::describe_error(&error)
        )
    })?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(format!(
            "{what} does not exist on {} (HTTP 404 from {url})",
            hub.endpoint
        ));
    }
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(format!(
            "the Hub refused access to {what} (HTTP {status} from {url}); a gated or private \
             repository needs a token in [scraper] hf_credentials_file"
        ));
    }
    if !status.is_success() {
        return Err(format!("the Hub answered HTTP {status} for {what} ({url})"));
    }
    let link = response
        .headers()
        .get(reqwest::header::LINK)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| {
        if error.is_timeout() {
            timed_out()
        } else {
            format!("cannot read the Hub's answer about {what}: {error}")
        }
    })? {
        if body.len() + chunk.len() > MAX_API_RESPONSE_BYTES {
            return Err(format!(
                "the Hub's answer about {what} is larger than {MAX_API_RESPONSE_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let value = serde_json::from_slice(&body).map_err(|error| {
        format!("the Hub's answer about {what} ({url}) is not what its API returns: {error}")
    })?;
    Ok((value, link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_page_is_the_link_marked_next() {
        assert_eq!(
            next_link("<https://hub/api/x?cursor=abc>; rel=\"next\"").as_deref(),
            Some("https://hub/api/x?cursor=abc")
        );
        assert_eq!(
            next_link("<https://hub/a>; rel=\"prev\", <https://hub/b>; rel=\"next\"").as_deref(),
            Some("https://hub/b")
        );
        assert_eq!(next_link("<https://hub/a>; rel=\"prev\""), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn api_urls_encode_each_piece_as_one_segment() {
        let hub = Url::parse("http://127.0.0.1:9/hub/").unwrap();
        let url = api_url(
            &hub,
            &["api", "models"],
            "org/m",
            &["revision", "refs/pr/1"],
        );
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/hub/api/models/org/m/revision/refs%2Fpr%2F1"
        );
    }
}
