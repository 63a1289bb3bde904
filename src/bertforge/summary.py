"""Extractive summaries as pure functions: documents (JSONL with ``sentences`` or ``text``, and
``labels`` and/or ``summary``), words (a CJK character is one), selection under ``top_k`` and a
``max_words`` budget with trigram blocking, the greedy ROUGE oracle, the training-free methods
(the sentences closest to the centroid of sentence embeddings, one per k-means cluster, Lead-k) and
ROUGE / sentence-F1 scoring. The fine-tuned summariser (tasks.extsum) selects with them too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .data import tables
from .errors import BertforgeError
from .text import CJK_CLASS, has_cjk, split_sentences

METHODS = ("centroid", "cluster", "lead")


@dataclass
class Document:
    sentences: list[str]
    labels: list[int] | None  # 0/1 per sentence
    summary: str | None
    line: int


# -- sentences and words ----------------------------------------------------------------------------------
_WORD = re.compile(rf"[{CJK_CLASS}]|[^\W{CJK_CLASS}]+")  # a CJK character is a word even beside letters


def words(sentence: str) -> list[str]:
    """Lowercase words; every CJK character is one."""
    return _WORD.findall(sentence.lower())


def _trigrams(sentence: str) -> set[tuple[str, ...]]:
    w = words(sentence)
    return {tuple(w[i : i + 3]) for i in range(len(w) - 2)}


def join(sentences: list[str]) -> str:
    """A summary's text: Chinese sentences run on, others are separated by a space."""
    return ("" if any(has_cjk(s) for s in sentences) else " ").join(sentences)


# -- selection (pure functions) ---------------------------------------------------------------------------
def select(
    sentences: list[str],
    scores: Any,
    top_k: int | None = 3,
    max_words: int | None = None,
    trigram_blocking: bool = True,
) -> list[int]:
    """Indices of the summary, in document order: best-scored first, up to ``top_k`` sentences and
    ``max_words`` words (the best sentence always goes in), skipping trigram repeats."""
    if top_k is None and max_words is None:
        raise BertforgeError("give a number of sentences (top_k) or a length budget (max_words)")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    chosen: list[int] = []
    seen: set[tuple[str, ...]] = set()
    used = 0
    for i in order.tolist():
        if top_k is not None and len(chosen) >= top_k:
            break
        n = len(words(sentences[i]))
        if max_words is not None and chosen and used + n > max_words:
            continue
        grams = _trigrams(sentences[i])
        if trigram_blocking and grams & seen:
            continue
        chosen.append(i)
        seen |= grams
        used += n
    return sorted(chosen)


def _ngrams(tokens: list[str], n: int) -> dict[tuple[str, ...], int]:
    out: dict[tuple[str, ...], int] = {}
    for i in range(len(tokens) - n + 1):
        g = tuple(tokens[i : i + n])
        out[g] = out.get(g, 0) + 1
    return out


def _f1(candidate: dict, reference: dict) -> float:
    overlap = sum(min(c, reference.get(g, 0)) for g, c in candidate.items())
    if not overlap:
        return 0.0
    p, r = overlap / sum(candidate.values()), overlap / sum(reference.values())
    return 2 * p * r / (p + r)


def greedy_oracle(sentences: list[str], summary: str, k: int = 3) -> list[int]:
    """The greedy ROUGE oracle (Nallapati et al., 2017; BertSum's labels): starting from nothing, add
    the sentence that most raises ROUGE-1 F + ROUGE-2 F of the selection against ``summary``, while
    it rises, up to ``k`` sentences. Tokens as ROUGE's (stemmed words; characters for Chinese)."""
    tokenizer = metrics.rouge_tokenizer([summary, *sentences])
    ref = [_ngrams(tokenizer.tokenize(summary), n) for n in (1, 2)]
    grams = [[_ngrams(t, n) for n in (1, 2)] for t in map(tokenizer.tokenize, sentences)]
    chosen: list[int] = []
    pool: list[dict] = [{}, {}]
    best = 0.0
    for _ in range(min(k, len(sentences))):
        pick, pick_score = None, best
        for i in range(len(sentences)):
            if i in chosen:
                continue
            cand = [
                {g: pool[n].get(g, 0) + grams[i][n].get(g, 0) for g in pool[n].keys() | grams[i][n].keys()}
                for n in (0, 1)
            ]
            score = _f1(cand[0], ref[0]) + _f1(cand[1], ref[1])
            if score > pick_score:
                pick, pick_score = i, score
        if pick is None:
            break
        chosen.append(pick)
        best = pick_score
        for n in (0, 1):
            for g, c in grams[pick][n].items():
                pool[n][g] = pool[n].get(g, 0) + c
    return sorted(chosen)


