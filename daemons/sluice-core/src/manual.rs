//! Man pages and shell completions generated from each binary's clap definition, so the
//! package's documentation always matches the options the binary really takes.
//!
//! Every sluice binary flattens [`ManualArguments`] into its arguments: the hidden options
//! `--generate-man DIR` and `--generate-completions DIR` write the files and exit, before
//! logging or configuration are touched. `packaging/build-deb.sh` calls them on the release
//! binaries and packages what they write.
//!
//! ```no_run
//! use clap::{CommandFactory, Parser};
//! use sluice_core::manual::{ManualArguments, ManualSection};
//!
//! #[derive(Debug, Parser)]
//! #[command(name = "sluice-example", version, about = "An example daemon")]
//! struct Arguments {
//!     #[command(flatten)]
//!     manual: ManualArguments,
//! }
//!
//! let arguments = Arguments::parse();
//! if let Some(outcome) = arguments.manual.generate(Arguments::command(), ManualSection::Daemon) {
//!     std::process::exit(if outcome.is_ok() { 0 } else { 1 });
//! }
//! ```

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// The hidden options that make a binary write its own documentation and exit.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ManualArguments {
    /// Write this program's man page(s) into DIR and exit (used by packaging).
    #[arg(long, hide = true, value_name = "DIR")]
    pub generate_man: Option<PathBuf>,
    /// Write bash, zsh and fish completions for this program into DIR and exit (used by
    /// packaging).
    #[arg(long, hide = true, value_name = "DIR")]
    pub generate_completions: Option<PathBuf>,
}

/// The manual section a program's page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManualSection {
    /// Section 1: commands people run (sluicectl).
    Command,
    /// Section 8: daemons run by systemd.
    Daemon,
}

impl ManualSection {
    fn number(self) -> &'static str {
        match self {
            ManualSection::Command => "1",
            ManualSection::Daemon => "8",
        }
    }
}

/// Writing documentation failed.
#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    #[error("cannot create the folder {path}: {source}")]
    CreateFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ManualArguments {
    /// The two options read on their own from `arguments` (the program name first), ignoring
    /// everything else: for a program whose normal parse insists on a subcommand (sluicectl),
    /// so `sluicectl --generate-man DIR` works without one.
    pub fn from_arguments<I, T>(arguments: I) -> ManualArguments
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{Args, FromArgMatches};
        let command = ManualArguments::augment_args(
            clap::Command::new("manual")
                .ignore_errors(true)
                .disable_help_flag(true)
                .disable_version_flag(true),
        );
        command
            .try_get_matches_from(arguments)
            .ok()
            .and_then(|matches| ManualArguments::from_arg_matches(&matches).ok())
            .unwrap_or_default()
    }

    /// When `--generate-man` or `--generate-completions` was given: writes the files for
    /// `command` and returns the outcome (the caller then exits); otherwise `None`.
    pub fn generate(
        &self,
        command: clap::Command,
        section: ManualSection,
    ) -> Option<Result<Vec<PathBuf>, ManualError>> {
        if self.generate_man.is_none() && self.generate_completions.is_none() {
            return None;
        }
        let mut written = Vec::new();
        let outcome = (|| {
            if let Some(folder) = &self.generate_man {
                written.extend(write_man_pages(command.clone(), section, folder)?);
            }
            if let Some(folder) = &self.generate_completions {
                written.extend(write_completions(command.clone(), folder)?);
            }
            Ok(())
        })();
        Some(outcome.map(|()| written))
    }
}

/// Writes `<name>.<section>` for the program and, for a program with subcommands, one page
/// per subcommand (`<name>-<subcommand>.<section>`, as git does); returns the files written.
pub fn write_man_pages(
    command: clap::Command,
    section: ManualSection,
    folder: &Path,
) -> Result<Vec<PathBuf>, ManualError> {
    create_folder(folder)?;
    let mut command = command;
    command.build();
    let mut written = Vec::new();
    write_page(&command, section, folder, &mut written)?;
    Ok(written)
}

/// Writes bash (`<name>.bash`), zsh (`_<name>`) and fish (`<name>.fish`) completions;
/// returns the files written.
pub fn write_completions(
    command: clap::Command,
    folder: &Path,
) -> Result<Vec<PathBuf>, ManualError> {
    create_folder(folder)?;
    let mut command = command;
    let name = command.get_name().to_owned();
    let mut written = Vec::new();
    for (shell, file_name) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut command, &name, &mut text);
        let path = folder.join(file_name);
        write_file(&path, &text)?;
        written.push(path);
    }
    Ok(written)
}

