#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian 12 machine, each thing only when it is
# missing: dbus-daemon, busctl, setpriv, gdbus (the integration tests), systemd-nspawn,
# nsenter, flock, lintian, sqlite3, curl, python3 (the system tests), pdftoppm (PDF thumbnails,
# tests/content.rs), chromium (the dashboard in a real browser, tests/dashboard.rs), tesseract
# (the OCR processor, tests/processors.rs), cargo-nextest (the test runner), cargo-deny
# (the licence and source check) and cargo-deb (the package the system tests install).
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
if [ "${#needed[@]}" -gt 0 ]; then
    echo "== installing ${needed[*]}" >&2
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${needed[@]}"
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
