"""Fine-tuning, evaluation and prediction end to end: every task on small data, the saved directory
loaded by transformers, and the bad inputs a user will hit."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bertforge
from bertforge import BertConfig, BertforgeError, BertModel, Tokenizer
from bertforge.api import evaluate_file, finetune, load_task, predict_file
from bertforge.assets import fetch
from bertforge.pipelines import pipeline
from bertforge.tasks import TASKS, TaskSpec
from bertforge.tasks.sequence import TextExample
from bertforge.train import TrainArgs

BERTFORGE = Path(sys.executable).parent / "bertforge"
POS = ["good", "great", "wonderful", "excellent", "superb", "lovely"]
NEG = ["bad", "awful", "terrible", "boring", "dreadful", "poor"]
FILLER = "the a film movie plot story actors scene music script was is and it this very quite".split()


def _sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rnd.choice(["positive", "negative"])
        words = rnd.sample(FILLER, 6) + [rnd.choice(POS if label == "positive" else NEG)]
        rnd.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def _write_csv(path: Path, header: list[str], rows: list) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _args(out: Path, steps: int = 60, **kw) -> TrainArgs:
    return TrainArgs(out=out, max_steps=steps, batch_size=16, lr=2e-3, warmup=0.1, eval_every=steps, progress=False, **kw)


@pytest.fixture(scope="module")
def sentiment_model(tiny_dir, tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("sentiment")
    train = _write_csv(d / "train.csv", ["text", "label"], _sentiment_rows(480, 0))
    test = _write_csv(d / "test.csv", ["text", "label"], _sentiment_rows(100, 1))
    metrics = finetune("classify", tiny_dir, train, d / "model", args=_args(d / "model" / "run", steps=90))
    assert metrics["accuracy"] > 0.9  # validation carved from train
    return d / "model", test


def test_classify_learns_and_evaluates(sentiment_model, tmp_path):
    model, test = sentiment_model
    result = evaluate_file(model, test, tmp_path / "m.json")
    assert result["accuracy"] > 0.9
    saved = json.loads((tmp_path / "m.json").read_text())
    assert {"accuracy", "macro_f1", "confusion_matrix", "per_class"} <= set(saved)
    assert sum(map(sum, saved["confusion_matrix"])) == 100
    assert (model / "run" / "curves.png").stat().st_size > 1000
    assert (model / "run" / "metrics.jsonl").read_text().count('"split": "eval"') >= 1


def test_saved_classifier_loads_in_transformers_with_same_predictions(sentiment_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, _ = sentiment_model
    hf = AutoModelForSequenceClassification.from_pretrained(model).eval()
    tok = AutoTokenizer.from_pretrained(model)
    texts = ["a wonderful film", "the plot was awful", "superb actors and lovely music", "boring script"]
    with torch.no_grad():
        logits = hf(**tok(texts, padding=True, return_tensors="pt")).logits
    hf_labels = [hf.config.id2label[i] for i in logits.argmax(-1).tolist()]
    ours = pipeline("classify", model)(texts)
    assert [p["label"] for p in ours] == hf_labels == ["positive", "negative", "positive", "negative"]
    probs = torch.softmax(logits, -1)
    for p, row in zip(ours, probs, strict=True):
        assert p["probabilities"][p["label"]] == pytest.approx(float(row.max()), abs=1e-4)


def test_predict_keeps_order_and_fields(sentiment_model, tmp_path):
    model, _ = sentiment_model
    texts = ["a very long " + "lovely " * 50 + "film", "awful", "the story was great and the music superb"]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    n = predict_file(model, inp, tmp_path / "out.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert n == 3 and [r["id"] for r in rows] == [0, 1, 2]
    assert [r["label"] for r in rows] == ["positive", "negative", "positive"]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)


def test_long_text_windows_not_truncated(sentiment_model):
    """Texts past max_length are read in windows whose logits are averaged, not cut: a sentiment word
    after the first window still counts, and a 100,000-character text is predicted whole."""
    model, _ = sentiment_model
    task, net = load_task(model)
    filler = "the film was a story and " * 12  # ~75 tokens: the last word lands in the second window
    examples = [TextExample(filler + " awful awful", None, None, 1), TextExample(filler + " superb superb", None, None, 2)]
    encs, owner = task.encode(examples)
    assert owner == [0, 0, 1, 1] if task.spec.max_length == 64 else owner.count(0) >= 1
    preds = task.predict(net, examples)
    assert [p["label"] for p in preds] == ["negative", "positive"]
    # truncation reads the filler only: both texts look the same
    spec = TaskSpec.from_dict({**task.spec.to_dict(), "long_text": "truncate", "max_length": 64})
    cut = type(task)(spec, task.tokenizer, task.id2label)
    assert cut.encode(examples)[1] == [0, 1]
    cut_preds = cut.predict(net, examples)
    assert cut_preds[0]["probabilities"] == cut_preds[1]["probabilities"]
    # averaged logits: the prediction equals the mean over the windows computed by hand
    long_spec = TaskSpec.from_dict({**task.spec.to_dict(), "max_length": 64})
    win = type(task)(long_spec, task.tokenizer, task.id2label)
    encs, owner = win.encode(examples[:1])
    assert len(encs) >= 2
    batch = win.tokenizer.to_tensors(encs)
    with torch.no_grad():
        mean_logits = net(**batch).logits.mean(0)
    expected = torch.softmax(mean_logits, -1)
    got = win.predict(net, examples[:1])[0]["probabilities"]
    assert [got[win.id2label[i]] for i in range(2)] == pytest.approx(expected.tolist(), abs=1e-5)
    # a 100,000-character text
    huge = [TextExample(("the film was a story " * 5000)[:100_000], None, None, 1)]
    encs, owner = task.encode(huge)
    assert len(encs) > 100
    assert task.predict(net, huge)[0]["label"] in ("positive", "negative")


def test_multilabel_and_regression_and_pair(tiny_dir, tmp_path, caplog):
    rnd = random.Random(0)
    rows = []
    for _ in range(400):
        tags = sorted(rnd.sample(["sport", "music", "food"], rnd.randint(1, 2)))
        words = {"sport": "football", "music": "guitar", "food": "pizza"}
        rows.append((" ".join(words[t] for t in tags) + " " + " ".join(rnd.sample(FILLER, 4)), "|".join(tags)))
    train = _write_csv(tmp_path / "ml.csv", ["text", "label"], rows)
    spec = TaskSpec("classify", multi_label=True)
    m = finetune("classify", tiny_dir, train, tmp_path / "ml", spec=spec, args=_args(tmp_path / "ml" / "run", 80))
    assert m["micro_f1"] > 0.9
    out = pipeline("classify", tmp_path / "ml")("pizza and guitar tonight")
    assert set(out["labels"]) == {"food", "music"}

    # the label lives in the second text only: a model that ignored text_pair would be at chance
    pairs = []
    for _ in range(400):
        b = rnd.choice(POS + NEG)
        pairs.append((" ".join(rnd.sample(FILLER, 5)), f"it is {b}", "yes" if b in POS else "no", 1.0 if b in POS else 0.0))
    ptrain = _write_csv(tmp_path / "pairs.csv", ["text", "text_pair", "label", "score"], pairs)
    m = finetune("pair", tiny_dir, ptrain, tmp_path / "pair", args=_args(tmp_path / "pair" / "run", 100))
    assert m["accuracy"] > 0.9
    assert pipeline("pair", tmp_path / "pair")(("the plot and the music", "it is great"))["label"] == "yes"
    # no --text-pair-column: the training file's text_pair column makes a regression over pairs
    rspec = TaskSpec("regress", label_column="score", max_length=600)  # past the model's 128 positions: said, then capped
    m = finetune("regress", tiny_dir, ptrain, tmp_path / "reg", spec=rspec, args=_args(tmp_path / "reg" / "run", 100))
    assert m["pearson"] > 0.7 and "spearman" in m
    assert "pairs.csv: each example is a pair (column 'text_pair'); the model will read pairs" in caplog.text
    assert "has 128 positions: sequences of at most 128 tokens, not 600" in caplog.text
    assert json.loads((tmp_path / "reg" / "config.json").read_text())["bertforge"]["max_length"] == 128
    with pytest.raises(BertforgeError, match=r"this model reads \(text, text_pair\) pairs; got str"):
        pipeline("regress", tmp_path / "reg")("it is great")
    with pytest.raises(BertforgeError, match=r"this model reads single texts; got tuple of 2"):
        pipeline("classify", tmp_path / "ml")(("pizza", "guitar"))
    with pytest.raises(BertforgeError, match=r"input 0: an empty text"):
        pipeline("regress", tmp_path / "reg")([["it is great", " "]])
    # pairs in any record, not only the first: the records without one are then named
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"text": "a", "score": 1.0}) + "\n" + json.dumps({"text": "b", "text_pair": "c", "score": 0.0}) + "\n")
    with pytest.raises(BertforgeError, match=r"mixed.jsonl: no column 'text_pair' \(columns: text, score\)"):
        finetune("regress", tiny_dir, mixed, tmp_path / "mixed", spec=TaskSpec("regress", label_column="score"),
                 args=_args(tmp_path / "mixed" / "run", 2))


def test_tagging_chinese_characters_and_transformers(tiny_dir, tmp_path):
    """Character-level BIO on People's Daily; the saved model loads as BertForTokenClassification."""
    src = fetch("peoples-daily")
    lines = (src / "train.conll").read_text(encoding="utf-8").split("\n\n")[:300]
    (tmp_path / "train.conll").write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    zh = Tokenizer.from_pretrained(fetch("chinese-vocab"))
    torch.manual_seed(0)
    zdir = bertforge.save_pretrained(BertModel(BertConfig.preset("tiny", vocab_size=zh.vocab_size)), tmp_path / "zh", tokenizer=zh)
    m = finetune("tag", zdir, tmp_path / "train.conll", tmp_path / "ner", args=_args(tmp_path / "ner" / "run", 40))
    assert {"f1", "precision", "recall", "token_accuracy"} <= set(m)
    from transformers import AutoModelForTokenClassification

    hf = AutoModelForTokenClassification.from_pretrained(tmp_path / "ner").eval()
    task, net = load_task(tmp_path / "ner")
    text = "江泽民在北京会见了新华社记者"
    pred = pipeline("tag", tmp_path / "ner")(text)
    assert len(pred["tags"]) == len(text)  # one tag per character
    ids = torch.tensor([task.tokenizer.encode(text).ids])
    with torch.no_grad():
        hf_tags = [hf.config.id2label[i] for i in hf(ids).logits[0, 1:-1].argmax(-1).tolist()]
    assert pred["tags"] == hf_tags
    for ent in pred["entities"]:
        assert text[ent["start"] : ent["end"]] == ent["text"]


