"""Data parallelism under torchrun: the ranks, their reductions, and which examples each rank sees at
each step (a pure function of the step, so a resumed run needs no sampler state)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import BertforgeError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """From torchrun's environment; gloo on CPU, nccl on GPU. A single process needs nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce(values: list[float], d: Dist) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


class Schedule:
    """Which examples each rank sees at each micro-step: a seeded permutation per epoch, cut into
    global micro-batches of ``batch_size / grad_accum``; rank r takes the r-th slice of each. The
    position is a pure function of the step, so resuming needs no sampler state."""

    def __init__(self, n: int, batch_size: int, grad_accum: int, seed: int, d: Dist):
        self.n, self.seed, self.d = n, seed, d
        if batch_size % (grad_accum * d.world):
            raise BertforgeError(
                f"batch size {batch_size} is not divisible by grad-accum {grad_accum} x {d.world} processes"
            )
        self.micro = batch_size // grad_accum  # global micro-batch
        self.local = self.micro // d.world
        self.grad_accum = grad_accum
        self.micro_per_epoch = n // self.micro
        if self.micro_per_epoch == 0:
            raise BertforgeError(f"{n} training examples are fewer than one batch of {self.micro}: lower --batch-size")
        self.steps_per_epoch = max(1, self.micro_per_epoch // self.grad_accum)
        self._perm: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return self._perm[1]

    def micro_batch(self, step: int, k: int) -> tuple[int, int, list[int]]:
        """(epoch, index of the global micro-batch, this rank's example indices) for micro-step k of ``step``."""
        g = step * self.grad_accum + k
        epoch, j = divmod(g, self.micro_per_epoch)
        perm = self._permutation(epoch)
        start = j * self.micro + self.d.rank * self.local
        return epoch, g, perm[start : start + self.local].tolist()


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()
