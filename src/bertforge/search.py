"""Semantic search over an on-disk index: documents embedded once (long ones in overlapping windows,
one vector a window), queries answered by the nearest vectors, each document once, by its best window.

An index directory holds the vectors (``vectors.npy``, float32 or int8 with one scale per row, for the
exact backend; ``faiss.index`` for the faiss one: see vectors.py), ``chunks.npy`` (for each vector its
document and the [start, end) characters it covers), ``ids.json`` (the documents' ids) and
``index.json`` (how it was built: the model and the sha256 of its weights and of the corpus file).
Searching with another model, or reading texts from a corpus that has changed since, is refused in one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import weight_files
from .data import tables
from .errors import BertforgeError
from .infer import Embedder
from .modeldir import ModelDir
from .outputs import atomic_text, check_out_dir, sha256
from .vectors import open_vectors, write_vectors

FORMAT = "bertforge-index/2"
LONG_TEXT = ("window", "cut")  # a document over the length limit: read in windows, or cut there
__all__ = ["FORMAT", "Hit", "Index", "build_index", "search"]


def model_checksum(md: ModelDir) -> str:
    """The sha256 of the model directory's weight files: what an index was built with."""
    return sha256(*weight_files(md.path))


def read_corpus(path: Path, id_column: str = "id", text_column: str = "text") -> tuple[list[str], list[str]]:
    """(ids, texts) of a JSONL/CSV/TSV corpus; ids as strings, each once; missing ids are line numbers."""
    records = tables.read_records(path)
    texts = tables.texts(records, text_column, path)
    has_ids = id_column in records[0].fields
    ids = [str(r.fields[id_column]) if has_ids else str(r.line) for r in records]
    seen: dict[str, int] = {}
    for r, i in zip(records, ids, strict=True):
        if i in seen:
            raise BertforgeError(f"{path}: line {r.line}: id {i!r} again (first on line {seen[i]})")
        seen[i] = r.line
    return ids, texts


def build_index(
    model: str | Path,
    corpus: str | Path,
    out: str | Path,
    *,
    dtype: str = "float32",
    backend: str = "exact",
    faiss_spec: str | None = None,
    long_text: str = "window",
    max_length: int | None = None,
    stride: int | None = None,
    id_column: str = "id",
    text_column: str = "text",
    precision: str = "fp32",
    progress: bool = False,
) -> Path:
    """Embed every document of ``corpus`` with ``model`` (its pooling, normalised) into an index at
    ``out``: a document over ``max_length`` tokens (default: the model's) is read in windows overlapping
    by ``stride`` tokens (default a quarter of them), or with ``long_text="cut"`` only up to there."""
    if long_text not in LONG_TEXT:
        raise BertforgeError(f"unknown --long-text {long_text!r} (choose from {', '.join(LONG_TEXT)})")
    corpus, out = Path(corpus), check_out_dir(out)
    ids, texts = read_corpus(corpus, id_column, text_column)
    md = ModelDir.open(model)
    embedder = Embedder.from_pretrained(md, precision=precision)
    length = max_length or embedder.max_length
    if stride is None:
        stride = length // 4
    if long_text == "cut":
        stride = None
    got = embedder.embed(texts, normalize=True, max_length=length, stride=stride, progress=progress)
    spans = got.spans
    whole = np.bincount(got.owner, minlength=len(texts)) == 1  # read in one piece: its span is all of it
    whole[got.truncated] = False
    rows = whole[got.owner]
    spans[rows, 0], spans[rows, 1] = 0, np.array([len(t) for t in texts], dtype=np.int64)[got.owner[rows]]
    out.mkdir(parents=True, exist_ok=True)
    stored = write_vectors(out, got.vectors, backend, dtype, faiss_spec)
    np.save(out / "chunks.npy", np.concatenate([got.owner[:, None], spans], axis=1))  # (rows, 3): doc, start, end
    atomic_text(out / "ids.json", json.dumps(ids, ensure_ascii=False) + "\n")
    meta = {
        "format": FORMAT,
        "model": str(md.root),
        "model_sha256": model_checksum(md),
        "corpus": str(corpus),
        "corpus_sha256": sha256(corpus),
        **stored,
        "documents": len(ids),
        "chunks": len(got.vectors),
        "dim": int(got.vectors.shape[1]),
        "max_length": length,
        "stride": stride,
    }
    atomic_text(out / "index.json", json.dumps(meta, indent=2) + "\n")  # last: an index is whole once it has this
    return out


