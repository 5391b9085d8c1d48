#!/usr/bin/env bash
# Runs sluice's benchmarks (../shared/BENCHMARKS.md) on release builds and writes the results
# as JSON to bench-results/. Prints numbers; never fails because the machine is slow.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench-results
cargo build --release --locked -p sluice-tests --bins -p sluice-monitor -p sluice-ingest-worker
target/release/sluice-bench w1-lib --runs "${RUNS:-3}" | tee bench-results/w1-lib.json
# W1 through the real worker processes on a private bus.
target/release/sluice-bench w1 --runs "${RUNS:-3}" | tee bench-results/w1.json
# W3: watched folders on tmpfs (/dev/shm), databases on disk (/var/tmp).
target/release/sluice-bench w3 --runs "${RUNS:-3}" | tee bench-results/w3.json
