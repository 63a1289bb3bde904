"""One training loop for pretraining and every fine-tuning task.

A task says how to batch its data, how many targets each batch has, its losses and its evaluation
(``Task``); this loop does the rest: seeded data order, gradient accumulation, mixed precision,
clipping, schedules, DDP under torchrun, periodic evaluation with early stopping, atomic
checkpoints and exact resume, a progress bar, metrics as JSONL and a plot of the curves.

Losses are averaged over *targets* (masked tokens, labelled tokens, sequences), across the
micro-batches of a step and across ranks: the targets of every micro-batch are counted before the
step, so one process and N processes with the same global batch take the same step, and a micro-batch
over the token budget (``max_tokens``) can run in parts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .batch import budget_parts
from .device import default_max_tokens, fit_threads, model_device, pick_device
from .distributed import Dist, Schedule, all_reduce, barrier, init_distributed
from .errors import BertforgeError
from .metrics import LOWER_IS_BETTER
from .optim import make_optimizer, make_schedule
from .outputs import progress_bar
from .precision import train_linears

PRECISIONS = ("fp32", "bf16")


class Task(Protocol):
    """What the loop needs from a task."""

    def num_train(self) -> int:
        """Training examples (the loop samples indices in [0, n))."""

    def size(self, index: int) -> tuple[int, int]:
        """(rows, longest row in tokens) that training example ``index`` puts in a batch."""

    def collate(self, indices: list[int], rng: np.random.Generator) -> dict[str, Tensor]:
        """A training batch of these examples; ``rng`` drives any randomness (e.g. dynamic masks)."""

    def counts(self, batch: dict[str, Tensor]) -> dict[str, int]:
        """Targets per loss term in this batch (the loss terms are means over these)."""

    def losses(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Mean loss per term; the training loss is their target-weighted global sum."""

    def tokens(self, batch: dict[str, Tensor]) -> int:
        """Real (non-padding) tokens, for throughput."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics (run on rank 0, in eval mode, without gradients)."""

    def export(self, model: nn.Module, directory: Path) -> None:
        """Write the model (Hugging Face format, tokenizer, task metadata) to ``directory``."""


@dataclass
class TrainArgs:
    out: Path
    max_steps: int | None = None  # wins over epochs
    epochs: float = 1.0
    batch_size: int = 32  # sequences per optimizer step, over all ranks and micro-batches
    grad_accum: int = 1
    max_tokens: int | None = None  # padded tokens per forward pass (None: the device's default_max_tokens)
    lr: float = 5e-5
    warmup: float = 0.1  # < 1: a fraction of the steps; >= 1: a number of steps
    schedule: str = "linear"
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    compile: bool = False
    seed: int = 0
    save_every: int = 0  # steps between checkpoints; 0: only at the end
    keep_last: int = 2
    eval_every: int = 0  # steps between evaluations; 0: once per epoch
    log_every: int = 10
    resume: bool = False
    device: str | None = None
    select_metric: str | None = (
        None  # keep the best checkpoint on this eval metric (the lowest in metrics.LOWER_IS_BETTER)
    )
    patience: int = 0  # evaluations without improvement before stopping; 0: never stop early
    progress: bool = True

    def __post_init__(self) -> None:
        """The settings a bad value of would crash the loop (a division by zero, torch's optimizer) once it has
        begun writing; the command line's options carry the same bounds."""
        bounds = (
            ("batch_size", 1),
            ("grad_accum", 1),
            ("max_tokens", 1),
            ("log_every", 1),
            ("lr", 0),
            ("weight_decay", 0),
            ("max_steps", 1),
        )
        for name, least in bounds:  # (None: max_steps by epochs, max_tokens by device)
            value = getattr(self, name)
            if value is not None and not value >= least:  # (NaN too)
                raise BertforgeError(f"{name} must be at least {least}, not {value}")
        if not self.epochs > 0:  # (NaN too) no pass over the data at all would still write a model
            raise BertforgeError(f"epochs must be more than 0, not {self.epochs}")


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    history: list[dict] = field(default_factory=list)  # eval results
    is_main: bool = field(default=True, metadata={"transient": True})  # rank 0 (not saved)


