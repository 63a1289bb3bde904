"""Extractive question answering: SQuAD v1.1 and v2.0 (Rajpurkar et al., 2016, 2018), as BERT does it.

The question, cut to ``max_query_length`` tokens, is paired with the context read in windows of
``max_length`` tokens that overlap by ``doc_stride`` tokens (transformers' meaning; ``doc_step`` sets
the step between window starts, Google's). A window's target is the answer's first and last token when
the whole answer lies inside it, else [CLS]; ``choose_answer`` turns the windows' logits into one answer.
Question files are read by ``data.squad``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from tokenizers import Encoding
from torch import Tensor, nn

from .. import metrics
from ..batch import flatten_windows
from ..data.squad import GoldAnswer, QAExample, check_offsets, input_question, read_questions
from ..errors import BertforgeError
from ..infer import run_batches
from .base import Feature, FinetuneTask, Soft, request_examples, settings_of
from .schemas import Request

log = logging.getLogger("bertforge")


@dataclass
class QASettings:
    """Google's run_squad.py defaults, kept by every BERT QA recipe since."""

    max_query_length: int = field(default=64, metadata={"help": "qa: question tokens kept (default 64)."})
    doc_stride: int = field(
        default=128,
        metadata={  # the overlap, as transformers means doc_stride
            "help": "qa: context tokens shared by consecutive windows, as in transformers (default 128)."
        },
    )
    doc_step: int | None = field(
        default=None,
        metadata={  # Google's run_squad.py calls this doc_stride
            "help": "qa: context tokens between the starts of consecutive windows, as Google's run_squad.py's "
            "doc_stride means it; replaces --doc-stride."
        },
    )
    max_answer_length: int = field(default=30, metadata={"help": "qa: longest answer in tokens (default 30)."})
    n_best: int = 20  # spans kept per window
    null_threshold: float = field(
        default=0.0,
        metadata={
            "help": "qa (SQuAD 2.0): answer '' when null score > best span + this (default 0).",
            "predict": "qa: default as in training.",
        },
    )
    version_2: bool | None = None  # unanswerable questions allowed; None: decided by the training data


