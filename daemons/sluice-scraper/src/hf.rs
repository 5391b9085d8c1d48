//! `hf://` bundles: a Hugging Face repository resolved through the Hub's HTTP API into the
//! files of one commit. `GET {hub}/api/{models|datasets}/{repo}/revision/{revision}` gives the
//! commit (`sha`) the revision points at now; `GET …/tree/{commit}?recursive=true` lists the
//! files with their sizes and, for files stored with LFS, their SHA-256 (`lfs.oid`). Each file
//! is then downloaded from `{hub}/[datasets/]{repo}/resolve/{commit}/{path}`, so the bundle is
//! pinned to that commit whatever the branch does later.
//!
//! The requests go through the guarded client (every address and redirect checked), with the
//! `[scraper] hf_credentials_file` header on the Hub's own origin only.

use serde::Deserialize;
use sluice_core::policy::{HfReference, NewBundleFile};
use url::Url;

use crate::guard;
use crate::sources::credentials::{self, Credential};

/// The Hub's answers are small JSON documents; a larger one is refused, not buffered.
const MAX_API_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

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
}

/// Resolves `reference` into its files at the commit its revision points at. The error is a
/// sentence for the caller (it names the repository, the revision and the Hub).
pub async fn resolve(hub: &Hub<'_>, reference: &HfReference) -> Result<Resolved, String> {
    let credentials = match hub.credentials_file {
        Some(path) => credentials::read_credentials(path)?,
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
    let tree: Vec<TreeEntry> = get_json(hub, &tree_url, &credentials, &what).await?;
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
        files.push(NewBundleFile {
            url: url.to_string(),
            path: Some(entry.path),
            sha256: entry.lfs.map(|lfs| lfs.oid),
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
    guard::check_target(url, hub.allow_private_addresses)
        .map_err(|refused| format!("cannot ask the Hub about {what}: {refused}"))?;
    let request = credentials::apply(hub.client.get(url.clone()), credentials);
    let mut response = request.send().await.map_err(|error| {
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
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| format!("cannot read the Hub's answer about {what}: {error}"))?
    {
        if body.len() + chunk.len() > MAX_API_RESPONSE_BYTES {
            return Err(format!(
                "the Hub's answer about {what} is larger than {MAX_API_RESPONSE_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|error| {
        format!("the Hub's answer about {what} ({url}) is not what its API returns: {error}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