# -- checkpoints ----------------------------------------------------------------------------------------
def checkpoints(out: Path) -> list[Path]:
    root = out / "checkpoints"
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def resumable(out: Path, resume: bool) -> list[Path]:
    """The run ``out``'s checkpoints to resume from; a run that holds some is refused unless resuming
    (callers ask before they load a model, train() asks again)."""
    existing = checkpoints(out)
    if existing and not resume:
        raise BertforgeError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    return existing


def _rng_state() -> dict[str, Any]:
    """The global RNGs, in types that load with ``weights_only=True``."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def save_checkpoint(
    out: Path, model: nn.Module, optimizer, scheduler, state: TrainState, task: Task, keep_last: int
) -> Path:
    """RUN/checkpoints/step-N, written under a temporary name and renamed: never half there."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step}"
    tmp = root / f".tmp-step-{state.step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    task.export(model, tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    saved = {k: v for k, v in asdict(state).items() if k != "is_main"}
    (tmp / "trainer_state.json").write_text(json.dumps(saved, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoints(out)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


# what a run learns from: changed on resume, the run is no longer the one it would have been
RUN_SETTINGS = (
    "batch_size",
    "grad_accum",
    "lr",
    "warmup",
    "schedule",
    "weight_decay",
    "optimizer",
    "max_grad_norm",
    "precision",
    "seed",
)


def changed_settings(previous: Path, args: TrainArgs) -> str:
    """'lr 5e-05 -> 0.001, batch_size 32 -> 16': the run's settings (its train_args.json) that ``args`` changes."""
    try:
        before = json.loads(previous.read_text())
    except (OSError, ValueError):
        return ""
    now = asdict(args)
    return ", ".join(f"{k} {before[k]} -> {now[k]}" for k in RUN_SETTINGS if k in before and before[k] != now[k])


def resume_hint(path: Path) -> str:
    """The way out of an unreadable checkpoint ``path`` (RUN/checkpoints/step-N): remove it, and resume
    from the one before."""
    earlier = [p for p in checkpoints(path.parent.parent) if p != path]
    if earlier:
        return f"remove {path} to resume from the checkpoint before it ({earlier[-1].name})"
    return f"remove {path} to start over from step 0 (there is no checkpoint before it)"


def load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler) -> TrainState:
    from .checkpoint import load_state, read_weights
    from .config import BertConfig

    hint = resume_hint(path)

    def unreadable(name: str, what: str, e: Exception) -> BertforgeError:
        reason = "no such file" if isinstance(e, FileNotFoundError) else f"cannot read {what} ({type(e).__name__})"
        return BertforgeError(f"{path / name}: {reason}; {hint}")

    try:
        saved = BertConfig.from_json(path / "config.json").id2label
    except BertforgeError as e:
        raise BertforgeError(f"{e}; {hint}") from None
    # the head's rows are labels by position: resuming on data with other labels would pair them up wrongly
    current = getattr(getattr(model, "config", None), "id2label", None)
    if saved and current and saved != current:
        raise BertforgeError(
            f"{path} was trained on labels {', '.join(saved.values())}; this data has "
            f"{', '.join(current.values())}: resume with the same labels, or choose another --out"
        )
    try:
        if hasattr(model, "load_saved"):  # a model written as more than one file (a sentence encoder's Dense steps)
            model.load_saved(path)
        else:
            load_state(model, read_weights(path), str(path))
    except BertforgeError as e:
        raise BertforgeError(f"{e}; {hint}") from None
    try:
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        opt_state, sched_state = opt["optimizer"], opt["scheduler"]
    except Exception as e:
        raise unreadable("optimizer.pt", "optimizer state", e) from None
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(sched_state)
    try:
        _set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    except Exception as e:
        raise unreadable("rng.pt", "random generator state", e) from None
    try:
        return TrainState(**json.loads((path / "trainer_state.json").read_text(encoding="utf-8")))
    except Exception as e:
        raise unreadable("trainer_state.json", "trainer state", e) from None


# -- the loop ------------------------------------------------------------------------------------------
class MetricsLog:
    """RUN/metrics.jsonl: one JSON object a line ({"step", "split", ...}); only rank 0 writes."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.is_file():
            # a killed run may have logged past its last checkpoint: drop those lines
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            path.write_text("".join(ln + "\n" for ln in kept))
        elif enabled and path.exists():
            path.unlink()

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def _release_memory() -> Callable[[], None]:
    """glibc keeps the memory of freed tensors in its heaps; with batches of a different shape every
    step (unpadded training) they fragment and the process grows step by step, so the loop hands the
    free pages back (``malloc_trim``) every 10 steps. A no-op where there is no glibc."""
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


def _seed_step(seed: int, step: int, k: int, rank: int) -> None:
    """Dropout draws depend on (seed, step, micro-step, rank) alone, so a resumed run repeats them."""
    torch.manual_seed((seed * 1_000_003 + step * 1_009 + k * 31 + rank) % (2**63))


def train(model: nn.Module, task: Task, args: TrainArgs, on_eval: Callable[[dict], None] | None = None) -> TrainState:
    """Train ``model`` on ``task``; returns the final state. Checkpoints, metrics and plots go to ``args.out``.
    In fp32 on the CPU each linear layer runs on the kernel measured faster for its shapes, and is put
    back as it was at the end."""
    on_cpu = pick_device(args.device).type == "cpu"
    restore = train_linears(model) if on_cpu and args.precision == "fp32" and not args.compile else lambda: None
    try:
        return _train(model, task, args, on_eval)
    finally:
        restore()


def _train(model: nn.Module, task: Task, args: TrainArgs, on_eval: Callable[[dict], None] | None) -> TrainState:
    if args.precision not in PRECISIONS:
        raise BertforgeError(f"unknown precision {args.precision!r} (choose from {', '.join(PRECISIONS)})")
    device = pick_device(args.device)
    if device.type == "cpu" and "LOCAL_WORLD_SIZE" not in os.environ:  # (torchrun's processes share the CPUs)
        fit_threads()
    d = init_distributed(device)
    args = _fitted_batch(args, task.num_train(), d)
    sched = Schedule(
        task.num_train(), args.batch_size, args.grad_accum, args.seed, d
    )  # (before anything is written: too little data is an error)
    max_tokens = args.max_tokens or default_max_tokens(device)  # a micro-batch over it runs in parts
    out = args.out
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "checkpoints").glob(".tmp-step-*") if d.main else []:
        shutil.rmtree(stale, ignore_errors=True)  # left by a run killed while saving
    existing = resumable(out, args.resume)

    torch.manual_seed(args.seed)
    model.to(device)
    total_steps = args.max_steps or max(1, math.ceil(args.epochs * sched.steps_per_epoch))
    warmup = int(args.warmup * total_steps) if args.warmup < 1 else int(args.warmup)
    optimizer = make_optimizer(model, args.optimizer, args.lr, args.weight_decay, device)
    scheduler = make_schedule(optimizer, args.schedule, warmup, total_steps)
    state = _resumed(existing, model, optimizer, scheduler, args, d)
    log = MetricsLog(out / "metrics.jsonl", d.main, state.step if args.resume and existing else None)
    if d.main:
        (out / "train_args.json").write_text(json.dumps({**asdict(args), "out": str(out)}, indent=1) + "\n")

    runner: nn.Module = model
    if d.world > 1:
        runner = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if args.compile:
        runner = torch.compile(runner)
    use_bf16 = args.precision == "bf16"
    eval_every = args.eval_every or sched.steps_per_epoch

    bar = progress_bar(d.main and args.progress, total=total_steps, initial=state.step, desc="training", unit="step")
    window = _Window()
    stop = False
    release_memory = _release_memory()
    while state.step < total_steps and not stop:
        t0 = time.perf_counter()
        model.train()
        batches = _micro_batches(task, sched, state.step, args, d, max_tokens)
        # counted on the CPU, before the copy: on a GPU, reading a count back would wait for the device
        counts = [task.counts(b) for b in batches]
        tokens = sum(task.tokens(b) for b in batches)
        batches = [{key: v.to(device, non_blocking=True) for key, v in b.items()} for b in batches]
        terms = sorted(counts[0])
        totals = dict(zip(terms, all_reduce([float(sum(c[t] for c in counts)) for t in terms], d), strict=True))
        step_loss = _backward(runner, task, batches, counts, totals, args.seed, state.step, d, device.type, use_bf16)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm or float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cpu" and state.step % 10 == 0:
            release_memory()
        step_loss, tokens = all_reduce([step_loss, float(tokens)], d)
        state.step += 1
        dt = time.perf_counter() - t0
        state.tokens += int(tokens)
        state.elapsed += dt
        window.add(step_loss, tokens, dt)
        lr = scheduler.get_last_lr()[0]
        if not math.isfinite(step_loss):
            raise BertforgeError(f"loss became {step_loss} at step {state.step}: lower --lr or use fp32")
        if d.main:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens / dt:,.0f}", refresh=False)
        if state.step % args.log_every == 0 or state.step == total_steps:
            log.write(window.row(state, lr, float(grad_norm)))
            window = _Window()
        if state.step % eval_every == 0 or state.step == total_steps:
            stop = _evaluate(model, task, args, state, d, log, on_eval)
        if args.save_every and state.step % args.save_every == 0 and state.step < total_steps:
            if d.main:
                save_checkpoint(out, model, optimizer, scheduler, state, task, args.keep_last)
            barrier(d)
    bar.close()
    state.is_main = d.main
    if d.main:
        save_checkpoint(out, model, optimizer, scheduler, state, task, args.keep_last)
        from .plot import plot_run

        plot_run(out)
    barrier(d)
    return state


def _fitted_batch(args: TrainArgs, n: int, d: Dist) -> TrainArgs:
    """``args``, with a batch no larger than the training set (a handful of examples still trains)."""
    if n >= args.batch_size:
        return args
    unit = args.grad_accum * d.world
    fitted = n // unit * unit
    if fitted == 0:
        raise BertforgeError(
            f"{n} training examples cannot fill {unit} micro-batches (--grad-accum {args.grad_accum} x "
            f"{d.world} processes): lower --grad-accum"
        )
    if d.main:
        tqdm.write(
            f"bertforge: {n} training examples are fewer than one batch of {args.batch_size}: "
            f"training with batches of {fitted}"
        )
    return dataclasses.replace(args, batch_size=fitted)


def _micro_batches(task: Task, sched: Schedule, step: int, args: TrainArgs, d: Dist, max_tokens: int) -> list[dict]:
    """This rank's micro-batches of ``step``, each run in parts of at most ``max_tokens`` padded tokens, unless
    the task's loss compares a batch's examples with each other (``splittable = False``: in-batch negatives)."""
    batches = []
    whole = not getattr(task, "splittable", True)
    for k in range(args.grad_accum):
        epoch, g, idx = sched.micro_batch(step, k)
        rng = np.random.default_rng([args.seed, epoch, g, d.rank])
        parts = [list(range(len(idx)))] if whole else budget_parts([task.size(i) for i in idx], max_tokens)
        batches.extend(task.collate([idx[j] for j in part], rng) for part in parts)
    return batches


@dataclass
class _Window:
    """Training metrics since the last log line."""

    loss: float = 0.0
    steps: int = 0
    tokens: float = 0.0
    time: float = 0.0

    def add(self, loss: float, tokens: float, seconds: float) -> None:
        self.loss, self.steps, self.tokens, self.time = (
            self.loss + loss,
            self.steps + 1,
            self.tokens + tokens,
            self.time + seconds,
        )

    def row(self, state: TrainState, lr: float, grad_norm: float) -> dict:
        return {"step": state.step, "split": "train", "loss": self.loss / self.steps, "lr": lr, "grad_norm": grad_norm,
                "tokens_per_s": self.tokens / max(self.time, 1e-9), "tokens": state.tokens,
                "elapsed_s": round(state.elapsed, 2)}  # fmt: skip


def _resumed(existing: list[Path], model: nn.Module, optimizer, scheduler, args: TrainArgs, d: Dist) -> TrainState:
    """The state to start from: the newest checkpoint's when resuming (saying so), else a new one."""
    state = TrainState()
    if args.resume and existing:
        state = load_checkpoint(existing[-1], model, optimizer, scheduler)
        if d.main:
            tqdm.write(f"bertforge: resumed from {existing[-1]} (step {state.step})")
            if changes := changed_settings(args.out / "train_args.json", args):
                tqdm.write(
                    f"bertforge: warning: resuming with settings other than the run's ({changes}); the optimizer "
                    "and the learning-rate schedule continue from the checkpoint"
                )
    elif args.resume and d.main:  # a rerun after a preemption before the first checkpoint: start over, but say so
        tqdm.write(f"bertforge: no checkpoint in {args.out} to resume from: starting from step 0")
    return state


def _backward(
    runner: nn.Module,
    task: Task,
    batches: list[dict],
    counts: list[dict],
    totals: dict[str, float],
    seed: int,
    step: int,
    d: Dist,
    device_type: str,
    use_bf16: bool,
) -> float:
    """Gradients of one step's micro-batches; returns the step's loss. Each loss term is weighted to its
    share of the step's targets, so N micro-batches take the step one batch would."""
    step_loss = 0.0
    terms = sorted(totals)
    for k, batch in enumerate(batches):
        _seed_step(seed, step, k, d.rank)
        last = k == len(batches) - 1
        sync = runner.no_sync() if (d.world > 1 and not last) else contextlib.nullcontext()
        with sync, torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_bf16):
            means = task.losses(runner, batch)
            # DDP averages gradients over ranks, hence the factor world below
            loss = sum(means[t] * (counts[k][t] / totals[t]) for t in terms if counts[k][t] > 0 and totals[t] > 0)
        if not torch.is_tensor(loss):
            continue
        (loss * d.world).backward()
        step_loss += float(loss.detach())
    return step_loss