# -- postprocessing (pure functions) -------------------------------------------------------------------
def best_spans(
    start: np.ndarray,
    end: np.ndarray,
    lo: int,
    hi: int,
    max_answer_length: int,
    n_best: int,
    may_start: np.ndarray | None = None,
) -> list[tuple[float, int, int]]:
    """The ``n_best`` spans (score, first token, last token), best first, with lo <= first <= last <= hi,
    at most ``max_answer_length`` tokens and ``may_start[first]`` (when given); score = start[first] +
    end[last]. Exact: every valid span of the window is scored (a (n, n) matrix, n <= window length)."""
    n = hi - lo + 1
    if n <= 0:
        return []
    scores = start[lo : hi + 1, None].astype(np.float64) + end[None, lo : hi + 1]  # (n, n): [first, last]
    first, last = np.indices((n, n))
    scores[(last < first) | (last - first >= max_answer_length)] = -np.inf
    if may_start is not None:
        scores[~np.asarray(may_start[lo : hi + 1], dtype=bool)] = -np.inf
    flat = scores.ravel()
    k = min(n_best, n * n)
    top = np.argpartition(-flat, k - 1)[:k]
    top = top[np.argsort(-flat[top], kind="stable")]
    return [(float(flat[t]), lo + int(t // n), lo + int(t % n)) for t in top if np.isfinite(flat[t])]


@dataclass
class Window:
    start: np.ndarray  # (T,) start logits
    end: np.ndarray  # (T,) end logits
    offsets: list[tuple[int, int]]  # character span in the context of each token
    lo: int  # first context token
    hi: int  # last context token


def max_context_windows(windows: list[Window]) -> dict[int, int]:
    """For each context token (by its first character), the window where it has the most context:
    min(tokens before it, tokens after it) in the window, + 0.01 x the window's length (Google's
    run_squad.py). Spans start only there: a window that cuts an answer off after its first words
    is otherwise sure of those words alone."""
    home: dict[int, tuple[float, int]] = {}
    for k, w in enumerate(windows):
        for i in range(w.lo, w.hi + 1):
            score = min(i - w.lo, w.hi - i) + 0.01 * (w.hi - w.lo + 1)
            key = w.offsets[i][0]
            if key not in home or score > home[key][0]:
                home[key] = (score, k)
    return {key: k for key, (_, k) in home.items()}


def choose_answer(
    context: str, windows: list[Window], max_answer_length: int, n_best: int, version_2: bool, null_threshold: float
) -> dict:
    """The answer to one question from its windows: the best span over all windows, or "" (v2.0).

    In each window the ``n_best`` highest-scoring spans (start + end logit) that lie in the context,
    end no earlier than they start, are at most ``max_answer_length`` tokens long and start where that
    token has the most context among the windows (as run_squad.py: a window that cuts an answer off
    after its first word is otherwise sure of that word alone). The text is cut from the context's own
    characters. ``score`` is a softmax over the distinct candidates (and the null answer). For v2.0 the
    null score is start + end at [CLS], its minimum over the windows; the answer is "" when it exceeds
    the best span's score plus ``null_threshold``, and ``null_odds`` and ``best_span`` come with it.
    """
    candidates: dict[tuple[int, int], float] = {}  # character span -> best score over windows
    null = float("inf")
    home = max_context_windows(windows)
    for k, w in enumerate(windows):
        null = min(null, float(w.start[0] + w.end[0]))
        may_start = np.array(
            [home.get(w.offsets[i][0]) == k if w.lo <= i <= w.hi else False for i in range(len(w.offsets))]
        )
        for score, s, e in best_spans(w.start, w.end, w.lo, w.hi, max_answer_length, n_best, may_start):
            span = (w.offsets[s][0], w.offsets[e][1])
            candidates[span] = max(score, candidates.get(span, -np.inf))
    scores = np.array([*candidates.values(), *([null] if version_2 else [])], dtype=np.float64)
    if not candidates:
        return {"answer": "", "score": 1.0 if version_2 else 0.0, "start": 0, "end": 0}
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    best = int(np.argmax(scores[: len(candidates)]))
    (s, e), best_score = list(candidates.items())[best]
    extra = {"null_odds": round(null - best_score, 6), "best_span": context[s:e]} if version_2 else {}
    if version_2 and null > best_score + null_threshold:
        return {"answer": "", "score": round(float(probs[-1]), 6), "start": 0, "end": 0, **extra}
    return {"answer": context[s:e], "score": round(float(probs[best]), 6), "start": s, "end": e, **extra}


# -- the task ------------------------------------------------------------------------------------------
class Question(Request):
    question: str
    context: str


class QARequest(Request):
    model_config = Request.model_config | {
        "json_schema_extra": {
            "examples": [
                {"question": "Who flew?", "context": "Carol flew to Oslo."},
                {"questions": [{"question": "Where to?", "context": "Carol flew to Oslo."}]},
            ]
        }
    }
    questions: list[Question] | None = Field(None, min_length=1, description="Questions, each with its context.")
    question: str | None = Field(None, description="One question (with context), instead of questions.")
    context: str | None = None


class Answer(BaseModel):
    answer: str = Field(description='The answer span ("" when the model says there is none).')
    score: float
    start: int = Field(description="Character offsets of the answer in the context.")
    end: int


class QAResponse(BaseModel):
    answers: list[Answer]


class QATask(FinetuneTask):
    name = "qa"
    head = "span"
    select_metric = "f1"
    default_max_length = 384
    endpoint = "qa"
    about = "Answers: spans of each context (``questions``, or one ``question`` and ``context``)."
    Settings = QASettings
    Request, Response = QARequest, QAResponse

    def __init__(self, spec, tokenizer, id2label=None):
        super().__init__(spec, tokenizer, id2label)
        given = dict(spec.extra)
        if "doc_stride" not in spec.extra and spec.stride is not None:
            given["doc_stride"] = spec.stride
        s = self.settings = settings_of(QASettings, given, "qa")
        for k in ("max_query_length", "doc_stride", "max_answer_length", "n_best"):
            if not isinstance(getattr(s, k), int) or getattr(s, k) < 1:
                raise BertforgeError(f"qa: {k} must be a positive integer, not {getattr(s, k)!r}")
        room = spec.max_length - s.max_query_length - 3  # [CLS] question [SEP] context [SEP]
        if room < 2:
            raise BertforgeError(
                f"qa: windows of {spec.max_length} tokens leave no room for context after questions of up to "
                f"{s.max_query_length} tokens: raise --max-length or lower --max-query-length"
            )
        if s.doc_step is not None and not (isinstance(s.doc_step, int) and 1 <= s.doc_step <= room):
            raise BertforgeError(
                f"qa: doc step {s.doc_step!r} must be a whole number from 1 to {room} (the context tokens a "
                f"window of {spec.max_length} holds beside questions of up to {s.max_query_length})"
            )
        if s.doc_step is None and s.doc_stride >= room:
            raise BertforgeError(
                f"qa: doc stride {s.doc_stride} leaves no room to advance: windows of {spec.max_length} "
                f"tokens with questions of up to {s.max_query_length} hold {room} context tokens; "
                "lower --doc-stride or --max-query-length, or raise --max-length"
            )
        spec.extra = dataclasses.asdict(s)

    # -- reading ------------------------------------------------------------------------------------
    def read(self, path: Path, labelled: bool = False) -> list[QAExample]:
        path = Path(path)
        examples = read_questions(path)
        unlabelled = next((e for e in examples if e.answers is None), None)
        if labelled and unlabelled is not None:
            raise BertforgeError(f"{path}: {unlabelled.where}: no 'answers'")
        check_offsets(examples, path)
        return examples

    def fit_labels(self, examples: list[QAExample], path: Path) -> None:
        unlabelled = next((e for e in examples if e.answers is None), None)
        if unlabelled is not None:
            raise BertforgeError(f"{path}: {unlabelled.where}: no 'answers' to learn from")
        if self.settings.version_2 is None:
            self.settings.version_2 = any(not e.answers for e in examples)
            self.spec.extra["version_2"] = self.settings.version_2

    def check_labels(self, examples: list[QAExample], path: Path, held_out: float | None = None) -> None:
        unlabelled = next((e for e in examples if e.answers is None), None)
        if unlabelled is not None:
            raise BertforgeError(f"{path}: {unlabelled.where}: no 'answers' to score against")

    # -- features -----------------------------------------------------------------------------------
    def _questions(self, examples: list[QAExample]) -> tuple[list[str], list[int]]:
        """Questions cut to ``max_query_length`` tokens (at the end of the last kept token), and their lengths."""
        limit = self.settings.max_query_length
        encs = self.tokenizer.encode_batch([e.question for e in examples], add_special_tokens=False)
        texts = [
            e.question[: enc.offsets[limit - 1][1]] if len(enc.ids) > limit else e.question
            for e, enc in zip(examples, encs, strict=True)
        ]
        return texts, [min(len(enc.ids), limit) for enc in encs]

    def _strides(self, lengths: list[int]) -> list[int]:
        """Each question's window overlap: ``doc_stride``, or what leaves ``doc_step`` between starts."""
        if self.settings.doc_step is None:
            return [self.settings.doc_stride] * len(lengths)
        return [max(self.spec.max_length - n - 3 - self.settings.doc_step, 0) for n in lengths]

    def encode(self, examples: list[QAExample]) -> tuple[list[Encoding], list[int]]:
        """Every window of every example, and the example each came from."""
        questions, lengths = self._questions(examples)
        strides = self._strides(lengths)
        encs: list[Encoding | None] = [None] * len(examples)
        for stride in sorted(set(strides)):  # one batch per overlap (a single one with doc_stride)
            rows = [i for i, st in enumerate(strides) if st == stride]
            for i, enc in zip(
                rows,
                self.tokenizer.encode_batch(
                    [questions[i] for i in rows],
                    [examples[i].context for i in rows],
                    max_length=self.spec.max_length,
                    truncation="only_second",
                    stride=stride,
                ),
                strict=True,
            ):
                encs[i] = enc
        return flatten_windows(encs)

    @staticmethod
    def context_range(enc: Encoding) -> tuple[int, int]:
        """First and last token of the context in a window ((1, 0) when it has none)."""
        ctx = [i for i, s in enumerate(enc.sequence_ids) if s == 1]
        return (ctx[0], ctx[-1]) if ctx else (1, 0)

    @classmethod
    def target(cls, enc: Encoding, answer: GoldAnswer | None) -> tuple[int, int]:
        """(first, last) token of the answer in this window; (0, 0) ([CLS]) when it is not wholly inside."""
        lo, hi = cls.context_range(enc)
        if answer is None or hi < lo:
            return 0, 0
        first_char, end_char = answer.start, answer.start + len(answer.text)
        offsets = enc.offsets
        if not (offsets[lo][0] <= first_char and offsets[hi][1] >= end_char):
            return 0, 0
        s = lo
        while s <= hi and offsets[s][0] <= first_char:
            s += 1
        e = hi
        while e >= lo and offsets[e][1] >= end_char:
            e -= 1
        return s - 1, e + 1

    def features(self, examples: list[QAExample], train: bool) -> list[Feature]:
        """Every window of every labelled example whose answer could be located (or that has none)."""
        usable = [
            i
            for i, e in enumerate(examples)
            if e.answers is not None and (not e.answers or any(a.start is not None for a in e.answers))
        ]
        encs, owner = self.encode([examples[i] for i in usable])
        feats = []
        for enc, k in zip(encs, owner, strict=True):
            i = usable[k]
            answer = next((a for a in examples[i].answers if a.start is not None), None)  # training uses the first
            feats.append(Feature(enc.ids, enc.type_ids, self.target(enc, answer), i))
        return feats

    def targets(self, feats: list[Feature]) -> dict[str, Tensor]:
        return {
            "start_positions": torch.tensor([f.target[0] for f in feats], dtype=torch.long),
            "end_positions": torch.tensor([f.target[1] for f in feats], dtype=torch.long),
        }

    def counts(self, batch: dict[str, Tensor]) -> dict[str, int]:
        return {"loss": int(batch["start_positions"].numel())}

    # -- prediction ---------------------------------------------------------------------------------
    def predict(self, model: nn.Module, examples: list[QAExample], progress: bool = False) -> list[dict]:
        encs, owner = self.encode(examples)
        windows: list[list[Window]] = [[] for _ in examples]

        def fn(out, batch):
            return torch.stack([out.logits, out.end_logits], dim=-1).float()  # (B, T, 2)

        for idx, logits in run_batches(
            model, self.tokenizer, encs, fn, progress=progress, max_tokens=self.max_tokens, desc="answering"
        ):
            logits = logits.cpu().numpy()
            for row, i in enumerate(idx):
                enc = encs[i]
                n = len(enc.ids)
                lo, hi = self.context_range(enc)
                windows[owner[i]].append(Window(logits[row, :n, 0], logits[row, :n, 1], enc.offsets, lo, hi))
        s = self.settings
        return [
            choose_answer(e.context, w, s.max_answer_length, s.n_best, bool(s.version_2), float(s.null_threshold))
            for e, w in zip(examples, windows, strict=True)
        ]

    def soft_outputs(self, out, batch: dict[str, Tensor]) -> list[Soft]:
        """Start and end: distributions over each window's real tokens."""
        pad = ~batch["attention_mask"].bool()
        return [Soft(x.float().masked_fill(pad, -1e4), "softmax") for x in (out.logits, out.end_logits)]

    def label_with(self, examples: list[QAExample], predict: Callable[[list], list[dict]]) -> list[QAExample]:
        def answers(p: dict) -> list[GoldAnswer]:
            return [GoldAnswer(p["answer"], p["start"])] if p["answer"] else []

        return [dataclasses.replace(e, answers=answers(p)) for e, p in zip(examples, predict(examples), strict=True)]

    def score(self, predictions: list[dict], examples: list[QAExample]) -> dict:
        golds = [[a.text for a in e.answers] for e in examples]
        preds = [p["answer"] for p in predictions]
        if self.settings.version_2 or any(not g for g in golds):
            out = metrics.squad_v2(golds, preds)
            if self.settings.version_2:  # where --null-threshold would have scored best
                odds = [p.get("null_odds", float("inf")) for p in predictions]  # (no valid span: always "")
                out.update(metrics.squad_v2_best_threshold(golds, [p.get("best_span", "") for p in predictions], odds))
            return out
        return metrics.squad_v1(golds, preds)

    def metric_names(self, examples: list[QAExample]) -> tuple[str, ...]:
        answerable = [bool(e.answers) for e in examples]
        if not self.settings.version_2 and all(answerable):
            return ("exact_match", "f1")
        names = ["exact", "f1"]
        if any(answerable):
            names += ["HasAns_exact", "HasAns_f1"]
        if not all(answerable):
            names += ["NoAns_exact", "NoAns_f1"]
        if self.settings.version_2:
            names += ["best_exact", "best_f1"]
        return tuple(names)

    # -- the faces ----------------------------------------------------------------------------------
    def example(self, x: Any, where: str) -> QAExample:
        """{"question", "context"[, "id"]} or a (question, context) pair."""
        if isinstance(x, (tuple, list)) and len(x) == 2:
            x = {"question": x[0], "context": x[1]}
        if not isinstance(x, dict):
            raise BertforgeError("a qa model takes {'question': ..., 'context': ...} or (question, context)")
        return input_question(x)

    def from_request(self, body: QARequest, limits) -> list[QAExample]:
        """``questions``, or one ``question`` and ``context``."""
        if body.questions is not None:
            if body.question is not None or body.context is not None:
                raise BertforgeError("give 'questions', or one 'question' and 'context', not both")
            questions, name = body.questions, "questions"
        elif body.question is not None and body.context is not None:
            questions, name = [Question(question=body.question, context=body.context)], ""
        else:
            raise BertforgeError("give 'questions' ([{question, context}, ...]), or 'question' and 'context'")
        limits.check_count(len(questions), "questions")
        limits.check_chars(
            (f"{name}[{i}].{k}" if name else k, getattr(q, k))
            for i, q in enumerate(questions)
            for k in ("question", "context")
        )
        return request_examples(self, [q.model_dump() for q in questions], name or "questions")

    def respond(self, predictions: list[dict]) -> dict:
        return {"answers": list(predictions)}

    def input_fields(self, path: Path, examples: list[QAExample]) -> list[dict]:
        """SQuAD JSON has no record per question: each example keeps its own fields."""
        return [e.fields for e in examples]