def lead(sentences: list[str], k: int = 3) -> list[int]:
    return list(range(min(k, len(sentences))))


def centroid_scores(vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sentence vector to the document's mean vector."""
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    c = v.mean(axis=0)
    return v @ (c / max(float(np.linalg.norm(c)), 1e-12))


def kmeans(vectors: np.ndarray, k: int, seed: int = 0, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(centres (k, H), assignment (n,)): Lloyd's algorithm from a k-means++ start, seeded."""
    rng = np.random.default_rng(seed)
    n = len(vectors)
    centres = [vectors[rng.integers(n)]]
    for _ in range(1, k):
        d = np.min([((vectors - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(vectors[rng.choice(n, p=d / d.sum())] if d.sum() > 0 else vectors[rng.integers(n)])
    centres = np.stack(centres)
    assign = np.zeros(n, dtype=np.int64)
    for it in range(iterations):
        new = ((vectors[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        if it and (new == assign).all():
            break
        assign = new
        for j in range(k):
            if (assign == j).any():
                centres[j] = vectors[assign == j].mean(0)
    return centres, assign


def cluster_select(vectors: np.ndarray, k: int, seed: int = 0) -> list[int]:
    """One sentence per k-means cluster, the one closest to its centre, in document order."""
    k = min(k, len(vectors))
    if k == 0:
        return []
    centres, assign = kmeans(vectors.astype(np.float64), k, seed)
    picks = set()
    for j in range(k):
        members = np.flatnonzero(assign == j)
        if len(members):
            d = ((vectors[members] - centres[j]) ** 2).sum(1)
            picks.add(int(members[d.argmin()]))
    return sorted(picks)


def summary_limits(top_k: int | None, max_words: int | None) -> tuple[int | None, int | None]:
    """A summary's limits, checked: ``top_k`` sentences (0 or None: no limit on their number) and/or a
    ``max_words`` budget; one of them must bound it."""
    top_k = None if top_k == 0 else top_k  # the command line's "no limit on the number of sentences"
    for name, value in (("top_k", top_k), ("max_words", max_words)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise BertforgeError(f"extsum: {name} must be a positive integer, not {value!r}")
    if top_k is None and max_words is None:
        raise BertforgeError("extsum: give --top-k or --max-words")
    return top_k, max_words


def summarize_untrained(
    embedder,
    documents: list[Document],
    method: str = "centroid",
    top_k: int | None = 3,
    max_words: int | None = None,
    trigram_blocking: bool = True,
    progress: bool = False,
) -> list[dict]:
    """Training-free summaries: ``centroid`` or ``cluster`` over ``embedder``'s sentence vectors
    (a ``bertforge.Embedder``), or ``lead``. ``max_words`` is a length budget for every method: lead
    and cluster take their sentences in document order while they fit (the first always goes in)."""
    if method not in METHODS:
        raise BertforgeError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    top_k, max_words = summary_limits(top_k, max_words)
    k = top_k if top_k is not None else 3
    flat = [s for d in documents for s in d.sentences]
    vectors = embedder(flat, progress=progress) if method != "lead" and flat else np.zeros((len(flat), 1))
    out, at = [], 0
    for d in documents:
        v = vectors[at : at + len(d.sentences)]
        at += len(d.sentences)
        if method in ("lead", "cluster"):
            picks = (
                lead(d.sentences, k if top_k is not None else len(d.sentences))
                if method == "lead"
                else cluster_select(v, k)
            )
            if max_words is not None:  # in document order, as many as fit
                fit = select(
                    [d.sentences[i] for i in picks], -np.arange(len(picks)), None, max_words, trigram_blocking=False
                )
                picks = [picks[i] for i in fit]
            chosen, scores = picks, None
        else:
            scores = centroid_scores(v) if len(v) else np.zeros(0)
            chosen = select(d.sentences, scores, top_k, max_words, trigram_blocking)
        result = {"summary": join([d.sentences[i] for i in chosen]), "selected": chosen}
        if scores is not None:
            result["scores"] = [round(float(s), 6) for s in scores]
        out.append(result)
    return out


def score_summaries(predictions: list[dict], documents: list[Document]) -> dict:
    """ROUGE-1/2/L F1 against ``summary`` (documents that have one) and sentence precision/recall/F1
    against ``labels`` (documents that have them)."""
    result: dict = {}
    with_summary = [i for i, d in enumerate(documents) if d.summary is not None]
    if with_summary:
        r = metrics.rouge(
            [documents[i].summary for i in with_summary], [predictions[i]["summary"] for i in with_summary]
        )
        result.update({k: r[f"{k}_f1"] for k in metrics.ROUGE_TYPES})
    with_labels = [i for i, d in enumerate(documents) if d.labels is not None]
    if with_labels:
        result.update(
            metrics.selection_prf(
                [documents[i].labels for i in with_labels], [predictions[i]["selected"] for i in with_labels]
            )
        )
    return result


# -- reading ----------------------------------------------------------------------------------------------
def document_from(
    fields: dict, line: int, where: str, text_column: str = "text", allow_empty: bool = False
) -> Document:
    """A document from one record; problems are one-line errors starting with ``where``. An empty one
    (no sentences) is one too, except where ``allow_empty`` (training data: such documents are left out)."""
    if isinstance(fields.get("sentences"), list):
        sentences = fields["sentences"]
        for j, s in enumerate(sentences):
            if not isinstance(s, str):
                raise BertforgeError(f"{where}: sentence {j} is {type(s).__name__}, not text")
            if not s.strip():
                raise BertforgeError(f"{where}: sentence {j} is empty")
    elif isinstance(fields.get(text_column), str):
        sentences = split_sentences(fields[text_column])
    elif "sentences" in fields or text_column in fields:
        raise BertforgeError(f"{where}: 'sentences' must be a list of strings, {text_column!r} a string")
    else:
        raise BertforgeError(f"{where}: needs 'sentences' (a list) or {text_column!r} (a string)")
    if not sentences and not allow_empty:
        raise BertforgeError(f"{where}: the document is empty")
    labels = fields.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or any(y not in (0, 1) for y in labels):  # True/False pass as 1/0
            raise BertforgeError(f"{where}: 'labels' must be a list of 0/1 per sentence")
        if len(labels) != len(sentences):
            split = "" if "sentences" in fields else " (split from the text)"
            raise BertforgeError(f"{where}: 'labels' has {len(labels)} values for {len(sentences)} sentences{split}")
        labels = [int(y) for y in labels]
    summary = fields.get("summary")
    if summary is not None and not isinstance(summary, str):
        raise BertforgeError(f"{where}: 'summary' is {type(summary).__name__}, not text")
    return Document(list(sentences), labels, summary, line)


def document_input(x: Any, text_column: str = "text") -> Document:
    """A document given in Python: a text, or {"sentences": [...]} / {"text": ...}."""
    if isinstance(x, str):
        x = {text_column: x}
    if not isinstance(x, dict):
        raise BertforgeError("a summarizer takes a text, or {'sentences': [...]} or {'text': ...}")
    return document_from(x, 0, "input", text_column)


def read_documents(path: Path, text_column: str = "text", allow_empty: bool = False) -> list[Document]:
    return [
        document_from(r.fields, r.line, f"{path}: line {r.line}", text_column, allow_empty)
        for r in tables.read_records(path)
    ]
