"""The fine-tuning API and the faces over it: bad inputs (one line, nothing half-written), damaged
model directories, resuming, too little data, metrics that pick the best model."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NEG, POS, quick_args, sentiment_rows, write_csv

import bertforge
from bertforge import BertforgeError, Tokenizer
from bertforge.api import finetune, load_task
from bertforge.assets import fetch
from bertforge.pipelines import pipeline
from bertforge.tasks import TASKS, TaskSpec
from bertforge.tasks.sequence import TextExample

BERTFORGE = Path(sys.executable).parent / "bertforge"


# -- bad input: one line on stderr, exit 2, nothing half-written ------------------------------------
def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BERTFORGE), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("bertforge: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_inputs(tiny_dir, sentiment_model, tmp_path):
    model, _ = sentiment_model
    good = write_csv(tmp_path / "good.csv", ["text", "label"], sentiment_rows(40, 3))
    out = tmp_path / "out"
    # missing column
    _one_line_error(
        _cli(
            "finetune",
            "classify",
            "-m",
            str(tiny_dir),
            "--train",
            str(good),
            "--out",
            str(out),
            "--label-column",
            "sentiment",
        ),
        "good.csv",
        "'sentiment'",
        "columns: text, label",
    )
    # empty row
    bad = tmp_path / "empty.csv"
    bad.write_text("text,label\nfine film,positive\n,negative\n")
    _one_line_error(
        _cli("finetune", "classify", "-m", str(tiny_dir), "--train", str(bad), "--out", str(out)),
        "empty.csv",
        "line 3",
        "empty 'text'",
    )
    # non-UTF-8
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9 au lait,positive\n".encode("latin-1"))
    _one_line_error(
        _cli("finetune", "classify", "-m", str(tiny_dir), "--train", str(latin), "--out", str(out)),
        "latin.csv",
        "line 2",
        "not UTF-8",
    )
    # a single class
    one = write_csv(tmp_path / "one.csv", ["text", "label"], [("a", "positive"), ("b", "positive"), ("c", "positive")])
    _one_line_error(
        _cli("finetune", "classify", "-m", str(tiny_dir), "--train", str(one), "--out", str(out)),
        "one.csv",
        "single class",
    )
    # labels the model does not know, in validation and in evaluation
    unk = write_csv(tmp_path / "unk.csv", ["text", "label"], [("a film", "neutral"), ("b", "positive")])
    _one_line_error(
        _cli("finetune", "classify", "-m", str(tiny_dir), "--train", str(good), "--valid", str(unk), "--out", str(out)),
        "unk.csv",
        "'neutral'",
    )
    _one_line_error(_cli("evaluate", "-m", str(model), "--data", str(unk)), "'neutral' (line 2)")
    # a model without a head for the task
    _one_line_error(_cli("evaluate", "-m", str(tiny_dir), "--data", str(good)), "no text columns")
    # a missing file
    _one_line_error(
        _cli("predict", "-m", str(model), "-i", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "p.jsonl")),
        "nope.jsonl",
        "no such file",
    )
    assert not out.exists() and not (tmp_path / "p.jsonl").exists()
    # a malformed JSONL line stops before anything is written
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": oops}\n')
    _one_line_error(
        _cli("predict", "-m", str(model), "-i", str(broken), "-o", str(tmp_path / "p.jsonl")), "broken.jsonl", "line 2"
    )
    assert not (tmp_path / "p.jsonl").exists()


def _classifier(tiny_dir: Path, out: Path) -> Path:
    """An untrained classifier, saved as finetune saves one (no training: fast)."""
    t = TASKS["classify"](TaskSpec("classify"), Tokenizer.from_pretrained(tiny_dir), {0: "fresh", 1: "rotten"})
    t.export(t.load_model(tiny_dir), out)
    return out


def test_a_vocabulary_larger_than_the_model_is_refused_at_load(tiny_dir, tmp_path):
    """A token past the word embeddings failed (IndexError) only when a text held it: every load refuses it."""
    model = _classifier(tiny_dir, tmp_path / "m")
    (model / "tokenizer.json").unlink()
    with (model / "vocab.txt").open("a", encoding="utf-8") as f:
        f.write("zzqqxx\n")
    train = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(40, 0))
    message = f"^{re.escape(str(model))}: the tokenizer has 30523 entries, more than config.json's vocab_size 30522: "
    for load in (
        lambda: load_task(model),
        lambda: pipeline("classify", model),
        lambda: bertforge.Embedder.from_pretrained(model),
        lambda: finetune("classify", model, train, tmp_path / "out", args=quick_args(tmp_path / "out" / "run", 2)),
    ):
        with pytest.raises(BertforgeError, match=message):
            load()
    assert not (tmp_path / "out" / "run").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(bertforge="x"), "bertforge is 'x', not an object"),
        (lambda c: c["bertforge"].update(max_length="abc"), "bertforge.max_length is 'abc', not an integer"),
        (lambda c: c["bertforge"].update(extra=None), "bertforge.extra is None, not an object"),
        (lambda c: c["bertforge"].pop("task"), "bertforge.task is missing"),
        (lambda c: c["bertforge"].update(task="sort"), "unknown bertforge.task 'sort'"),
        (lambda c: c.update(id2label={"0": "fresh", "5": "rotten"}), "id2label lacks id 1"),
        (lambda c: c.update(id2label={"0": "fresh", "1": "fresh"}), "id2label names 'fresh' twice"),
        (lambda c: c.update(hidden_size="abc"), "hidden_size is 'abc', not an integer"),
    ],
)
def test_a_damaged_config_json_is_refused_at_load(tiny_dir, tmp_path, edit, message):
    """Each raised AttributeError, TypeError or KeyError at the first prediction (serve started, then
    answered 500s), or gave contradictory output (a duplicate label): one line naming the file, at load."""
    from bertforge.serve.app import ServedModel

    model = _classifier(tiny_dir, tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    edit(config)
    (model / "config.json").write_text(json.dumps(config))
    expected = "^" + re.escape(f"{model / 'config.json'}: {message}")
    for load in (
        lambda: load_task(model),
        lambda: pipeline(None, model),
        lambda: pipeline("summarize", model),
        lambda: ServedModel(model, None, "fp32", "torch", None),
    ):
        with pytest.raises(BertforgeError, match=expected) as e:
            load()
        assert "\n" not in str(e.value)


def test_pipeline_rejects_wrong_task(sentiment_model):
    model, _ = sentiment_model
    with pytest.raises(BertforgeError, match="is a classify model, not tag"):
        bertforge.pipeline("tag", model)
    with pytest.raises(BertforgeError, match="^input 1: an empty text$"):  # as the files' readers say of a line
        bertforge.pipeline("classify", model)(["a fine film", " "])


def test_resuming_on_other_labels_is_refused_and_on_other_settings_warned(tiny_dir, tmp_path, capsys, caplog):
    """The classifier's rows are labels by position: a resume on other labels would silently mislabel.
    A resume says nothing of the base model's freshly initialised head: the checkpoint replaces it."""
    rows = [(f"{w} film", "fresh" if w in POS else "rotten") for w in POS + NEG] * 3
    first = write_csv(tmp_path / "a.csv", ["text", "label"], rows)
    finetune("classify", tiny_dir, first, tmp_path / "m", args=quick_args(tmp_path / "m" / "run", 2))
    assert "freshly initialised" in caplog.text
    caplog.clear()
    assert "positions" not in caplog.text
    caplog.clear()
    with pytest.raises(BertforgeError, match=r"already holds checkpoints: pass --resume"):  # before the model loads
        finetune("classify", tiny_dir, first, tmp_path / "m", args=quick_args(tmp_path / "m" / "run", 2))
    assert "freshly initialised" not in caplog.text
    other = write_csv(tmp_path / "b.csv", ["text", "label"], [(t, "good" if y == "fresh" else "bad") for t, y in rows])
    with pytest.raises(BertforgeError, match=r"was trained on labels fresh, rotten; this data has bad, good"):
        finetune("classify", tiny_dir, other, tmp_path / "m", args=quick_args(tmp_path / "m" / "run", 4, resume=True))
    capsys.readouterr()
    more = dataclasses.replace(quick_args(tmp_path / "m" / "run", 4, resume=True), lr=1e-3, batch_size=8)
    finetune("classify", tiny_dir, first, tmp_path / "m", args=more)
    assert (
        "bertforge: warning: resuming with settings other than the run's (batch_size 16 -> 8, lr 0.002 -> 0.001)"
        in capsys.readouterr().out
    )
    finetune("classify", tiny_dir, first, tmp_path / "m", args=dataclasses.replace(more, max_steps=6))  # the same again
    assert "warning" not in capsys.readouterr().out
    assert "freshly initialised" not in caplog.text


