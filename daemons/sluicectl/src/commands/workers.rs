//! `sluicectl workers N`: write `[ingest] workers` to sluicectl's drop-in and start or stop the
//! worker units.

use std::path::Path;

use serde_json::{Value, json};

use super::{BUS_TIMEOUT, Failure, config_path};
use crate::config_file;
use crate::output::{print_json, print_line};
use crate::systemd::{self, Systemd};
use crate::{Cli, exit};

/// `workers N`; the order of its checks is documented in its `--help`.
pub(super) fn workers(cli: &Cli, count: &str) -> Result<(), Failure> {
    let workers = config_file::parse_worker_count(count)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(Failure::new(
            exit::ERROR,
            "workers needs root: it writes a configuration drop-in and asks systemd to \
             start and stop units; nothing changed",
        ));
    }
    let path = config_path(cli);
    // Like the daemons: no file at the default path means the built-in defaults, and the
    // drop-in is written beside where it would be.
    let missing_is_empty =
        cli.config.is_none() && path == Path::new(sluice_core::config::DEFAULT_CONFIG_PATH);
    let change = config_file::plan_workers(&path, missing_is_empty, workers)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::new(exit::ERROR, format!("cannot start a runtime: {error}")))?;
    runtime.block_on(async {
        let (systemd, _version) = tokio::time::timeout(BUS_TIMEOUT, Systemd::connect())
            .await
            .map_err(|_| zbus::Error::Failure(format!("no answer within {BUS_TIMEOUT:?}")))
            .and_then(|connected| connected)
            .map_err(|error| {
                Failure::new(
                    exit::DAEMON_UNAVAILABLE,
                    format!(
                        "systemd cannot be reached on the system bus ({error}); nothing changed \
                         (without systemd, set [ingest] workers in {} by hand)",
                        change.dropin.display()
                    ),
                )
            })?;
        let config_changed = change.changed;
        if config_changed {
            config_file::write_workers_dropin(&change)?;
        }
        let after_write = |what: &str, error: zbus::Error| {
            Failure::new(
                exit::ERROR,
                format!(
                    "{} says workers = {workers}, but {what} failed: {error}",
                    change.dropin.display()
                ),
            )
        };
        tokio::time::timeout(systemd::JOB_DEADLINE, systemd.reload())
            .await
            .map_err(|_| zbus::Error::Failure("no answer".into()))
            .and_then(|reloaded| reloaded)
            .map_err(|error| after_write("systemctl daemon-reload", error))?;
        let units = systemd
            .sluice_units()
            .await
            .map_err(|error| after_write("listing the units", error))?;
        let target_active = units
            .iter()
            .any(|unit| unit.name == systemd::SLUICE_TARGET && unit.active_state == "active");
        let mut already_running = Vec::new();
        let mut starts = Vec::new();
        if target_active {
            for instance in 1..=workers {
                let unit = systemd::worker_unit(instance);
                let state = units.iter().find(|state| state.name == unit);
                if state.is_some_and(|state| state.active_state == "active") {
                    already_running.push(unit);
                } else {
                    starts.push(unit);
                }
            }
        }
        let stops: Vec<String> = units
            .iter()
            .filter(|unit| {
                systemd::worker_instance(&unit.name).is_some_and(|instance| instance > workers)
                    && unit.is_up()
            })
            .map(|unit| unit.name.clone())
            .collect();
        let outcomes = systemd
            .run_jobs(&starts, &stops, systemd::JOB_DEADLINE)
            .await
            .map_err(|error| after_write("starting and stopping the instances", error))?;
        report_workers(&WorkersReport {
            path: &path,
            dropin: &change.dropin,
            workers,
            previous: change.previous,
            config_changed,
            target_active,
            already_running: &already_running,
            starts: &starts,
            outcomes: &outcomes,
            json: cli.json,
        })
    })
}

struct WorkersReport<'a> {
    path: &'a Path,
    dropin: &'a Path,
    workers: u32,
    previous: Option<u32>,
    config_changed: bool,
    target_active: bool,
    already_running: &'a [String],
    starts: &'a [String],
    outcomes: &'a [systemd::JobOutcome],
    json: bool,
}

/// Prints what `workers` did; fails (exit status 1) when a job did not end `done`.
fn report_workers(report: &WorkersReport<'_>) -> Result<(), Failure> {
    let failed: Vec<&systemd::JobOutcome> = report
        .outcomes
        .iter()
        .filter(|outcome| outcome.result != "done")
        .collect();
    let outcome_json = |starting: bool| -> Vec<Value> {
        report
            .outcomes
            .iter()
            .filter(|outcome| report.starts.contains(&outcome.unit) == starting)
            .map(|outcome| {
                json!({
                    "unit": outcome.unit,
                    "result": outcome.result,
                    "seconds": outcome.took.as_secs_f64(),
                })
            })
            .collect()
    };
    if report.json {
        print_json(&json!({
            "config_path": report.path,
            "dropin": report.dropin,
            "workers": report.workers,
            "previous_workers": report.previous,
            "config_changed": report.config_changed,
            "target_active": report.target_active,
            "already_running": report.already_running,
            "started": outcome_json(true),
            "stopped": outcome_json(false),
        }));
    } else {
        let was = match report.previous {
            Some(previous) if report.config_changed => format!(" (was {previous})"),
            _ if report.config_changed => String::new(),
            _ => " (unchanged)".to_owned(),
        };
        print_line(&format!(
            "{}: [ingest] workers = {}{was}",
            report.dropin.display(),
            report.workers
        ));
        print_line(&format!(
            "systemd reloaded: sluice.target wants sluice-ingest-worker@1..{}",
            report.workers
        ));
        if !report.target_active {
            print_line("sluice.target is not active: no instance started; they start with it");
        }
        for outcome in report.outcomes {
            let verb = if report.starts.contains(&outcome.unit) {
                "started"
            } else {
                "stopped"
            };
            if outcome.result == "done" {
                print_line(&format!(
                    "{verb} {} in {:.2}s",
                    outcome.unit,
                    outcome.took.as_secs_f64()
                ));
            } else {
                print_line(&format!(
                    "not {verb}: {} (job result {})",
                    outcome.unit, outcome.result
                ));
            }
        }
        if !report.already_running.is_empty() {
            print_line(&format!(
                "already running: {}",
                report.already_running.join(", ")
            ));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        let units: Vec<String> = failed
            .iter()
            .map(|outcome| format!("{} ({})", outcome.unit, outcome.result))
            .collect();
        Err(Failure::new(
            exit::ERROR,
            format!(
                "the configuration says workers = {}, but these jobs did not finish: {}; see \
                 systemctl status and journalctl -u for each",
                report.workers,
                units.join(", ")
            ),
        ))
    }
}
