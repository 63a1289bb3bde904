"""The task registry: every task is declared once, in its module, and listed here. The CLI, the server
and the pipeline read this registry and never name a task.

Fine-tuned tasks (``TASKS``) read a model directory's saved settings; an encoder's own uses
(``ENCODER_TASKS``: embed, similarity, training-free summaries) need no fine-tuning.
"""

from __future__ import annotations

from typing import Any

from ..errors import BertforgeError
from ..modeldir import ModelDir
from ..spec import TaskSpec
from .base import FinetuneTask, settings_of
from .embed import EmbedTrainTask
from .embeddings import EmbeddingsTask, SearchTask, TokenizeTask
from .encoder import EmbedTask, EncoderTask, SimilarityTask, SummarizeTask
from .extsum import ExtSumTask
from .qa import QATask
from .rerank import RerankTask
from .sequence import PairTask, RegressTask, SequenceTask
from .tag import TagTask

TASKS: dict[str, type[FinetuneTask]] = {
    t.name: t for t in (SequenceTask, PairTask, RegressTask, TagTask, QATask, ExtSumTask, EmbedTrainTask, RerankTask)
}
ENCODER_TASKS: dict[str, type[EncoderTask]] = {
    t.name: t for t in (EmbedTask, SimilarityTask, SummarizeTask, EmbeddingsTask, TokenizeTask, SearchTask)
}
ALIASES = {"summarize": "extsum", "question-answering": "qa"}

# transformers task models (of any family: BertFor..., RobertaFor...) without bertforge settings are
# read with a task's defaults
ARCHITECTURE_TASKS = {
    "ForSequenceClassification": "classify",
    "ForTokenClassification": "tag",
    "ForQuestionAnswering": "qa",
}
# ... and a sequence classifier with one output is a cross-encoder (cross-encoder/ms-marco-*): a pair scorer
ONE_OUTPUT_TASKS = {"ForSequenceClassification": "rerank"}


def endpoints() -> list[str]:
    """Every endpoint a server may offer, in the order of its docs."""
    names = [t.endpoint for t in (EmbedTask, SimilarityTask, *TASKS.values(), EmbeddingsTask, TokenizeTask, SearchTask)]
    return list(dict.fromkeys(names))


def saved_spec(md: ModelDir) -> TaskSpec | None:
    """A model directory's task settings ("bertforge", or its transformers architecture's defaults);
    None for a bare encoder."""
    spec = md.saved
    if spec is None:
        table = {**ARCHITECTURE_TASKS, **ONE_OUTPUT_TASKS} if md.config.num_labels == 1 else ARCHITECTURE_TASKS
        task = next((t for suffix, t in table.items() if md.architecture.endswith(suffix)), None)
        if task is None:
            return None
        spec = TaskSpec(task, max_length=TASKS[task].default_max_length)
    if spec.task not in TASKS:
        raise BertforgeError(
            f"{md.path / 'config.json'}: unknown bertforge.task {spec.task!r} (choose from {', '.join(TASKS)})"
        )
    return spec


def is_encoder(spec: TaskSpec | None) -> bool:
    """A bare encoder, or one fine-tuned to be a sentence encoder (``sentence_encoder``): it serves, and
    pipelines run, the encoder's uses."""
    return spec is None or getattr(TASKS[spec.task], "sentence_encoder", False)


def finetune_task(name: str, spec: TaskSpec | None, md: ModelDir) -> FinetuneTask:
    """A task to fine-tune ``md`` for (settings checked now, before any file is read)."""
    if name not in TASKS:
        raise BertforgeError(f"unknown task {name!r} (choose from {', '.join(TASKS)})")
    return TASKS[name](spec or TaskSpec(name, max_length=TASKS[name].default_max_length), md.tokenizer)


