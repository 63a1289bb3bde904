"""Embedding throughput: bertforge's Embedder against sentence-transformers' ``encode`` on the same
texts and model (minilm-l6; rotten-tomatoes reviews and wiki-topics articles), in one run. Prints each
precision's sequences per second, its ratio to sentence-transformers at fp32, and the mean and lowest
cosine of its vectors to sentence-transformers'.

    python benchmarks/embed_encode.py                 # 2,000 texts
    python benchmarks/embed_encode.py --texts 32      # a quick check
"""

from __future__ import annotations

import csv
import json
import time

import numpy as np
from common import argument_parser

from bertforge import Embedder
from bertforge.assets import fetch


def texts(n: int) -> list[str]:
    with (fetch("rotten-tomatoes", quiet=True) / "test.csv").open(encoding="utf-8", newline="") as f:
        reviews = [r["text"] for r in csv.DictReader(f)]
    lines = (fetch("wiki-topics-en", quiet=True) / "test.jsonl").read_text(encoding="utf-8").splitlines()
    articles = [json.loads(x)["text"] for x in lines if x.strip()]
    mixed = [t for pair in zip(reviews, articles, strict=False) for t in pair]  # (short and long, alternating)
    return (mixed * (n // max(len(mixed), 1) + 1))[:n]


def timed(fn, data):
    fn(data[:8])  # warm-up
    start = time.perf_counter()
    out = fn(data)
    return np.asarray(out, dtype=np.float32), len(data) / (time.perf_counter() - start)


def main() -> None:
    p = argument_parser(__doc__)
    p.add_argument("--texts", type=int, default=2000, help="Texts embedded by each side.")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"], help="bertforge's precisions.")
    p.add_argument("--batch-size", type=int, default=32, help="sentence-transformers' batch size.")
    args = p.parse_args()
    from sentence_transformers import SentenceTransformer

    data = texts(args.texts)
    model = fetch("minilm-l6", quiet=True)
    st = SentenceTransformer(str(model), device="cpu")
    ref, st_rate = timed(lambda t: st.encode(t, batch_size=args.batch_size), data)
    print(f"sentence-transformers fp32  {st_rate:8.1f} seq/s")
    for precision in args.precisions:
        emb = Embedder.from_pretrained(model, precision=precision)
        got, rate = timed(emb, data)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        print(
            f"bertforge {precision:5}  {rate:8.1f} seq/s  {rate / st_rate:5.2f}x  "
            f"cosine mean {cos.mean():.6f} min {cos.min():.6f}"
        )


if __name__ == "__main__":
    main()
