"""The workflows users run: fine-tuning, evaluation, prediction and pipelines, for every task.

These are the functions behind ``bertforge finetune / evaluate / predict`` and ``pipeline``: read
the files, build the task and the model, then hand over to the one training loop or the one
inference path.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .assets import resolve_model_dir
from .config import BertConfig
from .errors import BertforgeError
from .infer import load_for_inference, model_tokenizer
from .model import set_dropout
from .outputs import atomic_open, atomic_text, check_out_dir, check_output
from .tasks import ARCHITECTURE_TASKS, TASKS, FinetuneTask, TaskSpec
from .train import TrainArgs, resumable, train

log = logging.getLogger("bertforge")

VALID_FRACTION = 0.1  # carved out of the training file, seeded, when no --valid is given


def finetune(
    task: str,
    model: str | Path,
    train_file: str | Path,
    out: str | Path,
    valid_file: str | Path | None = None,
    spec: TaskSpec | None = None,
    args: TrainArgs | None = None,
    dropout: float | None = None,
) -> dict[str, float]:
    """Fine-tune ``model`` for ``task`` on a file; write the best model (by the task's validation
    metric) to ``out`` in Hugging Face format, the run (metrics, curves, checkpoints) to ``out/run``.
    Returns the best validation metrics."""
    if task not in TASKS:
        raise BertforgeError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    out = Path(out)
    spec = spec or TaskSpec(task, max_length=TASKS[task].default_max_length)
    directory = resolve_model_dir(model)
    _check_finetune_out(out, directory)
    config = BertConfig.from_json(directory / "config.json")
    tokenizer = model_tokenizer(directory, config)
    positions = config.max_position_embeddings
    if spec.max_length > positions:
        log.warning("%s has %d positions: sequences of at most %d tokens, not %d", directory, positions, positions, spec.max_length)
        spec.max_length = positions
    t = TASKS[task](spec, tokenizer)
    train_file = Path(train_file)
    train_examples = t.read(train_file, labelled=True)
    if valid_file is not None:
        valid_examples = t.read(Path(valid_file), labelled=True)
        valid_source, held_out = Path(valid_file), None
    else:
        seed = args.seed if args else 0
        order = list(range(len(train_examples)))
        random.Random(seed).shuffle(order)
        n_valid = max(1, round(len(order) * VALID_FRACTION))
        if len(order) - n_valid < 2:
            raise BertforgeError(f"{train_file}: {len(order)} examples are too few to carve out a validation split")
        valid_examples = [train_examples[i] for i in sorted(order[:n_valid])]
        train_examples = [train_examples[i] for i in sorted(order[n_valid:])]
        valid_source, held_out = train_file, VALID_FRACTION
    t.fit_labels(train_examples, train_file)
    t.check_labels(valid_examples, valid_source, held_out)
    metric = args.select_metric if args else None  # checked here, not at the first validation an epoch in
    if metric and metric not in (names := t.metric_names(valid_examples)):
        raise BertforgeError(f"metric {metric!r} is not among {', '.join(names)}")
    torch.manual_seed(args.seed if args else 0)  # the fresh head's weights are part of what the seed reproduces
    # on a resume the checkpoint replaces every weight: the base model's missing head is not news then
    level = log.level
    if resumable(out / "run", args is not None and args.resume):
        log.setLevel(logging.ERROR)
    try:
        net = t.load_model(directory)
    finally:
        log.setLevel(level)
    if dropout is not None:
        set_dropout(net, dropout)
    t.set_data(train_examples, valid_examples)
    args = args or TrainArgs(out=out / "run")
    args.out = out / "run"
    args.select_metric = args.select_metric or t.select_metric
    state = train(net, t, args)
    if not state.is_main:
        return {}
    best = args.out / "best"
    if not best.is_dir():  # no evaluation happened: keep the last weights
        t.export(net, best)
    for f in best.iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    best_row = next((r for r in state.history if r["step"] == state.best_step), state.history[-1] if state.history else {})
    metrics = {k: v for k, v in best_row.items() if k not in ("split",)}
    atomic_text(out / "valid_metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _check_finetune_out(out: Path, model_dir: Path) -> None:
    """Never write over the base model, or into a directory of other files: OUT must be new, empty,
    or a previous run's (OUT/run; train() refuses its checkpoints unless resuming)."""
    check_out_dir(out)
    if out.exists() and out.samefile(model_dir):
        raise BertforgeError(f"{out}: is the --model directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / "run").is_dir():
        raise BertforgeError(f"{out}: is not empty and holds no bertforge run (run/); choose another --out")


def load_task(
    name_or_path: str | Path,
    device: str | None = None,
    precision: str = "fp32",
    runtime: str = "torch",
    compile: bool = False,
    **overrides: Any,
) -> tuple[FinetuneTask, Any]:
    """A fine-tuned model directory -> (its task, the model with its head), ready to predict at the
    given precision (fp32, bf16, fp16, int8, auto) on PyTorch or on its exported ONNX graph."""
    directory = resolve_model_dir(name_or_path)
    config = BertConfig.from_json(directory / "config.json")
    saved = saved_spec(directory, config)
    if saved is None:
        arch = (config.architectures or ["BertModel"])[0]
        raise BertforgeError(f"{directory}: has no task head ({arch}); fine-tune it first with `bertforge finetune`")
    extra = {**saved.extra, **{k: v for k, v in (overrides.pop("extra", None) or {}).items() if v is not None}}
    spec = TaskSpec.from_dict({**saved.to_dict(), **{k: v for k, v in overrides.items() if v is not None}, "extra": extra})
    t = TASKS[spec.task](spec, model_tokenizer(directory, config), config.id2label)
    return t, load_for_inference(directory, t.head, device, precision, runtime, compile)


def saved_spec(directory: Path, config: BertConfig) -> TaskSpec | None:
    """The task settings in a model directory's config.json ("bertforge", or its transformers
    architecture's defaults); None for a bare encoder. Damaged settings are an error naming the file."""
    settings = config.extra.get("bertforge")
    if settings is None:
        task = ARCHITECTURE_TASKS.get((config.architectures or ["BertModel"])[0])
        if task is None:
            return None
        settings = {"task": task, "max_length": TASKS[task].default_max_length}
    try:
        spec = TaskSpec.from_dict(settings, "bertforge")
    except BertforgeError as e:
        raise BertforgeError(f"{directory / 'config.json'}: {e}") from None
    if spec.task not in TASKS:
        raise BertforgeError(f"{directory / 'config.json'}: unknown bertforge.task {spec.task!r} (choose from {', '.join(TASKS)})")
    return spec


def _chunks(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def evaluate_file(
    model: str | Path, data: str | Path, output: str | Path | None = None, precision: str = "fp32", runtime: str = "torch",
    compile: bool = False, device: str | None = None, **overrides: Any,
) -> dict:
    """The task's metrics on a labelled file (and written as JSON to ``output``)."""
    if output is not None:
        check_output(output, data)
    t, net = load_task(model, device, precision, runtime, compile, **overrides)
    examples = t.read(Path(data), labelled=True)
    t.check_labels(examples, Path(data))
    predictions = t.predict(net, examples, progress=True)
    result = t.score(predictions, examples)
    if output is not None:
        atomic_text(Path(output), json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def predict_file(
    model: str | Path, input: str | Path, output: str | Path, chunk: int = 4096, precision: str = "fp32",
    runtime: str = "torch", compile: bool = False, device: str | None = None, **overrides: Any,
) -> int:
    """Predictions for every record of ``input`` as JSONL in ``output`` (the input's fields plus the
    prediction's), in the input's order; written to a temporary file and renamed when complete."""
    output = check_output(output, input)
    t, net = load_task(model, device, precision, runtime, compile, **overrides)
    examples = t.read(Path(input))
    records = _input_fields(Path(input), examples)
    clashes: set[str] = set()
    with atomic_open(output) as f:
        for part in _chunks(list(range(len(examples))), chunk):
            preds = t.predict(net, [examples[i] for i in part], progress=True)
            for i, p in zip(part, preds, strict=True):
                f.write(json.dumps(with_prediction(records[i], p, clashes), ensure_ascii=False) + "\n")
    note_clashes(input, clashes)
    return len(examples)


ECHOED = ("tokens",)  # prediction fields that repeat their input: a tagger's words, given as tokens or split from text


def with_prediction(fields: dict, prediction: dict, clashes: set[str]) -> dict:
    """The input's fields plus the prediction's. An input field the prediction also writes (a gold
    ``label``) is kept as ``input_<name>``, and its name added to ``clashes``."""
    clash = {k for k in fields.keys() & prediction.keys() if k not in ECHOED or fields[k] != prediction[k]}
    clashes |= clash
    return {**{f"input_{k}" if k in clash else k: v for k, v in fields.items()}, **prediction}


def note_clashes(input: str | Path, clashes: set[str]) -> None:
    """One line on stderr naming the input's fields kept as ``input_<name>``."""
    if clashes:
        names = sorted(clashes)
        log.warning("%s: the input's %s kept as %s, beside the prediction's", input, ", ".join(names),
                    ", ".join(f"input_{n}" for n in names))


def _input_fields(path: Path, examples: list) -> list[dict]:
    """What each prediction line repeats of its input: the record's fields (JSONL/CSV), or its words."""
    from .data import tables

    if hasattr(examples[0], "fields"):  # qa: SQuAD JSON has no record per question
        return [e.fields for e in examples]
    if hasattr(examples[0], "words") and path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        return [{} for _ in examples]
    return [r.fields for r in tables.read_records(path)]


TASK_ALIASES = {"summarize": "extsum", "question-answering": "qa"}


def model_task(name_or_path: str | Path) -> str | None:
    """The task a model directory was fine-tuned for (None for a bare encoder)."""
    directory = resolve_model_dir(name_or_path)
    spec = saved_spec(directory, BertConfig.from_json(directory / "config.json"))
    return spec.task if spec is not None else None


class Pipeline:
    """Predictions from Python: ``pipe("text")``, ``pipe(["a", "b"])``, ``pipe([("premise", "hypothesis")])``,
    ``pipe({"question": ..., "context": ...})``, ``pipe("a long document")``.

    ``settings`` override the task's (qa: ``null_threshold``...; extsum: ``top_k``, ``max_words``...).
    "summarize" with a model that was not fine-tuned for it (e.g. ``minilm-l6``) summarises without
    training: ``method`` centroid (default), cluster or lead.
    """

    def __init__(
        self, task: str | None, model: str | Path, device: str | None = None, precision: str = "fp32",
        runtime: str = "torch", compile: bool = False, **settings: Any,
    ):
        task = TASK_ALIASES.get(task, task)
        self.embedder = None
        if task == "extsum" and model_task(model) != "extsum":
            from .infer import Embedder
            from .tasks.extsum import METHODS, summary_limits

            self.untrained = {"method": "centroid", "top_k": 3, "max_words": None, "trigram_blocking": True, **settings}
            if self.untrained["method"] not in METHODS:
                raise BertforgeError(f"unknown method {self.untrained['method']!r} (choose from {', '.join(METHODS)})")
            summary_limits(self.untrained["top_k"], self.untrained["max_words"])
            self.embedder = Embedder.from_pretrained(model, device=device, precision=precision, runtime=runtime, compile=compile)
            return
        self.task, self.model = load_task(model, device=device, precision=precision, runtime=runtime, compile=compile, extra=settings)
        if task is not None and task != self.task.name:
            raise BertforgeError(f"{model}: is a {self.task.name} model, not {task}")

    def __call__(self, inputs: Any) -> Any:
        single = not isinstance(inputs, list)
        preds = self.predict(self.examples([inputs] if single else inputs))
        return preds[0] if single else preds

    def examples(self, items: list) -> list:
        """Each input as the task's example. A bad input raises here, before any model runs: the
        server checks each request's inputs, then predicts many requests' examples in one call."""
        if self.embedder is not None:
            from .tasks.extsum import document_input

            return [document_input(x) for x in items]
        return [self._example(x, i) for i, x in enumerate(items)]

    def predict(self, examples: list) -> list[dict]:
        """Predictions for ``examples`` (from ``examples()``), in order, through the one inference path."""
        if self.embedder is not None:
            from .tasks.extsum import summarize_untrained

            return summarize_untrained(self.embedder, examples, **self.untrained)
        return self.task.predict(self.model, examples)

    def _example(self, x: Any, i: int):
        """Input ``i`` as the task's example; as the files' readers, no text of it may be empty."""
        from .tasks.sequence import TextExample
        from .tasks.tag import TagExample, words_of

        if isinstance(x, str) and not x.strip():
            raise BertforgeError(f"input {i}: an empty text")
        name = self.task.name
        if hasattr(self.task, "example"):
            return self.task.example(x)
        if name in ("classify", "pair", "regress"):  # as the model was trained: pairs or single texts
            pair = isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(t, str) for t in x)
            if not (pair if self.task.is_pair else isinstance(x, str)):
                raise BertforgeError(f"this model reads {'(text, text_pair) pairs' if self.task.is_pair else 'single texts'}; "
                                     f"got {type(x).__name__}{f' of {len(x)}' if isinstance(x, (tuple, list)) else ''}")
            if pair and not all(t.strip() for t in x):
                raise BertforgeError(f"input {i}: an empty text")
            return TextExample(x[0], x[1], None, 0) if pair else TextExample(x, None, None, 0)
        if name == "tag":
            if isinstance(x, list):
                return TagExample(words_of(x, f"input {i}"), None, 0)
            return self.task._from_text({self.task.spec.text_column: str(x)}, 0, Path("<input>"))
        raise BertforgeError(f"no pipeline for task {name!r}")


def pipeline(task: str | None, model: str | Path, device: str | None = None, **settings: Any) -> Pipeline:
    """``bertforge.pipeline("classify", "runs/sentiment")("a great film")``,
    ``pipeline("qa", "runs/squad")({"question": ..., "context": ...})``, ``pipeline("summarize", "minilm-l6")(text)``."""
    return Pipeline(task, model, device, **settings)