def test_tag_jsonl_text_with_entity_spans(tiny_dir, tmp_path):
    rnd = random.Random(0)
    names = ["Alice", "Bob", "Carol", "Dave"]
    places = ["Paris", "Berlin", "Rome", "Oslo"]
    rows = []
    for _ in range(300):
        n, p = rnd.choice(names), rnd.choice(places)
        text = f"{n} flew to {p} on Monday"
        rows.append({"text": text, "entities": [{"start": 0, "end": len(n), "label": "PER"},
                                                {"start": text.index(p), "end": text.index(p) + len(p), "label": "LOC"}]})
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = finetune("tag", tiny_dir, tmp_path / "t.jsonl", tmp_path / "tagm", args=_args(tmp_path / "tagm" / "run", 80))
    assert m["f1"] > 0.9
    out = pipeline("tag", tmp_path / "tagm")("Carol flew to Oslo on Monday")
    assert [(e["label"], e["text"]) for e in out["entities"]] == [("PER", "carol"), ("LOC", "oslo")] or [
        (e["label"], e["text"]) for e in out["entities"]
    ] == [("PER", "Carol"), ("LOC", "Oslo")]
    # pre-split words: entities are word indices (end exclusive); the words come back as given, no input_tokens
    (tmp_path / "words.jsonl").write_text(json.dumps({"id": 1, "tokens": ["Carol", "flew", "to", "Oslo"]}) + "\n")
    predict_file(tmp_path / "tagm", tmp_path / "words.jsonl", tmp_path / "words.out.jsonl")
    row = json.loads((tmp_path / "words.out.jsonl").read_text())
    assert list(row) == ["id", "tokens", "tags", "entities"] and row["tokens"] == ["Carol", "flew", "to", "Oslo"]
    assert [(e["label"], e["start"], e["end"]) for e in row["entities"]] == [("PER", 0, 1), ("LOC", 3, 4)]
    for bad, said in ((["Carol", " ", "Oslo"], r"tokens\[1\] is ' ', not a word"), ([], "empty 'tokens'")):
        with pytest.raises(BertforgeError, match=said):
            pipeline("tag", tmp_path / "tagm")([bad])


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
    good = _write_csv(tmp_path / "good.csv", ["text", "label"], _sentiment_rows(40, 3))
    out = tmp_path / "out"
    # missing column
    _one_line_error(_cli("finetune", "classify", "-m", str(tiny_dir), "--train", str(good), "--out", str(out),
                         "--label-column", "sentiment"), "good.csv", "'sentiment'", "columns: text, label")
    # empty row
    bad = tmp_path / "empty.csv"
    bad.write_text("text,label\nfine film,positive\n,negative\n")
    _one_line_error(_cli("finetune", "classify", "-m", str(tiny_dir), "--train", str(bad), "--out", str(out)),
                    "empty.csv", "line 3", "empty 'text'")
    # non-UTF-8
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9 au lait,positive\n".encode("latin-1"))
    _one_line_error(_cli("finetune", "classify", "-m", str(tiny_dir), "--train", str(latin), "--out", str(out)),
                    "latin.csv", "line 2", "not UTF-8")
    # a single class
    one = _write_csv(tmp_path / "one.csv", ["text", "label"], [("a", "positive"), ("b", "positive"), ("c", "positive")])
    _one_line_error(_cli("finetune", "classify", "-m", str(tiny_dir), "--train", str(one), "--out", str(out)),
                    "one.csv", "single class")
    # labels the model does not know, in validation and in evaluation
    unk = _write_csv(tmp_path / "unk.csv", ["text", "label"], [("a film", "neutral"), ("b", "positive")])
    _one_line_error(_cli("finetune", "classify", "-m", str(tiny_dir), "--train", str(good), "--valid", str(unk),
                         "--out", str(out)), "unk.csv", "'neutral'")
    _one_line_error(_cli("evaluate", "-m", str(model), "--data", str(unk)), "'neutral' (line 2)")
    # a model without a head for the task
    _one_line_error(_cli("evaluate", "-m", str(tiny_dir), "--data", str(good)), "no task head")
    # a missing file
    _one_line_error(_cli("predict", "-m", str(model), "-i", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "p.jsonl")),
                    "nope.jsonl", "no such file")
    assert not out.exists() and not (tmp_path / "p.jsonl").exists()
    # a malformed JSONL line stops before anything is written
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": oops}\n')
    _one_line_error(_cli("predict", "-m", str(model), "-i", str(broken), "-o", str(tmp_path / "p.jsonl")),
                    "broken.jsonl", "line 2")
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
    train = _write_csv(tmp_path / "train.csv", ["text", "label"], _sentiment_rows(40, 0))
    message = f"^{re.escape(str(model))}: the tokenizer has 30523 entries, more than config.json's vocab_size 30522: "
    for load in (lambda: load_task(model), lambda: pipeline("classify", model), lambda: bertforge.Embedder.from_pretrained(model),
                 lambda: finetune("classify", model, train, tmp_path / "out", args=_args(tmp_path / "out" / "run", 2))):
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
    for load in (lambda: load_task(model), lambda: pipeline(None, model), lambda: pipeline("summarize", model),
                 lambda: ServedModel(model, None, "fp32", "torch", None)):
        with pytest.raises(BertforgeError, match=expected) as e:
            load()
        assert "\n" not in str(e.value)


