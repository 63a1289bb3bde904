"""A model directory opened once: its path, config, tokenizer, saved task settings and pooling.

Every verb (embed, predict, evaluate, serve, finetune, export) starts from ``ModelDir.open``, so a
directory is resolved once and its config.json parsed once; damaged files are one-line errors here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .assets import resolve_model_dir
from .config import BertConfig
from .errors import BertforgeError
from .spec import TaskSpec
from .tokenizer import Tokenizer


@dataclass
class PoolingSettings:
    """How a sentence encoder turns token vectors into one vector (sentence-transformers' settings)."""

    pooling: str = "mean"
    normalize: bool = True
    max_length: int = 512


def pooling_settings(directory: Path) -> PoolingSettings:
    """What a sentence-transformers directory says about pooling (1_Pooling/config.json), normalisation
    (a Normalize module in modules.json) and length (sentence_bert_config.json); else mean, normalised, 512."""
    s = PoolingSettings()
    pooling_cfg = directory / "1_Pooling" / "config.json"
    if pooling_cfg.is_file():
        cfg = json.loads(pooling_cfg.read_text(encoding="utf-8"))
        if cfg.get("pooling_mode_cls_token"):
            s.pooling = "cls"
        elif cfg.get("pooling_mode_mean_tokens"):
            s.pooling = "mean"
    modules = directory / "modules.json"
    if modules.is_file():
        types = [m.get("type", "") for m in json.loads(modules.read_text(encoding="utf-8"))]
        s.normalize = any(t.endswith("Normalize") for t in types)
    sbert = directory / "sentence_bert_config.json"
    if sbert.is_file():
        s.max_length = int(json.loads(sbert.read_text(encoding="utf-8")).get("max_seq_length", s.max_length))
    return s


@dataclass
class ModelDir:
    """One model directory. ``saved`` is its "bertforge" task settings, or None (a bare encoder or a
    transformers task architecture: the task registry reads ``architecture`` then)."""

    path: Path
    config: BertConfig
    saved: TaskSpec | None

    @classmethod
    def open(cls, name_or_path: str | Path | ModelDir) -> ModelDir:
        if isinstance(name_or_path, ModelDir):
            return name_or_path
        path = resolve_model_dir(name_or_path)
        config = BertConfig.from_json(path / "config.json")
        settings = config.extra.get("bertforge")
        saved = None
        if settings is not None:
            try:
                saved = TaskSpec.from_dict(settings, "bertforge")
            except BertforgeError as e:
                raise BertforgeError(f"{path / 'config.json'}: {e}") from None
        return cls(path, config, saved)

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
    def pooling(self) -> PoolingSettings:
        return pooling_settings(self.path)

    def onnx_path(self, precision: str) -> Path:
        """Where `bertforge export onnx` puts this directory's graph."""
        return self.path / ("model.int8.onnx" if precision == "int8" else "model.onnx")
