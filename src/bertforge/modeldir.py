"""A model directory opened once: its path, config, tokenizer, saved task settings and sentence modules.

Every verb (embed, predict, evaluate, serve, finetune, export) starts from ``ModelDir.open``, so a
directory is resolved once and its config.json parsed once; damaged files are one-line errors here.
A sentence-transformers directory whose Transformer module lives in a subfolder opens at that folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .assets import resolve_model_dir, resolve_path
from .config import BertConfig
from .errors import BertforgeError
from .sentence import SentenceModules, encoder_folder, read_sentence_dir
from .spec import TaskSpec
from .tokenizer import Tokenizer

# What a sentence encoder does after its encoder (``.pooling``, ``.normalize``, ``.max_length`` as before,
# now every sentence-transformers module): the older name of ``sentence.SentenceModules``.
PoolingSettings = SentenceModules


def pooling_settings(directory: Path) -> SentenceModules:
    """What a directory's sentence-transformers modules do after the encoder (modules.json, 1_Pooling,
    2_Dense, Normalize, its prompts and length); else mean pooling, normalised."""
    return read_sentence_dir(Path(directory))


@dataclass
class ModelDir:
    """One model directory. ``saved`` is its "bertforge" task settings, or None (a bare encoder or a
    transformers task architecture: the task registry reads ``architecture`` then). ``root`` is the
    directory opened: ``path`` itself, or the sentence-transformers directory ``path`` is the encoder of."""

    path: Path
    config: BertConfig
    saved: TaskSpec | None
    root: Path | None = None

    def __post_init__(self) -> None:
        if self.root is None:
            self.root = self.path

    @classmethod
    def open(cls, name_or_path: str | Path | ModelDir) -> ModelDir:
        if isinstance(name_or_path, ModelDir):
            return name_or_path
        root = resolve_path(name_or_path)
        root = root.parent if root.is_file() else root
        folder = encoder_folder(root)
        if folder and not (root / folder / "config.json").is_file():
            raise BertforgeError(f"{root / 'modules.json'}: its Transformer folder {folder!r} has no config.json")
        path = resolve_model_dir(root / folder)
        config = BertConfig.from_json(path / "config.json")
        settings = config.extra.get("bertforge")
        saved = None
        if settings is not None:
            try:
                saved = TaskSpec.from_dict(settings, "bertforge")
            except BertforgeError as e:
                raise BertforgeError(f"{path / 'config.json'}: {e}") from None
        return cls(path, config, saved, root)

    @property
    def architecture(self) -> str:
        return (self.config.architectures or ["BertModel"])[0]

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The directory's tokenizer, refused when it has ids past the word embeddings (a token beyond
        them would fail only when a text holds it)."""
        tokenizer = Tokenizer.from_pretrained(self.path)
        size = max(tokenizer.get_vocab().values()) + 1
        if size > self.config.vocab_size:
            raise BertforgeError(
                f"{self.path}: the tokenizer has {size} entries, more than config.json's vocab_size "
                f"{self.config.vocab_size}: use the vocabulary the model was trained with"
            )
        return tokenizer

    @cached_property
    def sentence(self) -> SentenceModules:
        """Its sentence-transformers modules (Pooling, Dense, Normalize), prompts, similarity and length."""
        return read_sentence_dir(self.root, self.config.hidden_size)

    @property
    def pooling(self) -> SentenceModules:
        return self.sentence

    def onnx_path(self, precision: str) -> Path:
        """Where `bertforge export onnx` puts this directory's graph."""
        return self.path / ("model.int8.onnx" if precision == "int8" else "model.onnx")
