"""The HTTP server end to end: the real ``bertforge serve`` process on a loopback port, for an encoder
(minilm-l6) and for fine-tuned classify, tag and qa models. Answers are compared with the offline
``Embedder`` / ``Pipeline``; every error case answers its status with a one-line JSON error."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from bertforge import BertConfig, BertforgeError, BertModel, Tokenizer, save_pretrained
from bertforge.api import finetune
from bertforge.assets import fetch
from bertforge.infer import Embedder
from bertforge.pipelines import Pipeline
from bertforge.serve import access_line
from bertforge.tasks import TaskSpec
from bertforge.train import TrainArgs

BERTFORGE = Path(sys.executable).parent / "bertforge"
KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
POS = ["good", "great", "wonderful", "excellent", "superb", "lovely"]
NEG = ["bad", "awful", "terrible", "boring", "dreadful", "poor"]
FILLER = "the a film movie plot story actors scene music script was is and it this very quite".split()
NAMES, PLACES = ["Alice", "Bob", "Carol", "Dave"], ["Paris", "Berlin", "Rome", "Oslo"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``bertforge serve`` subprocess; ``wait()`` blocks until /health answers."""

    def __init__(self, model: Path | str, logs: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out, self.err = logs / f"serve-{self.port}.out", logs / f"serve-{self.port}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [str(BERTFORGE), "serve", "--model", str(model), "--port", str(self.port), *args],
                stdout=out,
                stderr=err,
            )

    def wait(self, timeout: float = 180) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}: {self.err.read_text()}"
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server did not answer /health in {timeout}s: {self.err.read_text()}")

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


# -- models and servers ---------------------------------------------------------------------------------------
def _args(out: Path, steps: int, batch_size: int = 16) -> TrainArgs:
    return TrainArgs(
        out=out, max_steps=steps, batch_size=batch_size, lr=2e-3, warmup=0.1, eval_every=steps, progress=False
    )


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Fine-tuned classify, tag and qa models on a random tiny BERT with minilm-l6's vocabulary."""
    d = tmp_path_factory.mktemp("serve-models")
    tok = Tokenizer.from_pretrained(fetch("minilm-l6"))
    torch.manual_seed(0)
    tiny = save_pretrained(
        BertModel(BertConfig.preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=128)),
        d / "tiny",
        tokenizer=tok,
    )
    rnd = random.Random(0)
    rows = []
    for _ in range(320):
        label = rnd.choice(["positive", "negative"])
        words = rnd.sample(FILLER, 6) + [rnd.choice(POS if label == "positive" else NEG)]
        rnd.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    finetune(
        "classify",
        tiny,
        _write_jsonl(d / "sentiment.jsonl", rows),
        d / "classify",
        args=_args(d / "classify" / "run", 60),
    )
    tags = []
    for _ in range(300):
        n, p = rnd.choice(NAMES), rnd.choice(PLACES)
        text = f"{n} flew to {p} on Monday"
        tags.append(
            {
                "text": text,
                "entities": [
                    {"start": 0, "end": len(n), "label": "PER"},
                    {"start": text.index(p), "end": text.index(p) + len(p), "label": "LOC"},
                ],
            }
        )
    finetune("tag", tiny, _write_jsonl(d / "ner.jsonl", tags), d / "tag", args=_args(d / "tag" / "run", 80))
    squad = fetch("squad-sample", quiet=True)
    finetune(
        "qa",
        tiny,
        squad,
        d / "qa",
        valid_file=squad,
        args=_args(d / "qa" / "run", 4, batch_size=4),
        spec=TaskSpec("qa", max_length=128, extra={"max_query_length": 32, "doc_stride": 32}),
    )
    return {"classify": d / "classify", "tag": d / "tag", "qa": d / "qa"}


@pytest.fixture(scope="module")
def servers(models, tmp_path_factory):
    """Four servers, started together: minilm-l6 (with an API key and small limits), classify
    (defaults), tag (a 1 s batch window: concurrent requests surely meet), qa."""
    logs = tmp_path_factory.mktemp("serve-logs")
    started = {
        "minilm": Server("minilm-l6", logs, "--api-key", KEY, "--max-texts", "8", "--max-chars", "1000"),
        "classify": Server(models["classify"], logs),
        "tag": Server(models["tag"], logs, "--batch-window-ms", "1000"),
        "qa": Server(models["qa"], logs),
    }
    try:
        yield {k: s.wait() for k, s in started.items()}
    finally:
        for s in started.values():
            s.stop()