def test_pipeline_rejects_wrong_task(sentiment_model):
    model, _ = sentiment_model
    with pytest.raises(BertforgeError, match="is a classify model, not tag"):
        bertforge.pipeline("tag", model)
    with pytest.raises(BertforgeError, match="^input 1: an empty text$"):  # as the files' readers say of a line
        bertforge.pipeline("classify", model)(["a fine film", " "])


def test_multilabel_cells_read_as_json_lists_separators_or_nothing(tmp_path):
    """A CSV cell holds a JSON list, 'a|b', or nothing (none of the labels); a broken list is a one-line error."""
    tok = Tokenizer.from_pretrained(fetch("minilm-l6"))
    task = TASKS["classify"](TaskSpec("classify", multi_label=True), tok)
    rows = [("x", '["sport", "food"]'), ("y", "music|food"), ("z", ""), ("w", "[]")]
    examples = task.read(_write_csv(tmp_path / "ml.csv", ["text", "label"], rows), labelled=True)
    assert [e.label for e in examples] == [["food", "sport"], ["food", "music"], [], []]
    bad = _write_csv(tmp_path / "bad.csv", ["text", "label"], [("x", '["sport", ')])
    with pytest.raises(BertforgeError, match=r"bad.csv: line 2: 'label' is not a JSON list"):
        task.read(bad, labelled=True)


