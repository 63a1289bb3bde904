"""Reading pretraining shards: the manifest, the vocabulary check, and ``PretrainShards``, which
serves instances and padded training batches (drawing dynamic masks per batch). ``LAYOUT`` says what
``data.pretrain.prepare`` writes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..batch import encoder_batch
from ..errors import BertforgeError
from ..outputs import sha256
from .masking import MaskingRule, mask_tokens

LAYOUT = """On disk (``out/``), for split ``train`` and ``eval`` and shard
``k``, files ``{split}-{k:05d}.{field}.npy``:

- ``input_ids`` (token dtype, flat; masks applied when static) and ``offsets`` (int64, n + 1):
  instance ``i`` is ``input_ids[offsets[i]:offsets[i + 1]]``, [CLS] A [SEP] B [SEP] or [CLS] A [SEP];
- ``b_start`` (int32): the position of B's first token (the length when there is no B); token type
  ids are 1 from there on;
- ``document`` (int64): the source document's index in corpus order;
- ``nsp_label`` (int8, NSP only): 0 when B follows A in the document, 1 when B is random;
- static masks: ``mask_positions`` (int32, flat), ``mask_labels`` (token dtype, the original ids) and
  ``mask_offsets`` (int64, n + 1);
- dynamic whole-word masks: ``word_continues`` (uint8, aligned with ``input_ids``): 1 where a token
  continues the previous token's word.