@pytest.fixture(scope="module")
def minilm(servers) -> httpx.Client:
    with servers["minilm"].client(**AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def offline() -> Embedder:
    return Embedder.from_pretrained("minilm-l6")


@pytest.fixture(scope="module")
def snippets(rotten_tomatoes) -> list[str]:
    return [r["text"] for r in rotten_tomatoes["test"][:300]]


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample line of a Prometheus text exposition (fails on a line that is not one)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        assert m, line
        out[m.group(1), frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))] = float(m.group(3))
    return out


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def error_of(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert list(body) == ["error"] and "\n" not in body["error"]
    return body["error"]


# -- the encoder: embed, similarity, summarize ----------------------------------------------------------------
def test_health_tells_the_model_and_needs_no_key(servers):
    r = httpx.get(f"{servers['minilm'].url}/health")
    body = r.json()
    assert r.status_code == 200 and body["uptime_s"] > 0
    assert {k: v for k, v in body.items() if k != "uptime_s"} == {
        "status": "ok",
        "model": "minilm-l6",
        "task": "encoder",
        "precision": "fp32",
        "runtime": "torch",
        "endpoints": ["/v1/embed", "/v1/similarity", "/v1/summarize", "/v1/embeddings", "/v1/tokenize"],
    }
    assert servers["minilm"].out.read_text().startswith(f"bertforge: serving minilm-l6 on {servers['minilm'].url} ")


def test_embed_equals_the_offline_embedder(minilm, offline):
    texts = [
        "A gripping, beautifully shot film.",
        "Ünïcode and 中文 text",
        "/etc/passwd",
        "x " * 400,
    ]  # ("": 422, below)
    r = minilm.post("/v1/embed", json={"texts": texts})
    assert r.status_code == 200, r.text
    got = np.array(r.json()["embeddings"])
    assert got.shape == (4, 384)
    np.testing.assert_allclose(got, offline(texts), atol=1e-5)  # "/etc/passwd" is text, never a file
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_similarity_as_pairs_or_two_lists_equals_offline(minilm, offline):
    a = ["A man is playing a guitar.", "The cat sleeps on the sofa.", "Stocks fell sharply today."]
    b = ["Someone plays the guitar.", "A kitten naps on a couch.", "I like green tea."]
    by_pairs = minilm.post("/v1/similarity", json={"pairs": [list(p) for p in zip(a, b, strict=True)]}).json()["scores"]
    by_lists = minilm.post("/v1/similarity", json={"a": a, "b": b}).json()["scores"]
    np.testing.assert_allclose(by_pairs, offline.similarity(a, b), atol=1e-5)
    np.testing.assert_allclose(by_lists, by_pairs, atol=1e-5)
    assert by_pairs[0] > 0.7 and by_pairs[1] > 0.5 and by_pairs[2] < 0.2


def test_summarize_without_training_equals_the_offline_pipeline(minilm):
    docs = [
        "The council met on Monday. It approved the new budget for schools. Teachers welcomed the decision. "
        "Parents had asked for more funding. The vote was unanimous.",
        {
            "sentences": [
                "Rain fell all week.",
                "Rivers rose across the region.",
                "Several roads closed.",
                "Cats slept.",
            ]
        },
    ]
    r = minilm.post("/v1/summarize", json={"documents": docs})
    assert r.status_code == 200, r.text
    got = r.json()["summaries"]
    want = Pipeline("summarize", "minilm-l6")(docs)
    assert [(g["summary"], g["selected"]) for g in got] == [(w["summary"], w["selected"]) for w in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g["scores"], w["scores"], atol=1e-5)
    assert len(got[0]["selected"]) == 3


def test_an_encoder_answers_404_for_task_endpoints(minilm):
    for path in ("/v1/classify", "/v1/tag", "/v1/qa"):
        assert error_of(minilm.post(path, json={"texts": ["x"]}), 404) == (
            f"this server's model is an encoder: {path} is not available (it serves /v1/embed, /v1/similarity, "
            "/v1/summarize, /v1/embeddings, /v1/tokenize)"
        )
    assert error_of(minilm.post("/v1/nothing", json={}), 404) == "no such endpoint: /v1/nothing"
    assert error_of(minilm.get("/v1/embed"), 405) == "Method Not Allowed"


def test_api_key_is_required_on_v1_and_metrics(servers):
    url = servers["minilm"].url
    body = {"texts": ["hello"]}
    r = httpx.post(f"{url}/v1/embed", json=body)
    assert (
        error_of(r, 401) == "missing API key: send 'Authorization: Bearer KEY'"
        and r.headers["www-authenticate"] == "Bearer"
    )
    for wrong in (f"Bearer {KEY}x", KEY, f"Bearer{KEY}", f"Bearer {KEY[:-1]}", "Bearer", "Basic czNjcmV0"):
        assert (
            error_of(httpx.post(f"{url}/v1/embed", json=body, headers={"Authorization": wrong}), 401) == "wrong API key"
        )
    assert error_of(httpx.get(f"{url}/metrics"), 401) == "missing API key: send 'Authorization: Bearer KEY'"
    assert (
        error_of(httpx.post(f"{url}/v1/embed", content=b"{not json", headers={"Authorization": "x"}), 401)
        == "wrong API key"
    )
    assert httpx.post(f"{url}/v1/embed", json=body, headers=AUTH).status_code == 200
    assert (
        httpx.post(f"{url}/v1/embed", json=body, headers={"Authorization": f"bearer  {KEY}"}).status_code == 200
    )  # RFC 7235
    assert "/v1/* and /metrics need 'Authorization: Bearer KEY'" in servers["minilm"].out.read_text()
    assert "API key" not in servers["classify"].out.read_text()  # on loopback, without a key: nothing to say
    assert httpx.get(f"{url}/openapi.json").status_code == 200


def test_docs_page_works_offline(servers):
    """/docs loads Swagger UI's files from the server itself, not a CDN, and without the API key."""
    url = servers["minilm"].url
    page = httpx.get(f"{url}/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    linked = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(linked) == ["/docs/favicon-32x32.png", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"], linked
    assert "url: '/openapi.json'" in page.text and "http" not in " ".join(linked)
    for path, kind, size in (
        ("swagger-ui-bundle.js", "javascript", 500_000),
        ("swagger-ui.css", "css", 50_000),
        ("favicon-32x32.png", "png", 100),
    ):
        r = httpx.get(f"{url}/docs/{path}")
        assert r.status_code == 200 and kind in r.headers["content-type"] and len(r.content) > size, (
            path,
            r.status_code,
        )
    r = httpx.get(f"{url}/docs/swagger-ui.css", params={"content": "<script>", "media_type": "text/html"})
    assert "css" in r.headers["content-type"] and b"<script>" not in r.content  # nothing comes from the request
    for other in (
        "/docs/index.html",
        "/docs/swagger-ui.js",
        "/docs/..%2F..%2F__init__.py",
        "/docs/%2e%2e/%2e%2e/__init__.py",
    ):
        assert httpx.get(f"{url}{other}").status_code in (401, 404), other  # nothing but the three files
    assert httpx.get(f"{url}/redoc").status_code in (401, 404)  # its script would come from a CDN


def test_limits_answer_413_and_bad_requests_422(minilm):
    post = minilm.post
    assert (
        error_of(post("/v1/embed", json={"texts": ["a"] * 9}), 413)
        == "9 texts in one request; this server takes at most 8 (--max-texts)"
    )
    assert error_of(post("/v1/embed", json={"texts": ["ok", "y" * 1001]}), 413) == (
        "texts[1] has 1,001 characters; this server takes at most 1,000 (--max-chars)"
    )
    assert error_of(post("/v1/similarity", json={"pairs": [["a", "b"], ["c", "d" * 1001]]}), 413).startswith(
        "pairs[1][1] has 1,001"
    )
    assert error_of(post("/v1/similarity", json={"a": ["a"] * 9, "b": ["b"] * 9}), 413).startswith(
        "9 pairs in one request"
    )
    assert error_of(post("/v1/summarize", json={"documents": [{"sentences": ["z" * 600, "z" * 600]}]}), 413).startswith(
        "documents[0] has 1,201 characters"
    )
    big = json.dumps({"texts": ["w" * 900] * 5000}).encode()  # 4.5 MB: over the body limit before any other check
    assert error_of(post("/v1/embed", content=big, headers={"content-type": "application/json"}), 413) == (
        "request body over 4,194,304 bytes"
    )
    assert error_of(
        post("/v1/embed", content=b'{"texts": ["a",', headers={"content-type": "application/json"}), 422
    ).startswith("malformed JSON")
    assert error_of(
        post("/v1/embed", content=b'{"texts": ["caf\xe9"]}', headers={"content-type": "application/json"}), 400
    ) == (
        "the body is not UTF-8 text (byte 0xe9 at 15): send JSON in UTF-8"  # (latin-1)
    )
    assert error_of(post("/v1/embed", json={"texts": []}), 422) == "texts is empty"
    assert error_of(post("/v1/embed", json={}), 422) == "texts: Field required"
    assert error_of(post("/v1/embed", json={"texts": ["a", 3]}), 422) == "texts[1]: Input should be a valid string"
    assert error_of(post("/v1/embed", json={"texts": ["a"], "text": "b"}), 422) == "unknown field 'text'"
    assert (
        error_of(post("/v1/embed", json=["a"]), 422)
        == "the body must be a JSON object, sent with Content-Type: application/json"
    )
    assert (
        error_of(post("/v1/embed", data={"texts": "a"}), 422)
        == "the body must be a JSON object, sent with Content-Type: application/json"
    )
    assert (
        error_of(post("/v1/similarity", json={"a": ["x", "y"], "b": ["z"]}), 422)
        == "'a' has 2 texts but 'b' has 1: give as many"
    )
    assert error_of(post("/v1/similarity", json={}), 422) == "give 'pairs', or 'a' and 'b'"
    assert (
        error_of(post("/v1/similarity", json={"a": ["x"]}), 422)
        == "b is missing: give 'a' and 'b' (as many texts each)"
    )
    assert error_of(post("/v1/embed", json={"texts": ["ok", " \n "]}), 422) == "texts[1] is empty"
    assert error_of(post("/v1/similarity", json={"pairs": [["a", ""]]}), 422) == "pairs[0][1] is empty"
    assert error_of(post("/v1/summarize", json={"documents": [""]}), 422) == "documents[0] is empty"
    surrogate = b'{"texts": ["ok", "half an emoji \\ud83d"]}'  # valid JSON, not valid Unicode
    assert error_of(post("/v1/embed", content=surrogate, headers={"content-type": "application/json"}), 422) == (
        "texts[1] is not valid Unicode (it holds a lone surrogate)"
    )
    assert error_of(post("/v1/similarity", json={"pairs": [["only one"]]}), 422).startswith("pairs[0]")
    assert (
        error_of(post("/v1/summarize", json={"documents": [{"sentences": ["fine", "  "]}]}), 422)
        == "documents[0]: sentence 1 is empty"
    )
    assert (
        error_of(post("/v1/summarize", json={"documents": [{"text": "x"}]}), 422)
        == "documents[0].sentences: Field required"
    )
    assert post("/v1/embed", json={"texts": ["still serving"]}).status_code == 200


def test_metrics_count_traffic(minilm):
    def scrape() -> dict:
        r = minilm.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return parse_metrics(r.text)

    before = scrape()
    for _ in range(3):
        assert minilm.post("/v1/embed", json={"texts": ["one", "two"]}).status_code == 200
    assert minilm.post("/v1/embed", json={"texts": []}).status_code == 422
    after = scrape()

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("bertforge_requests_total", endpoint="/v1/embed", status="200") == 3
    assert grew("bertforge_requests_total", endpoint="/v1/embed", status="422") == 1
    assert grew("bertforge_errors_total", endpoint="/v1/embed", status="422") == 1
    assert grew("bertforge_errors_total", endpoint="/v1/embed", status="200") == 0
    assert grew("bertforge_requests_total", endpoint="/metrics", status="200") == 1  # the first scrape
    assert grew("bertforge_request_duration_seconds_count", endpoint="/v1/embed") == 4
    assert grew("bertforge_request_duration_seconds_bucket", endpoint="/v1/embed", le="+Inf") == 4
    assert grew("bertforge_batch_size_count", kind="embed") == 3  # one model call per request: they came one by one
    assert grew("bertforge_batch_size_sum", kind="embed") == 6
    assert grew("bertforge_batch_size_bucket", kind="embed", le="1") == 0
    assert grew("bertforge_batch_size_bucket", kind="embed", le="2") == 3
    assert metric(after, "bertforge_queue_depth") == 0 and metric(after, "bertforge_requests_in_flight") == 1
    assert metric(after, "bertforge_info", model="minilm-l6", task="encoder", precision="fp32", runtime="torch") == 1


def test_concurrent_load_is_batched_and_equals_offline(minilm, servers, offline, snippets):
    """32 clients x 50 requests of 1-3 texts (embed) or a pair (similarity): every answer is 200 and
    equal to the offline Embedder, and the server merged requests into fewer model calls."""
    vectors = dict(zip(snippets, offline(snippets), strict=True))
    before = parse_metrics(minilm.get("/metrics").text)
    failures: list[str] = []

    def client(seed: int) -> int:
        rnd = random.Random(seed)
        checked = 0
        with servers["minilm"].client(**AUTH) as c:
            for _ in range(50):
                texts = rnd.sample(snippets, rnd.choice([1, 2, 3]))
                if rnd.random() < 0.3:
                    r = c.post("/v1/similarity", json={"pairs": [texts[:1] * 2 if len(texts) == 1 else texts[:2]]})
                    want = [float(vectors[texts[0]] @ vectors[texts[min(1, len(texts) - 1)]])]
                    got = r.json()["scores"] if r.status_code == 200 else None
                else:
                    r = c.post("/v1/embed", json={"texts": texts})
                    want = [vectors[t] for t in texts]
                    got = r.json()["embeddings"] if r.status_code == 200 else None
                if got is None or not np.allclose(got, want, atol=1e-5, rtol=0):
                    failures.append(f"{r.status_code} {r.text[:200]}")
                checked += 1
        return checked

    with ThreadPoolExecutor(32) as pool:
        assert sum(pool.map(client, range(32))) == 1600
    assert failures == []
    after = parse_metrics(minilm.get("/metrics").text)
    calls = metric(after, "bertforge_batch_requests_count", kind="embed") - metric(
        before, "bertforge_batch_requests_count", kind="embed"
    )
    merged = metric(after, "bertforge_batch_requests_sum", kind="embed") - metric(
        before, "bertforge_batch_requests_sum", kind="embed"
    )
    assert merged == 1600 and calls < 800  # on average, two or more requests per model call
    five_hundreds = sum(
        v for (n, labels), v in after.items() if n == "bertforge_requests_total" and dict(labels)["status"] >= "500"
    )
    assert five_hundreds == 0


def test_openapi_documents_what_this_model_serves(servers):
    schema = httpx.get(f"{servers['minilm'].url}/openapi.json").json()
    assert set(schema["paths"]) == {
        "/v1/embed",
        "/v1/similarity",
        "/v1/summarize",
        "/v1/embeddings",
        "/v1/tokenize",
        "/health",
        "/metrics",
    }
    assert {"EmbedRequest", "EmbedResponse", "SimilarityRequest", "SummarizeRequest", "ErrorBody"} <= set(
        schema["components"]["schemas"]
    )
    assert schema["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert (
        schema["paths"]["/v1/embed"]["post"]["security"] == [{"bearer": []}]
        and "security" not in schema["paths"]["/health"]["get"]
    )
    assert set(schema["paths"]["/v1/embed"]["post"]["responses"]) == {"200", "401", "413", "422", "429", "503", "504"}


# -- fine-tuned models --------------------------------------------------------------------------------------
def test_classify_equals_the_offline_pipeline_under_concurrency(servers, models, snippets):
    texts = snippets[:64] + ["a wonderful film", "an awful film"]
    want = Pipeline(None, models["classify"])(texts)
    assert {w["label"] for w in want} <= {"positive", "negative"}
    assert [w["label"] for w in want[-2:]] == ["positive", "negative"]

    def client(i: int) -> list[dict]:
        with servers["classify"].client() as c:  # no API key on this server
            out = []
            for j in range(i * 6, i * 6 + 6, 2):
                r = c.post("/v1/classify", json={"texts": texts[j : j + 2]})
                assert r.status_code == 200, r.text
                out += r.json()["predictions"]
            return out

    with ThreadPoolExecutor(11) as pool:
        got = [p for part in pool.map(client, range(11)) for p in part]
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want, strict=True):
        assert set(g["probabilities"]) == {"positive", "negative"}
        assert abs(g["score"] - w["score"]) < 1e-5
        assert all(abs(g["probabilities"][k] - w["probabilities"][k]) < 1e-5 for k in w["probabilities"])


