"""Pretraining data: text corpora -> masked-LM (+ next-sentence) instances in memory-mapped shards,
as google-research/bert's create_pretraining_data.py makes them (``prepare`` says how), in two
streaming stages over worker processes: the token store (``data.corpus``), then instances by chunk.
The shards' layout and their reader are in ``data.shards``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..assets import resolve_path
from ..errors import BertforgeError
from ..outputs import progress_bar, sha256
from ..tokenizer import Tokenizer
from .corpus import Corpus, jieba_segment, tokenize_corpus
from .masking import MaskingRule, mask_tokens
from .sentences import expand_corpus
from .shards import FORMAT, SPLITS, VERSION, offsets_of, vocab_file
from .workers import fork_pool, ordered

SEGMENTERS = ("jieba", "none")


@dataclass(frozen=True)
class PretrainDataConfig:
    """How instances are built. Defaults follow google-research/bert for 128-token pretraining."""

    max_seq_len: int = 128  # tokens per instance, [CLS] and [SEP]s included
    nsp: bool = True  # sentence pairs with a next-sentence label; False packs single segments (MLM only)
    sop: bool = False  # ALBERT's sentence order instead: B is A's continuation, the two swapped half the time
    pack: bool = False  # no NSP: blocks fill up across a document boundary, </s> between (RoBERTa's FULL-SENTENCES)
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
            (self.sop and not self.nsp, "sentence-order pairs need pairs: drop --no-nsp"),
            (self.pack and self.nsp, "--pack fills single segments across documents: add --no-nsp"),
            (not 0 < self.masked_lm_prob < 1, f"masked_lm_prob {self.masked_lm_prob} must be in (0, 1)"),
            (self.max_predictions_per_seq < 1, f"max_predictions_per_seq {self.max_predictions_per_seq} must be >= 1"),
            (not 0 <= self.short_seq_prob <= 1, f"short_seq_prob {self.short_seq_prob} must be in [0, 1]"),
            (self.dupe_factor < 1, f"dupe_factor {self.dupe_factor} must be >= 1"),
            (not 0 <= self.eval_fraction < 1, f"eval_fraction {self.eval_fraction} must be in [0, 1)"),
            (self.shard_size < 1, f"shard_size {self.shard_size} must be >= 1"),
            (
                self.zh_segmenter not in SEGMENTERS,
                f"unknown zh_segmenter {self.zh_segmenter!r} ({' | '.join(SEGMENTERS)})",
            ),
            (self.chunk_documents < 1, f"chunk_documents {self.chunk_documents} must be >= 1"),
        ]
        for bad, message in problems:
            if bad:
                raise BertforgeError(message)


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
    corpus: Corpus
    rule: MaskingRule
    cls_id: int
    sep_id: int
    token_dtype: np.dtype
    splits: dict[str, np.ndarray]  # split -> its documents (corpus indices)
    every: np.ndarray  # all documents


_STATE: dict[str, Any] = {}  # per process: "work" (_Work), inherited by forked workers


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


def _document_spans(
    work: _Work, split: str, position: int, rng: np.random.Generator
) -> Iterator[tuple[list[int], list[int] | None, int]]:
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
            if m == 1 or (not cfg.sop and rng.random() < 0.5):
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
                if cfg.sop and rng.random() < 0.5:
                    a, b, label = b, a, 1  # sentence order: swapped
            _truncate_pair(a, b, max_tokens, rng)
            yield a, b, label
            chunk_start, length = i + 1, 0
        i += 1


def _spans(
    work: _Work, split: str, lo: int, hi: int, rng: np.random.Generator
) -> Iterator[tuple[int, list[int], list[int] | None, int]]:
    """(document, A span, B span or None, label) for the instances of documents [lo, hi) of a split."""
    if work.config.pack:
        yield from _packed_spans(work, split, lo, hi)
        return
    for position in range(lo, hi):
        doc = int(work.splits[split][position])
        for a, b, label in _document_spans(work, split, position, rng):
            yield doc, a, b, label


def _packed_spans(work: _Work, split: str, lo: int, hi: int) -> Iterator[tuple[int, list[int], list[int] | None, int]]:
    """Full-length blocks over documents [lo, hi) in order: a block that reaches the end of its
    document goes on with the next one's start as its B segment (one boundary a block)."""
    corpus, room = work.corpus, work.config.max_seq_len - 3
    ends, bounds = corpus.sentence_offsets, corpus.document_offsets
    docs = [int(d) for d in work.splits[split][lo:hi] if ends[bounds[d + 1]] > ends[bounds[d]]]  # (not empty)
    spans = [[int(ends[bounds[d]]), int(ends[bounds[d + 1]])] for d in docs]
    k = 0
    while k < len(docs):
        start, end = spans[k]
        if start >= end:  # used up (as the B of the block before)
            k += 1
        elif end - start >= room or k + 1 == len(docs):
            spans[k][0] = min(end, start + room)
            yield docs[k], [start, spans[k][0]], None, 0
        else:
            nxt = spans[k + 1]
            b = [nxt[0], min(nxt[1], nxt[0] + room - (end - start))]
            spans[k][0], nxt[0] = end, b[1]
            yield docs[k], [start, end], b, 0
            k += 1


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
    for doc, a, b, label in _spans(work, split, lo, hi, rng):
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
            "offsets": offsets_of(x.lengths),
            "b_start": x.b_start,
            "document": x.document,
            "nsp_label": x.nsp_label,
            "mask_positions": x.mask_positions,
            "mask_labels": x.mask_labels,
            "mask_offsets": None if x.mask_counts is None else offsets_of(x.mask_counts),
            "word_continues": x.word_continues,
        }
        for field_name, values in arrays.items():
            if values is not None:
                np.save(self.directory / f"{name}.{field_name}.npy", np.ascontiguousarray(values))
        self.shards.append(
            {
                "name": name,
                "instances": len(x),
                "tokens": int(x.lengths.sum()),
                "masked_tokens": None if x.mask_counts is None else int(x.mask_counts.sum()),
            }
        )


