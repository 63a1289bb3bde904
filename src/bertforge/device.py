"""Which device a model runs on and at which precision: the checked choice of device, and the
precision names (``precision.prepare`` applies them for inference)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import BertforgeError

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
RUNTIMES = ("torch", "onnx")
# padded tokens per forward pass, training and inference alike: on a CPU few enough that activations
# stay in its caches and out of fresh pages, on a GPU enough work per kernel launch (README "On a GPU")
CPU_MAX_TOKENS = 2048
GPU_MAX_TOKENS = 32768


def default_max_tokens(device: torch.device) -> int:
    """Padded tokens per batch where the caller gives none: small on a CPU, large on a GPU."""
    return CPU_MAX_TOKENS if device.type == "cpu" else GPU_MAX_TOKENS


def native_bf16(device: torch.device) -> bool:
    """Does this device compute bfloat16 matmuls natively (AMX / AVX512-BF16 on CPU, Ampere+ GPUs)?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask (taskset, container cpusets), capped by a
    cgroup CPU quota (``cpu.max``; a container limited to 1.5 CPUs gets 1), not the machine's cores."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(n, int(quota))) if quota is not None else n


def _cgroup_quota() -> float | None:
    """CPUs the cgroup may use per period (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None without a quota."""
    root = Path("/sys/fs/cgroup")
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def fit_threads() -> int:
    """Use no more threads than ``available_cpus`` (unless OMP_NUM_THREADS says how many); the count."""
    cpus = available_cpus()
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > cpus:
        torch.set_num_threads(cpus)
    return torch.get_num_threads()


class ThreadTuner:
    """The intra-op thread count for each CPU batch, chosen by measurement while batches run: mostly the
    best count known, and now and then one batch at half or double it. On a quiet machine that stays at
    every available CPU; when another process takes cores, fewer threads stop waiting on each other at
    every parallel region's barrier, and the tuner finds it within a few batches. Batches come sorted
    by length, so neighbours cost alike per token: a count is judged by seconds per padded token."""

    PROBE_EVERY = 8  # batches between tries of another count, doubling while tries lose (up to 64)
    GAIN = 1.25  # another count takes over when it is this much faster per token (one batch is noisy)
    EMA = 0.3  # weight of the newest batch in a count's running rate

    def __init__(self, most: int):
        self.most, self.current = most, most
        self.rate: dict[int, float] = {}  # count -> seconds per padded token (running average)
        self.interval, self.until_probe, self.probing = self.PROBE_EVERY, self.PROBE_EVERY, None

    def threads(self) -> int:
        """The count to run the next batch with."""
        self.until_probe -= 1
        others = [n for n in (self.current // 2, self.current * 2) if 1 <= n <= self.most and n != self.current]
        if self.until_probe <= 0 and others and self.current in self.rate:
            self.probing = min(others, key=lambda n: self.rate.get(n, 0.0))  # the one least known to be slow
            return self.probing
        self.probing = None
        return self.current

    def record(self, count: int, tokens: int, seconds: float) -> None:
        per_token = seconds / max(tokens, 1)
        old = self.rate.get(count)
        self.rate[count] = per_token if old is None or count == self.probing else old + self.EMA * (per_token - old)
        if self.probing is not None:
            won = self.rate[count] * self.GAIN < self.rate[self.current]
            self.current = count if won else self.current
            self.interval = self.PROBE_EVERY if won else min(self.interval * 2, 64)
            self.until_probe, self.probing = self.interval, None


_TUNER: ThreadTuner | None = None


def thread_tuner() -> ThreadTuner | None:
    """The process's tuner (threads fitted first), or None where there is nothing to choose (one CPU)
    or the user fixed the count (``BERTFORGE_THREADS=fixed``)."""
    global _TUNER
    if _TUNER is None and os.environ.get("BERTFORGE_THREADS") != "fixed" and fit_threads() > 1:
        _TUNER = ThreadTuner(torch.get_num_threads())
    return _TUNER


def pick_device(requested: str | torch.device | None) -> torch.device:
    """The device asked for (checked: a one-line error for a bad name or a GPU that is not there),
    else the GPU (the local rank's under torchrun) where PyTorch sees one, else the CPU."""
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise BertforgeError(f"unknown device {str(requested)!r} (cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BertforgeError(
                f"{device}: PyTorch sees no GPU here (this torch is {torch.__version__}); use --device cpu"
            )
        if device.index is None:  # each torchrun process its own GPU
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index >= torch.cuda.device_count():
            raise BertforgeError(
                f"{device}: there are {torch.cuda.device_count()} GPU(s) (cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1})"
            )
    elif device.type != "cpu":
        raise BertforgeError(f"{device}: bertforge runs on cpu or cuda")
    return device


def resolve_precision(precision: str, device: torch.device, warn: bool = True) -> str:
    """The precision a model runs at here: "auto" resolved, one the device cannot run refused, an
    emulated bf16 warned about (unless not ``warn``)."""
    if precision not in PRECISIONS:
        raise BertforgeError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise BertforgeError("fp16 needs a GPU; on a CPU use bf16 or int8")
    if precision == "int8" and device.type != "cpu":
        raise BertforgeError("int8 dynamic quantization runs on the CPU; on a GPU use bf16 or fp16")
    if warn and precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        logging.getLogger("bertforge").warning(
            "this CPU has no native bf16 (AVX512-BF16 / AMX): bf16 runs emulated, slower than fp32; int8 is the fast "
            "option here"
        )
    return precision


def model_device(model: Any) -> torch.device:
    """The device a model's inputs go to (ONNX sessions take CPU tensors)."""
    if isinstance(model, nn.Module):
        return next(model.parameters()).device
    return torch.device("cpu")
