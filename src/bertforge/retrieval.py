"""Retrieval sets and their metrics: queries, a corpus and which documents answer each query.

A retrieval set is a directory of two JSONL files:

  corpus.jsonl   {"id": "d1", "text": "..."}                       one document a line
  queries.jsonl  {"id": "q1", "text": "...", "relevant": ["d1"]}   one query a line, its relevant documents

Every query is scored against every document by the cosine of their embeddings (exact), and the top
100 ranked as sentence-transformers' InformationRetrievalEvaluator ranks them (ties by ascending id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import metrics
from .data import tables
from .errors import BertforgeError

CORPUS, QUERIES = "corpus.jsonl", "queries.jsonl"
DEPTH = 100  # documents ranked per query: the deepest cut the metrics read (recall@100, MAP@100)


@dataclass
class RetrievalSet:
    path: Path
    corpus_ids: list[str]
    corpus: list[str]
    query_ids: list[str]
    queries: list[str]
    relevant: list[set[str]]  # each query's relevant document ids


def is_retrieval_set(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / QUERIES).is_file()


def _ids(records: list[tables.Record], path: Path) -> list[str]:
    ids = [str(v) for v in tables.column(records, "id", path)]
    seen: dict[str, int] = {}
    for r, i in zip(records, ids, strict=True):
        if i in seen:
            raise BertforgeError(f"{path}: line {r.line}: id {i!r} again (first on line {seen[i]})")
        seen[i] = r.line
    return ids


def read_retrieval_set(directory: str | Path) -> RetrievalSet:
    """The set in ``directory`` (corpus.jsonl, queries.jsonl); queries without a relevant document are left
    out (as sentence-transformers leaves them out), a relevant id not in the corpus is an error."""
    directory = Path(directory)
    for name in (CORPUS, QUERIES):
        if not (directory / name).is_file():
            raise BertforgeError(f"{directory}: no {name} (a retrieval set holds {CORPUS} and {QUERIES})")
    docs = tables.read_records(directory / CORPUS)
    corpus_ids, corpus = _ids(docs, directory / CORPUS), tables.texts(docs, "text", directory / CORPUS)
    known = set(corpus_ids)
    path = directory / QUERIES
    records = tables.read_records(path)
    ids, texts = _ids(records, path), tables.texts(records, "text", path)
    out = RetrievalSet(directory, corpus_ids, corpus, [], [], [])
    for r, qid, text, rel in zip(records, ids, texts, tables.column(records, "relevant", path), strict=True):
        if not isinstance(rel, list):
            raise BertforgeError(f"{path}: line {r.line}: 'relevant' is {rel!r}, not a list of document ids")
        gold = {str(d) for d in rel}
        if gold - known:
            raise BertforgeError(f"{path}: line {r.line}: relevant id {sorted(gold - known)[0]!r} is not in {CORPUS}")
        if gold:
            out.query_ids.append(qid)
            out.queries.append(text)
            out.relevant.append(gold)
    if not out.queries:
        raise BertforgeError(f"{path}: no query has a relevant document")
    return out


def write_retrieval_set(
    directory: str | Path, corpus: list[tuple[str, str]], queries: list[tuple[str, str, list[str]]]
) -> Path:
    """``corpus`` ((id, text)) and ``queries`` ((id, text, relevant ids)) as a retrieval set."""
    from .outputs import atomic_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": i, "text": t}, ensure_ascii=False) for i, t in corpus]
    atomic_text(directory / CORPUS, "".join(line + "\n" for line in lines))
    lines = [json.dumps({"id": i, "text": t, "relevant": rel}, ensure_ascii=False) for i, t, rel in queries]
    atomic_text(directory / QUERIES, "".join(line + "\n" for line in lines))
    return directory


def top_k(queries: np.ndarray, docs: np.ndarray, ids: list[str], k: int, chunk: int = 1024) -> list[list[int]]:
    """Each query's ``k`` best documents by inner product (rows normalised: cosine), ties by ascending id."""
    k = min(k, len(docs))
    rank_of_id = np.argsort(np.argsort(np.asarray(ids, dtype=object), kind="stable"), kind="stable")
    out: list[list[int]] = []
    for lo in range(0, len(queries), chunk):
        scores = queries[lo : lo + chunk] @ docs.T  # (q, N)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        for row, cand in zip(scores, top, strict=True):
            out.append(cand[np.lexsort((rank_of_id[cand], -row[cand]))].tolist())
    return out


def evaluate_rankings(rs: RetrievalSet, ranked: list[list[int]]) -> dict[str, float]:
    """The ranking metrics of ``ranked`` (each query's documents, as corpus indices, best first)."""
    return metrics.ranking([[rs.corpus_ids[j] for j in row] for row in ranked], rs.relevant)


def evaluate_embeddings(rs: RetrievalSet, query_vectors: np.ndarray, doc_vectors: np.ndarray) -> dict[str, float]:
    """The metrics of ranking the corpus by cosine (the vectors are normalised here)."""
    q = query_vectors / np.linalg.norm(query_vectors, axis=1, keepdims=True).clip(min=1e-12)
    d = doc_vectors / np.linalg.norm(doc_vectors, axis=1, keepdims=True).clip(min=1e-12)
    return evaluate_rankings(rs, top_k(q.astype(np.float32), d.astype(np.float32), rs.corpus_ids, DEPTH))
