"""The training loop through `bertforge pretrain`: exact resume after kill -9, DDP under torchrun
equal to one process, gradient accumulation equal to one big batch, checkpoints, metrics, plots."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertforge import BertConfig, BertforgeError
from bertforge.batch import budget_parts
from bertforge.data.pretrain import PretrainDataConfig, prepare
from bertforge.optim import Lamb, make_schedule
from bertforge.train import Dist, MetricsLog, TrainArgs, TrainState, _evaluate, checkpoints

ASSETS = Path(__file__).parent / "assets"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "en"
    prepare(
        [ASSETS / "corpus_en.txt"],
        ASSETS / "vocab_en.txt",
        out,
        PretrainDataConfig(max_seq_len=48, dupe_factor=2, eval_fraction=0.1),
        workers=1,
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def no_dropout(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    BertConfig.preset(
        "tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64
    ).save(path)
    return path


def pretrain(
    shards: Path, out: Path, *extra: str, steps: int = 12, launcher: list[str] | None = None, wait: bool = True
) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = (launcher or [str(BIN / "bertforge")]) + [
        "pretrain",
        "--data",
        str(shards),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--max-steps",
        str(steps),
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--warmup",
        "2",
        "--log-every",
        "1",
        "--eval-every",
        "6",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def train_losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_run_layout_and_final_model_loads_in_transformers(shards, tmp_path):
    run = tmp_path / "run"
    pretrain(shards, run, "--save-every", "4", "--keep-last", "2")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-12", "step-8"]
    assert (run / "curves.png").stat().st_size > 1000
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [6, 12]
    assert {"mlm_loss", "mlm_accuracy", "perplexity", "nsp_accuracy"} <= set(evals[0])
    assert evals[0]["perplexity"] == pytest.approx(torch.tensor(evals[0]["mlm_loss"]).exp().item(), rel=1e-5)
    losses = train_losses(run)
    assert len(losses) == 12 and losses[-1] < losses[0]
    from transformers import BertForPreTraining

    hf, info = BertForPreTraining.from_pretrained(run / "final", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    # a second run into the same directory must not clobber it
    proc = subprocess.run(
        [
            str(BIN / "bertforge"),
            "pretrain",
            "--data",
            str(shards),
            "--out",
            str(run),
            "--preset",
            "tiny",
            "--max-steps",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "pass --resume" in proc.stderr


def test_kill_9_and_resume_gives_identical_weights(shards, tmp_path):
    """Dropout on, dynamic state everywhere: a run killed with SIGKILL and resumed ends bit-identical."""
    straight = tmp_path / "straight"
    pretrain(shards, straight, "--save-every", "3", steps=15)

    killed = tmp_path / "killed"
    proc = pretrain(shards, killed, "--save-every", "3", steps=15, wait=False)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-6" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    pretrain(shards, killed, "--save-every", "3", "--resume", steps=15)

    a, b = weights(straight / "final"), weights(killed / "final")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert train_losses(killed) == train_losses(straight)


def test_resume_from_a_corrupt_checkpoint_is_a_one_line_error(shards, tmp_path):
    """Every file resume reads, corrupt (or missing): one line naming it and the way out, no traceback."""
    from conftest import assert_one_line_error

    run = tmp_path / "run"
    pretrain(shards, run, "--save-every", "2", steps=4)
    assert [p.name for p in checkpoints(run)] == ["step-2", "step-4"]
    for name, garbage in [
        ("trainer_state.json", b'{"step": 4,'),
        ("rng.pt", b"not a zip"),
        ("rng.pt", None),
        ("optimizer.pt", b"not a zip"),
        ("model.safetensors", b"\x00" * 16),
        ("config.json", b"{"),
    ]:
        broken = tmp_path / f"broken-{name}-{garbage is None}"
        shutil.copytree(run, broken)
        target = broken / "checkpoints" / "step-4" / name
        if garbage is None:
            target.unlink()
        else:
            target.write_bytes(garbage)
        cmd = [
            str(BIN / "bertforge"),
            "pretrain",
            "--data",
            str(shards),
            "--out",
            str(broken),
            "--preset",
            "tiny",
            "--max-steps",
            "6",
            "--batch-size",
            "8",
            "--save-every",
            "2",
            "--resume",
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600
        )
        assert_one_line_error(proc, f"{target}: ")
        assert (
            f"remove {broken / 'checkpoints' / 'step-4'} to resume from the checkpoint before it (step-2)"
            in proc.stderr
        )
        if garbage is None:
            assert "no such file" in proc.stderr
    # the way out works: without step-4, the run resumes from step-2
    shutil.rmtree(broken / "checkpoints" / "step-4")
    pretrain(shards, broken, "--save-every", "2", "--resume", steps=6)
    assert (broken / "final" / "model.safetensors").is_file()


def test_two_processes_match_one(shards, no_dropout, tmp_path):
    """torchrun with 2 CPU processes (gloo), the global batch split between them, takes the same steps
    as 1 process: losses within 1e-5, weights within 1e-5."""
    one = tmp_path / "one"
    said = pretrain(shards, one, "--config", str(no_dropout), "--save-every", "0").stderr
    assert f"{no_dropout}: vocab_size 30522 replaced by the shards' vocabulary's" in said  # not silently
    two = tmp_path / "two"
    launcher = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "bertforge"]
    pretrain(shards, two, "--config", str(no_dropout), "--save-every", "0", launcher=launcher)
    assert train_losses(two) == pytest.approx(train_losses(one), abs=1e-5)
    a, b = weights(one / "final"), weights(two / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    # only rank 0 wrote: one metrics file, one set of checkpoints
    assert len(list((two / "checkpoints").iterdir())) == 1


def test_continued_pretraining_starts_from_the_given_weights(shards, no_dropout, tmp_path):
    """--init: a second stage starts where the first ended (its first loss is the first stage's last
    level, not a fresh model's), and a model with another vocabulary is refused."""
    first = tmp_path / "first"
    pretrain(shards, first, "--config", str(no_dropout), "--save-every", "0", steps=12)
    second = tmp_path / "second"
    pretrain(shards, second, "--init", str(first / "final"), "--dropout", "0", "--save-every", "0", steps=1)
    fresh = train_losses(first)[0]
    assert train_losses(second)[0] < fresh - 0.5
    assert train_losses(second)[0] == pytest.approx(train_losses(first)[-1], abs=0.5)
    other = tmp_path / "other-vocab"
    from bertforge import BertModel, save_pretrained

    save_pretrained(BertModel(BertConfig.preset("tiny", vocab_size=77)), other)
    proc = subprocess.run(
        [
            str(BIN / "bertforge"),
            "pretrain",
            "--data",
            str(shards),
            "--out",
            str(tmp_path / "x"),
            "--init",
            str(other),
            "--max-steps",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "vocabulary has 77 entries" in proc.stderr and "Traceback" not in proc.stderr


def test_pretrain_refuses_a_vocabulary_changed_since_the_shards(tmp_path):
    """prepare-pretrain records the vocabulary's sha256: a vocab.txt regenerated in place (larger: the wrong
    words silently; smaller: an IndexError) is refused in one line, as is a missing one."""
    from conftest import assert_one_line_error

    vocab = tmp_path / "vocab.txt"
    vocab.write_bytes((ASSETS / "vocab_en.txt").read_bytes())
    data = tmp_path / "shards"
    prepare(
        [ASSETS / "corpus_en.txt"],
        vocab,
        data,
        PretrainDataConfig(max_seq_len=48, dupe_factor=1),
        workers=1,
        progress=False,
    )
    tokens = vocab.read_text(encoding="utf-8").splitlines()
    cmd = [
        str(BIN / "bertforge"),
        "pretrain",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--preset",
        "tiny",
        "--max-steps",
        "1",
        "--batch-size",
        "8",
        "--save-every",
        "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for changed in (tokens + ["zzzextra"], tokens[: len(tokens) // 2]):
        vocab.write_text("".join(t + "\n" for t in changed), encoding="utf-8")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert_one_line_error(proc, f"{vocab}: changed since prepare-pretrain")
        assert f"{data / 'manifest.json'}" in proc.stderr and "re-run prepare-pretrain" in proc.stderr
    vocab.unlink()
    assert_one_line_error(
        subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600),
        f"{vocab}: no such file; it is the vocabulary",
    )
    assert not (tmp_path / "run" / "checkpoints").exists()
    vocab.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")  # restored: it trains
    assert subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600).returncode == 0


def test_grad_accumulation_matches_big_batch(shards, no_dropout, tmp_path):
    big = tmp_path / "big"
    pretrain(shards, big, "--config", str(no_dropout), "--save-every", "0", steps=6)
    acc = tmp_path / "acc"
    pretrain(shards, acc, "--config", str(no_dropout), "--save-every", "0", "--grad-accum", "4", steps=6)
    assert train_losses(acc) == pytest.approx(train_losses(big), abs=1e-5)


def test_a_token_budget_splits_batches_without_changing_the_step(shards, no_dropout, tmp_path):
    big = tmp_path / "big"
    pretrain(shards, big, "--config", str(no_dropout), "--save-every", "0", steps=6)
    parts = tmp_path / "parts"
    pretrain(shards, parts, "--config", str(no_dropout), "--save-every", "0", "--max-tokens", "100", steps=6)
    assert train_losses(parts) == pytest.approx(train_losses(big), abs=1e-5)


def test_budget_parts_keep_whole_examples_under_the_budget():
    sizes = [(1, 10), (3, 50), (1, 40), (2, 20), (1, 300)]  # (rows, longest row) of each example
    assert budget_parts([sizes[i] for i in (0, 2, 3)], 200) == [[0, 1, 2]]  # it fits: one part, in order
    parts = budget_parts(sizes, 200)
    assert sorted(i for p in parts for i in p) == [0, 1, 2, 3, 4]
    assert [4] in parts  # over the budget alone: a part of its own
    for p in parts:
        rows, longest = sum(sizes[i][0] for i in p), max(sizes[i][1] for i in p)
        assert len(p) == 1 or rows * longest <= 200


def test_bf16_lamb_cosine_run(shards, tmp_path):
    run = tmp_path / "bf16"
    pretrain(shards, run, "--precision", "bf16", "--optimizer", "lamb", "--schedule", "cosine", "--save-every", "0")
    losses = train_losses(run)
    assert all(map(lambda x: x == x, losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize(
    "name, value, least",
    [
        ("batch_size", 0, 1),
        ("grad_accum", 0, 1),
        ("max_tokens", 0, 1),
        ("log_every", 0, 1),
        ("lr", -1.0, 0),
        ("lr", float("nan"), 0),
        ("weight_decay", -0.1, 0),
        ("max_steps", 0, 1),
    ],
)
def test_train_args_refuse_what_the_loop_would_crash_on(tmp_path, name, value, least):
    """A division by zero or torch's optimizer, once the run has begun writing; the API's way to the loop
    (bertforge.finetune) is checked here, the command line's options by their bounds."""
    with pytest.raises(BertforgeError, match=rf"^{name} must be at least {least}, not {value}$"):
        TrainArgs(out=tmp_path, **{name: value})


@pytest.mark.parametrize("epochs", [0, -1.0, float("nan")])
def test_train_args_refuse_no_epochs(tmp_path, epochs):
    with pytest.raises(BertforgeError, match=rf"^epochs must be more than 0, not {epochs}$"):
        TrainArgs(out=tmp_path, epochs=epochs)


def test_schedules_and_lamb():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=1.0)
    lin = make_schedule(opt, "linear", warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        lin.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    with pytest.raises(BertforgeError):
        make_schedule(opt, "exponential", 1, 2)
    # LAMB's step is Adam's direction rescaled by the trust ratio ||w|| / ||update||
    w = torch.nn.Parameter(torch.full((4,), 2.0))
    w.grad = torch.tensor([1.0, -1.0, 1.0, -1.0])
    Lamb([w], lr=0.1).step()
    # ||w|| = 4, ||update|| = ||sign(g)|| = 2: trust ratio 2, step 0.1 * 2 = 0.2 against the gradient
    assert torch.allclose(w.detach(), torch.tensor([1.8, 2.2, 1.8, 2.2]), atol=1e-4)


def test_finetune_under_torchrun(tmp_path):
    """Fine-tuning runs under torchrun like pretraining: 2 processes, rank 0 writes one model."""
    import csv
    import random

    from bertforge import BertModel, Tokenizer, save_pretrained

    tok = Tokenizer.from_pretrained(ASSETS / "vocab_en.txt")
    torch.manual_seed(0)
    model_dir = save_pretrained(
        BertModel(BertConfig.preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=64)),
        tmp_path / "tiny",
        tokenizer=tok,
    )
    rnd = random.Random(0)
    words = (ASSETS / "corpus_en.txt").read_text().split()[:200]
    with (tmp_path / "train.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(96):
            label = rnd.choice(["a", "b"])
            w.writerow([" ".join(rnd.sample(words, 6)) + (" lighthouse" if label == "a" else " river"), label])
    cmd = [
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "bertforge",
        "finetune",
        "classify",
        "--model",
        str(model_dir),
        "--train",
        str(tmp_path / "train.csv"),
        "--out",
        str(tmp_path / "out"),
        "--max-steps",
        "6",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    rows = [json.loads(x) for x in (tmp_path / "out" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "eval"] == [6]
    assert "accuracy" in json.loads((tmp_path / "out" / "valid_metrics.json").read_text())


class _ScriptedTask:
    """Validation rows given in advance; export writes the step it was called at."""

    def __init__(self, rows: list[dict[str, float]]):
        self.rows, self.step = iter(rows), 0

    def evaluate(self, model) -> dict[str, float]:
        return next(self.rows)

    def export(self, model, directory: Path) -> None:
        directory.mkdir(parents=True)
        (directory / "step").write_text(str(self.step))


def _select(tmp_path: Path, metric: str, values: list[float], patience: int = 0) -> tuple[TrainState, list[bool]]:
    """The training loop's evaluations on these values of ``metric``: its state, and whether each said stop."""
    args = TrainArgs(out=tmp_path, select_metric=metric, patience=patience, progress=False)
    task, state = _ScriptedTask([{metric: v, "other": 0.0} for v in values]), TrainState()
    log = MetricsLog(tmp_path / "metrics.jsonl", False, None)
    stops = []
    for step in range(1, len(values) + 1):
        state.step = task.step = step
        stops.append(_evaluate(torch.nn.Linear(2, 2), task, args, state, Dist(), log, None))
    return state, stops


@pytest.mark.parametrize("metric", ["mse", "mae"])
def test_errors_are_minimised_when_keeping_the_best_and_stopping_early(metric, tmp_path):
    state, stops = _select(tmp_path / "down", metric, [0.9, 0.5, 0.4, 0.2], patience=1)
    assert (state.best_step, state.best_metric, state.bad_evals) == (4, 0.2, 0)
    assert (tmp_path / "down" / "best" / "step").read_text() == "4" and not any(stops)
    state, stops = _select(tmp_path / "up", metric, [0.3, 0.2, 0.25, 0.4], patience=2)
    assert (state.best_step, state.best_metric, state.bad_evals) == (2, 0.2, 2)
    assert (tmp_path / "up" / "best" / "step").read_text() == "2" and stops == [False, False, False, True]


def test_scores_are_maximised_when_keeping_the_best_and_stopping_early(tmp_path):
    state, stops = _select(tmp_path, "accuracy", [0.5, 0.7, 0.6, 0.65], patience=2)
    assert (state.best_step, state.best_metric, state.bad_evals) == (2, 0.7, 2)
    assert (tmp_path / "best" / "step").read_text() == "2" and stops == [False, False, False, True]
