"""Commands that train: prepare pretraining data, pretrain, fine-tune, plot a run."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer

from ..errors import BertforgeError
from ..spec import TaskSpec
from .args import Deferred, build, field_options, option, settings_options, task_settings, typed
from .common import Device, Model, app


@app.command("prepare-pretrain")
def prepare_pretrain(
    corpus: Annotated[list[str], typer.Option("--corpus", help="Text or JSONL file(s) or globs; repeat the option.")],
    vocab: Annotated[str, typer.Option("--vocab", help="vocab.txt, tokenizer.json, model directory or registry name.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the shards and manifest.json.")],
    max_seq_len: Annotated[
        int, typer.Option("--max-seq-len", help="Tokens per instance, [CLS] and [SEP] included.")
    ] = 128,
    nsp: Annotated[
        bool,
        typer.Option(
            "--nsp/--no-nsp",
            help="Sentence pairs with next-sentence labels, or each document cut into single segments of up to "
            "--max-seq-len tokens (MLM only).",
        ),
    ] = True,
    sop: Annotated[
        bool,
        typer.Option(
            "--sop", help="Sentence-order pairs (ALBERT): B is A's continuation, the two swapped half the time."
        ),
    ] = False,
    pack: Annotated[
        bool,
        typer.Option(
            "--pack",
            help="With --no-nsp: segments run on into the next document, a separator between (RoBERTa's "
            "FULL-SENTENCES).",
        ),
    ] = False,
    whole_word_mask: Annotated[
        bool, typer.Option("--whole-word-mask", help="Mask whole words (Chinese: words from --zh-segmenter).")
    ] = False,
    dynamic_mask: Annotated[
        bool, typer.Option("--dynamic-mask", help="Store no masks; draw them per batch at training time.")
    ] = False,
    dupe_factor: Annotated[
        int, typer.Option("--dupe-factor", help="Passes over the data, each with fresh pairs and masks.")
    ] = 5,
    seed: Annotated[
        int, typer.Option("--seed", help="Seeds the sentence pairs, the masks and the held-out documents.")
    ] = 0,
    eval_fraction: Annotated[
        float, typer.Option("--eval-fraction", help="Documents held out for evaluation (at least 1 of 2+).")
    ] = 0.01,
    masked_lm_prob: Annotated[float, typer.Option("--masked-lm-prob", help="Fraction of tokens to predict.")] = 0.15,
    max_predictions_per_seq: Annotated[
        int, typer.Option("--max-predictions-per-seq", help="Cap on masked tokens per instance.")
    ] = 20,
    short_seq_prob: Annotated[
        float, typer.Option("--short-seq-prob", help="Documents that aim for a random shorter length.")
    ] = 0.1,
    shard_size: Annotated[int, typer.Option("--shard-size", help="Instances per shard file.")] = 100_000,
    workers: Annotated[int | None, typer.Option("--workers", help="Processes (default: all cores).")] = None,
    zh_segmenter: Annotated[
        str, typer.Option("--zh-segmenter", help="Chinese word boundaries for --whole-word-mask: jieba | none.")
    ] = "jieba",
) -> None:
    """Turn text corpora into masked-LM / next-sentence instances on disk, for `bertforge pretrain`.

    Text files: one sentence a line or paragraphs (split into sentences), a blank line between
    documents. JSONL: one document a record, in its "text" field.
    """
    import time

    from ..data.pretrain import PretrainDataConfig, prepare

    config = PretrainDataConfig(
        max_seq_len=max_seq_len,
        nsp=nsp,
        sop=sop,
        pack=pack,
        whole_word_mask=whole_word_mask,
        dynamic_mask=dynamic_mask,
        masked_lm_prob=masked_lm_prob,
        max_predictions_per_seq=max_predictions_per_seq,
        short_seq_prob=short_seq_prob,
        dupe_factor=dupe_factor,
        seed=seed,
        eval_fraction=eval_fraction,
        shard_size=shard_size,
        zh_segmenter=zh_segmenter,
    )
    start = time.perf_counter()
    manifest = prepare(corpus, vocab, out, config, workers=workers)
    train, held_out = manifest["splits"]["train"], manifest["splits"]["eval"]
    shards = len(train["shards"]) + len(held_out["shards"])
    typer.echo(
        f"wrote {out}: {manifest['corpus']['documents']:,} documents ({held_out['documents']:,} held out), "
        f"{train['instances']:,} train + {held_out['instances']:,} eval instances, "
        f"{train['tokens'] + held_out['tokens']:,} tokens, {shards} shard(s) in {time.perf_counter() - start:.1f}s"
    )


# -- the training arguments: TrainArgs' fields, with each command's defaults and help -------------------
TRAIN_BOUNDS = {
    "max_steps": {"min": 1},
    "batch_size": {"min": 1},
    "grad_accum": {"min": 1},
    "max_tokens": {"min": 1},
    "lr": {"min": 0},
    "weight_decay": {"min": 0},
    "log_every": {"min": 1},
    "select_metric": {"param_decls": ("--metric",)},
}
DECAY = "AdamW weight decay (not on biases and LayerNorms)."
PRETRAIN_ARGS = {
    "max_steps": (10000, "Optimizer steps."),
    "batch_size": (128, "Sequences per step, over all processes."),
    "grad_accum": (1, "Micro-batches per step."),
    "max_tokens": (
        None,
        "Padded tokens per forward pass; a bigger micro-batch runs in parts, same step (default 2048 on a CPU, 32768 "
        "on a GPU).",
    ),
    "lr": (1e-4, "Peak learning rate."),
    "warmup": (0.05, "Warmup steps (>= 1) or fraction of steps (< 1)."),
    "schedule": ("linear", "linear | cosine | constant decay after warmup."),
    "optimizer": ("adamw", "adamw | lamb (for large batches)."),
    "weight_decay": (0.01, DECAY),
    "save_every": (1000, "Checkpoint every N steps (0: at the end)."),
    "keep_last": (2, "Checkpoints kept."),
    "eval_every": (1000, "Evaluate every N steps (0: at the end)."),
    "log_every": (10, "Log training metrics every N steps."),
    "seed": (0, "Seeds the initialisation, the data order and dropout."),
    "precision": ("fp32", "fp32 | bf16 (autocast)."),
    "compile": (False, "torch.compile the model."),
    "resume": (False, "Continue from the newest checkpoint in --out."),
}
FINETUNE_ARGS = {
    "epochs": (3.0, "Passes over --train (fractions allowed)."),
    "max_steps": (None, "Stop after N steps (overrides --epochs)."),
    "lr": (5e-5, "Peak learning rate (AdamW; linear warmup, then linear decay)."),
    "batch_size": (32, "Examples (windows) per optimizer step, over all processes."),
    "grad_accum": (1, "Split each step into N micro-batches (same result, less memory)."),
    "max_tokens": (
        None,
        "Padded tokens per forward pass; a bigger micro-batch runs in parts, same step (default 2048 on a CPU, 32768 "
        "on a GPU).",
    ),
    "warmup": (0.1, "Warmup steps (>= 1) or fraction (< 1)."),
    "weight_decay": (0.01, DECAY),
    "eval_every": (0, "Validate every N steps (0: every epoch)."),
    "patience": (2, "Stop after N validations without improvement (0: never)."),
    "select_metric": (None, "Validation metric that picks the best model (default: the task's; mse, mae: the lowest)."),
    "seed": (0, "Seeds the head's initialisation, the data order and dropout."),
    "precision": ("fp32", "fp32 | bf16"),
    "save_every": (0, "Checkpoint every N steps (0: at the end)."),
    "resume": (False, "Continue from the newest checkpoint in OUT/run."),
}
# TaskSpec's fields that finetune takes (max_length None: the task's default)
SPEC_ARGS = {
    "text_column": ("text", "Column (JSONL field) holding the text."),
    "text_pair_column": (
        None,
        "Second text's column (pair: default text_pair; classify and regress read pairs when the training file has a "
        "text_pair column).",
    ),
    "label_column": ("label", "Column holding the label (regress: the number)."),
    "multi_label": (False, "classify: several labels per text (a JSON list or 'a|b'; an empty cell: none of them)."),
    "max_length": (None, "Tokens per window (default 128; qa 384, extsum 512)."),
    "long_text": ("window", "Texts over --max-length: window (overlapping windows, logits averaged) | truncate."),
    "stride": (None, "Window overlap in tokens (default max-length/4)."),
}


def dropout_option(help: str):
    return option("dropout", float | None, None, help, min=0, max=1)


@app.command(cls=Deferred)
def pretrain() -> None:
    """Pretrain BERT (masked LM, plus next-sentence prediction when the shards have it), or ELECTRA
    (--objective electra: a small generator fills the masks, the discriminator spots its replacements).

    Runs under torchrun for data parallelism:
    torchrun --nproc-per-node 2 -m bertforge pretrain --data SHARDS --out RUN
    """


def _pretrain(
    data: Path,
    out: Path,
    preset: str,
    family: str | None,
    objective: str | None,
    generator_size: float,
    discriminator_weight: float,
    config: Path | None,
    init: str | None,
    dropout: float | None,
    device: str | None,
    **train_args,
) -> None:
    from ..api import pretrain as run
    from ..train import TrainArgs

    args = TrainArgs(out=out, device=device, **train_args)
    electra = {"generator_size": generator_size, "discriminator_weight": discriminator_weight}
    if run(data, out, args, preset=preset, family=family, config=config, init=init, dropout=dropout,
           objective=objective, **electra):  # fmt: skip
        typer.echo(f"wrote {out / 'final'} and {out / 'curves.png'}")


def _pretrain_command():
    from ..train import TrainArgs

    params = [
        option("data", Path, help="Shards written by prepare-pretrain."),
        option("out", Path, help="Run directory: checkpoints/, metrics.jsonl, curves.png, final/."),
        option("preset", str, "mini", "Model size: tiny, mini, small, medium, base, large or L{n}-H{m}."),
        option(
            "family",
            str | None,
            None,
            "The preset's family: bert, roberta, xlm-roberta, distilbert, albert, electra (shards without NSP for "
            "RoBERTa and DistilBERT; --sop shards for ALBERT's sentence order). Default: bert; electra for "
            "--objective electra.",
        ),
        option(
            "objective",
            str | None,
            None,
            "mlm | mlm+nsp | electra (replaced-token detection; the discriminator goes to final/, the generator "
            "to final/generator/). Default: mlm+nsp on shards of sentence pairs, else mlm.",
        ),
        option(
            "generator_size",
            float,
            0.25,
            "ELECTRA: the generator's width as a fraction of the discriminator's (the paper: 1/4 small, 1/3 base).",
            min=0.01,
            max=1.0,
        ),
        option(
            "discriminator_weight",
            float,
            50.0,
            "ELECTRA: the weight of the discriminator's loss beside the generator's (the paper's 50).",
            min=0.0,
        ),
        option("config", Path | None, None, "A config.json instead of a preset.", dir_okay=False),
        option(
            "init",
            str | None,
            None,
            "Start from this model's weights (continued or domain-adaptive pretraining); "
            "its vocabulary must be the shards'.",
        ),
        *field_options(TrainArgs, PRETRAIN_ARGS, bounds=TRAIN_BOUNDS),
        dropout_option(
            "Hidden and attention dropout (default: the preset's, 0.1 as in BERT; short runs learn faster with 0)."
        ),
        typed("device", Device, None),
    ]
    return build(_pretrain, params, pretrain.__doc__)


@app.command()
def plot(
    run: Annotated[
        Path,
        typer.Argument(help="A run directory with metrics.jsonl (pretrain --out), or a finetune --out (its run/)."),
    ],
) -> None:
    """Plot a run's training and evaluation curves to RUN/curves.png."""
    from ..plot import plot_run

    typer.echo(plot_run(run))