def test_classify_server_errors(servers):
    with servers["classify"].client() as c:
        assert c.get("/health").json()["endpoints"] == ["/v1/classify"]
        for path in ("/v1/embed", "/v1/similarity", "/v1/tag", "/v1/qa", "/v1/summarize"):
            assert error_of(c.post(path, json={"texts": ["x"]}), 404) == (
                f"this server's model is a classify model: {path} is not available (it serves /v1/classify)"
            )
        assert (
            error_of(c.post("/v1/classify", json={"pairs": [["a", "b"]]}), 422)
            == "this server's model reads single texts: send 'texts'"
        )
        assert error_of(c.post("/v1/classify", json={"texts": ["a"] * 257}), 413) == (
            "257 texts in one request; this server takes at most 256 (--max-texts)"
        )
        assert c.post("/v1/classify", json={"texts": ["a"] * 256}).status_code == 200
        assert error_of(c.post("/v1/classify", json={"texts": ["q" * 20_001]}), 413) == (
            "texts[0] has 20,001 characters; this server takes at most 20,000 (--max-chars)"
        )
        assert (
            c.post("/v1/classify", json={"texts": ["q " * 10_000]}).status_code == 200
        )  # windows: long texts are read whole


def test_the_batch_window_waits_for_company_only_where_requests_come_together(monkeypatch):
    import asyncio

    from bertforge.serve.batcher import Batcher
    from bertforge.serve.metrics import Metrics

    waits, sleep = [], asyncio.sleep

    async def recording_sleep(seconds, *args, **kwargs):
        waits.append(seconds)
        return await sleep(seconds, *args, **kwargs)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    calls = []
    batcher = Batcher(lambda key, items: calls.append(len(items)) or items, 0.05, Metrics({}))

    async def scenario():
        for i in range(3):  # one client, one request at a time: none waits
            assert (await batcher.submit(("embed",), [i]))[0] == [i]
        assert waits == [] and calls == [1, 1, 1]
        got = await asyncio.gather(*(batcher.submit(("embed",), [i]) for i in range(8)))  # eight at once
        assert [g[0] for g in got] == [[i] for i in range(8)] and calls[3:] == [8] and waits == [0.05]
        for i in range(2):  # alone again: the first still waits (the last call merged eight), the next not
            assert (await batcher.submit(("embed",), [i]))[0] == [i]
        assert waits == [0.05, 0.05] and calls[4:] == [1, 1]
        await batcher.close()

    asyncio.run(scenario())


