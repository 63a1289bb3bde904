"""The tokenizers of the BERT families, on the Hugging Face ``tokenizers`` library.

WordPiece (BERT, DistilBERT, ELECTRA): BERT normalisation (control characters removed, whitespace unified,
CJK characters split into words of their own, lowercasing and accent stripping when uncased), whitespace and
punctuation splitting, ``##`` continuations, [UNK] for words past 100 characters, [CLS] A [SEP] B [SEP] with
segment ids 0/1. Byte-level BPE (RoBERTa): <s> A </s></s> B </s>, all segment ids 0. SentencePiece Unigram
(XLM-R: <s> A </s></s> B </s>, ids 0; ALBERT: [CLS] A [SEP] B [SEP], ids 0/1). A tokenizer.json keeps its own
normaliser, pre-tokeniser, template and decoder (a WordPiece one gets BERT's template).

``encode`` returns a ``tokenizers.Encoding``: ``ids``, ``type_ids``, ``attention_mask``, ``offsets``
(character spans in the original text, per sequence), ``word_ids``, ``tokens``, ``sequence_ids`` and,
with a stride, ``overflowing`` windows.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import AddedToken, Encoding, processors
from tokenizers import Tokenizer as _Backend

from .batch import encoder_batch
from .errors import BertforgeError
from .meter import current_meter
from .vocab import (
    MAX_WORD_CHARS,
    SPECIAL_TOKENS,
    bpe_backend,
    spm_backend,
    spm_flavour,
    train_backend,
    wordpiece_backend,
)

__all__ = ["MAX_WORD_CHARS", "SPECIAL_TOKENS", "Tokenizer", "read_vocab", "train_vocab"]

TRUNCATION = ("longest_first", "only_first", "only_second")
ROLES = ("pad", "unk", "cls", "sep", "mask")  # the order of SPECIAL_TOKENS
KIND_OF_MODEL = {"WordPiece": "wordpiece", "BPE": "bpe", "Unigram": "unigram"}
# each role's usual strings, looked for when tokenizer_config.json / special_tokens_map.json name no <role>_token
USUAL = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
}
# transformers classes saved per kind (the first is the default); others are saved as the generic fast tokenizer
CLASSES = {
    "wordpiece": ("BertTokenizer", "DistilBertTokenizer", "ElectraTokenizer"),
    "bpe": ("RobertaTokenizer",),
    "unigram": ("XLMRobertaTokenizer", "AlbertTokenizer"),
}
# the files a directory may hold, in the order they are read
DIRECTORY_FILES = (
    ("tokenizer.json",),
    ("vocab.json", "merges.txt"),
    ("sentencepiece.bpe.model",),
    ("spiece.model",),
    ("vocab.txt",),
)
SAVED_SETTINGS = ("do_lower_case", "keep_accents", "add_prefix_space", "trim_offsets")  # carried to the saved config


def _set_template(tk: _Backend, cls: str = "[CLS]", sep: str = "[SEP]") -> None:
    """BERT's [CLS] A [SEP] B [SEP], segment ids 0 then 1."""
    tk.post_processor = processors.TemplateProcessing(
        single=[f"{cls}:0", "$A:0", f"{sep}:0"],
        pair=[f"{cls}:0", "$A:0", f"{sep}:0", "$B:1", f"{sep}:1"],
        special_tokens=[(cls, tk.token_to_id(cls)), (sep, tk.token_to_id(sep))],
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


def _read_json(path: Path) -> dict:
    """A JSON object file, or {} when there is none."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BertforgeError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise BertforgeError(f"{path}: not a JSON object")
    return data


def _looks_cased(vocab: dict[str, int]) -> bool:
    """An uncased vocabulary was built from lowercased text, so it holds no capital letters."""
    capitals = sum(1 for t in vocab if not t.startswith("[") and any(c.isupper() for c in t))
    return capitals > 0.01 * len(vocab)


def _components(node) -> list[dict]:
    """Every ``{"type": ...}`` object in a part of a tokenizer.json (a Sequence's members included)."""
    if isinstance(node, dict):
        return ([node] if "type" in node else []) + [c for v in node.values() for c in _components(v)]
    if isinstance(node, list):
        return [c for v in node for c in _components(v)]
    return []


def _token_name(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken's dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _template_ends(backend: _Backend) -> tuple[str, str] | None:
    """The special tokens the post-processor puts around one text (cls, sep), when there are two."""
    e = backend.encode("")
    ends = [t for t, special in zip(e.tokens, e.special_tokens_mask, strict=True) if special]
    return (ends[0], ends[-1]) if len(ends) == 2 else None


def _find_specials(backend: _Backend, declared: dict, source: Path) -> dict[str, str]:
    """Role -> token: as the config files declare it (``declared``: key -> (value, file)), else the template's
    ends (cls, sep), else the usual strings of each family found in the vocabulary."""
    vocab = backend.get_vocab()
    ends = _template_ends(backend)
    found = {}
    for role in ROLES:
        value, where = declared.get(f"{role}_token", (None, ""))
        token = _token_name(value)
        if token is not None and token not in vocab:
            raise BertforgeError(f"{source}: {where}'s {role}_token {token!r} is not in the vocabulary")
        if token is None and ends and role in ("cls", "sep"):
            token = ends[role == "sep"]
        if token is None:
            token = next((t for t in USUAL[role] if t in vocab), None)
        if token is None:
            raise BertforgeError(
                f"{source}: no {role} token (none in its config, and no {' or '.join(USUAL[role])} in the vocabulary)"
            )
        found[role] = token
    return found


def _added_entry(token: AddedToken) -> dict:
    return {
        "content": token.content,
        "lstrip": token.lstrip,
        "normalized": token.normalized,
        "rstrip": token.rstrip,
        "single_word": token.single_word,
        "special": token.special,
    }


def _pick_file(directory: Path) -> Path:
    """The tokenizer file of a model directory (DIRECTORY_FILES' order)."""
    for names in DIRECTORY_FILES:
        if all((directory / n).is_file() for n in names):
            return directory / names[0]
    if (directory / "vocab.json").is_file():
        raise BertforgeError(f"{directory}: vocab.json without merges.txt (a byte-level BPE needs both)")
    raise BertforgeError(
        f"{directory}: no tokenizer.json, vocab.txt, vocab.json + merges.txt, sentencepiece.bpe.model or spiece.model"
        " in this directory"
    )


class Tokenizer:
    """A BERT-family tokenizer. Build with ``from_pretrained`` (a model directory, a tokenizer file or a
    registry name) or ``train_vocab``. ``cls_id`` is the sequence-start token ([CLS], <s>), ``sep_id`` the
    separator that ends each text ([SEP], </s>)."""

    def __init__(
        self,
        backend: _Backend,
        lowercase: bool = True,
        model_max_length: int = 512,
        *,
        specials: dict[str, str] | None = None,
        settings: dict | None = None,
    ):
        """``specials``: role (pad, unk, cls, sep, mask) -> token, BERT's by default; ``settings``: the
        tokenizer_config.json entries to save back (tokenizer_class, do_lower_case, add_prefix_space...)."""
        model = type(backend.model).__name__
        if model not in KIND_OF_MODEL:
            raise BertforgeError(f"not a WordPiece, BPE or Unigram tokenizer ({model})")
        self.kind = KIND_OF_MODEL[model]
        self._backend = backend
        self.lowercase = lowercase
        self.model_max_length = model_max_length
        self.specials = dict(specials or zip(ROLES, SPECIAL_TOKENS, strict=True))
        self.settings = dict(settings or {})
        self._variants: dict[tuple, _Backend] = {}
        self._lock = threading.Lock()
        vocab = backend.get_vocab()
        missing = [self.specials[r] for r in ROLES if self.specials[r] not in vocab]
        if missing:
            raise BertforgeError(f"vocabulary lacks the special token(s) {', '.join(missing)}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (vocab[self.specials[r]] for r in ROLES)
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
            backend = wordpiece_backend(vocab, lowercase, strip_accents, chinese_chars)
        except BertforgeError as e:
            raise BertforgeError(f"{source}: {e}" if source else str(e)) from None
        _set_template(backend)
        return cls(backend, lowercase, model_max_length)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, lowercase: bool | None = None) -> Tokenizer:
        """A model directory (tokenizer.json, else vocab.json + merges.txt, sentencepiece.bpe.model, spiece.model
        or vocab.txt, with tokenizer_config.json and special_tokens_map.json), one of those files, or a registry
        name such as ``minilm-l6`` or ``chinese-vocab``."""
        from .assets import resolve_path

        path = resolve_path(name_or_path)
        settings: dict = {}
        declared: dict = {}
        if path.is_dir():
            settings = _read_json(path / "tokenizer_config.json")
            declared = {
                k: (v, "special_tokens_map.json") for k, v in _read_json(path / "special_tokens_map.json").items()
            }
            declared |= {k: (v, "tokenizer_config.json") for k, v in settings.items()}  # the config's word is the last
            path = _pick_file(path)
        max_len = int(settings.get("model_max_length", 512))
        if max_len > 1_000_000:  # transformers writes a huge sentinel when no limit was set
            max_len = 512
        if lowercase is None and "do_lower_case" in settings:
            lowercase = bool(settings["do_lower_case"])
        kept = {k: settings[k] for k in ("tokenizer_class", *SAVED_SETTINGS) if k in settings}
        if path.name == "vocab.json":
            backend = bpe_backend(path, path.with_name("merges.txt"), bool(settings.get("add_prefix_space", False)))
        elif path.suffix == ".model":
            backend = spm_backend(path, spm_flavour(path, settings), settings)
        elif path.suffix == ".json":
            return cls._from_tokenizer_json(path, declared, lowercase, max_len, kept)
        else:
            tok = cls.from_vocab(
                path,
                lowercase=lowercase,
                strip_accents=settings.get("strip_accents"),
                chinese_chars=settings.get("tokenize_chinese_chars", True),
                model_max_length=max_len,
            )
            tok.settings = kept
            return tok
        if lowercase is None:
            lowercase = _lowercases(backend)
        return cls(backend, lowercase, max_len, specials=_find_specials(backend, declared, path), settings=kept)

    @classmethod
    def _from_tokenizer_json(
        cls, path: Path, declared: dict, lowercase: bool | None, max_len: int, settings: dict
    ) -> Tokenizer:
        """A tokenizers JSON file as it is, less its truncation and padding; WordPiece gets BERT's template."""
        try:
            backend = _Backend.from_file(str(path))
        except Exception as e:
            raise BertforgeError(f"{path}: not a tokenizers JSON file ({str(e).splitlines()[0]})") from None
        model = type(backend.model).__name__
        if model not in KIND_OF_MODEL:
            raise BertforgeError(f"{path}: not a WordPiece, BPE or Unigram tokenizer ({model})")
        backend.no_truncation()
        backend.no_padding()
        specials = _find_specials(backend, declared, path)
        if model == "WordPiece":
            if lowercase is None:
                lowercase = bool(getattr(backend.normalizer, "lowercase", True))
            _set_template(backend, specials["cls"], specials["sep"])
        elif lowercase is None:
            lowercase = _lowercases(backend)
        return cls(backend, lowercase, max_len, specials=specials, settings=settings)

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
                    room = max_length - backend.num_special_tokens_to_add(True)  # a pair's specials
                    if room < 1 or stride >= room:
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
        start = time.perf_counter()
        try:
            out = backend.encode_batch(inputs, is_pretokenized=is_pretokenized, add_special_tokens=add_special_tokens)
        except BaseException as e:  # tokenizers raises when a truncation strategy cannot be honoured, and panics
            # (a BaseException) when a pair leaves one text fewer tokens than the stride
            if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                raise
            said = str(e).split(" (note")[0]
            raise BertforgeError(
                f"cannot encode with max_length={max_length}, truncation={truncation}, stride={stride}: {said}"
            ) from None
        if (meter := current_meter()) is not None:  # a server's model call: its tokenization time and tokens
            meter.tokenize_s += time.perf_counter() - start
            meter.tokens += sum(len(e.ids) + sum(len(o.ids) for o in e.overflowing) for e in out)
        return out

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
        """The vocabulary in its kind's own files: a vocab.txt (WordPiece), or vocab.json + merges.txt in the
        directory ``path`` (BPE). A Unigram vocabulary has none: save_pretrained writes its tokenizer.json."""
        path = Path(path)
        if self.kind == "bpe":
            path.mkdir(parents=True, exist_ok=True)
            self._backend.model.save(str(path))
            return path
        if self.kind != "wordpiece":
            raise BertforgeError(f"a {self.kind} vocabulary has no file of its own: use save_pretrained")
        vocab = sorted(self.get_vocab().items(), key=lambda kv: kv[1])
        path.write_text("".join(f"{t}\n" for t, _ in vocab), encoding="utf-8")
        return path

    def tokenizer_class(self) -> str:
        """The transformers class saved in tokenizer_config.json: the one read with it, else the family's."""
        known = CLASSES[self.kind]
        read = str(self.settings.get("tokenizer_class", "")).removesuffix("Fast")
        if read in known:
            return read
        if self.kind == "bpe" and "ByteLevel" not in {c["type"] for c in _components(self._json()["pre_tokenizer"])}:
            return "PreTrainedTokenizerFast"  # RobertaTokenizer would rebuild it byte-level: keep the file as it is
        return "AlbertTokenizer" if self.kind == "unigram" and self.specials["cls"] == "[CLS]" else known[0]

    def _json(self) -> dict:
        """The backend as its tokenizer.json object."""
        return json.loads(self._backend.to_str())

    def _config(self) -> dict:
        """tokenizer_config.json's settings of a BPE or Unigram tokenizer, read off its pipeline."""
        tk = self._json()
        found = {
            c["type"]: c for part in ("normalizer", "pre_tokenizer", "post_processor") for c in _components(tk[part])
        }
        config = {k: v for k, v in self.settings.items() if k in SAVED_SETTINGS}
        if "ByteLevel" in found:
            config["add_prefix_space"] = found["ByteLevel"]["add_prefix_space"]
        if "Metaspace" in found:
            config["add_prefix_space"] = found["Metaspace"]["prepend_scheme"] != "never"
        if "RobertaProcessing" in found:
            config["trim_offsets"] = found["RobertaProcessing"]["trim_offsets"]
        if self.tokenizer_class() == "AlbertTokenizer":
            config["do_lower_case"] = "Lowercase" in found
            config["keep_accents"] = "StripAccents" not in found
        return config

    def save_pretrained(self, directory: str | Path) -> Path:
        """tokenizer.json, tokenizer_config.json and special_tokens_map.json as transformers writes them, and
        the vocabulary files (vocab.txt, or vocab.json + merges.txt)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.kind == "wordpiece":
            self.save_vocab(directory / "vocab.txt")
        elif self.kind == "bpe":
            self.save_vocab(directory)
        self._backend.save(str(directory / "tokenizer.json"))
        s = self.specials
        specials = {
            "unk_token": s["unk"],
            "sep_token": s["sep"],
            "pad_token": s["pad"],
            "cls_token": s["cls"],
            "mask_token": s["mask"],
        }
        if self.kind == "wordpiece":
            config = {
                "tokenizer_class": self.tokenizer_class(),
                "do_lower_case": self.lowercase,
                "tokenize_chinese_chars": True,
                "strip_accents": None,
                "model_max_length": self.model_max_length,
                **specials,
            }
        else:
            added = self._backend.get_added_tokens_decoder()  # their lstrip etc., which both files' strings lack
            specials = {"bos_token": s["cls"], "eos_token": s["sep"], **specials}
            config = {
                "tokenizer_class": self.tokenizer_class(),
                **self._config(),
                "model_max_length": self.model_max_length,
                **specials,
                "added_tokens_decoder": {str(i): _added_entry(t) for i, t in sorted(added.items())},
            }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
        return directory


def _lowercases(backend: _Backend) -> bool:
    """Whether the normaliser lowercases (a Lowercase step, or BertNormalizer's flag)."""
    steps = _components(json.loads(backend.to_str())["normalizer"])
    return any(c["type"] == "Lowercase" or (c["type"] == "BertNormalizer" and c.get("lowercase")) for c in steps)


def train_vocab(
    files: Sequence[str | Path],
    vocab_size: int,
    lowercase: bool | None = None,
    min_frequency: int = 2,
    show_progress: bool = True,
    *,
    kind: str = "wordpiece",
) -> Tokenizer:
    """Learn a vocabulary from text files: ``wordpiece`` with BERT's normalisation (``lowercase`` by default),
    ``bpe`` byte-level as RoBERTa's, ``unigram`` as XLM-R's (both keep case; ``min_frequency`` is WordPiece's
    and BPE's).

    Chinese characters are words of their own for WordPiece (as in Google's Chinese BERT), so a Chinese corpus
    yields a character vocabulary plus whatever non-CJK words and pieces it contains; BPE and Unigram learn
    multi-character pieces. ``show_progress``: the trainer's progress bars, on stderr when that is a terminal.
    """
    if lowercase is None:
        lowercase = kind == "wordpiece"
    backend = train_backend(files, vocab_size, kind, lowercase, min_frequency, show_progress)
    if kind == "wordpiece":  # re-created from the learned vocabulary so the result is exactly a vocab.txt tokenizer
        return Tokenizer.from_vocab(backend.get_vocab(), lowercase=lowercase)
    specials = dict(zip(ROLES, ("<pad>", "<unk>", "<s>", "</s>", "<mask>"), strict=True))
    return Tokenizer(backend, False, specials=specials)
