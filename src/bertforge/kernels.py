"""The faster fp32 matrix product for each linear layer shape on the CPU at hand: PyTorch's default
(``F.linear``) or oneDNN on weights packed once (``mkldnn._linear_pointwise``). Which one wins depends
on the CPU (MKL is fast on Intel, oneDNN on AMD), so both are timed on the layer's shape at load and the
answer is cached per CPU model, thread count and torch version in ``$BERTFORGE_HOME/kernels.json``.
Training uses the same choice (``TrainLinear``): the forward's shape and the input gradient's.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .assets import home

ROWS = 1024  # rows of the timed product: half the token budget, a batch of typical size
MARGIN = 0.8  # the packed path must take at most this share of the time (timings on a shared CPU are noisy)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine_key() -> str:
    return f"{cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {ROWS} rows"


def _best_time(fn, x: torch.Tensor, reps: int = 3) -> float:
    fn(x)  # warm-up: first-call allocations and oneDNN primitive creation
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - start)
    return best


def time_shape(in_features: int, out_features: int, rows: int = ROWS) -> tuple[float, float]:
    """Seconds per (rows x in) @ (in x out) product: PyTorch's default, and oneDNN on packed weights."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=generator) / in_features**0.5
    bias = torch.zeros(out_features)
    x = torch.randn(rows, in_features, generator=generator)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    with torch.inference_mode():
        default = _best_time(lambda t: F.linear(t, weight, bias), x)
        onednn = _best_time(lambda t: torch.ops.mkldnn._linear_pointwise(t, packed, bias, "none", [], ""), x)
    return default, onednn


def packed_wins(shapes: set[tuple[int, int]], cache: Path | None = None) -> dict[tuple[int, int], bool]:
    """For each (in, out) shape: is oneDNN on packed weights the faster fp32 product here? Timed once
    per machine key and shape, then read from ``cache`` (default ``$BERTFORGE_HOME/kernels.json``)."""
    if not torch.backends.mkldnn.is_available() or os.environ.get("BERTFORGE_KERNELS") == "default":
        return dict.fromkeys(shapes, False)  # (BERTFORGE_KERNELS=default: PyTorch's product everywhere)
    cache = cache or home() / "kernels.json"
    key = _machine_key()
    known = _read(cache).get(key, {})
    missing = [s for s in sorted(shapes) if f"{s[0]}x{s[1]}" not in known]
    if missing:
        timed = {}
        for s in missing:
            default, onednn = time_shape(*s)
            timed[f"{s[0]}x{s[1]}"] = {"default_s": default, "onednn_s": onednn}
        _write(cache, key, timed)
        known = {**known, **timed}
    return {s: known[f"{s[0]}x{s[1]}"]["onednn_s"] < MARGIN * known[f"{s[0]}x{s[1]}"]["default_s"] for s in shapes}


def _read(cache: Path) -> dict:
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}


def _write(cache: Path, key: str, timed: dict) -> None:
    """Merge ``timed`` into the cache under ``key`` (locked: processes may load models at once). A cache
    that cannot be written is skipped: this process's timings still hold."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(cache.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = _read(cache)
            data.setdefault(key, {}).update(timed)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            os.replace(tmp, cache)
    except OSError:
        pass


class _OneDnnLinear(torch.autograd.Function):
    """``x W^T + b`` on oneDNN for the products the measurement chose: the forward (shape in x out) and
    the input gradient (out x in); the weight gradient stays on the default path (oneDNN needs its
    operands transposed there, which costs more than it gains)."""

    @staticmethod
    def forward(ctx, x, weight, bias, forward_onednn: bool, grad_onednn: bool):  # x: [rows, in]
        ctx.save_for_backward(x, weight)
        ctx.grad_onednn, ctx.has_bias = grad_onednn, bias is not None
        if forward_onednn:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):  # dy: [rows, out]
        x, weight = ctx.saved_tensors
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            if ctx.grad_onednn:
                dx = torch.ops.mkldnn._linear_pointwise(dy, weight.t().contiguous(), None, "none", [], "")
            else:
                dx = dy @ weight
        if ctx.needs_input_grad[1]:
            dw = dy.t() @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0)
        return dx, dw, db, None, None


class TrainLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, same state dict) whose fp32 products run where ``packed_wins``
    measured them faster, forward and backward: the kernel choice of inference, for training. Under
    autocast, or off the CPU, it is a plain linear layer."""

    def __init__(self, linear: nn.Linear, forward_onednn: bool, grad_onednn: bool):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # shared: the optimizer sees the same tensors
        self.forward_onednn, self.grad_onednn = forward_onednn, grad_onednn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
        if plain or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return F.linear(x, self.weight, self.bias)
        y = _OneDnnLinear.apply(x.reshape(-1, self.in_features), self.weight, self.bias,
                                self.forward_onednn, self.grad_onednn)  # fmt: skip
        return y.view(*x.shape[:-1], self.out_features)
