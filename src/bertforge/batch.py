"""Batches of token rows: grouping under a token budget, right padding into (B, T) tensors, the
encoder's three inputs, and long texts' windows flattened with the index of the input each came from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def token_batches(
    lengths: Sequence[int], max_tokens: int, max_batch: int | None = None, rows: Sequence[int] | None = None
) -> list[list[int]]:
    """Indices grouped longest-first so that each group's padded size (its rows x its longest row) fits
    ``max_tokens`` (an item over it alone is a group); item i brings ``rows[i]`` rows (default 1) of
    ``lengths[i]`` tokens at most, and a group holds at most ``max_batch`` items."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    held = 0  # rows in current
    for i in order:
        n = 1 if rows is None else rows[i]
        longest = lengths[current[0]] if current else lengths[i]
        if current and ((held + n) * longest > max_tokens or (max_batch is not None and len(current) >= max_batch)):
            batches.append(current)
            current, held = [], 0
        current.append(i)
        held += n
    if current:
        batches.append(current)
    return batches


def budget_parts(sizes: Sequence[tuple[int, int]], max_tokens: int) -> list[list[int]]:
    """Positions of one training micro-batch's examples, given each one's (rows, longest row), in parts of
    at most ``max_tokens`` padded tokens (one part, in order, when the whole fits)."""
    if sum(r for r, _ in sizes) * max(t for _, t in sizes) <= max_tokens:
        return [list(range(len(sizes)))]
    return token_batches([t for _, t in sizes], max_tokens, rows=[r for r, _ in sizes])


def pad_rows(rows: Sequence[Sequence[int]], value: int, length: int | None = None) -> Tensor:
    """(len(rows), T) int64: each row left-aligned, the rest ``value``; T is ``length`` or the longest row."""
    T = max((len(r) for r in rows), default=0) if length is None else length
    out = np.full((len(rows), T), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


def encoder_batch(
    ids_rows: Sequence[Sequence[int]],
    type_rows: Sequence[Sequence[int]],
    pad_id: int,
    pad_to_multiple_of: int | None = None,
) -> dict[str, Tensor]:
    """Right-padded (B, T) ``input_ids``, ``attention_mask`` (1 on real tokens) and ``token_type_ids``."""
    T = max((len(r) for r in ids_rows), default=0)
    if pad_to_multiple_of:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    lengths = np.array([len(r) for r in ids_rows], dtype=np.int64)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    return {
        "input_ids": pad_rows(ids_rows, pad_id, T),
        "attention_mask": torch.from_numpy(mask),
        "token_type_ids": pad_rows(type_rows, 0, T),
    }


def flatten_windows(encodings: Sequence[Any], windows: bool = True) -> tuple[list[Any], list[int]]:
    """Every encoding followed by its ``overflowing`` windows (only the first when not ``windows``),
    and for each the index of the encoding it came from."""
    flat: list[Any] = []
    owner: list[int] = []
    for i, e in enumerate(encodings):
        for w in [e, *(e.overflowing if windows else [])]:
            flat.append(w)
            owner.append(i)
    return flat, owner
