#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian 12 machine, each thing only when it is
# missing: dbus-daemon, busctl, setpriv, gdbus (the integration tests), systemd-nspawn,
# nsenter, flock, lintian, sqlite3, curl, python3 (the system tests), pdftoppm (PDF thumbnails,
# tests/content.rs), chromium (the dashboard in a real browser, tests/dashboard.rs), tesseract
# (the OCR processor, tests/processors.rs), polkitd (polkit decides the privileged D-Bus
# calls in the system tests' container, made from this host's root), promtool (`promtool check metrics` on /metrics,
# tests/metrics.rs; Debian ships it in the prometheus package), schemathesis (the OpenAPI
# contract test, tests/openapi.rs; from PyPI into the venv /opt/sluice-test-venv, since Debian
# 12's pip refuses to install into the system's Python), cargo-nextest (the test runner),
# cargo-deny
# (the licence and source check), cargo-deb (the package the system tests install) and
# cargo-about (the package's copyright file, packaging/copyright.sh).
# Needs root for apt-get; tests/run.sh runs it when it is root, and .ci/run through
# tests/run.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

needed=()
command -v dbus-daemon > /dev/null || needed+=(dbus-daemon)
command -v busctl > /dev/null || needed+=(systemd)
command -v setpriv > /dev/null || needed+=(util-linux)
command -v nsenter > /dev/null || needed+=(util-linux)
command -v flock > /dev/null || needed+=(util-linux)
command -v gdbus > /dev/null || needed+=(libglib2.0-bin)
command -v systemd-nspawn > /dev/null || needed+=(systemd-container)
command -v lintian > /dev/null || needed+=(lintian)
command -v sqlite3 > /dev/null || needed+=(sqlite3)
command -v curl > /dev/null || needed+=(curl)
command -v python3 > /dev/null || needed+=(python3)
command -v pdftoppm > /dev/null || needed+=(poppler-utils)
command -v chromium > /dev/null || needed+=(chromium)
command -v tesseract > /dev/null || needed+=(tesseract-ocr)
command -v pkaction > /dev/null || needed+=(polkitd)
installing_prometheus=false
if ! command -v promtool > /dev/null; then
    needed+=(prometheus)
    installing_prometheus=true
fi
[ -x /opt/sluice-test-venv/bin/python3 ] || needed+=(python3-venv)
if [ "${#needed[@]}" -gt 0 ]; then
    echo "== installing ${needed[*]}" >&2
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${needed[@]}"
fi
# Only promtool is wanted: where systemd runs, the Prometheus server the package enables is
# stopped and disabled again (on CI, where systemd is not PID 1, it never starts).
if $installing_prometheus && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service > /dev/null 2>&1 || true
fi
if [ ! -x /opt/sluice-test-venv/bin/schemathesis ]; then
    echo "== installing schemathesis into /opt/sluice-test-venv" >&2
    python3 -m venv /opt/sluice-test-venv
    /opt/sluice-test-venv/bin/pip install --quiet 'schemathesis>=4.32,<5'
fi
if ! cargo nextest --version > /dev/null 2>&1; then
    echo "== installing cargo-nextest" >&2
    cargo install cargo-nextest --locked
fi
if ! cargo deny --version > /dev/null 2>&1; then
    echo "== installing cargo-deny" >&2
    cargo install cargo-deny --locked
fi
if ! cargo deb --version > /dev/null 2>&1; then
    echo "== installing cargo-deb" >&2
    cargo install cargo-deb --locked
fi
# The package's copyright file lists every linked crate's licence as cargo-about finds it
# (packaging/copyright.sh). Its binary needs the cli feature. About 3 minutes of CPU to build.
# Pinned: what it writes goes into the package, so a new release changes the package only when
# this line does.
CARGO_ABOUT_VERSION=0.9.3
if [ "$(cargo about --version 2>/dev/null)" != "cargo-about $CARGO_ABOUT_VERSION" ]; then
    echo "== installing cargo-about $CARGO_ABOUT_VERSION" >&2
    cargo install cargo-about --locked --features cli --version "$CARGO_ABOUT_VERSION"
fi