@pytest.mark.parametrize(
    "task, suffix, formats",
    [
        ("classify", ".txt", ".csv, .tsv, .jsonl or .json"),
        ("extsum", ".txt", ".csv, .tsv, .jsonl or .json"),
        ("qa", ".txt", ".csv, .tsv, .jsonl or .json (SQuAD, or a list of records)"),
        ("tag", ".xml", ".csv, .jsonl, .json or CoNLL (.conll, .conllu, .bio, .iob, .txt, .tsv)"),
    ],
)
def test_an_unknown_file_type_lists_what_the_task_reads(tmp_path, task, suffix, formats):
    path = tmp_path / f"data{suffix}"
    path.write_text("a text\n")
    t = TASKS[task](
        TaskSpec(task, max_length=TASKS[task].default_max_length), Tokenizer.from_pretrained(fetch("minilm-l6"))
    )
    with pytest.raises(
        BertforgeError, match=rf"^{re.escape(str(path))}: unknown file type {suffix}: use {re.escape(formats)}$"
    ):
        t.read(path, labelled=True)


def test_too_little_data_for_one_batch_trains_with_a_smaller_one(tiny_dir, tmp_path, capsys):
    train = write_csv(tmp_path / "few.csv", ["text", "label"], [("good", "fresh"), ("bad", "rotten")] * 3)
    finetune("classify", tiny_dir, train, tmp_path / "few", args=quick_args(tmp_path / "few" / "run", 2))
    assert "5 training examples are fewer than one batch of 16: training with batches of 5" in capsys.readouterr().out
    # too few to fill the micro-batches of one step is an error, before anything is written
    with pytest.raises(
        BertforgeError,
        match=r"^5 training examples cannot fill 8 micro-batches \(--grad-accum 8 x 1 "
        r"processes\): lower --grad-accum$",
    ):
        finetune(
            "classify",
            tiny_dir,
            train,
            tmp_path / "fewer",
            args=quick_args(tmp_path / "fewer" / "run", 2, grad_accum=8),
        )
    assert not (tmp_path / "fewer" / "run").exists()


