//! `sluice-manual --man DIR --completions DIR`: writes the man pages of the four daemons
//! (section 8) and of sluicectl (section 1, one page per subcommand) and sluicectl's bash, zsh
//! and fish completions, from each program's clap definition, so the package's documentation
//! always matches the options the binaries really take. `packaging/build-deb.sh` runs it.
//!
//! It lives in the tests crate because it links every daemon crate (for its `Arguments`) and
//! the generators (clap_mangen, clap_complete); none of that ships in a daemon.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use clap_complete::Shell;

/// Writes sluice's man pages and shell completions (used by packaging).
#[derive(Debug, Parser)]
#[command(version)]
struct Arguments {
    /// Write every program's man page(s) into DIR.
    #[arg(long, value_name = "DIR")]
    man: Option<PathBuf>,
    /// Write sluicectl's bash, zsh and fish completions into DIR.
    #[arg(long, value_name = "DIR")]
    completions: Option<PathBuf>,
    /// Write the package's DEP-5 copyright file to FILE (needs --about and --metadata), and
    /// check it names every crate the shipped binaries link.
    #[arg(long, value_name = "FILE", requires_all = ["about", "metadata"])]
    copyright: Option<PathBuf>,
    /// cargo-about's findings: `cargo about generate --format json --workspace`.
    #[arg(long, value_name = "JSON")]
    about: Option<PathBuf>,
    /// `cargo metadata --format-version 1 --filter-platform <the package's target>`.
    #[arg(long, value_name = "JSON")]
    metadata: Option<PathBuf>,
}

/// The manual section a program's page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ManualSection {
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

fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    if let Some(folder) = &arguments.man {
        for (command, section) in programs() {
            write_man_pages(command, section, folder)?;
        }
    }
    if let Some(folder) = &arguments.completions {
        write_completions(sluicectl::command(), folder)?;
    }
    if let (Some(output), Some(about), Some(metadata)) =
        (&arguments.copyright, &arguments.about, &arguments.metadata)
    {
        write_copyright(output, about, metadata)?;
    }
    Ok(())
}

/// Writes the DEP-5 copyright file and checks it as the test does.
fn write_copyright(output: &Path, about: &Path, metadata: &Path) -> anyhow::Result<()> {
    let read_json = |path: &Path| -> anyhow::Result<serde_json::Value> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
    };
    let about = read_json(about)?;
    let metadata = read_json(metadata)?;
    let text = sluice_tests::copyright::write(&about, &metadata)?;
    let crates = sluice_tests::copyright::shipped_crates(&metadata)?;
    sluice_tests::copyright::check(&text, &crates)
        .context("the copyright file just written fails its own check")?;
    std::fs::write(output, text).with_context(|| format!("cannot write {}", output.display()))?;
    eprintln!(
        "{}: {} crates and sluice itself",
        output.display(),
        crates.len()
    );
    Ok(())
}

/// Every program the package installs, with the manual section of its page.
fn programs() -> [(clap::Command, ManualSection); 5] {
    use clap::CommandFactory;
    [
        (sluice_monitor::Arguments::command(), ManualSection::Daemon),
        (sluice_scraper::Arguments::command(), ManualSection::Daemon),
        (
            sluice_ingest_worker::Arguments::command(),
            ManualSection::Daemon,
        ),
        (sluice_web::Arguments::command(), ManualSection::Daemon),
        (sluicectl::command(), ManualSection::Command),
    ]
}

/// Writes `<name>.<section>` for the program and, for a program with subcommands, one page
/// per subcommand (`<name>-<subcommand>.<section>`, as git does); returns the files written.
fn write_man_pages(
    command: clap::Command,
    section: ManualSection,
    folder: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    create_folder(folder)?;
    let mut command = command;
    command.build();
    let mut written = Vec::new();
    write_page(&command, section, folder, &mut written)?;
    Ok(written)
}

/// Writes bash (`<name>.bash`), zsh (`_<name>`) and fish (`<name>.fish`) completions;
/// returns the files written.
fn write_completions(command: clap::Command, folder: &Path) -> anyhow::Result<Vec<PathBuf>> {
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
) -> anyhow::Result<()> {
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
        .with_context(|| format!("cannot render the man page of {name}"))?;
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

fn create_folder(folder: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(folder)
        .with_context(|| format!("cannot create the folder {}", folder.display()))
}

fn write_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file =
        File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))
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
    fn an_unwritable_folder_is_a_clear_error() {
        let folder = tempfile::tempdir().unwrap();
        let file = folder.path().join("not-a-folder");
        std::fs::write(&file, "x").unwrap();
        let error = write_man_pages(example_command(), ManualSection::Daemon, &file).unwrap_err();
        assert!(format!("{error:#}").contains("not-a-folder"), "{error:#}");
    }

    /// The pages the package installs: one per daemon in section 8, sluicectl's in section 1
    /// with one per subcommand, and sluicectl's completions for three shells.
    #[test]
    fn every_program_gets_its_page_and_sluicectl_its_completions() {
        let folder = tempfile::tempdir().unwrap();
        let man = folder.path().join("man");
        let completions = folder.path().join("completions");
        for (command, section) in programs() {
            write_man_pages(command, section, &man).unwrap();
        }
        write_completions(sluicectl::command(), &completions).unwrap();
        for page in [
            "sluice-monitor.8",
            "sluice-scraper.8",
            "sluice-ingest-worker.8",
            "sluice-web.8",
            "sluicectl.1",
            "sluicectl-jobs.1",
        ] {
            assert!(man.join(page).is_file(), "{page} is missing");
        }
        let worker = std::fs::read_to_string(man.join("sluice-ingest-worker.8")).unwrap();
        assert!(worker.contains("\\-\\-instance"), "{worker}");
        for file in ["sluicectl.bash", "_sluicectl", "sluicectl.fish"] {
            assert!(completions.join(file).is_file(), "{file} is missing");
        }
    }
}
