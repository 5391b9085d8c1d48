//! The package's machine-readable copyright file (DEP-5, Debian Policy 12.5): written by
//! `sluice-manual --copyright` from cargo-about's findings (the licence files of every crate)
//! and `cargo metadata` (which crates the shipped binaries link), and checked by the same
//! module, so the package build and the test share one definition of "complete".
//!
//! Each crate linked into a binary gets a `Files: vendor/NAME-VERSION/*` paragraph, the path
//! `cargo vendor --versioned-dirs` would give its sources, with the copyright lines of its own
//! licence files and its licence expression; each licence named gets one stand-alone paragraph
//! (the text, or the file under /usr/share/common-licenses where Debian has one).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{Context, bail, ensure};
use serde_json::Value;

/// The packages whose binaries the .deb ships: the suite's one program, which links every
/// daemon's crate and sluicectl's.
pub const SHIPPED_PACKAGES: [&str; 1] = ["sluice"];

/// DEP-5's Format: URI.
pub const FORMAT: &str = "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/";

/// Licences whose text Debian ships in /usr/share/common-licenses (base-files).
const COMMON_LICENSES: [&str; 3] = ["Apache-2.0", "MPL-2.0", "CC0-1.0"];

/// A crate from crates.io that a shipped binary links, with its licence expression (SPDX).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShippedCrate {
    pub name: String,
    pub version: String,
    pub license: Option<String>,
    pub authors: Vec<String>,
    /// Its Cargo.toml in cargo's registry cache.
    pub manifest_path: std::path::PathBuf,
}

impl ShippedCrate {
    /// Its paragraph's `Files:` pattern.
    pub fn files_pattern(&self) -> String {
        format!("vendor/{}-{}/*", self.name, self.version)
    }
}

