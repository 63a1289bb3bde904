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

from .config import BertConfig
from .distill import DistillSettings
from .errors import BertforgeError
from .families import family as family_of
from .heads import BertWithHead
from .model import set_dropout
from .modeldir import ModelDir
from .outputs import atomic_open, atomic_text, check_out_dir, check_output
from .tasks import TASKS, FinetuneTask, TaskSpec, distill_task, evaluation_task, fine_tuned, finetune_task, saved_spec
from .train import TrainArgs, resumable, resume_hint, train

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
    md = ModelDir.open(model)
    directory = md.path
    _check_finetune_out(out, directory)
    spec = spec or TaskSpec(task, max_length=TASKS[task].default_max_length)
    positions = md.config.max_length
    if spec.max_length > positions:
        log.warning(
            "%s has %d positions: sequences of at most %d tokens, not %d",
            directory,
            positions,
            positions,
            spec.max_length,
        )
        spec.max_length = positions
    t = finetune_task(task, spec, md)
    train_file = Path(train_file)
    train_examples = t.read(train_file, labelled=True)
    if valid_file is not None:
        valid_examples = t.read(Path(valid_file), labelled=True)
        valid_source, held_out = Path(valid_file), None
    else:
        train_examples, valid_examples = _split_valid(train_examples, args.seed if args else 0, train_file)
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
        net = t.load_model(md)
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
    return _publish(t, net, state, args, out)


def _publish(t, net, state, args: TrainArgs, out: Path, **more: Any) -> dict[str, Any]:
    """The run's best model (or its last, never evaluated) copied to ``out``, its validation metrics (and
    ``more``) written to out/valid_metrics.json; returns those metrics."""
    best = args.out / "best"
    if not best.is_dir():  # no evaluation happened: keep the last weights
        t.export(net, best)
    for f in best.iterdir():  # files, and the module folders of a sentence-transformers directory
        if f.is_file():
            shutil.copy2(f, out / f.name)
        elif f.is_dir():
            shutil.copytree(f, out / f.name, dirs_exist_ok=True)
    best_row = next(
        (r for r in state.history if r["step"] == state.best_step), state.history[-1] if state.history else {}
    )
    metrics = {k: v for k, v in best_row.items() if k not in ("split",)}
    atomic_text(out / "valid_metrics.json", json.dumps({**metrics, **more}, indent=2) + "\n")
    return metrics


