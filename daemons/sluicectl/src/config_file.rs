//! Changes sluicectl makes to the configuration file: `[ingest] workers` rewritten in place
//! (every comment and the layout kept), checked with the daemons' own loader before anything
//! is written, then written atomically with the file's mode and owner.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sluice_core::config::{Config, ConfigError, INGEST_WORKERS_RANGE};

/// Why the configuration file was left as it was.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(
        "the number of workers must be a whole number from {} to {}, got {given:?}",
        INGEST_WORKERS_RANGE.start(),
        INGEST_WORKERS_RANGE.end()
    )]
    InvalidCount { given: String },
    /// The file is not TOML at all, so there is nothing to edit safely.
    #[error("{path}: invalid TOML, not changed: {message}")]
    NotToml { path: PathBuf, message: String },
    /// `ingest` is a value, not a table (the daemons refuse such a file too).
    #[error("{path}: `ingest` is not a table, not changed")]
    IngestNotATable { path: PathBuf },
    /// The edited text does not load (usually because the file was invalid already).
    #[error("the configuration would not load after the change, not changed: {0}")]
    Invalid(#[source] ConfigError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reads a worker count as a person typed it: a whole number within [`INGEST_WORKERS_RANGE`].
pub fn parse_worker_count(given: &str) -> Result<u32, EditError> {
    given
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|count| INGEST_WORKERS_RANGE.contains(count))
        .ok_or_else(|| EditError::InvalidCount {
            given: given.to_owned(),
        })
}

/// `text` with `[ingest] workers` set to `workers`: the key keeps its place and the comments
/// around it, or is added to `[ingest]` (a new table at the end when there is none). The
/// result is loaded with [`Config::from_toml_str`], exactly as the daemons load the file,
/// and returned only if it loads and says `workers`. `origin` names the file in errors.
pub fn with_ingest_workers(text: &str, workers: u32, origin: &Path) -> Result<String, EditError> {
    if !INGEST_WORKERS_RANGE.contains(&workers) {
        return Err(EditError::InvalidCount {
            given: workers.to_string(),
        });
    }
    let mut document: toml_edit::DocumentMut =
        text.parse()
            .map_err(|error: toml_edit::TomlError| EditError::NotToml {
                path: origin.to_path_buf(),
                message: error.message().to_owned(),
            })?;
    let ingest = document
        .entry("ingest")
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()))
        .as_table_like_mut()
        .ok_or_else(|| EditError::IngestNotATable {
            path: origin.to_path_buf(),
        })?;
    let mut new_value = toml_edit::Value::from(i64::from(workers));
    match ingest.get_mut("workers") {
        Some(item) => {
            // The old value's decor holds the spaces around it and a comment on its line.
            if let Some(old_value) = item.as_value() {
                *new_value.decor_mut() = old_value.decor().clone();
            }
            *item = toml_edit::Item::Value(new_value);
        }
        None => {
            ingest.insert("workers", toml_edit::Item::Value(new_value));
        }
    }
    let edited = document.to_string();
    let config = Config::from_toml_str(&edited, origin).map_err(EditError::Invalid)?;
    if config.ingest.workers != workers {
        // Cannot happen with the edit above; checked so a surprise is never written.
        return Err(EditError::NotToml {
            path: origin.to_path_buf(),
            message: format!(
                "the edited file says workers = {}, not {workers}",
                config.ingest.workers
            ),
        });
    }
    Ok(edited)
}

