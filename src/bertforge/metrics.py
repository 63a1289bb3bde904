"""Task metrics, computed from predictions and gold labels: numpy, and the rouge-score package for ROUGE."""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

from .text import CJK, CJK_CLASS, has_cjk

# validation metrics where lower is better (errors, losses): the training loop keeps the lowest and
# counts a rise as no improvement; every other metric it maximises
LOWER_IS_BETTER = frozenset({"mse", "mae", "mlm_loss", "perplexity", "generator_loss", "discriminator_loss"})


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def classification(y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable]) -> dict:
    """Accuracy, macro and weighted F1, per-class precision/recall/F1/support, and the confusion
    matrix (rows: gold, columns: predicted, in ``labels`` order)."""
    index = {lab: i for i, lab in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[index[t], index[p]] += 1
    per_class = {}
    for i, lab in enumerate(labels):
        tp = cm[i, i]
        p, r, f = _prf(tp, cm[:, i].sum() - tp, cm[i, :].sum() - tp)
        per_class[str(lab)] = {"precision": p, "recall": r, "f1": f, "support": int(cm[i, :].sum())}
    # macro averages run over the labels that occur in the gold or the predictions (scikit-learn's rule)
    occurs = (cm.sum(axis=1) + cm.sum(axis=0)) > 0
    present = [c for c, o in zip(per_class.values(), occurs, strict=True) if o]
    total = max(int(cm.sum()), 1)
    return {
        "accuracy": float(np.trace(cm) / total),
        "macro_f1": float(np.mean([c["f1"] for c in present])) if present else 0.0,
        "macro_precision": float(np.mean([c["precision"] for c in present])) if present else 0.0,
        "macro_recall": float(np.mean([c["recall"] for c in present])) if present else 0.0,
        "weighted_f1": float(sum(c["f1"] * c["support"] for c in present) / total),
        "per_class": per_class,
        "labels": [str(lab) for lab in labels],
        "confusion_matrix": cm.tolist(),
    }


def multilabel(true_sets: Sequence[set], pred_sets: Sequence[set], labels: Sequence[Hashable]) -> dict:
    """Micro and macro F1 over labels, and subset accuracy (every label right)."""
    tp, fp, fn = Counter(), Counter(), Counter()
    for t, p in zip(true_sets, pred_sets, strict=True):
        for lab in p & t:
            tp[lab] += 1
        for lab in p - t:
            fp[lab] += 1
        for lab in t - p:
            fn[lab] += 1
    micro = _prf(sum(tp.values()), sum(fp.values()), sum(fn.values()))
    per = {
        str(lab): dict(zip(("precision", "recall", "f1"), _prf(tp[lab], fp[lab], fn[lab]), strict=True))
        for lab in labels
    }
    return {
        "subset_accuracy": float(np.mean([t == p for t, p in zip(true_sets, pred_sets, strict=True)])),
        "micro_f1": micro[2],
        "macro_f1": float(np.mean([v["f1"] for v in per.values()])),
        "per_class": per,
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (as Spearman's coefficient needs)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom else 0.0


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    return pearson(_ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64)))


def regression(y_true: Sequence[float], y_pred: Sequence[float]) -> dict:
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    return {
        "pearson": pearson(t, p),
        "spearman": spearman(t, p),
        "mse": float(((t - p) ** 2).mean()),
        "mae": float(np.abs(t - p).mean()),
    }


# -- entities from BIO / IOBES tags, with seqeval's default (lenient, conlleval-like) rules ----------
def _split_tag(tag: str) -> tuple[str, str]:
    if tag in ("O", "") or len(tag) < 1:
        return "O", ""
    prefix, _, kind = tag.partition("-")
    if not kind:  # a bare tag such as "PER" counts as inside an entity of that type
        return ("I", tag) if prefix not in "BIESO" or len(prefix) > 1 else (prefix, "_")
    return prefix, kind


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) spans, inclusive. An I- after O or after another type opens an entity, as
    seqeval and conlleval do; a B- always opens one."""
    spans = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, raw in enumerate([*tags, "O"]):
        tag, kind = _split_tag(raw)
        ends = (
            prev_tag in ("E", "S")
            or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag != "O" and prev_type != kind)
        )
        if ends:
            spans.append((prev_type, begin, i - 1))
        starts = (
            tag in ("B", "S")
            or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag != "O" and prev_type != kind)
        )
        if starts:
            begin = i
        prev_tag, prev_type = tag, kind
    return spans


def entity_f1(true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]) -> dict:
    """Entity-level micro precision/recall/F1 (exact span and type) and per-type scores."""
    gold: set = set()
    pred: set = set()
    for s, (t, p) in enumerate(zip(true_seqs, pred_seqs, strict=True)):
        gold |= {(s, *e) for e in entities(t)}
        pred |= {(s, *e) for e in entities(p)}
    p, r, f = _prf(len(gold & pred), len(pred - gold), len(gold - pred))
    types = sorted({e[1] for e in gold | pred})
    per_type = {}
    for k in types:
        g = {e for e in gold if e[1] == k}
        q = {e for e in pred if e[1] == k}
        tp_p, tp_r, tp_f = _prf(len(g & q), len(q - g), len(g - q))
        per_type[k] = {"precision": tp_p, "recall": tp_r, "f1": tp_f, "support": len(g)}
    tokens = sum(len(t) for t in true_seqs)
    correct = sum(a == b for t, q in zip(true_seqs, pred_seqs, strict=True) for a, b in zip(t, q, strict=True))
    return {"precision": p, "recall": r, "f1": f, "token_accuracy": correct / max(tokens, 1), "per_type": per_type}


# -- question answering: the official SQuAD v1.1 and v2.0 evaluation scripts --------------------------
def squad_normalize(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (the official rule).

    Text with CJK characters (Chinese answers have no spaces to split on) also loses full-width and
    other Unicode punctuation, and each CJK character becomes a token of its own, so that F1 gives
    partial credit character by character as Chinese QA evaluations (CMRC 2018) do. Text without
    CJK characters is normalised exactly as by the official script.
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    if CJK.search(text):
        text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
        text = CJK.sub(r" \g<0> ", text)
    return " ".join(text.split())


_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def squad_exact(gold: str, pred: str) -> float:
    return float(squad_normalize(gold) == squad_normalize(pred))


def squad_f1(gold: str, pred: str, version_2: bool = False) -> float:
    """Token-overlap F1 of the normalised answers. v2.0 scores an empty answer against an empty gold
    as 1 (v1.1 as 0: it never has empty golds)."""
    g, p = squad_normalize(gold).split(), squad_normalize(pred).split()
    if version_2 and (not g or not p):
        return float(g == p)
    same = sum((Counter(g) & Counter(p)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_v1(golds: Sequence[Sequence[str]], preds: Sequence[str]) -> dict:
    """SQuAD v1.1: exact match and F1 in percent, each the max over an example's gold answers."""
    if not golds:
        return {"exact_match": 0.0, "f1": 0.0}
    em = [max(squad_exact(g, p) for g in gs) for gs, p in zip(golds, preds, strict=True)]
    f1 = [max(squad_f1(g, p) for g in gs) for gs, p in zip(golds, preds, strict=True)]
    return {"exact_match": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}