def _split_valid(examples: list, seed: int, path: Path) -> tuple[list, list]:
    """(train, valid): VALID_FRACTION of the examples held out, seeded."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(len(order) * VALID_FRACTION))
    if len(order) - n_valid < 2:
        raise BertforgeError(f"{path}: {len(order)} examples are too few to carve out a validation split")
    return [examples[i] for i in sorted(order[n_valid:])], [examples[i] for i in sorted(order[:n_valid])]


def _check_finetune_out(out: Path, model_dir: Path) -> None:
    """Never write over the base model, or into a directory of other files: OUT must be new, empty,
    or a previous run's (OUT/run; train() refuses its checkpoints unless resuming)."""
    check_out_dir(out)
    if out.exists() and out.samefile(model_dir):
        raise BertforgeError(f"{out}: is the --model directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / "run").is_dir():
        raise BertforgeError(f"{out}: is not empty and holds no bertforge run (run/); choose another --out")


def load_task(
    name_or_path: str | Path | ModelDir,
    device: str | None = None,
    precision: str = "fp32",
    runtime: str = "torch",
    compile: bool = False,
    **overrides: Any,
) -> tuple[FinetuneTask, Any]:
    """A fine-tuned model directory -> (its task, the model with its head), ready to predict at the
    given precision (fp32, bf16, fp16, int8, auto) on PyTorch or on its exported ONNX graph."""
    md = ModelDir.open(name_or_path)
    t = fine_tuned(md, **overrides)
    return t, t.load(md, device, precision, runtime, compile)


def _chunks(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def evaluate_file(
    model: str | Path,
    data: str | Path,
    output: str | Path | None = None,
    precision: str = "fp32",
    runtime: str = "torch",
    compile: bool = False,
    device: str | None = None,
    rerank: str | Path | None = None,
    candidates: int = 100,
    **overrides: Any,
) -> dict:
    """The task's metrics on a labelled file (and written as JSON to ``output``); a bare encoder is scored
    as a sentence encoder (scored pairs, or a retrieval set's directory, whose top ``candidates`` a
    cross-encoder ``rerank`` may re-order)."""
    if output is not None:
        check_output(output, data)
    md = ModelDir.open(model)
    t = evaluation_task(md, **overrides)
    net = t.load(md, device, precision, runtime, compile)
    examples = t.read(Path(data), labelled=True)
    if rerank is not None:
        if not (hasattr(t, "reranker") and examples and hasattr(examples[0], "corpus")):
            raise BertforgeError("--rerank re-orders the hits of an encoder on a retrieval set (a directory)")
        from .rerank import Reranker

        t.reranker, t.candidates = Reranker(rerank, device, precision), candidates
    t.check_labels(examples, Path(data))
    predictions = t.predict(net, examples, progress=True)
    result = t.score(predictions, examples)
    if output is not None:
        atomic_text(Path(output), json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def predict_file(
    model: str | Path,
    input: str | Path,
    output: str | Path,
    chunk: int = 4096,
    precision: str = "fp32",
    runtime: str = "torch",
    compile: bool = False,
    device: str | None = None,
    **overrides: Any,
) -> int:
    """Predictions for every record of ``input`` as JSONL in ``output`` (the input's fields plus the
    prediction's), in the input's order; written to a temporary file and renamed when complete."""
    output = check_output(output, input)
    t, net = load_task(model, device, precision, runtime, compile, **overrides)
    examples = t.read(Path(input))
    records = t.input_fields(Path(input), examples)
    clashes: set[str] = set()
    with atomic_open(output) as f:
        for part in _chunks(list(range(len(examples))), chunk):
            preds = t.predict(net, [examples[i] for i in part], progress=True)
            for i, p in zip(part, preds, strict=True):
                f.write(json.dumps(with_prediction(records[i], p, clashes, t.echoed), ensure_ascii=False) + "\n")
    note_clashes(input, clashes)
    return len(examples)


def with_prediction(fields: dict, prediction: dict, clashes: set[str], echoed: tuple[str, ...] = ()) -> dict:
    """The input's fields plus the prediction's. An input field the prediction also writes (a gold
    ``label``) is kept as ``input_<name>``, and its name added to ``clashes``; ``echoed`` fields repeat
    the input and clash only where they differ from it."""
    clash = {k for k in fields.keys() & prediction.keys() if k not in echoed or fields[k] != prediction[k]}
    clashes |= clash
    return {**{f"input_{k}" if k in clash else k: v for k, v in fields.items()}, **prediction}


def note_clashes(input: str | Path, clashes: set[str]) -> None:
    """One line on stderr naming the input's fields kept as ``input_<name>``."""
    if clashes:
        names = sorted(clashes)
        log.warning(
            "%s: the input's %s kept as %s, beside the prediction's",
            input,
            ", ".join(names),
            ", ".join(f"input_{n}" for n in names),
        )


def model_task(name_or_path: str | Path | ModelDir) -> str | None:
    """The task a model directory was fine-tuned for (None for a bare encoder)."""
    spec = saved_spec(ModelDir.open(name_or_path))
    return spec.task if spec is not None else None


def pretrain(
    data: str | Path,
    out: str | Path,
    args: TrainArgs,
    preset: str = "mini",
    config: str | Path | None = None,
    init: str | Path | None = None,
    dropout: float | None = None,
    family: str | None = None,
    objective: str | None = None,
    generator_size: float = 0.25,
    discriminator_weight: float = 50.0,
) -> bool:
    """Pretrain on shards from ``prepare-pretrain``: a new model of ``preset`` (or ``config``), or ``init``'s
    weights; checkpoints and curves go to ``out``, the model to ``out/final``. True on the main process.

    ``objective``: mlm, mlm+nsp (None: mlm+nsp on shards of sentence pairs, else mlm) or electra (an
    ELECTRA discriminator, kept in ``out/final``, and a generator ``generator_size`` as wide, in
    ``out/final/generator``); ``family`` defaults to bert, electra for the electra objective."""
    from .data.shards import PretrainShards, check_vocab
    from .tasks.pretrain import ElectraPretrainTask, PretrainTask, objective_of
    from .tokenizer import Tokenizer

    data, out = Path(data), check_out_dir(out)
    manifest = PretrainShards(data, "train").manifest
    check_vocab(data, manifest)
    objective = objective_of(manifest, objective)
    electra = objective == "electra"
    family = family or ("electra" if electra else "bert")
    if electra and family != "electra":
        raise BertforgeError(f"the electra objective trains an ELECTRA model: drop --family {family}")
    tokenizer = Tokenizer.from_pretrained(manifest["vocab_path"], lowercase=manifest.get("lowercase"))
    if electra:
        task = ElectraPretrainTask(data, tokenizer, weight=discriminator_weight)
    else:
        task = PretrainTask(data, tokenizer, nsp=objective == "mlm+nsp")
    if task.head not in family_of(family).heads:
        raise BertforgeError(f"{family} has no sentence-pair head: prepare the shards with --no-nsp")
    existing = resumable(out, args.resume)
    torch.manual_seed(args.seed)  # the initial weights are part of what --seed reproduces
    if init is not None and not existing:
        model = _init_model(init, task.head, tokenizer.vocab_size, dropout)
    else:
        cfg = _pretrain_config(existing, config, preset, family, tokenizer, dropout)
        model = _electra_model(existing, cfg, generator_size) if electra else BertWithHead(cfg, task.head)
    if manifest["max_seq_len"] > (positions := model.config.max_length):
        raise BertforgeError(f"shards hold {manifest['max_seq_len']} tokens, the model only {positions} positions")
    args.out = out
    args.eval_every = args.eval_every or args.max_steps
    if not train(model, task, args).is_main:
        return False
    task.export(model, out / "final")
    return True


def _electra_model(existing: list[Path], config: BertConfig, generator_size: float):
    """A new generator and discriminator, or (resuming) of the checkpoint's shapes; the weights come later."""
    from .electra import ElectraPretrainer

    if not existing:
        return ElectraPretrainer.new(config, generator_size)
    saved = existing[-1] / "generator" / "config.json"
    try:
        gen = BertConfig.from_json(saved).replace(architectures=None)
    except BertforgeError as e:
        raise BertforgeError(f"{e}; {resume_hint(existing[-1])}") from None
    return ElectraPretrainer(BertWithHead(config, "discriminator"), BertWithHead(gen, "mlm"))


def _pretrain_config(
    existing: list[Path], config: str | Path | None, preset: str, family: str, tokenizer, dropout: float | None
) -> BertConfig:
    """The shape of the model to pretrain: the checkpoint's when resuming, else ``config``'s or ``preset``'s,
    with the shards' vocabulary."""
    if existing:
        try:
            cfg = BertConfig.from_json(existing[-1] / "config.json").replace(architectures=None)
        except BertforgeError as e:
            raise BertforgeError(f"{e}; {resume_hint(existing[-1])}") from None
    elif config is not None:
        cfg = BertConfig.from_json(config)
        if cfg.vocab_size != tokenizer.vocab_size:  # replaced below, as a preset's is
            log.warning(
                "%s: vocab_size %d replaced by the shards' vocabulary's %d",
                config,
                cfg.vocab_size,
                tokenizer.vocab_size,
            )
    else:
        cfg = BertConfig.preset(preset, model_type=family)
    cfg = cfg.with_vocab(tokenizer.vocab_size, tokenizer.pad_id)
    if dropout is not None:
        cfg = cfg.replace(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return cfg


def _init_model(init: str | Path, head: str, vocab_size: int, dropout: float | None):
    """``init``'s weights under the pretraining head (continued pretraining; for ELECTRA, a run's discriminator
    and its generator/); its vocabulary must be the shards'."""
    from .checkpoint import load_pretrained
    from .electra import ElectraPretrainer

    electra = head == "discriminator"
    model = ElectraPretrainer.load(ModelDir.open(init).path) if electra else load_pretrained(init, head=head)
    if model.config.vocab_size != vocab_size:
        raise BertforgeError(
            f"--init {init}: its vocabulary has {model.config.vocab_size} entries, the shards' {vocab_size}"
        )
    if dropout is not None:
        for part in (model.discriminator, model.generator) if electra else (model,):
            set_dropout(part, dropout)
    return model


# -- smaller models: distillation and pruning --------------------------------------------------------------
def distill(
    teacher: str | Path,
    train_file: str | Path,
    out: str | Path,
    valid_file: str | Path | None = None,
    layers: str | int | list[int] | None = None,
    preset: str | None = None,
    student: str | Path | None = None,
    settings: DistillSettings | None = None,
    args: TrainArgs | None = None,
) -> dict[str, Any]:
    """Distil ``teacher`` (a fine-tuned directory, or a sentence encoder) into a student of its task: its
    ``layers`` (a count or indices), a random model of ``preset``'s size, or the pretrained ``student``.
    Unlabelled ``train_file`` is labelled by the teacher. The best student goes to ``out`` as an ordinary
    model of the task; returns its validation metrics, with the student's before and the teacher's."""
    from .distill import DistillModel, DistillTask, encoder_of

    out, train_file = Path(out), Path(train_file)
    md = ModelDir.open(teacher)
    _check_finetune_out(out, md.path)
    settings = settings or DistillSettings()
    args = args or TrainArgs(out=out / "run")
    t = distill_task(md)
    teacher_net = t.load_model(md).eval()
    net, kept = _student(t, md, layers, preset, student)
    settings.layers = kept
    train_examples, labelled = _distill_data(t, teacher_net, train_file)
    if valid_file is not None:
        valid_examples = t.read(Path(valid_file), labelled=True)
        t.check_labels(valid_examples, Path(valid_file))
    elif labelled:
        train_examples, valid_examples = _split_valid(train_examples, args.seed, train_file)
    else:
        raise BertforgeError(f"{train_file}: has no labels: give a labelled --valid to measure the student on")
    if settings.hidden_weight > 0 or settings.attention_weight > 0:  # the layers' outputs dense, as hooks read them
        encoder_of(net).unpad = encoder_of(teacher_net).unpad = False
    t.set_data(train_examples, valid_examples)
    with torch.no_grad():
        before, teacher_metrics = t.evaluate(net.eval()), t.evaluate(teacher_net)
    model = DistillModel(net, t, encoder_of(teacher_net).config.hidden_size, settings)
    args.out = out / "run"
    args.select_metric = args.select_metric or t.select_metric
    state = train(model, DistillTask(t, teacher_net, settings, labelled and t.distill_hard, kept), args)
    if not state.is_main:
        return {}
    metrics = _publish(t, net, state, args, out, before=before, teacher=teacher_metrics)
    return {**metrics, "before": before, "teacher": teacher_metrics}


def _student(t: FinetuneTask, md: ModelDir, layers, preset: str | None, student) -> tuple[Any, list[int] | None]:
    """The student model of task ``t`` and the teacher layers it was built from (None: another shape)."""
    import tempfile

    from .checkpoint import save_pretrained
    from .distill import drop_layers, kept_layers
    from .infer import save_sentence_transformer
    from .model import BertModel

    given = [name for name, v in (("--layers", layers), ("--preset", preset), ("--student", student)) if v is not None]
    if len(given) != 1:
        raise BertforgeError(f"give one student: --layers (or --keep), --preset or --student, not {len(given)}")
    if layers is not None:
        kept = kept_layers(layers, md.config.num_hidden_layers)
        return drop_layers(t.load_model(md), kept), kept
    if student is not None:
        smd = ModelDir.open(student)
        if smd.tokenizer.get_vocab() != md.tokenizer.get_vocab():
            raise BertforgeError(f"{smd.path}: its vocabulary is not the teacher's: a student reads the same tokens")
        return t.load_model(smd), None
    cfg = BertConfig.preset(preset, model_type=md.config.model_type).with_vocab(
        md.config.vocab_size, md.config.pad_token_id
    )
    torch.manual_seed(0)
    fresh = BertModel(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        if getattr(t, "sentence_encoder", False):
            save_sentence_transformer(fresh, tmp, md.tokenizer, md.sentence)
        else:
            save_pretrained(fresh, tmp, tokenizer=md.tokenizer)
        return t.load_model(ModelDir.open(tmp)), None


def _distill_data(t: FinetuneTask, teacher, path: Path) -> tuple[list, bool]:
    """The training examples and whether they came labelled; unlabelled ones get the teacher's labels."""
    try:
        examples = t.read(path, labelled=True)
    except BertforgeError as e:
        examples = t.read(path)
        log.warning("%s; the teacher labels %s", str(e).removeprefix(f"{path}: "), path)

        def predict(xs: list) -> list[dict]:
            with torch.no_grad():
                return t.predict(teacher.eval(), xs, progress=True)

        return t.label_with(examples, predict), False
    t.check_labels(examples, path)
    return examples, True


def prune(model: str | Path, keep_layers: str | int | list[int], out: str | Path) -> list[int]:
    """``model`` with only some of its encoder layers (a count, evenly spaced, or indices), no training,
    written to ``out`` as the same kind of directory; returns the layers kept."""
    from .checkpoint import load_pretrained, save_pretrained
    from .distill import drop_layers, kept_layers
    from .infer import save_sentence_transformer

    md = ModelDir.open(model)
    out = check_out_dir(out)
    if out.exists() and out.samefile(md.path):
        raise BertforgeError(f"{out}: is the --model directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        raise BertforgeError(f"{out}: is not empty; choose another --out")
    kept = kept_layers(keep_layers, md.config.num_hidden_layers)
    if saved_spec(md) is not None:
        t = fine_tuned(md)
        t.export(drop_layers(t.load_model(md), kept), out)
    elif (md.root / "modules.json").is_file():
        save_sentence_transformer(drop_layers(load_pretrained(md), kept), out, md.tokenizer, md.sentence)
    else:
        save_pretrained(drop_layers(load_pretrained(md), kept), out, tokenizer=md.tokenizer)
    return kept
