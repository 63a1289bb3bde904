"""The rerank task: a transformers sequence classifier with one output scores pairs as sentence-transformers'
CrossEncoder does; `bertforge rerank` and `search --rerank` order documents by it; `finetune rerank` learns
from labelled pairs or triplets and writes a directory CrossEncoder loads with the same scores."""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from conftest import TINY, assert_one_line_error, perturb, run_all

from bertforge import BertforgeError
from bertforge.api import evaluate_file, finetune
from bertforge.assets import fetch
from bertforge.modeldir import ModelDir
from bertforge.pipelines import pipeline
from bertforge.rerank import Reranker, rerank_hits
from bertforge.tasks import saved_spec
from bertforge.train import TrainArgs

PAIRS = [
    ("what is the capital of france", "Paris is the capital and largest city of France."),
    ("what is the capital of france", "Berlin is the capital of Germany, on the Spree."),
    ("who wrote hamlet", "Hamlet is a tragedy written by William Shakespeare around 1600."),
    ("who wrote hamlet", "The Danish prince " * 40),  # longer than the model's positions: cut, as a CrossEncoder cuts
]
TOPICS = ["cat", "dog", "bird", "fish", "tree", "river", "city", "music", "film", "book", "game", "stone"]
FILLER = "the a of and it is was very some many this that with".split()


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cross_encoder(path: Path, num_labels: int, seed: int = 0) -> Path:
    tok = transformers.AutoTokenizer.from_pretrained(fetch("minilm-l6", quiet=True))
    config = transformers.BertConfig(**{**TINY, "vocab_size": tok.vocab_size, "num_labels": num_labels})
    torch.manual_seed(seed)
    model = perturb(transformers.BertForSequenceClassification(config), seed, scale=0.5).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory) -> Path:
    """A random tiny cross-encoder as transformers saves it (one output, no bertforge settings)."""
    return _cross_encoder(tmp_path_factory.mktemp("ce") / "ce", 1)


def test_a_one_output_classifier_scores_as_sentence_transformers_cross_encoder(ce_dir, tmp_path):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(ce_dir), device="cpu", max_length=TINY["max_position_embeddings"])
    expected = ce.predict(PAIRS)
    assert np.ptp(expected) > 0.01  # the pairs are told apart: a wrong weight would show
    got = [p["score"] for p in pipeline("rerank", ce_dir)(PAIRS)]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert saved_spec(ModelDir.open(ce_dir)).task == "rerank"
    two = _cross_encoder(tmp_path / "two", 2)
    assert saved_spec(ModelDir.open(two)).task == "classify"  # two outputs: a classifier, as before

    docs = [d for _, d in PAIRS]
    ranked = Reranker(ce_dir)(PAIRS[2][0], docs, top_n=3)
    reference = ce.rank(PAIRS[2][0], docs)
    assert [r["index"] for r in ranked] == [r["corpus_id"] for r in reference][:3]
    np.testing.assert_allclose([r["relevance_score"] for r in ranked], [r["score"] for r in reference][:3], atol=1e-5)
    got = pipeline(None, ce_dir)({"query": PAIRS[2][0], "documents": docs, "return_documents": True})
    assert [r["document"]["text"] for r in got["results"]] == [docs[r["corpus_id"]] for r in reference]
    raw = pipeline("rerank", ce_dir, activation="identity")(PAIRS[:1])[0]["score"]
    assert 1 / (1 + np.exp(-raw)) == pytest.approx(float(expected[0]), abs=1e-5)


