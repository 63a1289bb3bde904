"""The server under overload and faults, end to end on loopback: a burst past the bounded queue gets only
200s and 429s (every 200 equal to the offline ``Embedder``), timeouts answer 503/504, a client that hangs
up has its queued work dropped without stalling others, SIGTERM mid-load answers what is in flight and
refuses the rest, SIGHUP swaps the model in without dropping a request; timing in headers and /metrics."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from test_app import Server, error_of, metric, parse_metrics

from bertforge import BertConfig, BertModel, Tokenizer, save_pretrained
from bertforge.assets import fetch
from bertforge.infer import Embedder

BURST = 50  # ten times what the burst server holds: 4 queued and 1 in the model call


@pytest.fixture(scope="module")
def offline() -> Embedder:
    return Embedder.from_pretrained("minilm-l6")


@pytest.fixture(scope="module")
def snippets(rotten_tomatoes) -> list[str]:
    return [r["text"] for r in rotten_tomatoes["test"][:200]]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """minilm-l6 three ways: a queue of 4 requests, a queue of 64 tokens, no window (for hang-ups)."""
    logs = tmp_path_factory.mktemp("overload-logs")
    started = {
        "requests": Server("minilm-l6", logs, "--max-queue", "4"),
        "tokens": Server("minilm-l6", logs, "--max-queue-tokens", "64"),
        "plain": Server("minilm-l6", logs, "--batch-window-ms", "0"),
    }
    try:
        yield {k: s.wait() for k, s in started.items()}
    finally:
        for s in started.values():
            s.stop()


def metrics_of(server: Server) -> dict:
    return parse_metrics(httpx.get(f"{server.url}/metrics", timeout=60).text)


def at_once(server: Server, bodies: list[dict], path: str = "/v1/embed") -> list[httpx.Response]:
    """Every body from a client of its own, each connected first, then all sent past one barrier. A
    transport error (a reset, a refused connection) is raised, not counted."""
    barrier = threading.Barrier(len(bodies))

    def send(body: dict) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            c.get("/health")
            barrier.wait()
            return c.post(path, json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


def check_burst(server: Server, offline: Embedder, snippets: list[str], why: str) -> dict[int, int]:
    bodies = [{"texts": snippets[2 * i : 2 * i + 2]} for i in range(BURST)]
    got = at_once(server, bodies)
    counts = {s: sum(r.status_code == s for r in got) for s in {r.status_code for r in got}}
    assert set(counts) == {200, 429}, counts
    want = offline(snippets[: 2 * BURST])
    for i, r in enumerate(got):
        if r.status_code == 200:
            np.testing.assert_allclose(np.array(r.json()["embeddings"]), want[2 * i : 2 * i + 2], atol=1e-5)
        else:
            assert error_of(r, 429).startswith(f"the server is at capacity ({why}")
            assert int(r.headers["retry-after"]) >= 1
    assert metric(metrics_of(server), "bertforge_rejected_total", reason="queue_full") >= counts[429]
    print(f"burst of {BURST} ({why}): {counts[200]} answered 200, {counts[429]} answered 429")
    return counts


def test_a_burst_of_ten_times_the_queue_gets_only_200s_and_429s(servers, offline, snippets):
    check_burst(servers["requests"], offline, snippets, "4 requests queued, --max-queue 4")
    # the queue drains: one at a time, every request is answered again
    with servers["requests"].client() as c:
        assert c.post("/v1/embed", json={"texts": ["after the burst"]}).status_code == 200


def test_the_token_budget_refuses_a_burst_the_same_way(servers, offline, snippets):
    counts = check_burst(servers["tokens"], offline, snippets, "")
    assert counts[429] >= 1
    with servers["tokens"].client() as c:  # alone, a request over the whole budget still runs
        r = c.post("/v1/embed", json={"texts": [" ".join(snippets[:20])]})
        assert r.status_code == 200 and int(r.headers["x-compute-tokens"]) > 64


def test_timing_is_in_the_headers_and_metrics(servers, offline):
    server = servers["plain"]
    before = metrics_of(server)
    texts = ["Where does the time go?", "Into the model, mostly."]
    with server.client() as c:
        r = c.post("/v1/embed", json={"texts": texts})
    assert r.status_code == 200
    tokens = sum(len(e.ids) for e in offline.tokenizer.encode_batch(texts, max_length=256))
    assert int(r.headers["x-compute-tokens"]) == tokens and r.headers["x-batch-requests"] == "1"
    parts = [float(r.headers[f"x-{k}-time"]) for k in ("queue", "tokenization", "inference")]
    assert all(p >= 0 for p in parts) and sum(parts) <= float(r.headers["x-total-time"])
    after = metrics_of(server)
    assert (
        metric(after, "bertforge_tokens_total", kind="embed") - metric(before, "bertforge_tokens_total", kind="embed")
        == tokens
    )
    for name in ("queue", "tokenization", "inference"):
        count = f"bertforge_{name}_duration_seconds_count"
        assert metric(after, count, kind="embed") == metric(before, count, kind="embed") + 1


def send_and_hang_up(server: Server, body: dict) -> None:
    """A raw HTTP request, then the socket closed without reading the answer."""
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(
            b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )


def wait_for(what: str, check, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def busy(server: Server) -> bool:
    return metric(metrics_of(server), "bertforge_model_busy") == 1


def test_a_client_that_hangs_up_has_its_queued_work_dropped_and_stalls_nobody(servers, offline, snippets):
    """While one long model call runs, 20 clients send and hang up; their work leaves the queue (the
    model never computes it), and the next client is answered as usual."""
    server = servers["plain"]
    before = metrics_of(server)
    big = [" ".join(snippets[i : i + 6]) for i in range(64)]
    with ThreadPoolExecutor(1) as pool:
        long_call = pool.submit(lambda: httpx.post(f"{server.url}/v1/embed", json={"texts": big}, timeout=600))
        wait_for("the long call to start", lambda: busy(server))
        for i in range(20):
            send_and_hang_up(server, {"texts": [snippets[i], snippets[i + 1]]})
        wait_for(
            "20 hang-ups noticed",
            lambda: (
                metric(metrics_of(server), "bertforge_rejected_total", reason="disconnected")
                - metric(before, "bertforge_rejected_total", reason="disconnected")
                == 20
            ),
        )
        assert busy(server), "the long call ended before the hang-ups were seen: make it longer"
        with server.client() as c:
            r = c.post("/v1/embed", json={"texts": ["the next client"]})
        assert r.status_code == 200
        np.testing.assert_allclose(np.array(r.json()["embeddings"]), offline(["the next client"]), atol=1e-5)
        assert long_call.result().status_code == 200
    after = metrics_of(server)
    computed = metric(after, "bertforge_batch_size_sum", kind="embed") - metric(
        before, "bertforge_batch_size_sum", kind="embed"
    )
    assert computed == 64 + 1  # the long call's texts and the next client's: none of the 40 dropped


def test_request_timeout_answers_504_in_a_call_and_503_in_the_queue(tmp_path, snippets):
    """A long model call runs past --request-timeout (504); a request queued behind it never starts (503)."""
    server = Server("minilm-l6", tmp_path, "--request-timeout", "0.05", "--batch-window-ms", "0").wait()
    try:
        big = [" ".join(snippets[i : i + 6]) for i in range(64)]
        with server.client() as c:
            assert error_of(c.post("/v1/embed", json={"texts": big}), 504) == (
                "no answer within 0.05 s (--request-timeout): in the model call"
            )
            assert busy(server), "the long call ended within the timeout: make it longer"
            # another kind of call (it cannot join the one under way): it waits in the queue
            assert error_of(c.post("/v1/summarize", json={"documents": ["One. Two. Three."]}), 503) == (
                "no answer within 0.05 s (--request-timeout): waiting for the model"
            )
        wait_for("the long call to end", lambda: not busy(server))
        samples = metrics_of(server)
        assert metric(samples, "bertforge_rejected_total", reason="timeout_running") == 1
        assert metric(samples, "bertforge_rejected_total", reason="timeout_queued") == 1
        assert metric(samples, "bertforge_batch_size_count", kind="summarize") == 0  # dropped, never computed
        assert httpx.get(f"{server.url}/health").status_code == 200
    finally:
        assert server.stop() == 0


def merged_burst(server: Server, texts: list[str]) -> None:
    """Bursts until one shares a model call, so that the server's next request waits out its window."""
    for _ in range(5):
        before = metric(metrics_of(server), "bertforge_batch_requests_sum", kind="embed")
        calls = metric(metrics_of(server), "bertforge_batch_requests_count", kind="embed")
        at_once(server, [{"texts": [t]} for t in texts])
        samples = metrics_of(server)
        if metric(samples, "bertforge_batch_requests_count", kind="embed") == calls + 1 and metric(
            samples, "bertforge_batch_requests_sum", kind="embed"
        ) == before + len(texts):
            return
    raise AssertionError("five bursts never shared one model call")


