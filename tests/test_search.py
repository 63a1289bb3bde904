"""Semantic search: an index built here answers as a brute-force numpy search over the same embeddings;
int8 indexes rank as float32 ones; long documents are read in the windows (and their character spans)
that transformers' tokenizer and sentence-transformers give, and found once, by their best window; the
faiss backend (exact with a Flat index, approximate by default) finds what the exact one does; another
model or a changed corpus is refused in one line; the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
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
    assert built.stdout.strip() == f"wrote {index_dir} (300 documents in 300 windows, 384 dims, int8, exact)"
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
    assert lines[0]["hits"][0]["id"] == "doc3" and lines[0]["hits"][0]["start"] == 0
    assert_one_line_error(bad, "give query text(s) or --queries FILE")
    assert BERTFORGE.exists()


# -- long documents, in windows -------------------------------------------------------------------------------
WINDOW, STRIDE = 48, 12


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory, wiki_topics):
    """40 wiki-topics articles (most longer than a 48-token window) and 20 short reviews."""
    path = tmp_path_factory.mktemp("long") / "corpus.jsonl"
    rows = [{"id": f"wiki{i}", "text": r["text"]} for i, r in enumerate(wiki_topics["test"][:40])]
    rows += [{"id": f"short{i}", "text": f"A short note number {i}."} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path, rows


@pytest.fixture(scope="module")
def windowed(long_corpus, minilm_dir, tmp_path_factory):
    path, _ = long_corpus
    d = tmp_path_factory.mktemp("windowed")
    kinds = {
        "exact": {},
        "flat": {"backend": "faiss", "faiss_spec": "Flat"},
        "hnsw": {"backend": "faiss"},
        "sq8": {"backend": "faiss", "dtype": "int8"},
    }
    return {
        name: build_index(minilm_dir, path, d / name, max_length=WINDOW, stride=STRIDE, **kw)
        for name, kw in kinds.items()
    }


@pytest.fixture(scope="module")
def reference_windows(long_corpus, minilm_dir):
    """Each window's document, character span and sentence-transformers vector, as transformers' tokenizer cuts them."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    _, rows = long_corpus
    texts = [r["text"] for r in rows]
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    enc = tok(
        texts, max_length=WINDOW, stride=STRIDE, truncation=True, return_overflowing_tokens=True,
        return_offsets_mapping=True, return_special_tokens_mask=True, padding=True, return_tensors="pt",
    )  # fmt: skip
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    with torch.inference_mode():
        out = st({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                  "token_type_ids": enc["token_type_ids"]})  # fmt: skip
    spans = []
    for offsets, special in zip(enc["offset_mapping"].tolist(), enc["special_tokens_mask"].tolist(), strict=True):
        read = [o for o, s in zip(offsets, special, strict=True) if not s]
        spans.append((read[0][0], read[-1][1]))
    return enc["overflow_to_sample_mapping"].numpy(), np.array(spans), out["sentence_embedding"].numpy()


def test_long_documents_are_read_in_the_windows_transformers_cuts(windowed, long_corpus, reference_windows):
    _, rows = long_corpus
    owner, spans, vectors = reference_windows
    idx = Index(windowed["exact"])
    assert idx.meta["chunks"] == len(owner) > idx.meta["documents"] + 40 and idx.meta["stride"] == STRIDE
    np.testing.assert_array_equal(idx.chunks[:, 0], owner)
    whole = np.bincount(owner) == 1  # read in one window: the span is all of the document
    want = np.array([(0, len(rows[d]["text"])) if whole[d] else s for d, s in zip(owner, spans, strict=True)])
    np.testing.assert_array_equal(idx.chunks[:, 1:], want)
    np.testing.assert_allclose(np.load(windowed["exact"] / "vectors.npy"), vectors, atol=2e-5)


def test_a_document_is_found_once_by_its_best_window(windowed, long_corpus, reference_windows, minilm_dir):
    path, rows = long_corpus
    owner, spans, vectors = reference_windows
    queries = ["the history of a city", "a football club and its league", rows[3]["text"][200:400], "a short note"]
    q = bertforge.Embedder.from_pretrained(minilm_dir)(queries, normalize=True)
    hits = search(windowed["exact"], minilm_dir, queries, k=8, corpus=path)
    for row, chunk_scores in zip(hits, q @ vectors.T, strict=True):
        best = np.full(len(rows), -np.inf)
        np.maximum.at(best, owner, chunk_scores)
        expected = np.argsort(-best, kind="stable")[:8]
        assert [h.id for h in row] == [rows[d]["id"] for d in expected]  # each document once
        np.testing.assert_allclose([h.score for h in row], best[expected], atol=1e-5)
        for h, d in zip(row, expected, strict=True):
            chunk = np.flatnonzero((owner == d) & (chunk_scores == best[d]))[0]
            span = (0, len(rows[d]["text"])) if (owner == d).sum() == 1 else tuple(spans[chunk])
            assert (h.start, h.end) == span and h.text == rows[d]["text"][h.start : h.end]
    assert hits[2][0].id == "wiki3" and hits[2][0].start > 0  # the passage: its document, by a later window


def test_faiss_finds_what_exact_search_finds(windowed, minilm_dir):
    queries = ["the history of a city", "a football club and its league", "music and bands", "a short note 3"]
    exact = search(windowed["exact"], minilm_dir, queries, k=10)
    flat = search(windowed["flat"], minilm_dir, queries, k=10)
    for a, b in zip(exact, flat, strict=True):  # faiss's Flat index scores every vector: the same answer
        assert [(h.id, h.start, h.end) for h in a] == [(h.id, h.start, h.end) for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    for name in ("hnsw", "sq8"):  # approximate: the best documents still found
        got = search(windowed[name], minilm_dir, queries, k=10)
        for a, b in zip(exact, got, strict=True):
            assert a[0].id == b[0].id and len({h.id for h in a} & {h.id for h in b}) >= 8, name
            assert len({h.id for h in b}) == len(b) == 10
    meta = Index(windowed["sq8"]).meta
    assert (meta["backend"], meta["faiss_spec"], meta["dtype"]) == ("faiss", "HNSW32,SQ8", "int8")
    assert not (windowed["hnsw"] / "vectors.npy").exists()


def test_faiss_recall_on_random_vectors(tmp_path):
    from bertforge.vectors import ExactVectors, FaissVectors, write_vectors

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[:50] + 0.05 * rng.standard_normal((50, 64)).astype(np.float32)
    (tmp_path / "e").mkdir(), (tmp_path / "f").mkdir()
    write_vectors(tmp_path / "e", x)
    write_vectors(tmp_path / "f", x, "faiss")
    _, want = ExactVectors(tmp_path / "e", "float32").search(queries, 10)
    _, got = FaissVectors(tmp_path / "f").search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got, strict=True)])
    assert recall > 0.9 and (want[:, 0] == np.arange(50)).all()


def test_bad_index_settings_are_one_line_errors(long_corpus, tiny_dir, tmp_path):
    path, _ = long_corpus
    for kwargs, message in (
        ({"backend": "annoy"}, "unknown search backend 'annoy' (choose from exact, faiss)"),
        ({"faiss_spec": "Flat"}, "--faiss-spec is for the faiss backend"),
        ({"backend": "faiss", "faiss_spec": "Banana7"}, "faiss cannot build 'Banana7'"),
        ({"long_text": "fold"}, "unknown --long-text 'fold'"),
        ({"dtype": "int4"}, "unknown index dtype 'int4'"),
    ):
        with pytest.raises(BertforgeError, match=re.escape(message)):
            build_index(tiny_dir, path, tmp_path / "i", **kwargs)