``manifest.json`` holds the settings, the vocabulary (path, sha256, size, special ids, lowercase)
and counts per split and per shard.
"""


FORMAT = "bertforge-pretrain-shards"
VERSION = 1
SPLITS = ("train", "eval")
IGNORE_INDEX = -100  # label of unmasked positions: transformers' convention (and heads.IGNORE_INDEX)


def offsets_of(counts: np.ndarray) -> np.ndarray:
    """Cumulative offsets (n + 1, int64, from 0) of ``counts``."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def vocab_file(path: Path) -> Path:
    """The file Tokenizer.from_pretrained reads for ``path``."""
    if path.is_dir():
        return path / "tokenizer.json" if (path / "tokenizer.json").is_file() else path / "vocab.txt"
    return path


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BertforgeError(f"{path}: no such file (write shards with `bertforge prepare-pretrain`)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BertforgeError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BertforgeError(f"{path}: not a {FORMAT} manifest of version {VERSION}")
    return manifest


def check_vocab(directory: str | Path, manifest: dict[str, Any]) -> None:
    """The vocabulary the shards in ``directory`` were made with is still there, unchanged (its sha256 in
    the manifest): token ids from another vocabulary would train the model on the wrong words."""
    path = vocab_file(Path(manifest["vocab_path"]))
    shards = Path(directory) / "manifest.json"
    try:
        digest = sha256(path)
    except OSError as e:
        reason = "no such file" if isinstance(e, FileNotFoundError) else f"cannot be read ({type(e).__name__})"
        raise BertforgeError(
            f"{path}: {reason}; it is the vocabulary the shards in {directory} were made with "
            f"({shards}): restore it, or re-run prepare-pretrain with another"
        ) from None
    if digest != manifest["vocab_sha256"]:
        raise BertforgeError(
            f"{path}: changed since prepare-pretrain made the shards in {directory} (its sha256 is not "
            f"the one in {shards}): re-run prepare-pretrain with this vocabulary, or restore the one "
            "the shards were made with"
        )


class PretrainShards:
    """The instances of one split, memory-mapped; ``collate`` makes padded training batches.

    ``shards[i]`` is a dict of numpy arrays: ``input_ids``, ``token_type_ids``, ``document`` (a
    scalar), ``next_sentence_label`` (a scalar; NSP only), ``masked_positions`` and ``masked_labels``
    (static masks), ``word_continues`` (dynamic whole-word masks).
    """

    def __init__(self, directory: str | Path, split: str = "train"):
        if split not in SPLITS:
            raise BertforgeError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
        self.directory = Path(directory)
        self.split = split
        self.manifest = read_manifest(self.directory)
        self.nsp = bool(self.manifest["nsp"])
        self.dynamic = bool(self.manifest["dynamic_mask"])
        self.pad_id = int(self.manifest["special_ids"]["pad"])
        self.rule = MaskingRule(
            mask_id=int(self.manifest["special_ids"]["mask"]),
            vocab_size=int(self.manifest["vocab_size"]),
            special_ids=tuple(sorted(self.manifest["special_ids"].values())),
            prob=float(self.manifest["masked_lm_prob"]),
            max_predictions=int(self.manifest["max_predictions_per_seq"]),
            whole_word=bool(self.manifest["whole_word_mask"]),
        )
        self._shards = [s["name"] for s in self.manifest["splits"][split]["shards"]]
        self._starts = offsets_of(
            np.array([s["instances"] for s in self.manifest["splits"][split]["shards"]], dtype=np.int64)
        )
        self._open: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict[str, Any]:  # data-loader workers reopen the memory maps themselves
        return {**self.__dict__, "_open": {}}

    def _arrays(self, shard: int) -> dict[str, np.ndarray]:
        arrays = self._open.get(shard)
        if arrays is None:
            arrays = {}
            for path in sorted(self.directory.glob(f"{self._shards[shard]}.*.npy")):
                arrays[path.name.split(".")[1]] = np.load(path, mmap_mode="r")
            self._open[shard] = arrays
        return arrays

    def _locate(self, index: int) -> tuple[dict[str, np.ndarray], int]:
        """The arrays of the shard holding instance ``index``, and its row there."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"instance {index} out of range for {n} instances")
        index %= n
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._arrays(shard), index - int(self._starts[shard])

    def length(self, index: int) -> int:
        """Tokens in instance ``index``."""
        a, j = self._locate(index)
        return int(a["offsets"][j + 1]) - int(a["offsets"][j])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        a, j = self._locate(index)
        lo, hi = int(a["offsets"][j]), int(a["offsets"][j + 1])
        ids = np.asarray(a["input_ids"][lo:hi], dtype=np.int64)
        types = np.zeros(len(ids), dtype=np.int64)
        types[int(a["b_start"][j]) :] = 1
        item = {"input_ids": ids, "token_type_ids": types, "document": np.int64(a["document"][j])}
        if self.nsp:
            item["next_sentence_label"] = np.int64(a["nsp_label"][j])
        if "mask_offsets" in a:
            m_lo, m_hi = int(a["mask_offsets"][j]), int(a["mask_offsets"][j + 1])
            item["masked_positions"] = np.asarray(a["mask_positions"][m_lo:m_hi], dtype=np.int64)
            item["masked_labels"] = np.asarray(a["mask_labels"][m_lo:m_hi], dtype=np.int64)
        if "word_continues" in a:
            item["word_continues"] = np.asarray(a["word_continues"][lo:hi], dtype=bool)
        return item

    def collate(self, indices: Sequence[int], rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """A right-padded batch: input_ids, attention_mask, token_type_ids, labels (B, T) and, with NSP,
        next_sentence_label (B,). Dynamic masks are drawn from ``rng`` (required then)."""
        if self.dynamic and rng is None:
            raise BertforgeError("these shards use dynamic masking: collate needs a random generator")
        items = [self[i] for i in indices]
        rows, targets = [], []
        for x in items:
            if self.dynamic:
                ids, positions, originals = mask_tokens(x["input_ids"], self.rule, rng, x.get("word_continues"))
            else:
                ids, positions, originals = x["input_ids"], x["masked_positions"], x["masked_labels"]
            rows.append(ids)
            targets.append((positions, originals))
        batch = encoder_batch(rows, [x["token_type_ids"] for x in items], self.pad_id)
        labels = np.full(tuple(batch["input_ids"].shape), IGNORE_INDEX, dtype=np.int64)
        for r, (positions, originals) in enumerate(targets):
            labels[r, positions] = originals
        batch["labels"] = torch.from_numpy(labels)
        if self.nsp:
            batch["next_sentence_label"] = torch.tensor(
                [int(x["next_sentence_label"]) for x in items], dtype=torch.int64
            )
        return batch