def test_sigterm_mid_load_answers_what_is_in_flight_and_refuses_new_requests(tmp_path, offline, snippets):
    """Eight requests wait out a 2 s batch window while four clients keep sending; SIGTERM comes. Every
    answer is a 200 equal to offline; a new connection is refused while the eight finish; exit 0."""
    server = Server("minilm-l6", tmp_path, "--batch-window-ms", "2000").wait()
    want = dict(zip(snippets[:40], offline(snippets[:40]), strict=True))
    merged_burst(server, snippets[:4])
    stop, signalled, failures, answers = threading.Event(), threading.Event(), [], []

    def keep_sending(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            for i in range(1000):
                text = snippets[(8 + k * 8 + i) % 40]
                try:
                    r = c.post("/v1/embed", json={"texts": [text]})
                except httpx.TransportError as e:
                    if not signalled.is_set():
                        failures.append(f"before SIGTERM: {e!r}")
                    return
                answers.append((text, r))
                if stop.is_set():
                    return

    with ThreadPoolExecutor(13) as pool:
        loaders = [pool.submit(keep_sending, k) for k in range(4)]
        wait_for("load", lambda: len(answers) >= 8)
        in_flight = [
            pool.submit(httpx.post, f"{server.url}/v1/embed", json={"texts": [t]}, timeout=120) for t in snippets[:8]
        ]
        time.sleep(0.5)  # they are waiting out the window now
        signalled.set()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health", timeout=5)
        stop.set()
        for r, text in zip([f.result() for f in in_flight], snippets[:8], strict=True):
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(np.array(r.json()["embeddings"][0]), want[text], atol=1e-5)
        for f in loaders:
            f.result()
    assert not failures, failures
    for text, r in answers:
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["embeddings"][0]), want[text], atol=1e-5)
    assert server.proc.wait(timeout=60) == 0
    assert "Traceback" not in server.err.read_text()


