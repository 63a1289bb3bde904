"""Sequence tasks: a text, or a pair of texts, to one label, several labels, or a number.

  classify  one text -> one label (softmax), or several (``multi_label``: sigmoid and a threshold)
  pair      two texts -> a label (paraphrase, entailment): a cross-encoder, segment ids 0 / 1
  regress   a text or a pair -> a number (similarity scores): Pearson and Spearman

Texts longer than ``max_length`` are not silently cut: with ``long_text="window"`` (the default) they
are read in windows of ``max_length`` tokens overlapping by ``stride``; every window is a training
example with the text's label, and at prediction the windows' logits are averaged (for pairs the
first text is windowed and the second kept whole in every window, so put the long text first).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from tokenizers import Encoding
from torch import nn

from .. import metrics
from ..batch import flatten_windows
from ..data import tables
from ..errors import BertforgeError
from ..infer import run_batches
from .base import Feature, FinetuneTask, request_examples, unknown_labels_error
from .schemas import Request

log = logging.getLogger("bertforge")
PAIR_COLUMN = "text_pair"  # the second text's column unless --text-pair-column names another


@dataclass
class TextExample:
    text: str
    pair: str | None
    label: Any  # str; list[str] (multi-label); float (regress); None when unlabelled
    line: int


class ClassifyRequest(Request):
    model_config = Request.model_config | {"json_schema_extra": {"examples": [{"texts": ["A gripping film."]}]}}
    texts: list[str] | None = Field(None, min_length=1, description="Texts (single-text models).")
    pairs: list[tuple[str, str]] | None = Field(None, min_length=1, description="[text, text pair] (pair models).")


class ClassPrediction(BaseModel):
    label: str | None = Field(None, description="classify, pair: the predicted label.")
    labels: list[str] | None = Field(None, description="multi-label classify: the labels over the threshold.")
    score: float | None = Field(None, description="The label's probability; regress: the predicted number.")
    probabilities: dict[str, float] | None = Field(None, description="Every label's probability.")


class ClassifyResponse(BaseModel):
    predictions: list[ClassPrediction]


class SequenceTask(FinetuneTask):
    name = "classify"
    head = "classify"
    endpoint = "classify"
    about = "Labels and probabilities (classify, pair), or a number (regress)."
    Request, Response = ClassifyRequest, ClassifyResponse

    @property
    def select_metric(self) -> str:
        return "micro_f1" if self.spec.multi_label else "accuracy"

    @property
    def is_pair(self) -> bool:
        return self.spec.text_pair_column is not None

    # -- the faces ----------------------------------------------------------------------------------
    def example(self, x: Any, where: str) -> TextExample:
        """A text, or a (text, text_pair) pair for a pair model: as the model was trained."""
        pair = isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(t, str) for t in x)
        if not (pair if self.is_pair else isinstance(x, str)):
            raise BertforgeError(
                f"this model reads {'(text, text_pair) pairs' if self.is_pair else 'single texts'}; "
                f"got {type(x).__name__}{f' of {len(x)}' if isinstance(x, (tuple, list)) else ''}"
            )
        if pair and not all(t.strip() for t in x):
            raise BertforgeError(f"{where}: an empty text")
        return TextExample(x[0], x[1], None, 0) if pair else TextExample(x, None, None, 0)

    def from_request(self, body: ClassifyRequest, limits) -> list[TextExample]:
        if (body.texts is None) == (body.pairs is None):
            raise BertforgeError(f"give {'pairs' if self.is_pair else 'texts'}")
        if self.is_pair and body.pairs is None:
            raise BertforgeError("this server's model reads text pairs: send 'pairs' ([[text, text_pair], ...])")
        if not self.is_pair and body.texts is None:
            raise BertforgeError("this server's model reads single texts: send 'texts'")
        if body.pairs is not None:
            limits.check_count(len(body.pairs), "pairs")
            limits.check_chars((f"pairs[{i}][{j}]", t) for i, p in enumerate(body.pairs) for j, t in enumerate(p))
            return request_examples(self, [tuple(p) for p in body.pairs], "pairs")
        limits.check_texts(body.texts, "texts")
        return request_examples(self, body.texts, "texts")

    # -- reading ------------------------------------------------------------------------------------
    def read(self, path: Path, labelled: bool = False) -> list[TextExample]:
        records = tables.read_records(path)
        if (
            labelled
            and not self.id2label
            and self.spec.text_pair_column is None
            and any(PAIR_COLUMN in r.fields for r in records)
        ):
            # the training file of a model yet to be fitted holds pairs: learn from both texts, not the first alone
            self.spec.text_pair_column = PAIR_COLUMN
            log.warning("%s: each example is a pair (column %r); the model will read pairs", path, PAIR_COLUMN)
        texts = tables.texts(records, self.spec.text_column, path)
        pairs = tables.texts(records, self.spec.text_pair_column, path) if self.is_pair else [None] * len(texts)
        raw = tables.column(records, self.spec.label_column, path, required=labelled)
        labels = [self._parse_label(v, r.line, path) for v, r in zip(raw, records, strict=True)]
        return [TextExample(t, p, y, r.line) for t, p, y, r in zip(texts, pairs, labels, records, strict=True)]

    def _parse_label(self, value: Any, line: int, path: Path) -> Any:
        if value is None:
            return None
        if self.spec.multi_label:  # a list, a JSON list in a CSV cell, or 'a|b'; empty: none of the labels
            if isinstance(value, str) and value.strip().startswith("["):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise BertforgeError(
                        f"{path}: line {line}: {self.spec.label_column!r} is not a JSON list: {value[:60]!r}"
                    ) from None
            items = value if isinstance(value, list) else str(value).split(self.spec.label_separator)
            return sorted({str(v).strip() for v in items if str(v).strip()})
        if isinstance(value, str) and not value.strip():
            raise BertforgeError(f"{path}: line {line}: empty {self.spec.label_column!r}")
        return str(value).strip()

    def fit_labels(self, examples: list[TextExample], path: Path) -> None:
        if any(e.label is None for e in examples):
            raise BertforgeError(f"{path}: no column {self.spec.label_column!r} to learn from")
        if self.spec.multi_label:
            found = sorted({lab for e in examples for lab in e.label})
        else:
            found = sorted({e.label for e in examples})
        if len(found) < 2:
            raise BertforgeError(
                f"{path}: the training data has a single class ({found[0] if found else 'none'}): nothing to learn"
            )
        self.id2label = dict(enumerate(found))

    def check_labels(self, examples: list[TextExample], path: Path, held_out: float | None = None) -> None:
        known = set(self.label2id)
        unknown: dict[str, int] = {}
        for e in examples:
            if e.label is None:
                continue
            for lab in e.label if self.spec.multi_label else [e.label]:
                if lab not in known:
                    unknown.setdefault(lab, e.line)
        if unknown:
            raise unknown_labels_error(path, "label", unknown, known, held_out)

    def problem_type(self) -> str:
        return "multi_label_classification" if self.spec.multi_label else "single_label_classification"

    # -- features -----------------------------------------------------------------------------------
    def encode(self, examples: list[TextExample]) -> tuple[list[Encoding], list[int]]:
        """Every window of every example, and the example each came from."""
        window = self.spec.long_text == "window"
        encs = self.tokenizer.encode_batch(
            [e.text for e in examples],
            [e.pair for e in examples] if self.is_pair else None,
            max_length=self.spec.max_length,
            truncation="only_first" if (window and self.is_pair) else "longest_first",
            stride=self.spec.window_stride if window else 0,
        )
        return flatten_windows(encs, window)

    def target(self, example: TextExample) -> Any:
        if self.spec.multi_label:
            hot = [0.0] * len(self.id2label)
            for lab in example.label:
                hot[self.label2id[lab]] = 1.0
            return hot
        return self.label2id[example.label]

    def features(self, examples: list[TextExample], train: bool) -> list[Feature]:
        encs, owner = self.encode(examples)
        return [Feature(e.ids, e.type_ids, self.target(examples[i]), i) for e, i in zip(encs, owner, strict=True)]

    # -- prediction ---------------------------------------------------------------------------------
    def logits(self, model: nn.Module, examples: list[TextExample], progress: bool = False) -> np.ndarray:
        """(examples, outputs): each example's window logits, averaged."""
        encs, owner = self.encode(examples)
        out = np.zeros((len(examples), model.config.num_labels if self.head == "classify" else 1), dtype=np.float64)
        n = np.zeros(len(examples))
        for idx, logits in run_batches(
            model,
            self.tokenizer,
            encs,
            lambda o, b: o.logits.float(),
            progress=progress,
            max_tokens=self.max_tokens,
            desc="predicting",
        ):
            rows = np.asarray([owner[i] for i in idx])
            np.add.at(out, rows, logits.cpu().numpy())
            np.add.at(n, rows, 1)
        return out / n[:, None]

    def predict(self, model: nn.Module, examples: list[TextExample], progress: bool = False) -> list[dict]:
        logits = torch.from_numpy(self.logits(model, examples, progress))
        labels = [self.id2label[i] for i in range(len(self.id2label))]
        if self.spec.multi_label:
            probs = torch.sigmoid(logits).numpy()
            return [
                {
                    "labels": [lab for lab, p in zip(labels, row, strict=True) if p >= self.spec.threshold],
                    "probabilities": {lab: round(float(p), 6) for lab, p in zip(labels, row, strict=True)},
                }
                for row in probs
            ]
        probs = torch.softmax(logits, dim=-1).numpy()
        return [
            {
                "label": labels[int(row.argmax())],
                "score": round(float(row.max()), 6),
                "probabilities": {lab: round(float(p), 6) for lab, p in zip(labels, row, strict=True)},
            }
            for row in probs
        ]

    def label_with(self, examples: list[TextExample], predict: Callable[[list], list[dict]]) -> list[TextExample]:
        key = "labels" if self.spec.multi_label else "label"
        return [replace(e, label=p[key]) for e, p in zip(examples, predict(examples), strict=True)]

    def score(self, predictions: list[dict], examples: list[TextExample]) -> dict:
        labels = [self.id2label[i] for i in range(len(self.id2label))]
        if self.spec.multi_label:
            return metrics.multilabel([set(e.label) for e in examples], [set(p["labels"]) for p in predictions], labels)
        return metrics.classification([e.label for e in examples], [p["label"] for p in predictions], labels)

    def metric_names(self, examples: list[TextExample]) -> tuple[str, ...]:
        if self.spec.multi_label:
            return ("subset_accuracy", "micro_f1", "macro_f1")
        return ("accuracy", "macro_f1", "macro_precision", "macro_recall", "weighted_f1")


