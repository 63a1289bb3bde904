"""The app: ``create_app`` loads one model (``ServedModel``) and answers the endpoints its task
supports (``Endpoints``), behind the gate (API key, body size) and with offline /docs.

  encoder (e.g. minilm-l6)     /v1/embed, /v1/similarity, /v1/summarize (training-free centroid)
  classify, pair, regress      /v1/classify
  tag                          /v1/tag
  qa                           /v1/qa
  extsum                       /v1/summarize

Errors: 401 (API key), 404 (an endpoint the model does not serve), 413 (too many texts, too long a
text, too big a body), 422 (malformed or invalid request). No request field is ever used as a file name.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from swagger_ui_bundle import swagger_ui_path

from ..errors import BertforgeError
from .batcher import Batcher
from .gate import _Gate
from .metrics import Metrics
from .schemas import (
    DOCS_FILES,
    ENDPOINTS,
    OPEN_PATHS,
    ClassifyRequest,
    ClassifyResponse,
    EmbedRequest,
    EmbedResponse,
    Health,
    QARequest,
    QAResponse,
    Question,
    SimilarityRequest,
    SimilarityResponse,
    SummarizeRequest,
    SummarizeResponse,
    TagRequest,
    TagResponse,
    _errors,
    _validation_message,
)

log = logging.getLogger("bertforge.serve")

DEFAULT_MAX_TEXTS = 256
DEFAULT_MAX_CHARS = 20_000
DEFAULT_MAX_BODY_BYTES = 4 * 2**20
DEFAULT_BATCH_WINDOW_MS = 5.0  # long enough for concurrent requests to meet, short next to a model call

SERVES: dict[str | None, tuple[str, ...]] = {
    None: ("embed", "similarity", "summarize"),
    "classify": ("classify",),
    "pair": ("classify",),
    "regress": ("classify",),
    "tag": ("tag",),
    "qa": ("qa",),
    "extsum": ("summarize",),
}


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
        from ..api import Pipeline, model_task
        from ..tasks import TASKS

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
            from ..tasks.extsum import summarize_untrained

            return summarize_untrained(_Budgeted(self.embedder, self.max_batch_tokens), items, **self.pipe.untrained)
        return self.pipe.predict(items)


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


class Endpoints:
    """The /v1 handlers, one per endpoint, and the checks they share: --max-texts, --max-chars, and
    the model call through the batcher (the model's refusal a 422, its failure a 500)."""

    def __init__(self, served: ServedModel, batcher: Batcher, max_texts: int, max_chars: int):
        self.served, self.batcher, self.max_texts, self.max_chars = served, batcher, max_texts, max_chars

    def register(self, app: FastAPI, auth: tuple[int, ...]) -> None:
        """Each endpoint the model serves, documented; the others answer 404, left out of the docs."""
        handlers = {"embed": (self.embed, EmbedResponse), "similarity": (self.similarity, SimilarityResponse),
                    "classify": (self.classify, ClassifyResponse), "tag": (self.tag, TagResponse), "qa": (self.qa, QAResponse),
                    "summarize": (self.summarize, SummarizeResponse)}
        for endpoint in ENDPOINTS:
            path = f"/v1/{endpoint}"
            handler, response = handlers[endpoint]
            if endpoint in self.served.endpoints:
                app.post(path, response_model=response, responses=_errors(*auth, 413, 422))(handler)
            else:
                app.post(path, include_in_schema=False)(_unavailable(self.served, path))

    # -- checks shared by the endpoints --
    def check_count(self, n: int, field: str) -> None:
        if n > self.max_texts:
            raise _error(413, f"{n} {field} in one request; this server takes at most {self.max_texts} (--max-texts)")

    def check_chars(self, named: Iterable[tuple[str, str]]) -> None:
        """Every text: not empty (or only spaces), within --max-chars, valid Unicode."""
        for where, text in named:
            if len(text) > self.max_chars:
                raise _error(413, f"{where} has {len(text):,} characters; this server takes at most {self.max_chars:,} (--max-chars)")
            if not text.strip():
                raise _error(422, f"{where} is empty")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise _error(422, f"{where} is not valid Unicode (it holds a lone surrogate)") from None

    def check_texts(self, texts: Sequence[str], field: str) -> None:
        self.check_count(len(texts), field)
        self.check_chars((f"{field}[{i}]", t) for i, t in enumerate(texts))

    async def predict(self, key: tuple, items: list) -> Sequence:
        try:
            return await self.batcher.submit(key, items)
        except BertforgeError as e:
            raise _error(422, str(e)) from None
        except Exception:
            log.exception("a model call failed")
            raise _error(500, "internal error: the model call failed (see the server's log)") from None

    def examples(self, inputs: list, field: str) -> list:
        out = []
        for i, x in enumerate(inputs):
            try:
                out.extend(self.served.pipe.examples([x]))
            except BertforgeError as e:
                raise _error(422, f"{field}[{i}]: {e}") from None
        return out

    # -- the endpoints --
    async def embed(self, body: EmbedRequest) -> JSONResponse:
        """Sentence embeddings, pooled and normalised as the checkpoint says."""
        self.check_texts(body.texts, "texts")
        vectors = await self.predict(("embed", self.served.embedder.settings.normalize), body.texts)
        return JSONResponse({"embeddings": vectors.tolist()})

    async def similarity(self, body: SimilarityRequest) -> JSONResponse:
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
            self.check_count(len(body.pairs), "pairs")
            self.check_chars((f"pairs[{i}][{j}]", t) for i, p in enumerate(body.pairs) for j, t in enumerate(p))
        else:
            self.check_count(len(a), "pairs")
            self.check_chars([*((f"a[{i}]", t) for i, t in enumerate(a)), *((f"b[{i}]", t) for i, t in enumerate(b))])
        v = await self.predict(("embed", True), [*a, *b])
        return JSONResponse({"scores": (v[: len(a)] * v[len(a) :]).sum(axis=1).tolist()})

    async def classify(self, body: ClassifyRequest) -> JSONResponse:
        """Labels and probabilities (classify, pair), or a number (regress)."""
        is_pair = self.served.pipe.task.is_pair
        if (body.texts is None) == (body.pairs is None):
            raise _error(422, f"give {'pairs' if is_pair else 'texts'}")
        if is_pair and body.pairs is None:
            raise _error(422, "this server's model reads text pairs: send 'pairs' ([[text, text_pair], ...])")
        if not is_pair and body.texts is None:
            raise _error(422, "this server's model reads single texts: send 'texts'")
        if body.pairs is not None:
            self.check_count(len(body.pairs), "pairs")
            self.check_chars((f"pairs[{i}][{j}]", t) for i, p in enumerate(body.pairs) for j, t in enumerate(p))
            inputs = [tuple(p) for p in body.pairs]
        else:
            self.check_texts(body.texts, "texts")
            inputs = body.texts
        preds = await self.predict(("predict",), self.examples(inputs, "pairs" if body.pairs is not None else "texts"))
        return JSONResponse({"predictions": list(preds)})

    async def tag(self, body: TagRequest) -> JSONResponse:
        """Tags per word and the entities they make (character offsets for texts, word offsets for tokens)."""
        if (body.texts is None) == (body.tokens is None):
            raise _error(422, "give 'texts', or 'tokens' (lists of words)")
        if body.texts is not None:
            self.check_texts(body.texts, "texts")
            field, inputs = "texts", body.texts
        else:
            self.check_texts([" ".join(ws) for ws in body.tokens], "tokens")
            field, inputs = "tokens", body.tokens
        preds = await self.predict(("predict",), self.examples(inputs, field))
        return JSONResponse({"predictions": list(preds)})

    async def qa(self, body: QARequest) -> JSONResponse:
        """Answers: spans of each context (``questions``, or one ``question`` and ``context``)."""
        if body.questions is not None:
            if body.question is not None or body.context is not None:
                raise _error(422, "give 'questions', or one 'question' and 'context', not both")
            questions, field = body.questions, "questions"
        elif body.question is not None and body.context is not None:
            questions, field = [Question(question=body.question, context=body.context)], ""
        else:
            raise _error(422, "give 'questions' ([{question, context}, ...]), or 'question' and 'context'")
        self.check_count(len(questions), "questions")
        self.check_chars((f"{field}[{i}].{k}" if field else k, getattr(q, k)) for i, q in enumerate(questions)
                         for k in ("question", "context"))
        preds = await self.predict(("predict",), self.examples([q.model_dump() for q in questions], field or "questions"))
        return JSONResponse({"answers": list(preds)})

    async def summarize(self, body: SummarizeRequest) -> JSONResponse:
        """Extractive summaries: the sentences chosen from each document."""
        from ..tasks.extsum import document_from

        texts = [d if isinstance(d, str) else " ".join(d.sentences) for d in body.documents]
        self.check_texts(texts, "documents")
        column = "text" if self.served.task is None else self.served.pipe.task.spec.text_column
        docs = []
        for i, d in enumerate(body.documents):
            fields = {column: d} if isinstance(d, str) else {"sentences": d.sentences}
            try:
                docs.append(document_from(fields, 0, f"documents[{i}]", column))
            except BertforgeError as e:
                raise _error(422, str(e)) from None
        preds = await self.predict(("summarize",), docs)
        return JSONResponse({"summaries": list(preds)})


# -- how errors are answered: {"error": "one line"} --
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": _validation_message(exc.errors())}, status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = {(404, "Not Found"): f"no such endpoint: {request.url.path}",
               # what FastAPI answers for a body it cannot decode (JSON's own errors are 422s)
               (400, "There was an error parsing the body"): "the body is not UTF-8 text: send JSON in UTF-8"}.get(
        (exc.status_code, exc.detail), exc.detail)
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _crashed(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s failed", request.url.path)
    return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)


def _check_settings(api_key: str | None, max_batch_tokens: int | None, max_texts: int, max_chars: int,
                    max_body_bytes: int, batch_window_ms: float) -> None:
    if api_key is not None and not api_key.strip():
        raise BertforgeError("the API key is empty (--api-key or BERTFORGE_API_KEY): give one, or leave both unset to serve without a key")
    for name, value, least in (("--max-batch-tokens", max_batch_tokens, 1), ("--max-texts", max_texts, 1),
                               ("--max-chars", max_chars, 1), ("max_body_bytes", max_body_bytes, 1),
                               ("--batch-window-ms", batch_window_ms, 0)):
        if value is not None and value < least:
            raise BertforgeError(f"{name} must be at least {least}, not {value}")


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
    _check_settings(api_key, max_batch_tokens, max_texts, max_chars, max_body_bytes, batch_window_ms)
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
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _crashed)
    auth = (401,) if api_key else ()
    Endpoints(served, batcher, max_texts, max_chars).register(app, auth)

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
    from .. import __version__

    return __version__