/// Replaces the file at `path` with `contents` so that a reader (a daemon reloading, a crash
/// of this process, a power cut) sees either the old or the new file, never a mix: a temporary
/// file in the same directory, given the old file's mode and owner, fsynced, renamed over the
/// old one, then the directory fsynced. A symlink is followed, so the file it names is
/// replaced, not the link. A file that does not exist yet is created with mode 0644.
pub fn replace_atomically(path: &Path, contents: &str) -> Result<(), EditError> {
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| EditError::Io {
            action,
            path,
            source,
        }
    };
    let target = match fs::canonicalize(path) {
        Ok(target) => target,
        Err(error) if error.kind() == io::ErrorKind::NotFound => path.to_path_buf(),
        Err(error) => return Err(io_error("cannot resolve", path)(error)),
    };
    let directory = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let existing = match fs::metadata(&target) {
        Ok(metadata) => Some(metadata),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(io_error("cannot read", &target)(error)),
    };
    let mut temporary = tempfile::Builder::new()
        .prefix(".sluice-config.")
        .suffix(".new")
        .tempfile_in(&directory)
        .map_err(io_error("cannot create a file in", &directory))?;
    let temporary_path = temporary.path().to_path_buf();
    temporary
        .write_all(contents.as_bytes())
        .map_err(io_error("cannot write", &temporary_path))?;
    let mode = existing
        .as_ref()
        .map_or(0o644, |metadata| metadata.mode() & 0o7777);
    temporary
        .as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(io_error("cannot set the mode of", &temporary_path))?;
    if let Some(metadata) = &existing {
        std::os::unix::fs::fchown(
            temporary.as_file(),
            Some(metadata.uid()),
            Some(metadata.gid()),
        )
        .map_err(io_error("cannot set the owner of", &temporary_path))?;
    }
    temporary
        .as_file()
        .sync_all()
        .map_err(io_error("cannot sync", &temporary_path))?;
    temporary
        .persist(&target)
        .map_err(|error| io_error("cannot rename into", &target)(error.error))?;
    // The rename is durable only once the directory entry is on disk.
    File::open(&directory)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error("cannot sync", &directory))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "/etc/sluice/sluice.toml";

    #[test]
    fn the_shipped_file_keeps_every_comment_and_only_the_workers_line_changes() {
        let shipped = sluice_core::config::BUILT_IN_DEFAULTS;
        let edited = with_ingest_workers(shipped, 3, Path::new(ORIGIN)).unwrap();
        let changed: Vec<(&str, &str)> = shipped
            .lines()
            .zip(edited.lines())
            .filter(|(before, after)| before != after)
            .collect();
        assert_eq!(changed, vec![("workers = 2", "workers = 3")]);
        assert_eq!(shipped.lines().count(), edited.lines().count());
        let config = Config::from_toml_str(&edited, Path::new(ORIGIN)).unwrap();
        assert_eq!(config.ingest.workers, 3);
    }

    #[test]
    fn a_comment_on_the_workers_line_and_the_other_keys_stay() {
        let text = "# mine\n[ingest]\n# how many\nworkers   = 2 # two for now\nlibrary = \"/srv/library\"\n";
        let edited = with_ingest_workers(text, 17, Path::new(ORIGIN)).unwrap();
        assert_eq!(
            edited,
            "# mine\n[ingest]\n# how many\nworkers   = 17 # two for now\nlibrary = \"/srv/library\"\n"
        );
    }

    #[test]
    fn a_missing_key_is_added_to_the_ingest_table() {
        let text =
            "[ingest]\n# the library\nlibrary = \"/srv/library\"\n\n[jobs]\nlease = \"60s\"\n";
        let edited = with_ingest_workers(text, 4, Path::new(ORIGIN)).unwrap();
        assert_eq!(
            edited,
            "[ingest]\n# the library\nlibrary = \"/srv/library\"\nworkers = 4\n\n[jobs]\nlease = \"60s\"\n"
        );
    }

    #[test]
    fn a_missing_table_is_added_at_the_end() {
        let text = "# only jobs here\n[jobs]\nlease = \"60s\"\n";
        let edited = with_ingest_workers(text, 1, Path::new(ORIGIN)).unwrap();
        assert_eq!(
            edited,
            "# only jobs here\n[jobs]\nlease = \"60s\"\n\n[ingest]\nworkers = 1\n"
        );
        let edited = with_ingest_workers("", 5, Path::new(ORIGIN)).unwrap();
        assert_eq!(edited, "[ingest]\nworkers = 5\n");
    }

    #[test]
    fn dotted_and_inline_forms_are_edited_where_they_are() {
        let edited = with_ingest_workers("ingest.workers = 2\n", 6, Path::new(ORIGIN)).unwrap();
        assert_eq!(edited, "ingest.workers = 6\n");
        let edited =
            with_ingest_workers("ingest = { workers = 2 }\n", 7, Path::new(ORIGIN)).unwrap();
        assert_eq!(edited, "ingest = { workers = 7 }\n");
    }

    #[test]
    fn counts_outside_one_to_256_and_words_are_refused() {
        for given in ["0", "257", "-1", "abc", "", "2.5", "1e3", "99999999999"] {
            let error = parse_worker_count(given).expect_err(given);
            assert!(
                error.to_string().contains("from 1 to 256"),
                "{given}: {error}"
            );
        }
        assert_eq!(parse_worker_count("1").unwrap(), 1);
        assert_eq!(parse_worker_count(" 256 ").unwrap(), 256);
        assert!(matches!(
            with_ingest_workers("", 0, Path::new(ORIGIN)),
            Err(EditError::InvalidCount { .. })
        ));
        assert!(matches!(
            with_ingest_workers("", 257, Path::new(ORIGIN)),
            Err(EditError::InvalidCount { .. })
        ));
    }

    #[test]
    fn a_file_that_does_not_load_is_not_edited() {
        // Invalid TOML, `ingest` not a table, and an unknown key elsewhere: each is refused
        // with the reason, the last one by the daemons' loader naming the key.
        assert!(matches!(
            with_ingest_workers("[ingest\nworkers = 2\n", 3, Path::new(ORIGIN)),
            Err(EditError::NotToml { .. })
        ));
        assert!(matches!(
            with_ingest_workers("ingest = 3\n", 3, Path::new(ORIGIN)),
            Err(EditError::IngestNotATable { .. })
        ));
        let error = with_ingest_workers(
            "[monitor]\nno_such_key = true\n[ingest]\nworkers = 2\n",
            3,
            Path::new(ORIGIN),
        )
        .expect_err("unknown key");
        assert!(matches!(error, EditError::Invalid(_)), "{error}");
        assert!(error.to_string().contains("no_such_key"), "{error}");
    }

    #[test]
    fn refusing_leaves_the_file_byte_identical_and_replacing_keeps_mode_and_owner() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("sluice.toml");
        let original = "[monitor]\nno_such_key = true # broken\n";
        fs::write(&path, original).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
        // The command's order: edit and check first, write only what checked out.
        let text = fs::read_to_string(&path).unwrap();
        assert!(with_ingest_workers(&text, 3, &path).is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), original);

        let good = "# kept\n[ingest]\nworkers = 2\n";
        fs::write(&path, good).unwrap();
        let before = fs::metadata(&path).unwrap();
        let edited = with_ingest_workers(good, 9, &path).unwrap();
        replace_atomically(&path, &edited).unwrap();
        let after = fs::metadata(&path).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "# kept\n[ingest]\nworkers = 9\n"
        );
        assert_eq!(after.mode() & 0o7777, 0o640);
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        assert_ne!(after.ino(), before.ino(), "replaced by a rename");
        let leftovers: Vec<_> = fs::read_dir(directory.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("sluice.toml")]);
    }

    #[test]
    fn a_symlinked_config_is_replaced_behind_the_link() {
        let directory = tempfile::tempdir().unwrap();
        let real = directory.path().join("real.toml");
        let link = directory.path().join("sluice.toml");
        fs::write(&real, "[ingest]\nworkers = 2\n").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        replace_atomically(&link, "[ingest]\nworkers = 3\n").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            fs::read_to_string(&real).unwrap(),
            "[ingest]\nworkers = 3\n"
        );
    }
}
