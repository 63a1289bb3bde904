"""Stage 1 of ``prepare``: corpus files read and tokenized sentence by sentence, over worker processes,
into a token store on disk that stage 2 reads memory-mapped (so corpora larger than memory pass)."""

from __future__ import annotations

import array
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..outputs import progress_bar
from ..text import has_cjk, is_cjk_char
from ..tokenizer import Tokenizer
from .sentences import read_pieces
from .workers import fork_pool, ordered

_TASK_PIECES = 512  # pieces per tokenization task (any value gives the same output)
_TASK_CHARS = 1 << 19  # ... or fewer when they are long


def word_continues(
    text: str, tokens: Sequence[str], offsets: Sequence[tuple[int, int]], segment: Callable | None
) -> list[bool]:
    """Per token of ``text``: does it continue the previous token's word?

    ``##`` pieces continue their word. Chinese characters are tokens of their own; with a segmenter
    (``segment(text) -> [(word, start, end)]``, e.g. ``jieba.tokenize``) a character continues the
    previous character when both lie in one segmenter word, as in Chinese-BERT-wwm.
    """
    flags = [t.startswith("##") for t in tokens]
    if segment is not None and has_cjk(text):
        word_of = [0] * len(text)
        for w, (_, start, end) in enumerate(segment(text)):
            word_of[start:end] = [w] * (end - start)
        cjk = [is_cjk_char(t) for t in tokens]
        for i in range(1, len(tokens)):
            if cjk[i] and cjk[i - 1]:
                flags[i] = word_of[offsets[i][0]] == word_of[offsets[i - 1][0]]
    return flags


def jieba_segment() -> Callable:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba.tokenize


@dataclass
class _Tokenized:
    tokens: np.ndarray  # flat token ids of the kept (non-empty) sentences
    word_continues: np.ndarray | None  # uint8, aligned with tokens (whole-word masking only)
    sentence_lengths: np.ndarray  # int64, per kept sentence
    piece_sentences: list[int]  # kept sentences per piece
    piece_ends: list[bool]  # does the piece end its document?


class _TokenStore:
    """Appends tokenized pieces to raw files (documents without sentences are dropped), then writes
    the offsets that the memory-mapped Corpus reads."""

    def __init__(self, directory: Path, token_dtype: np.dtype):
        self.directory = directory
        self.files = {
            name: (directory / f"{name}.bin").open("wb") for name in ("tokens", "word_continues", "sentence_lengths")
        }
        self.dtype = token_dtype
        self.document_sentences = array.array("q")  # 8 bytes a document: small next to its tokens
        self.open_document = 0  # sentences of the document still being read

    def add(self, part: _Tokenized) -> None:
        self.files["tokens"].write(part.tokens.astype(self.dtype).tobytes())
        if part.word_continues is not None:
            self.files["word_continues"].write(part.word_continues.astype(np.uint8).tobytes())
        self.files["sentence_lengths"].write(part.sentence_lengths.astype(np.int64).tobytes())
        for count, ends in zip(part.piece_sentences, part.piece_ends, strict=True):
            self.open_document += count
            if ends and self.open_document:
                self.document_sentences.append(self.open_document)
            if ends:
                self.open_document = 0

    def finish(self) -> None:
        """Close the raw files and write cumulative offsets: sentence -> tokens, document -> sentences."""
        for f in self.files.values():
            f.close()
        np.frombuffer(self.document_sentences, dtype=np.int64).tofile(self.directory / "document_sentences.bin")
        for lengths, offsets in (("sentence_lengths", "sentence_offsets"), ("document_sentences", "document_offsets")):
            counts = np.fromfile(self.directory / f"{lengths}.bin", dtype=np.int64)
            cumulative = np.lib.format.open_memmap(
                self.directory / f"{offsets}.npy", "w+", np.int64, (len(counts) + 1,)
            )
            cumulative[0] = 0
            np.cumsum(counts, out=cumulative[1:])
            cumulative.flush()
            del cumulative


