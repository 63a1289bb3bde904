"""Where an index's vectors live and how the nearest ones are found, behind one interface:
``exact`` (numpy inner products over memory-mapped float32 or int8 rows: every score computed) and
``faiss`` (an approximate faiss index, HNSW by default, for corpora of millions of vectors).

Vectors are unit length, so inner product is cosine similarity on both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import BertforgeError, missing_extra

BACKENDS = ("exact", "faiss")
DTYPES = ("float32", "int8")
FAISS_DEFAULT = {"float32": "HNSW32", "int8": "HNSW32,SQ8"}  # faiss index_factory strings
FAISS_BREADTH = 128  # HNSW's efSearch / IVF's nprobe: candidates looked at, recall against time
FAISS_FILE = "faiss.index"


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and their float32 scales (symmetric, one scale a row: max |x| -> 127)."""
    scales = np.abs(vectors).max(axis=1, keepdims=True).clip(min=1e-12) / 127.0
    return np.round(vectors / scales).clip(-127, 127).astype(np.int8), scales.astype(np.float32)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise missing_extra("the faiss backend", "faiss") from None
    return faiss


def write_vectors(
    out: Path, vectors: np.ndarray, backend: str = "exact", dtype: str = "float32", faiss_spec: str | None = None
) -> dict[str, Any]:
    """Store (N, D) unit vectors in ``out`` for ``backend``; returns what index.json records of them."""
    if backend not in BACKENDS:
        raise BertforgeError(f"unknown search backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if dtype not in DTYPES:
        raise BertforgeError(f"unknown index dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if backend == "exact":
        if faiss_spec is not None:
            raise BertforgeError("--faiss-spec is for the faiss backend (--backend faiss)")
        if dtype == "int8":
            vectors, scales = quantize(vectors)
            np.save(out / "scales.npy", scales)
        np.save(out / "vectors.npy", vectors)
        return {"backend": backend, "dtype": dtype}
    faiss = _faiss()
    spec = faiss_spec or FAISS_DEFAULT[dtype]
    try:
        index = faiss.index_factory(vectors.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise BertforgeError(f"faiss cannot build {spec!r}: {str(e).strip().splitlines()[-1]}") from None
    if not index.is_trained:
        try:
            index.train(vectors)
        except RuntimeError as e:
            raise BertforgeError(f"faiss cannot train {spec!r} on {len(vectors):,} vectors: {str(e).strip()}") from None
    index.add(vectors)
    faiss.write_index(index, str(out / FAISS_FILE))
    return {"backend": backend, "dtype": dtype, "faiss_spec": spec}


class ExactVectors:
    """Every score, a block of rows at a time (vectors memory-mapped: an index larger than memory answers)."""

    def __init__(self, directory: Path, dtype: str):
        self.vectors = np.load(directory / "vectors.npy", mmap_mode="r")
        self.scales = np.load(directory / "scales.npy") if dtype == "int8" else None

    def __len__(self) -> int:
        return len(self.vectors)

    def scores(self, queries: np.ndarray, block: int = 65536) -> np.ndarray:
        """(Q, N) inner products of the query vectors with every row."""
        out = np.empty((len(queries), len(self.vectors)), dtype=np.float32)
        for lo in range(0, len(self.vectors), block):
            part = np.asarray(self.vectors[lo : lo + block], dtype=np.float32)  # (b, D)
            if self.scales is not None:
                part = part * self.scales[lo : lo + block]
            out[:, lo : lo + block] = queries @ part.T
        return out

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (Q, k), best first (ties in row order)."""
        scores = self.scores(queries)
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable"), 1)
        return np.take_along_axis(scores, order, 1), order


class FaissVectors:
    """A faiss index read from disk; ``breadth`` candidates are looked at per query (at least k)."""

    def __init__(self, directory: Path, breadth: int = FAISS_BREADTH):
        faiss = _faiss()
        self.index = faiss.read_index(str(directory / FAISS_FILE))
        self.breadth = breadth
        self.params = faiss.ParameterSpace()

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        for name, value in (("efSearch", max(self.breadth, k)), ("nprobe", self.breadth)):
            try:
                self.params.set_index_parameter(self.index, name, value)
            except RuntimeError:  # not a parameter of this kind of index
                pass
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, rows  # rows of -1: fewer than k found


def open_vectors(directory: Path, meta: dict) -> ExactVectors | FaissVectors:
    """The vectors of an index directory, as its index.json says they were stored."""
    if meta.get("backend", "exact") == "faiss":
        return FaissVectors(directory)
    return ExactVectors(directory, meta["dtype"])
