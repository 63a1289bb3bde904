"""Hard negatives for (anchor, positive) pairs, mined with the current model: sentence-transformers'
``mine_hard_negatives`` (its "triplet" output), step for step.

Every distinct anchor is scored against a corpus (the positives, plus any documents given) by the cosine
of its embeddings; its own positives, the anchor's own text, and candidates too close to the positive
(``absolute_margin``, ``relative_margin``) or outside [``min_score``, ``max_score``] are ruled out; of the
``range_max`` best left, the first ``range_min`` are skipped (likely unlabelled positives) and
``num_negatives`` taken, the best ones (``top``) or drawn at random (``random``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from .errors import BertforgeError
from .infer import Embedder

NEG_INF = float("-inf")


@dataclass
class MineSettings:
    num_negatives: int = 3
    range_min: int = 0
    range_max: int | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    min_score: float | None = None
    sampling: str = "top"  # top | random
    seed: int = 0

    def resolved_range_max(self, max_positives: int) -> int:
        """``range_max``, or as sentence-transformers derives it: room for the positives and, where filters
        may rule candidates out, ten times the negatives wanted."""
        if self.num_negatives < 1:
            raise BertforgeError(f"num_negatives must be at least 1, not {self.num_negatives}")
        if self.sampling not in ("top", "random"):
            raise BertforgeError(f"unknown sampling {self.sampling!r} (choose from top, random)")
        top = self.range_max
        if top is None:
            filtered = any(v is not None for v in (self.absolute_margin, self.relative_margin, self.max_score))
            top = self.range_min + self.num_negatives * (10 if filtered else 1) + max_positives
        if self.range_min < 0 or self.range_min >= top:
            raise BertforgeError(f"range_min must be from 0 and below range_max ({top}), not {self.range_min}")
        if self.num_negatives > top - self.range_min:
            raise BertforgeError(
                f"cannot mine {self.num_negatives} negatives from ranks {self.range_min} to {top}: "
                "lower --num-negatives or --range-min, or raise --range-max"
            )
        return top


def mine_hard_negatives(
    embedder: Embedder,
    anchors: list[str],
    positives: list[str],
    corpus: list[str] | None = None,
    settings: MineSettings | None = None,
    progress: bool = False,
) -> tuple[list[tuple[str, str, str]], dict]:
    """(anchor, positive, negative) triplets, grouped by anchor in first-seen order, and statistics."""
    s = settings or MineSettings()
    if not anchors:
        raise BertforgeError("no (anchor, positive) pairs to mine negatives for")
    counts: dict[str, int] = {}
    for a in anchors:
        counts[a] = counts.get(a, 0) + 1
    range_max = s.resolved_range_max(max(counts.values()))
    docs = list(dict.fromkeys((corpus or []) + positives))
    doc_at = {t: i for i, t in enumerate(docs)}
    queries = list(counts)
    query_at = {q: i for i, q in enumerate(queries)}
    doc_vecs = torch.from_numpy(embedder(docs, normalize=True, progress=progress))
    query_vecs = torch.from_numpy(embedder(queries, normalize=True, progress=progress))

    wanted = range_max + max(counts.values()) + 1  # room for what is ruled out below
    scores, indices = _top(query_vecs, doc_vecs, wanted)
    own: list[list[int]] = [[] for _ in queries]  # each query's positives, as corpus indices, each once
    for a, p in zip(anchors, positives, strict=True):
        if doc_at[p] not in own[query_at[a]]:
            own[query_at[a]].append(doc_at[p])
    pos_scores = [(query_vecs[q] @ doc_vecs[own[q]].T).reshape(-1) for q in range(len(queries))]

    scores[indices == -1] = NEG_INF
    self_index = torch.tensor([doc_at.get(q, -1) for q in queries])
    scores[indices == self_index[:, None]] = NEG_INF
    for q, rows in enumerate(own):
        scores[q, torch.isin(indices[q], torch.tensor(rows))] = NEG_INF
    hardest = torch.stack([p.min() for p in pos_scores])[:, None]  # the margin is kept from the weakest positive
    if s.absolute_margin is not None:
        scores[scores + s.absolute_margin > hardest] = NEG_INF
    if s.relative_margin is not None:
        scores[scores > hardest - hardest.abs() * s.relative_margin] = NEG_INF
    if s.max_score is not None:
        scores[scores > s.max_score] = NEG_INF
    if s.min_score is not None:
        scores[(scores < s.min_score) & (scores != NEG_INF)] = NEG_INF

    neg_scores, local = torch.topk(scores, k=range_max, dim=1)
    indices = indices.gather(1, local)[:, s.range_min :]
    neg_scores = neg_scores[:, s.range_min :]
    if s.sampling == "top":
        indices, neg_scores = indices[:, : s.num_negatives], neg_scores[:, : s.num_negatives]
    else:
        indices, neg_scores = _sample(indices, neg_scores, s.num_negatives, random.Random(s.seed))

    triplets, margins = [], []
    for q, query in enumerate(queries):
        for pos, pos_score in zip(own[q], pos_scores[q].tolist(), strict=True):
            for neg, score in zip(indices[q].tolist(), neg_scores[q].tolist(), strict=True):
                if score != NEG_INF:
                    triplets.append((query, docs[pos], docs[neg]))
                    margins.append(pos_score - score)
    stats = {
        "queries": len(queries),
        "corpus": len(docs),
        "triplets": len(triplets),
        "possible": sum(len(p) for p in own) * s.num_negatives,
        "mean_margin": float(np.mean(margins)) if margins else float("nan"),
    }
    return triplets, stats


def _top(queries: torch.Tensor, docs: torch.Tensor, k: int, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` best documents by cosine (scores, indices), padded with -inf / -1 past the corpus."""
    parts = [
        torch.topk(queries[i : i + chunk] @ docs.T, k=min(k, len(docs)), dim=1) for i in range(0, len(queries), chunk)
    ]
    scores, indices = torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])
    if k > len(docs):
        pad = k - len(docs)
        scores = torch.cat([scores, scores.new_full((len(scores), pad), NEG_INF)], dim=1)
        indices = torch.cat([indices, indices.new_full((len(indices), pad), -1)], dim=1)
    return scores, indices


def _sample(indices: torch.Tensor, scores: torch.Tensor, n: int, rng: random.Random):
    """``n`` candidates a row drawn among those not ruled out, best first."""
    options = (indices.size(1) - scores.isinf().sum(1)).clamp(min=n)
    rows = torch.arange(len(indices))[:, None]
    picked = torch.tensor([rng.sample(range(int(o)), k=n) for o in options])
    indices, scores = indices[rows, picked], scores[rows, picked]
    scores, order = scores.sort(dim=1, descending=True)
    return indices[rows, order], scores
