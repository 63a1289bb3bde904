"""Training curves: RUN/metrics.jsonl -> RUN/curves.png (``bertforge plot RUN``)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import BertforgeError


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise BertforgeError(f"{path}: no such file (is {run} a training run?)")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise BertforgeError(f"{path}: line {n} is not JSON") from None
    if not rows:
        raise BertforgeError(f"{path}: is empty: nothing to plot yet")
    return rows


def run_title(run: Path) -> str:
    """The run's name: OUT for a finetune's OUT/run."""
    run = run.resolve()
    return run.parent.name if run.name == "run" else run.name


def plot_run(run: str | Path, out: str | Path | None = None) -> Path:
    """One panel for the training loss, one for the learning rate, one per evaluation metric; a metric
    ``M_baseline`` is drawn dashed in M's panel (a majority-class accuracy beside the accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    if not (run / "metrics.jsonl").is_file() and (run / "run" / "metrics.jsonl").is_file():
        run = run / "run"  # a finetune --out directory: its run is OUT/run
    rows = read_metrics(run)
    train = [r for r in rows if r.get("split") == "train"]
    evals = [r for r in rows if r.get("split") == "eval"]
    metric_names = sorted(
        {k for r in evals for k, v in r.items() if k not in ("step", "split") and isinstance(v, (int, float))}
    )
    panels = [("training loss", "loss", train), ("learning rate", "lr", train)]
    baselines = {m for m in metric_names if m.endswith("_baseline") and m.removesuffix("_baseline") in metric_names}
    panels += [(f"eval {m}", m, evals) for m in metric_names if m not in baselines]
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, (title, key, series) in zip(axes.flat, panels, strict=False):
        pts = [(r["step"], r[key]) for r in series if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) < 30 else None, markersize=3)
        base = [(r["step"], r[key + "_baseline"]) for r in series if key + "_baseline" in baselines & r.keys()]
        if base:
            ax.plot(*zip(*base, strict=True), linestyle="--", color="grey", label="majority baseline")
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(run_title(run))
    fig.tight_layout()
    out = Path(out) if out else run / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