@dataclass
class Corpus:
    """The token store, memory-mapped: sentence s is tokens[sentence_offsets[s]:sentence_offsets[s + 1]],
    document d is sentences document_offsets[d] to document_offsets[d + 1]."""

    tokens: np.ndarray
    word_continues: np.ndarray | None
    sentence_offsets: np.ndarray
    document_offsets: np.ndarray

    @classmethod
    def open(cls, directory: Path, token_dtype: np.dtype, with_words: bool) -> Corpus:
        # Plain ndarray views of the maps: slicing np.memmap objects costs more than the work per instance.
        def raw(name: str, dtype) -> np.ndarray:
            path = directory / f"{name}.bin"
            return np.asarray(np.memmap(path, dtype=dtype, mode="r")) if path.stat().st_size else np.zeros(0, dtype)

        return cls(
            tokens=raw("tokens", token_dtype),
            word_continues=raw("word_continues", np.uint8) if with_words else None,
            sentence_offsets=np.asarray(np.load(directory / "sentence_offsets.npy", mmap_mode="r")),
            document_offsets=np.asarray(np.load(directory / "document_offsets.npy", mmap_mode="r")),
        )

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1


_STATE: dict[str, Any] = {}  # per process: "tokenize" (tokenizer, segmenter, whole_word)


def _tokenize(pieces: list[tuple[list[str], bool]]) -> _Tokenized:
    """Stage 1 task: tokenize pieces of documents sentence by sentence; drop empty sentences."""
    tokenizer, segment, whole_word = _STATE["tokenize"]
    sentences = [s for piece, _ in pieces for s in piece]
    encodings = tokenizer.encode_batch(sentences, add_special_tokens=False) if sentences else []
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    tokens = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64, count=int(lengths.sum()))
    continues = None
    if whole_word:
        continues = np.fromiter(
            (
                c
                for s, e in zip(sentences, encodings, strict=True)
                for c in word_continues(s, e.tokens, e.offsets, segment)
            ),
            dtype=np.uint8,
            count=len(tokens),
        )
    per_piece = np.split(lengths, np.cumsum([len(p) for p, _ in pieces])[:-1])
    kept = [int((x > 0).sum()) for x in per_piece]
    return _Tokenized(tokens, continues, lengths[lengths > 0], kept, [ends for _, ends in pieces])


def _tokenize_tasks(files: Sequence[Path], bar: tqdm) -> Iterator[list[tuple[list[str], bool]]]:
    task: list[tuple[list[str], bool]] = []
    chars = 0
    read_before = 0
    for path in files:
        for sentences, ends, done in read_pieces(path):
            task.append((sentences, ends))
            chars += sum(len(s) for s in sentences)
            bar.update(read_before + done - bar.n)
            if len(task) >= _TASK_PIECES or chars >= _TASK_CHARS:
                yield task
                task, chars = [], 0
        read_before += path.stat().st_size
        bar.update(read_before - bar.n)
    if task:
        yield task


def tokenize_corpus(
    files: Sequence[Path],
    store_dir: Path,
    tokenizer: Tokenizer,
    segment: Callable | None,
    token_dtype: np.dtype,
    whole_word: bool,
    workers: int,
    progress: bool,
) -> Corpus:
    """Read and tokenize every file into the token store in ``store_dir``; return it memory-mapped."""
    _STATE["tokenize"] = (tokenizer, segment, whole_word)
    try:
        store = _TokenStore(store_dir, token_dtype)
        total_bytes = sum(p.stat().st_size for p in files)
        with (
            fork_pool(workers) as pool,
            progress_bar(progress, total=total_bytes, unit="B", unit_scale=True, desc="tokenizing") as bar,
        ):
            for part in ordered(pool, _tokenize, _tokenize_tasks(files, bar), 2 * workers):
                store.add(part)
        store.finish()
    finally:
        _STATE.clear()
    return Corpus.open(store_dir, token_dtype, with_words=whole_word)
