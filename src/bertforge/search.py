"""Semantic search over an on-disk index: documents embedded once, queries answered by exact
(batched) inner products of normalised vectors.

An index directory holds ``vectors.npy`` (float32, or int8 with one scale per vector), ``ids.json``
(the documents' ids, in row order) and ``index.json`` (the model it was built with and the sha256 of
that model's weights and of the corpus file). The vectors are memory-mapped, so an index larger
than memory still answers. Searching with another model, or reading texts from a corpus that has
changed since, is refused in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import weight_files
from .data import tables
from .errors import BertforgeError
from .infer import Embedder
from .modeldir import ModelDir
from .outputs import atomic_text, check_out_dir, sha256

FORMAT = "bertforge-index/1"
DTYPES = ("float32", "int8")


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


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and their float32 scales (symmetric, one scale a row: max |x| -> 127)."""
    scales = np.abs(vectors).max(axis=1, keepdims=True).clip(min=1e-12) / 127.0
    return np.round(vectors / scales).clip(-127, 127).astype(np.int8), scales.astype(np.float32)


def build_index(
    model: str | Path,
    corpus: str | Path,
    out: str | Path,
    *,
    dtype: str = "float32",
    id_column: str = "id",
    text_column: str = "text",
    precision: str = "fp32",
    progress: bool = False,
) -> Path:
    """Embed every document of ``corpus`` with ``model`` (its pooling, normalised) into an index at ``out``."""
    if dtype not in DTYPES:
        raise BertforgeError(f"unknown index dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    corpus, out = Path(corpus), check_out_dir(out)
    ids, texts = read_corpus(corpus, id_column, text_column)
    md = ModelDir.open(model)
    vectors = Embedder.from_pretrained(md, precision=precision)(texts, normalize=True, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    if dtype == "int8":
        vectors, scales = quantize(vectors)
        np.save(out / "scales.npy", scales)
    np.save(out / "vectors.npy", vectors)
    atomic_text(out / "ids.json", json.dumps(ids, ensure_ascii=False) + "\n")
    meta = {
        "format": FORMAT,
        "model": str(md.root),
        "model_sha256": model_checksum(md),
        "corpus": str(corpus),
        "corpus_sha256": sha256(corpus),
        "dtype": dtype,
        "documents": len(ids),
        "dim": int(vectors.shape[1]),
    }
    atomic_text(out / "index.json", json.dumps(meta, indent=2) + "\n")  # last: an index is whole once it has this
    return out


@dataclass
class Hit:
    id: str
    score: float
    text: str | None = None


class Index:
    """An index opened for searching (vectors memory-mapped)."""

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
            raise BertforgeError(f"{meta_path}: not a {FORMAT} index")
        self.vectors = np.load(self.directory / "vectors.npy", mmap_mode="r")
        self.scales = np.load(self.directory / "scales.npy") if self.meta["dtype"] == "int8" else None
        self.ids = json.loads((self.directory / "ids.json").read_text(encoding="utf-8"))
        if len(self.ids) != len(self.vectors):
            raise BertforgeError(f"{self.directory}: {len(self.ids)} ids for {len(self.vectors)} vectors")

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

    def scores(self, queries: np.ndarray, block: int = 65536) -> np.ndarray:
        """(Q, N) inner products of normalised query vectors with every document, a block of rows at a time."""
        out = np.empty((len(queries), len(self.vectors)), dtype=np.float32)
        for lo in range(0, len(self.vectors), block):
            part = np.asarray(self.vectors[lo : lo + block], dtype=np.float32)  # (b, D)
            if self.scales is not None:
                part = part * self.scales[lo : lo + block]
            out[:, lo : lo + block] = queries @ part.T
        return out

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The top ``k`` documents of each query vector, best first."""
        if k < 1:
            raise BertforgeError(f"k must be at least 1, not {k}")
        scores = self.scores(queries)
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        results = []
        for row, cand in zip(scores, top, strict=True):
            order = cand[np.argsort(-row[cand], kind="stable")]
            results.append([Hit(self.ids[j], float(row[j])) for j in order])
        return results


def search(
    index: str | Path,
    model: str | Path,
    queries: list[str],
    *,
    k: int = 10,
    corpus: str | Path | None = None,
    precision: str = "fp32",
    rerank: str | Path | None = None,
    candidates: int = 100,
) -> list[list[Hit]]:
    """The top ``k`` documents of ``index`` for each query, embedded with ``model`` (the index's own);
    with ``corpus`` each hit carries its text. ``rerank``: a cross-encoder re-orders the top ``candidates``
    (their texts from ``corpus``, default the one indexed) and the best ``k`` of its order are kept."""
    idx = Index(index)
    if rerank is not None:  # (loaded first: a bad model is refused before the search)
        from .rerank import Reranker, rerank_hits

        reranker, corpus, k, keep = (
            Reranker(rerank, precision=precision),
            corpus or idx.meta["corpus"],
            max(k, candidates),
            k,
        )
    md = ModelDir.open(model)
    idx.check_model(md)
    texts = idx.texts(corpus) if corpus is not None else None
    vectors = Embedder.from_pretrained(md, precision=precision)(queries, normalize=True)
    hits = idx.search(vectors, k)
    if texts is not None:
        for row in hits:
            for h in row:
                h.text = texts[h.id]
    if rerank is not None:
        hits = rerank_hits(reranker, queries, hits, keep)
    return hits
