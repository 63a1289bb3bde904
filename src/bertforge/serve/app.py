"""The app: ``create_app`` loads one model (``ServedModel``) and answers, at /v1/<endpoint>, each
task the registry says it serves (``Endpoints``), behind the gate (API key, body size), with offline /docs.

Errors: 401 (API key), 404 (an endpoint the model does not serve), 413 (too many texts, too long a
text, too big a body), 422 (malformed or invalid request). No request field is ever used as a file name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from swagger_ui_bundle import swagger_ui_path

from ..device import model_device, resolve_precision
from ..errors import BertforgeError
from ..infer import Embedder
from ..modeldir import ModelDir
from ..onnx import OnnxModel
from ..tasks import FinetuneTask, served
from .batcher import Batcher, Gone, Overloaded, TimedOut, Timing
from .gate import _Gate
from .metrics import Metrics
from .schemas import DOCS_FILES, ENDPOINTS, OPEN_PATHS, Health, _errors, _validation_message

log = logging.getLogger("bertforge.serve")

DEFAULT_MAX_TEXTS = 256
DEFAULT_MAX_CHARS = 20_000
DEFAULT_MAX_BODY_BYTES = 4 * 2**20
DEFAULT_BATCH_WINDOW_MS = 5.0  # long enough for concurrent requests to meet, short next to a model call


# -- the model behind the endpoints ---------------------------------------------------------------------------
class ServedModel:
    """The loaded model and the tasks it serves, by endpoint (a fine-tuned model's task, or every use of
    a bare encoder, sharing one Embedder); ``run`` is the one function the batcher's thread calls."""

    def __init__(
        self,
        model: str | Path,
        device: str | None,
        precision: str,
        runtime: str,
        max_batch_tokens: int | None,
        compile: bool = False,
        options: dict | None = None,
    ):
        md = ModelDir.open(model)
        self.tokenizer = md.tokenizer
        self.max_length = md.config.max_position_embeddings
        tasks = served(md, options)
        self.tasks = {t.endpoint: t for t in tasks}
        self.model = tasks[0].load(md, device, precision, runtime, compile)
        for t in tasks:
            t.max_tokens = max_batch_tokens
            t.model_name = str(model) if not Path(model).exists() else Path(model).resolve().name
        self.task = tasks[0].name if isinstance(tasks[0], FinetuneTask) else None  # None: an encoder
        net = self.model.model if isinstance(self.model, Embedder) else self.model
        # "auto" is reported as what it chose: an ONNX graph knows its own; torch's is resolved as it was
        self.precision = (
            net.precision if isinstance(net, OnnxModel) else resolve_precision(precision, model_device(net), warn=False)
        )
        self.endpoints = tuple(self.tasks)

    @property
    def kind(self) -> str:
        return "an encoder" if self.task is None else f"{'an' if self.task[0] in 'aeiou' else 'a'} {self.task} model"

    def run(self, key: tuple, items: list) -> Sequence:
        return self.tasks[key[1]].predict(self.model, items)  # key: (batch kind, endpoint)

    def count_tokens(self, body: BaseModel) -> int:
        """The tokens of every text in a request body (for --max-queue-tokens), as the model would cut them."""
        texts = list(_strings(body.model_dump()))
        return sum(len(e.ids) for e in self.tokenizer.encode_batch(texts, max_length=self.max_length)) if texts else 0


class Holder:
    """The model served now: SIGHUP loads it again (``reload``, in a thread of its own, while the old one
    answers) and swaps it in between two model calls."""

    def __init__(self, load: Callable[[], ServedModel]):
        self.load, self.served = load, load()

    def run(self, key: tuple, items: list) -> Sequence:
        return self.served.run(key, items)

    def reload(self, echo: Callable[[str], None]) -> None:
        start = time.perf_counter()
        try:
            fresh = self.load()
        except Exception as e:  # a broken directory on disk: keep serving the model loaded
            echo(f"bertforge: reload failed, still serving the model loaded before: {e}")
            return
        if fresh.endpoints != self.served.endpoints:
            echo(
                f"bertforge: reload refused: the model now serves {', '.join(fresh.endpoints)}, not "
                f"{', '.join(self.served.endpoints)} (restart the server to change endpoints)"
            )
            return
        self.served = fresh
        echo(f"bertforge: reloaded the model in {time.perf_counter() - start:.1f} s")


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