def test_a_dropout_outside_0_1_is_an_error_before_anything_is_written(tiny_dir, tmp_path):
    """torch says so only at the first training step, once OUT/run/train_args.json is written."""
    train = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(60, 5))
    for p in (1.5, -0.1, float("nan")):
        with pytest.raises(BertforgeError, match=rf"^dropout must be within \[0, 1\], not {p}$"):
            finetune("classify", tiny_dir, train, tmp_path / "m", args=quick_args(tmp_path / "m" / "run", 2), dropout=p)
    assert not (tmp_path / "m").exists()


def test_an_unknown_metric_is_an_error_before_training(tiny_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(60, 5))
    args = dataclasses.replace(quick_args(tmp_path / "m" / "run", 8), select_metric="bleu")
    with pytest.raises(
        BertforgeError,
        match=r"^metric 'bleu' is not among accuracy, macro_f1, macro_precision, "
        r"macro_recall, weighted_f1$",
    ):
        finetune("classify", tiny_dir, train, tmp_path / "m", args=args)
    assert not (tmp_path / "m").exists()


def test_metric_names_are_what_each_task_scores(tmp_path):
    """The names --metric may choose are among what ``score`` reports (every float it reports but
    thresholds), for every task and its variants."""
    from bertforge.data.squad import GoldAnswer, QAExample
    from bertforge.summary import Document
    from bertforge.tasks.tag import TagExample

    tok = Tokenizer.from_pretrained(fetch("minilm-l6"))

    def task(name: str, id2label=None, **spec):
        return TASKS[name](TaskSpec(name, max_length=TASKS[name].default_max_length, **spec), tok, id2label)

    texts = [TextExample("a", None, "x", 2), TextExample("b", None, "y", 3)]
    answers = [QAExample("1", "q", "the cat", [GoldAnswer("cat", 4)]), QAExample("2", "q", "a dog", [])]
    cases = [
        (task("classify", {0: "x", 1: "y"}), texts, [{"label": "x"}, {"label": "x"}]),
        (
            task("classify", {0: "x", 1: "y"}, multi_label=True),
            [TextExample("a", None, ["x", "y"], 2)],
            [{"labels": ["x"]}],
        ),
        (
            task("regress", {0: "score"}),
            [TextExample("a", None, 0.5, 2), TextExample("b", None, 1.0, 3)],
            [{"score": 0.2}, {"score": 0.9}],
        ),
        (task("tag", {0: "O", 1: "B-PER"}), [TagExample(["a", "b"], ["B-PER", "O"], 1)], [{"tags": ["O", "O"]}]),
        (task("qa"), answers[:1], [{"answer": "cat"}]),
        (task("qa"), answers, [{"answer": "cat"}, {"answer": "dog"}]),
        (
            task("qa", extra={"version_2": True}),
            answers,
            [
                {"answer": "cat", "null_odds": -1.0, "best_span": "cat"},
                {"answer": "", "null_odds": 1.0, "best_span": "dog"},
            ],
        ),
        (
            task("extsum"),
            [Document(["A cat sat.", "It rained."], [1, 0], None, 1)],
            [{"summary": "A cat sat.", "selected": [0]}],
        ),
        (
            task("extsum"),
            [Document(["A cat sat.", "It rained."], None, "A cat sat.", 1)],
            [{"summary": "A cat sat.", "selected": [0]}],
        ),
    ]
    for t, examples, predictions in cases:
        scores = t.score(predictions, examples)
        floats = {k for k, v in scores.items() if isinstance(v, float)}
        names = t.metric_names(examples)
        assert set(names) <= floats and not {n for n in floats - set(names) if not n.endswith("_thresh")}, (
            t.name,
            scores,
        )
        assert t.select_metric in names or t.name == "extsum", t.name