def _evaluate(model, task: Task, args: TrainArgs, state: TrainState, d: Dist, log: MetricsLog, on_eval) -> bool:
    """Evaluate on rank 0, keep the best model, and say whether to stop early (all ranks agree)."""
    stop = 0.0
    if d.main:
        model.eval()
        with (
            torch.no_grad(),
            torch.autocast(model_device(model).type, dtype=torch.bfloat16, enabled=args.precision == "bf16"),
        ):
            metrics = task.evaluate(model)
        model.train()
        row = {"step": state.step, "split": "eval", **metrics}
        log.write(row)
        state.history.append(row)
        if on_eval:
            on_eval(row)
        tqdm.write("bertforge: step {}: {}".format(state.step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())))
        if args.select_metric:
            if args.select_metric not in metrics:
                raise BertforgeError(f"metric {args.select_metric!r} is not among {', '.join(metrics)}")
            value = metrics[args.select_metric]
            lower = args.select_metric in LOWER_IS_BETTER
            better = state.best_metric is None or (value < state.best_metric if lower else value > state.best_metric)
            if better:
                state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
                tmp = args.out / ".best.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                task.export(model, tmp)
                shutil.rmtree(args.out / "best", ignore_errors=True)
                os.replace(tmp, args.out / "best")
            else:
                state.bad_evals += 1
                if args.patience and state.bad_evals >= args.patience:
                    tqdm.write(
                        f"bertforge: no {args.select_metric} improvement in {args.patience} evaluations: stopping"
                    )
                    stop = 1.0
    return bool(all_reduce([stop], d)[0])