def fine_tuned(md: ModelDir, **overrides: Any) -> FinetuneTask:
    """The task a fine-tuned directory was trained for, with ``overrides`` of its saved settings
    (None: as saved; ``extra``: the task's own settings)."""
    saved = saved_spec(md)
    if saved is None:
        raise BertforgeError(
            f"{md.path}: has no task head ({md.architecture}); fine-tune it first with `bertforge finetune`"
        )
    given = {k: v for k, v in (overrides.pop("extra", None) or {}).items() if v is not None}
    extra = {**saved.extra, **given}
    spec = TaskSpec.from_dict(
        {**saved.to_dict(), **{k: v for k, v in overrides.items() if v is not None}, "extra": extra}
    )
    id2label = md.config.id2label
    if id2label is None and md.saved is None:  # transformers 5 writes no labels for its default two
        id2label = {i: f"LABEL_{i}" for i in range(md.config.num_labels)}
    return TASKS[spec.task](spec, md.tokenizer, id2label)


def evaluation_task(md: ModelDir, **overrides: Any) -> FinetuneTask:
    """The task that scores ``md`` on labelled data: the one it was fine-tuned for, or for a bare encoder the
    sentence encoder's (cosine of scored pairs; ranking metrics on a retrieval set)."""
    if saved_spec(md) is not None:
        return fine_tuned(md, **overrides)
    extra = {k: v for k, v in (overrides.pop("extra", None) or {}).items() if v is not None}
    given = {k: v for k, v in overrides.items() if v is not None}
    name = EmbedTrainTask.name
    return TASKS[name](
        TaskSpec(name, **{"max_length": TASKS[name].default_max_length, **given}, extra=extra), md.tokenizer
    )


def distill_task(md: ModelDir) -> FinetuneTask:
    """The task a student of ``md`` learns: the directory's own, or for a bare encoder the sentence
    encoder's (its vectors are what a student matches)."""
    if saved_spec(md) is not None:
        return fine_tuned(md)
    name = next(t.name for t in TASKS.values() if getattr(t, "sentence_encoder", False))
    return finetune_task(name, None, md)


def for_model(md: ModelDir, name: str | None = None, **settings: Any) -> FinetuneTask | EncoderTask:
    """The task a pipeline runs: the directory's own (``name`` None or the same), or the encoder's use
    behind the same endpoint (``summarize`` on a model not fine-tuned to summarise)."""
    name = ALIASES.get(name, name)
    own = saved_spec(md)
    cls = TASKS.get(name) or ENCODER_TASKS.get(name)
    endpoint = cls.endpoint if cls is not None else None
    uses = {t.endpoint: t.name for t in ENCODER_TASKS.values()}
    if endpoint in uses and (is_encoder(own) or TASKS[own.task].endpoint != endpoint):
        return encoder_task(uses[endpoint], settings)
    task = fine_tuned(md, extra=settings)
    if name is not None and name != task.name:
        raise BertforgeError(f"{md.path}: is a {task.name} model, not {name}")
    return task


def encoder_task(name: str, settings: dict[str, Any] | None = None) -> EncoderTask:
    cls = ENCODER_TASKS[name]
    if cls.Settings is None:
        return cls()
    return cls(settings_of(cls.Settings, settings or {}, name, keep_none=True))


def served(md: ModelDir, options: dict[str, Any] | None = None) -> list[FinetuneTask | EncoderTask]:
    """What a server offers for ``md``: the fine-tuned task, or every use of an encoder (those that
    need a server option, such as search's index, when ``options`` gives it)."""
    if not is_encoder(saved_spec(md)):
        return [fine_tuned(md)]
    options = {k: v for k, v in (options or {}).items() if v is not None}
    tasks = []
    for name, cls in ENCODER_TASKS.items():
        if cls.needs is None or cls.needs in options:
            task = encoder_task(name, {cls.needs: str(options[cls.needs])} if cls.needs else None)
            task.open(md)
            tasks.append(task)
    return tasks


__all__ = [
    "ARCHITECTURE_TASKS",
    "ENCODER_TASKS",
    "TASKS",
    "EncoderTask",
    "FinetuneTask",
    "TaskSpec",
    "distill_task",
    "encoder_task",
    "endpoints",
    "evaluation_task",
    "fine_tuned",
    "finetune_task",
    "is_encoder",
    "for_model",
    "saved_spec",
    "served",
]