def test_resuming_on_other_labels_is_refused_and_on_other_settings_warned(tiny_dir, tmp_path, capsys, caplog):
    """The classifier's rows are labels by position: a resume on other labels would silently mislabel.
    A resume says nothing of the base model's freshly initialised head: the checkpoint replaces it."""
    rows = [(f"{w} film", "fresh" if w in POS else "rotten") for w in POS + NEG] * 3
    first = _write_csv(tmp_path / "a.csv", ["text", "label"], rows)
    finetune("classify", tiny_dir, first, tmp_path / "m", args=_args(tmp_path / "m" / "run", 2))
    assert "freshly initialised" in caplog.text
    caplog.clear()
    assert "positions" not in caplog.text
    caplog.clear()
    with pytest.raises(BertforgeError, match=r"already holds checkpoints: pass --resume"):  # before the model loads
        finetune("classify", tiny_dir, first, tmp_path / "m", args=_args(tmp_path / "m" / "run", 2))
    assert "freshly initialised" not in caplog.text
    other = _write_csv(tmp_path / "b.csv", ["text", "label"], [(t, "good" if y == "fresh" else "bad") for t, y in rows])
    with pytest.raises(BertforgeError, match=r"was trained on labels fresh, rotten; this data has bad, good"):
        finetune("classify", tiny_dir, other, tmp_path / "m", args=_args(tmp_path / "m" / "run", 4, resume=True))
    capsys.readouterr()
    more = dataclasses.replace(_args(tmp_path / "m" / "run", 4, resume=True), lr=1e-3, batch_size=8)
    finetune("classify", tiny_dir, first, tmp_path / "m", args=more)
    assert ("bertforge: warning: resuming with settings other than the run's (batch_size 16 -> 8, lr 0.002 -> 0.001)"
            in capsys.readouterr().out)
    finetune("classify", tiny_dir, first, tmp_path / "m", args=dataclasses.replace(more, max_steps=6))  # the same again
    assert "warning" not in capsys.readouterr().out
    assert "freshly initialised" not in caplog.text