class PairTask(SequenceTask):
    name = "pair"

    def __init__(self, spec, tokenizer, id2label=None):
        if spec.text_pair_column is None:
            spec.text_pair_column = PAIR_COLUMN
        super().__init__(spec, tokenizer, id2label)


class RegressTask(SequenceTask):
    """A number per text or pair; one output, mean-squared error."""

    name = "regress"

    @property
    def select_metric(self) -> str:
        return "pearson"

    def _parse_label(self, value: Any, line: int, path: Path) -> Any:
        if value is None:
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            raise BertforgeError(
                f"{path}: line {line}: {self.spec.label_column!r} is {value!r}, not a number"
            ) from None

    def fit_labels(self, examples: list[TextExample], path: Path) -> None:
        if any(e.label is None for e in examples):
            raise BertforgeError(f"{path}: no column {self.spec.label_column!r} to learn from")
        if len({e.label for e in examples}) < 2:
            raise BertforgeError(f"{path}: every {self.spec.label_column!r} is the same: nothing to learn")
        self.id2label = {0: "score"}

    def check_labels(self, examples: list[TextExample], path: Path, held_out: float | None = None) -> None:
        return None

    def problem_type(self) -> str:
        return "regression"

    def target(self, example: TextExample) -> float:
        return float(example.label)

    def predict(self, model: nn.Module, examples: list[TextExample], progress: bool = False) -> list[dict]:
        return [{"score": round(float(v), 6)} for v in self.logits(model, examples, progress)[:, 0]]

    def label_with(self, examples: list[TextExample], predict: Callable[[list], list[dict]]) -> list[TextExample]:
        return [replace(e, label=p["score"]) for e, p in zip(examples, predict(examples), strict=True)]

    def score(self, predictions: list[dict], examples: list[TextExample]) -> dict:
        return metrics.regression([e.label for e in examples], [p["score"] for p in predictions])

    def metric_names(self, examples: list[TextExample]) -> tuple[str, ...]:
        return ("pearson", "spearman", "mse", "mae")