TAG_TEXTS = [
    "Carol flew to Oslo on Monday",
    "Dave flew to Rome on Monday",
    "Alice flew to Paris on Monday",
    "Bob flew to Berlin on Monday",
]


def burst(server: Server) -> list[httpx.Response]:
    """Four /v1/tag requests at once: each client connected first, then all sent past one barrier."""
    barrier = threading.Barrier(len(TAG_TEXTS))

    def send(text: str) -> httpx.Response:
        with server.client() as c:
            c.get("/health")  # the connection is open before the barrier
            barrier.wait()
            return c.post("/v1/tag", json={"texts": [text]})

    with ThreadPoolExecutor(len(TAG_TEXTS)) as pool:
        return list(pool.map(send, TAG_TEXTS))


def calls_and_requests(server: Server) -> list[float]:
    metrics = parse_metrics(httpx.get(f"{server.url}/metrics", timeout=60).text)
    return [metric(metrics, f"bertforge_batch_requests_{kind}", kind="predict") for kind in ("count", "sum")]


def burst_in_one_call(server: Server) -> list[httpx.Response]:
    """A burst that shares one model call. The batch window waits for company once requests have come
    together (a lone client's never wait), so the first burst may take two calls; after one in a single
    call, the server's next request waits out the window (1 s on the tag server)."""
    for _ in range(5):
        before = calls_and_requests(server)
        got = burst(server)
        if [a - b for a, b in zip(calls_and_requests(server), before, strict=True)] == [1, 4]:
            return got
    raise AssertionError("five bursts of four requests never shared one model call")


