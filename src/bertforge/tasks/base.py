"""What every fine-tuning task shares: its settings (stored in the model's config.json), batching of
encoded features for the training loop, evaluation through the prediction path, and export.

A task subclass says how to read examples, how to turn them into features (token ids and targets),
its loss, how to turn model outputs into predictions, and its metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import Tensor, nn

from ..batch import encoder_batch
from ..data import tables
from ..errors import BertforgeError
from ..heads import IGNORE_INDEX
from ..infer import load_for_inference
from ..spec import TaskSpec
from ..tokenizer import Tokenizer


@dataclass
class Soft:
    """One output a student matches: (rows, outputs) ``logits``, compared as a distribution over its last
    axis (``softmax``: KL at a temperature), as independent probabilities (``sigmoid``) or as numbers (``mse``)."""

    logits: Tensor
    kind: str


@dataclass
class Feature:
    ids: list[int]
    type_ids: list[int]
    target: Any  # int, float, list (multi-label or per-token), or a dict of targets
    example: int  # index of the example it came from (several windows share one)


def unknown_labels_error(
    path: Path, kind: str, unknown: dict[str, int], known: set[str], held_out: float | None
) -> BertforgeError:
    """The error for labels (``kind``: label, tag) the model does not know, each with its first line;
    with ``held_out`` they are in the training file, but only in the share held out for validation."""
    shown = ", ".join(f"{lab!r} (line {n})" for lab, n in list(unknown.items())[:5])
    if held_out is None:
        return BertforgeError(f"{path}: {kind}s the model does not know: {shown}; it knows {', '.join(sorted(known))}")
    one = len(unknown) == 1
    what = f"{kind} {shown} occurs" if one else f"{kind}s {shown} occur"
    return BertforgeError(
        f"{path}: {what} only in the {held_out:.0%} held out for validation: "
        f"add examples of {'it' if one else 'them'}, or pass --valid"
    )


def settings_of(cls: type, given: dict[str, Any], task: str, keep_none: bool = False) -> Any:
    """A task's settings dataclass from saved or given values (None: the default, unless ``keep_none``);
    unknown names are an error listing the known ones."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(given) - set(names)
    if unknown:
        raise BertforgeError(f"unknown {task} settings: {', '.join(sorted(unknown))} (known: {', '.join(names)})")
    return cls(**{k: v for k, v in given.items() if keep_none or v is not None})


def request_examples(task, inputs: list, field: str) -> list:
    """Each item of a request's ``field`` as the task's example; a bad one is an error naming it."""
    out = []
    for i, x in enumerate(inputs):
        try:
            out.append(task.example(x, "input 0"))
        except BertforgeError as e:
            raise BertforgeError(f"{field}[{i}]: {e}") from None
    return out


