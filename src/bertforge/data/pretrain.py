"""Pretraining data: text corpora -> masked-LM (+ next-sentence) instances in memory-mapped shards.

``prepare`` follows google-research/bert's create_pretraining_data.py: documents are lists of
sentences; each document yields [CLS] A [SEP] B [SEP] pairs whose B is the real continuation or, half
the time, a random stretch of another document (the unused sentences are put back); a pair is cut to
fit from the front or back of its longer side; ``short_seq_prob`` of documents aim for a random
shorter length; ``dupe_factor`` passes draw fresh pairs and masks. Without NSP each document is cut
into contiguous [CLS] tokens [SEP] blocks instead. Masks are drawn here (static) or by
``PretrainShards.collate`` at load time (dynamic); ``masking.mask_tokens`` implements both.

It runs in two streaming stages over worker processes, so corpora larger than memory pass through:
(1) read and tokenize documents into a token store on disk, (2) build instances from chunks of
``chunk_documents`` documents, each chunk with its own random generator seeded by (seed, split,
pass, chunk): the output depends on the seed, never on the number of workers.

On disk (``out/``), for split ``train`` and ``eval`` and shard ``k``, files ``{split}-{k:05d}.{field}.npy``:

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

from __future__ import annotations

import array
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..assets import resolve_path
from ..errors import BertforgeError
from ..outputs import progress_bar
from ..tokenizer import Tokenizer
from .masking import MaskingRule, mask_tokens
from .sentences import expand_corpus, read_pieces

FORMAT = "bertforge-pretrain-shards"
VERSION = 1
SPLITS = ("train", "eval")
IGNORE_INDEX = -100  # label of unmasked positions: transformers' convention (and heads.IGNORE_INDEX)
SEGMENTERS = ("jieba", "none")
_TASK_PIECES = 512  # pieces per tokenization task (any value gives the same output)
_TASK_CHARS = 1 << 19  # ... or fewer when they are long


@dataclass(frozen=True)
class PretrainDataConfig:
    """How instances are built. Defaults follow google-research/bert for 128-token pretraining."""

    max_seq_len: int = 128  # tokens per instance, [CLS] and [SEP]s included
    nsp: bool = True  # sentence pairs with a next-sentence label; False packs single segments (MLM only)
    whole_word_mask: bool = False  # mask all pieces of a word together (Chinese: jieba words)
    dynamic_mask: bool = False  # store no masks; PretrainShards.collate draws them per batch
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20  # ~ max_seq_len * masked_lm_prob
    short_seq_prob: float = 0.1  # documents that aim for a random length in [2, max]: fewer train/test mismatches
    dupe_factor: int = 5  # passes over the data with fresh pairs and masks (Google's README uses 5; its flag, 10)
    seed: int = 0
    eval_fraction: float = 0.01  # documents held out for evaluation (at least one when there are two)
    shard_size: int = 100_000  # instances per shard file
    zh_segmenter: str = "jieba"  # Chinese word boundaries for whole-word masking: jieba | none
    chunk_documents: int = 256  # documents per random-generator stream (part of what the seed reproduces)

    def check(self) -> None:
        """Raise BertforgeError on a setting that cannot work."""
        problems = [
            (self.max_seq_len < (5 if self.nsp else 3), f"max_seq_len {self.max_seq_len} leaves no room for text"),
            (not 0 < self.masked_lm_prob < 1, f"masked_lm_prob {self.masked_lm_prob} must be in (0, 1)"),
            (self.max_predictions_per_seq < 1, f"max_predictions_per_seq {self.max_predictions_per_seq} must be >= 1"),
            (not 0 <= self.short_seq_prob <= 1, f"short_seq_prob {self.short_seq_prob} must be in [0, 1]"),
            (self.dupe_factor < 1, f"dupe_factor {self.dupe_factor} must be >= 1"),
            (not 0 <= self.eval_fraction < 1, f"eval_fraction {self.eval_fraction} must be in [0, 1)"),
            (self.shard_size < 1, f"shard_size {self.shard_size} must be >= 1"),
            (self.zh_segmenter not in SEGMENTERS, f"unknown zh_segmenter {self.zh_segmenter!r} ({' | '.join(SEGMENTERS)})"),
            (self.chunk_documents < 1, f"chunk_documents {self.chunk_documents} must be >= 1"),
        ]
        for bad, message in problems:
            if bad:
                raise BertforgeError(message)


# -- the tokenized corpus: a token store on disk ------------------------------------------------------
_CJK_RANGES = (
    (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0x2F800, 0x2FA1F),
)  # the ranges BERT's tokenizer treats as Chinese characters
_HAS_CJK = re.compile("[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in _CJK_RANGES) + "]")


def _is_cjk_token(token: str) -> bool:
    return len(token) == 1 and _HAS_CJK.match(token) is not None


def word_continues(text: str, tokens: Sequence[str], offsets: Sequence[tuple[int, int]], segment: Callable | None) -> list[bool]:
    """Per token of ``text``: does it continue the previous token's word?

    ``##`` pieces continue their word. Chinese characters are tokens of their own; with a segmenter
    (``segment(text) -> [(word, start, end)]``, e.g. ``jieba.tokenize``) a character continues the
    previous character when both lie in one segmenter word, as in Chinese-BERT-wwm.
    """
    flags = [t.startswith("##") for t in tokens]
    if segment is not None and _HAS_CJK.search(text):
        word_of = [0] * len(text)
        for w, (_, start, end) in enumerate(segment(text)):
            word_of[start:end] = [w] * (end - start)
        cjk = [_is_cjk_token(t) for t in tokens]
        for i in range(1, len(tokens)):
            if cjk[i] and cjk[i - 1]:
                flags[i] = word_of[offsets[i][0]] == word_of[offsets[i - 1][0]]
    return flags


def _jieba_segment() -> Callable:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba.tokenize


@dataclass
class _Tokenized:
    tokens: np.ndarray  # flat token ids of the kept (non-empty) sentences
    word_continues: np.ndarray | None  # uint8, aligned with tokens (whole-word masking only)
    sentence_lengths: np.ndarray  # int64, per kept sentence
    piece_sentences: list[int]  # kept sentences per piece
    piece_ends: list[bool]  # does the piece end its document?


class _TokenStore:
    """Appends tokenized pieces to raw files (documents without sentences are dropped), then writes
    the offsets that the memory-mapped _Corpus reads."""

    def __init__(self, directory: Path, token_dtype: np.dtype):
        self.directory = directory
        self.files = {name: (directory / f"{name}.bin").open("wb") for name in ("tokens", "word_continues", "sentence_lengths")}
        self.dtype = token_dtype
        self.document_sentences = array.array("q")  # 8 bytes a document: small next to its tokens
        self.open_document = 0  # sentences of the document still being read

    def add(self, part: _Tokenized) -> None:
        self.files["tokens"].write(part.tokens.astype(self.dtype).tobytes())
        if part.word_continues is not None:
            self.files["word_continues"].write(part.word_continues.astype(np.uint8).tobytes())
        self.files["sentence_lengths"].write(part.sentence_lengths.astype(np.int64).tobytes())
        for count, ends in zip(part.piece_sentences, part.piece_ends, strict=True):
            self.open_document += count
            if ends and self.open_document:
                self.document_sentences.append(self.open_document)
            if ends:
                self.open_document = 0

    def finish(self) -> None:
        """Close the raw files and write cumulative offsets: sentence -> tokens, document -> sentences."""
        for f in self.files.values():
            f.close()
        np.frombuffer(self.document_sentences, dtype=np.int64).tofile(self.directory / "document_sentences.bin")
        for lengths, offsets in (("sentence_lengths", "sentence_offsets"), ("document_sentences", "document_offsets")):
            counts = np.fromfile(self.directory / f"{lengths}.bin", dtype=np.int64)
            cumulative = np.lib.format.open_memmap(self.directory / f"{offsets}.npy", "w+", np.int64, (len(counts) + 1,))
            cumulative[0] = 0
            np.cumsum(counts, out=cumulative[1:])
            cumulative.flush()
            del cumulative


@dataclass
class _Corpus:
    """The token store, memory-mapped: sentence s is tokens[sentence_offsets[s]:sentence_offsets[s + 1]],
    document d is sentences document_offsets[d] to document_offsets[d + 1]."""

    tokens: np.ndarray
    word_continues: np.ndarray | None
    sentence_offsets: np.ndarray
    document_offsets: np.ndarray

    @classmethod
    def open(cls, directory: Path, token_dtype: np.dtype, with_words: bool) -> _Corpus:
        # Plain ndarray views of the maps: slicing np.memmap objects costs more than the work per instance.
        def raw(name: str, dtype) -> np.ndarray:
            path = directory / f"{name}.bin"
            return np.asarray(np.memmap(path, dtype=dtype, mode="r")) if path.stat().st_size else np.zeros(0, dtype)

        return cls(
            tokens=raw("tokens", token_dtype),
            word_continues=raw("word_continues", np.uint8) if with_words else None,
            sentence_offsets=np.asarray(np.load(directory / "sentence_offsets.npy", mmap_mode="r")),
            document_offsets=np.asarray(np.load(directory / "document_offsets.npy", mmap_mode="r")),
        )

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1


# -- instances ------------------------------------------------------------------------------------------
@dataclass
class _Instances:
    """A run of instances as flat arrays (per-instance fields, and flat fields with their lengths)."""

    input_ids: np.ndarray
    lengths: np.ndarray  # int64
    b_start: np.ndarray  # int32
    document: np.ndarray  # int64
    nsp_label: np.ndarray | None  # int8
    mask_positions: np.ndarray | None  # int32
    mask_labels: np.ndarray | None
    mask_counts: np.ndarray | None  # int64
    word_continues: np.ndarray | None  # uint8, aligned with input_ids

    def __len__(self) -> int:
        return len(self.lengths)

    def split(self, n: int) -> tuple[_Instances, _Instances]:
        """The first ``n`` instances and the rest."""
        t = int(self.lengths[:n].sum())
        m = int(self.mask_counts[:n].sum()) if self.mask_counts is not None else 0
        cut = {"input_ids": t, "word_continues": t, "mask_positions": m, "mask_labels": m}
        head, tail = {}, {}
        for f in fields(self):
            a = getattr(self, f.name)
            at = cut.get(f.name, n)
            head[f.name], tail[f.name] = (None, None) if a is None else (a[:at], a[at:])
        return _Instances(**head), _Instances(**tail)

    @staticmethod
    def concat(parts: Sequence[_Instances]) -> _Instances:
        joined = {}
        for f in fields(_Instances):
            arrays = [getattr(p, f.name) for p in parts]
            joined[f.name] = None if arrays[0] is None else np.concatenate(arrays)
        return _Instances(**joined)


@dataclass
class _Work:
    """What every worker process needs for stage 2 (inherited through fork, or used in-process)."""

    config: PretrainDataConfig
    corpus: _Corpus
    rule: MaskingRule
    cls_id: int
    sep_id: int
    token_dtype: np.dtype
    splits: dict[str, np.ndarray]  # split -> its documents (corpus indices)
    every: np.ndarray  # all documents


_STATE: dict[str, Any] = {}  # per process: "tokenize" (tokenizer, segmenter, whole_word) and "work" (_Work)


def _tokenize(pieces: list[tuple[list[str], bool]]) -> _Tokenized:
    """Stage 1 task: tokenize pieces of documents sentence by sentence; drop empty sentences."""
    tokenizer, segment, whole_word = _STATE["tokenize"]
    sentences = [s for piece, _ in pieces for s in piece]
    encodings = tokenizer.encode_batch(sentences, add_special_tokens=False) if sentences else []
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    tokens = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64, count=int(lengths.sum()))
    continues = None
    if whole_word:
        continues = np.fromiter(
            (c for s, e in zip(sentences, encodings, strict=True) for c in word_continues(s, e.tokens, e.offsets, segment)),
            dtype=np.uint8,
            count=len(tokens),
        )
    per_piece = np.split(lengths, np.cumsum([len(p) for p, _ in pieces])[:-1])
    kept = [int((x > 0).sum()) for x in per_piece]
    return _Tokenized(tokens, continues, lengths[lengths > 0], kept, [ends for _, ends in pieces])


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator) -> None:
    """Cut the pair of [lo, hi) spans ``a`` and ``b`` in place to ``max_tokens`` in all, as Google's
    truncate_seq_pair does: one token at a time from the longer span (B on ties), from its front or
    back at random. The counts are exact; the front/back draws are binomial in one go."""
    la, lb = a[1] - a[0], b[1] - b[0]
    excess = la + lb - max_tokens
    if excess <= 0:
        return
    from_a = min(excess, max(la - lb, 0))
    from_b = min(excess, max(lb - la, 0))
    rest = excess - from_a - from_b  # now equal lengths: B, A, B, A, ...
    from_b += (rest + 1) // 2
    from_a += rest // 2
    for span, k in ((a, from_a), (b, from_b)):
        front = int(rng.binomial(k, 0.5)) if k else 0
        span[0] += front
        span[1] -= k - front


def _document_spans(work: _Work, split: str, position: int, rng: np.random.Generator) -> Iterator[tuple[list[int], list[int] | None, int]]:
    """(A span, B span or None, NSP label) for each instance of one document, in corpus token indices.

    ``position`` is the document's index within its split. NSP: google-research/bert's
    create_instances_from_document. No NSP: the document cut into contiguous blocks.
    """
    cfg, corpus = work.config, work.corpus
    doc = int(work.splits[split][position])
    s_lo, s_hi = int(corpus.document_offsets[doc]), int(corpus.document_offsets[doc + 1])
    ends = corpus.sentence_offsets
    max_tokens = cfg.max_seq_len - (3 if cfg.nsp else 2)
    target = max_tokens
    if rng.random() < cfg.short_seq_prob:
        target = int(rng.integers(2, max_tokens + 1))
    if not cfg.nsp:
        lo, hi = int(ends[s_lo]), int(ends[s_hi])
        for start in range(lo, hi, target):
            yield [start, min(start + target, hi)], None, 0
        return
    # B's random document: any other document of the split (of the corpus when the split has one)
    pool, own = (work.splits[split], position) if len(work.splits[split]) >= 2 else (work.every, doc)
    chunk_start, length, i = s_lo, 0, s_lo
    while i < s_hi:
        length += int(ends[i + 1] - ends[i])
        if i == s_hi - 1 or length >= target:
            m = i - chunk_start + 1  # sentences in the chunk
            a_end = chunk_start + (int(rng.integers(1, m)) if m >= 2 else 1)
            a = [int(ends[chunk_start]), int(ends[a_end])]
            if m == 1 or rng.random() < 0.5:
                if len(pool) > 1:
                    r = int(rng.integers(0, len(pool) - 1))
                    r += r >= own  # any document but this one
                else:
                    r = 0
                other = int(pool[r])
                o_lo, o_hi = int(corpus.document_offsets[other]), int(corpus.document_offsets[other + 1])
                start = o_lo + int(rng.integers(0, o_hi - o_lo))
                b_lo = int(ends[start])
                # sentences from `start` until B reaches its target length (at least one)
                j = int(np.searchsorted(ends[start + 1 : o_hi + 1], b_lo + target - (a[1] - a[0]), side="left"))
                b = [b_lo, int(ends[start + 1 + min(j, o_hi - start - 1)])]
                label = 1
                i = a_end - 1  # put the unused sentences back
            else:
                b = [int(ends[a_end]), int(ends[i + 1])]
                label = 0
            _truncate_pair(a, b, max_tokens, rng)
            yield a, b, label
            chunk_start, length = i + 1, 0
        i += 1


def _make_instances(task: tuple[str, int, int, int, int]) -> _Instances:
    """Stage 2 task: the instances of documents [lo, hi) of a split in one dupe pass."""
    split, dupe, chunk, lo, hi = task
    work: _Work = _STATE["work"]
    cfg, corpus = work.config, work.corpus
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), dupe, chunk])
    cls = np.array([work.cls_id], dtype=np.int64)
    sep = np.array([work.sep_id], dtype=np.int64)
    zero = np.zeros(1, dtype=np.uint8)
    out: dict[str, list] = {f.name: [] for f in fields(_Instances)}
    for position in range(lo, hi):
        doc = int(work.splits[split][position])
        for a, b, label in _document_spans(work, split, position, rng):
            pieces = [cls, corpus.tokens[a[0] : a[1]], sep]
            if b is not None:
                pieces += [corpus.tokens[b[0] : b[1]], sep]
            ids = np.concatenate(pieces).astype(np.int64)
            continues = None
            if corpus.word_continues is not None:
                w = corpus.word_continues
                parts = [zero, w[a[0] : a[1]], zero] + ([w[b[0] : b[1]], zero] if b is not None else [])
                continues = np.concatenate(parts)
            out["b_start"].append(a[1] - a[0] + 2 if b is not None else len(ids))
            out["document"].append(doc)
            out["nsp_label"].append(label)
            out["lengths"].append(len(ids))
            if cfg.dynamic_mask:
                out["input_ids"].append(ids)
                out["word_continues"].append(continues)
            else:
                masked, positions, labels = mask_tokens(ids, work.rule, rng, continues)
                out["input_ids"].append(masked)
                out["mask_positions"].append(positions)
                out["mask_labels"].append(labels)
                out["mask_counts"].append(len(positions))
    n = len(out["lengths"])

    def flat(name: str, dtype) -> np.ndarray:
        return np.concatenate(out[name]).astype(dtype) if n else np.zeros(0, dtype)

    static = not cfg.dynamic_mask
    return _Instances(
        input_ids=flat("input_ids", work.token_dtype),
        lengths=np.array(out["lengths"], dtype=np.int64),
        b_start=np.array(out["b_start"], dtype=np.int32),
        document=np.array(out["document"], dtype=np.int64),
        nsp_label=np.array(out["nsp_label"], dtype=np.int8) if cfg.nsp else None,
        mask_positions=flat("mask_positions", np.int32) if static else None,
        mask_labels=flat("mask_labels", work.token_dtype) if static else None,
        mask_counts=np.array(out["mask_counts"], dtype=np.int64) if static else None,
        word_continues=flat("word_continues", np.uint8) if cfg.dynamic_mask and cfg.whole_word_mask else None,
    )


class _ShardWriter:
    """Collects instances of one split and writes a shard every ``shard_size`` instances."""

    def __init__(self, directory: Path, split: str, shard_size: int):
        self.directory, self.split, self.shard_size = directory, split, shard_size
        self.buffer: list[_Instances] = []
        self.buffered = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, instances: _Instances) -> None:
        self.buffer.append(instances)
        self.buffered += len(instances)
        while self.buffered >= self.shard_size:
            head, tail = _Instances.concat(self.buffer).split(self.shard_size)
            self._write(head)
            self.buffer, self.buffered = [tail], len(tail)

    def close(self) -> list[dict[str, Any]]:
        if self.buffered:
            self._write(_Instances.concat(self.buffer))
        self.buffer, self.buffered = [], 0
        return self.shards

    def _write(self, x: _Instances) -> None:
        name = f"{self.split}-{len(self.shards):05d}"
        arrays = {
            "input_ids": x.input_ids,
            "offsets": _offsets(x.lengths),
            "b_start": x.b_start,
            "document": x.document,
            "nsp_label": x.nsp_label,
            "mask_positions": x.mask_positions,
            "mask_labels": x.mask_labels,
            "mask_offsets": None if x.mask_counts is None else _offsets(x.mask_counts),
            "word_continues": x.word_continues,
        }
        for field_name, values in arrays.items():
            if values is not None:
                np.save(self.directory / f"{name}.{field_name}.npy", np.ascontiguousarray(values))
        self.shards.append({
            "name": name,
            "instances": len(x),
            "tokens": int(x.lengths.sum()),
            "masked_tokens": None if x.mask_counts is None else int(x.mask_counts.sum()),
        })


def _offsets(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


# -- running tasks over processes ----------------------------------------------------------------------
@contextmanager
def _pool(workers: int):
    """A fork pool (workers inherit _STATE and the memory maps), or None to run in this process.

    Tokenizers' own thread pool is switched off in the workers: the processes are the parallelism.
    """
    if workers <= 1:
        yield None
        return
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # inherited by the forked workers
    try:
        pool = multiprocessing.get_context("fork").Pool(workers)
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def _ordered(pool, fn: Callable, tasks: Iterable, window: int) -> Iterator:
    """fn over tasks, results in task order, at most ``window`` tasks in flight (so memory stays bounded)."""
    if pool is None:
        yield from map(fn, tasks)
        return
    pending: deque = deque()
    for task in tasks:
        pending.append(pool.apply_async(fn, (task,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _tokenize_tasks(files: Sequence[Path], bar: tqdm) -> Iterator[list[tuple[list[str], bool]]]:
    task: list[tuple[list[str], bool]] = []
    chars = 0
    read_before = 0
    for path in files:
        for sentences, ends, done in read_pieces(path):
            task.append((sentences, ends))
            chars += sum(len(s) for s in sentences)
            bar.update(read_before + done - bar.n)
            if len(task) >= _TASK_PIECES or chars >= _TASK_CHARS:
                yield task
                task, chars = [], 0
        read_before += path.stat().st_size
        bar.update(read_before - bar.n)
    if task:
        yield task


# -- the pipeline ---------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _vocab_file(path: Path) -> Path:
    """The file Tokenizer.from_pretrained reads for ``path``."""
    if path.is_dir():
        return path / "tokenizer.json" if (path / "tokenizer.json").is_file() else path / "vocab.txt"
    return path


def _split_documents(n: int, cfg: PretrainDataConfig) -> dict[str, np.ndarray]:
    """Held-out documents drawn at random (seeded), the rest for training; both in corpus order."""
    n_eval = 0
    if n >= 2 and cfg.eval_fraction > 0:
        n_eval = min(n - 1, max(1, round(n * cfg.eval_fraction)))
    held_out = np.sort(np.random.default_rng([cfg.seed, 7919]).choice(n, n_eval, replace=False)).astype(np.int64)
    keep = np.ones(n, dtype=bool)
    keep[held_out] = False
    return {"train": np.flatnonzero(keep).astype(np.int64), "eval": held_out}


def prepare(
    corpus: Sequence[str | Path],
    vocab: str | Path,
    out: str | Path,
    config: PretrainDataConfig = PretrainDataConfig(),
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Turn corpus files (text or JSONL; paths or globs) into instance shards in ``out``; return the manifest.

    ``vocab`` is anything ``Tokenizer.from_pretrained`` takes. ``out`` is replaced if it holds shards
    from an earlier run; any other non-empty directory is refused. ``workers`` defaults to all cores.
    """
    config.check()
    files = expand_corpus(corpus)
    if not files:
        raise BertforgeError("no corpus files given")
    tokenizer = Tokenizer.from_pretrained(vocab)
    vocab_path = resolve_path(vocab)
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())):
        raise BertforgeError(f"{out}: exists and does not hold pretraining shards; choose another --out")
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    token_dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)
    whole_word = config.whole_word_mask
    segment = _jieba_segment() if whole_word and config.zh_segmenter == "jieba" else None

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    store_dir = staging / "tokenized"
    store_dir.mkdir(parents=True)
    try:
        _STATE["tokenize"] = (tokenizer, segment, whole_word)
        corpus_data = _tokenize_corpus(files, store_dir, token_dtype, whole_word, workers, progress)
        n_docs = corpus_data.num_documents
        if n_docs == 0:
            raise BertforgeError(f"{', '.join(map(str, files))}: no text (empty corpus)")
        splits = _split_documents(n_docs, config)
        every = np.arange(n_docs, dtype=np.int64)
        _STATE["work"] = _Work(config, corpus_data, _masking_rule(tokenizer, config), tokenizer.cls_id, tokenizer.sep_id, token_dtype, splits, every)
        shards = _write_instances(_STATE["work"], staging, workers, progress)
        stats = {
            "files": [str(p.resolve()) for p in files],
            "documents": n_docs,
            "sentences": len(corpus_data.sentence_offsets) - 1,
            "tokens": int(corpus_data.sentence_offsets[-1]),
        }
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _STATE.clear()
    del corpus_data
    shutil.rmtree(store_dir)
    manifest = _manifest(config, tokenizer, vocab_path, token_dtype, stats, splits, shards)
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return manifest


