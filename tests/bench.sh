#!/usr/bin/env bash
# Runs sluice's benchmarks (../shared/BENCHMARKS.md) on release builds and writes the results
# as JSON to bench-results/. Prints numbers; never fails because the machine is slow.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench-results
# W2 loads the web with wrk.
if ! command -v wrk >/dev/null; then
    apt-get install -y wrk >/dev/null
fi
daemons=(-p sluice-web -p sluice-monitor -p sluice-scraper)
if [ -d daemons/sluice-ingest-worker ]; then
    daemons+=(-p sluice-ingest-worker)
fi
cargo build --release --locked -p sluice-tests --bins "${daemons[@]}"
target/release/sluice-bench w1-lib --runs "${RUNS:-3}" | tee bench-results/w1-lib.json
# W2: the web on a database of 20,000 succeeded jobs; wrk, web and database share the cores.
target/release/sluice-bench w2 --runs "${RUNS:-3}" | tee bench-results/w2.json
# W3: watched folders on tmpfs (/dev/shm), databases on disk (/var/tmp).
target/release/sluice-bench w3 --runs "${RUNS:-3}" | tee bench-results/w3.json
# W4: the whole suite's PSS, idle and after a W1 drain through the ingest workers.
if [ -x target/release/sluice-ingest-worker ]; then
    target/release/sluice-bench w4 --runs "${RUNS:-3}" | tee bench-results/w4.json
else
    target/release/sluice-bench w4 --runs "${RUNS:-3}" --workers 0 | tee bench-results/w4.json
fi
