"""The HTTP server: an app factory (``create_app``) and the ``bertforge serve`` command (``serve``).

One model is loaded at start-up and never changes; the endpoints are the ones its task supports:

  encoder (e.g. minilm-l6)     /v1/embed, /v1/similarity, /v1/summarize (training-free centroid)
  classify, pair, regress      /v1/classify
  tag                          /v1/tag
  qa                           /v1/qa
  extsum                       /v1/summarize

Concurrent requests are micro-batched. A request's inputs become a job on a queue; one worker takes
the jobs of the same kind that arrived together (waiting ``batch_window_ms`` for company when it was
idle), runs them as one call to the inference path, which sorts by length and batches under
``max_batch_tokens``, and hands each request its slice of the results. Only that worker runs the
model, in one thread, so two model calls never overlap, and throughput grows with load.

Every error answer is ``{"error": "one line"}``: 401 (API key), 404 (an endpoint the model does not
serve), 413 (too many texts, too long a text, too big a body), 422 (malformed or invalid request).
No request field is ever used as a file name: the model is fixed when the server starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import os
import signal
import socket
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from swagger_ui_bundle import swagger_ui_path

from .errors import BertforgeError

log = logging.getLogger("bertforge.serve")

DEFAULT_MAX_TEXTS = 256
DEFAULT_MAX_CHARS = 20_000
DEFAULT_MAX_BODY_BYTES = 4 * 2**20
DEFAULT_BATCH_WINDOW_MS = 5.0  # long enough for concurrent requests to meet, short next to a model call
MAX_CALL_ITEMS = 1024  # inputs in one model call: merging more only makes the first request wait longer
DRAIN_BYTES = 64 * 2**20  # an over-size body is read (and dropped) up to this, so the client sees the 413

ENDPOINTS = ("embed", "similarity", "classify", "tag", "qa", "summarize")
SERVES: dict[str | None, tuple[str, ...]] = {
    None: ("embed", "similarity", "summarize"),
    "classify": ("classify",),
    "pair": ("classify",),
    "regress": ("classify",),
    "tag": ("tag",),
    "qa": ("qa",),
    "extsum": ("summarize",),
}
# /docs is Swagger UI with its script, style and icon served from here (read once from the swagger-ui-bundle
# package, by fixed names: no request names a file), so the page works without internet; FastAPI's default
# loads them from a CDN. There is no /redoc: ReDoc's script would come from a CDN, a blank page offline.
DOCS_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}
OPEN_PATHS = frozenset({"/health", "/docs", *(f"/docs/{f}" for f in DOCS_FILES), "/openapi.json"})  # no API key needed
KNOWN_PATHS = frozenset({*(f"/v1/{e}" for e in ENDPOINTS), "/metrics", *OPEN_PATHS})


# -- request and response bodies: they validate requests and are the OpenAPI docs ------------------------
class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["A gripping film.", "Dull."]}]})
    texts: list[str] = Field(min_length=1, description="Texts to embed (at most --max-texts).")


class EmbedResponse(BaseModel):
    embeddings: list[list[float]] = Field(description="One vector per text, in order, normalised as the checkpoint says.")


class SimilarityRequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"pairs": [["A cat sits on the mat.", "A cat is on a mat."]]},
                                        {"a": ["A cat sits on the mat."], "b": ["The stock market fell."]}]},
    )
    pairs: list[tuple[str, str]] | None = Field(None, min_length=1, description="[text, text] pairs.")
    a: list[str] | None = Field(None, min_length=1, description="First texts (with b, as long).")
    b: list[str] | None = Field(None, min_length=1, description="Second texts.")


class SimilarityResponse(BaseModel):
    scores: list[float] = Field(description="Cosine similarity of each pair.")


class ClassifyRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["A gripping film."]}]})
    texts: list[str] | None = Field(None, min_length=1, description="Texts (single-text models).")
    pairs: list[tuple[str, str]] | None = Field(None, min_length=1, description="[text, text pair] (pair models).")


class ClassPrediction(BaseModel):
    label: str | None = Field(None, description="classify, pair: the predicted label.")
    labels: list[str] | None = Field(None, description="multi-label classify: the labels over the threshold.")
    score: float | None = Field(None, description="The label's probability; regress: the predicted number.")
    probabilities: dict[str, float] | None = Field(None, description="Every label's probability.")


class ClassifyResponse(BaseModel):
    predictions: list[ClassPrediction]


class TagRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["Carol flew to Oslo on Monday."]}]})
    texts: list[str] | None = Field(None, min_length=1, description="Raw texts; entities come with character offsets.")
    tokens: list[list[str]] | None = Field(None, min_length=1, description="Pre-split words; entities with word offsets.")


class Entity(BaseModel):
    label: str
    start: int
    end: int
    text: str


class TagPrediction(BaseModel):
    tokens: list[str]
    tags: list[str]
    entities: list[Entity]


class TagResponse(BaseModel):
    predictions: list[TagPrediction]


class Question(_Request):
    question: str
    context: str


class QARequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"question": "Who flew?", "context": "Carol flew to Oslo."},
                                        {"questions": [{"question": "Where to?", "context": "Carol flew to Oslo."}]}]},
    )
    questions: list[Question] | None = Field(None, min_length=1, description="Questions, each with its context.")
    question: str | None = Field(None, description="One question (with context), instead of questions.")
    context: str | None = None


class Answer(BaseModel):
    answer: str = Field(description='The answer span ("" when the model says there is none).')
    score: float
    start: int = Field(description="Character offsets of the answer in the context.")
    end: int


class QAResponse(BaseModel):
    answers: list[Answer]


class Sentences(_Request):
    sentences: list[str] = Field(description="A document already split into sentences.")


# a text or {"sentences": [...]}, told apart by type, so that an error names only the form that was meant
# (the tags are left out of error messages: see _validation_message)
Document = Annotated[
    Annotated[str, Tag("<text>")] | Annotated[Sentences, Tag("<sentences>")],
    Discriminator(lambda v: "<sentences>" if isinstance(v, (dict, Sentences)) else "<text>"),
]


class SummarizeRequest(_Request):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"documents": ["First sentence. Second one! A third?"]}]},
    )
    documents: list[Document] = Field(min_length=1, description="Texts (split into sentences here) or {sentences}.")


class Summary(BaseModel):
    summary: str
    selected: list[int] = Field(description="Indices of the chosen sentences, in document order.")
    scores: list[float] | None = Field(None, description="Each sentence's score.")


class SummarizeResponse(BaseModel):
    summaries: list[Summary]


class Health(BaseModel):
    status: str
    model: str
    task: str
    endpoints: list[str]
    precision: str
    runtime: str
    uptime_s: float


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong, in one line.")


def _errors(*codes: int) -> dict[int, dict]:
    what = {401: "Missing or wrong API key", 404: "Not served by this model", 413: "Too many texts, too long a text, too big a body",
            422: "Malformed or invalid request"}
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}


# -- metrics (Prometheus text format) ---------------------------------------------------------------------
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels) + "}" if labels else ""


class Histogram:
    def __init__(self, name: str, help: str, buckets: Sequence[float]):
        self.name, self.help, self.buckets = name, help, tuple(buckets)
        self.series: dict[tuple, list] = {}  # labels -> [bucket counts..., sum, count]

    def observe(self, value: float, **labels: str) -> None:
        s = self.series.setdefault(tuple(labels.items()), [0] * len(self.buckets) + [0.0, 0])
        for i, b in enumerate(self.buckets):
            if value <= b:
                s[i] += 1
        s[-2] += value
        s[-1] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, s in sorted(self.series.items()):
            for b, n in zip(self.buckets, s, strict=False):
                lines.append(f"{self.name}_bucket{_labels((*labels, ('le', f'{b:g}')))} {n}")
            lines.append(f"{self.name}_bucket{_labels((*labels, ('le', '+Inf')))} {s[-1]}")
            lines.append(f"{self.name}_sum{_labels(labels)} {s[-2]:.6f}")
            lines.append(f"{self.name}_count{_labels(labels)} {s[-1]}")
        return lines


class Metrics:
    """Counters, gauges and histograms, updated on the event loop's thread only (so no locks)."""

    def __init__(self, info: dict[str, str]):
        self.info = info
        self.started = time.monotonic()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.errors: dict[tuple[str, str], int] = defaultdict(int)
        self.model_errors = 0
        self.in_flight = 0
        self.queue_depth: Callable[[], int] = lambda: 0
        self.latency = Histogram("bertforge_request_duration_seconds", "Time from request to response.", LATENCY_BUCKETS)
        self.batch_size = Histogram("bertforge_batch_size", "Inputs (texts, pairs' texts, documents, questions) per model call.", BATCH_BUCKETS)
        self.batch_requests = Histogram("bertforge_batch_requests", "Requests merged into one model call.", BATCH_BUCKETS)

    def request(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in KNOWN_PATHS else "other"
        self.requests[endpoint, str(status)] += 1
        if status >= 400:
            self.errors[endpoint, str(status)] += 1
        self.latency.observe(seconds, endpoint=endpoint)

    def render(self) -> str:
        lines = [
            "# HELP bertforge_info The model served.", "# TYPE bertforge_info gauge",
            f"bertforge_info{_labels(tuple(self.info.items()))} 1",
            "# HELP bertforge_uptime_seconds Seconds since the server started.", "# TYPE bertforge_uptime_seconds gauge",
            f"bertforge_uptime_seconds {time.monotonic() - self.started:.3f}",
            "# HELP bertforge_requests_total Requests answered, by endpoint and status.", "# TYPE bertforge_requests_total counter",
            *(f"bertforge_requests_total{_labels((('endpoint', e), ('status', s)))} {n}" for (e, s), n in sorted(self.requests.items())),
            "# HELP bertforge_errors_total Requests answered with an error (status >= 400).", "# TYPE bertforge_errors_total counter",
            *(f"bertforge_errors_total{_labels((('endpoint', e), ('status', s)))} {n}" for (e, s), n in sorted(self.errors.items())),
            "# HELP bertforge_model_errors_total Model calls that raised.", "# TYPE bertforge_model_errors_total counter",
            f"bertforge_model_errors_total {self.model_errors}",
            "# HELP bertforge_queue_depth Requests waiting for the model.", "# TYPE bertforge_queue_depth gauge",
            f"bertforge_queue_depth {self.queue_depth()}",
            "# HELP bertforge_requests_in_flight Requests being answered.", "# TYPE bertforge_requests_in_flight gauge",
            f"bertforge_requests_in_flight {self.in_flight}",
            *self.latency.render(), *self.batch_size.render(), *self.batch_requests.render(),
        ]
        return "\n".join(lines) + "\n"


# -- micro-batching -----------------------------------------------------------------------------------------
@dataclass
class _Job:
    key: tuple  # jobs with equal keys can share a model call
    items: list
    future: asyncio.Future


class Batcher:
    """One worker that runs ``run(key, items) -> results`` (a sequence as long as items) in one thread,
    merging queued jobs of the same key into one call and giving each job its slice of the results."""

    def __init__(self, run: Callable[[tuple, list], Sequence], window_s: float, metrics: Metrics, max_items: int = MAX_CALL_ITEMS):
        self.run, self.window_s, self.metrics, self.max_items = run, window_s, metrics, max_items
        self.queue: deque[_Job] = deque()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertforge-model")
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._merged = 1  # requests in the last model call

    def depth(self) -> int:
        return len(self.queue)

    async def submit(self, key: tuple, items: list) -> Sequence:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():  # started on first use: works under any ASGI host
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._work())
        job = _Job(key, items, loop.create_future())
        self.queue.append(job)
        self._wake.set()
        return await job.future

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # The worker was idle: give concurrent requests a moment to join, where there are any (several
            # queued now, or merged last time). A lone client's requests wait at most once, after a burst:
            # waiting on every one cost a lone client 5 ms of its 18 (fp32 minilm-l6, one text), 55
            # instead of 73 requests/s.
            if self.queue and self.window_s > 0 and (len(self.queue) > 1 or self._merged > 1):
                await asyncio.sleep(self.window_s)
            while self.queue:  # while busy, requests queue up by themselves: no more waiting
                await self._call(self._take())

    def _take(self) -> list[_Job]:
        first = self.queue.popleft()
        jobs, n, rest = [first], len(first.items), deque()
        while self.queue:
            job = self.queue.popleft()
            if job.key == first.key and n + len(job.items) <= self.max_items:
                jobs.append(job)
                n += len(job.items)
            else:
                rest.append(job)
        self.queue = rest
        return jobs

    async def _call(self, jobs: list[_Job]) -> None:
        items = [x for j in jobs for x in j.items]
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, jobs[0].key, items)
        except Exception as e:
            if len(jobs) > 1:  # find the request at fault: the others still get their answers
                for j in jobs:
                    await self._call([j])
                return
            self.metrics.model_errors += 1
            if not jobs[0].future.done():
                jobs[0].future.set_exception(e)
            return
        self._merged = len(jobs)
        self.metrics.batch_size.observe(len(items), kind=jobs[0].key[0])
        self.metrics.batch_requests.observe(len(jobs), kind=jobs[0].key[0])
        at = 0
        for j in jobs:
            if not j.future.done():
                j.future.set_result(results[at : at + len(j.items)])
            at += len(j.items)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self.executor.shutdown(wait=True)