def test_an_unknown_conll_tag_is_reported_on_its_own_line(tmp_path):
    tok = Tokenizer.from_pretrained(fetch("minilm-l6"))
    task = TASKS["tag"](TaskSpec("tag"), tok, {0: "O", 1: "B-PER", 2: "I-PER"})
    path = tmp_path / "unknown.conll"
    path.write_text("a\tO\nb\tO\n\nc\tO\nd\tB-PER\ne\tB-FOO\n")
    with pytest.raises(BertforgeError, match=r"tags the model does not know: 'B-FOO' \(line 6\)"):
        task.check_labels(task.read(path, labelled=True), path)


@pytest.mark.parametrize("task, suffix, formats", [
    ("classify", ".txt", ".csv, .tsv, .jsonl or .json"),
    ("extsum", ".txt", ".csv, .tsv, .jsonl or .json"),
    ("qa", ".txt", ".csv, .tsv, .jsonl or .json (SQuAD, or a list of records)"),
    ("tag", ".xml", ".csv, .jsonl, .json or CoNLL (.conll, .conllu, .bio, .iob, .txt, .tsv)"),
])
def test_an_unknown_file_type_lists_what_the_task_reads(tmp_path, task, suffix, formats):
    path = tmp_path / f"data{suffix}"
    path.write_text("a text\n")
    t = TASKS[task](TaskSpec(task, max_length=TASKS[task].default_max_length), Tokenizer.from_pretrained(fetch("minilm-l6")))
    with pytest.raises(BertforgeError, match=rf"^{re.escape(str(path))}: unknown file type {suffix}: use {re.escape(formats)}$"):
        t.read(path, labelled=True)


