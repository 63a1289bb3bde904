"""Commands that make models smaller and show what it costs: distil, prune, compare, and reading an
exported ONNX encoder back into a model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .args import Deferred, build, field_options, option, typed
from .common import Device, app
from .training import FINETUNE_ARGS, TRAIN_BOUNDS

DISTILL_HELP = {
    "temperature": "Softens teacher and student distributions alike (Hinton et al.; KL times T^2).",
    "alpha": "The soft targets' share of the loss, the hard labels' the rest (1 without labels).",
    "hidden_weight": "Weight of each student layer's hidden-state MSE to its teacher layer's (TinyBERT; 0: off).",
    "attention_weight": "Weight of each layer's attention-distribution KL to its teacher layer's (MiniLM; 0: off).",
}


@app.command(cls=Deferred)
def distill() -> None:
    """Distil a fine-tuned model (any task) or a sentence encoder into a smaller student.

    The student: --keep N or --layers 0,2,4 (the teacher's layers, DistilBERT's start), --preset (a random
    model of that size) or --student DIR (a pretrained model with the teacher's vocabulary). --train
    without labels is labelled by the teacher (give a labelled --valid then). The student is written to
    OUT as an ordinary model of the teacher's task, the run to OUT/run; OUT/valid_metrics.json holds the
    student's validation metrics before and after, and the teacher's.
    """


def _distill(
    teacher: str,
    train: Path,
    out: Path,
    valid: Path | None,
    keep: int | None,
    layers: str | None,
    preset: str | None,
    student: str | None,
    device: str | None,
    temperature: float,
    alpha: float,
    hidden_weight: float,
    attention_weight: float,
    **train_values,
) -> None:
    from ..api import distill as run
    from ..distill import DistillSettings
    from ..errors import BertforgeError
    from ..train import TrainArgs

    if keep is not None and layers is not None:
        raise BertforgeError("give --keep or --layers, not both")
    settings = DistillSettings(temperature, alpha, hidden_weight, attention_weight)
    args = TrainArgs(out=out / "run", device=device, **train_values)
    shape = layers if layers is not None else keep
    result = run(teacher, train, out, valid, layers=shape, preset=preset, student=student, settings=settings, args=args)
    if result:

        def line(metrics: dict) -> str:
            return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "step" and isinstance(v, float))

        typer.echo(f"teacher: {line(result['teacher'])}")
        typer.echo(f"student before: {line(result['before'])}")
        typer.echo(f"student best (step {result.get('step')}): {line(result)}")
        typer.echo(f"wrote {out}")


def _distill_command():
    from ..distill import DistillSettings
    from ..train import TrainArgs

    params = [
        option(
            "teacher", str, help="The teacher: a fine-tuned model directory, or a sentence encoder (registry name)."
        ),
        option("train", Path, help="Training data in the task's format; labels optional.", dir_okay=False),
        option("out", Path, help="Output model directory (new, empty or a previous run's); the run goes to OUT/run."),
        option(
            "valid", Path | None, None, "Labelled validation data (default: 10% of a labelled --train).", dir_okay=False
        ),
        option(
            "keep",
            int | None,
            None,
            "Student of N teacher layers, evenly spaced from the first (6 -> 3: 0,2,4).",
            min=1,
        ),
        option("layers", str | None, None, "Student of these teacher layers, e.g. 0,2,4."),
        option("preset", str | None, None, "Student of this size, randomly initialised: tiny, mini, L4-H256 ..."),
        option(
            "student", str | None, None, "Student initialised from this pretrained model (the teacher's vocabulary)."
        ),
        typed("device", Device, None),
        *field_options(DistillSettings, DISTILL_HELP),
        *field_options(TrainArgs, FINETUNE_ARGS, bounds=TRAIN_BOUNDS),
    ]
    return build(_distill, params, distill.__doc__)


Deferred.builders.update(distill=_distill_command)


@app.command()
def prune(
    model: Annotated[str, typer.Option("--model", "-m", help="Model directory or registry name, of any task.")],
    keep_layers: Annotated[
        str, typer.Option("--keep-layers", help="N (evenly spaced from the first) or indices, e.g. 0,2,4.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="New directory, the same kind as --model (loads in transformers).")
    ],
) -> None:
    """Drop encoder layers, without training: the directory kept otherwise as it was."""
    from ..api import prune as run

    kept = run(model, keep_layers, out)
    typer.echo(f"kept layers {','.join(map(str, kept))}; wrote {out}")


@app.command()
def compare(
    models: Annotated[
        list[str], typer.Option("--models", help="Model directories of one task; repeat or space-separate.")
    ],
    data: Annotated[Path, typer.Option("--data", help="Labelled test data in the task's format.", dir_okay=False)],
    precisions: Annotated[
        str, typer.Option("--precisions", help="Comma-separated: fp32, bf16, int8 ...")
    ] = "fp32,int8",
    plot: Annotated[Path | None, typer.Option("--plot", help="Speed-against-metric plot (PNG).")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="The rows as JSON.")] = None,
    device: Device = None,
) -> None:
    """Each model's task metric, size and measured seq/s at each precision, as a table and a plot."""
    import json

    from ..compare import compare as run
    from ..compare import plot as draw
    from ..compare import table

    rows = run(models, data, tuple(p.strip() for p in precisions.split(",") if p.strip()), device)
    typer.echo(table(rows))
    if output is not None:
        output.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    if plot is not None:
        typer.echo(f"wrote {draw(rows, plot)}")


@app.command("convert-onnx")
def convert_onnx(
    onnx: Annotated[
        str, typer.Option("--onnx", help="An exported BERT graph, or a registry name (minilm-l3-paraphrase).")
    ],
    tokenizer: Annotated[
        str, typer.Option("--tokenizer", help="Directory or registry name whose vocabulary it reads.")
    ],
    out: Annotated[Path, typer.Option("--out", help="The sentence-transformers directory to write.")],
    heads: Annotated[int, typer.Option("--heads", help="Attention heads (not in the weights).", min=1)] = 12,
) -> None:
    """Read a sentence-transformers ONNX graph (mean pooling) back into a model directory."""
    from ..assets import REGISTRY, fetch
    from ..onnx_import import convert

    path = fetch(onnx, quiet=True) if onnx in REGISTRY else Path(onnx)
    typer.echo(f"wrote {convert(path, tokenizer, out, heads)}")
