"""Token tagging: named entities, semantic roles, any BIO scheme.

Input is either words with tags (CoNLL columns; JSONL ``{"tokens": [...], "tags": [...]}``) or raw
text (JSONL ``{"text": ..., "entities": [{"start", "end", "label"}]}``, character spans), whose words
are BERT's pre-tokens, so Chinese text is tagged character by character. The tag of a word is
predicted at its first word piece; the other pieces carry no target. Sentences longer than the
window are read in overlapping windows, and each word takes its tag from the window where it has
the most context on both sides. Scores are entity-level precision/recall/F1 with seqeval's rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from tokenizers import Encoding
from torch import nn

from .. import metrics
from ..batch import flatten_windows, pad_rows
from ..data import tables
from ..errors import BertforgeError
from ..heads import IGNORE_INDEX
from ..infer import run_batches
from .base import Feature, FinetuneTask, Soft, request_examples, unknown_labels_error
from .schemas import Request

CONLL_SUFFIXES = (".conll", ".conllu", ".bio", ".iob", ".txt", ".tsv")
FORMATS = (".csv", ".jsonl", ".json", f"CoNLL ({', '.join(CONLL_SUFFIXES)})")  # (.tsv is CoNLL here)


def words_of(tokens: list, where: str) -> list[str]:
    """Pre-split input (``tokens``) as words: a non-empty list of non-blank strings (numbers read as written)."""
    if not tokens:
        raise BertforgeError(f"{where}: empty 'tokens'")
    words = [str(w) if isinstance(w, (int, float)) and not isinstance(w, bool) else w for w in tokens]
    for i, w in enumerate(words):
        if not isinstance(w, str) or not w.strip():
            raise BertforgeError(f"{where}: tokens[{i}] is {tokens[i]!r}, not a word")
    return words


@dataclass
class TagExample:
    words: list[str]
    tags: list[str] | None
    line: int
    text: str | None = None  # raw text, when the example came as text
    spans: list[tuple[int, int]] | None = None  # character span of each word in ``text``


class TagRequest(Request):
    model_config = Request.model_config | {
        "json_schema_extra": {"examples": [{"texts": ["Carol flew to Oslo on Monday."]}]}
    }
    texts: list[str] | None = Field(None, min_length=1, description="Raw texts; entities come with character offsets.")
    tokens: list[list[str]] | None = Field(
        None, min_length=1, description="Pre-split words; entities with word offsets."
    )


class Entity(BaseModel):
    label: str
    start: int
    end: int
    text: str


class TagPrediction(BaseModel):
    tokens: list[str]
    tags: list[str]
    entities: list[Entity]


class TagResponse(BaseModel):
    predictions: list[TagPrediction]


class TagTask(FinetuneTask):
    name = "tag"
    head = "tag"
    select_metric = "f1"
    endpoint = "tag"
    about = "Tags per word and the entities they make (character offsets for texts, word offsets for tokens)."
    Request, Response = TagRequest, TagResponse
    echoed = ("tokens",)  # a tagger's words, given as tokens or split from text

    # -- the faces ----------------------------------------------------------------------------------
    def example(self, x: Any, where: str) -> TagExample:
        """A list of words, or a text (split into BERT's pre-tokens, entities in character offsets)."""
        if isinstance(x, list):
            return TagExample(words_of(x, where), None, 0)
        return self._from_text({self.spec.text_column: str(x)}, 0, Path("<input>"))

    def from_request(self, body: TagRequest, limits) -> list[TagExample]:
        if (body.texts is None) == (body.tokens is None):
            raise BertforgeError("give 'texts', or 'tokens' (lists of words)")
        if body.texts is not None:
            limits.check_texts(body.texts, "texts")
            return request_examples(self, body.texts, "texts")
        limits.check_texts([" ".join(ws) for ws in body.tokens], "tokens")
        return request_examples(self, body.tokens, "tokens")

    def input_fields(self, path: Path, examples: list[TagExample]) -> list[dict]:
        """CoNLL files have no fields to repeat: a prediction line's tokens are its words."""
        if Path(path).suffix.lower() in CONLL_SUFFIXES:
            return [{} for _ in examples]
        return super().input_fields(path, examples)

    # -- reading ------------------------------------------------------------------------------------
    def read(self, path: Path, labelled: bool = False) -> list[TagExample]:
        path = Path(path)
        if path.suffix.lower() in CONLL_SUFFIXES:
            return [TagExample(w, t, n) for w, t, n in tables.read_conll(path)]
        examples = self._read_records(path)
        missing = next((e for e in examples if e.tags is None), None)
        if labelled and missing is not None:
            raise BertforgeError(f"{path}: line {missing.line}: no tags ('tags' list or 'entities')")
        return examples

    def _read_records(self, path: Path) -> list[TagExample]:
        records = tables.read_records(path, FORMATS)
        examples = []
        for r in records:
            f = r.fields
            if isinstance(f.get("tokens"), list):
                words = words_of(f["tokens"], f"{path}: line {r.line}")
                tags = f.get("tags")
                if tags is not None and (not isinstance(tags, list) or len(tags) != len(words)):
                    raise BertforgeError(f"{path}: line {r.line}: 'tags' must be a list as long as 'tokens'")
                examples.append(TagExample(words, [str(t) for t in tags] if tags is not None else None, r.line))
            elif isinstance(f.get(self.spec.text_column), str):
                examples.append(self._from_text(f, r.line, path))
            else:
                raise BertforgeError(
                    f"{path}: line {r.line}: needs 'tokens' (a list) or {self.spec.text_column!r} (text)"
                )
        return examples

    def _from_text(self, fields: dict, line: int, path: Path) -> TagExample:
        text = fields[self.spec.text_column]
        if not text.strip():
            raise BertforgeError(f"{path}: line {line}: empty {self.spec.text_column!r}")
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        spans: dict[int, list[int]] = {}
        for w, (s, e) in zip(enc.word_ids, enc.offsets, strict=True):
            if w is not None:
                spans.setdefault(w, [s, e])[1] = e
        word_spans = [tuple(spans[w]) for w in sorted(spans)]
        words = [text[s:e] for s, e in word_spans]
        tags = None
        if "entities" in fields:
            tags = ["O"] * len(words)
            for ent in fields["entities"]:
                try:
                    start, end, label = int(ent["start"]), int(ent["end"]), str(ent["label"])
                except (KeyError, TypeError, ValueError):
                    raise BertforgeError(f"{path}: line {line}: entities need start, end and label") from None
                inside = [i for i, (s, e) in enumerate(word_spans) if s >= start and e <= end]
                for k, i in enumerate(inside):
                    tags[i] = ("B-" if k == 0 else "I-") + label
        return TagExample(words, tags, line, text, word_spans)

    def fit_labels(self, examples: list[TagExample], path: Path) -> None:
        if any(e.tags is None for e in examples):
            raise BertforgeError(f"{path}: training data needs tags")
        found = sorted({t for e in examples for t in e.tags} - {"O"})
        if not found:
            raise BertforgeError(f"{path}: every tag is 'O': nothing to learn")
        self.id2label = dict(enumerate(["O", *found]))

    def check_labels(self, examples: list[TagExample], path: Path, held_out: float | None = None) -> None:
        known = set(self.label2id)
        unknown: dict[str, int] = {}
        conll = Path(path).suffix.lower() in CONLL_SUFFIXES  # a word a line: word i of a sentence is on its line + i
        for e in examples:
            for i, t in enumerate(e.tags or []):
                if t not in known:
                    unknown.setdefault(t, e.line + i if conll else e.line)
        if unknown:
            raise unknown_labels_error(path, "tag", unknown, known, held_out)

    # -- features -----------------------------------------------------------------------------------
    def encode(self, examples: list[TagExample]) -> tuple[list[Encoding], list[int]]:
        window = self.spec.long_text == "window"
        encs = self.tokenizer.encode_batch(
            [e.words for e in examples],
            max_length=self.spec.max_length,
            stride=self.spec.window_stride if window else 0,
            is_pretokenized=True,
        )
        return flatten_windows(encs, window)

    @staticmethod
    def first_pieces(enc: Encoding) -> dict[int, int]:
        """word index -> position of its first piece in this window."""
        firsts: dict[int, int] = {}
        for pos, w in enumerate(enc.word_ids):
            if w is not None and w not in firsts:
                firsts[w] = pos
        return firsts

    def features(self, examples: list[TagExample], train: bool) -> list[Feature]:
        encs, owner = self.encode(examples)
        feats = []
        for enc, i in zip(encs, owner, strict=True):
            target = [IGNORE_INDEX] * len(enc.ids)
            for w, pos in self.first_pieces(enc).items():
                target[pos] = self.label2id[examples[i].tags[w]]
            feats.append(Feature(enc.ids, enc.type_ids, target, i))
        return feats

    def targets(self, feats: list[Feature]) -> dict:
        return {"labels": pad_rows([f.target for f in feats], IGNORE_INDEX)}

    # -- prediction ---------------------------------------------------------------------------------
    def predict(self, model: nn.Module, examples: list[TagExample], progress: bool = False) -> list[dict]:
        encs, owner = self.encode(examples)
        best: list[dict[int, tuple[int, int]]] = [{} for _ in examples]  # word -> (context, label id)
        for idx, preds in run_batches(
            model,
            self.tokenizer,
            encs,
            lambda o, b: o.logits.argmax(-1),
            progress=progress,
            max_tokens=self.max_tokens,
            desc="tagging",
        ):
            preds = preds.cpu().numpy()
            for row, i in enumerate(idx):
                enc = encs[i]
                content = [p for p, w in enumerate(enc.word_ids) if w is not None]
                lo, hi = content[0], content[-1]
                for w, pos in self.first_pieces(enc).items():
                    context = min(pos - lo, hi - pos)
                    if w not in best[owner[i]] or context > best[owner[i]][w][0]:
                        best[owner[i]][w] = (context, int(preds[row, pos]))
        results = []
        for ex, chosen in zip(examples, best, strict=True):
            tags = [self.id2label[chosen[w][1]] if w in chosen else "O" for w in range(len(ex.words))]
            results.append(self._result(ex, tags))
        return results

    @staticmethod
    def _result(ex: TagExample, tags: list[str]) -> dict:
        ents = []
        for kind, first, last in metrics.entities(tags):
            if ex.spans is not None:
                start, end = ex.spans[first][0], ex.spans[last][1]
                ents.append({"label": kind, "start": start, "end": end, "text": ex.text[start:end]})
            else:
                words = ex.words[first : last + 1]
                ents.append({"label": kind, "start": first, "end": last + 1, "text": " ".join(words)})
        return {"tokens": ex.words, "tags": tags, "entities": ents}

    def soft_outputs(self, out, batch: dict) -> list[Soft]:
        return [Soft(out.logits[batch["attention_mask"].bool()], "softmax")]  # (real tokens, tags)

    def label_with(self, examples: list[TagExample], predict: Callable[[list], list[dict]]) -> list[TagExample]:
        return [replace(e, tags=p["tags"]) for e, p in zip(examples, predict(examples), strict=True)]

    def score(self, predictions: list[dict], examples: list[TagExample]) -> dict:
        return metrics.entity_f1([e.tags for e in examples], [p["tags"] for p in predictions])

    def metric_names(self, examples: list[TagExample]) -> tuple[str, ...]:
        return ("precision", "recall", "f1", "token_accuracy")
