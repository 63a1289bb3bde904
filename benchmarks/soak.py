"""Soak: `bertforge serve` under steady load for a while, its resident memory sampled.

The script starts the real server (minilm-l6 by default) as a subprocess, then ``--clients`` threads
send POST /v1/embed requests of rotten-tomatoes snippets at ``--rate`` requests/s in all, for
``--seconds``; every ``--every`` seconds it reads the server's VmRSS from /proc. It prints each sample,
then the first sample after the warm-up, the last, the largest, and the growth from first to last.
Any answer other than 200 stops it.

    python benchmarks/soak.py --seconds 300                 # the README's run
    python benchmarks/soak.py --seconds 20 --every 2         # a quick check
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

from common import argument_parser
from serve import load_texts, start_server


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for process {pid}")


def main() -> None:
    p = argument_parser(__doc__)
    p.add_argument("--model", default="minilm-l6", help="model directory or registry name (an encoder)")
    p.add_argument("--seconds", type=float, default=300.0, help="how long the load runs")
    p.add_argument("--every", type=float, default=15.0, help="seconds between memory samples")
    p.add_argument("--clients", type=int, default=4, help="client threads")
    p.add_argument("--rate", type=float, default=20.0, help="requests/s, all clients together")
    p.add_argument("--texts-per-request", type=int, default=4, help="texts in each request")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of load before the first sample")
    args = p.parse_args()

    texts = load_texts(2000)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(args.model, "fp32", ["--max-queue", "64"], Path(tmp) / "server.log")
        host, port = url.removeprefix("http://").rsplit(":", 1)
        stop, errors, sent = threading.Event(), [], [0]
        gap = args.clients / args.rate

        def client(k: int) -> None:
            conn = http.client.HTTPConnection(host, int(port), timeout=120)
            at, due = k * 131, time.perf_counter()
            while not stop.is_set() and not errors:
                body = json.dumps({"texts": [texts[(at + i) % len(texts)] for i in range(args.texts_per_request)]})
                at += args.texts_per_request
                conn.request("POST", "/v1/embed", body=body, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                answer = r.read()
                if r.status != 200:
                    errors.append(f"{r.status} {answer[:200]!r}")
                sent[0] += 1
                due += gap
                time.sleep(max(0.0, due - time.perf_counter()))
            conn.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        try:
            for t in threads:
                t.start()
            time.sleep(args.warmup)
            samples, start = [], time.perf_counter()
            print(f"{'s':>6} {'requests':>9} {'RSS MiB':>8}")
            while (elapsed := time.perf_counter() - start) < args.seconds and not errors:
                samples.append(rss_mib(proc.pid))
                print(f"{elapsed:6.0f} {sent[0]:9d} {samples[-1]:8.1f}", flush=True)
                time.sleep(args.every)
            samples.append(rss_mib(proc.pid))
        finally:
            stop.set()
            for t in threads:
                t.join()
            proc.terminate()
            proc.wait(timeout=60)
    if errors:
        raise SystemExit(f"request failed: {errors[0]}")
    print(
        f"{sent[0]} requests in {args.seconds + args.warmup:.0f} s; RSS first {samples[0]:.1f} MiB, last "
        f"{samples[-1]:.1f}, max {max(samples):.1f}, growth {samples[-1] - samples[0]:+.1f} MiB"
    )


if __name__ == "__main__":
    main()
