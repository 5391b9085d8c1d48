//! `sluicectl config check` and `config get KEY`.

use serde_json::{Value, json};

use super::{Failure, load_config};
use crate::output::{print_json, print_line};
use crate::{Cli, ConfigCommand};

/// `config check` and `config get KEY`. Both load the file exactly as the daemons do, so a
/// file they accept is one the daemons accept (sluice-worker-generator relies on `get`).
pub(super) fn config_command(cli: &Cli, command: &ConfigCommand) -> Result<(), Failure> {
    let (path, config) = load_config(cli).map_err(|failure| Failure {
        message: failure.message.replacen(
            "invalid configuration: ",
            "invalid configuration:\n  ",
            1,
        ),
        ..failure
    })?;
    match command {
        ConfigCommand::Check => {
            let exists = path.exists();
            // The loader just read them; a drop-in gone since is not worth failing for.
            let dropins = sluice_core::config::dropin_paths(&path).unwrap_or_default();
            if cli.json {
                print_json(&json!({
                    "path": path,
                    "valid": true,
                    "file_exists": exists,
                    "dropins": dropins,
                    "ingest": { "workers": config.ingest.workers },
                }));
            } else {
                if exists {
                    print_line(&format!("{}: valid", path.display()));
                } else {
                    print_line(&format!(
                        "{}: does not exist; the built-in defaults apply (valid)",
                        path.display()
                    ));
                }
                for dropin in &dropins {
                    print_line(&format!("  with drop-in {}", dropin.display()));
                }
            }
            Ok(())
        }
        ConfigCommand::Get { key } => {
            let value: Value = match key.as_str() {
                "ingest.workers" => config.ingest.workers.into(),
                "ingest.library" => config.ingest.library.to_string_lossy().into(),
                "store.path" => config.store.path.to_string_lossy().into(),
                "web.listen" => config.web.listen.to_string().into(),
                _ => {
                    return Err(Failure::invalid(format!(
                        "config get knows ingest.workers, ingest.library, store.path and \
                         web.listen, not {key:?}"
                    )));
                }
            };
            if cli.json {
                print_json(&json!({ "key": key, "value": value }));
            } else {
                match value {
                    Value::String(text) => print_line(&text),
                    other => print_line(&other.to_string()),
                }
            }
            Ok(())
        }
    }
}
