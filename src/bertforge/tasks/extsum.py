"""Extractive summarisation: pick the sentences of a document that summarise it.

Fine-tuned (BertSum, Liu 2019): each sentence is [CLS] ... [SEP] with alternating segment ids; the
vector at its [CLS], after optional inter-sentence Transformer layers, is scored by the ``extsum`` head
and trained with binary cross-entropy against 0/1 labels, given or derived from a summary by the greedy
ROUGE oracle. Long documents are read in windows of whole sentences (not with copied position
embeddings); the inter-sentence layers see all of a document's sentences. Selection: the ``top_k``
best (or as many as fit ``max_words``), with trigram blocking, in document order.

Training-free: the sentences closest to the centroid of sentence embeddings, one per k-means cluster,
or Lead-k. Data: JSONL with ``sentences`` or ``text``, and ``labels`` and/or ``summary``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Discriminator, Field, Tag
from torch import Tensor, nn

from .. import metrics
from ..batch import encoder_batch
from ..data import tables
from ..errors import BertforgeError
from ..infer import run_batches
from ..text import CJK_CLASS, has_cjk, split_sentences
from .base import FinetuneTask, settings_of
from .schemas import Request, SummarizeResponse

log = logging.getLogger("bertforge")


@dataclass
class ExtSumSettings:
    top_k: int | None = field(default=3, metadata={  # Lead-3 is the classic baseline; None: only max_words limits
        "help": "extsum: sentences in a summary (default 3).", "predict": "extsum: sentences per summary (default: as in training)."})
    max_words: int | None = field(default=None, metadata={  # a CJK character counts as a word
        "help": "extsum: summary length budget in words, instead of --top-k.", "predict": "extsum: length budget in words."})
    trigram_blocking: bool = field(default=True, metadata={  # Paulus et al., 2018
        "help": "extsum: skip sentences repeating a trigram (default on).", "predict": "extsum."})
    inter_layers: int = field(default=2, metadata={  # BertSum's best model; windows need them to tell sentences apart
        "help": "extsum: Transformer layers over the sentence vectors (default 2, as BertSum; 0: a linear scorer)."})
    oracle_k: int = field(default=3, metadata={
        "help": "extsum: most sentences the greedy ROUGE oracle labels, for data with a summary and no labels (default 3)."})
    max_sentence_tokens: int = 128  # tokens kept of one sentence

    @staticmethod
    def from_flags(given: dict[str, Any]) -> dict[str, Any]:
        """--max-words alone lifts the default --top-k (0: no limit on the number of sentences)."""
        return {**given, "top_k": 0} if "max_words" in given and "top_k" not in given else given


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
    sentences: list[str], scores: Any, top_k: int | None = 3, max_words: int | None = None, trigram_blocking: bool = True
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
            cand = [{g: pool[n].get(g, 0) + grams[i][n].get(g, 0) for g in pool[n].keys() | grams[i][n].keys()}
                    for n in (0, 1)]
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
            picks = lead(d.sentences, k if top_k is not None else len(d.sentences)) if method == "lead" else cluster_select(v, k)
            if max_words is not None:  # in document order, as many as fit
                fit = select([d.sentences[i] for i in picks], -np.arange(len(picks)), None, max_words, trigram_blocking=False)
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
        r = metrics.rouge([documents[i].summary for i in with_summary], [predictions[i]["summary"] for i in with_summary])
        result.update({k: r[f"{k}_f1"] for k in metrics.ROUGE_TYPES})
    with_labels = [i for i, d in enumerate(documents) if d.labels is not None]
    if with_labels:
        result.update(
            metrics.selection_prf([documents[i].labels for i in with_labels], [predictions[i]["selected"] for i in with_labels])
        )
    return result


# -- reading ----------------------------------------------------------------------------------------------
def document_from(fields: dict, line: int, where: str, text_column: str = "text", allow_empty: bool = False) -> Document:
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
    return [document_from(r.fields, r.line, f"{path}: line {r.line}", text_column, allow_empty) for r in tables.read_records(path)]


class Sentences(Request):
    sentences: list[str] = Field(description="A document already split into sentences.")


# a text or {"sentences": [...]}, told apart by type, so that an error names only the form that was meant
# (the tags are left out of error messages: see serve's validation_message)
Document_ = Annotated[
    Annotated[str, Tag("<text>")] | Annotated[Sentences, Tag("<sentences>")],
    Discriminator(lambda v: "<sentences>" if isinstance(v, (dict, Sentences)) else "<text>"),
]


class SummarizeRequest(Request):
    model_config = Request.model_config | {"json_schema_extra": {"examples": [{"documents": ["First sentence. Second one! A third?"]}]}}
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
                raise BertforgeError(f"extsum: {k} must be a {'non-negative' if k == 'inter_layers' else 'positive'} integer")
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
            model.bert, self.tokenizer, windows, lambda out, batch: out.last_hidden_state, progress=progress, max_tokens=self.max_tokens, desc="reading",
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
            results.append({
                "summary": join([d.sentences[i] for i in chosen]),
                "selected": chosen,
                "scores": [round(float(x), 6) for x in scores],
            })
        return results

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