def test_tag_answers_like_the_offline_pipeline_and_batches_concurrent_requests(servers, models):
    want = Pipeline(None, models["tag"])(TAG_TEXTS)
    assert [(e["label"], e["text"]) for e in want[0]["entities"]] == [("PER", "Carol"), ("LOC", "Oslo")]
    with servers["tag"].client() as c:
        got = burst_in_one_call(servers["tag"])  # within the 1 s window
        assert [r.json()["predictions"][0] for r in got] == want
        words = c.post("/v1/tag", json={"tokens": [["Carol", "flew", "to", "Oslo"]]}).json()["predictions"]
        assert words == Pipeline(None, models["tag"])([["Carol", "flew", "to", "Oslo"]])
        assert error_of(c.post("/v1/tag", json={"texts": ["ok", "  "]}), 422) == "texts[1] is empty"
        assert error_of(c.post("/v1/tag", json={}), 422) == "give 'texts', or 'tokens' (lists of words)"
        assert error_of(c.post("/v1/classify", json={"texts": ["x"]}), 404) == (
            "this server's model is a tag model: /v1/classify is not available (it serves /v1/tag)"
        )


def test_qa_answers_one_or_many_questions_like_the_offline_pipeline(servers, models):
    squad = json.loads(fetch("squad-sample", quiet=True).read_text())
    paragraph = squad["data"][0]["paragraphs"][0]
    questions = [{"question": q["question"], "context": paragraph["context"]} for q in paragraph["qas"][:3]]
    want = Pipeline(None, models["qa"])(questions)
    with servers["qa"].client() as c:
        many = c.post("/v1/qa", json={"questions": questions})
        one = c.post("/v1/qa", json=questions[1])
        assert many.status_code == 200 and one.status_code == 200, (many.text, one.text)
        for got, w in zip(many.json()["answers"] + one.json()["answers"], want + want[1:2], strict=True):
            assert (got["answer"], got["start"], got["end"]) == (w["answer"], w["start"], w["end"])
            assert (
                got["answer"] == paragraph["context"][got["start"] : got["end"]]
                and abs(got["score"] - w["score"]) < 1e-5
            )
        assert error_of(c.post("/v1/qa", json={"questions": [{"question": "Who?", "context": " "}]}), 422) == (
            "questions[0].context is empty"
        )
        assert error_of(c.post("/v1/qa", json={"question": "Who?"}), 422).startswith("give 'questions'")
        assert error_of(
            c.post("/v1/qa", json={"questions": [{"question": "Who?", "context": "x", "file": "/etc/passwd"}]}), 422
        ) == ("unknown field 'questions[0].file'")
        assert error_of(c.post("/v1/embed", json={"texts": ["x"]}), 404) == (
            "this server's model is a qa model: /v1/embed is not available (it serves /v1/qa)"
        )