def test_too_little_data_for_one_batch_trains_with_a_smaller_one(tiny_dir, tmp_path, capsys):
    train = _write_csv(tmp_path / "few.csv", ["text", "label"], [("good", "fresh"), ("bad", "rotten")] * 3)
    finetune("classify", tiny_dir, train, tmp_path / "few", args=_args(tmp_path / "few" / "run", 2))
    assert "5 training examples are fewer than one batch of 16: training with batches of 5" in capsys.readouterr().out
    # too few to fill the micro-batches of one step is an error, before anything is written
    with pytest.raises(BertforgeError, match=r"^5 training examples cannot fill 8 micro-batches \(--grad-accum 8 x 1 "
                                             r"processes\): lower --grad-accum$"):
        finetune("classify", tiny_dir, train, tmp_path / "fewer", args=_args(tmp_path / "fewer" / "run", 2, grad_accum=8))
    assert not (tmp_path / "fewer" / "run").exists()


def test_a_dropout_outside_0_1_is_an_error_before_anything_is_written(tiny_dir, tmp_path):
    """torch says so only at the first training step, once OUT/run/train_args.json is written."""
    train = _write_csv(tmp_path / "train.csv", ["text", "label"], _sentiment_rows(60, 5))
    for p in (1.5, -0.1, float("nan")):
        with pytest.raises(BertforgeError, match=rf"^dropout must be within \[0, 1\], not {p}$"):
            finetune("classify", tiny_dir, train, tmp_path / "m", args=_args(tmp_path / "m" / "run", 2), dropout=p)
    assert not (tmp_path / "m").exists()


def test_regression_on_mse_keeps_the_lowest(tiny_dir, tmp_path):
    """--metric mse (an error: lower is better) keeps the evaluation with the lowest mse, not the highest."""
    rows = [(t, 1.0 if y == "positive" else 0.0) for t, y in _sentiment_rows(60, 4)]
    train = _write_csv(tmp_path / "scores.csv", ["text", "label"], rows)
    args = dataclasses.replace(_args(tmp_path / "m" / "run", 8), eval_every=2, select_metric="mse")
    best = finetune("regress", tiny_dir, train, tmp_path / "m", args=args)
    evals = [json.loads(x) for x in (tmp_path / "m" / "run" / "metrics.jsonl").read_text().splitlines()]
    mse = {r["step"]: r["mse"] for r in evals if r["split"] == "eval"}
    assert len(set(mse.values())) > 1 and best["mse"] == min(mse.values()) and mse[best["step"]] == best["mse"]


def test_an_unknown_metric_is_an_error_before_training(tiny_dir, tmp_path):
    train = _write_csv(tmp_path / "train.csv", ["text", "label"], _sentiment_rows(60, 5))
    args = dataclasses.replace(_args(tmp_path / "m" / "run", 8), select_metric="bleu")
    with pytest.raises(BertforgeError, match=r"^metric 'bleu' is not among accuracy, macro_f1, macro_precision, "
                                             r"macro_recall, weighted_f1$"):
        finetune("classify", tiny_dir, train, tmp_path / "m", args=args)
    assert not (tmp_path / "m").exists()


