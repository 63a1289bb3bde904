"""Corpus files into documents of sentences (pretraining pairs sentences; text.split_sentences splits).

Files are read line by line (streaming, so any size passes): in text files every line is split into
sentences and a blank line ends a document; in JSONL files each record's ``text`` is a document.
Errors name the file and line.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import BertforgeError
from ..text import split_sentences

PIECE_SENTENCES = 4096  # a longer document is read in pieces of this many sentences (memory stays bounded)


# -- corpus files -----------------------------------------------------------------------------------
def expand_corpus(patterns: Iterable[str | Path]) -> list[Path]:
    """Files named by paths or glob patterns, in the order given (each pattern's matches sorted)."""
    files: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                raise BertforgeError(f"{text}: no file matches")
            files.extend(matches)
        else:
            path = Path(text)
            if path.is_dir():
                raise BertforgeError(f"{path}: is a directory, not a file")
            if not path.is_file():
                raise BertforgeError(f"{path}: no such file")
            files.append(path)
    return files


def _lines(path: Path) -> Iterator[tuple[int, str, int]]:
    """(line number, text, bytes read so far); a non-UTF-8 line is an error naming file and line."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise BertforgeError(f"{path}: no such file") from None
    done = 0
    with f:
        for n, raw in enumerate(f, 1):
            done += len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BertforgeError(f"{path}: line {n} is not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
            if n == 1:
                line = line.removeprefix("\ufeff")
            yield n, line.rstrip("\r\n"), done


def check_utf8(path: Path) -> None:
    """A file that is not UTF-8 text is an error naming the file and its first such line."""
    for _ in _lines(path):
        pass


def read_pieces(path: Path) -> Iterator[tuple[list[str], bool, int]]:
    """(sentences, whether they end a document, bytes read so far) for a text or JSONL file: whole
    documents, or a long document in pieces of up to PIECE_SENTENCES sentences."""
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    sentences: list[str] = []
    in_document = False  # has the current document any text yet (perhaps in pieces already sent)?
    for n, line, done in _lines(path):
        if jsonl:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise BertforgeError(f"{path}: line {n} is not JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise BertforgeError(f"{path}: line {n} has no string field 'text'")
            doc = [s for part in record["text"].split("\n") for s in split_sentences(part)]
            if doc:
                yield doc, True, done
        elif line.strip():
            sentences.extend(split_sentences(line))
            in_document = True
            if len(sentences) >= PIECE_SENTENCES:
                yield sentences, False, done
                sentences = []
        elif in_document:
            yield sentences, True, done
            sentences, in_document = [], False
    if in_document:
        yield sentences, True, path.stat().st_size


def read_documents(path: str | Path) -> Iterator[list[str]]:
    """The documents of a corpus file as lists of sentences.

    Text files: every line is split into sentences (a line that is one sentence stays one) and a
    blank line ends a document, so Google's one-sentence-a-line format and plain paragraphs both
    work. ``.jsonl``/``.ndjson``: one document per record, from its ``text`` field.
    """
    doc: list[str] = []
    for sentences, ends, _ in read_pieces(Path(path)):
        doc += sentences
        if ends:
            yield doc
            doc = []