def test_cli_rerank_and_retrieve_then_rerank(ce_dir, tiny_dir, tmp_path):
    from sentence_transformers import CrossEncoder

    from bertforge.search import build_index, search

    rnd = random.Random(0)
    rows = [{"id": f"d{i}", "text": " ".join(rnd.sample(TOPICS + FILLER, 6))} for i in range(40)]
    corpus = _write_jsonl(tmp_path / "docs.jsonl", rows)
    index = build_index(tiny_dir, corpus, tmp_path / "index")
    query = "a cat and a dog"
    ce = CrossEncoder(str(ce_dir), device="cpu", max_length=TINY["max_position_embeddings"])
    reference = ce.rank(query, [r["text"] for r in rows])
    candidates = [h.id for h in search(index, tiny_dir, [query], k=8)[0]]
    at = {r["id"]: i for i, r in enumerate(rows)}
    expected = sorted(candidates, key=lambda i: -ce.predict([(query, rows[at[i]]["text"])])[0])[:3]

    hits = search(index, tiny_dir, [query], k=3, rerank=partial(rerank_hits, Reranker(ce_dir)), candidates=8)[0]
    assert [h.id for h in hits] == expected and all(h.text == rows[at[h.id]]["text"] for h in hits)
    out = tmp_path / "ranked.jsonl"
    shown, written, searched, wrong = run_all(
        ["rerank", "-m", ce_dir, "-q", query, "-i", corpus, "-k", "2"],
        ["rerank", "-m", ce_dir, "-q", query, "-i", corpus, "-o", out],
        ["search", "--index", index, query, "-k", "3", "--rerank", ce_dir, "--candidates", "8"],
        ["rerank", "-m", tiny_dir, "-q", query, "-i", corpus],
        ok=False,
    )
    assert [line.split("  ")[1] for line in shown.stdout.splitlines()] == [
        rows[r["corpus_id"]]["id"] for r in reference[:2]
    ]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["index"] for x in lines] == [r["corpus_id"] for r in reference]
    np.testing.assert_allclose([x["score"] for x in lines], [r["score"] for r in reference], atol=1e-5)
    assert [line.split("  ")[1] for line in searched.stdout.splitlines()] == expected
    assert_one_line_error(wrong, "has no task head")


def _rerank_rows(n: int, seed: int) -> list[dict]:
    """(query, document, label): the document is relevant when it names the query's topic."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        topic, other = rnd.sample(TOPICS, 2)
        query = f"something about the {topic}"
        for t, label in ((topic, 1), (other, 0)):
            words = [*rnd.sample(FILLER, 5), t]
            rnd.shuffle(words)
            rows.append({"query": query, "document": " ".join(words), "label": label})
    return rows


def test_finetune_rerank_learns_and_cross_encoder_loads_it(minilm_dir, tmp_path):
    from sentence_transformers import CrossEncoder

    train = _write_jsonl(tmp_path / "train.jsonl", _rerank_rows(300, 0))
    test = _write_jsonl(tmp_path / "test.jsonl", _rerank_rows(60, 1))
    out = tmp_path / "reranker"
    best = finetune(
        "rerank",
        minilm_dir,
        train,
        out,
        args=TrainArgs(out=out / "run", max_steps=60, batch_size=16, lr=1e-4, progress=False),
    )
    assert best["mrr_at_10"] > 0.9
    result = evaluate_file(out, test)
    assert result["mrr_at_10"] > 0.9 and result["accuracy_at_1"] > 0.8
    pairs = [(r["query"], r["document"]) for r in _rerank_rows(5, 2)]
    ours = [p["score"] for p in pipeline("rerank", out)(pairs)]
    np.testing.assert_allclose(ours, CrossEncoder(str(out), device="cpu").predict(pairs), atol=1e-5)

    triplets = _write_jsonl(
        tmp_path / "triplets.jsonl",
        [{"anchor": "q1", "positive": "a", "negative": "b"}, {"anchor": "q1", "positive": "a", "negative": "c"}],
    )
    read = pipeline("rerank", out).task.read(triplets, labelled=True)
    assert [(e.text, e.pair, e.label) for e in read] == [("q1", "a", 1.0), ("q1", "b", 0.0), ("q1", "c", 0.0)]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"query": "q", "document": "d", "label": 2}], "line 1: 'label' is 2, not a relevance from 0 to 1"),
        ([{"query": "q", "document": "d", "label": "yes"}], "'label' is 'yes', not a relevance from 0 to 1"),
        ([{"question": "q", "text": "d", "label": 1}], "no (query, document) columns"),
        ([{"query": "q", "document": "d", "label": 1}] * 3, "every 'label' is the same: nothing to learn"),
    ],
)
def test_bad_training_data_is_a_one_line_error(tiny_dir, tmp_path, rows, message):
    with pytest.raises(BertforgeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        finetune("rerank", tiny_dir, _write_jsonl(tmp_path / "t.jsonl", rows * 2), tmp_path / "out")


def test_bad_inputs_are_errors(ce_dir):
    pipe = pipeline("rerank", ce_dir)
    with pytest.raises(BertforgeError, match="'documents' must be a non-empty list"):
        pipe({"query": "q", "documents": []})
    with pytest.raises(BertforgeError, match="a reranker takes"):
        pipe("just a text")
    with pytest.raises(BertforgeError, match="unknown activation 'tanh'"):
        pipeline("rerank", ce_dir, activation="tanh")
