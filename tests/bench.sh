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
cargo build --release --locked -p sluice-tests --bins \
    -p sluice-web -p sluice-monitor -p sluice-scraper -p sluice-ingest-worker
target/release/sluice-bench w1-lib --runs "${RUNS:-3}" | tee bench-results/w1-lib.json
# W1 through the real worker processes on a private bus.
target/release/sluice-bench w1 --runs "${RUNS:-3}" | tee bench-results/w1.json
# W2: the web on a database of 20,000 succeeded jobs; wrk, web and database share the cores.
target/release/sluice-bench w2 --runs "${RUNS:-3}" | tee bench-results/w2.json
# W3: watched folders on tmpfs (/dev/shm), databases on disk (/var/tmp).
target/release/sluice-bench w3 --runs "${RUNS:-3}" | tee bench-results/w3.json
# W4: the whole suite's PSS, idle and after a W1 drain through the 2 ingest workers.
target/release/sluice-bench w4 --runs "${RUNS:-3}" | tee bench-results/w4.json
# Issue 16: kill -9 a worker holding a job, time until the job is claimed again (20 kills, by a
# peer and by the restarted instance).
target/release/sluice-bench rescue --kills "${KILLS:-20}" | tee bench-results/rescue.json
# Issue 9: 10,000 clients waiting on one job (web memory, fan-out time when it ends).
target/release/sluice-bench waiters --runs "${RUNS:-3}" | tee bench-results/waiters.json
# W5: the PDF corpus uploaded with 8 requests in flight, each waiting for its result.
target/release/sluice-bench w5 --runs "${RUNS:-3}" | tee bench-results/w5.json
# W5's peers on the same corpus, right after, in the same window of a shared machine: the
# seed-style Python service (FastAPI + 2 multiprocessing workers, pypdf; its own venv) and
# pdftotext. One JSON object per run.
target/release/sluice-bench w5-corpus bench-results/w5-corpus
if [ ! -x /var/tmp/sluice-w5-peers/bin/python ]; then
    python3 -m venv /var/tmp/sluice-w5-peers
    /var/tmp/sluice-w5-peers/bin/pip install -q fastapi uvicorn pypdf
fi
: > bench-results/w5-peers.json
for _ in $(seq "${RUNS:-3}"); do
    /var/tmp/sluice-w5-peers/bin/python tests/bench/w5_peers.py seed bench-results/w5-corpus \
        | tee -a bench-results/w5-peers.json
    python3 tests/bench/w5_peers.py pdftotext bench-results/w5-corpus \
        | tee -a bench-results/w5-peers.json
done
# Issue 11: GET /metrics at 1,000 requests/s against the whole suite and 20,000 jobs (web CPU).
target/release/sluice-bench metrics --runs "${RUNS:-3}" | tee bench-results/metrics.json