def _v2_golds(golds: Sequence[str]) -> list[str]:
    """An example's gold answers for v2.0 scoring: the non-empty ones, or [""] when it is unanswerable."""
    return [g for g in golds if squad_normalize(g)] or [""]


def squad_v2(golds: Sequence[Sequence[str]], preds: Sequence[str]) -> dict:
    """SQuAD v2.0: exact and F1 in percent; an unanswerable question has the gold answer "" (pass an
    empty list), and the scores are also split into answerable (HasAns) and unanswerable (NoAns)."""
    exact, f1, has = [], [], []
    for gs, p in zip(golds, preds, strict=True):
        has.append(bool(gs))
        gs = _v2_golds(gs)
        exact.append(max(squad_exact(g, p) for g in gs))
        f1.append(max(squad_f1(g, p, version_2=True) for g in gs))
    out: dict = {"exact": 0.0, "f1": 0.0, "total": len(golds)}
    if golds:
        out.update(exact=100 * float(np.mean(exact)), f1=100 * float(np.mean(f1)))
    for name, keep in (("HasAns", True), ("NoAns", False)):
        idx = [i for i, h in enumerate(has) if h == keep]
        if idx:
            out[f"{name}_exact"] = 100 * float(np.mean([exact[i] for i in idx]))
            out[f"{name}_f1"] = 100 * float(np.mean([f1[i] for i in idx]))
            out[f"{name}_total"] = len(idx)
    return out


def squad_v2_best_threshold(
    golds: Sequence[Sequence[str]], span_answers: Sequence[str], null_odds: Sequence[float]
) -> dict:
    """The null threshold that would have scored best (the official v2.0 script's best_exact/best_f1).

    Each question has its best non-empty answer and ``null_odds`` = null score - that answer's score;
    with threshold t it is answered "" when null_odds > t. Sweeping t over the observed odds, each
    question switches from "" to its answer in turn: the running score is exact (or F1) summed.
    Returns best_exact, best_exact_thresh, best_f1, best_f1_thresh (scores in percent).
    """
    out: dict = {}
    if not golds:
        return out
    order = np.argsort(np.asarray(null_odds, dtype=np.float64), kind="stable")
    for name, fn in (("exact", squad_exact), ("f1", lambda g, p: squad_f1(g, p, version_2=True))):
        null_scores, span_scores = [], []
        for gs, a in zip(golds, span_answers, strict=True):
            gs = _v2_golds(gs)
            null_scores.append(max(fn(g, "") for g in gs))
            span_scores.append(max(fn(g, a) for g in gs))
        current = best = float(sum(null_scores))  # threshold below every odds: all answered ""
        thresh = float(null_odds[order[0]]) - 1.0
        for i in order.tolist():
            current += span_scores[i] - null_scores[i]
            if current > best:
                best, thresh = current, float(null_odds[i])
        out[f"best_{name}"] = 100 * best / len(golds)
        out[f"best_{name}_thresh"] = thresh
    return out