def _tokenize_corpus(files: Sequence[Path], store_dir: Path, token_dtype: np.dtype, whole_word: bool, workers: int, progress: bool) -> _Corpus:
    """Stage 1: read and tokenize every file into the token store; return it memory-mapped."""
    store = _TokenStore(store_dir, token_dtype)
    total_bytes = sum(p.stat().st_size for p in files)
    with _pool(workers) as pool, progress_bar(progress, total=total_bytes, unit="B", unit_scale=True, desc="tokenizing") as bar:
        for part in _ordered(pool, _tokenize, _tokenize_tasks(files, bar), 2 * workers):
            store.add(part)
    store.finish()
    return _Corpus.open(store_dir, token_dtype, with_words=whole_word)


# Held-out documents are made into instances once: more passes would only repeat them with other masks.
PASSES = {"train": None, "eval": 1}  # None: dupe_factor


def _write_instances(work: _Work, directory: Path, workers: int, progress: bool) -> dict[str, list[dict[str, Any]]]:
    """Stage 2: instances of every split, pass and chunk of documents, written in that order as shards."""
    cfg = work.config
    passes = {s: PASSES[s] or cfg.dupe_factor for s in SPLITS}
    tasks = [
        (split, dupe, c, lo, min(lo + cfg.chunk_documents, len(work.splits[split])))
        for split in SPLITS
        for dupe in range(passes[split])
        for c, lo in enumerate(range(0, len(work.splits[split]), cfg.chunk_documents))
    ]
    writers = {s: _ShardWriter(directory, s, cfg.shard_size) for s in SPLITS}
    total = sum(len(work.splits[s]) * passes[s] for s in SPLITS)
    with _pool(workers) as pool, progress_bar(progress, total=total, unit="doc", desc="instances") as bar:
        for task, instances in zip(tasks, _ordered(pool, _make_instances, tasks, 2 * workers), strict=True):
            writers[task[0]].add(instances)
            bar.update(task[4] - task[3])
    return {s: writers[s].close() for s in SPLITS}