# -- start-up and shutdown ---------------------------------------------------------------------------------
def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    return proc.stderr.strip()


def test_start_up_errors_are_one_line_and_exit_2(servers, tmp_path):
    def serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(BERTFORGE), "serve", *args], capture_output=True, text=True, timeout=120, env=env)

    port = servers["minilm"].port
    assert (
        _one_line_error(serve("--model", "minilm-l6", "--port", str(port)))
        == f"bertforge: error: port {port} on 127.0.0.1 is in use"
    )
    assert _one_line_error(serve("--model", str(tmp_path / "none"), "--port", str(free_port()))).startswith(
        f"bertforge: error: {tmp_path / 'none'}: no such file or directory, and not a registry name"
    )
    (tmp_path / "empty").mkdir()
    assert _one_line_error(serve("--model", str(tmp_path / "empty"), "--port", str(free_port()))) == (
        f"bertforge: error: {tmp_path / 'empty'}: not a model directory (no config.json)"
    )
    assert _one_line_error(serve("--model", "minilm-l6", "--port", str(free_port()), "--api-key", " ")) == (
        "bertforge: error: the API key is empty (--api-key or BERTFORGE_API_KEY): give one, or leave both unset to "
        "serve without a key"
    )
    empty_variable = {**os.environ, "BERTFORGE_API_KEY": ""}  # a deploy whose secret went missing
    assert _one_line_error(serve("--model", "minilm-l6", "--port", str(free_port()), env=empty_variable)) == (
        "bertforge: error: the API key is empty (--api-key or BERTFORGE_API_KEY): give one, or leave both unset to "
        "serve without a key"
    )
    assert _one_line_error(serve("--model", "minilm-l6", "--port", str(free_port()), "--max-body-mb", "0")) == (
        "bertforge: error: --max-body-mb must be above 0, not 0.0"
    )
    assert _one_line_error(serve("--model", "minilm-l6", "--port", str(free_port()), "--max-texts", "0")) == (
        "bertforge: error: --max-texts must be at least 1, not 0"
    )
    assert _one_line_error(serve("--model", "minilm-l6", "--port", str(free_port()), "--runtime", "tpu")) == (
        "bertforge: error: unknown runtime 'tpu' (choose from torch, onnx)"
    )


