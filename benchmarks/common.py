"""What every benchmark script shares: its command line's look, one way to give a list, the machine
line printed with every result, and ``--busy N`` (N cores kept busy by spinning processes)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written (its example commands keep their lines), and each option's
    default after its help, unless it has none or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and default not in (None, "", [], argparse.SUPPRESS)
            and default is not False
            and "default" not in text
        ):
            text += " (default: %s)" % (",".join(map(str, default)) if isinstance(default, list) else "%(default)s")
        return text


class Listed(argparse.Action):
    """A list option, given either way: ``--precisions fp32,bf16`` or ``--precisions fp32 bf16``.
    Each item is converted by ``item`` and, with ``options``, must be one of them."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        item: Callable[[str], Any] = str,
        options: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("nargs", "+")
        if options and "metavar" not in kwargs:
            kwargs["metavar"] = "{" + ",".join(map(str, options)) + "}"
        super().__init__(option_strings, dest, **kwargs)
        self.item, self.options = item, options

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = []
        for part in (p for value in values for p in value.split(",") if p):
            try:
                value = self.item(part)
            except ValueError:
                parser.error(f"{option_string}: {part!r} is not a valid {getattr(self.item, '__name__', 'value')}")
            if self.options is not None and value not in self.options:
                parser.error(f"{option_string}: {part!r} is not one of {', '.join(map(str, self.options))}")
            items.append(value)
        if not items and self.nargs == "+":
            parser.error(f"{option_string}: give at least one value")
        setattr(namespace, self.dest, items)


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)


def machine() -> str:
    """The CPU model, its vector and matrix extensions, and the CPUs this process may use."""
    from bertforge.device import available_cpus
    from bertforge.kernels import cpu_model
    from bertforge.precision import cpu_flags

    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")
    have = [f for f in wanted if f in cpu_flags()]
    return f"CPU: {cpu_model()} ({', '.join(have) or 'no AVX2'}); {available_cpus()} CPUs available to this process"


def add_busy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--busy", type=int, default=0, help="keep N cores busy with spinning processes during the run")


@contextmanager
def busy(n: int) -> Iterator[None]:
    """``n`` processes spinning (another tenant on a shared machine), stopped on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def timed_finetune(task: str, spec: Any, data: Any, train_csv: Any, args: Any, workdir: Any, warmup: int, **extra: Any):
    """`finetune` as the fine-tuning benchmarks run it (minilm-l6, one evaluation at the end, the logs at
    every ``warmup`` steps); returns the run's training log rows and its examples/s after the first log."""
    import json

    from bertforge import finetune
    from bertforge.train import TrainArgs

    targs = TrainArgs(
        out=workdir / "run", epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, warmup=0.1, seed=args.seed,
        eval_every=10**9, patience=0, progress=False, device=args.device, log_every=warmup, **extra,
    )  # fmt: skip
    finetune(task, "minilm-l6", train_csv, workdir, valid_file=data / "valid.csv", spec=spec, args=targs)
    rows = [json.loads(x) for x in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    first, last = train[0], train[-1]  # first: the log at step `warmup`
    return train, (last["step"] - first["step"]) * args.batch_size / (last["elapsed_s"] - first["elapsed_s"])
