"""bertforge: BERT from scratch in PyTorch.

    >>> import bertforge
    >>> model = bertforge.load_pretrained("minilm-l6")
    >>> tok = bertforge.Tokenizer.from_pretrained("minilm-l6")

Names are imported on first use, so ``bertforge --help`` and light imports do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import BertforgeError

_EXPORTS = {
    "BertConfig": "config",
    "BertModel": "model",
    "EncoderOutput": "model",
    "BertWithHead": "heads",
    "load_pretrained": "checkpoint",
    "load_with_report": "checkpoint",
    "save_pretrained": "checkpoint",
    "Tokenizer": "tokenizer",
    "train_vocab": "tokenizer",
    "Embedder": "infer",
    "embed": "infer",
    "save_sentence_transformer": "infer",
    "SentenceModules": "sentence",
    "finetune": "api",
    "evaluate_file": "api",
    "predict_file": "api",
    "load_task": "api",
    "pipeline": "pipelines",
}

__all__ = [
    "BertConfig",
    "BertModel",
    "BertWithHead",
    "BertforgeError",
    "Embedder",
    "EncoderOutput",
    "SentenceModules",
    "Tokenizer",
    "embed",
    "evaluate_file",
    "finetune",
    "load_pretrained",
    "load_with_report",
    "load_task",
    "pipeline",
    "predict_file",
    "save_pretrained",
    "save_sentence_transformer",
    "train_vocab",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bertforge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .api import evaluate_file, finetune, load_task, predict_file
    from .checkpoint import load_pretrained, load_with_report, save_pretrained
    from .config import BertConfig
    from .heads import BertWithHead
    from .infer import Embedder, embed, save_sentence_transformer
    from .model import BertModel, EncoderOutput
    from .pipelines import pipeline
    from .sentence import SentenceModules
    from .tokenizer import Tokenizer, train_vocab
