"""W5's peers (../shared/BENCHMARKS.md), measured on the same corpus as `sluice-bench w5`
(`sluice-bench w5-corpus DIR` writes it), so that sluice's numbers can be taken beside theirs
in the same window of a busy machine:

- `seed`: the seed-style PDF service of seed 001: FastAPI under uvicorn, two
  `multiprocessing` worker processes that parse PDFs with pypdf (text of every page), jobs and
  results on in-memory IPC queues, and `POST /process-pdf` answering once its result is
  there. Driven like W5: 8 uploads in flight, each waiting for its answer. The body is the
  PDF itself rather than a multipart form, which only spares the peer some parsing.
- `pdftotext`: poppler's `pdftotext` on every file, 2 processes at a time through `xargs`,
  no HTTP.

Prints one JSON object: pages/s, latency p50/p99 (seed), CPU ms per page (every process,
children included), PSS idle and after (seed), marker words found in the answers (seed).

Usage: python3 w5_peers.py seed DIR | python3 w5_peers.py pdftotext DIR
(`seed` needs fastapi, uvicorn and pypdf: tests/bench.sh makes a venv for them.)
"""

import http.client
import io
import json
import multiprocessing
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time

IN_FLIGHT = 8
WORKERS = 2


def cpu_ms(pid):
    """utime + stime + cutime + cstime of `pid`, in milliseconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[index]) for index in range(11, 15))
    return ticks * 1000.0 / os.sysconf("SC_CLK_TCK")


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def family(pid):
    """`pid` and every descendant."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    queue.extend(int(child) for child in children.read().split())
        except FileNotFoundError:
            pass
    return found


def percentile(sorted_values, fraction):
    if not sorted_values:
        return 0.0
    return sorted_values[round((len(sorted_values) - 1) * fraction)]


def corpus(directory):
    names = sorted(name for name in os.listdir(directory) if name.endswith(".pdf"))
    return [os.path.join(directory, name) for name in names]


# --- the seed-style service ---------------------------------------------------------------


def pdf_worker(requests, results):
    """One worker process: models (here: the parser) loaded once, then one job at a time."""
    from pypdf import PdfReader

    while True:
        job = requests.get()
        if job is None:
            return
        job_id, body = job
        try:
            reader = PdfReader(io.BytesIO(body))
            pages = [page.extract_text() or "" for page in reader.pages]
            results.put((job_id, {"pages": len(pages), "text": pages}))
        except Exception as error:  # noqa: BLE001 - the seed answered every failure as JSON
            results.put((job_id, {"error": str(error)}))


def serve(port, ready):
    import asyncio

    import uvicorn
    from fastapi import FastAPI, Request

    requests = multiprocessing.Queue()
    results = multiprocessing.Queue()
    waiting = {}
    counter = iter(range(1, 1 << 62))
    workers = [
        multiprocessing.Process(target=pdf_worker, args=(requests, results), daemon=True)
        for _ in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    app = FastAPI()

    async def deliver():
        loop = asyncio.get_running_loop()
        while True:
            job_id, result = await loop.run_in_executor(None, results.get)
            future = waiting.pop(job_id, None)
            if future is not None and not future.done():
                future.set_result(result)

    @app.on_event("startup")  # what the seed's FastAPI version offered
    async def start_delivery():
        asyncio.get_running_loop().create_task(deliver())

    @app.post("/process-pdf")
    async def process_pdf(request: Request):
        body = await request.body()
        job_id = next(counter)
        future = asyncio.get_running_loop().create_future()
        waiting[job_id] = future
        requests.put((job_id, body))
        return await future

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    ready.set()
    server.run()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def seed(directory):
    files = corpus(directory)
    bodies = [open(path, "rb").read() for path in files]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "serve", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the seed service did not start")
                time.sleep(0.05)
        time.sleep(1)
        pids = family(server.pid)
        idle = sum(pss_kib(pid) for pid in pids)
        cpu_before = sum(cpu_ms(pid) for pid in pids)
        latencies, markers, failures = [], [0], []
        lock = threading.Lock()
        next_index = [0]

        def client():
            connection = http.client.HTTPConnection("127.0.0.1", port)
            while True:
                with lock:
                    index = next_index[0]
                    next_index[0] += 1
                if index >= len(bodies):
                    return
                submitted = time.monotonic()
                connection.request(
                    "POST",
                    "/process-pdf",
                    body=bodies[index],
                    headers={"Content-Type": "application/pdf"},
                )
                response = connection.getresponse()
                answer = json.loads(response.read())
                elapsed = (time.monotonic() - submitted) * 1000
                number = int(re.search(r"(\d+)\.pdf$", files[index]).group(1))
                with lock:
                    if response.status != 200 or "error" in answer:
                        failures.append(answer)
                        continue
                    latencies.append(elapsed)
                    for page, text in enumerate(answer["text"]):
                        if f"tok{number}x{page}" in text:
                            markers[0] += 1

        started = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(IN_FLIGHT)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        pids = family(server.pid)
        cpu = sum(cpu_ms(pid) for pid in pids) - cpu_before
        time.sleep(1)
        after = sum(pss_kib(pid) for pid in pids)
        pages = sum(1 for _ in latencies) * 10
        latencies.sort()
        return {
            "peer": "seed-style FastAPI + 2 multiprocessing workers, pypdf",
            "documents": len(latencies),
            "failed": len(failures),
            "pages_per_s": pages / wall,
            "latency_p50_ms": percentile(latencies, 0.5),
            "latency_p99_ms": percentile(latencies, 0.99),
            "cpu_ms_per_page": cpu / max(pages, 1),
            "pss_idle_mib": idle / 1024,
            "pss_after_mib": after / 1024,
            "markers_found": markers[0],
        }
    finally:
        # uvicorn waits on SIGTERM for the thread blocked on the result queue: the workers
        # and then the server are killed outright after a moment.
        pids = family(server.pid)
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        server.wait()


def pdftotext(directory):
    files = corpus(directory)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(
        ["xargs", "-0", "-P", "2", "-I", "{}", "pdftotext", "{}", "/dev/null"],
        input="\0".join(files).encode(),
        check=True,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    pages = len(files) * 10
    return {
        "peer": "pdftotext, 2 processes via xargs, no HTTP",
        "documents": len(files),
        "pages_per_s": pages / wall,
        "cpu_ms_per_page": cpu / pages,
    }


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), threading.Event())
    elif sys.argv[1] == "seed":
        print(json.dumps(seed(sys.argv[2])))
    elif sys.argv[1] == "pdftotext":
        print(json.dumps(pdftotext(sys.argv[2])))
    else:
        raise SystemExit(__doc__)