/// The registry crates reachable from [`SHIPPED_PACKAGES`] through normal dependencies in
/// `cargo metadata --filter-platform <target>` output (build and dev dependencies and
/// proc-macros run at build time and are not in the binaries).
pub fn shipped_crates(metadata: &Value) -> anyhow::Result<Vec<ShippedCrate>> {
    let packages: BTreeMap<&str, &Value> = metadata["packages"]
        .as_array()
        .context("cargo metadata without packages")?
        .iter()
        .filter_map(|package| Some((package["id"].as_str()?, package)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata without a resolved graph")?
        .iter()
        .filter_map(|node| Some((node["id"].as_str()?, node)))
        .collect();
    let mut pending: Vec<&str> = packages
        .iter()
        .filter(|(_, package)| {
            SHIPPED_PACKAGES.contains(&package["name"].as_str().unwrap_or_default())
        })
        .map(|(id, _)| *id)
        .collect();
    ensure!(
        pending.len() == SHIPPED_PACKAGES.len(),
        "cargo metadata lacks some of {SHIPPED_PACKAGES:?}"
    );
    // A proc-macro runs in the compiler and is not linked, nor are its own dependencies.
    let is_proc_macro = |id: &str| {
        packages.get(id).is_some_and(|package| {
            package["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|target| {
                    target["kind"]
                        .as_array()
                        .is_some_and(|kinds| kinds.iter().any(|kind| kind == "proc-macro"))
                })
        })
    };
    let mut reached = BTreeSet::new();
    while let Some(id) = pending.pop() {
        if is_proc_macro(id) || !reached.insert(id) {
            continue;
        }
        let node = nodes
            .get(id)
            .with_context(|| format!("{id} not resolved"))?;
        for dependency in node["deps"].as_array().into_iter().flatten() {
            let normal = dependency["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|kind| kind["kind"].is_null());
            if normal && let Some(package) = dependency["pkg"].as_str() {
                pending.push(package);
            }
        }
    }
    let mut crates: Vec<ShippedCrate> = reached
        .into_iter()
        .filter_map(|id| packages.get(id))
        .filter(|package| package["source"].is_string())
        .map(|package| ShippedCrate {
            name: package["name"].as_str().unwrap_or_default().to_owned(),
            version: package["version"].as_str().unwrap_or_default().to_owned(),
            license: package["license"].as_str().map(str::to_owned),
            authors: package["authors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|author| author.as_str().map(str::to_owned))
                .collect(),
            manifest_path: package["manifest_path"].as_str().unwrap_or_default().into(),
        })
        .collect();
    crates.sort();
    crates.dedup();
    Ok(crates)
}

/// An SPDX licence expression in DEP-5's syntax: lower-case `or`/`and`, `with X exception`,
/// and a comma for the one grouping sluice's crates need, `(A OR B) AND C`, which DEP-5
/// writes `A or B, and C` ("and" binds tighter than "or"; no parentheses).
pub fn dep5_license(spdx: &str) -> anyhow::Result<String> {
    let spdx = spdx.trim().replace('/', " OR ");
    let (grouped, rest) = match spdx
        .strip_prefix('(')
        .and_then(|tail| tail.split_once(") AND "))
    {
        Some((inner, rest)) => (Some(inner.to_owned()), rest.to_owned()),
        None => (None, spdx.clone()),
    };
    let words = |text: &str| -> anyhow::Result<String> {
        ensure!(
            !text.contains('(') && !text.contains(')'),
            "licence expression {spdx:?} has a grouping DEP-5 cannot write"
        );
        let mut out = Vec::new();
        let mut tokens = text.split_whitespace();
        while let Some(token) = tokens.next() {
            match token {
                "OR" => out.push("or".to_owned()),
                "AND" => out.push("and".to_owned()),
                "WITH" => {
                    let exception = tokens.next().context("WITH without an exception")?;
                    let name = exception.trim_end_matches("-exception");
                    out.push(format!("with {name} exception"));
                }
                license => out.push(license.to_owned()),
            }
        }
        Ok(out.join(" "))
    };
    Ok(match grouped {
        Some(inner) => format!("{}, and {}", words(&inner)?, words(&rest)?),
        None => words(&rest)?,
    })
}

/// The licence short names a DEP-5 `License:` first line names.
pub fn license_names(dep5: &str) -> Vec<String> {
    dep5.replace(',', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .split(|word| *word == "or" || *word == "and")
        .filter_map(|words| {
            // "Apache-2.0 with LLVM exception": the licence is the first word.
            words.first().map(|word| (*word).to_owned())
        })
        .collect()
}

/// What cargo-about found for one crate: its licence expression and the texts of its licence
/// files.
#[derive(Debug, Default)]
struct Found {
    license: Option<String>,
    texts: Vec<String>,
}

/// Writes the DEP-5 file from cargo-about's JSON (`cargo about generate --format json
/// --workspace`) and `cargo metadata`; fails when a shipped crate is missing from cargo-about's
/// findings or has no licence.
pub fn write(about: &Value, metadata: &Value) -> anyhow::Result<String> {
    let crates = shipped_crates(metadata)?;
    let key = |package: &Value| {
        (
            package["name"].as_str().unwrap_or_default().to_owned(),
            package["version"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let mut found: BTreeMap<(String, String), Found> = BTreeMap::new();
    for entry in about["crates"].as_array().into_iter().flatten() {
        found.entry(key(&entry["package"])).or_default().license =
            entry["license"].as_str().map(str::to_owned);
    }
    // Licence texts per id (for the stand-alone paragraphs): the canonical text when
    // cargo-about fell back to it, else one crate's file without its copyright lines.
    let mut texts: BTreeMap<String, (bool, String)> = BTreeMap::new();
    for license in about["licenses"].as_array().into_iter().flatten() {
        let text = license["text"].as_str().unwrap_or_default();
        for user in license["used_by"].as_array().into_iter().flatten() {
            found
                .entry(key(&user["crate"]))
                .or_default()
                .texts
                .push(text.to_owned());
        }
        let id = license["id"].as_str().unwrap_or_default().to_owned();
        let canonical = license["source_path"].is_null();
        let better = match texts.get(&id) {
            None => true,
            Some((had_canonical, _)) => canonical && !had_canonical,
        };
        if better {
            texts.insert(id, (canonical, without_copyright_lines(text)));
        }
    }

    let mut out = String::new();
    writeln!(out, "Format: {FORMAT}")?;
    writeln!(out, "Upstream-Name: sluice")?;
    writeln!(
        out,
        "Upstream-Contact: sluice developers <sluice@example.org>"
    )?;
    field(
        &mut out,
        "Comment",
        "The programs in this package are built from sluice's own sources (\"Files: *\") and \
         link, statically, the Rust crates below, each named by the directory `cargo vendor \
         --versioned-dirs` gives its sources (vendor/NAME-VERSION/); every crate's source is \
         published at https://crates.io/crates/NAME/VERSION. libsqlite3-sys bundles SQLite, \
         which is in the public domain. Generated at build time by packaging/copyright.sh \
         (cargo-about and cargo metadata).",
    )?;
    out.push('\n');
    writeln!(out, "Files: *")?;
    writeln!(out, "Copyright: 2026, sluice developers")?;
    writeln!(out, "License: {}", dep5_license("MIT OR Apache-2.0")?)?;

    let mut used = BTreeSet::new();
    for shipped in &crates {
        let this = found
            .get(&(shipped.name.clone(), shipped.version.clone()))
            .with_context(|| {
                format!(
                    "cargo-about found nothing for {} {}",
                    shipped.name, shipped.version
                )
            })?;
        let spdx = shipped
            .license
            .clone()
            .or_else(|| this.license.clone())
            .with_context(|| format!("{} {} has no licence", shipped.name, shipped.version))?;
        let license = dep5_license(&spdx)?;
        used.extend(license_names(&license));
        let mut holders: Vec<String> = Vec::new();
        for text in &this.texts {
            for line in copyright_lines(text) {
                if !holders.contains(&line) {
                    holders.push(line);
                }
            }
        }
        if holders.is_empty() {
            holders = shipped.authors.clone();
        }
        if holders.is_empty() {
            holders.push(format!("the {} developers", shipped.name));
        }
        out.push('\n');
        writeln!(out, "Files: {}", shipped.files_pattern())?;
        writeln!(out, "Copyright: {}", holders[0])?;
        for holder in &holders[1..] {
            writeln!(out, " {holder}")?;
        }
        writeln!(out, "License: {license}")?;
        let mut comment = format!(
            "Source: https://crates.io/crates/{}/{}",
            shipped.name, shipped.version
        );
        if shipped.name == "ring" {
            comment.push_str(
                ". ring's own code is under ISC; the code it took from BoringSSL is under \
                 Apache-2.0 or ISC, as the top of each file says (ring's LICENSE, \
                 LICENSE-BoringSSL, LICENSE-other-bits).",
            );
        }
        field(&mut out, "Comment", &comment)?;
        if shipped.name == "ring" {
            out.push('\n');
            writeln!(
                out,
                "Files: vendor/{}-{}/src/polyfill/once_cell/*",
                shipped.name, shipped.version
            )?;
            writeln!(out, "Copyright: the once_cell developers")?;
            writeln!(out, "License: {}", dep5_license("MIT OR Apache-2.0")?)?;
            used.extend(["MIT".to_owned(), "Apache-2.0".to_owned()]);
            writeln!(out, "Comment: Code ring took from the once_cell crate.")?;
        }
        if shipped.name == "libsqlite3-sys" {
            out.push('\n');
            writeln!(
                out,
                "Files: vendor/{}-{}/sqlite3/*",
                shipped.name, shipped.version
            )?;
            writeln!(out, "Copyright: D. Richard Hipp <drh@hwaci.com>")?;
            writeln!(out, "License: public-domain")?;
            used.insert("public-domain".to_owned());
            field(
                &mut out,
                "Comment",
                "SQLite, compiled into the binaries from the amalgamation libsqlite3-sys \
                 bundles (feature \"bundled\"); see ARCHITECTURE.md for why and how its \
                 security fixes reach users.",
            )?;
        }
    }

    for name in &used {
        out.push('\n');
        writeln!(out, "License: {name}")?;
        if COMMON_LICENSES.contains(&name.as_str()) {
            body(
                &mut out,
                &format!(
                    "On Debian systems, the complete text of this licence can be found in \
                     \"/usr/share/common-licenses/{name}\"."
                ),
            )?;
        } else if name == "public-domain" {
            body(
                &mut out,
                "The author disclaims copyright to this source code. In place of a legal \
                 notice, here is a blessing:\n\n   May you do good and not evil.\n   May you \
                 find forgiveness for yourself and forgive others.\n   May you share freely, \
                 never taking more than you give.",
            )?;
        } else if let Some((_, text)) = texts.get(name) {
            body(&mut out, text)?;
        } else if let Some(text) = license_file_of(name, &crates) {
            body(&mut out, &text)?;
        } else {
            body(
                &mut out,
                &format!("The text of this licence is at https://spdx.org/licenses/{name}.html"),
            )?;
        }
    }
    Ok(out)
}

/// A DEP-5 paragraph: its fields in order, each with its first line and continuation lines.
#[derive(Debug, Clone)]
pub struct Paragraph {
    pub fields: Vec<(String, String, Vec<String>)>,
}

impl Paragraph {
    pub fn get(&self, name: &str) -> Option<&(String, String, Vec<String>)> {
        self.fields
            .iter()
            .find(|(field, _, _)| field.eq_ignore_ascii_case(name))
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.get(name).map(|(_, first, _)| first.as_str())
    }
}

/// Parses deb822 paragraphs, refusing what DEP-5 does not allow: a line that is neither a
/// field nor a continuation, an empty continuation (it must be " ."), a field twice.
pub fn parse(text: &str) -> anyhow::Result<Vec<Paragraph>> {
    let mut paragraphs = Vec::new();
    let mut current: Vec<(String, String, Vec<String>)> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        if line.is_empty() {
            if !current.is_empty() {
                paragraphs.push(Paragraph {
                    fields: std::mem::take(&mut current),
                });
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let (_, _, continuation) = current
                .last_mut()
                .with_context(|| format!("line {number}: a continuation without a field"))?;
            ensure!(
                !line.trim().is_empty(),
                "line {number}: an empty continuation line (DEP-5 writes \" .\")"
            );
            continuation.push(line.trim().to_owned());
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("line {number}: {line:?} is not a field"))?;
        ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic()),
            "line {number}: bad field name {name:?}"
        );
        ensure!(
            !current
                .iter()
                .any(|(field, _, _)| field.eq_ignore_ascii_case(name)),
            "line {number}: field {name} twice in one paragraph"
        );
        current.push((name.to_owned(), value.trim().to_owned(), Vec::new()));
    }
    if !current.is_empty() {
        paragraphs.push(Paragraph { fields: current });
    }
    Ok(paragraphs)
}

/// Checks `text` as sluice's DEP-5 file: the header, every paragraph a Files or a stand-alone
/// License paragraph with its required fields, every licence named explained once, and every
/// crate in `crates` present with its licence.
pub fn check(text: &str, crates: &[ShippedCrate]) -> anyhow::Result<()> {
    let paragraphs = parse(text)?;
    let (header, rest) = paragraphs
        .split_first()
        .context("an empty copyright file")?;
    ensure!(
        header.value("Format") == Some(FORMAT),
        "the header's Format is {:?}",
        header.value("Format")
    );
    ensure!(
        header.value("Upstream-Name") == Some("sluice"),
        "the header's Upstream-Name is {:?}",
        header.value("Upstream-Name")
    );
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let mut needed = BTreeSet::new();
    let mut explained = BTreeSet::new();
    for paragraph in rest {
        if let Some(pattern) = paragraph.value("Files") {
            for required in ["Copyright", "License"] {
                ensure!(
                    paragraph
                        .value(required)
                        .is_some_and(|value| !value.is_empty()),
                    "Files: {pattern} lacks {required}"
                );
            }
            let (_, license, license_text) = paragraph.get("License").expect("checked");
            if license_text.is_empty() {
                needed.extend(license_names(license));
            }
            ensure!(
                files.insert(pattern.to_owned(), license.clone()).is_none(),
                "Files: {pattern} twice"
            );
        } else if let Some((_, name, license_text)) = paragraph.get("License") {
            ensure!(
                paragraph.fields.len() == 1 || paragraph.get("Comment").is_some(),
                "the stand-alone License: {name} paragraph has other fields"
            );
            ensure!(
                !license_text.is_empty(),
                "the stand-alone License: {name} paragraph has no text"
            );
            ensure!(
                explained.insert(name.clone()),
                "License: {name} explained twice"
            );
        } else {
            bail!(
                "a paragraph that is neither Files nor License: {:?}",
                paragraph.fields
            );
        }
    }
    let unexplained: Vec<_> = needed.difference(&explained).collect();
    ensure!(
        unexplained.is_empty(),
        "licences named without a License paragraph: {unexplained:?}"
    );
    let mut missing = Vec::new();
    for shipped in crates {
        match files.get(&shipped.files_pattern()) {
            None => missing.push(format!("{} {}", shipped.name, shipped.version)),
            Some(license) => {
                if let Some(spdx) = &shipped.license {
                    ensure!(
                        *license == dep5_license(spdx)?,
                        "{} {} is listed as {license:?}, cargo metadata says {spdx:?}",
                        shipped.name,
                        shipped.version
                    );
                }
            }
        }
    }
    ensure!(
        missing.is_empty(),
        "{} shipped crates are not in the copyright file: {}",
        missing.len(),
        missing.join(", ")
    );
    Ok(())
}

/// The text of licence `id` from the files of a crate that offers it: cargo-about gathers the
/// text of the alternative it picks ("MIT" of "Unlicense OR MIT"), and DEP-5 wants every
/// licence named explained. A crate's file is recognised by its name ("UNLICENSE",
/// "LICENSE-MIT-0", "LICENSE-BOOST" for BSL-1.0).
fn license_file_of(id: &str, crates: &[ShippedCrate]) -> Option<String> {
    let normal = |text: &str| {
        text.chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_uppercase()
    };
    let mut keys = vec![normal(id).trim_end_matches("10").to_owned()];
    if id == "BSL-1.0" {
        keys.push("BOOST".to_owned());
    }
    for shipped in crates {
        let offers = shipped
            .license
            .as_deref()
            .is_some_and(|license| license.split([' ', '(', ')', '/']).any(|word| word == id));
        let Some(directory) = shipped.manifest_path.parent().filter(|_| offers) else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(directory) else {
            continue;
        };
        let mut names: Vec<_> = entries.flatten().map(|entry| entry.path()).collect();
        names.sort();
        for path in names {
            let name = normal(&path.file_name().unwrap_or_default().to_string_lossy());
            let is_license = name.starts_with("LICENSE")
                || name.starts_with("UNLICENSE")
                || name.starts_with("COPYING");
            // "LICENSE-MIT" must not pass for MIT-0: the key follows LICENSE exactly.
            let rest = name
                .trim_start_matches("LICENSE")
                .trim_end_matches("TXT")
                .trim_end_matches("MD");
            let matches = keys
                .iter()
                .any(|key| rest == *key || name == *key || name == format!("{key}TXT"));
            if is_license
                && matches
                && let Ok(text) = std::fs::read_to_string(&path)
            {
                return Some(without_copyright_lines(&text));
            }
        }
    }
    None
}

/// Copyright statements in a licence file, without the templates' placeholders.
fn copyright_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| is_copyright_line(line))
        // "Copyright [yyyy] [name of copyright owner]" is a template's, not a statement.
        .filter(|line| !line.contains('[') && !line.contains('{'))
        .map(|line| {
            // The field is the statement; "Copyright" is the field's name already.
            let words: Vec<_> = line.split_whitespace().collect();
            let words = match words.first() {
                Some(first) if first.eq_ignore_ascii_case("copyright") && words.len() > 1 => {
                    &words[1..]
                }
                _ => &words[..],
            };
            words.join(" ")
        })
        .filter(|line| line.chars().count() < 200)
        .collect()
}

fn is_copyright_line(line: &str) -> bool {
    let lower = line.to_lowercase();
    (lower.starts_with("copyright (c)")
        || lower.starts_with("copyright ©")
        || lower.starts_with("copyright 1")
        || lower.starts_with("copyright 2")
        || lower.starts_with("(c) 1")
        || lower.starts_with("(c) 2")
        || lower.starts_with("© 1")
        || lower.starts_with("© 2"))
        && !lower.contains("yyyy")
        && !lower.contains("<year>")
}

/// A licence file's text without its leading copyright statements (they belong to the crate
/// that shipped the file, not to the licence).
fn without_copyright_lines(text: &str) -> String {
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| !is_copyright_line(line.trim()))
        .collect();
    kept.join("\n").trim().to_owned()
}

/// A field whose value is one long line, folded.
fn field(out: &mut String, name: &str, value: &str) -> std::fmt::Result {
    let mut lines = fold(value, 76).into_iter();
    writeln!(out, "{name}: {}", lines.next().unwrap_or_default())?;
    for line in lines {
        writeln!(out, " {line}")?;
    }
    Ok(())
}

/// A licence text as continuation lines: blank lines as " .", tabs as spaces, nothing empty.
fn body(out: &mut String, text: &str) -> std::fmt::Result {
    for line in text.trim().lines() {
        let line = line.replace('\t', "    ");
        let line = line.trim_end();
        if line.is_empty() {
            writeln!(out, " .")?;
        } else if line.trim() == "." {
            writeln!(out, "  .")?;
        } else {
            writeln!(out, " {line}")?;
        }
    }
    Ok(())
}

fn fold(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("one line");
        if !last.is_empty() && last.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdx_expressions_become_dep5() {
        assert_eq!(
            dep5_license("MIT OR Apache-2.0").unwrap(),
            "MIT or Apache-2.0"
        );
        assert_eq!(
            dep5_license("(MIT OR Apache-2.0) AND Unicode-3.0").unwrap(),
            "MIT or Apache-2.0, and Unicode-3.0"
        );
        assert_eq!(
            dep5_license("Apache-2.0 WITH LLVM-exception OR MIT").unwrap(),
            "Apache-2.0 with LLVM exception or MIT"
        );
        assert_eq!(
            license_names("MIT or Apache-2.0, and Unicode-3.0"),
            ["MIT", "Apache-2.0", "Unicode-3.0"]
        );
        assert_eq!(
            license_names("Apache-2.0 with LLVM exception or MIT"),
            ["Apache-2.0", "MIT"]
        );
        assert!(dep5_license("(A AND B) OR (C AND D)").is_err());
    }

    #[test]
    fn the_check_refuses_what_dep5_does_not_allow() {
        let crates = [ShippedCrate {
            name: "a".into(),
            version: "1.0.0".into(),
            license: Some("MIT".into()),
            authors: vec![],
            manifest_path: "/nonexistent/Cargo.toml".into(),
        }];
        let good = format!(
            "Format: {FORMAT}\nUpstream-Name: sluice\n\nFiles: *\nCopyright: us\nLicense: MIT\n\n\
             Files: vendor/a-1.0.0/*\nCopyright: them\nLicense: MIT\n\nLicense: MIT\n text\n .\n more\n"
        );
        check(&good, &crates).unwrap();
        let without_crate = good.replace("vendor/a-1.0.0/*", "vendor/b-1.0.0/*");
        assert!(check(&without_crate, &crates).is_err());
        let wrong_license = good.replace(
            "Copyright: them\nLicense: MIT",
            "Copyright: them\nLicense: ISC\n isc text",
        );
        assert!(check(&wrong_license, &crates).is_err());
        let unexplained = good.replace("License: MIT\n text\n .\n more\n", "");
        assert!(check(&unexplained, &crates).is_err());
        let empty_continuation = good.replace(" .\n", " \n");
        assert!(check(&empty_continuation, &crates).is_err());
        let wrong_name = good.replace("Upstream-Name: sluice", "Upstream-Name: sluicectl");
        assert!(check(&wrong_name, &crates).is_err());
        let no_copyright = good.replace("Copyright: them\n", "");
        assert!(check(&no_copyright, &crates).is_err());
    }

    #[test]
    fn copyright_lines_are_found_and_placeholders_skipped() {
        let text = "MIT License\n\nCopyright (c) 2014 Alex Crichton <alex@example.org>\n\
                    Copyright [yyyy] [name of copyright owner]\nPermission is hereby granted";
        assert_eq!(
            copyright_lines(text),
            ["(c) 2014 Alex Crichton <alex@example.org>"]
        );
        assert_eq!(
            without_copyright_lines(text),
            "MIT License\n\nCopyright [yyyy] [name of copyright owner]\nPermission is hereby granted"
        );
    }
}
