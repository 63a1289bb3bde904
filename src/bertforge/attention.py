"""Attention backends behind one signature.

Every backend takes queries, keys and values shaped (B, nh, T, hs) and an optional key-padding mask
shaped (B, 1, 1, T) (True = attend), and returns (B, nh, T, hs). The model picks one by name from
``ATTENTION``; nothing here is chosen at import time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

AttentionFn = Callable[[Tensor, Tensor, Tensor, "Tensor | None", float], Tensor]


def math_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> Tensor:
    """The textbook softmax(QK^T / sqrt(d)) V, written out: the reference the fused kernels are checked against."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, nh, T, T)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v  # (B, nh, T, hs)


# On a GPU, never cuDNN's attention: it plans every new shape, and text batches change shape at every
# call, so planning costs more CPU time than the GPU spends (profiled in the README's "On a GPU").
GPU_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> Tensor:
    """PyTorch's fused kernel (flash / memory-efficient / math, picked by PyTorch per device and dtype;
    on a GPU never cuDNN's)."""
    with sdpa_kernel(GPU_BACKENDS) if q.is_cuda else contextlib.nullcontext():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


ATTENTION: dict[str, AttentionFn] = {
    "math": math_attention,
    "sdpa": sdpa_attention,
}
