"""What each inference choice is worth: bertforge against itself with one setting changed.

For each precision, the model as ``precision.prepare`` gives it (the default) is timed against
variants of itself on the same texts: the bf16 linear layers plain instead of fused (``FusedLinear``)
and the encoder's unpadding threshold (``unpad_above``) at 0 (skip any padding) or 0.2 (run batches
with little padding dense). Each round draws a random chunk of texts and times every variant on it in
a shuffled order; the speed ratio to the default is taken per round and its median and quartiles
printed, so a slow spell of a shared machine falls on every variant alike.

    python benchmarks/ablation.py                         # fp32, int8, bf16 on rotten-tomatoes
    python benchmarks/ablation.py --texts wiki --chunk 64 --precisions bf16
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import Listed, argument_parser  # noqa: E402
from infer import load_texts  # noqa: E402  (benchmarks/infer.py: the same texts)

from bertforge import Tokenizer, load_pretrained  # noqa: E402
from bertforge.assets import fetch  # noqa: E402
from bertforge.device import native_bf16  # noqa: E402
from bertforge.infer import embed  # noqa: E402
from bertforge.precision import encoders, prepare  # noqa: E402


def variants(directory: Path, precision: str) -> dict:
    """The default model of a precision and the variants that change one setting of it."""
    import torch

    def with_threshold(model, threshold):
        for bert in encoders(model):
            bert.unpad_above = threshold
        return model

    default = prepare(load_pretrained(directory), precision, "cpu")
    threshold = encoders(default)[0].unpad_above
    other = 0.2 if threshold == 0.0 else 0.0
    out = {
        "default": default,
        f"unpad_above={other}": with_threshold(prepare(load_pretrained(directory), precision, "cpu"), other),
    }
    if precision == "bf16" and native_bf16(torch.device("cpu")):
        # what prepare does for bf16 (eval, bf16 weights, the 20% threshold) without fuse_linears
        out["plain linear layers"] = load_pretrained(directory).eval().to(torch.bfloat16)
    return out


def main() -> None:
    p = argument_parser(__doc__)
    p.add_argument("--model", default="minilm-l6", help="model directory or registry name")
    p.add_argument(
        "--precisions",
        action=Listed,
        options=("fp32", "int8", "bf16"),
        default=["fp32", "int8", "bf16"],
        help="precisions to time",
    )
    p.add_argument(
        "--texts",
        choices=("rotten", "wiki"),
        default="rotten",
        help="rotten-tomatoes snippets or wiki-topics-en extracts",
    )
    p.add_argument("--chunk", type=int, default=256, help="texts per timed call")
    p.add_argument("--rounds", type=int, default=30, help="timed turns of each variant")
    p.add_argument("--max-length", type=int, default=256, help="truncate texts to this many tokens")
    args = p.parse_args()
    texts = load_texts(1024)["rotten-tomatoes" if args.texts == "rotten" else "wiki-topics-en"]
    directory = fetch(args.model)
    tok = Tokenizer.from_pretrained(directory)
    rng = random.Random(0)
    for precision in args.precisions:
        models = variants(directory, precision)
        reference = embed(models["default"], tok, texts[: args.chunk], max_length=args.max_length)
        times: dict[str, list[float]] = {name: [] for name in models}
        for name, model in models.items():  # warm-up, and the same embeddings from every variant
            cos = (embed(model, tok, texts[: args.chunk], max_length=args.max_length) * reference).sum(1).min()
            print(f"{precision} {name}: worst cosine to the default {cos:.5f}")
        for _ in range(args.rounds):
            start = rng.randrange(0, len(texts) - args.chunk + 1)
            chunk = texts[start : start + args.chunk]
            order = list(models.items())
            rng.shuffle(order)
            for name, model in order:
                t = time.perf_counter()
                embed(model, tok, chunk, max_length=args.max_length)
                times[name].append(time.perf_counter() - t)
        for name in models:
            if name == "default":
                continue
            speed = np.array(times[name]) / np.array(times["default"])  # > 1: the default is faster
            q1, med, q3 = np.quantile(speed, [0.25, 0.5, 0.75])
            print(
                f"{precision:5} {args.texts:6} default vs {name:22} {med:.3f}x (quartiles {q1:.3f}-{q3:.3f}, "
                f"{args.rounds} chunks of {args.chunk})",
                flush=True,
            )


if __name__ == "__main__":
    main()