def test_the_start_up_message_warns_of_a_server_open_to_the_network_without_a_key():
    assert access_line("127.0.0.1", None) is None and access_line("::1", None) is None
    assert access_line("0.0.0.0", None).startswith("bertforge: warning: no API key, and listening on 0.0.0.0")
    assert access_line("::", None).startswith("bertforge: warning: no API key")
    assert access_line("0.0.0.0", "k") == "bertforge: /v1/* and /metrics need 'Authorization: Bearer KEY'"


def test_the_app_factory_runs_in_process_at_int8(tmp_path):
    """create_app is usable without a server (FastAPI's TestClient), and --precision reaches the model."""
    from fastapi.testclient import TestClient

    from bertforge.serve import create_app

    with pytest.raises(BertforgeError, match="no such file or directory"):
        create_app(tmp_path / "missing")
    texts = ["int8 weights, fp32 activations", "a second text"]
    with TestClient(create_app("minilm-l6", precision="int8", batch_window_ms=0, max_body_bytes=1000)) as c:
        assert c.get("/health").json()["precision"] == "int8"
        got = np.array(c.post("/v1/embed", json={"texts": texts}).json()["embeddings"])
        assert error_of(c.post("/v1/embed", json={"texts": ["x" * 1000]}), 413) == "request body over 1,000 bytes"
    np.testing.assert_allclose(got, Embedder.from_pretrained("minilm-l6", precision="int8")(texts), atol=1e-5)


