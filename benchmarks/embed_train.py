"""Training a bi-encoder: `finetune embed` against sentence-transformers training the same model, in one process.

minilm-l6 is trained on the STS-B training split with CoSENT (scale 20) as sentence-transformers' own
STS-B example does (batch 16, lr 2e-5, linear warmup over 10% of the steps then linear decay), by
bertforge's loop and by sentence-transformers' classic fit loop (``SentenceTransformer.old_fit``: its
Trainer needs ``datasets`` and ``accelerate``, which this environment does not have), with the same
example order (bertforge's seeded permutation, handed to sentence-transformers as a sequential loader),
AdamW (fused, eps 1e-6, weight decay 0.01 but not on biases and LayerNorms), gradient clipping at 1,
dropout as the checkpoint says, max length 128, fp32. Prints Spearman's rank correlation of cosine
against the gold scores on the STS-B test split for the model as shipped and for each trained one (each
side scored by itself: bertforge's evaluate, sentence-transformers' EmbeddingSimilarityEvaluator), and
the training throughput ratio (examples per second of training steps after the first 10).

    python benchmarks/embed_train.py                      # the whole training split (5,749 pairs), 1 epoch
    python benchmarks/embed_train.py --train-size 1000    # a quicker look
    python benchmarks/embed_train.py --device cuda
"""

from __future__ import annotations

import csv
import math
import tempfile
import time
from pathlib import Path

import torch
from common import argument_parser, timed_finetune
from torch import nn

from bertforge import BertforgeError, Embedder, evaluate_file
from bertforge.assets import fetch
from bertforge.device import pick_device
from bertforge.distributed import Dist, Schedule
from bertforge.tasks import TASKS, TaskSpec

WARMUP = 10  # steps left out of the throughput on both sides
COLUMNS = ["sentence1", "sentence2", "score"]


