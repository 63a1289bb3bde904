"""Reranking with a cross-encoder: a (query, document) pair read together, scored by one logit.

A transformers sequence classifier with one output (cross-encoder/ms-marco-*) is one as it is; a
model fine-tuned here (``bertforge finetune rerank``) learns from (query, document, label) rows with
sentence-transformers' BinaryCrossEntropyLoss (a label from 0, not relevant, to 1), or from
(anchor, positive, negative) triplets (``bertforge mine-negatives``), each read as a positive and a
negative pair. The relevance score is the sigmoid of the logit (sentence-transformers' CrossEncoder
default for one output) unless the checkpoint or ``activation`` says identity.

Served at /v1/rerank as TEI and Cohere answer: ``query``, ``documents``, ``top_n``, ``return_documents``
in; ``results`` (index, relevance_score, document), best first, out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from .. import metrics
from ..data import tables
from ..errors import BertforgeError
from ..infer import run_batches
from .base import Feature, FinetuneTask, settings_of
from .schemas import Request
from .sequence import TextExample

# the (query, document) columns read when none are named, in order of preference
PAIR_COLUMNS = (("query", "document"), ("query", "passage"), ("anchor", "positive"), ("sentence1", "sentence2"))
NEGATIVE_COLUMN = "negative"  # triplets: (anchor, positive, negative)
# sentence-transformers' names for the activation a CrossEncoder saves in config.json
ST_ACTIVATIONS = {"torch.nn.modules.activation.Sigmoid": "sigmoid", "torch.nn.modules.linear.Identity": "identity"}
ACTIVATIONS = ("sigmoid", "identity")


@dataclass
class RerankSettings:
    query_column: str | None = field(
        default=None, metadata={"help": "rerank: the query's column (default: query, else anchor or sentence1)."}
    )
    document_column: str | None = field(
        default=None, metadata={"help": "rerank: the document's column (default: document, passage, positive...)."}
    )
    activation: str | None = field(
        default=None,
        metadata={
            "help": "rerank: sigmoid | identity: the logit to a relevance score (default: the checkpoint's, else "
            "sigmoid).",
            "predict": "rerank: sigmoid | identity: the logit to a relevance score (default: as saved).",
        },
    )

    def __post_init__(self) -> None:
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise BertforgeError(f"unknown activation {self.activation!r} (choose from {', '.join(ACTIVATIONS)})")


def checkpoint_activation(config) -> str:
    """The activation a sentence-transformers CrossEncoder would apply to this checkpoint's logit."""
    st = config.extra.get("sentence_transformers") or {}
    name = st.get("activation_fn") or config.extra.get("sbert_ce_default_activation_function")
    if name is None:
        return "sigmoid"
    if name not in ST_ACTIVATIONS:
        raise BertforgeError(f"the checkpoint's activation {name} is not one of {', '.join(ST_ACTIVATIONS)}")
    return ST_ACTIVATIONS[name]


@dataclass
class RerankQuery:
    """One query and the documents to order for it (the server's and the pipeline's unit)."""

    query: str
    documents: list[str]
    top_n: int | None = None
    return_documents: bool = False


class RerankRequest(Request):
    model_config = Request.model_config | {
        "json_schema_extra": {
            "examples": [{"query": "What is Paris?", "documents": ["Paris is in France.", "Rome is old."], "top_n": 1}]
        }
    }
    query: str = Field(description="The query.")
    documents: list[str] = Field(min_length=1, description="Documents to order for it (at most --max-texts).")
    top_n: int | None = Field(None, ge=1, description="Results to return (default: every document).")
    return_documents: bool = Field(False, description="Give each result's document text too.")


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="The document's position in the request.")
    relevance_score: float = Field(description="The activated logit (sigmoid: 0 to 1), higher is more relevant.")
    document: RerankDocument | None = Field(None, description="With return_documents: the document.")


class RerankResponse(BaseModel):
    results: list[RerankResult] = Field(description="The documents, most relevant first.")