def _masking_rule(tokenizer: Tokenizer, config: PretrainDataConfig) -> MaskingRule:
    return MaskingRule(
        mask_id=tokenizer.mask_id,
        vocab_size=tokenizer.vocab_size,
        special_ids=tuple(sorted(tokenizer.special_ids)),
        prob=config.masked_lm_prob,
        max_predictions=config.max_predictions_per_seq,
        whole_word=config.whole_word_mask,
    )


def _manifest(config, tokenizer, vocab_path, token_dtype, stats, splits, shards) -> dict[str, Any]:
    settings = asdict(config)
    per_split = {}
    for split in SPLITS:
        masked = [s["masked_tokens"] for s in shards[split]]
        per_split[split] = {
            "documents": len(splits[split]),
            "passes": PASSES[split] or config.dupe_factor,
            "instances": sum(s["instances"] for s in shards[split]),
            "tokens": sum(s["tokens"] for s in shards[split]),
            "masked_tokens": None if config.dynamic_mask else sum(masked),
            "shards": shards[split],
        }
    vocab_file = _vocab_file(vocab_path.resolve())
    return {
        "format": FORMAT,
        "version": VERSION,
        **settings,
        "vocab_path": str(vocab_path.resolve()),
        "vocab_file": str(vocab_file),
        "vocab_sha256": _sha256(vocab_file),
        "vocab_size": tokenizer.vocab_size,
        "lowercase": tokenizer.lowercase,
        "special_ids": {
            "pad": tokenizer.pad_id, "unk": tokenizer.unk_id, "cls": tokenizer.cls_id,
            "sep": tokenizer.sep_id, "mask": tokenizer.mask_id,
        },
        "token_dtype": token_dtype.name,
        "corpus": stats,
        "splits": per_split,
    }


