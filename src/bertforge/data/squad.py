"""Question files for extractive QA: SQuAD JSON (data / paragraphs / qas), or JSONL of
``{id?, question, context, answers?}`` with ``answers`` as ``{"text": [...], "answer_start": [...]}``,
a list of ``{text, answer_start}`` or a list of texts.

An empty answer list, or ``is_impossible``, makes a question unanswerable. An answer whose text is not
at its ``answer_start`` (or that has none) is moved to the nearest occurrence of its text in the context;
one whose text does not occur is left out of training. Both are counted in one warning. Errors name the
file and line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BertforgeError
from . import tables

log = logging.getLogger("bertforge")


@dataclass
class GoldAnswer:
    text: str
    start: int | None  # character offset in the context; None: not given (before check_offsets) or not in it


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[GoldAnswer] | None  # None: unlabelled; []: unanswerable
    line: int | None = None  # 1-based line in a JSONL file (None for SQuAD JSON: see ``id``)
    fields: dict = field(default_factory=dict)  # what a prediction line repeats of the input

    @property
    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else f"question {self.id!r}"


class _Missing(Exception):
    """A problem in a SQuAD file, before its line is known."""

    def __init__(self, obj: Any, message: str):
        super().__init__(message)
        self.obj, self.message = obj, message


def _object_starts(text: str) -> tuple[Any, dict[int, int]]:
    """The parsed JSON and, for every object in it, the character where it starts (keyed by ``id``).
    A pure-Python parse, so slow: it runs only to place an error."""
    starts: dict[int, int] = {}
    decoder = json.JSONDecoder()

    def parse_object(s_and_end, *args):
        obj, end = json.decoder.JSONObject(s_and_end, *args)
        starts[id(obj)] = s_and_end[1] - 1
        return obj, end

    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder.decode(text), starts


def _field(obj: Any, name: str, kind: type, what: str = "") -> Any:
    """``obj[name]``, checked: a missing field, a wrong type or empty text is a ``_Missing``."""
    where = f"{what}: " if what else ""
    if not isinstance(obj, dict):
        raise _Missing(obj, f"{where}{type(obj).__name__}, not an object")
    if name not in obj:
        raise _Missing(obj, f"{where}no {name!r} field")
    value = obj[name]
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        shown = "empty" if isinstance(value, str) else type(value).__name__
        raise _Missing(obj, f"{where}{name!r} is {shown}, not {'text' if kind is str else kind.__name__}")
    return value


def _answers(raw: Any, is_impossible: bool, where: Any) -> list[GoldAnswer] | None:
    """Answers as SQuAD JSON or HF datasets write them, or as plain texts (found in the context later);
    ``where`` is the object errors point at."""
    if raw is None:
        return [] if is_impossible else None
    if isinstance(raw, dict):
        texts, starts = raw.get("text"), raw.get("answer_start")
        if starts is None and isinstance(texts, list):
            starts = [None] * len(texts)
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise _Missing(where, "'answers' needs lists 'text' and 'answer_start' of the same length")
        pairs = list(zip(texts, starts, strict=True))
    elif isinstance(raw, list):
        pairs = []
        for a in raw:
            if isinstance(a, str):
                pairs.append((a, None))
            elif isinstance(a, dict) and "text" in a:
                pairs.append((a["text"], a.get("answer_start")))
            else:
                raise _Missing(where, "each answer needs a 'text' (and an 'answer_start'), or is a text")
    else:
        raise _Missing(
            where,
            "'answers' must be {text: [...], answer_start: [...]}, a list of {text, answer_start} or a list of texts",
        )
    out = []
    for text, start in pairs:
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int | None):
            raise _Missing(where, f"answer {text!r} at {start!r}: 'text' must be text and 'answer_start' an integer")
        out.append(GoldAnswer(text, start))
    return [] if is_impossible else out


def _squad_examples(top: Any) -> list[QAExample]:
    examples = []
    for a, article in enumerate(_field(top, "data", list, "the file")):
        for p, paragraph in enumerate(_field(article, "paragraphs", list, f"article {a}")):
            context = _field(paragraph, "context", str, f"paragraph {p} of article {a}")
            for q, qa in enumerate(_field(paragraph, "qas", list, f"paragraph {p} of article {a}")):
                what = f"question {q} of paragraph {p} of article {a}"
                qid = _field(qa, "id", object, what)
                if not isinstance(qid, (str, int)) or isinstance(qid, bool):
                    raise _Missing(qa, f"{what}: 'id' is {type(qid).__name__}, not text")
                qid = str(qid)
                question = _field(qa, "question", str, what)
                answers = _answers(qa.get("answers"), bool(qa.get("is_impossible", False)), qa)
                examples.append(QAExample(qid, question, context, answers, None, {"id": qid, "question": question}))
    return examples


def read_squad(path: Path, text: str) -> list[QAExample]:
    """SQuAD JSON. A problem is reported with the line of the object it is in."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise BertforgeError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    try:
        return _squad_examples(obj)
    except _Missing:
        located, starts = _object_starts(text)
        try:
            _squad_examples(located)
        except _Missing as e:
            pos = starts.get(id(e.obj))
            where = f"line {text.count(chr(10), 0, pos) + 1}: " if pos is not None else ""
            raise BertforgeError(f"{path}: {where}{e.message}") from None
        raise AssertionError("a SQuAD problem that went away on re-reading") from None


