#!/usr/bin/env bash
# The chaos suite at its full length (issue 12): 10 minutes of downloads and inbox drops
# while a random daemon is killed, frozen or restarted every few seconds, in the system-test
# container with the release .deb installed. The test command runs the same test for 45 s.
# SLUICE_CHAOS_SECONDS and SLUICE_CHAOS_SEED override the length and the random choices.
# Needs root (like every system test).
set -euo pipefail
cd "$(dirname "$0")/.."
export SLUICE_CHAOS_SECONDS="${SLUICE_CHAOS_SECONDS:-600}"
cargo build --workspace --bins --locked
exec cargo test --locked -p sluice-tests --test integration -- --nocapture \
    system::chaos_kills_freezes_and_restarts_lose_nothing_and_do_nothing_twice