# -- reading shards -------------------------------------------------------------------------------------
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
    path = _vocab_file(Path(manifest["vocab_path"]))
    shards = Path(directory) / "manifest.json"
    try:
        digest = _sha256(path)
    except OSError as e:
        reason = "no such file" if isinstance(e, FileNotFoundError) else f"cannot be read ({type(e).__name__})"
        raise BertforgeError(f"{path}: {reason}; it is the vocabulary the shards in {directory} were made with "
                             f"({shards}): restore it, or re-run prepare-pretrain with another") from None
    if digest != manifest["vocab_sha256"]:
        raise BertforgeError(f"{path}: changed since prepare-pretrain made the shards in {directory} (its sha256 is not "
                             f"the one in {shards}): re-run prepare-pretrain with this vocabulary, or restore the one "
                             "the shards were made with")


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
        self._starts = _offsets(np.array([s["instances"] for s in self.manifest["splits"][split]["shards"]], dtype=np.int64))
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

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"instance {index} out of range for {n} instances")
        index %= n
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        j = index - int(self._starts[shard])
        a = self._arrays(shard)
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
        B, T = len(items), max((len(x["input_ids"]) for x in items), default=0)
        input_ids = np.full((B, T), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((B, T), dtype=np.int64)
        token_type_ids = np.zeros((B, T), dtype=np.int64)
        labels = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
        for r, x in enumerate(items):
            ids = x["input_ids"]
            if self.dynamic:
                ids, positions, originals = mask_tokens(ids, self.rule, rng, x.get("word_continues"))
            else:
                positions, originals = x["masked_positions"], x["masked_labels"]
            n = len(ids)
            input_ids[r, :n] = ids
            attention_mask[r, :n] = 1
            token_type_ids[r, :n] = x["token_type_ids"]
            labels[r, positions] = originals
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "token_type_ids": torch.from_numpy(token_type_ids),
            "labels": torch.from_numpy(labels),
        }
        if self.nsp:
            batch["next_sentence_label"] = torch.tensor([int(x["next_sentence_label"]) for x in items], dtype=torch.int64)
        return batch
