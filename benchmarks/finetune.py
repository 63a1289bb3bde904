"""Fine-tuning: bertforge against the same recipe in transformers, in one process.

Both start from minilm-l6, train on the rotten-tomatoes training split in the same order (one
seeded permutation) with the same hyper-parameters (AdamW (fused), linear schedule with warmup,
weight decay off for biases and LayerNorms, fp32, max length 128, dynamic padding per batch), and
are scored on the held-out test split. Prints both accuracies and the training throughput ratio
(examples per second of pure training steps, data collation included, after the first 10
steps: on a GPU the first steps load kernels, once per process, which would count against the side
that runs first).

    python benchmarks/finetune.py                     # the full training split, 1 epoch
    python benchmarks/finetune.py --train-size 2000   # a quicker look
    python benchmarks/finetune.py --device cuda --precision bf16   # on a GPU, bf16 autocast on both sides
"""

from __future__ import annotations

import csv
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import argument_parser, timed_finetune

from bertforge import BertforgeError, evaluate_file
from bertforge.assets import fetch
from bertforge.device import pick_device
from bertforge.tasks import TaskSpec

WARMUP = 10  # steps left out of the throughput on both sides


def read(path: Path, limit: int | None = None) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8") as f:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(f)]
    return rows[:limit] if limit else rows


def run_transformers(model_dir: Path, train_rows, test_rows, args) -> tuple[float, float]:
    """(test accuracy, training examples/s) for AutoModelForSequenceClassification trained by hand."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    labels = sorted({y for _, y in train_rows})
    label2id = {y: i for i, y in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), attn_implementation="sdpa"
    ).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        eps=1e-6,
        fused=True,
    )
    features = tok([t for t, _ in train_rows], truncation=True, max_length=args.max_length)
    y = torch.tensor([label2id[lab] for _, lab in train_rows])
    steps_per_epoch = len(train_rows) // args.batch_size
    total = math.ceil(args.epochs * steps_per_epoch)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * total), total)
    model.train()
    elapsed, seen, step = 0.0, 0, 0
    epoch, losses = 0, []
    while step < total:
        order = np.random.default_rng([args.seed, epoch]).permutation(len(train_rows))
        for b in range(steps_per_epoch):
            if step >= total:
                break
            t0 = time.perf_counter()
            idx = order[b * args.batch_size : (b + 1) * args.batch_size].tolist()
            batch = tok.pad({k: [features[k][i] for i in idx] for k in features}, return_tensors="pt").to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                loss = model(**batch, labels=y[idx].to(device)).loss
            loss.backward()
            losses.append(float(loss.detach()))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= WARMUP:
                elapsed += time.perf_counter() - t0
                seen += len(idx)
            step += 1
        epoch += 1
    print(f"transformers: mean training loss over the last 50 steps {np.mean(losses[-50:]):.4f}")
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(test_rows), 64):
            chunk = test_rows[i : i + 64]
            enc = tok(
                [t for t, _ in chunk], truncation=True, max_length=args.max_length, padding=True, return_tensors="pt"
            ).to(device)
            pred = model(**enc).logits.argmax(-1).tolist()
            correct += sum(labels[p] == g for p, (_, g) in zip(pred, chunk, strict=True))
    return correct / len(test_rows), seen / elapsed


def run_bertforge(data: Path, train_csv: Path, args, workdir: Path) -> tuple[float, float]:
    spec = TaskSpec("classify", max_length=args.max_length)
    train, throughput = timed_finetune(
        "classify", spec, data, train_csv, args, workdir, WARMUP, precision=args.precision
    )
    print(f"bertforge: mean training loss over the last 50 steps {np.mean([r['loss'] for r in train[-5:]]):.4f}")
    accuracy = evaluate_file(workdir, data / "test.csv", device=args.device)["accuracy"]
    return accuracy, throughput


def main() -> None:
    p = argument_parser(__doc__)
    p.add_argument("--train-size", type=int, default=None, help="first N training examples (default: all)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the training split (fractions allowed)")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (linear warm-up and decay on both sides)")
    p.add_argument("--batch-size", type=int, default=32, help="training examples per step")
    p.add_argument("--max-length", type=int, default=128, help="truncate reviews to this many tokens")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the shared example order and of the classifier's initialisation"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (TF32 stays off)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast on both sides")
    args = p.parse_args()
    try:
        pick_device(args.device)
    except BertforgeError as e:
        p.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    data = fetch("rotten-tomatoes")
    model_dir = fetch("minilm-l6")
    train_rows = read(data / "train.csv", args.train_size)
    test_rows = read(data / "test.csv")
    if math.ceil(args.epochs * (len(train_rows) // args.batch_size)) < 2 * WARMUP:
        p.error(
            f"too few steps to time: give at least {2 * WARMUP * args.batch_size} training examples (the first "
            f"{WARMUP} steps are not timed)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        train_csv = Path(tmp) / "train.csv"
        with train_csv.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(train_rows)
        ours_acc, ours_tp = run_bertforge(data, train_csv, args, Path(tmp) / "ours")
    hf_acc, hf_tp = run_transformers(model_dir, train_rows, test_rows, args)
    print(
        f"rotten-tomatoes, minilm-l6, {len(train_rows)} training examples, {args.epochs:g} epoch(s), "
        f"lr {args.lr:g}, batch {args.batch_size}, max length {args.max_length}, {args.precision}, "
        f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else f'{torch.get_num_threads()} threads'}"
    )
    print(f"{'':14}{'test accuracy':>15}{'train examples/s':>18}")
    print(f"{'transformers':14}{hf_acc:>15.4f}{hf_tp:>18.1f}")
    print(f"{'bertforge':14}{ours_acc:>15.4f}{ours_tp:>18.1f}")
    print(
        f"throughput ratio bertforge / transformers: {ours_tp / hf_tp:.2f}x; accuracy difference "
        f"{ours_acc - hf_acc:+.4f}"
    )


if __name__ == "__main__":
    main()
