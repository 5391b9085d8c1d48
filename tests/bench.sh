#!/usr/bin/env bash
# Runs sluice's benchmarks (../shared/BENCHMARKS.md) on release builds and writes the results
# as JSON to bench-results/. Prints numbers; never fails because the machine is slow.
# `tests/bench.sh` runs them all; `tests/bench.sh w2-scale|reconcile|ingest-big|scale` runs
# only issue 13's scale curves (see bench_scale below).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench-results
# W2 loads the web with wrk.
if ! command -v wrk >/dev/null; then
    apt-get install -y wrk >/dev/null
fi

# Issue 13's scale curves, each also runnable alone: `tests/bench.sh w2-scale`, `reconcile`,
# `ingest-big`, or `scale` for all three. Sizes: SCALE_JOBS (default "20000 1000000
# 10000000"; the 10M point takes about 3 GB of database and several minutes to fill),
# SCALE_FILES (default "100000 1000000"; a tree of 1M files takes about 4 GB of ext4),
# INGEST_GIB (default 10; the file is sparse, so it costs no disk). Everything they write goes
# to a temporary folder under /var/tmp and is deleted at the end of each size.
scale_build() {
    cargo build --release --locked -p sluice-tests --bins \
        -p sluice
}
# W2 and GET /api/jobs?state=… with N jobs in the database, its size, sluicectl jobs list.
bench_w2_scale() {
    for jobs in ${SCALE_JOBS:-20000 1000000 10000000}; do
        target/release/sluice-bench w2-scale --jobs "$jobs" --runs "${RUNS:-3}" \
            | tee "bench-results/w2-scale-$jobs.json"
    done
}
# The monitor's reconcile of a tree of N files: first start and restart; time and peak RSS.
bench_reconcile() {
    for files in ${SCALE_FILES:-100000 1000000}; do
        target/release/sluice-bench reconcile --files "$files" --runs "${RUNS:-3}" \
            | tee "bench-results/reconcile-$files.json"
    done
}
# One worker ingesting a big file, beside b3sum and sha256sum on the same file. b3sum is
# built once into /var/tmp/sluice-b3sum (cargo install), like W5's peers get their own venv.
bench_ingest_big() {
    if ! command -v b3sum >/dev/null && [ ! -x /var/tmp/sluice-b3sum/bin/b3sum ]; then
        cargo install --quiet --locked --root /var/tmp/sluice-b3sum b3sum
    fi
    PATH="$PATH:/var/tmp/sluice-b3sum/bin" target/release/sluice-bench ingest-big \
        --gib "${INGEST_GIB:-10}" --runs "${RUNS:-3}" \
        | tee "bench-results/ingest-${INGEST_GIB:-10}gib.json"
}
bench_scale() {
    bench_w2_scale
    bench_reconcile
    bench_ingest_big
}
case "${1:-}" in
    w2-scale | reconcile | ingest-big | scale)
        scale_build
        "bench_${1//-/_}"
        exit 0
        ;;
esac

cargo build --release --locked -p sluice-tests --bins \
    -p sluice
target/release/sluice-bench w1-lib --runs "${RUNS:-3}" | tee bench-results/w1-lib.json
# W1 through the real worker processes on a private bus.
target/release/sluice-bench w1 --runs "${RUNS:-3}" | tee bench-results/w1.json
# W1's references (issue 13): the enqueue rate alone, one job per transaction (the ceiling W1's
# producer can reach) and 64; and one job at a time through idle workers (the wake-up path).
target/release/sluice-bench w1-ceiling --runs "${RUNS:-3}" | tee bench-results/w1-ceiling.json
target/release/sluice-bench w1-idle --runs "${RUNS:-3}" | tee bench-results/w1-idle.json
# W2: the web on a database of 20,000 succeeded jobs; wrk, web and database share the cores.
target/release/sluice-bench w2 --runs "${RUNS:-3}" | tee bench-results/w2.json
# W3: watched folders on tmpfs (/dev/shm), databases on disk (/var/tmp).
target/release/sluice-bench w3 --runs "${RUNS:-3}" | tee bench-results/w3.json
# W3 as the work grows (issue 13): the same with 100,000 files already in the watched tree,
# recorded and queued before the first new file is written.
target/release/sluice-bench w3 --existing 100000 --runs "${RUNS:-3}" \
    | tee bench-results/w3-existing.json
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
# Issue 13: how the cost grows with the jobs, the files and the file size.
scale_build
bench_scale
