"""Query latency of the search backends: exact (numpy over every vector) and faiss (HNSW), on random
unit vectors, with faiss's recall@k against the exact answer, in one run.

    python benchmarks/search_latency.py                        # 10k and 1M 384-d vectors
    python benchmarks/search_latency.py --vectors 1000 --queries 8
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from common import argument_parser

from bertforge.vectors import ExactVectors, FaissVectors, write_vectors


def main() -> None:
    p = argument_parser(__doc__)
    p.add_argument("--vectors", type=int, nargs="+", default=[10_000, 1_000_000], help="Index sizes to time.")
    p.add_argument("--dim", type=int, default=384, help="Vector width (minilm-l6's).")
    p.add_argument("--queries", type=int, default=100, help="Queries timed, one at a time.")
    p.add_argument("--k", type=int, default=10, help="Hits per query.")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    for n in args.vectors:
        x = rng.standard_normal((n, args.dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q = x[: args.queries] + 0.1 * rng.standard_normal((args.queries, args.dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        with tempfile.TemporaryDirectory() as tmp:
            found = {}
            for backend, cls in (("exact", ExactVectors), ("faiss", FaissVectors)):
                d = Path(tmp) / backend
                d.mkdir()
                start = time.perf_counter()
                write_vectors(d, x, backend)
                built = time.perf_counter() - start
                vectors = cls(d, "float32") if backend == "exact" else cls(d)
                start = time.perf_counter()
                found[backend] = np.concatenate([vectors.search(q[i : i + 1], args.k)[1] for i in range(len(q))])
                ms = (time.perf_counter() - start) / len(q) * 1000
                print(f"{n:>9,} vectors  {backend:5}  build {built:7.2f} s  query {ms:8.3f} ms")
            recall = np.mean(
                [len(set(a) & set(b)) / args.k for a, b in zip(found["exact"], found["faiss"], strict=True)]
            )
            print(f"{n:>9,} vectors  faiss recall@{args.k} {recall:.3f}")


if __name__ == "__main__":
    main()
