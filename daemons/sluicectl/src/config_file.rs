//! Changes sluicectl makes to the configuration: `[ingest] workers` is written to a drop-in of
//! its own, `sluice.toml.d/90-sluicectl-workers.toml`, never to the packaged conffile (so an
//! upgrade that ships a new `/etc/sluice/sluice.toml` never asks about a line sluicectl
//! changed). The change is loaded with the daemons' own loader, with every other drop-in,
//! before anything is written, then written atomically.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sluice_core::config::{
    Config, ConfigError, ConfigFile, INGEST_WORKERS_RANGE, dropin_directory, read_config_files,
};

/// The drop-in `sluicectl workers` owns, beside the configuration file's other drop-ins.
pub const WORKERS_DROPIN: &str = "90-sluicectl-workers.toml";

/// Why the configuration was left as it was.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(
        "the number of workers must be a whole number from {} to {}, got {given:?}",
        INGEST_WORKERS_RANGE.start(),
        INGEST_WORKERS_RANGE.end()
    )]
    InvalidCount { given: String },
    /// The configuration as it is cannot be read (a file or drop-in unreadable).
    #[error("{0}; nothing changed")]
    Unreadable(#[source] ConfigError),
    /// The configuration would not load with the change (usually because it was invalid
    /// already).
    #[error("the configuration would not load after the change, not changed: {0}")]
    Invalid(#[source] ConfigError),
    /// A drop-in sorted after sluicectl's sets `[ingest] workers` too, so the change would
    /// not take effect.
    #[error(
        "{} would say workers = {workers}, but a later drop-in overrides it ({}); nothing \
         changed: remove the key there or set it there",
        dropin.display(),
        later.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    Overridden {
        dropin: PathBuf,
        workers: u32,
        later: Vec<PathBuf>,
    },
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

/// What `sluicectl workers N` will write, checked: the drop-in's path and text, the count
/// the configuration says now, and whether the drop-in changes.
#[derive(Debug)]
pub struct WorkersChange {
    pub dropin: PathBuf,
    pub text: String,
    pub previous: Option<u32>,
    pub changed: bool,
}

/// The text of sluicectl's workers drop-in.
pub fn workers_dropin_text(workers: u32) -> String {
    format!(
        "# Written by `sluicectl workers {workers}`; it rewrites this file. It overrides\n\
         # [ingest] workers of sluice.toml and of the drop-ins sorted before it.\n\
         [ingest]\nworkers = {workers}\n"
    )
}

/// Plans `[ingest] workers = workers` for the configuration file at `path` (which may be
/// missing when `missing_is_empty`, as the daemons allow at the default path): the
/// configuration is loaded as it is and with the drop-in changed, exactly as the daemons load
/// it, and the plan is returned only if the result loads and says `workers`.
pub fn plan_workers(
    path: &Path,
    missing_is_empty: bool,
    workers: u32,
) -> Result<WorkersChange, EditError> {
    if !INGEST_WORKERS_RANGE.contains(&workers) {
        return Err(EditError::InvalidCount {
            given: workers.to_string(),
        });
    }
    let files = read_config_files(path, missing_is_empty).map_err(EditError::Unreadable)?;
    let previous = Config::from_files(&files)
        .ok()
        .map(|config| config.ingest.workers);
    let dropin = dropin_directory(path).join(WORKERS_DROPIN);
    let text = workers_dropin_text(workers);
    let mut changed_files: Vec<ConfigFile> = files
        .iter()
        .filter(|file| file.path != dropin)
        .cloned()
        .collect();
    let changed = !files
        .iter()
        .any(|file| file.path == dropin && file.text == text);
    // Drop-ins merge in name order, the configuration file first.
    let position = changed_files
        .iter()
        .position(|file| {
            file.path.parent() == dropin.parent() && file.path.file_name() > dropin.file_name()
        })
        .unwrap_or(changed_files.len());
    changed_files.insert(
        position,
        ConfigFile {
            path: dropin.clone(),
            text: text.clone(),
        },
    );
    let config = Config::from_files(&changed_files).map_err(EditError::Invalid)?;
    if config.ingest.workers != workers {
        return Err(EditError::Overridden {
            dropin,
            workers,
            later: changed_files[position + 1..]
                .iter()
                .map(|file| file.path.clone())
                .collect(),
        });
    }
    Ok(WorkersChange {
        dropin,
        text,
        previous,
        changed,
    })
}

/// Writes a planned drop-in: its directory is made (mode 0755) when missing, and the file
/// replaced atomically.
pub fn write_workers_dropin(change: &WorkersChange) -> Result<(), EditError> {
    if let Some(directory) = change.dropin.parent() {
        match fs::create_dir(directory) {
            Ok(()) => {
                fs::set_permissions(directory, Permissions::from_mode(0o755)).map_err(|source| {
                    EditError::Io {
                        action: "cannot set the mode of",
                        path: directory.to_path_buf(),
                        source,
                    }
                })?
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(EditError::Io {
                    action: "cannot create",
                    path: directory.to_path_buf(),
                    source,
                });
            }
        }
    }
    replace_atomically(&change.dropin, &change.text)
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
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("sluice.toml");
        for count in [0, 257] {
            assert!(matches!(
                plan_workers(&path, true, count),
                Err(EditError::InvalidCount { .. })
            ));
        }
    }

    #[test]
    fn the_conffile_is_never_written_and_the_dropin_says_the_count() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("sluice.toml");
        let shipped = sluice_core::config::BUILT_IN_DEFAULTS;
        fs::write(&path, shipped).unwrap();
        let change = plan_workers(&path, false, 3).unwrap();
        assert_eq!(change.previous, Some(2));
        assert!(change.changed);
        assert_eq!(
            change.dropin,
            directory
                .path()
                .join("sluice.toml.d/90-sluicectl-workers.toml")
        );
        write_workers_dropin(&change).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), shipped);
        assert_eq!(Config::load(&path).unwrap().ingest.workers, 3);
        let mode = fs::metadata(change.dropin.parent().unwrap())
            .unwrap()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o755);
        // The same count again changes nothing; another replaces the drop-in.
        let again = plan_workers(&path, false, 3).unwrap();
        assert_eq!((again.previous, again.changed), (Some(3), false));
        let down = plan_workers(&path, false, 1).unwrap();
        write_workers_dropin(&down).unwrap();
        assert_eq!(Config::load(&path).unwrap().ingest.workers, 1);
        // No file at the default path: the drop-in alone.
        let bare = directory.path().join("bare.toml");
        let change = plan_workers(&bare, true, 5).unwrap();
        assert_eq!(change.previous, Some(2), "the built-in default");
        assert!(matches!(
            plan_workers(&bare, false, 5),
            Err(EditError::Unreadable(_))
        ));
    }

    #[test]
    fn a_later_dropin_or_an_invalid_configuration_stops_the_change() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("sluice.toml");
        fs::write(&path, "[ingest]\nworkers = 2\n").unwrap();
        let dropins = dropin_directory(&path);
        fs::create_dir(&dropins).unwrap();
        // A drop-in sorted before sluicectl's is overridden by it, as intended.
        fs::write(dropins.join("50-local.toml"), "[ingest]\nworkers = 4\n").unwrap();
        assert_eq!(plan_workers(&path, false, 3).unwrap().previous, Some(4));
        // One sorted after it would win: refused, naming it.
        fs::write(dropins.join("95-late.toml"), "[ingest]\nworkers = 6\n").unwrap();
        let error = plan_workers(&path, false, 3).unwrap_err();
        assert!(matches!(error, EditError::Overridden { .. }), "{error}");
        assert!(error.to_string().contains("95-late.toml"), "{error}");
        fs::remove_file(dropins.join("95-late.toml")).unwrap();
        // An invalid configuration is not made worse.
        fs::write(dropins.join("60-bad.toml"), "[jobs]\nlease = \"forever\"\n").unwrap();
        let error = plan_workers(&path, false, 3).unwrap_err();
        assert!(matches!(error, EditError::Invalid(_)), "{error}");
        assert!(error.to_string().contains("60-bad.toml"), "{error}");
        assert!(!dropins.join(WORKERS_DROPIN).exists());
    }
}