def test_metric_names_are_what_each_task_scores(tmp_path):
    """The names --metric may choose are among what ``score`` reports (every float it reports but
    thresholds), for every task and its variants."""
    from bertforge.tasks.extsum import Document
    from bertforge.tasks.qa import GoldAnswer, QAExample
    from bertforge.tasks.tag import TagExample

    tok = Tokenizer.from_pretrained(fetch("minilm-l6"))

    def task(name: str, id2label=None, **spec):
        return TASKS[name](TaskSpec(name, max_length=TASKS[name].default_max_length, **spec), tok, id2label)

    texts = [TextExample("a", None, "x", 2), TextExample("b", None, "y", 3)]
    answers = [QAExample("1", "q", "the cat", [GoldAnswer("cat", 4)]), QAExample("2", "q", "a dog", [])]
    cases = [
        (task("classify", {0: "x", 1: "y"}), texts, [{"label": "x"}, {"label": "x"}]),
        (task("classify", {0: "x", 1: "y"}, multi_label=True), [TextExample("a", None, ["x", "y"], 2)], [{"labels": ["x"]}]),
        (task("regress", {0: "score"}), [TextExample("a", None, 0.5, 2), TextExample("b", None, 1.0, 3)],
         [{"score": 0.2}, {"score": 0.9}]),
        (task("tag", {0: "O", 1: "B-PER"}), [TagExample(["a", "b"], ["B-PER", "O"], 1)], [{"tags": ["O", "O"]}]),
        (task("qa"), answers[:1], [{"answer": "cat"}]),
        (task("qa"), answers, [{"answer": "cat"}, {"answer": "dog"}]),
        (task("qa", extra={"version_2": True}), answers,
         [{"answer": "cat", "null_odds": -1.0, "best_span": "cat"}, {"answer": "", "null_odds": 1.0, "best_span": "dog"}]),
        (task("extsum"), [Document(["A cat sat.", "It rained."], [1, 0], None, 1)], [{"summary": "A cat sat.", "selected": [0]}]),
        (task("extsum"), [Document(["A cat sat.", "It rained."], None, "A cat sat.", 1)], [{"summary": "A cat sat.", "selected": [0]}]),
    ]
    for t, examples, predictions in cases:
        scores = t.score(predictions, examples)
        floats = {k for k, v in scores.items() if isinstance(v, float)}
        names = t.metric_names(examples)
        assert set(names) <= floats and not {n for n in floats - set(names) if not n.endswith("_thresh")}, (t.name, scores)
        assert t.select_metric in names or t.name == "extsum", t.name


def test_a_label_only_in_the_held_out_split_is_reported_as_such(tiny_dir, tmp_path):
    """Without --valid, a rare label whose every example lands in the 10% held out for validation is in
    the user's file: the error says where it went, not that it is unknown."""
    order = list(range(30))
    random.Random(0).shuffle(order)  # finetune's seeded split (seed 0): the first 3 of these are held out
    rows = [(f"film {i}", "pos" if i % 2 else "neg") for i in range(30)]
    rows[order[0]] = ("a film", "neutral")
    rare = _write_csv(tmp_path / "rare.csv", ["text", "label"], rows)
    with pytest.raises(BertforgeError, match=rf"^\S*rare.csv: label 'neutral' \(line {order[0] + 2}\) occurs only in the "
                                             r"10% held out for validation: add examples of it, or pass --valid$"):
        finetune("classify", tiny_dir, rare, tmp_path / "m", args=_args(tmp_path / "m" / "run", 2))
    records = [{"tokens": ["Ann", "ran"], "tags": ["B-PER", "O"]} for _ in range(30)]
    for i in order[:2]:
        records[i] = {"tokens": ["in", "Oslo"], "tags": ["O", "B-LOC"]}
    tags = tmp_path / "rare.jsonl"
    tags.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(BertforgeError, match=rf"rare.jsonl: tag 'B-LOC' \(line {min(order[:2]) + 1}\) occurs only in the 10% "
                                             r"held out for validation: add examples of it, or pass --valid$"):
        finetune("tag", tiny_dir, tags, tmp_path / "t", args=_args(tmp_path / "t" / "run", 2))
    assert not (tmp_path / "m").exists() and not (tmp_path / "t").exists()
