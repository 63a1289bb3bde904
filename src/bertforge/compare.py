"""Models side by side on one labelled file: the task's metric, the model's size and its measured
sequences per second at each precision; a table and a plot of speed against accuracy
(``bertforge compare``), the picture to choose a smaller model by."""

from __future__ import annotations

import time
from pathlib import Path

from .errors import BertforgeError


def compare(
    models: list[str | Path],
    data: str | Path,
    precisions: tuple[str, ...] = ("fp32", "int8"),
    device: str | None = None,
) -> list[dict]:
    """One row per model and precision: name, task, metric, its value, parameters, MB on disk, seq/s.
    Every model must be of one task (the file is read the first model's way)."""
    from .modeldir import ModelDir
    from .tasks import distill_task

    if not models:
        raise BertforgeError("give models to compare")
    tasks = [distill_task(ModelDir.open(m)) for m in models]
    names = {t.name for t in tasks}
    if len(names) > 1:
        raise BertforgeError(f"the models are of different tasks ({', '.join(sorted(names))}): compare one task")
    examples = tasks[0].read(Path(data), labelled=True)
    rows = []
    for m, t in zip(models, tasks, strict=True):
        md = ModelDir.open(m)
        t.check_labels(examples, Path(data))
        for precision in precisions:
            net = t.load(md, device, precision)
            t.predict(net, examples[:32])  # warm-up: the first batches pay for allocation and kernel choice
            start = time.perf_counter()
            predictions = t.predict(net, examples)
            seconds = time.perf_counter() - start
            metric = t.select_metric
            value = t.score(predictions, examples).get(metric)
            rows.append(
                {
                    "model": str(m),
                    "task": t.name,
                    "precision": precision,
                    "metric": metric,
                    "value": float(value) if value is not None else float("nan"),
                    "layers": md.config.num_hidden_layers,
                    "parameters": _parameters(md),
                    "mb": round(sum(f.stat().st_size for f in md.path.glob("*.safetensors")) / 2**20, 1),
                    "seq_per_s": len(examples) / seconds,
                }
            )
    return rows


def _parameters(md) -> int:
    from .checkpoint import read_weights

    return sum(t.numel() for t in read_weights(md.path).values())


def table(rows: list[dict]) -> str:
    """The rows as an aligned text table, with each model's speed relative to the first row's."""
    base = rows[0]["seq_per_s"]
    metric = rows[0]["metric"]
    head = f"{'model':<28} {'precision':<9} {'layers':>6} {'params':>9} {'MB':>7} {metric:>9} {'seq/s':>8} {'speed':>6}"
    lines = [head]
    for r in rows:
        name = Path(r["model"]).name or r["model"]
        lines.append(
            f"{name[:28]:<28} {r['precision']:<9} {r['layers']:>6} {r['parameters'] / 1e6:>8.1f}M {r['mb']:>7.1f} "
            f"{r['value']:>9.4f} {r['seq_per_s']:>8.1f} {r['seq_per_s'] / base:>5.2f}x"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str | Path) -> Path:
    """Speed (x, seq/s) against the metric (y): one point per model and precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {p: m for p, m in zip(dict.fromkeys(r["precision"] for r in rows), "osD^v<>", strict=False)}
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        color = ax.plot([r["seq_per_s"] for r in mine], [r["value"] for r in mine], "-", alpha=0.4)[0].get_color()
        for r in mine:
            ax.plot(r["seq_per_s"], r["value"], markers[r["precision"]], color=color)
            ax.annotate(f"{Path(name).name} {r['precision']}", (r["seq_per_s"], r["value"]), fontsize=7)
    ax.set_xlabel("sequences per second")
    ax.set_ylabel(rows[0]["metric"])
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
