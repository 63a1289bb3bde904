"""Where the commands write: output paths checked before any work, inputs and models never written
over, no temporary file left behind, predictions beside the input's own fields, runs found by `plot`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_all

from bertforge import BertforgeError
from bertforge.cli import main
from bertforge.outputs import atomic_open, check_out_dir, check_output
from bertforge.plot import run_title


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return path


ROWS = [(f"a {w} film", "fresh") for w in ("good", "great", "superb", "lovely", "fine", "warm")] + [
    (f"a {w} film", "rotten") for w in ("bad", "awful", "dull", "poor", "weak", "cold")
]


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """(OUT, its training CSV, the finetune command's result): 2 steps on 24 rows, run with --resume
    on a new OUT, as a rerun after a preemption before the first checkpoint would be."""
    d = tmp_path_factory.mktemp("trained")
    train = _write_csv(d / "train.csv", ROWS * 2)
    [proc] = run_all(
        [
            "finetune",
            "classify",
            "-m",
            tiny_dir,
            "--train",
            train,
            "--valid",
            train,
            "--out",
            d / "out",
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--resume",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    return d / "out", train, proc


def test_resume_without_a_checkpoint_says_it_starts_from_step_0(trained):
    out, _, proc = trained
    said = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "resum" in ln]
    assert said == [f"bertforge: no checkpoint in {out / 'run'} to resume from: starting from step 0"]
    assert json.loads((out / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2


# -- the shared checks, in process ----------------------------------------------------------------------
def test_check_output(tmp_path):
    (tmp_path / "in.csv").write_text("text\nx\n")
    (tmp_path / "dir").mkdir()
    assert (
        check_output(tmp_path / "new" / "sub" / "p.jsonl", tmp_path / "in.csv") == tmp_path / "new" / "sub" / "p.jsonl"
    )
    assert not (tmp_path / "new").exists()  # checked, not created
    cases = [
        (tmp_path / "in.csv", f"{tmp_path / 'in.csv'}: is the input file; choose another output"),
        (tmp_path / "dir", f"{tmp_path / 'dir'}: is a directory"),
        (
            tmp_path / "in.csv" / "p.jsonl",
            f"{tmp_path / 'in.csv' / 'p.jsonl'}: {tmp_path / 'in.csv'} is a file, not a directory",
        ),
        (
            tmp_path / "in.csv" / "a" / "p.jsonl",
            f"{tmp_path / 'in.csv' / 'a' / 'p.jsonl'}: {tmp_path / 'in.csv'} is a file, not a directory",
        ),
        (Path("/proc/p.jsonl"), "/proc/p.jsonl: cannot write in /proc"),
    ]
    for path, message in cases:
        with pytest.raises(BertforgeError) as e:
            check_output(path, tmp_path / "in.csv")
        assert str(e.value) == message
    with pytest.raises(BertforgeError, match=r"in.csv: is a file, not a directory$"):
        check_out_dir(tmp_path / "in.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "in.csv"]  # no probe left behind


def test_atomic_open_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "sub" / "p.jsonl"
    with pytest.raises(KeyboardInterrupt), atomic_open(path) as f:
        f.write("half")
        raise KeyboardInterrupt
    assert list((tmp_path / "sub").iterdir()) == []
    with atomic_open(path) as f:
        f.write("whole\n")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["p.jsonl"] and path.read_text() == "whole\n"


# -- the commands ---------------------------------------------------------------------------------------
def test_unwritable_outputs_are_one_line_errors_before_any_work(trained, tiny_dir, tmp_path, monkeypatch, capsys):
    out, train, _ = trained
    new = tmp_path / "new.jsonl"
    new.write_text('{"text": "a fine film"}\n')
    texts = tmp_path / "texts.txt"
    texts.write_text("a fine film\n")
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"sentences": ["One.", "Two."]}\n')
    test = _write_csv(tmp_path / "test.csv", ROWS)
    (tmp_path / "adir").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine\n")
    model_files = sorted(tiny_dir.iterdir())
    before = {p: p.read_bytes() for p in (new, texts, docs, test, train, *model_files)}
    finetune = ["finetune", "classify", "-m", tiny_dir, "--train", train, "--max-steps", "1"]
    commands = {
        "predict": (["predict", "-m", out, "-i", new, "-o", tmp_path / "adir"], f"{tmp_path / 'adir'}: is a directory"),
        # the output is checked before the model loads: a model that is not there is not reached
        "predict, no model": (
            ["predict", "-m", tmp_path / "nope", "-i", new, "-o", tmp_path / "adir"],
            f"{tmp_path / 'adir'}: is a directory",
        ),
        "predict under a file": (
            ["predict", "-m", out, "-i", new, "-o", train / "p.jsonl"],
            f"{train / 'p.jsonl'}: {train} is a file, not a directory",
        ),
        "predict in /proc": (
            ["predict", "-m", out, "-i", new, "-o", "/proc/p.jsonl"],
            "/proc/p.jsonl: cannot write in /proc",
        ),
        "predict over its input": (
            ["predict", "-m", out, "-i", new, "-o", new],
            f"{new}: is the input file; choose another output",
        ),
        "evaluate": (
            ["evaluate", "-m", out, "--data", train, "--output", tmp_path / "adir"],
            f"{tmp_path / 'adir'}: is a directory",
        ),
        "evaluate over its input": (
            ["evaluate", "-m", out, "--data", test, "--output", test],
            f"{test}: is the input file; choose another output",
        ),
        "embed": (
            ["embed", "-m", out, "-i", texts, "-o", train / "e.npy"],
            f"{train / 'e.npy'}: {train} is a file, not a directory",
        ),
        "embed over its input": (
            ["embed", "-m", out, "-i", new, "-o", new],
            f"{new}: is the input file; choose another output",
        ),
        "summarize": (
            ["summarize", "--method", "lead", "-i", docs, "-o", tmp_path / "adir"],
            f"{tmp_path / 'adir'}: is a directory",
        ),
        "summarize over its input": (
            ["summarize", "--method", "lead", "-i", docs, "-o", docs],
            f"{docs}: is the input file; choose another output",
        ),
        "finetune into a file": ([*finetune, "--out", train], f"{train}: is a file, not a directory"),
        "finetune over its model": (
            [*finetune, "--out", tiny_dir],
            f"{tiny_dir}: is the --model directory; choose another --out",
        ),
        "finetune into other files": (
            [*finetune, "--out", tmp_path / "other"],
            f"{tmp_path / 'other'}: is not empty and holds no bertforge run (run/); choose another --out",
        ),
        "pretrain into a file": (
            ["pretrain", "--data", tmp_path / "shards", "--out", train],
            f"{train}: is a file, not a directory",
        ),
    }
    for name, (args, message) in commands.items():  # in process, as each stops before any model loads
        monkeypatch.setattr(sys, "argv", ["bertforge", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            main()
        assert (e.value.code, capsys.readouterr().err) == (2, f"bertforge: error: {message}\n"), name
    assert {p: p.read_bytes() for p in before} == before and sorted(tiny_dir.iterdir()) == model_files
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adir",
        "docs.jsonl",
        "new.jsonl",
        "other",
        "test.csv",
        "texts.txt",
    ]
    assert list((tmp_path / "adir").iterdir()) == [] and [p.name for p in (tmp_path / "other").iterdir()] == ["x.txt"]


def test_predict_keeps_the_inputs_fields_beside_the_prediction(trained, tmp_path):
    out, _, _ = trained
    labelled = tmp_path / "lab.jsonl"
    labelled.write_text('{"text": "good film", "label": "rotten", "score": 5, "id": 7}\n')
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"sentences": ["One.", "Two.", "Three."], "summary": "Two."}\n')
    one, table, summaries = run_all(
        ["predict", "-m", out, "-i", labelled, "-o", tmp_path / "p.jsonl"],
        ["predict", "-m", out, "-i", out.parent / "train.csv", "-o", tmp_path / "t.jsonl"],
        ["summarize", "--method", "lead", "--top-k", "1", "-i", docs, "-o", tmp_path / "s.jsonl"],
    )
    assert one.returncode == table.returncode == summaries.returncode == 0, one.stderr + table.stderr + summaries.stderr
    assert one.stdout == f"wrote {tmp_path / 'p.jsonl'} (1 prediction)\n"
    assert table.stdout == f"wrote {tmp_path / 't.jsonl'} (24 predictions)\n"
    assert summaries.stdout.endswith(f"wrote {tmp_path / 's.jsonl'} (1 summary)\n")
    notes = [ln for ln in one.stderr.splitlines() if "input_" in ln]
    assert notes == [
        f"bertforge: {labelled}: the input's label, score kept as input_label, input_score, beside the prediction's"
    ]
    [row] = [json.loads(ln) for ln in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert list(row) == ["text", "input_label", "input_score", "id", "label", "score", "probabilities"]
    assert (row["input_label"], row["input_score"], row["id"]) == ("rotten", 5, 7)
    assert row["label"] in ("fresh", "rotten") and 0.5 <= row["score"] <= 1
    rows = [json.loads(ln) for ln in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [r["input_label"] for r in rows] == [label for _, label in ROWS * 2]
    assert sum("input_label" in ln for ln in table.stderr.splitlines()) == 1
    [summary] = [json.loads(ln) for ln in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert (summary["input_summary"], summary["summary"], summary["selected"]) == ("Two.", "One.", [0])


def test_plot_takes_the_finetune_out_directory(trained, tmp_path):
    out, _, _ = trained
    (out / "run" / "curves.png").unlink()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    plotted, empty = run_all(["plot", out], ["plot", tmp_path / "empty"], ok=False)
    assert plotted.returncode == 0, plotted.stderr
    assert plotted.stdout == f"{out / 'run' / 'curves.png'}\n" and (out / "run" / "curves.png").stat().st_size > 1000
    assert_one_line_error(empty, f"{tmp_path / 'empty' / 'metrics.jsonl'}: is empty: nothing to plot yet")
    assert not (tmp_path / "empty" / "curves.png").exists()
    assert run_title(out / "run") == out.name and run_title(tmp_path / "empty") == "empty"
