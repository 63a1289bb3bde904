"""What every ``bertforge`` command shares: the app, common option types, reading text files, and
``main``, which turns every error in the user's input into one line on stderr and exit status 2."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import BertforgeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="BERT from scratch: load Hugging Face checkpoints, pretrain, fine-tune, embed and serve.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

Model = Annotated[str, typer.Option("--model", "-m", help="Model directory or registry name (e.g. minilm-l6).")]
Precision = Annotated[
    str, typer.Option("--precision", help="fp32 | bf16 (AVX512-BF16/AMX CPUs, GPUs) | fp16 (GPUs) | int8 (CPU) | auto.")
]
Runtime = Annotated[str, typer.Option("--runtime", help="torch | onnx (the graph written by `bertforge export onnx`).")]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present).")]
BATCH_BUDGET = "Padded tokens per model batch (default: 2048 on a CPU, 32768 on a GPU)."  # device.CPU/GPU_MAX_TOKENS
MaxTokens = Annotated[int | None, typer.Option("--max-tokens", help=BATCH_BUDGET)]
Compile = Annotated[
    bool,
    typer.Option(
        "--compile", help="Run the model through torch.compile: faster once its first pass has compiled (~30 s)."
    ),
]


def read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BertforgeError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        data = path.read_bytes()
        line = data[: e.start].count(b"\n") + 1
        raise BertforgeError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[e.start]:02x})") from None
    # split on "\n" only: str.splitlines would also break at U+2028, \x85, \x0c ... inside a text,
    # and the rows written would no longer match the file's lines
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_texts(path: Path) -> list[str]:
    """A text a line, every line a text: a blank line is an error (row i of the output is line i)."""
    texts = read_lines(path)
    if not texts:
        raise BertforgeError(f"{path}: no lines")
    for n, t in enumerate(texts, 1):
        if not t.strip():
            raise BertforgeError(f"{path}: line {n} is empty")
    return texts


def count(n: int, noun: str, plural: str | None = None) -> str:
    """'1 prediction', '5 predictions'."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def main() -> None:
    try:  # typer vendors click from 0.2x on; before, it ran on click itself
        from typer._click.exceptions import UsageError
    except ImportError:  # pragma: no cover
        from click.exceptions import UsageError

    logging.basicConfig(level=logging.WARNING, format="bertforge: %(message)s")
    try:
        code = app(standalone_mode=False)  # usage errors come here, to be one line like the others
    except BertforgeError as e:
        _fail(str(e))
    except UsageError as e:
        message = e.format_message()
        if "\n" in message:  # the help, for a command given no arguments
            e.show()
            sys.exit(e.exit_code)
        _fail(f"{message.rstrip('.')}; see '{_command(e.ctx)} --help'")
    except KeyboardInterrupt:
        print("bertforge: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)  # --help, or typer's exit status (130 for ^C)


def _command(ctx) -> str:
    """'bertforge export onnx': the command a click context parses, named as the errors name the program."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(["bertforge", *reversed(names)])


def _fail(message: str) -> None:
    print(f"bertforge: error: {message}", file=sys.stderr)
    sys.exit(2)