def tiny_encoder(path: Path, seed: int) -> Path:
    tok = Tokenizer.from_pretrained(fetch("minilm-l6"))
    torch.manual_seed(seed)
    config = BertConfig.preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=128)
    return save_pretrained(BertModel(config), path, tokenizer=tok)


def test_sighup_reloads_the_model_without_dropping_a_request(tmp_path, snippets):
    """Under load, the directory's weights change and SIGHUP comes: every answer is a 200 from the old
    model or the new, and every request sent after the reload is the new model's. A broken directory
    on a second SIGHUP leaves the new model serving."""
    model = tiny_encoder(tmp_path / "model", seed=0)
    texts = snippets[:16]
    old = Embedder.from_pretrained(model)(texts)
    server = Server(model, tmp_path, "--batch-window-ms", "0").wait()
    reloaded, answers, stop = threading.Event(), [], threading.Event()

    def keep_sending(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            i = k
            while not stop.is_set():
                after = reloaded.is_set()
                r = c.post("/v1/embed", json={"texts": [texts[i % 16]]})
                answers.append((i % 16, after, r))
                i += 1

    try:
        with ThreadPoolExecutor(4) as pool:
            loaders = [pool.submit(keep_sending, k) for k in range(4)]
            wait_for("load", lambda: len(answers) >= 20)
            tiny_encoder(tmp_path / "model", seed=1)
            new = Embedder.from_pretrained(model)(texts)
            server.proc.send_signal(signal.SIGHUP)
            wait_for("the reload", lambda: "bertforge: reloaded the model" in server.out.read_text())
            reloaded.set()
            count = len(answers)
            wait_for("load after the reload", lambda: len(answers) >= count + 20)
            (model / "config.json").write_text("{not json")
            server.proc.send_signal(signal.SIGHUP)
            wait_for("the failed reload", lambda: "bertforge: reload failed" in server.out.read_text())
            count = len(answers)
            wait_for("load after the failed reload", lambda: len(answers) >= count + 20)
            stop.set()
            for f in loaders:
                f.result()
    finally:
        assert server.stop() == 0
    kinds = []
    for i, after, r in answers:
        assert r.status_code == 200, r.text
        got = np.array(r.json()["embeddings"][0])
        is_old, is_new = np.allclose(got, old[i], atol=1e-5), np.allclose(got, new[i], atol=1e-5)
        assert is_old or is_new
        assert is_new or not after
        kinds.append("new" if is_new else "old")
    assert "old" in kinds and kinds[-1] == "new"
