"""Predictions from Python: load a model directory's task once, validate inputs, predict.

>>> pipe = bertforge.pipeline("classify", "runs/sentiment")
>>> pipe("a great film"), pipe(["a", "b"]), pipe([("premise", "hypothesis")])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import BertforgeError
from .modeldir import ModelDir
from .tasks import for_model


class Pipeline:
    """``pipe(x)`` or ``pipe([x, ...])`` for whatever the model does: texts, pairs, ``{"question", "context"}``,
    lists of words (tagging), documents. ``settings`` override the task's (qa: ``null_threshold``;
    summaries: ``top_k``, ``max_words``...). "summarize" with a model not fine-tuned for it (e.g.
    ``minilm-l6``) summarises without training: ``method`` centroid (default), cluster or lead."""

    def __init__(
        self,
        task: str | None,
        model: str | Path | ModelDir,
        device: str | None = None,
        precision: str = "fp32",
        runtime: str = "torch",
        compile: bool = False,
        **settings: Any,
    ):
        md = ModelDir.open(model)
        self.task = for_model(md, task, **settings)
        self.model = self.task.load(md, device, precision, runtime, compile)

    def __call__(self, inputs: Any) -> Any:
        single = not isinstance(inputs, list)
        preds = self.predict(self.examples([inputs] if single else inputs))
        return preds[0] if single else preds

    def examples(self, items: list) -> list:
        """Each input as the task's example: a bad one raises here, before any model runs."""
        out = []
        for i, x in enumerate(items):
            if isinstance(x, str) and not x.strip():
                raise BertforgeError(f"input {i}: an empty text")
            out.append(self.task.example(x, f"input {i}"))
        return out

    def predict(self, examples: list) -> list:
        """Predictions for ``examples`` (from ``examples()``), in order, through the one inference path."""
        return list(self.task.predict(self.model, examples))


def pipeline(task: str | None, model: str | Path, device: str | None = None, **settings: Any) -> Pipeline:
    """``pipeline("classify", "runs/sentiment")("a great film")``,
    ``pipeline("qa", "runs/squad")({"question": ..., "context": ...})``,
    ``pipeline("summarize", "minilm-l6")(text)``."""
    return Pipeline(task, model, device, **settings)
