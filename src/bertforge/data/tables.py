"""Reading the user's task files: CSV, TSV, JSONL (and JSON arrays) into records, and CoNLL column
files into (tokens, tags) sentences. Every problem is a one-line error naming the file and line."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BertforgeError

MAX_FIELD_CHARS = 10_000_000  # csv's default field limit (128 KiB) is too small for long documents
FORMATS = (".csv", ".tsv", ".jsonl", ".json")  # what read_records reads (.tab, .ndjson too), for its error


@dataclass
class Record:
    fields: dict[str, Any]
    line: int  # 1-based line of the record's start in its file


def read_text(path: Path) -> str:
    """The file's text; a missing file or a non-UTF-8 byte is an error naming the file and the line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BertforgeError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BertforgeError(f"{path}: is a directory, not a file") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BertforgeError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[e.start]:02x})") from None


def read_records(path: str | Path, formats: tuple[str, ...] = FORMATS) -> list[Record]:
    """Records of a .csv, .tsv or .jsonl/.json file, by its suffix; ``formats``: what the caller reads
    (a task may read others beside these), as the error for another suffix lists them."""
    path = Path(path)
    suffix = path.suffix.lower()
    text = read_text(path)
    if suffix in (".jsonl", ".ndjson"):
        records = _jsonl(path, text)
    elif suffix == ".json":
        records = _json(path, text)
    elif suffix in (".csv", ".tsv", ".tab"):
        records = _delimited(path, text, "\t" if suffix != ".csv" else ",")
    else:
        raise BertforgeError(
            f"{path}: unknown file type {suffix or '(none)'}: use {', '.join(formats[:-1])} or {formats[-1]}"
        )
    if not records:
        raise BertforgeError(f"{path}: no records")
    return records


def _jsonl(path: Path, text: str) -> list[Record]:
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BertforgeError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise BertforgeError(f"{path}: line {n} is not a JSON object")
        records.append(Record(obj, n))
    return records


def _json(path: Path, text: str) -> list[Record]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise BertforgeError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise BertforgeError(f"{path}: expected a JSON array of objects")
    return [Record(r, i + 1) for i, r in enumerate(obj)]


def _delimited(path: Path, text: str, delimiter: str) -> list[Record]:
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as e:
        raise BertforgeError(f"{path}: line 1: {e}") from None
    header = [h.strip() for h in header]
    if len(set(header)) != len(header) or not all(header):
        raise BertforgeError(f"{path}: line 1: header has empty or repeated column names")
    records = []
    start = reader.line_num + 1
    try:
        for row in reader:
            if not row or not any(c.strip() for c in row):
                start = reader.line_num + 1
                continue
            if len(row) != len(header):
                raise BertforgeError(f"{path}: line {start}: {len(row)} fields, the header has {len(header)}")
            records.append(Record(dict(zip(header, row, strict=True)), start))
            start = reader.line_num + 1
    except csv.Error as e:
        raise BertforgeError(f"{path}: line {reader.line_num}: {e}") from None
    return records


def column(records: list[Record], name: str, path: Path, *, required: bool = True) -> list[Any]:
    """One column; an absent column is an error listing the ones that exist."""
    if name not in records[0].fields:
        if not required:
            return [None] * len(records)
        raise BertforgeError(f"{path}: no column {name!r} (columns: {', '.join(map(str, records[0].fields))})")
    values = []
    for r in records:
        if name not in r.fields:
            raise BertforgeError(f"{path}: line {r.line}: no field {name!r}")
        values.append(r.fields[name])
    return values


def texts(records: list[Record], name: str, path: Path) -> list[str]:
    """A text column: every value a non-empty string."""
    values = column(records, name, path)
    for r, v in zip(records, values, strict=True):
        if not isinstance(v, str):
            raise BertforgeError(f"{path}: line {r.line}: {name!r} is {type(v).__name__}, not text")
        if not v.strip():
            raise BertforgeError(f"{path}: line {r.line}: empty {name!r}")
    return values


def read_conll(path: str | Path) -> list[tuple[list[str], list[str], int]]:
    """CoNLL columns (token ... tag, whitespace-separated, blank line between sentences; -DOCSTART-
    lines skipped) -> (tokens, tags, first line) per sentence."""
    path = Path(path)
    sentences: list[tuple[list[str], list[str], int]] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags, first))
                tokens, tags = [], []
            continue
        if line.startswith("-DOCSTART-"):
            continue
        cols = line.split()
        if len(cols) < 2:
            raise BertforgeError(f"{path}: line {n}: expected a token and a tag")
        if not tokens:
            first = n
        tokens.append(cols[0])
        tags.append(cols[-1])
    if tokens:
        sentences.append((tokens, tags, first))
    if not sentences:
        raise BertforgeError(f"{path}: no sentences")
    return sentences