FORMATS = (*tables.FORMATS[:-1], ".json (SQuAD, or a list of records)")


def read_jsonl(path: Path) -> list[QAExample]:
    examples = []
    for r in tables.read_records(path, FORMATS):
        f = r.fields
        try:
            question = _field(f, "question", str)
            context = _field(f, "context", str)
            answers = _answers(f.get("answers"), bool(f.get("is_impossible", False)), f)
        except _Missing as e:
            raise BertforgeError(f"{path}: line {r.line}: {e.message}") from None
        qid = str(f["id"]) if f.get("id") is not None else str(r.line)
        examples.append(QAExample(qid, question, context, answers, r.line, dict(f)))
    return examples


def _is_squad(path: Path, text: str) -> bool:
    return path.suffix.lower() == ".json" and text.lstrip().startswith("{") and '"paragraphs"' in text


def locate(context: str, text: str, start: int | None) -> int | None:
    """Where ``text`` is in ``context``: at ``start`` if it is there, else its nearest occurrence
    (the first, without ``start``)."""
    if start is None:
        start = 0
    elif text and start >= 0 and context.startswith(text, start):
        return start
    best, pos = None, context.find(text) if text else -1
    while pos != -1:
        if best is None or abs(pos - start) < abs(best - start):
            best = pos
        pos = context.find(text, pos + 1)
    return best


def check_offsets(examples: list[QAExample], path: Path) -> None:
    """Move answers that are not at their offset to the nearest occurrence of their text; warn once
    with the counts (and the first ids) of those moved and of those not found at all."""
    moved: list[str] = []
    missing: list[str] = []
    for e in examples:
        for a in e.answers or []:
            found = locate(e.context, a.text, a.start)
            if found is None:
                missing.append(e.id)
            elif a.start is not None and found != a.start:  # (a bare text has no offset to miss)
                moved.append(e.id)
            a.start = found
    if moved or missing:
        total = sum(len(e.answers or []) for e in examples)
        first = list(dict.fromkeys(moved + missing))[:3]
        log.warning(
            "%s: %d of %d answers are not at their answer_start: %d moved to the nearest occurrence of their "
            "text, %d not found in the context (not trained on); first question ids: %s",
            path,
            len(moved) + len(missing),
            total,
            len(moved),
            len(missing),
            ", ".join(first),
        )


def read_questions(path: Path) -> list[QAExample]:
    """The questions of a SQuAD JSON or JSONL file (answers not yet located: ``check_offsets``)."""
    text = tables.read_text(path)
    examples = read_squad(path, text) if _is_squad(path, text) else read_jsonl(path)
    if not examples:
        raise BertforgeError(f"{path}: no questions")
    return examples


def input_question(x: dict) -> QAExample:
    """One question given as ``{"question", "context"[, "id"]}`` (Python or HTTP); a bad one raises."""
    try:
        question = _field(x, "question", str, "the input")
        context = _field(x, "context", str, "the input")
    except _Missing as e:
        raise BertforgeError(e.message) from None
    return QAExample(str(x.get("id", "")), question, context, None)


def retrieval_split(path: str | Path, out: str | Path, test_share: float = 0.2) -> dict[str, int]:
    """A SQuAD v1.1 file as retrieval data, each question's one relevant document its own paragraph, the
    articles split deterministically (by a hash of the title, so adding articles moves none):
    OUT/train/pairs.jsonl (question, paragraph) for `finetune embed` or `mine-negatives`, and the train
    and test articles each as a retrieval set (OUT/train, OUT/test: corpus.jsonl, queries.jsonl)."""
    import hashlib

    from ..retrieval import write_retrieval_set

    path, out = Path(path), Path(out)
    top = json.loads(tables.read_text(path))
    parts: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for a, article in enumerate(_field(top, "data", list)):
        title = str(article.get("title", a))
        digest = int(hashlib.sha256(title.encode("utf-8")).hexdigest()[:8], 16)
        corpus, queries = parts["test" if digest % 1000 < test_share * 1000 else "train"]
        for p, paragraph in enumerate(_field(article, "paragraphs", list)):
            doc = f"{title}/{p}"
            corpus.append((doc, _field(paragraph, "context", str)))
            queries += [(str(q["id"]), q["question"].strip(), [doc]) for q in paragraph["qas"] if q["question"].strip()]
    counts = {}
    for name, (corpus, queries) in parts.items():
        write_retrieval_set(out / name, corpus, queries)
        counts[f"{name}_paragraphs"], counts[f"{name}_questions"] = len(corpus), len(queries)
    text = dict(parts["train"][0])
    rows = [json.dumps({"anchor": q, "positive": text[rel[0]]}, ensure_ascii=False) for _, q, rel in parts["train"][1]]
    (out / "train" / "pairs.jsonl").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return counts