def test_sigterm_answers_requests_in_flight_then_exits_0(servers):
    """The tag server waits 1 s for company before a model call: a request sent just before SIGTERM is
    still waiting when the signal comes, and is answered before the server exits."""
    server = servers["tag"]
    burst_in_one_call(server)  # so that the next request waits out the window
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(
            r=httpx.post(f"{server.url}/v1/tag", json={"texts": ["Bob flew to Rome"]}, timeout=60)
        )
    )
    thread.start()
    time.sleep(0.4)
    server.proc.send_signal(signal.SIGTERM)
    thread.join(60)
    assert result["r"].status_code == 200 and result["r"].json()["predictions"][0]["tokens"] == [
        "Bob",
        "flew",
        "to",
        "Rome",
    ]
    assert server.proc.wait(timeout=60) == 0
    assert server.out.read_text().splitlines()[-1] == "bertforge: stopped"
    assert "Traceback" not in server.err.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health")


def test_a_second_sigint_stops_at_once_without_a_traceback(models, tmp_path):
    """Ctrl-C twice: the first waits for the request in flight, the second stops now (exit 128 + SIGINT)."""
    server = Server(models["tag"], tmp_path, "--batch-window-ms", "3000").wait()
    try:
        burst_in_one_call(server)  # the next request waits out the 3 s window

        def post() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server stops without answering it
                httpx.post(f"{server.url}/v1/tag", json={"texts": ["Bob flew"]}, timeout=60)

        thread = threading.Thread(target=post)
        thread.start()
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert server.proc.poll() is None  # still answering the request in flight
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=60) == 128 + signal.SIGINT
        thread.join(60)
    finally:
        server.stop()
    assert server.out.read_text().splitlines()[-1] == "bertforge: stopped without answering the requests in flight"
    assert "Traceback" not in server.err.read_text()