class Endpoints:
    """The /v1 handlers, one per task served, and the limits every request meets: --max-texts and
    --max-chars (checked by the task as it reads the request), then the model call through the batcher
    (a bad input a 422, a full queue a 429, a timeout a 503 or 504, the model's failure a 500)."""

    def __init__(
        self, holder: Holder, batcher: Batcher, max_texts: int, max_chars: int, request_timeout: float | None = None
    ):
        self.holder, self.batcher, self.max_texts, self.max_chars = holder, batcher, max_texts, max_chars
        self.request_timeout = request_timeout

    def register(self, app: FastAPI, auth: tuple[int, ...]) -> None:
        """Each endpoint the model serves, documented; the others answer 404, left out of the docs."""
        served = self.holder.served
        for endpoint in ENDPOINTS:
            path = f"/v1/{endpoint}"
            if endpoint in served.tasks:
                task = served.tasks[endpoint]
                app.post(path, response_model=task.Response, responses=_errors(*auth, 413, 422, 429, 503, 504))(
                    self.handler(task)
                )
            else:
                app.post(path, include_in_schema=False)(_unavailable(served, path))

    def handler(self, declared):
        """The endpoint of task ``declared``: its request body, read into examples (by the task of the
        model served now: a reload may have changed its labels), predicted, answered with its timing."""

        async def handle(body, request: Request) -> Response:
            start = time.perf_counter()
            task = self.holder.served.tasks[declared.endpoint]
            try:
                examples = task.from_request(body, self)
            except BertforgeError as e:
                raise _error(422, str(e)) from None
            weight = 0
            if self.batcher.max_queue_tokens is not None:
                weight = await asyncio.to_thread(self.holder.served.count_tokens, body)
            results, timing = await self.predict((task.batch_kind, task.endpoint), examples, request, weight)
            if results is None:  # the client hung up: nobody reads this (499, as nginx logs it)
                return Response(status_code=499)
            return JSONResponse(task.respond(results), headers=_timing_headers(timing, time.perf_counter() - start))

        handle.__annotations__ = {"body": declared.Request, "request": Request, "return": Response}
        handle.__name__, handle.__doc__ = declared.endpoint, declared.about
        return handle

    async def predict(self, key: tuple, items: list, request: Request, weight: int = 0):
        try:
            return await self.batcher.submit(key, items, weight, self.request_timeout, _hung_up(request))
        except Overloaded as e:
            raise HTTPException(
                429,
                f"the server is at capacity ({e.why}): retry in {e.retry_after} s",
                headers={"Retry-After": str(e.retry_after)},
            ) from None
        except TimedOut as e:
            where = "waiting for the model" if e.queued else "in the model call"
            status = 503 if e.queued else 504
            raise _error(status, f"no answer within {self.request_timeout:g} s (--request-timeout): {where}") from None
        except Gone:
            return None, None
        except BertforgeError as e:
            raise _error(getattr(e, "status", 422), str(e)) from None  # (a text too long to embed uncut: 413)
        except Exception:
            log.exception("a model call failed")
            raise _error(500, "internal error: the model call failed (see the server's log)") from None

    # -- the limits, called by the tasks as they read a request --
    def check_count(self, n: int, field: str) -> None:
        if n > self.max_texts:
            raise _error(413, f"{n} {field} in one request; this server takes at most {self.max_texts} (--max-texts)")

    def check_chars(self, named: Iterable[tuple[str, str]]) -> None:
        """Every text: not empty (or only spaces), within --max-chars, valid Unicode."""
        for where, text in named:
            if len(text) > self.max_chars:
                raise _error(
                    413,
                    f"{where} has {len(text):,} characters; this server takes at most {self.max_chars:,} (--max-chars)",
                )
            if not text.strip():
                raise _error(422, f"{where} is empty")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise _error(422, f"{where} is not valid Unicode (it holds a lone surrogate)") from None

    def check_texts(self, texts: Sequence[str], field: str) -> None:
        self.check_count(len(texts), field)
        self.check_chars((f"{field}[{i}]", t) for i, t in enumerate(texts))


