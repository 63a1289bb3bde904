"""Reranking from Python: a cross-encoder loaded once orders documents for queries, or re-orders the hits
a bi-encoder's index retrieved (retrieve, then rerank)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .modeldir import ModelDir
from .tasks import for_model


class Reranker:
    """``Reranker("runs/reranker")("a query", ["doc", ...], top_n=3)``: results, best first, each with the
    document's ``index`` and its ``relevance_score``."""

    def __init__(self, model: str | Path | ModelDir, device: str | None = None, precision: str = "fp32", **kw: Any):
        md = ModelDir.open(model)
        self.task = for_model(md, "rerank")
        self.model = self.task.load(md, device, precision, kw.get("runtime", "torch"), kw.get("compile", False))

    def __call__(self, query: str, documents: list[str], top_n: int | None = None) -> list[dict]:
        return self.rank([query], [documents], top_n)[0]

    def rank(self, queries: list[str], documents: list[list[str]], top_n: int | None = None) -> list[list[dict]]:
        """Each query's documents ordered by relevance (all queries scored in one pass)."""
        examples = [self.task.example({"query": q, "documents": d, "top_n": top_n}, f"query {i}") for i, (q, d) in
                    enumerate(zip(queries, documents, strict=True))]  # fmt: skip
        return [p["results"] for p in self.task.predict(self.model, examples)]

    def scores(self, pairs: list[tuple[str, str]]) -> list[float]:
        """The relevance score of each (query, document) pair, as a CrossEncoder's ``predict``."""
        examples = [self.task.example(tuple(p), f"pair {i}") for i, p in enumerate(pairs)]
        return [p["score"] for p in self.task.predict(self.model, examples)]


def rerank_hits(reranker: Reranker | str | Path, queries: list[str], hits: list[list[Any]], k: int) -> list[list[Any]]:
    """Each query's ``hits`` (with texts: ``search.Hit``) re-ordered by the cross-encoder, the best ``k`` kept,
    each hit's score now its relevance score."""
    reranker = reranker if isinstance(reranker, Reranker) else Reranker(reranker)
    ranked = reranker.rank(queries, [[h.text for h in row] for row in hits], top_n=k)
    return [[replace(row[r["index"]], score=r["relevance_score"]) for r in results]
            for row, results in zip(hits, ranked, strict=True)]  # fmt: skip


__all__ = ["Reranker", "rerank_hits"]
