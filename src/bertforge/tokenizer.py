"""BERT's WordPiece tokenizer, on the Hugging Face ``tokenizers`` library.

BERT normalisation (control characters removed, whitespace unified, CJK characters split into words
of their own, lowercasing and accent stripping when uncased), whitespace and punctuation splitting,
greedy longest-match-first WordPiece with ``##`` continuations and [UNK] for words past 100
characters, and the [CLS] A [SEP] B [SEP] template with segment ids 0/1.

``encode`` returns a ``tokenizers.Encoding``: ``ids``, ``type_ids``, ``attention_mask``, ``offsets``
(character spans in the original text, per sequence), ``word_ids``, ``tokens``, ``sequence_ids`` and,
with a stride, ``overflowing`` windows.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from tokenizers import Encoding, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _Backend
from tokenizers.models import WordPiece

from .batch import encoder_batch
from .errors import BertforgeError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TRUNCATION = ("longest_first", "only_first", "only_second")
MAX_WORD_CHARS = 100  # longer words become [UNK]: transformers' limit (Google's tokenizer allows 200)


def _backend_from_vocab(
    vocab: dict[str, int], lowercase: bool, strip_accents: bool | None, chinese_chars: bool
) -> _Backend:
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise BertforgeError(f"vocabulary lacks the special token(s) {', '.join(missing)}")
    tk = _Backend(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=MAX_WORD_CHARS))
    # as in transformers: "[MASK]" in raw text is the mask token, and decode can skip the specials
    tk.add_special_tokens(list(SPECIAL_TOKENS))
    tk.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=chinese_chars, strip_accents=strip_accents, lowercase=lowercase
    )
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece(prefix="##")
    _set_template(tk)
    return tk


def _set_template(tk: _Backend) -> None:
    cls_id, sep_id = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def read_vocab(path: Path) -> dict[str, int]:
    """A vocab.txt: one token a line, the line number is the id."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise BertforgeError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise BertforgeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if lines and lines[-1] == "":
        lines.pop()
    vocab: dict[str, int] = {}
    for i, token in enumerate(lines):
        vocab.setdefault(token.rstrip("\r"), i)
    if not vocab:
        raise BertforgeError(f"{path}: empty vocabulary")
    return vocab


def _looks_cased(vocab: dict[str, int]) -> bool:
    """An uncased vocabulary was built from lowercased text, so it holds no capital letters."""
    capitals = sum(1 for t in vocab if not t.startswith("[") and any(c.isupper() for c in t))
    return capitals > 0.01 * len(vocab)


