"""Knowledge distillation: a student learns what a teacher outputs, for any task in the registry.

The student matches the teacher through the task's own protocol (``FinetuneTask.distill_outputs``):
soft targets compared at a temperature (Hinton et al., 2015), plus the hard labels when the data has
them; optionally each student layer's hidden states (through a learned projection when the widths
differ, as TinyBERT) and attention distributions (KL, as MiniLM) against a teacher layer's. A student
built from a subset of the teacher's layers starts as those layers (DistilBERT's recipe).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import BertforgeError
from .model import BertModel

KINDS = ("softmax", "sigmoid", "mse")
PROJECTION_FILE = "distill_projection.pt"  # the learned hidden-state projections, beside a checkpoint


# -- the losses --------------------------------------------------------------------------------------------
def soft_loss(student: Tensor, teacher: Tensor, kind: str, temperature: float = 1.0) -> Tensor:
    """How far ``student``'s (rows, outputs) logits are from ``teacher``'s: softmax, KL(teacher || student) of
    the distributions at ``temperature``, times its square (so gradients keep their size); sigmoid, the
    binary KL of each output's probabilities, likewise; mse, the mean squared difference. Means over rows."""
    s, t = student.float(), teacher.float()
    if kind == "mse":
        return F.mse_loss(s, t)
    if s.numel() == 0:
        return s.sum() * 0.0
    T = temperature
    if kind == "softmax":
        s, t = s.reshape(-1, s.size(-1)), t.reshape(-1, t.size(-1))
        kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean")
        return kl * T * T
    if kind == "sigmoid":
        p = torch.sigmoid(t / T)
        ls, ls_not = F.logsigmoid(s / T), F.logsigmoid(-s / T)
        lt, lt_not = F.logsigmoid(t / T), F.logsigmoid(-t / T)
        return (p * (lt - ls) + (1 - p) * (lt_not - ls_not)).mean() * T * T
    raise BertforgeError(f"unknown soft-target kind {kind!r} (choose from {', '.join(KINDS)})")