class FinetuneTask:
    """Base of every fine-tuning task; subclasses fill in the task-specific parts. The faces (CLI,
    server, pipeline) read only what is declared here: they never name a task."""

    name: ClassVar[str]
    head: ClassVar[str]  # the head in heads.HEADS (its ONNX outputs too: onnx.EXPORTABLE_HEADS)
    select_metric: ClassVar[str]  # the validation metric that picks the best checkpoint
    default_max_length: ClassVar[int] = 128  # tokens per window when the user gives none
    endpoint: ClassVar[str]  # served at /v1/<endpoint>
    about: ClassVar[str]  # what its endpoint answers (the server's docs)
    batch_kind: ClassVar[str] = "predict"  # the server's model calls, as /metrics labels them
    Settings: ClassVar[type | None] = None  # the task's own settings (a dataclass, saved as TaskSpec.extra)
    Request: ClassVar[type[BaseModel]]  # the HTTP request and response bodies
    Response: ClassVar[type[BaseModel]]
    distill_hard: ClassVar[bool] = (
        True  # a student learns from the data's labels too (distill.py), not only its teacher
    )
    echoed: ClassVar[tuple[str, ...]] = ()  # prediction fields that repeat their input (not a clash with it)

    def __init__(self, spec: TaskSpec, tokenizer: Tokenizer, id2label: dict[int, str] | None = None):
        self.spec = spec
        self.tokenizer = tokenizer
        self.id2label = id2label or {}
        self.settings: Any = None  # an instance of the task's Settings, where it has them
        self.max_tokens: int | None = (
            None  # padded tokens per inference batch (serve's --max-batch-tokens); None: the device's
        )
        self.train_features: list[Feature] = []
        self.valid_examples: list = []

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    # -- the faces: one input from Python or HTTP, predictions to a response ------------------------------
    def load(
        self, md, device: str | None = None, precision: str = "fp32", runtime: str = "torch", compile: bool = False
    ):
        """The fine-tuned model of ``md`` (a ModelDir) ready to predict, at a precision or as its ONNX graph."""
        return load_for_inference(md, self.head, device, precision, runtime, compile)

    def example(self, x: Any, where: str) -> Any:
        """One input given in Python (or one item of a request) as the task's example; a bad one raises."""
        raise NotImplementedError

    def from_request(self, body: BaseModel, limits) -> list:
        """A request body's examples; ``limits`` (the server's) checks counts and texts as they are met."""
        raise NotImplementedError

    def respond(self, predictions: list[dict]) -> dict:
        return {"predictions": list(predictions)}

    def input_fields(self, path: Path, examples: list) -> list[dict]:
        """What each prediction line repeats of its input: the file's records."""
        return [r.fields for r in tables.read_records(path)]

    # -- the parts each task defines ------------------------------------------------------------------
    def read(self, path: Path, labelled: bool = False) -> list:
        """Examples from a user's file (errors name the file, line and column); ``labelled`` requires
        the targets (training, evaluation), else they are read when present."""
        raise NotImplementedError

    def fit_labels(self, examples: list, path: Path) -> None:
        """Infer the label set from training examples (tasks with labels)."""

    def check_labels(self, examples: list, path: Path, held_out: float | None = None) -> None:
        """Raise if ``examples`` carry a label the model does not know; ``held_out``: they are that share
        of the training file, held out for validation (no --valid)."""

    def features(self, examples: list, train: bool) -> list[Feature]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model(**batch).loss

    def predict(self, model: nn.Module, examples: list, progress: bool = False) -> list[dict]:
        raise NotImplementedError

    def score(self, predictions: list[dict], examples: list) -> dict:
        raise NotImplementedError

    def metric_names(self, examples: list) -> tuple[str, ...]:
        """The metrics ``score`` reports on ``examples`` that can pick the best model (``--metric``):
        measures of quality, not counts or thresholds."""
        raise NotImplementedError

    def problem_type(self) -> str | None:
        return None

    def load_model(self, md) -> nn.Module:
        """The model to fine-tune: the encoder of ``md`` (a ModelDir or a path), and its head if it has
        this task's, under this task's head."""
        from ..checkpoint import load_pretrained

        return load_pretrained(md, head=self.head, id2label=self.id2label, problem_type=self.problem_type())

    # -- the training loop's Task protocol ------------------------------------------------------------
    def set_data(self, train_examples: list, valid_examples: list) -> None:
        self.train_features = self.features(train_examples, train=True)
        self.valid_examples = valid_examples
        if not self.train_features:
            raise BertforgeError("no training features")

    def num_train(self) -> int:
        return len(self.train_features)

    def size(self, index: int) -> tuple[int, int]:
        return 1, len(self.train_features[index].ids)

    def collate(self, indices: list[int], rng: np.random.Generator | None = None) -> dict[str, Tensor]:
        feats = [self.train_features[i] for i in indices]
        batch = encoder_batch([f.ids for f in feats], [f.type_ids for f in feats], self.tokenizer.pad_id)
        batch.update(self.targets(feats))
        return batch

    def targets(self, feats: list[Feature]) -> dict[str, Tensor]:
        """The target tensors of a batch (default: ``labels`` from scalar targets)."""
        values = [f.target for f in feats]
        dtype = torch.float32 if isinstance(values[0], (float, list)) else torch.long
        return {"labels": torch.tensor(values, dtype=dtype)}

    def counts(self, batch: dict[str, Tensor]) -> dict[str, int]:
        labels = batch["labels"]
        if labels.dtype == torch.long and labels.dim() == 2:  # per-token targets
            return {"loss": int((labels != IGNORE_INDEX).sum())}
        return {"loss": int(labels.numel())}

    def losses(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"loss": self.loss(model, batch)}

    def tokens(self, batch: dict[str, Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        metrics = self.score(self.predict(model, self.valid_examples), self.valid_examples)
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}

    # -- distillation (distill.py): what a student matches of its teacher ---------------------------
    def distill_outputs(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[list[Soft], Tensor | None]:
        """The outputs of ``model`` on a training batch that a student matches to its teacher's, and the
        hard-label loss on the batch's targets (None where the task has none)."""
        out = model(**batch)
        return self.soft_outputs(out, batch), out.loss

    def soft_outputs(self, out: Any, batch: dict[str, Tensor]) -> list[Soft]:
        """(rows, outputs) logits and how each is compared (``Soft.kind``); by default the head's logits,
        a distribution (softmax), independent labels (sigmoid) or numbers (mse) as the problem says."""
        kind = {"regression": "mse", "multi_label_classification": "sigmoid"}.get(self.problem_type() or "", "softmax")
        return [Soft(out.logits, kind)]

    def label_with(self, examples: list, predict: Callable[[list], list[dict]]) -> list:
        """``examples`` labelled as ``predict`` (a teacher's predictions) says: distillation on unlabelled data."""
        raise BertforgeError(f"{self.name}: cannot learn from unlabelled data")

    def export(self, model: nn.Module, directory: Path) -> None:
        """``model`` in Hugging Face format, with the task's settings in its config.json."""
        from ..checkpoint import save_pretrained

        if self.Settings is not None:
            self.spec.extra = dataclasses.asdict(self.settings)
        model.config.extra["bertforge"] = self.spec.to_dict()
        save_pretrained(model, directory, tokenizer=self.tokenizer)