class Tokenizer:
    """WordPiece for BERT. Build with ``from_pretrained`` (a model directory, vocab.txt, tokenizer.json or
    a registry name) or ``train_vocab``."""

    def __init__(self, backend: _Backend, lowercase: bool = True, model_max_length: int = 512):
        self._backend = backend
        self.lowercase = lowercase
        self.model_max_length = model_max_length
        self._variants: dict[tuple, _Backend] = {}
        self._lock = threading.Lock()
        vocab = backend.get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise BertforgeError(f"vocabulary lacks the special token(s) {', '.join(missing)}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (vocab[t] for t in SPECIAL_TOKENS)
        self.special_ids = frozenset((self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id))

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_vocab(
        cls,
        vocab: dict[str, int] | str | Path,
        lowercase: bool | None = None,
        strip_accents: bool | None = None,
        chinese_chars: bool = True,
        model_max_length: int = 512,
    ) -> Tokenizer:
        """From a vocab.txt or a token -> id dict. ``lowercase=None`` infers it from the vocabulary."""
        source = None
        if not isinstance(vocab, dict):
            source = Path(vocab)
            vocab = read_vocab(source)
        if lowercase is None:
            lowercase = not _looks_cased(vocab)
        try:
            backend = _backend_from_vocab(vocab, lowercase, strip_accents, chinese_chars)
        except BertforgeError as e:
            raise BertforgeError(f"{source}: {e}" if source else str(e)) from None
        return cls(backend, lowercase, model_max_length)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, lowercase: bool | None = None) -> Tokenizer:
        """A model directory (tokenizer.json, else vocab.txt + tokenizer_config.json), a vocab.txt,
        a tokenizer.json, or a registry name such as ``minilm-l6`` or ``chinese-vocab``."""
        from .assets import resolve_path

        path = resolve_path(name_or_path)
        settings: dict = {}
        if path.is_dir():
            cfg = path / "tokenizer_config.json"
            if cfg.is_file():
                try:
                    settings = json.loads(cfg.read_text(encoding="utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise BertforgeError(f"{cfg}: not valid JSON ({e})") from None
            if (path / "tokenizer.json").is_file():
                path = path / "tokenizer.json"
            elif (path / "vocab.txt").is_file():
                path = path / "vocab.txt"
            else:
                raise BertforgeError(f"{path}: no tokenizer.json or vocab.txt in this directory")
        max_len = int(settings.get("model_max_length", 512))
        if max_len > 1_000_000:  # transformers writes a huge sentinel when no limit was set
            max_len = 512
        if lowercase is None and "do_lower_case" in settings:
            lowercase = bool(settings["do_lower_case"])
        if path.suffix == ".json":
            try:
                backend = _Backend.from_file(str(path))
            except Exception as e:
                raise BertforgeError(f"{path}: not a tokenizers JSON file ({str(e).splitlines()[0]})") from None
            if not isinstance(backend.model, WordPiece):
                raise BertforgeError(f"{path}: not a WordPiece tokenizer ({type(backend.model).__name__})")
            norm = backend.normalizer
            if lowercase is None:
                lowercase = bool(getattr(norm, "lowercase", True))
            tok = cls(backend, lowercase, max_len)
            _set_template(tok._backend)
            tok._backend.no_truncation()
            tok._backend.no_padding()
            return tok
        return cls.from_vocab(
            path,
            lowercase=lowercase,
            strip_accents=settings.get("strip_accents"),
            chinese_chars=settings.get("tokenize_chinese_chars", True),
            model_max_length=max_len,
        )

    # -- vocabulary -----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size()

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab()

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._backend.id_to_token(i)

    # -- encoding -------------------------------------------------------------------------------------
    def _variant(self, max_length: int | None, truncation: str, stride: int) -> _Backend:
        """A backend configured for these truncation settings: each is built once and never mutated
        again, so encoding is safe from many threads."""
        if truncation not in TRUNCATION:
            raise BertforgeError(f"unknown truncation {truncation!r} (choose from {', '.join(TRUNCATION)})")
        if stride < 0:
            raise BertforgeError(f"stride {stride} is negative: windows overlap by 0 tokens or more")
        key = (max_length, truncation, stride)
        backend = self._variants.get(key)
        if backend is None:
            with self._lock:
                backend = _Backend.from_str(self._backend.to_str())
                if max_length is not None:
                    if max_length < 4 or stride >= max_length - 3:
                        with_stride = f" with stride {stride}" if stride else ""
                        raise BertforgeError(f"max_length {max_length}{with_stride} leaves no room for text")
                    backend.enable_truncation(max_length, stride=stride, strategy=truncation)
                self._variants[key] = backend
        return backend

    def encode(
        self,
        text: str,
        pair: str | None = None,
        *,
        max_length: int | None = None,
        truncation: str = "longest_first",
        stride: int = 0,
        add_special_tokens: bool = True,
    ) -> Encoding:
        """One text (or pair). ``max_length`` truncates (counting special tokens); with ``stride`` the
        cut-off tokens come back as ``overflowing`` windows that overlap by ``stride`` tokens.
        ``longest_first`` trims a pair as transformers' fast tokenizer does: when both texts are long
        and the room is odd, the first keeps the smaller half ("a b c" + "d e f" in 8 tokens keeps
        "a b" + "d e f"), where Google's truncate_seq_pair keeps "a b c" + "d e"."""
        return self.encode_batch(
            [text],
            None if pair is None else [pair],
            max_length=max_length,
            truncation=truncation,
            stride=stride,
            add_special_tokens=add_special_tokens,
        )[0]

    def encode_batch(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        *,
        max_length: int | None = None,
        truncation: str = "longest_first",
        stride: int = 0,
        add_special_tokens: bool = True,
        is_pretokenized: bool = False,
    ) -> list[Encoding]:
        """Many texts (or pairs) at once, in parallel inside ``tokenizers``. With ``is_pretokenized``
        each text is a list of words (offsets are then within each word, ``word_ids`` index the list)."""
        for i, t in enumerate(texts):
            ok = isinstance(t, list) and all(isinstance(w, str) for w in t) if is_pretokenized else isinstance(t, str)
            if not ok:
                raise BertforgeError(
                    f"text {i} is {type(t).__name__}, not {'a list of words' if is_pretokenized else 'a string'}"
                )
        backend = self._variant(max_length, truncation, stride)
        if pairs is not None:
            if len(pairs) != len(texts):
                raise BertforgeError(f"{len(texts)} texts but {len(pairs)} pair texts")
            for i, t in enumerate(pairs):
                if not isinstance(t, str):
                    raise BertforgeError(f"pair text {i} is {type(t).__name__}, not a string")
            inputs: list = list(zip(texts, pairs, strict=True))
        else:
            inputs = list(texts)
        try:
            return backend.encode_batch(inputs, is_pretokenized=is_pretokenized, add_special_tokens=add_special_tokens)
        except BaseException as e:  # tokenizers raises when a truncation strategy cannot be honoured, and panics
            # (a BaseException) when a pair leaves one text fewer tokens than the stride
            if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                raise
            said = str(e).split(" (note")[0]
            raise BertforgeError(
                f"cannot encode with max_length={max_length}, truncation={truncation}, stride={stride}: {said}"
            ) from None

    def tokenize(self, text: str) -> list[str]:
        return self.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def to_tensors(
        self, encodings: Sequence[Encoding], pad_to_multiple_of: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Right-pad encodings into (B, T) input_ids, attention_mask and token_type_ids."""
        return encoder_batch(
            [e.ids for e in encodings], [e.type_ids for e in encodings], self.pad_id, pad_to_multiple_of
        )

    # -- saving ---------------------------------------------------------------------------------------
    def save_vocab(self, path: str | Path) -> Path:
        path = Path(path)
        vocab = sorted(self.get_vocab().items(), key=lambda kv: kv[1])
        path.write_text("".join(f"{t}\n" for t, _ in vocab), encoding="utf-8")
        return path

    def save_pretrained(self, directory: str | Path) -> Path:
        """vocab.txt, tokenizer.json, tokenizer_config.json and special_tokens_map.json, as transformers writes them."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_vocab(directory / "vocab.txt")
        self._backend.save(str(directory / "tokenizer.json"))
        specials = {
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
        }
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lowercase,
            "tokenize_chinese_chars": True,
            "strip_accents": None,
            "model_max_length": self.model_max_length,
            **specials,
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
        return directory


def _has_text(path: Path) -> bool:
    """Anything but whitespace in the file (read in blocks, stopping at the first text)."""
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            if block.decode("utf-8", "ignore").strip():
                return True
    return False


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 pointed at stderr for the block: what native code prints goes there too."""
    if sys.stdout is not None:
        sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def train_vocab(
    files: Sequence[str | Path],
    vocab_size: int,
    lowercase: bool = True,
    min_frequency: int = 2,
    show_progress: bool = True,
) -> Tokenizer:
    """Learn a WordPiece vocabulary from text files, with BERT's normalisation and pre-tokenisation.

    Chinese characters are words of their own (as in Google's Chinese BERT), so a Chinese corpus
    yields a character vocabulary plus whatever non-CJK words and pieces it contains. ``show_progress``:
    the trainer's progress bars, on stderr when that is a terminal.
    """
    for f in files:
        if not Path(f).is_file():
            raise BertforgeError(f"{f}: no such file")
    if vocab_size < len(SPECIAL_TOKENS) + 10:
        raise BertforgeError(f"vocab size {vocab_size} is too small")
    if not any(
        _has_text(Path(f)) for f in files
    ):  # as prepare-pretrain says it: a vocabulary of the specials alone is no use
        raise BertforgeError(f"{', '.join(map(str, files))}: no text (empty corpus)")
    # The trainer draws its bars on stderr, and only when that is a terminal, but ends each bar with a newline
    # on stdout (println!): shown on a terminal only, with those newlines sent to stderr beside the bars.
    show_progress = show_progress and os.isatty(2)
    tk = _Backend(WordPiece(unk_token="[UNK]", max_input_chars_per_word=MAX_WORD_CHARS))
    tk.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##",
        show_progress=show_progress,
    )
    try:
        with _stdout_to_stderr() if show_progress else nullcontext():
            tk.train([str(f) for f in files], trainer)
    except Exception as e:
        raise BertforgeError(f"vocabulary training failed: {str(e).splitlines()[0]}") from None
    # Re-create from the learned vocabulary so the result is exactly a vocab.txt tokenizer.
    return Tokenizer.from_vocab(tk.get_vocab(), lowercase=lowercase)
