//! System tests: the .deb installed in a real systemd (a throwaway systemd-nspawn container
//! made from the host's own root, see `sluice_tests::container`), driven the way an
//! administrator would, with `apt-get`, `systemctl`, `journalctl`, `busctl` and `sluicectl`.
//! They are part of the default test command. They need root (mounts, systemd-nspawn);
//! without it they say "skipped: needs root" (a failure when `SLUICE_REQUIRE_ROOT_TESTS=1`,
//! which CI sets). The first one to need the package builds the release .deb once per test
//! run; `SLUICE_DEB=path` tests a package built beforehand.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use sluice_tests::container::{Container, ContainerOptions, can_boot_containers, sluice_deb};
use sluice_tests::documents::{jpeg_with_exif, page_words, text_pdf};
use sluice_tests::process::{wait_until, workspace_root};

const PRIVATE_NETWORK: ContainerOptions = ContainerOptions {
    private_network: true,
};

/// Every sluice unit that `sluice.target` starts with the shipped configuration.
const SLUICE_UNITS: &[&str] = &[
    "sluice-monitor.service",
    "sluice-scraper.service",
    "sluice-web.socket",
    "sluice-web.service",
    "sluice-ingest-worker@1.service",
    "sluice-ingest-worker@2.service",
];

/// The hardening and service settings of the shipped units hold for a real program: the
/// runtime probe (a sluice-core daemon that opens a store, sends READY and pings the
/// watchdog from its loop) runs under `units/sluice-monitor.service` with only its command
/// changed, reaches READY as user `_sluice`, and a hung loop is killed and restarted by
/// systemd after `WatchdogSec=` with result `watchdog`.
#[test]
fn a_hardened_shipped_unit_runs_a_notify_daemon_and_restarts_it_when_hung() -> Result<()> {
    if !can_boot_containers()? {
        return Ok(());
    }
    let container = Container::boot(PRIVATE_NETWORK)?;
    container.copy_in(
        Path::new(env!("CARGO_BIN_EXE_runtime-probe")),
        "/usr/local/bin/runtime-probe",
    )?;
    container.copy_in(
        &workspace_root().join("packaging/sysusers.d/sluice.conf"),
        "/usr/lib/sysusers.d/sluice.conf",
    )?;
    std::fs::write(
        container.root().join("etc/probe.conf"),
        "label = hardened\n",
    )?;
    let shipped = std::fs::read_to_string(workspace_root().join("units/sluice-monitor.service"))?;
    let probe_unit: String = shipped
        .lines()
        .map(|line| {
            if line.starts_with("ExecStart=") {
                "ExecStart=/usr/local/bin/runtime-probe --database /var/lib/sluice/probe.db \
                 --config /etc/probe.conf"
                    .to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(
        container.root().join("etc/systemd/system/probe.service"),
        probe_unit,
    )?;
    container.check("chmod 0755 /usr/local/bin/runtime-probe && systemd-sysusers")?;
    container.check("systemctl daemon-reload && systemctl start probe.service")?;

    ensure!(
        container.unit_property("probe.service", "ActiveState")? == "active",
        "probe.service is not active: {}",
        container
            .sh("systemctl status probe.service")?
            .stdout_text()
    );
    let status = container.unit_property("probe.service", "StatusText")?;
    ensure!(status.contains("hardened"), "STATUS= line {status:?}");
    let user =
        container.check("ps -o user= -p \"$(systemctl show -p MainPID --value probe.service)\"")?;
    ensure!(user.trim() == "_sluice", "probe runs as {user:?}");

    let first_pid = container.unit_property("probe.service", "MainPID")?;
    let hung_at = Instant::now();
    container.check("systemctl kill --kill-who=main -s STOP probe.service")?;
    let restarted = wait_until(Duration::from_secs(90), || {
        let restarts = container.unit_property("probe.service", "NRestarts");
        let state = container.unit_property("probe.service", "SubState");
        matches!((restarts, state), (Ok(restarts), Ok(state)) if restarts == "1" && state == "running")
    });
    ensure!(
        restarted,
        "a hung probe was not restarted: {}",
        container
            .sh("systemctl status probe.service; journalctl -u probe.service")?
            .stdout_text()
    );
    eprintln!(
        "hang to watchdog restart: {:.1}s",
        hung_at.elapsed().as_secs_f64()
    );
    ensure!(container.unit_property("probe.service", "MainPID")? != first_pid);
    let journal = container.check("journalctl -u probe.service -o cat")?;
    ensure!(
        journal.contains("Watchdog timeout") && journal.contains("Failed with result 'watchdog'"),
        "the journal does not show a watchdog kill:\n{journal}"
    );
    Ok(())
}

/// The promise in every unit file: `systemd-analyze security` rates each service's exposure
/// at most 1.5, the scraper (which needs the network) at most 2.5. Needs no root and no
/// container (it reads the unit files offline), so it always runs: it is the default test
/// command's check of units/ now that `systemd-analyze verify` runs in the container.
#[test]
fn every_service_is_hardened_to_the_promised_exposure() -> Result<()> {
    for (unit, promised) in [
        ("sluice-monitor.service", 1.5),
        ("sluice-ingest-worker@.service", 1.5),
        ("sluice-web.service", 1.5),
        ("sluice-scraper.service", 2.5),
        ("sluice-maintenance.service", 1.5),
    ] {
        let exposure = offline_exposure(&workspace_root().join("units").join(unit))?;
        eprintln!("{unit}: exposure {exposure}");
        ensure!(
            exposure <= promised,
            "{unit} has exposure {exposure}, more than the promised {promised}"
        );
    }
    // RestrictSUIDSGID= makes systemd's seccomp filter fail every openat2() with ENOSYS, and
    // these daemons open, create and rename every file beneath its root with openat2
    // (sluice_core::beneath): with it, every download failed in the packaged suite, and so did
    // every upload.
    for unit in [
        "sluice-scraper.service",
        "sluice-ingest-worker@.service",
        "sluice-web.service",
    ] {
        let text = std::fs::read_to_string(workspace_root().join("units").join(unit))?;
        ensure!(
            !text
                .lines()
                .any(|line| line.trim() == "RestrictSUIDSGID=yes"),
            "{unit} sets RestrictSUIDSGID=yes, which turns openat2 into ENOSYS"
        );
    }
    Ok(())
}

/// Installing starts the whole suite, every unit reaches READY, the files land where they
/// belong (tokens readable by root only and handed to sluice-web as credentials, units that
/// verify clean with their
/// binaries and man pages present), each daemon is on the system bus, the bus policy turns
/// away an unprivileged caller, stopping the target stops everything within its timeouts, an
/// upgrade restarts the suite and keeps the token, and purging leaves nothing behind.
#[test]
fn the_package_installs_runs_upgrades_and_purges_cleanly() -> Result<()> {
    let Some(suite) = Suite::install()? else {
        return Ok(());
    };
    let container = &suite.container;

    // Installed files.
    let mut tokens = Vec::new();
    for file in ["/etc/sluice/api-token", "/etc/sluice/read-token"] {
        // Root's alone: sluice-web gets it as a credential (LoadCredential=), so neither the
        // other daemons' user _sluice nor group sluice can read it.
        let owner = container.check(&format!("stat -c '%U:%G %a' {file}"))?;
        ensure!(owner.trim() == "root:root 600", "{file} is {owner:?}");
        ensure!(
            container
                .check(&format!(
                    "runuser -u _sluice -g sluice -- cat {file} > /dev/null 2>&1 \
                     && echo readable || echo refused"
                ))?
                .trim()
                == "refused",
            "user _sluice (the scraper's, the workers') can read {file}"
        );
        let text = container.check(&format!("cat {file}"))?;
        ensure!(
            text.trim().len() == 64 && text.trim().chars().all(|c| c.is_ascii_hexdigit()),
            "{file}: token {text:?} is not 64 hex digits"
        );
        tokens.push(text);
    }
    ensure!(
        tokens[0] != tokens[1],
        "the admin and read tokens are the same"
    );
    let token_text = tokens[0].clone();
    let read_token_text = tokens[1].clone();
    // Reads need the read token on the installed package; changes refuse it.
    let answer = |authorization: &str, method: &str, path: &str| {
        container.check(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' -X {method} {authorization} \
             http://127.0.0.1:8080{path}"
        ))
    };
    let read_header = format!("-H 'Authorization: Bearer {}'", read_token_text.trim());
    ensure!(
        answer("", "GET", "/api/jobs")? == "401",
        "a read without a token"
    );
    ensure!(
        answer(&read_header, "GET", "/api/jobs")? == "200",
        "a read with the read token"
    );
    ensure!(
        answer(&read_header, "POST", "/api/jobs/1/cancel")? == "403",
        "a change with the read token"
    );
    container.check("dpkg-query -W -f='${Conffiles}' sluice | grep -q /etc/sluice/sluice.toml")?;
    // What the package needs and recommends (Debian Policy 3.5): libgcc_s (dpkg-shlibdeps
    // finds it; cargo-deb used to drop it), a dbus with send_destination_prefix (1.14), and
    // ca-certificates for HTTPS downloads.
    let depends = container.check("dpkg-query -W -f='${Depends}' sluice")?;
    for needed in ["libgcc-s1", "dbus (>= 1.14)", "systemd"] {
        ensure!(
            depends.contains(needed),
            "Depends: {depends} lacks {needed}"
        );
    }
    let recommends = container.check("dpkg-query -W -f='${Recommends}' sluice")?;
    ensure!(
        recommends.contains("ca-certificates"),
        "Recommends: {recommends} lacks ca-certificates"
    );
    container.check(
        "man -w sluice-monitor sluice-scraper sluice-ingest-worker sluice-web sluicectl \
         && test -s /usr/share/bash-completion/completions/sluicectl \
         && test -s /usr/share/zsh/vendor-completions/_sluicectl \
         && test -s /usr/share/fish/vendor_completions.d/sluicectl.fish \
         && test -s /usr/share/dbus-1/system.d/org.sluice.conf \
         && test -s /usr/lib/sysusers.d/sluice.conf \
         && test -L /etc/systemd/system/multi-user.target.wants/sluice.target",
    )?;
    let verify = container.sh("systemd-analyze verify /lib/systemd/system/sluice*")?;
    ensure!(
        verify.status.success() && verify.stdout.is_empty() && verify.stderr.is_empty(),
        "systemd-analyze verify is not clean:\n{}",
        verify.stdout_text()
    );

    // Started by the postinst; then a measured stop and start.
    suite.wait_until_every_unit_runs()?;
    let stop_started = Instant::now();
    container.check("systemctl stop sluice.target")?;
    // `systemctl stop` returns when the target is down; its units stop after it.
    let all_stopped = wait_until(Duration::from_secs(60), || {
        SLUICE_UNITS.iter().all(|unit| {
            container.unit_property(unit, "ActiveState").ok().as_deref() == Some("inactive")
        })
    });
    let stop_took = stop_started.elapsed();
    ensure!(all_stopped, "not every unit stopped within 60s");
    eprintln!(
        "systemctl stop sluice.target until every unit is inactive: {:.2}s",
        stop_took.as_secs_f64()
    );
    for unit in SLUICE_UNITS {
        let result = container.unit_property(unit, "Result")?;
        ensure!(result == "success", "{unit} stopped with result {result}");
    }
    ensure!(
        stop_took < Duration::from_secs(30),
        "stopping took {stop_took:?}, longer than TimeoutStopSec=30s"
    );
    container.check("systemctl start sluice.target")?;
    suite.wait_until_every_unit_runs()?;

    // One program under five names: the links, and each unit's process named as its program
    // (what ps, top, journald's _COMM and busctl's owner column show).
    container.check(
        "test -x /usr/lib/sluice/sluice && for link in sbin/sluice-monitor sbin/sluice-scraper \
         sbin/sluice-ingest-worker sbin/sluice-web bin/sluicectl; do \
         test \"$(readlink /usr/$link)\" = ../lib/sluice/sluice || exit 1; done",
    )?;
    for (unit, program) in [
        ("sluice-monitor.service", "sluice-monitor"),
        ("sluice-scraper.service", "sluice-scraper"),
        ("sluice-web.service", "sluice-web"),
        ("sluice-ingest-worker@1.service", "sluice-ingest-worker"),
    ] {
        let pid = container.unit_property(unit, "MainPID")?;
        let comm = container.check(&format!("cat /proc/{pid}/comm"))?;
        // The kernel keeps 15 bytes of it (TASK_COMM_LEN): sluice-ingest-w.
        let expected = &program[..program.len().min(15)];
        ensure!(
            comm.trim() == expected,
            "{unit}'s process is named {comm:?}, not {expected}"
        );
    }

    // The maintenance timer runs with the suite; its service, started now, succeeds and
    // says in the journal what it did.
    let timer = container.unit_property("sluice-maintenance.timer", "ActiveState")?;
    ensure!(timer == "active", "sluice-maintenance.timer is {timer}");
    container.check("systemctl start sluice-maintenance.service")?;
    let result = container.unit_property("sluice-maintenance.service", "Result")?;
    ensure!(
        result == "success",
        "sluice-maintenance.service ended with {result}"
    );
    let journal = container.check("journalctl --no-pager -o cat -u sluice-maintenance.service")?;
    ensure!(
        journal.contains("deleted:") && journal.contains("checkpoint:"),
        "the maintenance run said nothing of what it did: {journal}"
    );
    eprintln!(
        "systemctl start sluice.target to every unit READY: {:.3}s",
        suite.start_to_ready()?.as_secs_f64()
    );

    // On the bus, with the policy enforced.
    for (name, path, interface) in [
        (
            "org.sluice.Monitor1",
            "/org/sluice/Monitor1",
            "org.sluice.Monitor1",
        ),
        (
            "org.sluice.Scraper1",
            "/org/sluice/Scraper1",
            "org.sluice.Scraper1",
        ),
        ("org.sluice.Web1", "/org/sluice/Web1", "org.sluice.Web1"),
        (
            "org.sluice.Ingest1.Worker1",
            "/org/sluice/Ingest1/1",
            "org.sluice.Ingest1",
        ),
        (
            "org.sluice.Ingest1.Worker2",
            "/org/sluice/Ingest1/2",
            "org.sluice.Ingest1",
        ),
    ] {
        let introspection = container.check(&format!("busctl introspect {name} {path}"))?;
        ensure!(
            introspection
                .lines()
                .any(|line| line.starts_with(interface)),
            "busctl introspect {name} {path} shows no {interface}:\n{introspection}"
        );
    }
    let rescan = "busctl call org.sluice.Monitor1 /org/sluice/Monitor1 org.sluice.Monitor1 \
                  Rescan ay 0";
    let as_nobody = "setpriv --reuid=nobody --regid=nogroup --clear-groups";
    // A privileged method reaches the daemon, which asks polkit: nobody would need an
    // administrator's password, so a call that allows no interaction is refused.
    let denied = container.sh(&format!(
        "{as_nobody} {}",
        rescan.replace(
            "busctl call",
            "busctl --allow-interactive-authorization=no call"
        )
    ))?;
    ensure!(
        !denied.status.success()
            && denied
                .stdout_text()
                .contains("needs authentication for polkit action org.sluice.manage-jobs"),
        "an unprivileged Rescan was not refused through polkit: {}",
        denied.stdout_text()
    );
    // Properties and signals name private files: other users may introspect, not read.
    let denied = container.sh(&format!(
        "{as_nobody} busctl get-property org.sluice.Monitor1 /org/sluice/Monitor1 \
         org.sluice.Monitor1 WatchedPaths"
    ))?;
    ensure!(
        !denied.status.success() && denied.stdout_text().contains("Access denied"),
        "an unprivileged property read was not denied by the bus: {}",
        denied.stdout_text()
    );
    container.check(&format!(
        "{as_nobody} busctl introspect --xml-interface org.sluice.Monitor1 /org/sluice/Monitor1"
    ))?;
    container.check(
        "setpriv --reuid=nobody --regid=nogroup --groups=$(getent group sluice | cut -d: -f3) \
         busctl get-property org.sluice.Monitor1 /org/sluice/Monitor1 org.sluice.Monitor1 State",
    )?;
    container.check(rescan)?;

    // Socket activation: systemd holds the listening socket, so restarting sluice-web drops
    // no connection. Whether a request straddles the restart must not depend on how fast the
    // restart is, so some are made to by construction: the old process is frozen (SIGSTOP),
    // HELD requests connect (the kernel completes their handshake into the backlog of the
    // socket systemd holds; with the loop's own stuck request that is HELD + 1 established
    // connections) and cannot be answered by anyone until the restart; then
    // `systemctl restart` (systemd sends SIGTERM and SIGCONT) replaces the process. Meanwhile
    // a loop sends requests back to back until some were answered after the restart; every
    // request of both kinds must get a 200.
    let web = "sluice-web.service";
    let web_pid = container.unit_property(web, "MainPID")?;
    let log = container.check(&format!(
        "log=/run/restart-requests; done=/run/restart-done; rm -f $done; : > $log; \
         ( while [ ! -e $done ]; do \
             curl -s -o /dev/null -w 'loop %{{http_code}}\\n' --max-time 30 \
                 http://127.0.0.1:8080/healthz >> $log; \
           done ) & loop=$!; \
         kill -STOP {web_pid}; held=''; \
         for i in $(seq 1 {HELD_REQUESTS}); do \
             curl -s -o /dev/null -w 'held %{{http_code}}\\n' --max-time 30 \
                 http://127.0.0.1:8080/healthz >> $log & held=\"$held $!\"; \
         done; \
         tries=0; \
         until [ $(ss -Htn state established '( dport = :8080 )' | wc -l) -gt {HELD_REQUESTS} ]; do \
             tries=$((tries + 1)); [ $tries -lt 600 ] || {{ echo 'held requests never connected'; kill -CONT {web_pid}; exit 1; }}; \
             sleep 0.05; \
         done; \
         echo \"answered while frozen: $(grep -c '^held' $log)\"; \
         echo restarting >> $log; systemctl restart {web}; echo restarted >> $log; \
         wait $held; \
         tries=0; \
         until sed '1,/^restarted$/d' $log | grep -q '^loop'; do \
             tries=$((tries + 1)); [ $tries -lt 600 ] || break; sleep 0.05; \
         done; \
         touch $done; wait $loop; cat $log"
    ))?;
    let answered_while_frozen = log
        .lines()
        .find_map(|line| line.strip_prefix("answered while frozen: "))
        .unwrap_or("?");
    ensure!(
        answered_while_frozen == "0",
        "a request was answered while sluice-web was stopped ({answered_while_frozen}):\n{log}"
    );
    let results = |kind: &str| -> Vec<&str> {
        log.lines()
            .filter_map(|line| line.strip_prefix(kind))
            .collect()
    };
    let held = results("held ");
    let looped = results("loop ");
    ensure!(
        held.len() == HELD_REQUESTS && held.iter().all(|code| *code == "200"),
        "requests held across the web restart were not all answered \
         (want {HELD_REQUESTS} × 200):\n{log}"
    );
    ensure!(
        !looped.is_empty() && looped.iter().all(|code| *code == "200"),
        "back-to-back requests during a web restart were not all answered with 200:\n{log}"
    );
    let after = log
        .lines()
        .skip_while(|line| *line != "restarted")
        .filter(|line| line.starts_with("loop "))
        .count();
    ensure!(
        after > 0,
        "no back-to-back request was answered after the restart:\n{log}"
    );
    ensure!(
        container.unit_property(web, "MainPID")? != web_pid,
        "sluice-web was not restarted"
    );
    eprintln!(
        "sluice-web restart: {HELD_REQUESTS} requests held across it and {} back to back, \
         all answered",
        looped.len()
    );

    // Upgrade (the same package again): the services restart, the listening socket does not
    // (a restarted socket refuses connections for a moment), the tokens stay.
    // What D-Bus clients look for (issue 17, finding 6): each interface's XML, and activation
    // by name: a stopped daemon is started by systemd (SystemdService=) when its name is
    // called, and systemd knows the name (BusName=).
    for interface in ["Monitor1", "Scraper1", "Ingest1", "Web1", "Job1"] {
        container.check(&format!(
            "test -s /usr/share/dbus-1/interfaces/org.sluice.{interface}.xml"
        ))?;
    }
    ensure!(
        container.unit_property("sluice-scraper.service", "BusName")? == "org.sluice.Scraper1",
        "sluice-scraper.service does not name its bus name"
    );
    container.check("systemctl stop sluice-scraper.service")?;
    container.check(
        "busctl --system call org.sluice.Scraper1 /org/sluice/Scraper1 \
         org.freedesktop.DBus.Peer Ping",
    )?;
    // The reply comes once the name is owned; READY=1 may follow a moment later.
    suite.wait_until_every_unit_runs()?;
    ensure!(
        container
            .check("systemctl is-active sluice-scraper.service")?
            .trim()
            == "active",
        "calling org.sluice.Scraper1 did not start sluice-scraper.service"
    );

    // The admin token is given the owners of versions before LoadCredential= (root:sluice
    // 0640, readable by every daemon), so the upgrade must replace it; the read token keeps
    // today's (root:root 0600), so the upgrade must keep it.
    let socket = "sluice-web.socket";
    let socket_since = container.unit_property(socket, "ActiveEnterTimestampMonotonic")?;
    let pids_before = suite.main_pids()?;
    container
        .check("chown root:sluice /etc/sluice/api-token && chmod 0640 /etc/sluice/api-token")?;
    container.check(&format!("dpkg -i {}", suite.deb_in_container))?;
    suite.wait_until_every_unit_runs()?;
    let pids_after = suite.main_pids()?;
    for ((unit, before), (_, after)) in pids_before.iter().zip(&pids_after) {
        ensure!(
            before != after,
            "{unit} was not restarted by the upgrade (PID {before})"
        );
    }
    ensure!(
        container.unit_property(socket, "ActiveEnterTimestampMonotonic")? == socket_since,
        "the upgrade restarted {socket}"
    );
    let new_token = container.check("cat /etc/sluice/api-token")?;
    ensure!(
        new_token != token_text && new_token.trim().len() == 64,
        "the upgrade kept the admin token that group sluice could read: {new_token:?}"
    );
    let old_admin = format!("-H 'Authorization: Bearer {}'", token_text.trim());
    let new_admin = format!("-H 'Authorization: Bearer {}'", new_token.trim());
    ensure!(
        answer(&old_admin, "GET", "/api/jobs")? == "401",
        "the replaced admin token still works"
    );
    ensure!(
        answer(&new_admin, "GET", "/api/jobs")? == "200",
        "the new admin token does not work"
    );
    ensure!(
        container.check("cat /etc/sluice/read-token")? == read_token_text,
        "upgrade changed the read token"
    );
    for file in ["/etc/sluice/api-token", "/etc/sluice/read-token"] {
        let owner = container.check(&format!("stat -c '%U:%G %a' {file}"))?;
        ensure!(
            owner.trim() == "root:root 600",
            "the upgrade left {file} as {owner:?}"
        );
    }
    ensure!(
        answer(&read_header, "GET", "/api/jobs")? == "200",
        "a read with the read token after the upgrade"
    );

    // Limits: every service runs in sluice.slice, which bounds the suite; and a daemon that
    // crashes six times in a row (the old start limit gave up after five in a minute, about
    // 6 s of crashing) is still restarted.
    for unit in SLUICE_UNITS
        .iter()
        .filter(|unit| unit.ends_with(".service"))
    {
        let slice = container.unit_property(unit, "Slice")?;
        ensure!(slice == "sluice.slice", "{unit} runs in {slice}");
    }
    let memory_max = container.unit_property("sluice.slice", "MemoryMax")?;
    ensure!(
        memory_max.parse::<u64>().is_ok(),
        "sluice.slice has no MemoryMax: {memory_max}"
    );
    let monitor = "sluice-monitor.service";
    for crash in 1..=6 {
        let pid = container.unit_property(monitor, "MainPID")?;
        container.check(&format!("systemctl kill --kill-who=main -s KILL {monitor}"))?;
        let restarted = wait_until(Duration::from_secs(60), || {
            container
                .unit_property(monitor, "MainPID")
                .is_ok_and(|now| now != pid && now != "0")
                && unit_runs(container, monitor).unwrap_or(false)
        });
        ensure!(
            restarted,
            "{monitor} was not restarted after crash {crash}: {}",
            container
                .sh(&format!("systemctl status --no-pager {monitor}"))?
                .stdout_text()
        );
    }

    // Remove stops everything and keeps state; purge removes it.
    container.check("apt-get remove -y sluice")?;
    for unit in SLUICE_UNITS
        .iter()
        .chain(&["sluice.slice", "sluice-maintenance.timer"])
    {
        let state = container.unit_property(unit, "ActiveState")?;
        ensure!(
            state != "active",
            "{unit} still {state} after apt-get remove"
        );
    }
    container.check(
        "test -d /var/lib/sluice && test -e /etc/sluice/api-token \
         && test -e /etc/sluice/read-token",
    )?;
    // Purge deletes the database and the partial downloads but keeps a library (or inbox)
    // that holds files: it may be the only copy of them (Debian Policy: purge must not
    // destroy users' data). An empty one goes.
    container.check(
        "mkdir -p /var/lib/sluice/library/ab/cd && echo only-copy > /var/lib/sluice/library/ab/cd/abcd",
    )?;
    let purge = container.check("apt-get purge -y sluice 2>&1")?;
    ensure!(
        purge.contains("kept /var/lib/sluice/library"),
        "purge did not say it kept the library:\n{purge}"
    );
    ensure!(
        container
            .check("cat /var/lib/sluice/library/ab/cd/abcd")?
            .trim()
            == "only-copy",
        "purge deleted the library"
    );
    container.check(
        "test ! -e /var/lib/sluice/sluice.db && test ! -e /var/lib/sluice/staging \
         && test ! -e /var/lib/sluice/inbox",
    )?;
    container.check("rm -r /var/lib/sluice")?;
    let leftovers = container.sh(
        "dpkg -l sluice 2>/dev/null | grep '^[a-z][a-z] *sluice '; \
         ls -d /lib/systemd/system/sluice* /etc/systemd/system/*/sluice* /var/lib/sluice \
               /etc/sluice /usr/bin/sluice* /usr/sbin/sluice* /usr/lib/sluice /lib/systemd/system-generators/sluice* /usr/share/dbus-1/system.d/org.sluice.conf 2>/dev/null; \
         pgrep -a -u _sluice; \
         systemctl list-units --all --plain --no-legend 'sluice*'",
    )?;
    ensure!(
        leftovers.stdout.is_empty(),
        "apt-get purge left things behind:\n{}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
    Ok(())
}

/// A file dropped into the inbox becomes a document (as `sluicectl` inside sees it), and
/// `journalctl -u sluice-ingest-worker@1 F_JOB_ID=<id>` finds the lines of its ingest job.
/// A file uploaded with `curl` and `?wait=` is answered with its document, through the same
/// path, by the hardened units as installed.
#[test]
fn inbox_files_and_uploads_become_documents_with_their_jobs_in_the_journal() -> Result<()> {
    let Some(suite) = Suite::running()? else {
        return Ok(());
    };
    // One worker, so the job's lines are in worker 1's journal.
    suite
        .container
        .check("systemctl stop sluice-ingest-worker@2.service")?;
    suite.drop_into_inbox("journal-proof.txt", "a file for the system test\n")?;
    let document = suite.wait_for_document("journal-proof.txt", Duration::from_secs(60))?;
    ensure!(document["size"] == 27, "document {document}");
    let job = suite
        .find_job("journal-proof.txt")?
        .context("no ingest job names journal-proof.txt")?;
    ensure!(job["state"] == "succeeded", "job {job}");
    let job_id = job["id"].as_i64().context("job id")?;
    let lines = suite.container.check(&format!(
        "journalctl --no-pager -o cat -u sluice-ingest-worker@1 F_JOB_ID={job_id}"
    ))?;
    ensure!(
        !lines.trim().is_empty() && !lines.contains("-- No entries --"),
        "no journal lines for job {job_id}"
    );

    let token = suite.container.check("cat /etc/sluice/api-token")?;
    let answer = suite.container.check(&format!(
        "printf 'uploaded by curl\\n' > /root/upload-proof.txt && \
         curl -s -w '\\n%{{http_code}}' -H 'Authorization: Bearer {}' \
         -F 'file=@/root/upload-proof.txt' 'http://127.0.0.1:8080/api/documents?wait=60s'",
        token.trim()
    ))?;
    let (body, status) = answer
        .trim()
        .rsplit_once('\n')
        .context("curl printed no status line")?;
    if status != "200" {
        let journal = suite
            .container
            .check("journalctl --no-pager -o cat -u sluice-web -n 30")
            .unwrap_or_default();
        bail!("upload answered {status}: {body}\nsluice-web's journal:\n{journal}");
    }
    let body: serde_json::Value = serde_json::from_str(body).context("upload answer")?;
    let job = &body["uploads"][0]["job"];
    ensure!(job["state"] == "succeeded", "upload answer {body}");
    ensure!(
        job["document"]["original_name"] == "upload-proof.txt" && job["document"]["size"] == 17,
        "upload answer {body}"
    );
    suite.wait_for_document("upload-proof.txt", Duration::from_secs(60))?;
    let upload_job = job["id"].as_i64().context("upload job id")?;
    let lines = suite.container.check(&format!(
        "journalctl --no-pager -o cat -u sluice-web F_JOB_ID={upload_job}"
    ))?;
    ensure!(
        lines.contains("upload-proof.txt"),
        "sluice-web's journal does not name the upload of job {upload_job}: {lines}"
    );
    let staging = suite
        .container
        .check("find /var/lib/sluice/staging /var/lib/sluice/inbox -type f")?;
    ensure!(staging.trim().is_empty(), "files left behind: {staging}");
    Ok(())
}

/// A one-shot processor for the installed suite's JPEGs (a drop-in): it tries what a
/// confined processor must not do and prints what happened as JSON.
const PROBE_PROCESSOR: &str = r#"#!/bin/sh
try() { if (eval "$1") 2>/dev/null; then echo allowed; else echo refused; fi; }
input=$1
db=$(try ': >> /var/lib/sluice/sluice.db')
read_db=$(try 'head -c 16 /var/lib/sluice/sluice.db > /dev/null')
read_input=$(try 'head -c 2 "$input" > /dev/null')
mode=$(try 'chmod u+r /var/lib/sluice/sluice.db')
library=$(try ': > /var/lib/sluice/library/planted')
tmp=$(try ': > "$TMPDIR/mine"')
signal=$(try "kill -0 $PPID")
printf '{"database":"%s","read_database":"%s","input":"%s","mode":"%s","library":"%s","tmpdir":"%s","signal":"%s","user":"%s"}' \
    "$db" "$read_db" "$read_input" "$mode" "$library" "$tmp" "$signal" "$(id -un)"
"#;

/// The extraction child, the PDF thumbnailer, a configured processor and content serving
/// work under the shipped hardening (seccomp filter, rlimits, read-only system, no network
/// for the worker, Landlock for what the worker starts): a three-page PDF and a JPEG with
/// EXIF uploaded with `curl` become documents with their metadata, per-page search hits and
/// thumbnails; the processor ran on the JPEG as `_sluice`, could write its `TMPDIR` but not
/// the database or the library, nor signal its worker, could read the JPEG but not the
/// database; the PDF's bytes come back by Range.
#[test]
fn a_pdf_and_a_photo_are_read_searched_and_thumbnailed_by_the_installed_suite() -> Result<()> {
    let Some(suite) = Suite::running()? else {
        return Ok(());
    };
    let etc = suite.container.root().join("etc/sluice/sluice.toml.d");
    std::fs::create_dir_all(&etc).context("the drop-in folder")?;
    std::fs::write(
        suite.container.root().join("usr/local/bin/sluice-probe"),
        PROBE_PROCESSOR,
    )
    .context("write the probe processor")?;
    std::fs::write(
        etc.join("50-probe.toml"),
        "[[processor]]\nname = \"probe\"\nmime = \"image/jpeg\"\n\
         argv = [\"/usr/local/bin/sluice-probe\", \"{path}\"]\n",
    )
    .context("write the processor's drop-in")?;
    suite.container.check(
        "chmod 0755 /usr/local/bin/sluice-probe && chmod 0644 /etc/sluice/sluice.toml.d/50-probe.toml \
         && systemctl restart sluice-ingest-worker@1.service sluice-ingest-worker@2.service",
    )?;
    suite.wait_until_every_unit_runs()?;
    let pages: Vec<String> = (1..=3)
        .map(|page| page_words(page, 200, &format!("sysmark{page}")))
        .collect();
    let pdf = text_pdf(&pages, &[("Title", "Installed suite report")]);
    let photo = jpeg_with_exif(320, 200, "2024:05:06 07:08:09", "Sluice", "Camera 1", 6);
    let root = suite.container.root().join("root");
    std::fs::write(root.join("system-report.pdf"), &pdf).context("write the PDF")?;
    std::fs::write(root.join("system-photo.jpg"), &photo).context("write the JPEG")?;
    let token = suite.container.check("cat /etc/sluice/api-token")?;
    let token = token.trim();
    let api = |script: &str| -> Result<(String, String)> {
        let answer = suite.container.check(&format!(
            "curl -s -w '\\n%{{http_code}}' -H 'Authorization: Bearer {token}' {script}"
        ))?;
        let (body, status) = answer
            .trim_end()
            .rsplit_once('\n')
            .context("curl printed no status line")?;
        Ok((body.to_owned(), status.to_owned()))
    };

    let (body, status) = api(
        "-F 'file=@/root/system-report.pdf' -F 'file=@/root/system-photo.jpg' \
         'http://127.0.0.1:8080/api/documents?wait=120s'",
    )?;
    if status != "200" {
        let journal = suite.container.check(
            "journalctl --no-pager -o cat -u 'sluice-ingest-worker@*' -u sluice-web -n 40",
        )?;
        bail!("upload answered {status}: {body}\njournal:\n{journal}");
    }
    let body: serde_json::Value = serde_json::from_str(&body).context("upload answer")?;
    let uploads = body["uploads"].as_array().context("uploads")?;
    ensure!(uploads.len() == 2, "upload answer {body}");
    let mut documents = Vec::new();
    for upload in uploads {
        let job = &upload["job"];
        ensure!(job["state"] == "succeeded", "upload answer {body}");
        documents.push(job["document"].clone());
    }
    let pdf_document = &documents[0];
    let photo_document = &documents[1];
    ensure!(
        pdf_document["mime"] == "application/pdf"
            && pdf_document["metadata"]["pages"] == 3
            && pdf_document["metadata"]["title"] == "Installed suite report",
        "the PDF's document {pdf_document}"
    );
    ensure!(
        photo_document["metadata"]["width"] == 320
            && photo_document["metadata"]["exif"]["camera_model"] == "Camera 1",
        "the photo's document {photo_document}"
    );
    // Landlock scopes signals from ABI 6 (Linux 6.12); the container runs the host's kernel.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version: Vec<u32> = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .take(2)
        .collect();
    let signal = if version.as_slice() >= [6, 12].as_slice() {
        "refused"
    } else {
        "allowed"
    };
    let probe = &photo_document["metadata"]["processors"]["probe"];
    ensure!(
        *probe
            == serde_json::json!({
                "database": "refused",
                "read_database": "refused",
                "input": "allowed",
                "mode": "refused",
                "library": "refused",
                "tmpdir": "allowed",
                "signal": signal,
                "user": "_sluice",
            }),
        "the probe processor under the installed worker reported {probe}"
    );

    // Each page's marker finds that page of that document.
    for page in 1..=3 {
        let (hits, status) = api(&format!(
            "'http://127.0.0.1:8080/api/documents?q=sysmark{page}'"
        ))?;
        ensure!(status == "200", "search answered {status}: {hits}");
        let hits: serde_json::Value = serde_json::from_str(&hits).context("search answer")?;
        let items = hits["items"].as_array().context("search items")?;
        ensure!(
            items.len() == 1 && items[0]["id"] == pdf_document["id"] && items[0]["page"] == page,
            "search for sysmark{page}: {hits}"
        );
    }

    // Both have thumbnails (the PDF's drawn by pdftoppm inside the worker's sandbox), and the
    // PDF's bytes come back as stored, a range at a time. A thumbnail is made by a job of its
    // own after the ingest, so the upload's answer can come before it: while it is pending the
    // answer is a 404 whose reason is thumbnail_pending, asked again until it is not.
    for document in [pdf_document, photo_document] {
        let id = &document["id"];
        let mut status = String::new();
        let mut failure = None;
        wait_until(Duration::from_secs(120), || {
            match api(&format!(
                "-o /root/thumb.png 'http://127.0.0.1:8080/api/documents/{id}/thumbnail'"
            )) {
                Ok((_, answered)) => status = answered,
                Err(error) => {
                    failure = Some(error);
                    return true;
                }
            }
            let pending = status == "404"
                && std::fs::read_to_string(root.join("thumb.png"))
                    .is_ok_and(|body| body.contains("thumbnail_pending"));
            !pending
        });
        if let Some(error) = failure {
            return Err(error);
        }
        let answer = std::fs::read_to_string(root.join("thumb.png")).unwrap_or_default();
        ensure!(
            status == "200",
            "thumbnail of {document} answered {status}: {answer}"
        );
        let magic = suite
            .container
            .check("head -c 4 /root/thumb.png | od -An -tx1")?;
        ensure!(
            magic.split_whitespace().collect::<Vec<_>>() == ["89", "50", "4e", "47"],
            "thumbnail of {document} is not a PNG: {magic}"
        );
    }
    let id = &pdf_document["id"];
    let (_, status) = api(&format!(
        "-r 0-99 -o /root/range.bin 'http://127.0.0.1:8080/api/documents/{id}/content'"
    ))?;
    ensure!(status == "206", "range of the PDF answered {status}");
    let range = std::fs::read(root.join("range.bin")).context("read the range")?;
    ensure!(
        range == pdf[..100],
        "the range is not the PDF's first 100 bytes"
    );

    // `sluicectl submit` as root: it believes the address sluice-web announces on the bus
    // only because systemd says the name's owner is sluice-web.service, and then uploads.
    // (A drop-in that only sluicectl reads, since no daemon is reloaded, makes [web] listen
    // name another port, so the address cannot be believed for matching it.)
    std::fs::write(root.join("ctl-proof.txt"), "submitted by sluicectl\n")?;
    std::fs::write(
        etc.join("60-other-listen.toml"),
        "[web]\nlisten = \"127.0.0.1:9\"\n",
    )?;
    let submitted = suite.container.check(
        "chmod 0644 /etc/sluice/sluice.toml.d/60-other-listen.toml && \
         sluicectl --json submit /root/ctl-proof.txt --wait 60s; \
         status=$?; rm -f /etc/sluice/sluice.toml.d/60-other-listen.toml; exit $status",
    )?;
    let submitted: serde_json::Value =
        serde_json::from_str(&submitted).context("sluicectl submit's JSON")?;
    ensure!(
        submitted[0]["job"]["state"] == "succeeded"
            && submitted[0]["job"]["document"]["original_name"] == "ctl-proof.txt",
        "sluicectl submit answered {submitted}"
    );
    Ok(())
}

/// A feed that only answers with a bearer token, for the source system test: `/feed.xml`
/// (401 without `Authorization: Bearer s3cret-feed`) names one enclosure, served openly.
const SOURCE_SERVER: &str = r#"
import http.server

FEED = b"""<?xml version="1.0"?>
<rss version="2.0"><channel><title>reports</title>
<item><guid>report-1</guid><title>First</title>
<enclosure url="http://127.0.0.1:8097/quarterly-source.txt" type="text/plain" length="22"/>
</item></channel></rss>"""

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/feed.xml":
            if self.headers.get("Authorization") != "Bearer s3cret-feed":
                self.send_error(401)
                return
            body, kind = FEED, "application/rss+xml"
        elif self.path == "/quarterly-source.txt":
            body, kind = b"a file a source found\n", "text/plain"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *arguments):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", 8097), Handler).serve_forever()
"#;

/// A `[[source]]` configured the way the README says, in the installed suite: the source in a
/// configuration drop-in, its bearer token in a root-only file handed to sluice-scraper with
/// `LoadCredential=` in a unit drop-in (so group sluice cannot read it). A check on request
/// (`sluicectl sources check`) reads the feed with the token, and its enclosure becomes a
/// document.
#[test]
fn a_configured_source_with_a_loaded_credential_produces_a_document() -> Result<()> {
    let Some(suite) = Suite::running()? else {
        return Ok(());
    };
    let container = &suite.container;
    std::fs::write(container.root().join("srv/source-server.py"), SOURCE_SERVER)?;
    container.check("systemd-run --unit source-http python3 /srv/source-server.py")?;
    let served = wait_until(Duration::from_secs(30), || {
        container
            .sh("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8097/feed.xml")
            .is_ok_and(|output| output.stdout_text() == "401")
    });
    ensure!(served, "the loopback feed server did not start");
    container.check(
        "install -d -m 0700 /etc/sluice/credentials && \
         (umask 077 && printf '# the feed\\nbearer s3cret-feed\\n' > /etc/sluice/credentials/feed) && \
         mkdir -p /etc/systemd/system/sluice-scraper.service.d /etc/sluice/sluice.toml.d && \
         printf '[Service]\\nLoadCredential=feed:/etc/sluice/credentials/feed\\n' \
           > /etc/systemd/system/sluice-scraper.service.d/50-feed-credential.conf",
    )?;
    std::fs::write(
        container
            .root()
            .join("etc/sluice/sluice.toml.d/50-system-source.toml"),
        "[scraper]\nallow_private_addresses = true\n\n[[source]]\nname = \"reports\"\n\
         url = \"http://127.0.0.1:8097/feed.xml\"\nmode = \"feed\"\nevery = \"1h\"\n\
         credentials_file = \"/run/credentials/sluice-scraper.service/feed\"\n",
    )?;
    let cleanup = || {
        let _ = container.sh("rm -f /etc/sluice/sluice.toml.d/50-system-source.toml \
               /etc/systemd/system/sluice-scraper.service.d/50-feed-credential.conf; \
             systemctl stop source-http; systemctl daemon-reload; \
             systemctl restart sluice-scraper");
    };
    let outcome = (|| -> Result<()> {
        container.check("systemctl daemon-reload && systemctl restart sluice-scraper")?;
        suite.wait_until_unit_runs("sluice-scraper.service")?;
        let mode = container.check("stat -c '%U:%G %a' /etc/sluice/credentials/feed")?;
        ensure!(
            mode.trim() == "root:root 600",
            "the credential file is {mode:?}"
        );
        let checked = container.sh("sluicectl --json sources check reports")?;
        ensure!(
            checked.status.success(),
            "sluicectl sources check: {}{}",
            checked.stdout_text(),
            String::from_utf8_lossy(&checked.stderr)
        );
        let source: serde_json::Value =
            serde_json::from_str(&checked.stdout_text()).context("sources check --json")?;
        ensure!(
            source["last_error"].is_null() && source["items_seen"] == 1,
            "the check of the feed: {source}"
        );
        let document = suite.wait_for_document("quarterly-source.txt", Duration::from_secs(120))?;
        ensure!(document["size"] == 22, "document {document}");
        let listed = suite.sluicectl_json("sources show reports")?;
        ensure!(
            listed["downloads_made"] == 1,
            "sluicectl sources show: {listed}"
        );
        Ok(())
    })();
    if outcome.is_err()
        && let Ok(journal) = container.check("journalctl --no-pager -o cat -u sluice-scraper -n 30")
    {
        eprintln!("sluice-scraper's journal:\n{journal}");
    }
    cleanup();
    outcome
}

/// Issue 17, "authorization as system services do it": a privileged method asks polkit. The
/// package's rule grants a member of group `sluice`; anyone else would need an administrator's
/// password (`auth_admin`), so a call that does not allow interaction is refused with
/// InteractiveAuthorizationRequired, until an administrator's own rule grants them; the
/// daemons' own user is allowed from sluice-web's unit (which forwards HTTP requests) and
/// refused from an ingest worker's, where processors run, so a processor cannot make the
/// scraper fetch; no process of that user can read sluice-web's token through `/proc`. Each
/// refusal is in the daemon's journal.
#[test]
fn polkit_decides_who_may_call_and_a_workers_processes_are_refused() -> Result<()> {
    let Some(suite) = Suite::running()? else {
        return Ok(());
    };
    let container = &suite.container;
    for action in [
        "org.sluice.manage-jobs",
        "org.sluice.add-download",
        "org.sluice.manage-downloads",
    ] {
        let shown = container.check(&format!("pkaction --verbose --action-id {action}"))?;
        ensure!(
            shown.contains("implicit any:      auth_admin"),
            "pkaction {action}: {shown}"
        );
    }
    container.check(
        "useradd --no-create-home --groups sluice polkit-member && \
         useradd --no-create-home polkit-outsider",
    )?;
    // RetryJob of a job that does not exist: once authorized, the daemon answers NotFound,
    // so nothing changes whoever is let through.
    let retry_as = |user: &str| {
        container.sh(&format!(
            "setpriv --reuid {user} --regid {user} --init-groups \
             busctl --allow-interactive-authorization=no call org.sluice.Web1 /org/sluice/Web1 \
             org.sluice.Web1 RetryJob t 987654 2>&1"
        ))
    };
    let allowed = |output: &std::process::Output| output.stdout_text().contains("987654 does not");
    let member = retry_as("polkit-member")?;
    ensure!(
        allowed(&member),
        "a member of group sluice: {}",
        member.stdout_text()
    );
    let outsider = retry_as("polkit-outsider")?;
    ensure!(
        !outsider.status.success()
            && outsider
                .stdout_text()
                .contains("needs authentication for polkit action org.sluice.manage-jobs"),
        "an outsider: {}",
        outsider.stdout_text()
    );
    // An administrator's rule is polkit's decision, not a group check of the daemon's own.
    container.check(
        "printf '%s\\n' 'polkit.addRule(function (action, subject) {' \
           '  if (action.id == \"org.sluice.manage-jobs\" && subject.user == \"polkit-outsider\")' \
           '    return polkit.Result.YES;' '});' > /etc/polkit-1/rules.d/40-sluice-test.rules",
    )?;
    let granted = wait_until(Duration::from_secs(60), || {
        retry_as("polkit-outsider").is_ok_and(|output| allowed(&output))
    });
    container.check("rm -f /etc/polkit-1/rules.d/40-sluice-test.rules")?;
    ensure!(
        granted,
        "the administrator's rule never let the outsider through"
    );
    // The daemons' own user, from inside a unit's cgroups (found by name, in every hierarchy:
    // on a legacy or hybrid host, systemd in the container tracks units in name=systemd). gdbus prints the whole error; busctl
    // shows every AccessDenied as just "Access denied".
    std::fs::write(
        container.root().join("srv/call-in-unit.sh"),
        "unit=$1; shift\n\
         for cgroup in $(find /sys/fs/cgroup -type d -name \"$unit\"); do\n\
         echo $$ > \"$cgroup/cgroup.procs\" || exit 99\n\
         done\n\
         exec setpriv --reuid _sluice --regid sluice --init-groups gdbus call --system \"$@\"\n",
    )?;
    let as_sluice_in = |unit: &str, call: &str| {
        container.sh(&format!("sh /srv/call-in-unit.sh {unit} {call} 2>&1"))
    };
    let add_download = "--dest org.sluice.Scraper1 --object-path /org/sluice/Scraper1 \
                        --method org.sluice.Scraper1.AddDownload \
                        http://127.0.0.1:9/fetched-for-a-processor '{}'";
    let from_worker = as_sluice_in(&worker(1), add_download)?;
    ensure!(
        !from_worker.status.success()
            && from_worker.stdout_text().contains(
                "org.freedesktop.DBus.Error.AccessDenied: AddDownload: the daemons' own user \
                 may call it only from sluice-web.service"
            ),
        "AddDownload as _sluice from a worker: {}",
        from_worker.stdout_text()
    );
    // PID reuse (security review, medium): a process of _sluice inside sluice-web.service's
    // own cgroup, where systemd's GetUnitByPID would name sluice-web, is still refused: it
    // lacks group _sluice-web, which only the unit's own start gives.
    let from_web_cgroup = as_sluice_in("sluice-web.service", add_download)?;
    ensure!(
        !from_web_cgroup.status.success()
            && from_web_cgroup
                .stdout_text()
                .contains("its connection lacks group _sluice-web"),
        "AddDownload as _sluice from sluice-web's cgroup without its group: {}",
        from_web_cgroup.stdout_text()
    );
    let retry = "--dest org.sluice.Web1 --object-path /org/sluice/Web1 \
                 --method org.sluice.Web1.RetryJob 987654";
    let from_worker = as_sluice_in(&worker(1), retry)?;
    ensure!(
        from_worker.stdout_text().contains("may call it only from"),
        "RetryJob as _sluice from a worker: {}",
        from_worker.stdout_text()
    );
    // The same user from sluice-web's unit is let through: deleting a download over HTTP
    // makes sluice-web call the scraper's DeleteDownload as _sluice.
    let token = container.check("cat /etc/sluice/api-token")?;
    let api = |method: &str, path: &str, body: &str| {
        container.check(&format!(
            "curl -s -w '\\n%{{http_code}}' -X {method} -H 'Authorization: Bearer {}' \
             -H 'Content-Type: application/json' -d '{body}' 'http://127.0.0.1:8080{path}'",
            token.trim()
        ))
    };
    let created = api(
        "POST",
        "/api/downloads",
        r#"{"url": "https://93.184.216.34/forwarded-by-the-web.bin"}"#,
    )?;
    ensure!(
        created.trim_end().ends_with("201"),
        "POST /api/downloads: {created}"
    );
    let download: serde_json::Value = serde_json::from_str(
        created
            .trim_end()
            .rsplit_once('\n')
            .map_or("", |(body, _)| body),
    )
    .context("the created download")?;
    let download_id = download["download"]["id"].as_i64().context("download id")?;
    let deleted = api("DELETE", &format!("/api/downloads/{download_id}"), "")?;
    ensure!(
        deleted.trim_end().ends_with("200"),
        "DELETE through sluice-web (DeleteDownload as _sluice from its unit): {deleted}"
    );
    // Every daemon and processor is _sluice, yet none can read another daemon's memory or,
    // through /proc/PID/root, sluice-web's credentials: the daemons are non-dumpable.
    let stolen = container.sh(
        "setpriv --reuid _sluice --regid sluice --init-groups cat \
         /proc/$(systemctl show -P MainPID sluice-web)/root/run/credentials/sluice-web.service/api-token \
         2>&1",
    )?;
    ensure!(
        !stolen.status.success() && !stolen.stdout_text().contains(token.trim()),
        "_sluice read sluice-web's token through /proc: {}",
        stolen.stdout_text()
    );
    let dumpable = container.check(
        "grep -c . /proc/$(systemctl show -P MainPID sluice-scraper)/status > /dev/null && \
         stat -c %U /proc/$(systemctl show -P MainPID sluice-scraper)/mem",
    )?;
    ensure!(
        dumpable.trim() == "root",
        "sluice-scraper's /proc/PID/mem belongs to {dumpable:?}, not root (it is dumpable)"
    );
    let downloads = container.check(
        "sqlite3 -readonly /var/lib/sluice/sluice.db \
         \"SELECT count(*) FROM downloads WHERE url LIKE '%fetched-for-a-processor%'\"",
    )?;
    ensure!(
        downloads.trim() == "0",
        "a refused AddDownload left {downloads} download(s)"
    );
    let journal =
        container.check("journalctl --no-pager -o cat -u sluice-web -u sluice-scraper")?;
    for expected in [
        "refused the D-Bus call RetryJob",
        "needs authentication for polkit action org.sluice.manage-jobs",
        "refused the D-Bus call AddDownload",
    ] {
        ensure!(
            journal.contains(expected),
            "no {expected:?} in the journal:\n{journal}"
        );
    }
    Ok(())
}

/// A monitor that hangs (SIGSTOP) stops pinging the watchdog: systemd kills and restarts
/// it after `WatchdogSec=` with result `watchdog`, and the new monitor's start-up reconcile
/// finds the file that arrived while it hung; `sluicectl status` shows the new PID and the
/// restart as systemd counts them.
#[test]
fn a_hung_monitor_is_restarted_by_the_watchdog_and_reconciles() -> Result<()> {
    let Some(suite) = Suite::running()? else {
        return Ok(());
    };
    let container = &suite.container;
    let monitor = "sluice-monitor.service";
    let restarts_before: u32 = container.unit_property(monitor, "NRestarts")?.parse()?;
    let hung_pid = container.unit_property(monitor, "MainPID")?;
    let hung_at = Instant::now();
    container.check(&format!("systemctl kill --kill-who=main -s STOP {monitor}"))?;
    suite.drop_into_inbox("arrived-while-hung.txt", "missed by inotify\n")?;
    let restarted = wait_until(Duration::from_secs(120), || {
        let restarts = container.unit_property(monitor, "NRestarts").ok();
        let pid = container.unit_property(monitor, "MainPID").ok();
        let state = container.unit_property(monitor, "SubState").ok();
        restarts.and_then(|count| count.parse::<u32>().ok()) > Some(restarts_before)
            && state.as_deref() == Some("running")
            && pid.as_deref() != Some(hung_pid.as_str())
    });
    ensure!(
        restarted,
        "the hung monitor was not restarted:\n{}",
        container
            .sh(&format!("systemctl status {monitor}"))?
            .stdout_text()
    );
    eprintln!(
        "monitor hang to watchdog restart (READY): {:.1}s",
        hung_at.elapsed().as_secs_f64()
    );
    let journal = container.check(&format!("journalctl --no-pager -o cat -u {monitor}"))?;
    ensure!(
        journal.contains("Watchdog timeout") && journal.contains("Failed with result 'watchdog'"),
        "the journal does not show a watchdog kill:\n{journal}"
    );
    suite.wait_for_document("arrived-while-hung.txt", Duration::from_secs(60))?;

    // `sluicectl status` shows what systemd knows beside what the daemon says on the bus:
    // the new PID, the restart, and the daemon's STATUS= line.
    let status = suite.sluicectl_json("status")?;
    ensure!(
        status["systemd_reachable"] == true,
        "sluicectl status: {status}"
    );
    let row = status["daemons"]
        .as_array()
        .and_then(|daemons| {
            daemons
                .iter()
                .find(|daemon| daemon["name"] == "sluice-monitor")
        })
        .context("no sluice-monitor row")?;
    let unit = &row["unit"];
    let pid = container.unit_property(monitor, "MainPID")?;
    let restarts = container.unit_property(monitor, "NRestarts")?;
    let status_text = container.unit_property(monitor, "StatusText")?;
    ensure!(
        unit["name"] == monitor
            && unit["active_state"] == "active"
            && unit["sub_state"] == "running"
            && unit["main_pid"].as_u64() == pid.parse().ok()
            && unit["restarts"].as_u64() == restarts.parse().ok()
            && unit["active_since_us"]
                .as_u64()
                .is_some_and(|since| since > 0)
            && unit["status_text"] == status_text.as_str()
            && row["running"] == true,
        "sluicectl status says {row}; systemd says MainPID={pid} NRestarts={restarts}"
    );
    let table = container.check("sluicectl status")?;
    let line = table
        .lines()
        .find(|line| line.starts_with("sluice-monitor"))
        .unwrap_or_default();
    ensure!(
        line.contains("active (running)") && line.contains(pid.as_str()),
        "sluicectl status: {table}"
    );
    Ok(())
}

/// An ingest worker killed with SIGKILL in the middle of a job is restarted by systemd; the
/// job is taken over when its lease expires and finishes exactly once: one success in its
/// history, one document, one file in the library. The job hashes a large file; the worker
/// is frozen (SIGSTOP) once its job shows `running` and killed only if the job is still
/// running then, so the kill always lands mid-job however fast this machine hashes (a
/// faster machine just gets a larger file on the next round).
#[test]
fn a_worker_killed_mid_job_leaves_the_job_finished_exactly_once() -> Result<()> {
    let Some(suite) = Suite::running()? else {
        return Ok(());
    };
    let container = &suite.container;
    let worker = "sluice-ingest-worker@1.service";
    // A short lease so the takeover comes within seconds; one worker, so we know which one
    // holds the job.
    std::fs::write(
        container.root().join("etc/sluice/sluice.toml"),
        "[jobs]\nlease = \"6s\"\nheartbeat_interval = \"1s\"\n",
    )?;
    container.check("systemctl stop sluice-ingest-worker@2.service")?;
    container.check(&format!(
        "systemctl restart {worker} sluice-monitor.service"
    ))?;
    suite.wait_until_unit_runs(worker)?;
    suite.wait_until_unit_runs("sluice-monitor.service")?;

    let caught = suite.freeze_a_worker_mid_job("big")?;
    ensure!(
        caught.unit == worker,
        "job {} ran on {}",
        caught.job_id,
        caught.unit
    );
    container.check(&format!("systemctl kill --kill-who=main -s KILL {worker}"))?;
    eprintln!(
        "killed {worker} in the middle of job {} ({})",
        caught.job_id, caught.name
    );
    let (job_id, name) = (caught.job_id, caught.name);
    let finished = wait_until(Duration::from_secs(300), || {
        suite
            .job(job_id)
            .is_ok_and(|shown| shown["job"]["state"] == "succeeded")
    });
    ensure!(
        finished,
        "job {job_id} did not finish: {:?}",
        suite.job(job_id)
    );
    let shown = suite.job(job_id)?;
    let history = shown["history"].as_array().context("history")?;
    let successes = history
        .iter()
        .filter(|entry| entry.to_string().contains("succeeded"))
        .count();
    ensure!(
        successes == 1,
        "job {job_id} succeeded {successes} times: {shown}"
    );
    ensure!(
        shown["job"]["attempts"].as_i64() >= Some(2),
        "the kill did not interrupt an attempt: {shown}"
    );
    let documents = suite.documents_named(&name)?;
    ensure!(
        documents.len() == 1,
        "{} documents: {documents:?}",
        documents.len()
    );
    let library = container.check(&format!(
        "find /var/lib/sluice/library -type f -size {} | wc -l",
        documents[0]["size"]
            .as_u64()
            .map(|size| format!("{size}c"))
            .unwrap_or_default()
    ))?;
    ensure!(library.trim() == "1", "{library} library files hold {name}");
    ensure!(
        container.unit_property(worker, "NRestarts")? != "0",
        "systemd did not restart the killed worker"
    );
    Ok(())
}

/// The chaos test's download server: the files of its working directory on 127.0.0.1:8099,
/// at 1 MB/s per transfer (so the transfers overlap the chaos), with a strong ETag and
/// `Range: bytes=N-` answered 206 (so an interrupted download can resume).
const CHAOS_FILE_SERVER: &str = r#"
import http.server, os, time

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = os.path.basename(self.path)
        try:
            data = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return
        etag = '"%d-%d"' % (len(data), int(os.stat(path).st_mtime))
        start = 0
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes=") and self.headers.get("If-Range", etag) == etag:
            first = wanted[6:].split("-")[0]
            if first.isdigit() and int(first) < len(data):
                start = int(first)
        self.send_response(206 if start else 200)
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        self.end_headers()
        for offset in range(start, len(data), 65536):
            try:
                self.wfile.write(data[offset:offset + 65536])
            except OSError:
                return
            time.sleep(0.0625)

    def log_message(self, *arguments):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", 8099), Handler).serve_forever()
"#;

/// Issue 12's chaos suite, short by default: downloads from a loopback server and files
/// dropped into the inbox arrive for `SLUICE_CHAOS_SECONDS` (45 here; `tests/chaos.sh` runs
/// the 10 minutes) while, every 1 to 4 seconds, a random daemon is killed with SIGKILL,
/// frozen with SIGSTOP for 1 to 3 seconds, or restarted. Then: every input is exactly one
/// document with the input's content, the library holds one file per document, every
/// download is done once, no job is left queued, running or failed, and SQLite's
/// `PRAGMA integrity_check` says ok. `SLUICE_CHAOS_SEED` repeats a run's choices.
#[test]
fn chaos_kills_freezes_and_restarts_lose_nothing_and_do_nothing_twice() -> Result<()> {
    use rand::{Rng, SeedableRng};
    let Some(suite) = Suite::running()? else {
        return Ok(());
    };
    let container = &suite.container;
    let seconds: u64 = std::env::var("SLUICE_CHAOS_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(45);
    let seed: u64 = std::env::var("SLUICE_CHAOS_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos: {seconds}s, seed {seed} (SLUICE_CHAOS_SEED={seed} repeats the choices)");
    let mut random = rand::rngs::StdRng::seed_from_u64(seed);

    // Short leases and backoffs so a killed holder's work moves on within seconds, attempts
    // enough that no kill can use them up, and the loopback server allowed.
    std::fs::write(
        container.root().join("etc/sluice/sluice.toml"),
        "[jobs]\nlease = \"3s\"\nheartbeat_interval = \"1s\"\nmax_attempts = 1000\n\
         retry_backoff_base = \"100ms\"\nretry_backoff_max = \"2s\"\n\n\
         [scraper]\nallow_private_addresses = true\n\n[limits]\nmax_page_size = 1000\n",
    )?;
    container.check("systemctl restart sluice.target")?;
    suite.wait_until_every_unit_runs()?;

    // The inputs: downloads of 1-6 MB from a server on the container's loopback, and files
    // of up to 2 MB dropped into the inbox, all with distinct random content.
    let downloads = (seconds / 3).max(4);
    let drops = (seconds / 2).max(4);
    let make_files: Vec<String> = (1..=downloads)
        .map(|i| {
            let size = random.random_range(1_048_576..6 * 1_048_576);
            format!("head -c {size} /dev/urandom > /srv/chaos/dl-{i}.bin")
        })
        .collect();
    container.check(&format!(
        "mkdir -p /srv/chaos && {}",
        make_files.join(" && ")
    ))?;
    std::fs::write(
        container.root().join("srv/chaos-server.py"),
        CHAOS_FILE_SERVER,
    )?;
    container.check(
        "systemd-run --unit chaos-http --property=WorkingDirectory=/srv/chaos \
           python3 /srv/chaos-server.py",
    )?;
    let served = wait_until(Duration::from_secs(30), || {
        container
            .sh("curl -sf -r 0-9 -o /dev/null http://127.0.0.1:8099/dl-1.bin")
            .is_ok_and(|output| output.status.success())
    });
    ensure!(served, "the loopback file server did not start");
    // Every download is submitted while the scraper is up (a call that timed out against a
    // frozen scraper could not be told apart from one that was taken); the server's rate
    // spreads the transfers over the chaos.
    for i in 1..=downloads {
        container.check(&format!(
            "sluicectl download --name dl-{i}.bin \
               --sha256 $(sha256sum /srv/chaos/dl-{i}.bin | cut -c1-64) \
               http://127.0.0.1:8099/dl-{i}.bin"
        ))?;
    }
    let pause = seconds.max(1) as f64 / drops as f64;
    container.check(&format!(
        "systemd-run --unit chaos-feed sh -c '\
           for i in $(seq 1 {drops}); do \
             head -c $(( i * 7919 % 2097152 + 1 )) /dev/urandom > /run/drop-$i.txt; \
             echo drop $i >> /run/drop-$i.txt; \
             chown _sluice:sluice /run/drop-$i.txt; \
             runuser -u _sluice -- mv /run/drop-$i.txt /var/lib/sluice/inbox/.drop-$i.txt; \
             runuser -u _sluice -- mv /var/lib/sluice/inbox/.drop-$i.txt \
               /var/lib/sluice/inbox/drop-$i.txt; \
             sleep {pause:.2}; \
           done'"
    ))?;

    // The chaos.
    let services: Vec<&str> = SLUICE_UNITS
        .iter()
        .copied()
        .filter(|unit| unit.ends_with(".service"))
        .collect();
    let (mut kills, mut freezes, mut restarts) = (0, 0, 0);
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(random.random_range(1000..4000)));
        let unit = services[random.random_range(0..services.len())];
        // Chaos is not a crash loop: systemd's start limit must not give up on a unit.
        container.check(&format!("systemctl reset-failed {unit} || true"))?;
        match random.random_range(0..3) {
            0 => {
                container.sh(&format!("systemctl kill --kill-who=main -s KILL {unit}"))?;
                kills += 1;
            }
            1 => {
                let frozen = random.random_range(1000..3000);
                container.sh(&format!(
                    "systemctl kill --kill-who=main -s STOP {unit}; sleep {}; \
                     systemctl kill --kill-who=main -s CONT {unit}",
                    frozen as f64 / 1000.0
                ))?;
                freezes += 1;
            }
            _ => {
                container.sh(&format!("systemctl restart --no-block {unit}"))?;
                restarts += 1;
            }
        }
    }
    eprintln!("chaos: {kills} kills, {freezes} freezes, {restarts} restarts");

    // Settle: the feeder finishes, every unit runs again, every input is filed.
    let fed = wait_until(Duration::from_secs(300), || {
        container
            .sh("systemctl is-active --quiet chaos-feed")
            .is_ok_and(|output| !output.status.success())
    });
    ensure!(fed, "the feeder did not finish");
    container.check("systemctl reset-failed; systemctl start sluice.target")?;
    suite.wait_until_every_unit_runs()?;
    let names: Vec<String> = (1..=downloads)
        .map(|i| format!("dl-{i}.bin"))
        .chain((1..=drops).map(|i| format!("drop-{i}.txt")))
        .collect();
    let mut documents = serde_json::Value::Null;
    let settled = wait_until(Duration::from_secs(300), || {
        let Ok(page) = suite.sluicectl_json("docs list --limit 1000") else {
            return false;
        };
        let Ok(jobs) = suite.sluicectl_json("status") else {
            return false;
        };
        let filed = names.iter().all(|name| {
            page["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|item| item["original_name"] == *name))
        });
        documents = page;
        filed && jobs["jobs"]["queued"] == 0 && jobs["jobs"]["running"] == 0
    });
    let items = documents["items"].as_array().cloned().unwrap_or_default();
    ensure!(
        settled,
        "not every input was filed after the chaos ({} documents of {} inputs); jobs:\n{}",
        items.len(),
        names.len(),
        container
            .sh("sluicectl jobs list --limit 50")?
            .stdout_text()
    );
    for name in &names {
        let matching: Vec<&serde_json::Value> = items
            .iter()
            .filter(|item| item["original_name"] == *name)
            .collect();
        ensure!(
            matching.len() == 1,
            "{name} is {} documents: {matching:?}",
            matching.len()
        );
        let path = if name.starts_with("dl-") {
            format!("/srv/chaos/{name}")
        } else {
            // A dropped file was consumed: its content is in the library under its hash.
            String::new()
        };
        if !path.is_empty() {
            let expected = container.check(&format!("sha256sum {path} | cut -c1-64"))?;
            ensure!(
                matching[0]["sha256"] == expected.trim(),
                "{name}: the document's hash is not the served file's: {}",
                matching[0]
            );
        }
    }
    ensure!(
        items.len() == names.len(),
        "{} documents for {} inputs",
        items.len(),
        names.len()
    );
    let library = container.check("find /var/lib/sluice/library -type f | wc -l")?;
    ensure!(
        library.trim() == names.len().to_string(),
        "the library holds {} files for {} documents",
        library.trim(),
        names.len()
    );
    let status = suite.sluicectl_json("status")?;
    ensure!(
        status["jobs"]["failed"] == 0,
        "failed jobs after the chaos: {status}"
    );
    let listed = suite.sluicectl_json("jobs list --kind download --limit 1000")?;
    let done = listed["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|job| job["state"] == "succeeded")
                .count()
        })
        .unwrap_or_default();
    ensure!(
        done as u64 == downloads,
        "{done} download jobs succeeded for {downloads} downloads: {listed}"
    );
    let integrity =
        container.check("sqlite3 -readonly /var/lib/sluice/sluice.db 'PRAGMA integrity_check'")?;
    ensure!(integrity.trim() == "ok", "integrity_check: {integrity}");
    eprintln!(
        "chaos: {} inputs ({downloads} downloads, {drops} drops) are {} documents and {} \
         library files; integrity_check ok",
        names.len(),
        items.len(),
        library.trim()
    );
    Ok(())
}

/// Issue 16 in the installed suite: `kill -9` of the worker running a job, with the shipped
/// 30 s lease. The bus announces the worker's departure, a worker ends the dead process's
/// lease and the job is claimed again (by `@2`, or by the restarted `@1`) long before the
/// lease could have expired; the journal says who rescued it. The time from the kill to the
/// new claim is printed.
#[test]
fn a_killed_workers_job_is_claimed_again_long_before_its_lease_expires() -> Result<()> {
    let Some(suite) = Suite::running()? else {
        return Ok(());
    };
    let container = &suite.container;
    let caught = suite.freeze_a_worker_mid_job("rescue")?;
    let (job_id, name, holder) = (caught.job_id, caught.name, caught.unit);
    let lease_expires_at = suite.job(job_id)?["job"]["lease_expires_at_ms"]
        .as_i64()
        .context("a running job has a lease expiry")?;
    let killed_at: i64 = container
        .check(&format!(
            "date +%s%3N; systemctl kill --kill-who=main -s KILL {holder} >/dev/null"
        ))?
        .trim()
        .parse()?;
    // The next claim after the kill, from the job's own history.
    let mut claimed_again = None;
    let claimed = wait_until(Duration::from_secs(120), || {
        let Ok(shown) = suite.job(job_id) else {
            return false;
        };
        claimed_again = shown["history"].as_array().and_then(|history| {
            history
                .iter()
                .filter(|entry| entry["to_state"] == "running")
                .filter_map(|entry| Some((entry["at_ms"].as_i64()?, entry["worker"].clone())))
                .find(|(at, _)| *at >= killed_at)
        });
        claimed_again.is_some()
    });
    ensure!(
        claimed,
        "job {job_id} was not claimed again after the kill: {:?}",
        suite.job(job_id)
    );
    let (claimed_at, by) = claimed_again.context("claim")?;
    eprintln!(
        "kill -9 of {holder} → job {job_id} claimed again by {by} after {} ms \
         (its lease would have expired after {} ms)",
        claimed_at - killed_at,
        lease_expires_at - killed_at
    );
    ensure!(
        claimed_at < lease_expires_at,
        "job {job_id} was claimed again at {claimed_at}, not before its lease expired at \
         {lease_expires_at}: the lease ran out instead of the rescue"
    );
    let journal = container.check(&format!(
        "journalctl --no-pager -o cat -u 'sluice-ingest-worker@*' F_JOB_ID={job_id} | grep -i rescued || true"
    ))?;
    ensure!(
        journal.contains(&format!("job {job_id}")),
        "the journal does not say job {job_id} was rescued:\n{journal}"
    );
    let document = suite.wait_for_document(&name, Duration::from_secs(300))?;
    ensure!(
        suite.documents_named(&name)?.len() == 1,
        "{name} is not exactly one document: {document}"
    );
    Ok(())
}

/// `systemctl reload sluice-monitor` with an invalid configuration keeps the monitor (and
/// its old configuration) running, and `systemctl status` says what is wrong.
#[test]
fn reloading_an_invalid_config_keeps_the_monitor_running_and_says_why() -> Result<()> {
    let Some(suite) = Suite::running()? else {
        return Ok(());
    };
    let container = &suite.container;
    let monitor = "sluice-monitor.service";
    let pid = container.unit_property(monitor, "MainPID")?;
    let config = container.root().join("etc/sluice/sluice.toml");
    let valid = std::fs::read(&config)?;
    std::fs::write(&config, "[monitor]\nno_such_key = true\n")?;
    container.check(&format!("systemctl reload {monitor}"))?;
    let mut status = String::new();
    let explained = wait_until(Duration::from_secs(30), || {
        status = container
            .sh(&format!("systemctl status --no-pager --lines=20 {monitor}"))
            .map(|output| output.stdout_text())
            .unwrap_or_default();
        status.contains("no_such_key")
    });
    ensure!(
        explained,
        "systemctl status does not say why the reload failed:\n{status}"
    );
    ensure!(
        container.unit_property(monitor, "ActiveState")? == "active",
        "{status}"
    );
    ensure!(
        container.unit_property(monitor, "MainPID")? == pid,
        "the monitor was restarted"
    );
    // Still working on the old configuration. (The valid file goes back first only because
    // sluicectl, which the check uses, reads it too; the monitor is not reloaded.)
    std::fs::write(&config, valid)?;
    suite.drop_into_inbox("after-bad-reload.txt", "still watched\n")?;
    suite.wait_for_document("after-bad-reload.txt", Duration::from_secs(60))?;
    Ok(())
}

/// `[ingest] workers` is the truth for the worker instances: the generator makes sluice.target
/// want exactly the configured ones, and `sluicectl workers N` writes its drop-in (never the
/// packaged conffile) and scales the running suite, waiting until each new instance
/// is READY and each surplus one stopped; a bad count changes nothing; a hand edit takes
/// effect with `daemon-reload` and a restart of the target.
#[test]
fn sluicectl_workers_scales_the_running_suite_and_the_generator_is_the_truth() -> Result<()> {
    let Some(suite) = Suite::running()? else {
        return Ok(());
    };
    let container = &suite.container;
    let config_path = container.root().join("etc/sluice/sluice.toml");
    let shipped = std::fs::read_to_string(workspace_root().join("config/sluice.toml"))?;
    ensure!(
        container.check("ls /run/systemd/generator/sluice.target.wants")?
            == "sluice-ingest-worker@1.service\nsluice-ingest-worker@2.service\n",
        "the generator does not want exactly @1 and @2 for the shipped workers = 2"
    );

    // Up to 3, live.
    let asked_at = Instant::now();
    let scaled = suite.sluicectl_json("workers 3")?;
    let command_took = asked_at.elapsed();
    let third = worker(3);
    ensure!(
        scaled["started"][0]["unit"] == third.as_str()
            && scaled["started"][0]["result"] == "done"
            && scaled["previous_workers"] == 2
            && scaled["target_active"] == true,
        "sluicectl workers 3 printed {scaled}"
    );
    // sluicectl returned after the start job finished, so @3 is running (READY=1) now, with
    // no waiting here.
    ensure!(
        unit_runs(container, &third)?,
        "{third} is not active (running) when sluicectl workers 3 returned"
    );
    eprintln!(
        "sluicectl workers 3: {third} READY {:.3}s after its StartUnit, command {:.3}s in all",
        scaled["started"][0]["seconds"].as_f64().unwrap_or(f64::NAN),
        command_took.as_secs_f64()
    );
    let introspection =
        container.check("busctl introspect org.sluice.Ingest1.Worker3 /org/sluice/Ingest1/3")?;
    ensure!(
        introspection
            .lines()
            .any(|line| line.starts_with("org.sluice.Ingest1")),
        "worker 3 is not on the bus:\n{introspection}"
    );
    // The packaged conffile is untouched (an upgrade never asks about it); the count is in
    // sluicectl's drop-in.
    ensure!(
        std::fs::read_to_string(&config_path)? == shipped,
        "sluicectl workers 3 changed the conffile"
    );
    let dropin = "/etc/sluice/sluice.toml.d/90-sluicectl-workers.toml";
    ensure!(
        scaled["dropin"] == dropin,
        "sluicectl workers 3 printed {scaled}"
    );
    let written = container.check(&format!("cat {dropin}"))?;
    ensure!(
        written.contains("[ingest]\nworkers = 3\n"),
        "the drop-in says {written:?}"
    );
    let owner = container.check(&format!("stat -c '%U:%G %a' {dropin}"))?;
    ensure!(owner.trim() == "root:root 644", "{dropin} is {owner:?}");
    ensure!(
        container
            .check("sluicectl config get ingest.workers")?
            .trim()
            == "3",
        "the loader does not read the drop-in"
    );

    // A restart of the target keeps the three.
    container.check("systemctl restart sluice.target")?;
    for instance in 1..=3 {
        suite.wait_until_unit_runs(&worker(instance))?;
    }

    // Down to 1, live: sluicectl returns once @2 and @3 have stopped.
    let scaled = suite.sluicectl_json("workers 1")?;
    let mut stopped: Vec<String> = scaled["stopped"]
        .as_array()
        .context("stopped")?
        .iter()
        .map(|outcome| outcome["unit"].as_str().unwrap_or_default().to_owned())
        .collect();
    stopped.sort();
    ensure!(
        stopped == [worker(2), worker(3)],
        "sluicectl workers 1 printed {scaled}"
    );
    for instance in [2, 3] {
        let state = container.unit_property(&worker(instance), "ActiveState")?;
        ensure!(state == "inactive", "{} is {state}", worker(instance));
    }
    ensure!(unit_runs(container, &worker(1))?, "worker 1 stopped too");

    // A bad count: refused, nothing changed.
    let before = std::fs::read(&config_path)?;
    let refused = container.sh("sluicectl workers 0")?;
    ensure!(
        refused.status.code() == Some(4)
            && String::from_utf8_lossy(&refused.stderr).contains("from 1 to 256"),
        "sluicectl workers 0: {}",
        refused.stdout_text()
    );
    ensure!(
        std::fs::read(&config_path)? == before,
        "workers 0 changed the file"
    );
    ensure!(
        unit_runs(container, &worker(1))?,
        "workers 0 stopped worker 1"
    );
    ensure!(container.unit_property(&worker(2), "ActiveState")? == "inactive");

    // By hand: the file and a reload decide, also when the count goes down (a restart of
    // the target would restart every instance that is PartOf it, were it not for the
    // unit's condition on the generator's link). sluicectl's drop-in overrides the file, so
    // it goes first.
    container.check(&format!("rm {dropin}"))?;
    let set_by_hand = |workers: u32| -> Result<()> {
        let text = std::fs::read_to_string(&config_path)?;
        let replaced: Vec<String> = text
            .lines()
            .map(|line| {
                if line.starts_with("workers = ") {
                    format!("workers = {workers}")
                } else {
                    line.to_owned()
                }
            })
            .collect();
        std::fs::write(&config_path, replaced.join("\n") + "\n")?;
        container.check("systemctl daemon-reload && systemctl restart sluice.target")?;
        Ok(())
    };
    set_by_hand(3)?;
    for instance in 1..=3 {
        suite.wait_until_unit_runs(&worker(instance))?;
    }
    set_by_hand(1)?;
    suite.wait_until_unit_runs(&worker(1))?;
    let surplus_stopped = wait_until(Duration::from_secs(60), || {
        [2, 3].iter().all(|instance| {
            container
                .unit_property(&worker(*instance), "ActiveState")
                .is_ok_and(|state| state == "inactive")
        })
    });
    ensure!(
        surplus_stopped,
        "after workers = 1 by hand, daemon-reload and a restart:\n{}",
        container
            .sh("systemctl list-units --all --no-pager 'sluice-ingest-worker@*'")?
            .stdout_text()
    );
    let running = container.check(
        "systemctl list-units --state=running --plain --no-legend 'sluice-ingest-worker@*' \
         | cut -d' ' -f1",
    )?;
    ensure!(
        running.trim() == worker(1),
        "running instances: {running:?}"
    );
    Ok(())
}

/// How many requests wait in the socket's backlog while sluice-web restarts.
const HELD_REQUESTS: usize = 5;

fn worker(instance: u32) -> String {
    format!("sluice-ingest-worker@{instance}.service")
}

/// Whether a unit is `active (running)` right now.
fn unit_runs(container: &Container, unit: &str) -> Result<bool> {
    Ok(container.unit_property(unit, "ActiveState")? == "active"
        && container.unit_property(unit, "SubState")? == "running")
}

/// An ingest job running on a worker frozen by [`Suite::freeze_a_worker_mid_job`].
struct CaughtJob {
    job_id: i64,
    /// The inbox file the job ingests.
    name: String,
    /// The frozen worker's unit, e.g. `sluice-ingest-worker@1.service`.
    unit: String,
}

/// The .deb installed and running in a booted container.
struct Suite {
    container: Container,
    deb_in_container: String,
}

impl Suite {
    /// Builds (or reuses) the .deb, boots a container with a private network and installs
    /// the package with apt-get, as an administrator would. `None` when skipped (not root).
    fn install() -> Result<Option<Suite>> {
        if !can_boot_containers()? {
            return Ok(None);
        }
        let deb = sluice_deb()?;
        let container = Container::boot(PRIVATE_NETWORK)?;
        let file_name = deb
            .file_name()
            .context("the .deb has no file name")?
            .to_string_lossy()
            .into_owned();
        let deb_in_container = format!("/root/{file_name}");
        container.copy_in(&deb, &deb_in_container)?;
        container
            .check(&format!(
                "apt-get install -y --no-install-recommends {deb_in_container}"
            ))
            .context("apt-get install of the .deb")?;
        Ok(Some(Suite {
            container,
            deb_in_container,
        }))
    }

    /// [`Suite::install`], then waits until the postinst's start of sluice.target has brought
    /// every unit up. `None` when skipped (not root).
    fn running() -> Result<Option<Suite>> {
        let Some(suite) = Suite::install()? else {
            return Ok(None);
        };
        suite.wait_until_every_unit_runs()?;
        Ok(Some(suite))
    }

    /// Waits until every sluice unit is `active (running)` (a `Type=notify` service is
    /// active only once it sent READY=1; the socket is `active (listening)`).
    fn wait_until_every_unit_runs(&self) -> Result<()> {
        for unit in SLUICE_UNITS {
            self.wait_until_unit_runs(unit)?;
        }
        Ok(())
    }

    fn wait_until_unit_runs(&self, unit: &str) -> Result<()> {
        // A socket is `listening`, or `running` once it has handed its socket to the service.
        let wanted: &[&str] = if unit.ends_with(".socket") {
            &["listening", "running"]
        } else {
            &["running"]
        };
        let running = wait_until(Duration::from_secs(90), || {
            self.container
                .unit_property(unit, "ActiveState")
                .ok()
                .as_deref()
                == Some("active")
                && self
                    .container
                    .unit_property(unit, "SubState")
                    .is_ok_and(|state| wanted.contains(&state.as_str()))
        });
        if !running {
            bail!(
                "{unit} is not active ({}):\n{}",
                wanted.join(" or "),
                self.container
                    .sh(&format!(
                        "systemctl status --no-pager {unit}; journalctl --no-pager -n 40 -u {unit}"
                    ))?
                    .stdout_text()
            );
        }
        Ok(())
    }

    /// From the first sluice unit leaving `inactive` to sluice.target becoming active, which
    /// (a target is ordered after the units it wants) is when the last service sent READY=1;
    /// systemd's own monotonic timestamps.
    fn start_to_ready(&self) -> Result<Duration> {
        let mut first_start = u64::MAX;
        for unit in SLUICE_UNITS {
            let started: u64 = self
                .container
                .unit_property(unit, "InactiveExitTimestampMonotonic")?
                .parse()?;
            first_start = first_start.min(started);
        }
        let all_ready: u64 = self
            .container
            .unit_property("sluice.target", "ActiveEnterTimestampMonotonic")?
            .parse()?;
        Ok(Duration::from_micros(all_ready.saturating_sub(first_start)))
    }

    fn main_pids(&self) -> Result<Vec<(&'static str, String)>> {
        SLUICE_UNITS
            .iter()
            .filter(|unit| unit.ends_with(".service"))
            .map(|unit| Ok((*unit, self.container.unit_property(unit, "MainPID")?)))
            .collect()
    }

    /// Writes a file into the inbox as user _sluice, the way a finished download arrives:
    /// written under a dot-name (ignored) and renamed into place.
    fn drop_into_inbox(&self, name: &str, contents: &str) -> Result<()> {
        let partial = format!("/var/lib/sluice/inbox/.{name}");
        let script = format!(
            "runuser -u _sluice -- sh -c 'printf %s \"$1\" > \"$2\" && mv \"$2\" \"$3\"' sh \
             '{contents}' '{partial}' '/var/lib/sluice/inbox/{name}'"
        );
        self.container.check(&script)?;
        Ok(())
    }

    /// Drops ever larger random files (`<prefix>-<n>.bin`) into the inbox until one's ingest
    /// job is caught running: its worker is then frozen (SIGSTOP, so it neither finishes nor
    /// heartbeats) with the job still running. A job that finished before the freeze thaws
    /// the worker and the next, larger file is tried.
    fn freeze_a_worker_mid_job(&self, prefix: &str) -> Result<CaughtJob> {
        for (round, size) in ["512M", "2G", "6G"].into_iter().enumerate() {
            let name = format!("{prefix}-{round}.bin");
            self.drop_random_file(&name, size)?;
            let mut job = None;
            let running = wait_until(Duration::from_secs(120), || {
                job = self.find_job(&name).ok().flatten();
                job.as_ref().is_some_and(|job| job["state"] == "running")
            });
            ensure!(running, "the ingest job for {name} never ran: {job:?}");
            let job_id = job.context("job")?["id"].as_i64().context("job id")?;
            let Some(holder) = self.job(job_id)?["job"]["lease_owner"]
                .as_str()
                .map(str::to_owned)
            else {
                continue;
            };
            let unit = format!("{holder}.service");
            self.container
                .check(&format!("systemctl kill --kill-who=main -s STOP {unit}"))?;
            if self.job(job_id)?["job"]["state"] == "running" {
                return Ok(CaughtJob { job_id, name, unit });
            }
            self.container
                .check(&format!("systemctl kill --kill-who=main -s CONT {unit}"))?;
        }
        bail!("every job finished before its worker could be frozen")
    }

    /// Writes `size` (as `head -c` takes it, e.g. "2G") random bytes into the inbox as user
    /// _sluice under a dot-name and renames them into place as `name`.
    fn drop_random_file(&self, name: &str, size: &str) -> Result<()> {
        self.container.check(&format!(
            "runuser -u _sluice -- sh -c 'head -c {size} /dev/urandom > /var/lib/sluice/inbox/.{name} \
             && mv /var/lib/sluice/inbox/.{name} /var/lib/sluice/inbox/{name}'"
        ))?;
        Ok(())
    }

    fn sluicectl_json(&self, arguments: &str) -> Result<serde_json::Value> {
        let text = self
            .container
            .check(&format!("sluicectl --json {arguments}"))?;
        serde_json::from_str(&text).with_context(|| format!("sluicectl printed {text}"))
    }

    fn documents_named(&self, name: &str) -> Result<Vec<serde_json::Value>> {
        let page = self.sluicectl_json("docs list --limit 500")?;
        Ok(page["items"]
            .as_array()
            .context("docs list has no items")?
            .iter()
            .filter(|document| document["original_name"] == name)
            .cloned()
            .collect())
    }

    fn wait_for_document(&self, name: &str, deadline: Duration) -> Result<serde_json::Value> {
        let mut found = Vec::new();
        wait_until(deadline, || {
            found = self.documents_named(name).unwrap_or_default();
            !found.is_empty()
        });
        match found.into_iter().next() {
            Some(document) => Ok(document),
            None => bail!(
                "{name} did not become a document within {deadline:?}; jobs:\n{}",
                self.container.sh("sluicectl jobs list")?.stdout_text()
            ),
        }
    }

    /// The newest ingest job whose payload names `file_name`.
    fn find_job(&self, file_name: &str) -> Result<Option<serde_json::Value>> {
        let page = self.sluicectl_json("jobs list --kind ingest --limit 500")?;
        Ok(page["items"]
            .as_array()
            .context("jobs list has no items")?
            .iter()
            .find(|job| job["payload"].to_string().contains(file_name))
            .cloned())
    }

    fn job(&self, job_id: i64) -> Result<serde_json::Value> {
        self.sluicectl_json(&format!("jobs show {job_id}"))
    }
}

/// The overall exposure `systemd-analyze security --offline=yes` gives a unit file.
fn offline_exposure(unit_file: &Path) -> Result<f64> {
    let output = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit_file)
        .output()
        .context("cannot run systemd-analyze")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|line| line.contains("Overall exposure level"))
        .with_context(|| format!("no overall exposure for {}:\n{text}", unit_file.display()))?;
    let value = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("cannot read {line:?}"))?;
    value
        .parse()
        .with_context(|| format!("cannot read {line:?}"))
}

/// Output's stdout as text, for error messages.
trait OutputText {
    fn stdout_text(&self) -> String;
}

impl OutputText for std::process::Output {
    fn stdout_text(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }
}