async def _hung_up(request: Request) -> None:
    """Returns when the client disconnects (the body was read already: what comes next is the hang-up)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _timing_headers(t: Timing, total_s: float) -> dict[str, str]:
    """Where the request's time went, in milliseconds, as text-embeddings-inference reports it (the model
    call's figures are the whole call's, shared by x-batch-requests requests)."""
    return {
        "x-total-time": f"{1000 * total_s:.2f}",
        "x-queue-time": f"{1000 * t.queue_s:.2f}",
        "x-tokenization-time": f"{1000 * t.tokenize_s:.2f}",
        "x-inference-time": f"{1000 * t.inference_s:.2f}",
        "x-compute-tokens": str(t.tokens),
        "x-batch-requests": str(t.requests),
    }


# -- how errors are answered: {"error": "one line"} --
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": _validation_message(exc.errors())}, status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = {
        (404, "Not Found"): f"no such endpoint: {request.url.path}",
        # what FastAPI answers for a body json.loads raises on other than with a JSONDecodeError (a 422); the
        # gate refuses one that is not UTF-8 before, so what is left: nested too deeply, an integer too long
        (400, "There was an error parsing the body"): (
            "malformed JSON: nested too deeply, or an integer over 4,300 digits"
        ),
    }.get((exc.status_code, exc.detail), exc.detail)
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _crashed(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s failed", request.url.path)
    return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)


def _check_settings(
    api_key: str | None,
    max_batch_tokens: int | None,
    max_texts: int,
    max_chars: int,
    max_body_bytes: int,
    batch_window_ms: float,
) -> None:
    if api_key is not None and not api_key.strip():
        raise BertforgeError(
            "the API key is empty (--api-key or BERTFORGE_API_KEY): give one, or leave both unset to serve without a "
            "key"
        )
    for name, value, least in (
        ("--max-batch-tokens", max_batch_tokens, 1),
        ("--max-texts", max_texts, 1),
        ("--max-chars", max_chars, 1),
        ("max_body_bytes", max_body_bytes, 1),
        ("--batch-window-ms", batch_window_ms, 0),
    ):
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
    max_queue: int | None = None,
    max_queue_tokens: int | None = None,
    request_timeout: float | None = None,
    index: str | Path | None = None,
) -> FastAPI:
    """A FastAPI app serving ``model`` (a directory or registry name), loaded now: a missing model or
    a bad setting raises BertforgeError here, not at the first request. ``index``: an index built with
    the model, searched at /v1/search. ``app.state.reload(echo)`` loads it again (SIGHUP)."""
    _check_settings(api_key, max_batch_tokens, max_texts, max_chars, max_body_bytes, batch_window_ms)
    for flag, value in (("--max-queue", max_queue), ("--max-queue-tokens", max_queue_tokens)):
        if value is not None and value < 1:
            raise BertforgeError(f"{flag} must be at least 1, not {value}")
    if request_timeout is not None and not request_timeout > 0:
        raise BertforgeError(f"--request-timeout must be above 0 seconds, not {request_timeout}")
    options = {"index": index}
    holder = Holder(lambda: ServedModel(model, device, precision, runtime, max_batch_tokens, compile, options))
    served = holder.served
    name = (
        str(model) if not Path(model).exists() else Path(model).resolve().name
    )  # not the full path: /health is public
    metrics = Metrics(
        {"model": name, "task": served.task or "encoder", "precision": served.precision, "runtime": runtime}
    )
    batcher = Batcher(
        holder.run, batch_window_ms / 1000, metrics, max_queue=max_queue, max_queue_tokens=max_queue_tokens
    )
    metrics.queue_depth = batcher.depth

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await batcher.close()

    app = FastAPI(
        title="bertforge",
        version=_version(),
        description=f'Serving **{name}** ({served.kind}). Errors are `{{"error": "..."}}`.',
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
    Endpoints(holder, batcher, max_texts, max_chars, request_timeout).register(app, auth)
    app.state.reload = holder.reload

    @app.get("/health", response_model=Health)
    async def health() -> JSONResponse:
        """The model served and how: for load balancers and people (no API key needed)."""
        return JSONResponse(
            {
                "status": "ok",
                "model": name,
                "task": served.task or "encoder",
                "endpoints": [f"/v1/{e}" for e in served.endpoints],
                "precision": served.precision,
                "runtime": runtime,
                "uptime_s": round(time.monotonic() - metrics.started, 3),
            }
        )

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
        return JSONResponse(
            {"error": f"this server's model is {served.kind}: {path} is not available (it serves {served_paths})"},
            status_code=404,
        )

    return unavailable


def _local_docs(app: FastAPI) -> None:
    """/docs with Swagger UI's files served by this server (``DOCS_FILES``)."""

    def static(content: bytes, media_type: str):
        async def send() -> Response:  # (no parameters: FastAPI would read any from the query string)
            return Response(content, media_type=media_type)

        return send

    for name, media_type in DOCS_FILES.items():
        app.add_api_route(
            f"/docs/{name}",
            static((swagger_ui_path / name).read_bytes(), media_type),
            methods=["GET"],
            include_in_schema=False,
        )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} API",
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url="/docs/favicon-32x32.png",
        )


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
