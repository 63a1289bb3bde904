"""HTTP serving throughput and latency: `bertforge serve` under 1, 8, 32 and 128 concurrent clients,
with or without a bounded queue (--max-queue: the 429s are counted and the client sends again).

For each precision the script starts the real server (minilm-l6 by default) as a subprocess, then
clients (threads in this process, one keep-alive connection each) send POST /v1/embed requests of rotten-tomatoes
snippets back to back, each as soon as its previous answer arrives, for a fixed time per cell.
Reported per cell: requests/s, texts/s, p50 and p99 latency, how many requests the server merged
into one model call on average (from its /metrics), and texts/s as a fraction of the offline
reference measured in the same run: ``Embedder`` called directly on the same texts, all at once,
at the same precision (the ceiling: no HTTP, no JSON, batches as large as the token budget allows).

Clients and server share the machine's cores, so on a small machine the client's own work shows in
the numbers; the ratio to the offline reference is what carries over.

    python benchmarks/serve.py                                   # fp32 and int8, 1 and 8 texts/request
    python benchmarks/serve.py --precisions fp32 --clients 1 32 --seconds 10
"""

from __future__ import annotations

import csv
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import Listed, argument_parser

from bertforge.assets import fetch
from bertforge.infer import Embedder


def load_texts(n: int) -> list[str]:
    with (fetch("rotten-tomatoes") / "test.csv").open(encoding="utf-8") as f:
        return [r["text"] for r in csv.DictReader(f)][:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, precision: str, extra: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "bertforge",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--precision",
        precision,
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start in 300 s")


def batch_stats(url: str) -> tuple[float, float]:
    """(model calls, requests) so far, from the server's batch-requests histogram."""
    calls = requests = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("bertforge_batch_requests_count"):
            calls += float(line.rsplit(" ", 1)[1])
        elif line.startswith("bertforge_batch_requests_sum"):
            requests += float(line.rsplit(" ", 1)[1])
    return calls, requests


def load(url: str, texts: list[str], clients: int, per_request: int, seconds: float, warmup: float) -> list[float]:
    """Latencies (s) of the requests that ended within ``seconds`` after the warm-up (counting by end
    time, not start time, keeps slow requests from being under-counted).

    Each client is a thread with one keep-alive connection (http.client: light enough that the
    server, not the load generator, is what is measured; an httpx.AsyncClient with 32 connections
    tops out near 150 requests/s on two cores)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    t0 = time.perf_counter()
    start, stop = t0 + warmup, t0 + warmup + seconds
    errors: list[str] = []
    refused: list[float] = []

    def one_client(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        at = k * 97 % len(texts)
        while (begin := time.perf_counter()) < stop and not errors:
            body = json.dumps({"texts": [texts[(at + i) % len(texts)] for i in range(per_request)]})
            at = (at + per_request) % len(texts)
            conn.request("POST", "/v1/embed", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            answer = r.read()
            end = time.perf_counter()
            if r.status == 429:  # refused by --max-queue: counted, then the client tries again
                refused.append(end)
                continue
            if r.status != 200:
                errors.append(f"{r.status} {answer[:200]!r}")
            if start <= end <= stop:
                latencies.append(end - begin)
        conn.close()

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"request failed: {errors[0]}")
    if refused:
        print(f"  ({sum(start <= t <= stop for t in refused)} requests refused with 429)")
    return latencies


def offline_rate(model: str, precision: str, texts: list[str], max_tokens: int | None) -> float:
    """texts/s of the Embedder called directly on all texts at once (best of three)."""
    embedder = Embedder.from_pretrained(model, precision=precision)
    embedder(texts[:64], max_tokens=max_tokens)  # warm-up
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        embedder(texts, max_tokens=max_tokens)
        best = min(best, time.perf_counter() - t)
    return len(texts) / best


def main() -> None:
    p = argument_parser(__doc__)
    p.add_argument("--model", default="minilm-l6", help="model directory or registry name (an encoder)")
    p.add_argument(
        "--precisions",
        action=Listed,
        options=("fp32", "bf16", "int8", "auto"),
        default=["fp32", "int8"],
        help="server precisions",
    )
    p.add_argument("--clients", action=Listed, item=int, default=[1, 8, 32, 128], help="concurrent clients per cell")
    p.add_argument(
        "--max-queue", type=int, default=None, help="the server's --max-queue (429s are counted, not failures)"
    )
    p.add_argument("--texts-per-request", action=Listed, item=int, default=[1, 8], help="texts in each request")
    p.add_argument("--seconds", type=float, default=5.0, help="measured time per cell (after a 1 s warm-up)")
    p.add_argument("--texts", type=int, default=2000, help="rotten-tomatoes snippets to draw from")
    p.add_argument(
        "--max-batch-tokens", type=int, default=None, help="the server's --max-batch-tokens (default: the server's own)"
    )
    p.add_argument("--batch-window-ms", type=float, default=5.0, help="the server's --batch-window-ms")
    args = p.parse_args()

    texts = load_texts(args.texts)
    print(
        f"{args.model}, rotten-tomatoes test snippets ({len(texts)}, {statistics.mean(map(len, texts)):.0f} characters "
        "on average), "
        f"{args.seconds:g} s per cell, batch window {args.batch_window_ms:g} ms, max batch tokens "
        f"{args.max_batch_tokens or 'the default'}"
    )
    header = (
        f"{'precision':9} {'texts/req':>9} {'clients':>7} {'req/s':>8} {'texts/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'req/call':>8} {'vs offline':>10}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions:
            reference = offline_rate(args.model, precision, texts, args.max_batch_tokens)
            print(f"\noffline Embedder, {precision}: {reference:.0f} texts/s")
            print(header)
            extra = ["--batch-window-ms", str(args.batch_window_ms)]
            extra += ["--max-batch-tokens", str(args.max_batch_tokens)] if args.max_batch_tokens else []
            extra += ["--max-queue", str(args.max_queue)] if args.max_queue else []
            proc, url = start_server(args.model, precision, extra, Path(tmp) / f"server-{precision}.log")
            try:
                for per_request in args.texts_per_request:
                    for clients in args.clients:
                        calls0, reqs0 = batch_stats(url)
                        lat = load(url, texts, clients, per_request, args.seconds, warmup=1.0)
                        calls1, reqs1 = batch_stats(url)
                        lat.sort()
                        rps = len(lat) / args.seconds
                        row = (
                            precision,
                            per_request,
                            clients,
                            rps,
                            rps * per_request,
                            1000 * lat[len(lat) // 2],
                            1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                            (reqs1 - reqs0) / max(calls1 - calls0, 1),
                            rps * per_request / reference,
                        )
                        rows.append(row)
                        print(
                            f"{row[0]:9} {row[1]:>9} {row[2]:>7} {row[3]:>8.1f} {row[4]:>8.1f} {row[5]:>8.1f} "
                            f"{row[6]:>8.1f} "
                            f"{row[7]:>8.1f} {row[8]:>10.2f}",
                            flush=True,
                        )
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    for precision in args.precisions:
        mine = {(r[1], r[2]): r[4] for r in rows if r[0] == precision}
        for per_request in args.texts_per_request:
            lo, hi = min(args.clients), max(args.clients)
            print(
                f"{precision}, {per_request} texts/request: {hi} clients / {lo} client = "
                f"{mine[per_request, hi] / mine[per_request, lo]:.2f}x texts/s"
            )


if __name__ == "__main__":
    main()