@app.command(cls=Deferred)
def finetune() -> None:
    """Fine-tune a model on your own data; keeps the best checkpoint by the validation metric.

    Metrics: classify/pair accuracy (and macro F1), regress Pearson, tag entity F1, qa SQuAD F1,
    extsum sentence F1 against labels (ROUGE-2 against summaries when the validation data has no labels),
    embed Spearman of cosine on scored pairs (recall@1 and MRR on pairs).
    """


def _finetune(
    task: str,
    model: str,
    train: Path,
    out: Path,
    valid: Path | None,
    dropout: float | None,
    device: str | None,
    **values,
) -> None:
    from ..api import finetune as run
    from ..tasks import TASKS, TaskSpec
    from ..train import TrainArgs

    if task not in TASKS:
        raise BertforgeError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    spec_values = {k: values.pop(k) for k in SPEC_ARGS}
    train_values = {k: values.pop(k) for k in FINETUNE_ARGS}
    spec_values["max_length"] = spec_values["max_length"] or TASKS[task].default_max_length
    spec = TaskSpec(task, **spec_values, extra=task_settings(task, values))
    args = TrainArgs(out=out / "run", device=device, **train_values)
    best = run(task, model, train, out, valid, spec=spec, args=args, dropout=dropout)
    if best:
        typer.echo(
            f"best validation (step {best.get('step')}): "
            + ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k != "step" and isinstance(v, float))
        )
        typer.echo(f"wrote {out}")


def _finetune_command():
    from ..tasks import TASKS
    from ..train import TrainArgs

    params = [
        inspect.Parameter(
            "task",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[str, typer.Argument(help=" | ".join(TASKS))],
        ),
        typed("model", Model),
        option(
            "train",
            Path,
            help="Training data: CSV, TSV or JSONL (tag: also CoNLL; qa: also SQuAD JSON).",
            dir_okay=False,
        ),
        option(
            "out",
            Path,
            help="Output model directory (Hugging Face format): new, empty or a previous run's; "
            "the run goes to OUT/run.",
        ),
        option("valid", Path | None, None, "Validation data (default: 10% of --train, seeded).", dir_okay=False),
        *field_options(TaskSpec, SPEC_ARGS),
        *field_options(TrainArgs, FINETUNE_ARGS, bounds=TRAIN_BOUNDS),
        dropout_option("Hidden and attention dropout (default: the checkpoint's)."),
        typed("device", Device, None),
        *settings_options(TASKS.values(), "help"),
    ]
    return build(_finetune, params, finetune.__doc__)


Deferred.builders.update(pretrain=_pretrain_command, finetune=_finetune_command)