# -- the model behind the endpoints ---------------------------------------------------------------------------
class _Budgeted:
    """An Embedder whose calls batch under the server's token budget (for summarize_untrained)."""

    def __init__(self, embedder, max_tokens: int | None):
        self.embedder, self.max_tokens = embedder, max_tokens

    def __call__(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self.embedder(texts, max_tokens=self.max_tokens, **kwargs)


class ServedModel:
    """The loaded model and what it serves; ``run`` is the one function the batcher's thread calls."""

    def __init__(self, model: str | Path, device: str | None, precision: str, runtime: str, max_batch_tokens: int | None,
                 compile: bool = False):
        from .api import Pipeline, model_task
        from .tasks import TASKS

        task = model_task(model)
        self.task = task if task in TASKS else None  # anything without a task head serves as an encoder
        self.max_batch_tokens = max_batch_tokens
        # an encoder summarises without training; its Embedder also answers embed and similarity
        self.pipe = Pipeline("summarize" if self.task is None else None, model, device, precision, runtime, compile)
        self.embedder = self.pipe.embedder
        if self.embedder is None:
            self.pipe.task.max_tokens = max_batch_tokens
        net = self.embedder.model if self.embedder is not None else self.pipe.model
        self.precision = getattr(net, "precision", precision)  # resolved: "auto" is reported as what it chose
        self.endpoints = SERVES[self.task]

    @property
    def kind(self) -> str:
        return "an encoder" if self.task is None else f"{'an' if self.task[0] in 'aeiou' else 'a'} {self.task} model"

    def run(self, key: tuple, items: list) -> Sequence:
        if key[0] == "embed":
            return self.embedder(items, normalize=key[1], max_tokens=self.max_batch_tokens)
        if key[0] == "summarize" and self.embedder is not None:
            from .tasks.extsum import summarize_untrained

            return summarize_untrained(_Budgeted(self.embedder, self.max_batch_tokens), items, **self.pipe.untrained)
        return self.pipe.predict(items)


# -- authentication and body size, in front of everything --------------------------------------------------------
class _Gate:
    """ASGI middleware: times every request for /metrics, checks the API key, and reads the body
    (refusing one over the limit) before the app parses it."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, metrics: Metrics):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            if self.key is not None and scope["path"] not in OPEN_PATHS:
                given = dict(scope["headers"]).get(b"authorization", b"")
                scheme, _, token = given.strip().partition(b" ")
                if not (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)):
                    await _drain(receive)
                    msg = "missing API key: send 'Authorization: Bearer KEY'" if not given else "wrong API key"
                    return await _refuse(receive, send_status, 401, msg, [(b"www-authenticate", b"Bearer")])
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_body(scope, receive)
                if body is None:
                    return await _refuse(receive, send_status, 413, f"request body over {self.max_body_bytes:,} bytes")
                receive = _replay(body, receive)
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.request(scope["path"], status, time.perf_counter() - start)

    async def _read_body(self, scope, receive) -> bytes | None:
        """The whole body, or None when it is over the limit (then read up to DRAIN_BYTES and dropped)."""
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes + DRAIN_BYTES:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_body_bytes:
                chunks.append(chunk)
            elif size > self.max_body_bytes + DRAIN_BYTES:
                return None
            if not message.get("more_body", False):
                return b"".join(chunks) if size <= self.max_body_bytes else None


async def _drain(receive) -> None:
    """Read (and drop) a refused request's body, up to DRAIN_BYTES, so that the client reads the answer."""
    size = 0
    while size <= DRAIN_BYTES:
        message = await receive()
        size += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(receive, send, status: int, message: str, headers: list | None = None) -> None:
    content = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": content})


def _validation_message(errors: Sequence[dict]) -> str:
    """Pydantic's first complaint as one line: ``texts[3]: Input should be a valid string``."""
    e = errors[0]
    where = ""
    for part in [p for p in e.get("loc", ()) if p != "body" and not str(p).startswith("<")]:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    kind = e.get("type")
    if kind == "json_invalid":
        return f"malformed JSON: {e.get('ctx', {}).get('error', e.get('msg'))}"
    if kind == "missing" and not where:
        return "no request body: send a JSON object"
    if kind == "extra_forbidden":
        return f"unknown field {where!r}"
    if not where and kind in ("model_attributes_type", "dict_type", "model_type"):
        return "the body must be a JSON object, sent with Content-Type: application/json"
    if kind == "too_short" and where:
        return f"{where} is empty"
    msg = str(e.get("msg", "invalid request")).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


# -- the app ---------------------------------------------------------------------------------------------
def create_app(
    model: str | Path,
    precision: str = "fp32",
    runtime: str = "torch",
    device: str | None = None,
    max_batch_tokens: int | None = None,
    api_key: str | None = None,
    max_texts: int = DEFAULT_MAX_TEXTS,
    max_chars: int = DEFAULT_MAX_CHARS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS,
    compile: bool = False,
) -> FastAPI:
    """A FastAPI app serving ``model`` (a directory or registry name), loaded now: a missing model or
    a bad setting raises BertforgeError here, not at the first request."""
    if api_key is not None and not api_key.strip():
        raise BertforgeError("the API key is empty (--api-key or BERTFORGE_API_KEY): give one, or leave both unset to serve without a key")
    for name, value, least in (("--max-batch-tokens", max_batch_tokens, 1), ("--max-texts", max_texts, 1),
                               ("--max-chars", max_chars, 1), ("max_body_bytes", max_body_bytes, 1),
                               ("--batch-window-ms", batch_window_ms, 0)):
        if value is not None and value < least:
            raise BertforgeError(f"{name} must be at least {least}, not {value}")
    served = ServedModel(model, device, precision, runtime, max_batch_tokens, compile)
    name = str(model) if not Path(model).exists() else Path(model).resolve().name  # not the full path: /health is public
    metrics = Metrics({"model": name, "task": served.task or "encoder", "precision": served.precision, "runtime": runtime})
    batcher = Batcher(served.run, batch_window_ms / 1000, metrics)
    metrics.queue_depth = batcher.depth

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await batcher.close()

    app = FastAPI(
        title="bertforge",
        version=_version(),
        description=f"Serving **{name}** ({served.kind}). Errors are `{{\"error\": \"...\"}}`.",
        lifespan=lifespan,
        docs_url=None,  # see _local_docs
        redoc_url=None,  # see DOCS_FILES
    )
    _local_docs(app)
    app.add_middleware(_Gate, api_key=api_key, max_body_bytes=max_body_bytes, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {(404, "Not Found"): f"no such endpoint: {request.url.path}",
                   # what FastAPI answers for a body it cannot decode (JSON's own errors are 422s)
                   (400, "There was an error parsing the body"): "the body is not UTF-8 text: send JSON in UTF-8"}.get(
            (exc.status_code, exc.detail), exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s failed", request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    # -- checks shared by the endpoints --
    def check_count(n: int, field: str) -> None:
        if n > max_texts:
            raise _error(413, f"{n} {field} in one request; this server takes at most {max_texts} (--max-texts)")

    def check_chars(named: Iterable[tuple[str, str]]) -> None:
        """Every text: not empty (or only spaces), within --max-chars, valid Unicode."""
        for where, text in named:
            if len(text) > max_chars:
                raise _error(413, f"{where} has {len(text):,} characters; this server takes at most {max_chars:,} (--max-chars)")
            if not text.strip():
                raise _error(422, f"{where} is empty")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise _error(422, f"{where} is not valid Unicode (it holds a lone surrogate)") from None

    def check_texts(texts: Sequence[str], field: str) -> None:
        check_count(len(texts), field)
        check_chars((f"{field}[{i}]", t) for i, t in enumerate(texts))

    async def predict(key: tuple, items: list) -> Sequence:
        try:
            return await batcher.submit(key, items)
        except BertforgeError as e:
            raise _error(422, str(e)) from None
        except Exception:
            log.exception("a model call failed")
            raise _error(500, "internal error: the model call failed (see the server's log)") from None

    def examples(inputs: list, field: str) -> list:
        out = []
        for i, x in enumerate(inputs):
            try:
                out.extend(served.pipe.examples([x]))
            except BertforgeError as e:
                raise _error(422, f"{field}[{i}]: {e}") from None
        return out

    # -- the endpoints --
    async def embed(body: EmbedRequest) -> JSONResponse:
        """Sentence embeddings, pooled and normalised as the checkpoint says."""
        check_texts(body.texts, "texts")
        vectors = await predict(("embed", served.embedder.settings.normalize), body.texts)
        return JSONResponse({"embeddings": vectors.tolist()})

    async def similarity(body: SimilarityRequest) -> JSONResponse:
        """Cosine similarity of each pair: ``pairs`` or ``a`` and ``b``."""
        if (body.pairs is None) == (body.a is None and body.b is None):
            raise _error(422, "give 'pairs', or 'a' and 'b'")
        if body.pairs is not None:
            a, b = [p[0] for p in body.pairs], [p[1] for p in body.pairs]
        else:
            if body.a is None or body.b is None:
                raise _error(422, f"{'b' if body.b is None else 'a'} is missing: give 'a' and 'b' (as many texts each)")
            if len(body.a) != len(body.b):
                raise _error(422, f"'a' has {len(body.a)} texts but 'b' has {len(body.b)}: give as many")
            a, b = body.a, body.b
        if body.pairs is not None:
            check_count(len(body.pairs), "pairs")
            check_chars((f"pairs[{i}][{j}]", t) for i, p in enumerate(body.pairs) for j, t in enumerate(p))
        else:
            check_count(len(a), "pairs")
            check_chars([*((f"a[{i}]", t) for i, t in enumerate(a)), *((f"b[{i}]", t) for i, t in enumerate(b))])
        v = await predict(("embed", True), [*a, *b])
        return JSONResponse({"scores": (v[: len(a)] * v[len(a) :]).sum(axis=1).tolist()})

    async def classify(body: ClassifyRequest) -> JSONResponse:
        """Labels and probabilities (classify, pair), or a number (regress)."""
        is_pair = served.pipe.task.is_pair
        if (body.texts is None) == (body.pairs is None):
            raise _error(422, f"give {'pairs' if is_pair else 'texts'}")
        if is_pair and body.pairs is None:
            raise _error(422, "this server's model reads text pairs: send 'pairs' ([[text, text_pair], ...])")
        if not is_pair and body.texts is None:
            raise _error(422, "this server's model reads single texts: send 'texts'")
        if body.pairs is not None:
            check_count(len(body.pairs), "pairs")
            check_chars((f"pairs[{i}][{j}]", t) for i, p in enumerate(body.pairs) for j, t in enumerate(p))
            inputs = [tuple(p) for p in body.pairs]
        else:
            check_texts(body.texts, "texts")
            inputs = body.texts
        preds = await predict(("predict",), examples(inputs, "pairs" if body.pairs is not None else "texts"))
        return JSONResponse({"predictions": list(preds)})

    async def tag(body: TagRequest) -> JSONResponse:
        """Tags per word and the entities they make (character offsets for texts, word offsets for tokens)."""
        if (body.texts is None) == (body.tokens is None):
            raise _error(422, "give 'texts', or 'tokens' (lists of words)")
        if body.texts is not None:
            check_texts(body.texts, "texts")
            field, inputs = "texts", body.texts
        else:
            check_texts([" ".join(ws) for ws in body.tokens], "tokens")
            field, inputs = "tokens", body.tokens
        preds = await predict(("predict",), examples(inputs, field))
        return JSONResponse({"predictions": list(preds)})

    async def qa(body: QARequest) -> JSONResponse:
        """Answers: spans of each context (``questions``, or one ``question`` and ``context``)."""
        if body.questions is not None:
            if body.question is not None or body.context is not None:
                raise _error(422, "give 'questions', or one 'question' and 'context', not both")
            questions, field = body.questions, "questions"
        elif body.question is not None and body.context is not None:
            questions, field = [Question(question=body.question, context=body.context)], ""
        else:
            raise _error(422, "give 'questions' ([{question, context}, ...]), or 'question' and 'context'")
        check_count(len(questions), "questions")
        check_chars((f"{field}[{i}].{k}" if field else k, getattr(q, k)) for i, q in enumerate(questions) for k in ("question", "context"))
        preds = await predict(("predict",), examples([q.model_dump() for q in questions], field or "questions"))
        return JSONResponse({"answers": list(preds)})

    async def summarize(body: SummarizeRequest) -> JSONResponse:
        """Extractive summaries: the sentences chosen from each document."""
        from .tasks.extsum import document_from

        texts = [d if isinstance(d, str) else " ".join(d.sentences) for d in body.documents]
        check_texts(texts, "documents")
        column = "text" if served.task is None else served.pipe.task.spec.text_column
        docs = []
        for i, d in enumerate(body.documents):
            fields = {column: d} if isinstance(d, str) else {"sentences": d.sentences}
            try:
                docs.append(document_from(fields, 0, f"documents[{i}]", column))
            except BertforgeError as e:
                raise _error(422, str(e)) from None
        preds = await predict(("summarize",), docs)
        return JSONResponse({"summaries": list(preds)})

    auth = (401,) if api_key else ()
    handlers = {"embed": (embed, EmbedResponse), "similarity": (similarity, SimilarityResponse),
                "classify": (classify, ClassifyResponse), "tag": (tag, TagResponse), "qa": (qa, QAResponse),
                "summarize": (summarize, SummarizeResponse)}
    for endpoint in ENDPOINTS:
        path = f"/v1/{endpoint}"
        handler, response = handlers[endpoint]
        if endpoint in served.endpoints:
            app.post(path, response_model=response, responses=_errors(*auth, 413, 422))(handler)
        else:
            app.post(path, include_in_schema=False)(_unavailable(served, path))

    @app.get("/health", response_model=Health)
    async def health() -> JSONResponse:
        """The model served and how: for load balancers and people (no API key needed)."""
        return JSONResponse({
            "status": "ok", "model": name, "task": served.task or "encoder",
            "endpoints": [f"/v1/{e}" for e in served.endpoints], "precision": served.precision, "runtime": runtime,
            "uptime_s": round(time.monotonic() - metrics.started, 3),
        })

    @app.get("/metrics", response_class=PlainTextResponse, responses=_errors(*auth))
    async def prometheus() -> PlainTextResponse:
        """Request counts, errors, latency and batch-size histograms, queue depth (Prometheus text format)."""
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if api_key:
        _document_bearer(app)
    return app


def _unavailable(served: ServedModel, path: str):
    async def unavailable() -> JSONResponse:
        served_paths = ", ".join(f"/v1/{e}" for e in served.endpoints)
        return JSONResponse({"error": f"this server's model is {served.kind}: {path} is not available (it serves {served_paths})"},
                            status_code=404)

    return unavailable


def _local_docs(app: FastAPI) -> None:
    """/docs with Swagger UI's files served by this server (``DOCS_FILES``)."""
    def static(content: bytes, media_type: str):
        async def send() -> Response:  # (no parameters: FastAPI would read any from the query string)
            return Response(content, media_type=media_type)
        return send

    for name, media_type in DOCS_FILES.items():
        app.add_api_route(f"/docs/{name}", static((swagger_ui_path / name).read_bytes(), media_type), methods=["GET"],
                          include_in_schema=False)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} API", swagger_js_url="/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/swagger-ui.css", swagger_favicon_url="/docs/favicon-32x32.png")


def _document_bearer(app: FastAPI) -> None:
    """Tell /docs that /v1/* and /metrics take a bearer key, so its "Authorize" button works."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, operations in schema["paths"].items():
                if path not in OPEN_PATHS:
                    for op in operations.values():
                        op["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _version() -> str:
    from . import __version__

    return __version__


# -- the command -----------------------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not yet listening), so that a busy port fails before the model loads."""
    if not 0 <= port <= 65535:
        raise BertforgeError(f"port {port} is not a port number (0-65535)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror:
        raise BertforgeError(f"cannot listen on {host}: not an address of this machine") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a stop (TIME_WAIT)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise BertforgeError(f"port {port} on {host} is in use") from None
        if e.errno == errno.EACCES:
            raise BertforgeError(f"port {port} on {host} needs privileges: choose one above 1023") from None
        raise BertforgeError(f"cannot listen on {host} port {port}: {e.strerror}") from None
    return sock


def access_line(address: str, api_key: str | None) -> str | None:
    """What the start-up message says about access: the key needed, or a warning when a server
    without one listens beyond this machine."""
    if api_key:
        return "bertforge: /v1/* and /metrics need 'Authorization: Bearer KEY'"
    if not ipaddress.ip_address(address.split("%")[0]).is_loopback:
        return (f"bertforge: warning: no API key, and listening on {address}: anyone who can reach this machine can use "
                "the model (--api-key or BERTFORGE_API_KEY)")
    return None


def serve(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    echo: Callable[[str], None] = print,
    **settings: Any,
) -> None:
    """Serve ``model`` until SIGINT or SIGTERM, then finish the requests in flight and return."""
    import uvicorn

    class Server(uvicorn.Server):
        # uvicorn re-raises the stop signal once it has shut down; a graceful stop ends with status 0
        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig, frame):
            # a second signal while the requests in flight finish: stop at once (uvicorn's own forced exit
            # cancels its lifespan task and prints that as a traceback)
            if self.should_exit:
                echo("bertforge: stopped without answering the requests in flight")
                os._exit(128 + sig)
            super().handle_exit(sig, frame)

    sock = bind(host, port)
    try:
        app = create_app(model, **settings)
        address, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        echo(f"bertforge: serving {model} on http://{shown}:{port} (API docs at /docs); Ctrl-C stops")
        if line := access_line(address, settings.get("api_key")):
            echo(line)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=30)
        Server(config).run(sockets=[sock])
    finally:
        sock.close()
    echo("bertforge: stopped")