def hidden_loss(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error of (B, T, H) hidden states over real positions (``mask`` (B, T)); where a last
    layer computed its first token alone (B, 1, H), over that token."""
    T = min(student.size(1), teacher.size(1))
    m = mask[:, :T].bool()
    return F.mse_loss(student[:, :T][m].float(), teacher[:, :T][m].float())


def attention_loss(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """KL(teacher || student) of (B, heads, T, T) attention distributions over the keys, averaged over
    heads and real query positions (MiniLM)."""
    q = mask.bool()[:, None, :].expand(-1, student.size(1), -1)  # (B, heads, T)
    s = student.clamp_min(1e-12).log()[q]  # (real queries, T)
    t = teacher[q]
    return (t * (t.clamp_min(1e-12).log() - s)).sum(-1).mean()


def attention_probs(qkv: Tensor, heads: int, mask: Tensor) -> Tensor:
    """(B, heads, T, T) softmax(q k^T / sqrt(d)) from a layer's (B, T, 3H) query/key/value projection."""
    B, T, _ = qkv.shape
    q, k, _ = qkv.view(B, T, 3, heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    return scores.float().masked_fill(~mask.bool()[:, None, None, :], -1e4).softmax(-1)


# -- students -------------------------------------------------------------------------------------------------
def encoder_of(model: nn.Module) -> BertModel:
    """The BERT encoder inside a task model (a head's ``bert``, a sentence encoder's ``encoder``)."""
    found = next((m for m in model.modules() if isinstance(m, BertModel)), None)
    if found is None:
        raise BertforgeError(f"{type(model).__name__} holds no BERT encoder")
    return found


def kept_layers(spec: str | int | list[int], layers: int) -> list[int]:
    """The teacher layers a student keeps: a count (evenly spaced from the first: 3 of 6 -> 0, 2, 4, as
    DistilBERT took every other) or the indices themselves ("0,2,4")."""
    if isinstance(spec, str):
        spec = spec.strip()
        if spec.isdigit():
            spec = int(spec)
        else:
            try:
                spec = [int(x) for x in spec.split(",")]
            except ValueError:
                raise BertforgeError(f"layers are a count or comma-separated indices (0,2,4), not {spec!r}") from None
    if isinstance(spec, int):
        if not 1 <= spec <= layers:
            raise BertforgeError(f"cannot keep {spec} of {layers} layers: keep 1 to {layers}")
        return [i * layers // spec for i in range(spec)]
    if not spec or any(not 0 <= i < layers for i in spec) or len(set(spec)) != len(spec) or spec != sorted(spec):
        raise BertforgeError(
            f"layers {','.join(map(str, spec))}: give distinct indices, in order, from 0 to {layers - 1}"
        )
    return list(spec)


def drop_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """``model`` with only the encoder layers ``keep`` (in place; the config, shared by its modules, is
    replaced by one with that many layers, so a teacher loaded from the same directory keeps its own)."""
    enc = encoder_of(model)
    old = enc.config
    if old.distinct_layers != old.num_hidden_layers:
        raise BertforgeError(f"{old.model_type}: its layers share weights: there are no layers of its own to drop")
    new = old.replace(num_hidden_layers=len(keep), extra=dict(old.extra))
    enc.layers = nn.ModuleList(enc.layers[i] for i in keep)
    enc.order = list(range(len(keep)))
    for m in model.modules():
        if getattr(m, "config", None) is old:
            m.config = new
    return model


def layer_map(student: int, teacher: int, kept: list[int] | None) -> list[int]:
    """The teacher layer each student layer learns from: the one it was copied from, else evenly spread
    (each student layer the last of its share of the teacher's)."""
    if kept is not None:
        return list(kept)
    return [(i + 1) * teacher // student - 1 for i in range(student)]


# -- what a forward pass gives up ------------------------------------------------------------------------------
class Capture:
    """Forward hooks on an encoder's layers: each layer's output (hidden states) and, when asked, its
    attention distributions, collected while the context is active."""

    def __init__(self, encoder: BertModel, attention: bool):
        self.encoder, self.attention = encoder, attention
        self.hidden: list[Tensor] = []
        self.qkv: list[Tensor] = []
        self._hooks: list = []

    def __enter__(self) -> Capture:
        self.hidden, self.qkv = [], []
        for layer in self.encoder.layers:
            self._hooks.append(layer.register_forward_hook(lambda m, i, o: self.hidden.append(o)))
            if self.attention:
                self._hooks.append(layer.attn.qkv.register_forward_hook(lambda m, i, o: self.qkv.append(o)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


@dataclass
class DistillSettings:
    temperature: float = 2.0  # softens both distributions (Hinton et al.)
    alpha: float = 0.5  # the soft targets' share, the hard labels' the rest (all soft without labels)
    hidden_weight: float = 0.0  # hidden-state MSE, per matched layer pair (TinyBERT)
    attention_weight: float = 0.0  # attention-distribution KL, per matched layer pair (MiniLM)
    layers: list[int] | None = field(default=None)  # the teacher layers the student was built from

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise BertforgeError(f"temperature must be a positive number, not {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise BertforgeError(f"alpha must be within [0, 1], not {self.alpha}")
        for name in ("hidden_weight", "attention_weight"):
            if not getattr(self, name) >= 0:
                raise BertforgeError(f"{name.replace('_', '-')} must be at least 0, not {getattr(self, name)}")


class DistillModel(nn.Module):
    """The student and the projections of its hidden states to the teacher's width: what the training loop
    trains (and DDP wraps). Its forward is the task's ``distill_outputs`` plus what the layers gave up."""

    def __init__(self, student: nn.Module, task, teacher_width: int, settings: DistillSettings):
        super().__init__()
        self.student, self.task, self.settings = student, task, settings
        self.config = student.config
        enc = encoder_of(student)
        width = enc.config.hidden_size
        n = len(enc.layers) if settings.hidden_weight > 0 else 0
        self.project = nn.ModuleList(nn.Linear(width, teacher_width) for _ in range(n if width != teacher_width else 0))
        self.capture = Capture(enc, settings.attention_weight > 0)

    def forward(self, **batch: Tensor):
        watch = self.settings.hidden_weight > 0 or self.settings.attention_weight > 0
        with self.capture if watch else contextlib.nullcontext():
            soft, hard = self.task.distill_outputs(self.student, batch)
        hidden = self.capture.hidden if watch else []
        if len(self.project):
            hidden = [p(h) for p, h in zip(self.project, hidden, strict=True)]
        return soft, hard, hidden, list(self.capture.qkv) if watch else []

    def load_saved(self, path: Path) -> None:
        """A checkpoint's weights (resume): the student's as the task exported them, then the projections."""
        from .checkpoint import load_state, read_weights

        if hasattr(self.student, "load_saved"):
            self.student.load_saved(path)
        else:
            load_state(self.student, read_weights(path), str(path))
        if len(self.project):
            self.project.load_state_dict(torch.load(path / PROJECTION_FILE, weights_only=True))


class DistillTask:
    """The training loop's Task for a student: the task's data and evaluation, the distillation losses."""

    def __init__(self, task, teacher: nn.Module, settings: DistillSettings, labelled: bool, kept: list[int] | None):
        self.task, self.teacher, self.settings, self.labelled = task, teacher.eval(), settings, labelled
        self.teacher.requires_grad_(False)
        self.splittable = getattr(task, "splittable", True)
        self.teacher_capture = Capture(encoder_of(teacher), settings.attention_weight > 0)
        self.kept = kept

    def num_train(self) -> int:
        return self.task.num_train()

    def size(self, index: int) -> tuple[int, int]:
        return self.task.size(index)

    def collate(self, indices, rng=None) -> dict[str, Tensor]:
        return self.task.collate(indices, rng)

    def tokens(self, batch: dict[str, Tensor]) -> int:
        return self.task.tokens(batch)

    def terms(self) -> list[str]:
        s = self.settings
        named = [("soft", True), ("hard", self.labelled and s.alpha < 1), ("hidden", s.hidden_weight > 0)]
        return [n for n, on in [*named, ("attention", s.attention_weight > 0)] if on]

    def counts(self, batch: dict[str, Tensor]) -> dict[str, int]:
        n = int(batch["input_ids"].shape[0])  # every term is a mean over the batch's sequences
        return dict.fromkeys(self.terms(), n)

    def losses(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        s = self.settings
        soft, hard, hidden, qkv = model(**batch)
        self.teacher.to(batch["input_ids"].device)
        watch = s.hidden_weight > 0 or s.attention_weight > 0
        with torch.no_grad(), self.teacher_capture if watch else contextlib.nullcontext():
            target, _ = self.task.distill_outputs(self.teacher, batch)
        alpha = s.alpha if "hard" in self.terms() else 1.0
        kd = sum(soft_loss(a.logits, b.logits, a.kind, s.temperature) for a, b in zip(soft, target, strict=True))
        out = {"soft": alpha * kd}
        if "hard" in self.terms():
            out["hard"] = (1 - alpha) * hard
        pairs = layer_map(len(hidden), len(self.teacher_capture.hidden), self.kept) if watch else []
        mask = batch["attention_mask"]
        if s.hidden_weight > 0:
            t_hidden = [self.teacher_capture.hidden[j] for j in pairs]
            out["hidden"] = s.hidden_weight * sum(
                hidden_loss(a, b, mask) for a, b in zip(hidden, t_hidden, strict=True)
            )
        if s.attention_weight > 0:
            heads_s = encoder_of(model.module if hasattr(model, "module") else model).config.num_attention_heads
            heads_t = encoder_of(self.teacher).config.num_attention_heads
            if heads_s != heads_t:
                raise BertforgeError(f"attention matching needs as many heads: student {heads_s}, teacher {heads_t}")
            t_qkv = [self.teacher_capture.qkv[j] for j in pairs]
            out["attention"] = s.attention_weight * sum(
                attention_loss(attention_probs(a, heads_s, mask), attention_probs(b, heads_t, mask), mask)
                for a, b in zip(qkv, t_qkv, strict=True)
            )
        return out

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.task.evaluate(model.student)

    def export(self, model: nn.Module, directory: Path) -> None:
        self.task.export(model.student, directory)
        if len(model.project):
            torch.save(model.project.state_dict(), Path(directory) / PROJECTION_FILE)
