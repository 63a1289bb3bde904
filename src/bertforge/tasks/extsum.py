"""Extractive summarisation: pick the sentences of a document that summarise it.

Fine-tuned (BertSum, Liu 2019): each sentence is [CLS] ... [SEP] with alternating segment ids; the
vector at its [CLS], after optional inter-sentence Transformer layers, is scored by the ``extsum`` head
and trained with binary cross-entropy against 0/1 labels, given or derived from a summary by the greedy
ROUGE oracle. Long documents are read in windows of whole sentences (not with copied position
embeddings); the inter-sentence layers see all of a document's sentences. Selection: the ``top_k``
best (or as many as fit ``max_words``), with trigram blocking, in document order.

Documents, selection rules, the oracle, the training-free methods and scoring are in ``summary``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Discriminator, Field, Tag
from torch import Tensor, nn

from .. import metrics
from ..batch import encoder_batch
from ..errors import BertforgeError
from ..infer import run_batches
from ..summary import (
    Document,
    document_from,
    document_input,
    greedy_oracle,
    join,
    read_documents,
    score_summaries,
    select,
    summary_limits,
)
from .base import FinetuneTask, Soft, settings_of
from .schemas import Request, SummarizeResponse

log = logging.getLogger("bertforge")


@dataclass
class ExtSumSettings:
    top_k: int | None = field(
        default=3,
        metadata={  # Lead-3 is the classic baseline; None: only max_words limits
            "help": "extsum: sentences in a summary (default 3).",
            "predict": "extsum: sentences per summary (default: as in training).",
        },
    )
    max_words: int | None = field(
        default=None,
        metadata={  # a CJK character counts as a word
            "help": "extsum: summary length budget in words, instead of --top-k.",
            "predict": "extsum: length budget in words.",
        },
    )
    trigram_blocking: bool = field(
        default=True,
        metadata={  # Paulus et al., 2018
            "help": "extsum: skip sentences repeating a trigram (default on).",
            "predict": "extsum.",
        },
    )
    inter_layers: int = field(
        default=2,
        metadata={  # BertSum's best model; windows need them to tell sentences apart
            "help": "extsum: Transformer layers over the sentence vectors (default 2, as BertSum; 0: a linear scorer)."
        },
    )
    oracle_k: int = field(
        default=3,
        metadata={
            "help": "extsum: most sentences the greedy ROUGE oracle labels, for data with a summary and no labels "
            "(default 3)."
        },
    )
    max_sentence_tokens: int = 128  # tokens kept of one sentence

    @staticmethod
    def from_flags(given: dict[str, Any]) -> dict[str, Any]:
        """--max-words alone lifts the default --top-k (0: no limit on the number of sentences)."""
        return {**given, "top_k": 0} if "max_words" in given and "top_k" not in given else given


class Sentences(Request):
    sentences: list[str] = Field(description="A document already split into sentences.")


# a text or {"sentences": [...]}, told apart by type, so that an error names only the form that was meant
# (the tags are left out of error messages: see serve's validation_message)
Document_ = Annotated[
    Annotated[str, Tag("<text>")] | Annotated[Sentences, Tag("<sentences>")],
    Discriminator(lambda v: "<sentences>" if isinstance(v, (dict, Sentences)) else "<text>"),
]


class SummarizeRequest(Request):
    model_config = Request.model_config | {
        "json_schema_extra": {"examples": [{"documents": ["First sentence. Second one! A third?"]}]}
    }
    documents: list[Document_] = Field(min_length=1, description="Texts (split into sentences here) or {sentences}.")


def documents_from_request(body: SummarizeRequest, limits, text_column: str) -> list[Document]:
    """A summarize request's documents (shared by the trained and the training-free summariser)."""
    texts = [d if isinstance(d, str) else " ".join(d.sentences) for d in body.documents]
    limits.check_texts(texts, "documents")
    docs = []
    for i, d in enumerate(body.documents):
        fields = {text_column: d} if isinstance(d, str) else {"sentences": d.sentences}
        docs.append(document_from(fields, 0, f"documents[{i}]", text_column))
    return docs


# -- the fine-tuned model -----------------------------------------------------------------------------------
@dataclass
class Window:
    """A run of whole sentences, each as [CLS] tokens [SEP]. Has what ``run_batches`` reads of an
    ``Encoding`` (ids, type_ids, attention_mask)."""

    ids: list[int]
    type_ids: list[int]
    cls: list[int]  # position of each sentence's [CLS]

    @property
    def attention_mask(self) -> list[int]:
        return [1] * len(self.ids)


@dataclass
class Packed:
    windows: list[Window]
    labels: list[int] | None  # per sentence, for training

    @property
    def sentences(self) -> int:
        return sum(len(w.cls) for w in self.windows)


