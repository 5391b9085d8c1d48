//! Output for people (aligned tables, `key: value` lines) and for scripts (`--json`), written
//! to a locked stdout; a closed pipe (`sluicectl jobs list | head`) is not an error.

use std::io::Write;

/// Prints a value as pretty JSON followed by a newline.
pub fn print_json(value: &serde_json::Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".to_owned());
    write_out(&format!("{text}\n"));
}

/// Prints an aligned table: a header row, then one row per entry. Cells are cut at
/// `MAX_CELL_CHARS` and their line breaks flattened so a row stays one line.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| clean_cell(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    for row in &cells {
        for (index, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(index) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let mut text = String::new();
    let header_row: Vec<String> = headers.iter().map(|header| (*header).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(cells.iter()) {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(index, cell)| {
                let width = widths.get(index).copied().unwrap_or(0);
                format!("{cell:<width$}")
            })
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    write_out(&text);
}

/// Prints `key: value` lines with the keys aligned.
pub fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 1;
    let mut text = String::new();
    for (key, value) in fields {
        text.push_str(&format!(
            "{:<width$} {}\n",
            format!("{key}:"),
            clean_cell(value)
        ));
    }
    write_out(&text);
}

/// Prints one line. Control characters (a terminal's escape sequences among them, which text
/// from a feed or a server could carry) are shown as spaces, as in tables.
pub fn print_line(line: &str) {
    let flat = sluice_core::policy::controls_as_spaces(line, false);
    write_out(&format!("{flat}\n"));
}

const MAX_CELL_CHARS: usize = 60;

fn clean_cell(cell: &str) -> String {
    let flat = sluice_core::policy::controls_as_spaces(cell, false);
    if flat.chars().count() > MAX_CELL_CHARS {
        let cut: String = flat.chars().take(MAX_CELL_CHARS - 1).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

fn write_out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    // A reader that went away (a pipe into `head`) only means nobody wants the rest.
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}