def test_a_label_only_in_the_held_out_split_is_reported_as_such(tiny_dir, tmp_path):
    """Without --valid, a rare label whose every example lands in the 10% held out for validation is in
    the user's file: the error says where it went, not that it is unknown."""
    order = list(range(30))
    random.Random(0).shuffle(order)  # finetune's seeded split (seed 0): the first 3 of these are held out
    rows = [(f"film {i}", "pos" if i % 2 else "neg") for i in range(30)]
    rows[order[0]] = ("a film", "neutral")
    rare = write_csv(tmp_path / "rare.csv", ["text", "label"], rows)
    with pytest.raises(
        BertforgeError,
        match=rf"^\S*rare.csv: label 'neutral' \(line {order[0] + 2}\) occurs only in the "
        r"10% held out for validation: add examples of it, or pass --valid$",
    ):
        finetune("classify", tiny_dir, rare, tmp_path / "m", args=quick_args(tmp_path / "m" / "run", 2))
    records = [{"tokens": ["Ann", "ran"], "tags": ["B-PER", "O"]} for _ in range(30)]
    for i in order[:2]:
        records[i] = {"tokens": ["in", "Oslo"], "tags": ["O", "B-LOC"]}
    tags = tmp_path / "rare.jsonl"
    tags.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(
        BertforgeError,
        match=rf"rare.jsonl: tag 'B-LOC' \(line {min(order[:2]) + 1}\) occurs only in the 10% "
        r"held out for validation: add examples of it, or pass --valid$",
    ):
        finetune("tag", tiny_dir, tags, tmp_path / "t", args=quick_args(tmp_path / "t" / "run", 2))
    assert not (tmp_path / "m").exists() and not (tmp_path / "t").exists()