# -- summarisation ------------------------------------------------------------------------------------
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class CharTokenizer:
    """ROUGE tokens for Chinese (and mixed) text: every CJK character is a token, other text is split
    into lowercase letter/digit runs as rouge-score does. rouge-score's own tokenizer deletes every
    character outside [a-z0-9], so it would score Chinese text as empty."""

    _TOKEN = re.compile(rf"[{CJK_CLASS}]|[a-z0-9]+")

    def tokenize(self, text: str) -> list[str]:
        return self._TOKEN.findall(text.lower())


def rouge_tokenizer(texts: Sequence[str]):
    """The tokenizer ROUGE should use for these texts: characters when any has CJK text, else
    rouge-score's default (lowercase alphanumeric words, Porter-stemmed)."""
    from rouge_score import tokenizers

    if any(has_cjk(t) for t in texts):
        return CharTokenizer()
    return tokenizers.DefaultTokenizer(use_stemmer=True)


def rouge(references: Sequence[str], predictions: Sequence[str]) -> dict:
    """Mean ROUGE-1/2/L F1 (and precision/recall) in percent, with the rouge-score package."""
    from rouge_score import rouge_scorer

    tokenizer = rouge_tokenizer([*references, *predictions])
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=tokenizer)
    sums = {f"{t}_{m}": 0.0 for t in ROUGE_TYPES for m in ("f1", "precision", "recall")}
    for ref, pred in zip(references, predictions, strict=True):
        for t, s in scorer.score(ref, pred).items():
            sums[f"{t}_f1"] += s.fmeasure
            sums[f"{t}_precision"] += s.precision
            sums[f"{t}_recall"] += s.recall
    n = max(len(references), 1)
    return {k: 100 * v / n for k, v in sums.items()}


def selection_prf(gold: Sequence[Sequence[int]], selected: Sequence[Sequence[int]]) -> dict:
    """Micro precision/recall/F1 of selected sentence indices against gold 0/1 labels per sentence."""
    tp = fp = fn = 0
    for labels, chosen in zip(gold, selected, strict=True):
        chosen = set(chosen)
        positive = {i for i, y in enumerate(labels) if y}
        tp += len(chosen & positive)
        fp += len(chosen - positive)
        fn += len(positive - chosen)
    p, r, f = _prf(tp, fp, fn)
    return {"precision": p, "recall": r, "f1": f}


# -- ranking: sentence-transformers' InformationRetrievalEvaluator's definitions ------------------------------
RANKING_AT = {
    "accuracy": (1, 10),
    "recall": (1, 10, 100),
    "precision": (1, 10),
    "mrr": (10,),
    "ndcg": (10,),
    "map": (100,),
}


def ranking(ranked: Sequence[Sequence[Hashable]], relevant: Sequence[set]) -> dict:
    """MRR@10, NDCG@10 (binary relevance), MAP@100, recall, precision and accuracy (a hit in the top k) of
    each query's ranked ids against its relevant ones, averaged over the queries."""
    sums: dict[str, float] = {f"{m}_at_{k}": 0.0 for m, ks in RANKING_AT.items() for k in ks}
    for hits, gold in zip(ranked, relevant, strict=True):
        found = [h in gold for h in hits]
        for k in RANKING_AT["accuracy"]:
            sums[f"accuracy_at_{k}"] += float(any(found[:k]))
        for k in RANKING_AT["recall"]:
            sums[f"recall_at_{k}"] += sum(found[:k]) / len(gold)
        for k in RANKING_AT["precision"]:
            sums[f"precision_at_{k}"] += sum(found[:k]) / k
        for k in RANKING_AT["mrr"]:
            sums[f"mrr_at_{k}"] += next((1 / (r + 1) for r, f in enumerate(found[:k]) if f), 0.0)
        for k in RANKING_AT["ndcg"]:
            dcg = sum(1 / np.log2(r + 2) for r, f in enumerate(found[:k]) if f)
            sums[f"ndcg_at_{k}"] += float(dcg) / sum(1 / np.log2(r + 2) for r in range(min(k, len(gold))))
        for k in RANKING_AT["map"]:
            hits_so_far, total = 0, 0.0
            for r, f in enumerate(found[:k]):
                if f:
                    hits_so_far += 1
                    total += hits_so_far / (r + 1)
            sums[f"map_at_{k}"] += total / min(k, len(gold))
    n = max(1, len(ranked))
    return {name: v / n for name, v in sums.items()}
