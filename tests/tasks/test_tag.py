"""Token tagging end to end: CoNLL and JSONL with entity spans, Chinese characters, transformers parity."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import quick_args

import bertforge
from bertforge import BertConfig, BertforgeError, BertModel, Tokenizer
from bertforge.api import finetune, load_task, predict_file
from bertforge.assets import fetch
from bertforge.pipelines import pipeline
from bertforge.tasks import TASKS, TaskSpec


def test_tagging_chinese_characters_and_transformers(tiny_dir, tmp_path):
    """Character-level BIO on People's Daily; the saved model loads as BertForTokenClassification."""
    src = fetch("peoples-daily")
    lines = (src / "train.conll").read_text(encoding="utf-8").split("\n\n")[:300]
    (tmp_path / "train.conll").write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    zh = Tokenizer.from_pretrained(fetch("chinese-vocab"))
    torch.manual_seed(0)
    zdir = bertforge.save_pretrained(
        BertModel(BertConfig.preset("tiny", vocab_size=zh.vocab_size)), tmp_path / "zh", tokenizer=zh
    )
    m = finetune("tag", zdir, tmp_path / "train.conll", tmp_path / "ner", args=quick_args(tmp_path / "ner" / "run", 40))
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
        rows.append(
            {
                "text": text,
                "entities": [
                    {"start": 0, "end": len(n), "label": "PER"},
                    {"start": text.index(p), "end": text.index(p) + len(p), "label": "LOC"},
                ],
            }
        )
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = finetune(
        "tag", tiny_dir, tmp_path / "t.jsonl", tmp_path / "tagm", args=quick_args(tmp_path / "tagm" / "run", 80)
    )
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


def test_an_unknown_conll_tag_is_reported_on_its_own_line(tmp_path):
    tok = Tokenizer.from_pretrained(fetch("minilm-l6"))
    task = TASKS["tag"](TaskSpec("tag"), tok, {0: "O", 1: "B-PER", 2: "I-PER"})
    path = tmp_path / "unknown.conll"
    path.write_text("a\tO\nb\tO\n\nc\tO\nd\tB-PER\ne\tB-FOO\n")
    with pytest.raises(BertforgeError, match=r"tags the model does not know: 'B-FOO' \(line 6\)"):
        task.check_labels(task.read(path, labelled=True), path)
