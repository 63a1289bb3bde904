"""The encoder's OpenAI-compatible /v1/embeddings (driven by the official ``openai`` client), the
per-request options of the embedding endpoints (truncate, normalize, prompt_name, dimensions, against
sentence-transformers), /v1/tokenize (against transformers' tokenizer) and /v1/search over an index
(against the offline search), each on a real ``bertforge serve`` on loopback."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import httpx
import numpy as np
import openai
import pytest
from conftest import assert_one_line_error
from test_app import BERTFORGE, KEY, Server, error_of

from bertforge.infer import Embedder
from bertforge.search import build_index, search

TEXTS = ["A gripping, beautifully shot film.", "Ünïcode and 中文 text", "Dull and far too long."]
LONG = "the film goes on and on " * 80  # over minilm-l6's 256 tokens


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, rotten_tomatoes):
    path = tmp_path_factory.mktemp("serve-search") / "corpus.jsonl"
    rows = [{"id": f"doc{i}", "text": r["text"]} for i, r in enumerate(rotten_tomatoes["test"][:200])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prompted(minilm_dir, tmp_path_factory):
    """minilm-l6 with named prompts, as config_sentence_transformers.json declares them."""
    d = tmp_path_factory.mktemp("prompted") / "minilm-prompts"
    shutil.copytree(minilm_dir, d)
    path = d / "config_sentence_transformers.json"
    cfg = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**cfg, "prompts": {"query": "query: ", "passage": "passage: "}}))
    return d


@pytest.fixture(scope="module")
def servers(corpus, prompted, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve-embed")
    index = build_index("minilm-l6", corpus, d / "index", max_length=32)
    started = {
        "minilm": Server("minilm-l6", d, "--api-key", KEY, "--index", str(index)),
        "prompted": Server(prompted, d),
    }
    try:
        yield {k: s.wait() for k, s in started.items()} | {"index": index}
    finally:
        for s in started.values():
            if isinstance(s, Server):
                s.stop()


@pytest.fixture(scope="module")
def client(servers) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{servers['minilm'].url}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def st(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


def test_the_openai_client_gets_sentence_transformers_vectors(client, st, minilm_dir):
    from transformers import AutoTokenizer

    want = st.encode(TEXTS)
    tokens = sum(len(ids) for ids in AutoTokenizer.from_pretrained(minilm_dir)(TEXTS)["input_ids"])
    for fmt in ("base64", "float", None):  # (the client asks for base64 when it is not told)
        kwargs = {"encoding_format": fmt} if fmt else {}
        r = client.embeddings.create(input=TEXTS, model="minilm-l6", **kwargs)
        assert r.object == "list" and r.model == "minilm-l6" and [d.index for d in r.data] == [0, 1, 2]
        assert (r.usage.prompt_tokens, r.usage.total_tokens) == (tokens, tokens)
        got = [np.frombuffer(base64.b64decode(d.embedding), "<f4") if fmt == "base64" else d.embedding for d in r.data]
        np.testing.assert_allclose(np.array(got), want, atol=1e-5)  # (asked for base64: the client leaves it so)
    one = client.embeddings.create(input=TEXTS[0], model="minilm-l6")
    np.testing.assert_allclose(one.data[0].embedding, want[0], atol=1e-5)


def test_the_embeddings_answer_is_openais_shape(servers):
    r = httpx.post(
        f"{servers['minilm'].url}/v1/embeddings",
        json={"input": ["hello", LONG], "model": "anything"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    body = r.json()
    assert r.status_code == 200 and list(body) == ["object", "data", "model", "usage"]
    assert (
        body["object"] == "list"
        and body["model"] == "anything"
        and list(body["usage"]) == ["prompt_tokens", "total_tokens"]
    )
    assert [list(d) for d in body["data"]] == [["object", "index", "embedding", "truncated"]] * 2
    assert [d["truncated"] for d in body["data"]] == [False, True] and body["usage"]["prompt_tokens"] == 3 + 256


def test_dimensions_truncate_and_renormalise_as_sentence_transformers(client, minilm_dir):
    from sentence_transformers import SentenceTransformer

    want = SentenceTransformer(str(minilm_dir), device="cpu", truncate_dim=128).encode(TEXTS, normalize_embeddings=True)
    r = client.embeddings.create(input=TEXTS, model="minilm-l6", dimensions=128)
    got = np.array([d.embedding for d in r.data])
    assert got.shape == (3, 128)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.embeddings.create(input=TEXTS, model="minilm-l6", dimensions=1000)
    assert e.value.response.json() == {"error": "dimensions must be between 1 and 384 (this model's), not 1000"}


def test_truncate_false_refuses_a_long_text_with_413(client, servers):
    with pytest.raises(openai.APIStatusError) as e:
        client.embeddings.create(input=["short", LONG], model="m", extra_body={"truncate": False})
    assert e.value.status_code == 413
    with httpx.Client(base_url=servers["minilm"].url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        msg = error_of(c.post("/v1/embed", json={"texts": ["ok", LONG], "truncate": False}), 413)
        assert msg == "text 1 is 482 tokens; this model reads at most 256 (truncate it)"
        r = c.post("/v1/embed", json={"texts": ["ok", LONG]}).json()
        assert r["truncated"] == [False, True]
        raw = c.post("/v1/embed", json={"texts": TEXTS, "normalize": False}).json()["embeddings"]
        np.testing.assert_allclose(raw, Embedder.from_pretrained("minilm-l6")(TEXTS, normalize=False), atol=1e-5)
        assert abs(np.linalg.norm(raw[0]) - 1) > 0.05
        assert error_of(c.post("/v1/embed", json={"texts": TEXTS, "prompt_name": "query"}), 422) == (
            "unknown prompt name 'query' (this model's prompts: none)"
        )


def test_prompt_name_is_sentence_transformers_prompt(servers, prompted):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(prompted), device="cpu")
    url = servers["prompted"].url
    for name in ("query", "passage"):
        r = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS, "prompt_name": name}).json()
        np.testing.assert_allclose([d["embedding"] for d in r["data"]], st.encode(TEXTS, prompt_name=name), atol=1e-5)
        r = httpx.post(f"{url}/v1/embed", json={"texts": TEXTS, "prompt_name": name}).json()
        np.testing.assert_allclose(r["embeddings"], st.encode(TEXTS, prompt_name=name), atol=1e-5)
    assert "/v1/search" not in httpx.get(f"{url}/health").json()["endpoints"]  # no --index: no search
    assert "start" not in error_of(httpx.post(f"{url}/v1/search", json={"queries": ["x"]}), 404)


def test_tokenize_gives_transformers_tokens(servers, minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    texts = [*TEXTS, LONG]
    r = httpx.post(
        f"{servers['minilm'].url}/v1/tokenize", json={"texts": texts}, headers={"Authorization": f"Bearer {KEY}"}
    ).json()
    want = tok(texts, max_length=256, truncation=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    for i, got in enumerate(r["tokens"]):
        assert [t["id"] for t in got] == want["input_ids"][i]
        assert [(t["start"], t["end"]) for t in got] == [tuple(o) for o in want["offset_mapping"][i]]
        assert [t["special"] for t in got] == [bool(s) for s in want["special_tokens_mask"][i]]
        assert [t["token"] for t in got] == tok.convert_ids_to_tokens(want["input_ids"][i])
    assert r["truncated"] == [False, False, False, True]


def test_search_answers_as_the_offline_search(servers, corpus):
    queries = ["a moving and beautiful film", "boring and far too long"]
    r = httpx.post(
        f"{servers['minilm'].url}/v1/search",
        json={"queries": queries, "k": 5},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert r.status_code == 200, r.text
    want = search(servers["index"], "minilm-l6", queries, k=5)
    for got, hits in zip(r.json()["results"], want, strict=True):
        assert [(g["id"], g["start"], g["end"]) for g in got] == [(h.id, h.start, h.end) for h in hits]
        np.testing.assert_allclose([g["score"] for g in got], [h.score for h in hits], atol=1e-5)
    assert "/v1/search" in httpx.get(f"{servers['minilm'].url}/health").json()["endpoints"]


def test_an_index_of_another_model_is_refused_at_start(corpus, tiny_dir, tmp_path):
    index = build_index(tiny_dir, corpus, tmp_path / "tiny-index")
    proc = subprocess.run(
        [str(BERTFORGE), "serve", "--model", "minilm-l6", "--port", "0", "--index", str(index)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(proc, "was built with another model")
