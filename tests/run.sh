#!/usr/bin/env bash
# Runs every check and every test of sluice: formatting, lints, unit tests, the integration
# tests (real SQLite files, real processes, a real private dbus-daemon) and the system tests
# (the release .deb installed in a booted systemd container). CI runs exactly this (see
# .ci/run); so does a newcomer. As root it first installs what the tests need when it is
# missing (tests/install-needs.sh); without root the tests that need it say
# "skipped: needs root".
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then
    tests/install-needs.sh
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo deny check licenses bans sources (what the .deb may ship: deny.toml)"
if ! cargo deny --version > /dev/null 2>&1; then
    echo "cargo-deny is missing: run tests/install-needs.sh as root, or cargo install cargo-deny --locked" >&2
    exit 1
fi
cargo deny check licenses bans sources

# The unit files are checked by the tests: `systemd-analyze security` on units/ (any user), and
# `systemd-analyze verify` on the installed package inside the system-test container, where
# the binaries and man pages the units name exist (verify fails on a unit whose ExecStart= or
# Documentation= is missing, so it cannot run on units/ of a source tree).

# The tests never run cargo: they start the daemons and helper programs found beside the test
# binary (target/debug/), which this step builds once with the workspace's features.
echo "== build every binary once (the tests start the real daemons and helpers)"
cargo build --workspace --bins --locked

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
