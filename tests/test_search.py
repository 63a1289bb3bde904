"""Semantic search: an index built here answers as a brute-force numpy search over the same embeddings;
int8 indexes rank as float32 ones; another model or a changed corpus is refused in one line; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import BERTFORGE, assert_one_line_error, run_all

import bertforge
from bertforge import BertforgeError
from bertforge.search import Index, build_index, search


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, rotten_tomatoes):
    path = tmp_path_factory.mktemp("search") / "corpus.jsonl"
    rows = [{"id": f"doc{i}", "text": r["text"]} for i, r in enumerate(rotten_tomatoes["test"][:300])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path, rows


@pytest.fixture(scope="module")
def built(corpus, minilm_dir, tmp_path_factory):
    path, _ = corpus
    d = tmp_path_factory.mktemp("indexes")
    return {dtype: build_index(minilm_dir, path, d / dtype, dtype=dtype) for dtype in ("float32", "int8")}


def test_hits_equal_a_brute_force_search(corpus, built, minilm_dir):
    _, rows = corpus
    docs = bertforge.Embedder.from_pretrained(minilm_dir)([r["text"] for r in rows], normalize=True)
    queries = ["a moving and beautiful film", "boring and far too long", rows[7]["text"]]
    q = bertforge.Embedder.from_pretrained(minilm_dir)(queries, normalize=True)
    hits = search(built["float32"], minilm_dir, queries, k=5)
    for row, scores in zip(hits, q @ docs.T, strict=True):
        expected = np.argsort(-scores, kind="stable")[:5]
        assert [h.id for h in row] == [rows[j]["id"] for j in expected]
        np.testing.assert_allclose([h.score for h in row], scores[expected], atol=1e-5)
    assert hits[2][0].id == "doc7" and hits[2][0].score == pytest.approx(1.0, abs=1e-5)  # a document finds itself


def test_int8_index_ranks_as_float32(built, minilm_dir, corpus):
    queries = ["a moving and beautiful film", "the actors were wasted", "funny and warm"]
    fp32 = search(built["float32"], minilm_dir, queries, k=10)
    int8 = search(built["int8"], minilm_dir, queries, k=10)
    for a, b in zip(fp32, int8, strict=True):
        assert a[0].id == b[0].id and len({h.id for h in a} & {h.id for h in b}) >= 8
        assert abs(a[0].score - b[0].score) < 0.01
    assert (built["int8"] / "vectors.npy").stat().st_size < (built["float32"] / "vectors.npy").stat().st_size / 3.5


def test_another_model_or_a_changed_corpus_is_refused(built, corpus, tiny_dir, tmp_path):
    path, rows = corpus
    with pytest.raises(BertforgeError, match="was built with another model"):
        search(built["float32"], tiny_dir, ["a film"])
    changed = tmp_path / "corpus.jsonl"
    changed.write_text(path.read_text(encoding="utf-8") + json.dumps({"id": "new", "text": "x"}) + "\n")
    idx = Index(built["float32"])
    with pytest.raises(BertforgeError, match="has changed since"):
        idx.texts(changed)
    assert idx.texts(path)["doc3"] == rows[3]["text"]
    with pytest.raises(BertforgeError, match="not an index"):
        Index(tmp_path)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n')
    with pytest.raises(BertforgeError, match=r"line 2: id '1' again \(first on line 1\)"):
        build_index(tiny_dir, dup, tmp_path / "i")


def test_cli_index_and_search(corpus, tmp_path):
    path, rows = corpus
    index_dir = tmp_path / "idx"
    (built,) = run_all(["index", "-m", "minilm-l6", "-i", path, "-o", index_dir, "--dtype", "int8"])
    assert built.stdout.strip() == f"wrote {index_dir} (300 documents, 384 dims, int8)"
    queries = tmp_path / "q.txt"
    queries.write_text(rows[3]["text"] + "\nboring\n")
    one, many, bad = run_all(
        ["search", "--index", index_dir, rows[5]["text"], "-k", "2", "--corpus", path],
        ["search", "--index", index_dir, "--queries", queries, "-k", "3"],
        ["search", "--index", index_dir],
        ok=False,
    )
    assert one.returncode == 0 and one.stdout.splitlines()[0].split("  ")[1:] == ["doc5", rows[5]["text"]]
    lines = [json.loads(x) for x in many.stdout.splitlines()]
    assert [x["query"] for x in lines] == [rows[3]["text"], "boring"] and len(lines[1]["hits"]) == 3
    assert lines[0]["hits"][0]["id"] == "doc3"
    assert_one_line_error(bad, "give query text(s) or --queries FILE")
    assert BERTFORGE.exists()
