"""Encoder forward throughput: bertforge against transformers (sdpa), same weights, same batches.

Both models get the exact same tensors. Workloads:

  fixed       B x T random ids, no padding
  <dataset>   the first N texts as given, batches of B consecutive texts, each batch right-padded to
              its longest text, truncated at each --max-lengths value

This measures the model forward only (no length sorting: that is the inference path's job). Each
(model, precision, workload) cell is warmed up, then timed --reps times, alternating ours and theirs
so that drift on a shared machine hits both; the table shows the median sequences per second and
the ratio ours / transformers (> 1: bertforge is faster), plus the largest difference between the
two outputs at real tokens as a sanity check.

    python benchmarks/encode.py
    python benchmarks/encode.py --models minilm-l6,base --precisions fp32 --texts 512
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

import bertforge
from bertforge import BertConfig, Tokenizer
from bertforge.assets import fetch

Batch = dict[str, torch.Tensor]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="minilm-l6", help="comma list: minilm-l6 (real checkpoint), base (random init)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16 (torch.autocast on CPU)")
    p.add_argument("--datasets", default="rotten-tomatoes,wiki-topics-en", help="comma list of text data sets ('' for none)")
    p.add_argument("--texts", type=int, default=128, help="first N texts of each data set")
    p.add_argument("--max-lengths", default="128,256", help="comma list: truncation lengths for the text workloads")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--fixed-len", type=int, default=128, help="sequence length of the fixed workload (0: skip it)")
    p.add_argument("--fixed-batches", type=int, default=2, help="batches in the fixed workload")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes over each workload")
    p.add_argument("--reps", type=int, default=3, help="timed passes over each workload (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    return p.parse_args()


# -- models -----------------------------------------------------------------------------------------
def load_pair(name: str, tmp: Path) -> tuple[torch.nn.Module, torch.nn.Module, Tokenizer]:
    """(ours, transformers') with identical weights, and a tokenizer for the text workloads."""
    if name == "minilm-l6":
        directory = fetch("minilm-l6")
    elif name == "base":  # random weights: throughput does not depend on them
        directory = tmp / "base"
        torch.manual_seed(0)
        config = transformers.BertConfig(**BertConfig.preset("base").to_dict())
        transformers.BertModel(config).save_pretrained(directory)
    else:
        raise SystemExit(f"unknown model {name!r} (choose minilm-l6 or base)")
    theirs = transformers.AutoModel.from_pretrained(directory, attn_implementation="sdpa").eval()
    ours = bertforge.load_pretrained(directory, attention="sdpa")
    tokenizer = Tokenizer.from_pretrained(fetch("minilm-l6"))  # same uncased 30,522-entry vocabulary as base
    return ours, theirs, tokenizer


# -- workloads --------------------------------------------------------------------------------------
def fixed_batches(n: int, batch_size: int, length: int, vocab_size: int) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(1000, vocab_size, (batch_size, length), generator=g)
        ids[:, 0], ids[:, -1] = 101, 102
        out.append({
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),
        })
    return out


def read_texts(dataset: str, n: int) -> list[str]:
    root = fetch(dataset)
    texts: list[str] = []
    for split in ("train", "valid", "test"):
        csv_path, jsonl_path = root / f"{split}.csv", root / f"{split}.jsonl"
        if csv_path.is_file():
            with csv_path.open(encoding="utf-8", newline="") as f:
                texts += [r["text"] for r in csv.DictReader(f)]
        elif jsonl_path.is_file():
            texts += [json.loads(line)["text"] for line in jsonl_path.read_text(encoding="utf-8").splitlines() if line]
        if len(texts) >= n:
            break
    return texts[:n]


def text_batches(tokenizer: Tokenizer, texts: list[str], batch_size: int, max_length: int) -> list[Batch]:
    """Consecutive texts, each batch padded to its own longest: no sorting by length."""
    encodings = tokenizer.encode_batch(texts, max_length=max_length)
    return [tokenizer.to_tensors(encodings[i : i + batch_size]) for i in range(0, len(encodings), batch_size)]


