"""One module per task: how its data becomes batches, its losses, its metrics, its predictions."""

from __future__ import annotations

from .base import FinetuneTask, TaskSpec
from .extsum import ExtSumTask
from .qa import QATask
from .sequence import PairTask, RegressTask, SequenceTask
from .tag import TagTask

TASKS: dict[str, type[FinetuneTask]] = {
    "classify": SequenceTask,
    "pair": PairTask,
    "regress": RegressTask,
    "tag": TagTask,
    "qa": QATask,
    "extsum": ExtSumTask,
}

# Hugging Face task models without bertforge settings are read with a task's defaults.
ARCHITECTURE_TASKS = {
    "BertForSequenceClassification": "classify",
    "BertForTokenClassification": "tag",
    "BertForQuestionAnswering": "qa",
}

__all__ = ["ARCHITECTURE_TASKS", "TASKS", "FinetuneTask", "TaskSpec"]