def read(path: Path, limit: int | None = None) -> list[tuple[str, str, float]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = [(r["sentence1"], r["sentence2"], float(r["score"])) for r in csv.DictReader(f)]
    return rows[:limit] if limit else rows


def order(n: int, args) -> list[int]:
    """Every training step's examples, in bertforge's order (its Schedule: one seeded permutation an epoch)."""
    sched = Schedule(n, args.batch_size, 1, args.seed, Dist())
    total = math.ceil(args.epochs * sched.steps_per_epoch)
    return [i for step in range(total) for i in sched.micro_batch(step, 0)[2]]


class Timed(nn.Module):
    """A loss that notes when each call (one training step) begins."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss, self.starts = loss, []

    def forward(self, features, labels):
        self.starts.append(time.perf_counter())
        return self.loss(features, labels)


def st_spearman(model, rows) -> float:
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    a, b, scores = map(list, zip(*rows, strict=True))
    return float(EmbeddingSimilarityEvaluator(a, b, scores, batch_size=64, write_csv=False)(model)["spearman_cosine"])


def run_sentence_transformers(model_dir: Path, train_rows, test_rows, args) -> tuple[float, float]:
    """(test Spearman, training examples/s) of sentence-transformers' fit loop with its CoSENTLoss."""
    from sentence_transformers import InputExample, SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss
    from torch.utils.data import DataLoader

    torch.manual_seed(args.seed)
    model = SentenceTransformer(str(model_dir), device=args.device)
    model.max_seq_length = args.max_length
    examples = [
        InputExample(texts=[train_rows[i][0], train_rows[i][1]], label=train_rows[i][2])
        for i in order(len(train_rows), args)
    ]
    loader = DataLoader(examples, batch_size=args.batch_size, shuffle=False, drop_last=True)
    loss = Timed(CoSENTLoss(model, scale=20.0))
    fused = args.device.split(":")[0] in ("cpu", "cuda")
    model.old_fit(
        [(loader, loss)],
        epochs=1,  # (the loader already holds every epoch's examples, in order)
        warmup_steps=int(0.1 * len(loader)),
        optimizer_params={"lr": args.lr, "eps": 1e-6, "fused": fused},
        weight_decay=0.01,
        max_grad_norm=1.0,
        show_progress_bar=False,
    )
    starts = loss.starts
    throughput = (len(starts) - 1 - WARMUP) * args.batch_size / (starts[-1] - starts[WARMUP])
    model.eval()
    return st_spearman(model, test_rows), throughput


def run_bertforge(data: Path, train_csv: Path, args, workdir: Path) -> tuple[float, float]:
    """(test Spearman, training examples/s) of `finetune embed` (CoSENT, chosen by the scored pairs)."""
    spec = TaskSpec("embed", max_length=args.max_length, extra={"loss": "cosent", "scale": 20.0})
    _, throughput = timed_finetune("embed", spec, data, train_csv, args, workdir, WARMUP)
    return evaluate_file(workdir, data / "test.csv", device=args.device)["spearman"], throughput


def shipped_spearman(model_dir: Path, test_csv: Path, device: str) -> float:
    """bertforge's Spearman of cosine for a directory not fine-tuned here (the task's predict and score)."""
    embedder = Embedder.from_pretrained(model_dir, device)
    task = TASKS["embed"](TaskSpec("embed"), embedder.tokenizer)
    examples = task.read(test_csv, labelled=True)
    return task.score(task.predict(embedder, examples), examples)["spearman"]


def main() -> None:
    p = argument_parser(__doc__)
    p.add_argument("--train-size", type=int, default=None, help="first N training pairs (default: all)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the training split (fractions allowed)")
    p.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (linear warm-up and decay on both sides)")
    p.add_argument("--batch-size", type=int, default=16, help="training pairs per step")
    p.add_argument("--max-length", type=int, default=128, help="truncate sentences to this many tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the shared example order")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args()
    try:
        pick_device(args.device)
    except BertforgeError as e:
        p.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    data, model_dir = fetch("stsb"), fetch("minilm-l6")
    train_rows, test_rows = read(data / "train.csv", args.train_size), read(data / "test.csv")
    if math.ceil(args.epochs * (len(train_rows) // args.batch_size)) < 2 * WARMUP:
        p.error(f"too few steps to time: give at least {2 * WARMUP * args.batch_size} training pairs")
    from sentence_transformers import SentenceTransformer

    shipped_ours = shipped_spearman(model_dir, data / "test.csv", args.device)
    shipped_st = st_spearman(SentenceTransformer(str(model_dir), device=args.device), test_rows)
    with tempfile.TemporaryDirectory() as tmp:
        train_csv = Path(tmp) / "train.csv"
        with train_csv.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([COLUMNS, *train_rows])
        ours, ours_tp = run_bertforge(data, train_csv, args, Path(tmp) / "ours")
        ours_in_st = st_spearman(SentenceTransformer(str(Path(tmp) / "ours"), device=args.device), test_rows)
    st, st_tp = run_sentence_transformers(model_dir, train_rows, test_rows, args)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(
        f"STS-B, minilm-l6, CoSENT, {len(train_rows)} training pairs, {args.epochs:g} epoch(s), lr {args.lr:g}, "
        f"batch {args.batch_size}, max length {args.max_length}, fp32, {where}"
    )
    print(f"{'':24}{'test Spearman':>15}{'train examples/s':>18}")
    print(f"{'shipped (bertforge)':24}{shipped_ours:>15.4f}{'':>18}")
    print(f"{'shipped (s-t)':24}{shipped_st:>15.4f}{'':>18}")
    print(f"{'sentence-transformers':24}{st:>15.4f}{st_tp:>18.1f}")
    print(f"{'bertforge':24}{ours:>15.4f}{ours_tp:>18.1f}")
    print(f"bertforge's trained model scored by sentence-transformers' evaluator: {ours_in_st:.4f}")
    print(
        f"throughput ratio bertforge / sentence-transformers: {ours_tp / st_tp:.2f}x; "
        f"Spearman difference {ours - st:+.4f}"
    )


if __name__ == "__main__":
    main()
