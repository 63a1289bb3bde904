"""Which device a model runs on and at which precision: the checked choice of device, and the
precision names (``precision.prepare`` applies them for inference)."""

from __future__ import annotations

import logging
import os
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