# -- the pipeline ---------------------------------------------------------------------------------------
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

    Documents are lists of sentences; each yields [CLS] A [SEP] B [SEP] pairs whose B is the real
    continuation or, half the time, a random stretch of another document (the unused sentences are put
    back); a pair is cut to fit from the front or back of its longer side; ``short_seq_prob`` of
    documents aim for a shorter length; ``dupe_factor`` passes draw fresh pairs and masks. Without NSP
    each document is cut into [CLS] tokens [SEP] blocks. Masks are drawn here (static) or at load time
    (dynamic). Stage 1 tokenizes into a token store on disk, stage 2 builds instances from chunks of
    documents, each with its own generator seeded by (seed, split, pass, chunk): the output depends on
    the seed, never on the number of workers, and corpora larger than memory pass through.

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
    segment = jieba_segment() if whole_word and config.zh_segmenter == "jieba" else None

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    store_dir = staging / "tokenized"
    store_dir.mkdir(parents=True)
    try:
        corpus_data = tokenize_corpus(files, store_dir, tokenizer, segment, token_dtype, whole_word, workers, progress)
        n_docs = corpus_data.num_documents
        if n_docs == 0:
            raise BertforgeError(f"{', '.join(map(str, files))}: no text (empty corpus)")
        splits = _split_documents(n_docs, config)
        every = np.arange(n_docs, dtype=np.int64)
        _STATE["work"] = _Work(
            config,
            corpus_data,
            _masking_rule(tokenizer, config),
            tokenizer.cls_id,
            tokenizer.sep_id,
            token_dtype,
            splits,
            every,
        )
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
    with fork_pool(workers) as pool, progress_bar(progress, total=total, unit="doc", desc="instances") as bar:
        for task, instances in zip(tasks, ordered(pool, _make_instances, tasks, 2 * workers), strict=True):
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
    read_file = vocab_file(vocab_path.resolve())
    return {
        "format": FORMAT,
        "version": VERSION,
        **settings,
        "vocab_path": str(vocab_path.resolve()),
        "vocab_file": str(read_file),
        "vocab_sha256": sha256(read_file),
        "vocab_size": tokenizer.vocab_size,
        "lowercase": tokenizer.lowercase,
        "special_ids": {
            "pad": tokenizer.pad_id,
            "unk": tokenizer.unk_id,
            "cls": tokenizer.cls_id,
            "sep": tokenizer.sep_id,
            "mask": tokenizer.mask_id,
        },
        "token_dtype": token_dtype.name,
        "corpus": stats,
        "splits": per_split,
    }
