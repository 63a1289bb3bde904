"""Tokenizer backends for the BERT families, built from their vocabulary files or learned from text.

RoBERTa's byte-level BPE from vocab.json + merges.txt, XLM-R's and ALBERT's SentencePiece Unigram from a
``.model`` file (with the optional ``sentencepiece`` package), each as transformers builds it; and the three
trainers: WordPiece (BERT), byte-level BPE (RoBERTa) and Unigram (XLM-R).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _Backend
from tokenizers.models import BPE, Unigram, WordPiece

from .errors import BertforgeError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # BERT's, in the order of its vocab.txt
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # RoBERTa's and XLM-R's first ids, 0..4
KINDS = ("wordpiece", "bpe", "unigram")
MAX_WORD_CHARS = 100  # longer words become [UNK]: transformers' limit (Google's tokenizer allows 200)
SPM_INSTALL = "pip install 'bertforge[sentencepiece]'"


def wordpiece_backend(
    vocab: dict[str, int], lowercase: bool, strip_accents: bool | None, chinese_chars: bool
) -> _Backend:
    """BERT's tokenizer over a vocab.txt's entries (the [CLS] A [SEP] B [SEP] template is set by the caller)."""
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
    return tk


def _roberta_pipeline(tk: _Backend, add_prefix_space: bool = False, trim_offsets: bool = True) -> None:
    """Byte-level pre-tokenizer and decoder, <s> A </s></s> B </s> with all type ids 0, and <mask> taking the
    space before it (lstrip), as transformers' RobertaTokenizer."""
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ROBERTA_SPECIALS[:4]])
    tk.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
    tk.post_processor = processors.RobertaProcessing(
        ("</s>", tk.token_to_id("</s>")), ("<s>", tk.token_to_id("<s>")), trim_offsets, add_prefix_space
    )


def bpe_backend(vocab_path: Path, merges_path: Path, add_prefix_space: bool = False) -> _Backend:
    """RoBERTa's tokenizer from vocab.json + merges.txt, as transformers' converter builds it."""
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        text = merges_path.read_bytes()
    except FileNotFoundError as e:
        raise BertforgeError(f"{e.filename}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BertforgeError(f"{vocab_path}: not valid JSON ({e})") from None
    try:
        lines = [line.removesuffix("\r") for line in text.decode("utf-8").split("\n")]
    except UnicodeDecodeError as e:
        raise BertforgeError(f"{merges_path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise BertforgeError(f"{vocab_path}: not a token -> id JSON object")
    missing = [t for t in ROBERTA_SPECIALS if t not in vocab]
    if missing:
        raise BertforgeError(f"{vocab_path}: vocabulary lacks the special token(s) {', '.join(missing)}")
    merges = []
    for n, line in enumerate(lines, 1):
        if (n == 1 and line.startswith("#version")) or not line.strip():
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise BertforgeError(f"{merges_path}: line {n}: expected two tokens separated by a space")
        merges.append((pair[0], pair[1]))
    try:
        tk = _Backend(
            BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
        )
    except Exception as e:
        raise BertforgeError(
            f"{merges_path}: merges that {vocab_path.name} cannot hold ({str(e).splitlines()[0]})"
        ) from None
    _roberta_pipeline(tk, add_prefix_space)
    return tk


def _read_spm(path: Path):
    """The ModelProto of a SentencePiece .model file."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise BertforgeError(
            f"{path}: reading a SentencePiece model needs the sentencepiece package: {SPM_INSTALL}"
        ) from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except FileNotFoundError:
        raise BertforgeError(f"{path}: no such file") from None
    except Exception as e:
        raise BertforgeError(f"{path}: not a SentencePiece model ({str(e).splitlines()[0]})") from None
    if not proto.pieces:
        raise BertforgeError(f"{path}: not a SentencePiece model (no pieces)")
    if proto.trainer_spec.model_type != proto.trainer_spec.UNIGRAM:
        kind = proto.trainer_spec.ModelType.Name(proto.trainer_spec.model_type)
        raise BertforgeError(f"{path}: a SentencePiece {kind} model; only Unigram ones (XLM-R's, ALBERT's) are read")
    return proto


def _spm_pipeline(tk: _Backend, norms: list, add_prefix_space: bool) -> None:
    """transformers' SentencePiece pipeline: ``norms``, a split at whitespace, "▁" before each word."""
    scheme = "always" if add_prefix_space else "never"
    if norms:
        tk.normalizer = normalizers.Sequence(norms)
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)]
    )
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)


