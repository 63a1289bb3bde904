"""Optimisers and learning-rate schedules for the training loop.

AdamW (fused where PyTorch has it) is the default; LAMB (You et al., 2019) is there for the large
batches it was made for. Biases and LayerNorm weights get no weight decay, as in BERT.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .errors import BertforgeError

OPTIMIZERS = ("adamw", "lamb")
SCHEDULES = ("linear", "cosine", "constant")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; not biases or LayerNorm weights (every 1-D parameter)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class Lamb(Optimizer):
    """LAMB: Adam's update, rescaled per parameter tensor by the trust ratio ||w|| / ||update||."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt().add_(group["eps"]))
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_(update * trust, alpha=-group["lr"])
        return loss


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, device: torch.device) -> Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        # PyTorch's fused AdamW runs on CPU and CUDA; one kernel over all tensors
        fused = device.type in ("cpu", "cuda")
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6, fused=fused)
    if name == "lamb":
        return Lamb(groups, lr=lr, weight_decay=weight_decay)
    raise BertforgeError(f"unknown optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})")


def make_schedule(optimizer: Optimizer, name: str, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Linear warmup from 0, then linear decay to 0, cosine decay to 0, or constant."""
    if name not in SCHEDULES:
        raise BertforgeError(f"unknown schedule {name!r} (choose from {', '.join(SCHEDULES)})")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if name == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
