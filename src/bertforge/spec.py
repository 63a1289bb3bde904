"""A task's settings as saved in a model directory's config.json ("bertforge"): what every verb reads
to treat data exactly as training did."""

from __future__ import annotations

import dataclasses
import reprlib
from dataclasses import dataclass, field
from typing import Any

from .config import check_fields, field_types
from .errors import BertforgeError

LONG_TEXT = ("window", "truncate")


@dataclass
class TaskSpec:
    """A task's settings; saved as ``"bertforge"`` in the model's config.json, so ``evaluate``,
    ``predict`` and ``serve`` treat data exactly as training did."""

    task: str
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    max_length: int = 128
    long_text: str = "window"  # texts over max_length: sliding windows with pooled logits, or cut
    stride: int | None = None  # window overlap in tokens; None: max_length // 4
    multi_label: bool = False
    threshold: float = 0.5  # multi-label: sigmoid probability at which a label is predicted
    label_separator: str = "|"  # multi-label labels in one CSV cell
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific settings (QA, summarisation)

    def __post_init__(self) -> None:
        if self.long_text not in LONG_TEXT:
            raise BertforgeError(f"unknown --long-text {self.long_text!r} (choose from {', '.join(LONG_TEXT)})")
        if self.max_length < 8:
            raise BertforgeError(f"max length {self.max_length} is too small")

    @property
    def window_stride(self) -> int:
        return self.stride if self.stride is not None else self.max_length // 4

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str = "settings") -> TaskSpec:
        """From settings read from a file (``name``: what errors call them); unknown keys are ignored."""
        if not isinstance(d, dict):
            raise BertforgeError(f"{name} is {reprlib.repr(d)}, not an object")
        if "task" not in d:
            raise BertforgeError(f"{name}.task is missing")
        types = field_types(cls)
        check_fields(d, types, f"{name}.")
        return cls(**{k: v for k, v in d.items() if k in types})