def spm_backend(path: Path, flavour: str, settings: dict) -> _Backend:
    """XLM-R's (``flavour="xlmr"``) or ALBERT's (``"albert"``) tokenizer from a SentencePiece Unigram model,
    as transformers' XLMRobertaTokenizer / AlbertTokenizer build it. ``settings``: tokenizer_config.json's."""
    proto = _read_spm(path)
    charsmap = proto.normalizer_spec.precompiled_charsmap
    pieces = [(p.piece, p.score) for p in proto.pieces]
    add_prefix_space = bool(settings.get("add_prefix_space", True))
    control = [p.piece for p in proto.pieces if p.type == 3]  # SentencePiece's control symbols are special
    if flavour == "xlmr":
        # fairseq's layout: <s> <pad> </s> <unk>, SentencePiece's pieces after its own three, <mask> last
        if [p for p, _ in pieces[:3]] != ["<unk>", "<s>", "</s>"]:
            first = " ".join(p for p, _ in pieces[:3])
            raise BertforgeError(f"{path}: not an XLM-R SentencePiece model (it starts {first}, not <unk> <s> </s>)")
        vocab = [(t, 0.0) for t in ROBERTA_SPECIALS[:4]] + pieces[3:] + [("<mask>", 0.0)]
        tk = _Backend(Unigram(vocab, unk_id=3, byte_fallback=False))
        _spm_pipeline(tk, [normalizers.Precompiled(charsmap)] if charsmap else [], add_prefix_space)
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ROBERTA_SPECIALS[:4]])
        tk.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", 0), ("</s>", 2)],
        )
        return tk
    tk = _Backend(Unigram(pieces, unk_id=proto.trainer_spec.unk_id, byte_fallback=False))
    norms = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
    if not settings.get("keep_accents", False):
        norms += [normalizers.NFKD(), normalizers.StripAccents()]
    if settings.get("do_lower_case", True):
        norms.append(normalizers.Lowercase())
    if charsmap:
        norms.append(normalizers.Precompiled(charsmap))
    _spm_pipeline(tk, norms, add_prefix_space)
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    tk.add_special_tokens(
        [AddedToken(t, lstrip=t == "[MASK]", special=True, normalized=False) for t in [unk, *control]]
    )
    if tk.token_to_id("[CLS]") is not None and tk.token_to_id("[SEP]") is not None:
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", tk.token_to_id("[CLS]")), ("[SEP]", tk.token_to_id("[SEP]"))],
        )
    return tk


def spm_flavour(path: Path, settings: dict) -> str:
    """Which family a .model file is: the config's tokenizer_class, else the file's name (spiece.model is ALBERT's)."""
    cls = str(settings.get("tokenizer_class", ""))
    if cls.startswith("XLMRoberta"):
        return "xlmr"
    if cls.startswith("Albert") or path.name == "spiece.model":
        return "albert"
    return "xlmr"


# -- training -----------------------------------------------------------------------------------------
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


def _untrained(kind: str, vocab_size: int, lowercase: bool, min_frequency: int, show_progress: bool):
    """An empty backend with its pipeline, and the trainer that fills it."""
    if kind == "wordpiece":
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
    elif kind == "bpe":
        tk = _Backend(BPE(continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(ROBERTA_SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
    else:
        tk = _Backend(Unigram())
        _spm_pipeline(tk, [], add_prefix_space=True)
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=list(ROBERTA_SPECIALS), unk_token="<unk>", show_progress=show_progress
        )
    return tk, trainer


def train_backend(
    files: Sequence[str | Path], vocab_size: int, kind: str, lowercase: bool, min_frequency: int, show_progress: bool
) -> _Backend:
    """Learn a vocabulary of ``kind`` from text files; the backend comes with its family's pipeline and template."""
    if kind not in KINDS:
        raise BertforgeError(f"unknown vocabulary kind {kind!r} (choose from {', '.join(KINDS)})")
    for f in files:
        if not Path(f).is_file():
            raise BertforgeError(f"{f}: no such file")
    smallest = {"wordpiece": len(SPECIAL_TOKENS) + 10, "bpe": 256 + len(ROBERTA_SPECIALS) + 1, "unigram": 16}[kind]
    if vocab_size < smallest:
        raise BertforgeError(
            f"vocab size {vocab_size} is too small" + (" (a byte-level BPE needs 262)" * (kind == "bpe"))
        )
    if lowercase and kind != "wordpiece":
        raise BertforgeError(f"a {kind} vocabulary keeps case, as RoBERTa's and XLM-R's do: lowercase the corpus first")
    if not any(_has_text(Path(f)) for f in files):  # as prepare-pretrain says it: the specials alone are no use
        raise BertforgeError(f"{', '.join(map(str, files))}: no text (empty corpus)")
    # The trainer draws its bars on stderr, and only when that is a terminal, but ends each bar with a newline
    # on stdout (println!): shown on a terminal only, with those newlines sent to stderr beside the bars.
    show_progress = show_progress and os.isatty(2)
    tk, trainer = _untrained(kind, vocab_size, lowercase, min_frequency, show_progress)
    try:
        with _stdout_to_stderr() if show_progress else nullcontext():
            tk.train([str(f) for f in files], trainer)
    except Exception as e:
        raise BertforgeError(f"vocabulary training failed: {str(e).splitlines()[0]}") from None
    if kind == "bpe":
        _roberta_pipeline(tk)
    elif kind == "unigram":
        tk.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
        )
    return tk