class RerankTask(FinetuneTask):
    name = endpoint = batch_kind = "rerank"
    head = "classify"  # one output
    select_metric = "mrr_at_10"
    default_max_length = 512  # a CrossEncoder's (the tokenizer's model_max_length)
    about = "Documents ordered by a cross-encoder's relevance to a query (TEI / Cohere rerank)."
    Settings = RerankSettings
    Request, Response = RerankRequest, RerankResponse

    def __init__(self, spec, tokenizer, id2label=None):
        super().__init__(spec, tokenizer, {0: "score"})
        self.settings: RerankSettings = settings_of(RerankSettings, spec.extra, "rerank")
        self.activation = self.settings.activation or "sigmoid"

    def load(self, md, device=None, precision="fp32", runtime="torch", compile=False):
        self.activation = self.settings.activation or checkpoint_activation(md.config)
        return super().load(md, device, precision, runtime, compile)

    # -- the faces: (query, document) pairs, or a query with its documents -------------------------------
    def example(self, x: Any, where: str) -> TextExample | RerankQuery:
        if isinstance(x, dict) and set(x) <= {"query", "documents", "top_n", "return_documents"}:
            q, docs = x.get("query"), x.get("documents")
            if not (isinstance(q, str) and q.strip()):
                raise BertforgeError(f"{where}: 'query' must be a non-empty text")
            if not (isinstance(docs, list) and docs and all(isinstance(d, str) and d.strip() for d in docs)):
                raise BertforgeError(f"{where}: 'documents' must be a non-empty list of non-empty texts")
            top_n = x.get("top_n")
            if top_n is not None and not (isinstance(top_n, int) and top_n >= 1):
                raise BertforgeError(f"{where}: top_n must be a whole number from 1, not {top_n!r}")
            return RerankQuery(q, docs, top_n, bool(x.get("return_documents", False)))
        if isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(t, str) and t.strip() for t in x):
            return TextExample(x[0], x[1], None, 0)
        raise BertforgeError(
            f"{where}: a reranker takes (query, document) pairs or {{'query': ..., 'documents': [...]}}, "
            f"not {type(x).__name__}"
        )

    def from_request(self, body: RerankRequest, limits) -> list[RerankQuery]:
        limits.check_chars([("query", body.query)])
        limits.check_texts(body.documents, "documents")
        return [RerankQuery(body.query, list(body.documents), body.top_n, body.return_documents)]

    def respond(self, predictions: list[dict]) -> dict:
        return predictions[0]

    # -- reading ---------------------------------------------------------------------------------------------
    def _columns(self, records: list[tables.Record], path: Path) -> tuple[str, str]:
        s = self.settings
        have = records[0].fields
        if s.query_column and s.document_column:
            return s.query_column, s.document_column
        for q, d in PAIR_COLUMNS:
            if (s.query_column or q) in have and (s.document_column or d) in have:
                return s.query_column or q, s.document_column or d
        raise BertforgeError(
            f"{path}: no (query, document) columns: expected query,document (or anchor,positive[,negative]), or name "
            f"them with --query-column and --document-column (columns: {', '.join(map(str, have))})"
        )

    def read(self, path: Path, labelled: bool = False) -> list[TextExample]:
        """(query, document[, label]) rows; (anchor, positive, negative) triplets without labels become a
        positive and a negative pair each (a pair met twice is read once)."""
        records = tables.read_records(path)
        q_col, d_col = self._columns(records, path)
        queries, docs = tables.texts(records, q_col, path), tables.texts(records, d_col, path)
        label_col = self.spec.label_column
        if NEGATIVE_COLUMN in records[0].fields and label_col not in records[0].fields:
            negatives = tables.texts(records, NEGATIVE_COLUMN, path)
            pairs: dict[tuple[str, str], TextExample] = {}
            for r, q, pos, neg in zip(records, queries, docs, negatives, strict=True):
                pairs.setdefault((q, pos), TextExample(q, pos, 1.0, r.line))
                pairs.setdefault((q, neg), TextExample(q, neg, 0.0, r.line))
            return list(pairs.values())
        raw = tables.column(records, label_col, path, required=labelled)
        labels = [_label(v, r.line, path, label_col) for v, r in zip(raw, records, strict=True)]
        return [TextExample(q, d, y, r.line) for q, d, y, r in zip(queries, docs, labels, records, strict=True)]

    def fit_labels(self, examples: list[TextExample], path: Path) -> None:
        if any(e.label is None for e in examples):
            raise BertforgeError(f"{path}: no column {self.spec.label_column!r} to learn from")
        if len({e.label for e in examples}) < 2:
            raise BertforgeError(f"{path}: every {self.spec.label_column!r} is the same: nothing to learn")

    # -- features and loss -----------------------------------------------------------------------------------
    def encode(self, pairs: list[tuple[str, str]], max_length: int | None = None):
        """Each pair as one sequence, cut to ``max_length`` tokens from the longer text (as a CrossEncoder)."""
        return self.tokenizer.encode_batch(
            [q for q, _ in pairs], [d for _, d in pairs], max_length=max_length or self.spec.max_length
        )

    def features(self, examples: list[TextExample], train: bool) -> list[Feature]:
        encs = self.encode([(e.text, e.pair) for e in examples])
        return [
            Feature(enc.ids, enc.type_ids, float(e.label), i)
            for i, (enc, e) in enumerate(zip(encs, examples, strict=True))
        ]

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """Binary cross-entropy of the logit against the label (sentence-transformers' BinaryCrossEntropyLoss)."""
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, 0].float()
        return F.binary_cross_entropy_with_logits(logits, batch["labels"].float())

    # -- prediction --------------------------------------------------------------------------------------------
    def scores(self, model: nn.Module, pairs: list[tuple[str, str]], progress: bool = False) -> np.ndarray:
        """The activated logit of each pair."""
        encs = self.encode(pairs, min(self.spec.max_length, model.config.max_length))
        out = np.zeros(len(pairs), dtype=np.float64)
        batches = run_batches(
            model, self.tokenizer, encs, lambda o, b: o.logits[:, 0].float(), progress=progress,
            max_tokens=self.max_tokens, desc="reranking",
        )  # fmt: skip
        for idx, logits in batches:
            out[idx] = (torch.sigmoid(logits) if self.activation == "sigmoid" else logits).cpu().numpy()
        return out

    def predict(self, model: nn.Module, examples: list, progress: bool = False) -> list[dict]:
        """Pairs: each one's ``score``. Queries: their documents' ``results``, best first (ties: first given)."""
        if all(isinstance(e, TextExample) for e in examples):
            return [{"score": float(s)} for s in self.scores(model, [(e.text, e.pair) for e in examples], progress)]
        if not all(isinstance(e, RerankQuery) for e in examples):
            raise BertforgeError("give (query, document) pairs or queries with their documents, not both at once")
        flat = self.scores(model, [(q.query, d) for q in examples for d in q.documents], progress)
        out, at = [], 0
        for q in examples:
            scores = flat[at : at + len(q.documents)]
            at += len(q.documents)
            order = np.argsort(-scores, kind="stable")[: q.top_n]
            results = [{"index": int(i), "relevance_score": float(scores[i])} for i in order]
            if q.return_documents:
                for r in results:
                    r["document"] = {"text": q.documents[r["index"]]}
            out.append({"results": results})
        return out

    def score(self, predictions: list[dict], examples: list[TextExample]) -> dict:
        """Each query's documents (its rows) ranked by score: MRR@10, NDCG@10 and accuracy@1 against the
        relevant ones (label at least 0.5), over the queries that have one."""
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(examples):
            groups.setdefault(e.text, []).append(i)
        ranked, relevant = [], []
        for rows in groups.values():
            gold = {i for i in rows if examples[i].label >= 0.5}
            if gold:
                ranked.append(sorted(rows, key=lambda i: -predictions[i]["score"]))
                relevant.append(gold)
        if not ranked:
            raise BertforgeError("no query has a relevant document (a label of at least 0.5) to rank")
        m = metrics.ranking(ranked, relevant)
        return {"mrr_at_10": m["mrr_at_10"], "ndcg_at_10": m["ndcg_at_10"], "accuracy_at_1": m["accuracy_at_1"]}

    def metric_names(self, examples: list) -> tuple[str, ...]:
        return ("mrr_at_10", "ndcg_at_10", "accuracy_at_1")

    def export(self, model: nn.Module, directory: Path) -> None:
        """The model, with the activation saved where a sentence-transformers CrossEncoder reads it."""
        names = {v: k for k, v in ST_ACTIVATIONS.items()}
        model.config.extra["sentence_transformers"] = {"activation_fn": names[self.settings.activation or "sigmoid"]}
        super().export(model, directory)


def _label(value: Any, line: int, path: Path, name: str) -> float | None:
    if value is None:
        return None
    try:
        label = float(value)
    except (TypeError, ValueError):
        label = float("nan")
    if not 0 <= label <= 1 or isinstance(value, bool):
        raise BertforgeError(f"{path}: line {line}: {name!r} is {value!r}, not a relevance from 0 to 1")
    return label