class ExtSumTask(FinetuneTask):
    name = "extsum"
    head = "extsum"
    select_metric = "f1"
    default_max_length = 512
    endpoint = "summarize"
    about = "Extractive summaries: the sentences chosen from each document."
    Settings = ExtSumSettings
    Request, Response = SummarizeRequest, SummarizeResponse

    def __init__(self, spec, tokenizer, id2label=None):
        super().__init__(spec, tokenizer, id2label)
        s = self.settings = settings_of(ExtSumSettings, spec.extra, "extsum", keep_none=True)
        s.top_k, s.max_words = summary_limits(s.top_k, s.max_words)
        for k in ("inter_layers", "oracle_k", "max_sentence_tokens"):
            if not isinstance(getattr(s, k), int) or getattr(s, k) < (0 if k == "inter_layers" else 1):
                raise BertforgeError(
                    f"extsum: {k} must be a {'non-negative' if k == 'inter_layers' else 'positive'} integer"
                )
        spec.extra = dataclasses.asdict(s)

    # -- reading ------------------------------------------------------------------------------------
    def read(self, path: Path, labelled: bool = False) -> list[Document]:
        documents = read_documents(Path(path), self.spec.text_column, allow_empty=labelled)
        bare = next((d for d in documents if d.labels is None and d.summary is None), None)
        if labelled and bare is not None:
            raise BertforgeError(f"{path}: line {bare.line}: needs 'labels' or 'summary'")
        return documents

    def fit_labels(self, examples: list[Document], path: Path) -> None:
        bad = next((d for d in examples if d.labels is None and d.summary is None), None)
        if bad is not None:
            raise BertforgeError(f"{path}: line {bad.line}: needs 'labels' or 'summary' to learn from")
        if not any(any(self.labels(d)) for d in examples):
            raise BertforgeError(f"{path}: no sentence is labelled as in the summary: nothing to learn")

    def check_labels(self, examples: list[Document], path: Path, held_out: float | None = None) -> None:
        if not any(d.labels is not None or d.summary is not None for d in examples):
            raise BertforgeError(f"{path}: no 'summary' or 'labels' to score against")

    def labels(self, doc: Document) -> list[int]:
        """Given labels, else the greedy oracle's against the summary."""
        if doc.labels is not None:
            return doc.labels
        chosen = set(greedy_oracle(doc.sentences, doc.summary or "", self.settings.oracle_k))
        return [int(i in chosen) for i in range(len(doc.sentences))]

    def load_model(self, md) -> nn.Module:
        """The encoder of ``md`` (a ModelDir or a path) under an extsum head with ``inter_layers`` sentence layers."""
        from ..checkpoint import load_state, read_weights
        from ..heads import BertWithHead
        from ..modeldir import ModelDir

        md = ModelDir.open(md)
        n = self.settings.inter_layers
        had = md.config.extra.get("extsum_inter_layers")
        if had is not None and had != n:
            raise BertforgeError(f"{md.path}: has {had} inter-sentence layers, not {n}")
        config = md.config.replace(extra={**md.config.extra, "extsum_inter_layers": n})
        model = BertWithHead(config, self.head)
        load_state(model, read_weights(md.path), str(md.path))  # (what it initialises is logged)
        return model

    # -- features -----------------------------------------------------------------------------------
    def pack(self, documents: list[Document]) -> list[Packed]:
        """Each document as windows of whole sentences, [CLS] s [SEP] each, segments alternating."""
        cap = min(self.settings.max_sentence_tokens, self.spec.max_length - 2)
        flat = [s for d in documents for s in d.sentences]
        encoded = self.tokenizer.encode_batch(flat, add_special_tokens=False) if flat else []
        cls, sep = self.tokenizer.cls_id, self.tokenizer.sep_id
        packed, at = [], 0
        for d in documents:
            windows: list[Window] = []
            current = Window([], [], [])
            for enc in encoded[at : at + len(d.sentences)]:
                piece = [cls, *enc.ids[:cap], sep]
                if current.ids and len(current.ids) + len(piece) > self.spec.max_length:
                    windows.append(current)
                    current = Window([], [], [])
                current.cls.append(len(current.ids))
                current.type_ids.extend([(len(current.cls) - 1) % 2] * len(piece))  # 0, 1, 0, ... per sentence
                current.ids.extend(piece)
            if current.ids:
                windows.append(current)
            at += len(d.sentences)
            packed.append(Packed(windows, None))
        return packed

    def features(self, examples: list[Document], train: bool) -> list[Packed]:
        empty = sum(1 for d in examples if not d.sentences)
        if empty:
            log.warning("%d documents without sentences left out of training", empty)
        kept = [d for d in examples if d.sentences]
        packed = self.pack(kept)
        for p, d in zip(packed, kept, strict=True):
            p.labels = self.labels(d)
        return packed

    def set_data(self, train_examples: list, valid_examples: list) -> None:
        super().set_data(train_examples, valid_examples)
        if not any(d.labels is not None for d in valid_examples):
            self.select_metric = "rouge2"

    def size(self, index: int) -> tuple[int, int]:
        windows = self.train_features[index].windows
        return len(windows), max(len(w.ids) for w in windows)

    def collate(self, indices: list[int], rng: np.random.Generator | None = None) -> dict[str, Tensor]:
        docs = [self.train_features[i] for i in indices]
        windows = [w for d in docs for w in d.windows]
        T = max(len(w.ids) for w in windows)
        S = max(d.sentences for d in docs)
        index = torch.zeros(len(docs), S, dtype=torch.long)
        mask = torch.zeros(len(docs), S, dtype=torch.bool)
        labels = torch.zeros(len(docs), S)
        g = 0
        for b, d in enumerate(docs):
            positions = [(g + k) * T + c for k, w in enumerate(d.windows) for c in w.cls]
            g += len(d.windows)
            index[b, : len(positions)] = torch.tensor(positions)
            mask[b, : len(positions)] = True
            labels[b, : len(positions)] = torch.tensor(d.labels, dtype=torch.float32)
        return {
            **encoder_batch([w.ids for w in windows], [w.type_ids for w in windows], self.tokenizer.pad_id),
            "sentence_index": index,
            "sentence_mask": mask,
            "labels": labels,
        }

    def counts(self, batch: dict[str, Tensor]) -> dict[str, int]:
        return {"loss": int(batch["sentence_mask"].sum())}

    # -- prediction ---------------------------------------------------------------------------------
    def sentence_scores(self, model: nn.Module, documents: list[Document], progress: bool = False) -> list[np.ndarray]:
        """Each document's sentence logits: the encoder over all windows (the one inference path),
        then the head over each document's [CLS] vectors."""
        packed = self.pack(documents)
        windows = [w for p in packed for w in p.windows]
        vectors: list[Tensor | None] = [None] * len(windows)
        for idx, hidden in run_batches(
            model.bert,
            self.tokenizer,
            windows,
            lambda out, batch: out.last_hidden_state,
            progress=progress,
            max_tokens=self.max_tokens,
            desc="reading",
            pool=False,
        ):
            for row, i in enumerate(idx):
                vectors[i] = hidden[row, windows[i].cls]  # (sentences in window, H)
        out, g = [], 0
        with torch.inference_mode():
            for p in packed:
                if not p.windows:
                    out.append(np.zeros(0))
                    continue
                v = torch.cat(vectors[g : g + len(p.windows)])[None]  # (1, S, H)
                g += len(p.windows)
                mask = torch.ones(v.shape[:2], dtype=torch.bool, device=v.device)
                out.append(model.head.score(v, mask)[0].float().cpu().numpy())
        return out

    def predict(self, model: nn.Module, examples: list[Document], progress: bool = False) -> list[dict]:
        s = self.settings
        results = []
        for d, scores in zip(examples, self.sentence_scores(model, examples, progress), strict=True):
            chosen = select(d.sentences, scores, s.top_k, s.max_words, s.trigram_blocking) if d.sentences else []
            results.append(
                {
                    "summary": join([d.sentences[i] for i in chosen]),
                    "selected": chosen,
                    "scores": [round(float(x), 6) for x in scores],
                }
            )
        return results

    def soft_outputs(self, out, batch: dict[str, Tensor]) -> list[Soft]:
        return [Soft(out.logits[batch["sentence_mask"].bool()], "sigmoid")]  # (real sentences,)

    def label_with(self, examples: list[Document], predict: Callable[[list], list[dict]]) -> list[Document]:
        return [
            dataclasses.replace(d, labels=[int(i in p["selected"]) for i in range(len(d.sentences))])
            for d, p in zip(examples, predict(examples), strict=True)
        ]

    def score(self, predictions: list[dict], examples: list[Document]) -> dict:
        return score_summaries(predictions, examples)

    def metric_names(self, examples: list[Document]) -> tuple[str, ...]:
        names: list[str] = []
        if any(d.summary is not None for d in examples):
            names += metrics.ROUGE_TYPES
        if any(d.labels is not None for d in examples):
            names += ["precision", "recall", "f1"]
        return tuple(names)

    # -- the faces ----------------------------------------------------------------------------------
    def example(self, x: Any, where: str) -> Document:
        return document_input(x, self.spec.text_column)

    def from_request(self, body: SummarizeRequest, limits) -> list[Document]:
        return documents_from_request(body, limits, self.spec.text_column)

    def respond(self, predictions: list[dict]) -> dict:
        return {"summaries": list(predictions)}