@dataclass
class Hit:
    """A document found: its id, the score of its best window, that window's characters (``start``,
    ``end``; all of the document when it was read whole) and, with the corpus, their text."""

    id: str
    score: float
    start: int = 0
    end: int = 0
    text: str | None = None


class Index:
    """An index opened for searching."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        meta_path = self.directory / "index.json"
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BertforgeError(
                f"{self.directory}: not an index (no index.json; build one with `bertforge index`)"
            ) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BertforgeError(f"{meta_path}: not a readable index ({e})") from None
        if self.meta.get("format") != FORMAT:
            raise BertforgeError(f"{meta_path}: not a {FORMAT} index (rebuild it with `bertforge index`)")
        self.vectors = open_vectors(self.directory, self.meta)
        self.chunks = np.load(self.directory / "chunks.npy")
        self.ids = json.loads((self.directory / "ids.json").read_text(encoding="utf-8"))
        if len(self.chunks) != len(self.vectors) or len(self.ids) != self.meta["documents"]:
            raise BertforgeError(
                f"{self.directory}: {len(self.ids)} ids and {len(self.chunks)} chunks for {len(self.vectors)} vectors"
            )

    def check_model(self, md: ModelDir) -> None:
        if model_checksum(md) != self.meta["model_sha256"]:
            raise BertforgeError(
                f"{self.directory} was built with another model ({self.meta['model']}), not {md.root}: "
                "search with that model, or rebuild the index"
            )

    def texts(self, corpus: str | Path) -> dict[str, str]:
        """The documents' texts from the corpus the index was built from, refused if it has changed since."""
        corpus = Path(corpus)
        if sha256(corpus) != self.meta["corpus_sha256"]:
            raise BertforgeError(f"{corpus} has changed since {self.directory} was built: rebuild the index")
        ids, texts = read_corpus(corpus)
        return dict(zip(ids, texts, strict=True))

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The top ``k`` documents of each query vector, best first, each by its best window."""
        if k < 1:
            raise BertforgeError(f"k must be at least 1, not {k}")
        k = min(k, len(self.ids))
        want = k if len(self.chunks) == len(self.ids) else min(4 * k, len(self.chunks))
        while True:  # the first k distinct documents of the best rows are the top k: widen until there are
            scores, rows = self.vectors.search(queries, want)
            hits = [self._documents(s, r, k) for s, r in zip(scores, rows, strict=True)]
            if want >= len(self.chunks) or all(len(h) == k for h in hits):
                return hits
            want = min(4 * want, len(self.chunks))

    def _documents(self, scores: np.ndarray, rows: np.ndarray, k: int) -> list[Hit]:
        hits: dict[int, Hit] = {}
        for score, row in zip(scores, rows, strict=True):
            if row < 0:
                break
            doc, start, end = (int(x) for x in self.chunks[row])
            if doc not in hits:
                hits[doc] = Hit(self.ids[doc], float(score), start, end)
                if len(hits) == k:
                    break
        return list(hits.values())


def search(
    index: str | Path,
    model: str | Path,
    queries: list[str],
    *,
    k: int = 10,
    corpus: str | Path | None = None,
    precision: str = "fp32",
    rerank: Callable[[list[str], list[list[Hit]], int], list[list[Hit]]] | None = None,
    candidates: int = 100,
) -> list[list[Hit]]:
    """The top ``k`` documents of ``index`` for each query, embedded with ``model`` (the index's own);
    with ``corpus`` each hit carries the text of its window. ``rerank(queries, hits, k)`` (a cross-encoder:
    ``rerank.rerank_hits`` with its model) re-orders the top ``candidates`` (their texts from ``corpus``,
    default the one indexed) and keeps the best ``k``."""
    idx = Index(index)
    keep = k
    if rerank is not None:
        corpus, k = corpus or idx.meta["corpus"], max(k, candidates)
    md = ModelDir.open(model)
    idx.check_model(md)
    texts = idx.texts(corpus) if corpus is not None else None
    vectors = Embedder.from_pretrained(md, precision=precision)(queries, normalize=True)
    hits = idx.search(vectors, k)
    if texts is not None:
        for row in hits:
            for h in row:
                h.text = texts[h.id][h.start : h.end]
    if rerank is not None:
        hits = rerank(queries, hits, keep)
    return hits