fn write_page(
    command: &clap::Command,
    section: ManualSection,
    folder: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), ManualError> {
    // After `build()`, a subcommand's display name is its full name (sluicectl-jobs), which
    // clap_mangen also uses as the page title.
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .to_owned();
    let mut text = Vec::new();
    clap_mangen::Man::new(command.clone())
        .section(section.number())
        .manual("sluice")
        .source(format!("sluice {}", env!("CARGO_PKG_VERSION")))
        .render(&mut text)
        .map_err(|source| ManualError::Write {
            path: folder.join(&name),
            source,
        })?;
    let path = folder.join(format!("{name}.{}", section.number()));
    write_file(&path, &text)?;
    written.push(path);
    for subcommand in command.get_subcommands() {
        if subcommand.is_hide_set() || subcommand.get_name() == "help" {
            continue;
        }
        write_page(subcommand, section, folder, written)?;
    }
    Ok(())
}

fn create_folder(folder: &Path) -> Result<(), ManualError> {
    std::fs::create_dir_all(folder).map_err(|source| ManualError::CreateFolder {
        path: folder.to_owned(),
        source,
    })
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), ManualError> {
    let mut file = File::create(path).map_err(|source| ManualError::Write {
        path: path.to_owned(),
        source,
    })?;
    file.write_all(contents)
        .map_err(|source| ManualError::Write {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_command() -> clap::Command {
        clap::Command::new("sluicectl")
            .version("0.1.0")
            .about("Talks to sluice")
            .arg(
                clap::Arg::new("json")
                    .long("json")
                    .action(clap::ArgAction::SetTrue),
            )
            .subcommand(
                clap::Command::new("jobs")
                    .about("Lists jobs")
                    .subcommand(clap::Command::new("list").about("Lists the queue")),
            )
    }

    #[test]
    fn a_page_per_command_and_subcommand_with_the_full_name() {
        let folder = tempfile::tempdir().unwrap();
        let written =
            write_man_pages(example_command(), ManualSection::Command, folder.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["sluicectl.1", "sluicectl-jobs.1", "sluicectl-jobs-list.1"]
        );
        let page = std::fs::read_to_string(folder.path().join("sluicectl-jobs-list.1")).unwrap();
        assert!(page.contains(".TH sluicectl-jobs-list 1"), "{page}");
        assert!(page.contains("Lists the queue"), "{page}");
        let top = std::fs::read_to_string(folder.path().join("sluicectl.1")).unwrap();
        assert!(top.contains("\\-\\-json"), "{top}");
    }

    #[test]
    fn completions_for_three_shells_name_the_subcommands() {
        let folder = tempfile::tempdir().unwrap();
        let written = write_completions(example_command(), folder.path()).unwrap();
        assert_eq!(written.len(), 3);
        for path in written {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains("jobs"), "{}: {text}", path.display());
        }
    }

    #[test]
    fn the_options_are_found_among_other_arguments_and_only_there() {
        let found = ManualArguments::from_arguments([
            "sluicectl",
            "--generate-man",
            "/tmp/man",
            "--generate-completions",
            "/tmp/completions",
        ]);
        assert_eq!(found.generate_man, Some(PathBuf::from("/tmp/man")));
        assert_eq!(
            found.generate_completions,
            Some(PathBuf::from("/tmp/completions"))
        );
        let normal = ManualArguments::from_arguments(["sluicectl", "--json", "jobs", "list"]);
        assert!(normal.generate_man.is_none() && normal.generate_completions.is_none());
        let help = ManualArguments::from_arguments(["sluicectl", "--help"]);
        assert!(help.generate_man.is_none());
    }

    #[test]
    fn nothing_is_written_without_the_options() {
        let arguments = ManualArguments::default();
        assert!(
            arguments
                .generate(example_command(), ManualSection::Daemon)
                .is_none()
        );
    }

    #[test]
    fn an_unwritable_folder_is_a_clear_error() {
        let folder = tempfile::tempdir().unwrap();
        let file = folder.path().join("not-a-folder");
        std::fs::write(&file, "x").unwrap();
        let error = write_man_pages(example_command(), ManualSection::Daemon, &file).unwrap_err();
        assert!(error.to_string().contains("not-a-folder"), "{error}");
    }
}
