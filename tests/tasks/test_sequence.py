"""Text classification (single and multi-label), regression and pairs end to end on small data:
learning, evaluation, prediction, long texts in windows, and the saved directory in transformers."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from conftest import FILLER, NEG, POS, quick_args, sentiment_rows, write_csv

from bertforge import BertforgeError, Tokenizer
from bertforge.api import evaluate_file, finetune, load_task, predict_file
from bertforge.assets import fetch
from bertforge.pipelines import pipeline
from bertforge.tasks import TASKS, TaskSpec
from bertforge.tasks.sequence import TextExample


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
    examples = [
        TextExample(filler + " awful awful", None, None, 1),
        TextExample(filler + " superb superb", None, None, 2),
    ]
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
    train = write_csv(tmp_path / "ml.csv", ["text", "label"], rows)
    spec = TaskSpec("classify", multi_label=True)
    m = finetune("classify", tiny_dir, train, tmp_path / "ml", spec=spec, args=quick_args(tmp_path / "ml" / "run", 80))
    assert m["micro_f1"] > 0.9
    out = pipeline("classify", tmp_path / "ml")("pizza and guitar tonight")
    assert set(out["labels"]) == {"food", "music"}

    # the label lives in the second text only: a model that ignored text_pair would be at chance
    pairs = []
    for _ in range(400):
        b = rnd.choice(POS + NEG)
        pairs.append(
            (" ".join(rnd.sample(FILLER, 5)), f"it is {b}", "yes" if b in POS else "no", 1.0 if b in POS else 0.0)
        )
    ptrain = write_csv(tmp_path / "pairs.csv", ["text", "text_pair", "label", "score"], pairs)
    m = finetune("pair", tiny_dir, ptrain, tmp_path / "pair", args=quick_args(tmp_path / "pair" / "run", 100))
    assert m["accuracy"] > 0.9
    assert pipeline("pair", tmp_path / "pair")(("the plot and the music", "it is great"))["label"] == "yes"
    # no --text-pair-column: the training file's text_pair column makes a regression over pairs
    rspec = TaskSpec(
        "regress", label_column="score", max_length=600
    )  # past the model's 128 positions: said, then capped
    m = finetune(
        "regress", tiny_dir, ptrain, tmp_path / "reg", spec=rspec, args=quick_args(tmp_path / "reg" / "run", 100)
    )
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
    mixed.write_text(
        json.dumps({"text": "a", "score": 1.0})
        + "\n"
        + json.dumps({"text": "b", "text_pair": "c", "score": 0.0})
        + "\n"
    )
    with pytest.raises(BertforgeError, match=r"mixed.jsonl: no column 'text_pair' \(columns: text, score\)"):
        finetune(
            "regress",
            tiny_dir,
            mixed,
            tmp_path / "mixed",
            spec=TaskSpec("regress", label_column="score"),
            args=quick_args(tmp_path / "mixed" / "run", 2),
        )


def test_multilabel_cells_read_as_json_lists_separators_or_nothing(tmp_path):
    """A CSV cell holds a JSON list, 'a|b', or nothing (none of the labels); a broken list is a one-line error."""
    tok = Tokenizer.from_pretrained(fetch("minilm-l6"))
    task = TASKS["classify"](TaskSpec("classify", multi_label=True), tok)
    rows = [("x", '["sport", "food"]'), ("y", "music|food"), ("z", ""), ("w", "[]")]
    examples = task.read(write_csv(tmp_path / "ml.csv", ["text", "label"], rows), labelled=True)
    assert [e.label for e in examples] == [["food", "sport"], ["food", "music"], [], []]
    bad = write_csv(tmp_path / "bad.csv", ["text", "label"], [("x", '["sport", ')])
    with pytest.raises(BertforgeError, match=r"bad.csv: line 2: 'label' is not a JSON list"):
        task.read(bad, labelled=True)


def test_regression_on_mse_keeps_the_lowest(tiny_dir, tmp_path):
    """--metric mse (an error: lower is better) keeps the evaluation with the lowest mse, not the highest."""
    rows = [(t, 1.0 if y == "positive" else 0.0) for t, y in sentiment_rows(60, 4)]
    train = write_csv(tmp_path / "scores.csv", ["text", "label"], rows)
    args = dataclasses.replace(quick_args(tmp_path / "m" / "run", 8), eval_every=2, select_metric="mse")
    best = finetune("regress", tiny_dir, train, tmp_path / "m", args=args)
    evals = [json.loads(x) for x in (tmp_path / "m" / "run" / "metrics.jsonl").read_text().splitlines()]
    mse = {r["step"]: r["mse"] for r in evals if r["split"] == "eval"}
    assert len(set(mse.values())) > 1 and best["mse"] == min(mse.values()) and mse[best["step"]] == best["mse"]