# -- timing -----------------------------------------------------------------------------------------
def precision_context(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run(model: torch.nn.Module, batches: list[Batch], precision: str) -> list[torch.Tensor]:
    with torch.inference_mode(), precision_context(precision):
        return [model(**b).last_hidden_state for b in batches]


def seconds(model: torch.nn.Module, batches: list[Batch], precision: str) -> float:
    start = time.perf_counter()
    run(model, batches, precision)
    return time.perf_counter() - start


def max_difference(ours: list[torch.Tensor], theirs: list[torch.Tensor], batches: list[Batch]) -> float:
    diffs = []
    for a, b, batch in zip(ours, theirs, batches, strict=True):
        real = batch["attention_mask"].bool()
        diffs.append((a[real].float() - b[real].float()).abs().max().item())
    return max(diffs)


def measure(ours, theirs, batches: list[Batch], precision: str, warmup: int, reps: int) -> dict:
    for _ in range(warmup):
        run(ours, batches, precision)
        run(theirs, batches, precision)
    t_ours, t_theirs = [], []
    for _ in range(reps):  # alternate, so that a busy moment on the machine hits both
        t_ours.append(seconds(ours, batches, precision))
        t_theirs.append(seconds(theirs, batches, precision))
    n = sum(b["input_ids"].shape[0] for b in batches)
    ours_s, theirs_s = n / statistics.median(t_ours), n / statistics.median(t_theirs)
    diff = max_difference(run(ours, batches[:1], precision), run(theirs, batches[:1], precision), batches[:1])
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["attention_mask"].numel() for b in batches)
    return {
        "sequences": n,
        "real_tokens": tokens / padded,
        "ours_seq_s": ours_s,
        "theirs_seq_s": theirs_s,
        "ratio": ours_s / theirs_s,
        "max_diff": diff,
    }


def main() -> None:
    args = parse_args()
    transformers.utils.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = [p for p in args.precisions.split(",") if p]
    for p in precisions:
        if p not in ("fp32", "bf16"):
            raise SystemExit(f"unknown precision {p!r} (choose fp32, bf16)")
    if "bf16" in precisions and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print("note: this CPU has no native bf16 support; bf16 runs, but slowly")
    datasets = [d for d in args.datasets.split(",") if d]
    max_lengths = [int(n) for n in args.max_lengths.split(",") if n]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads")
    print(f"batches of {args.batch_size}; warmup {args.warmup}, median of {args.reps} timed passes\n")

    rows = []
    header = f"{'model':10} {'prec':5} {'workload':26} {'seqs':>5} {'real%':>6} {'ours seq/s':>11} {'hf seq/s':>10} {'ours/hf':>8} {'max|diff|':>10}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m for m in args.models.split(",") if m]:
            ours, theirs, tokenizer = load_pair(name, Path(tmp))
            workloads: list[tuple[str, list[Batch]]] = []
            if args.fixed_len:
                workloads.append((
                    f"fixed {args.batch_size}x{args.fixed_len}",
                    fixed_batches(args.fixed_batches, args.batch_size, args.fixed_len, ours.config.vocab_size),
                ))
            for dataset in datasets:
                texts = read_texts(dataset, args.texts)
                for max_length in max_lengths:
                    workloads.append((f"{dataset} <={max_length}", text_batches(tokenizer, texts, args.batch_size, max_length)))
            for precision in precisions:
                for label, batches in workloads:
                    r = measure(ours, theirs, batches, precision, args.warmup, args.reps)
                    rows.append({"model": name, "precision": precision, "workload": label, **r})
                    print(
                        f"{name:10} {precision:5} {label:26} {r['sequences']:>5} {100 * r['real_tokens']:>5.0f}% "
                        f"{r['ours_seq_s']:>11.1f} {r['theirs_seq_s']:>10.1f} {r['ratio']:>7.2f}x {r['max_diff']:>10.1e}",
                        flush=True,
                    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
