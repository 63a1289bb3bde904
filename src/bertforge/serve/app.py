"""The app: ``create_app`` loads one model (``ServedModel``) and answers, at /v1/<endpoint>, each
task the registry says it serves (``Endpoints``), behind the gate (API key, body size), with offline /docs.

Errors: 401 (API key), 404 (an endpoint the model does not serve), 413 (too many texts, too long a
text, too big a body), 422 (malformed or invalid request). No request field is ever used as a file name.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from swagger_ui_bundle import swagger_ui_path

from ..device import model_device, resolve_precision
from ..errors import BertforgeError
from ..infer import Embedder
from ..modeldir import ModelDir
from ..onnx import OnnxModel
from ..tasks import FinetuneTask, served
from .batcher import Batcher
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
    ):
        md = ModelDir.open(model)
        tasks = served(md)
        self.tasks = {t.endpoint: t for t in tasks}
        self.model = tasks[0].load(md, device, precision, runtime, compile)
        for t in tasks:
            t.max_tokens = max_batch_tokens
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


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


class Endpoints:
    """The /v1 handlers, one per task served, and the limits every request meets: --max-texts and
    --max-chars (checked by the task as it reads the request), then the model call through the batcher
    (a bad input a 422, the model's failure a 500)."""

    def __init__(self, served: ServedModel, batcher: Batcher, max_texts: int, max_chars: int):
        self.served, self.batcher, self.max_texts, self.max_chars = served, batcher, max_texts, max_chars

    def register(self, app: FastAPI, auth: tuple[int, ...]) -> None:
        """Each endpoint the model serves, documented; the others answer 404, left out of the docs."""
        for endpoint in ENDPOINTS:
            path = f"/v1/{endpoint}"
            if endpoint in self.served.tasks:
                task = self.served.tasks[endpoint]
                app.post(path, response_model=task.Response, responses=_errors(*auth, 413, 422))(self.handler(task))
            else:
                app.post(path, include_in_schema=False)(_unavailable(self.served, path))

    def handler(self, task):
        """The endpoint of ``task``: its request body, read into examples, predicted, answered."""

        async def handle(body) -> JSONResponse:
            try:
                examples = task.from_request(body, self)
            except BertforgeError as e:
                raise _error(422, str(e)) from None
            return JSONResponse(task.respond(await self.predict((task.batch_kind, task.endpoint), examples)))

        handle.__annotations__ = {"body": task.Request, "return": JSONResponse}
        handle.__name__, handle.__doc__ = task.endpoint, task.about
        return handle

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

    async def predict(self, key: tuple, items: list) -> Sequence:
        try:
            return await self.batcher.submit(key, items)
        except BertforgeError as e:
            raise _error(422, str(e)) from None
        except Exception:
            log.exception("a model call failed")
            raise _error(500, "internal error: the model call failed (see the server's log)") from None


# -- how errors are answered: {"error": "one line"} --
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": _validation_message(exc.errors())}, status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = {
        (404, "Not Found"): f"no such endpoint: {request.url.path}",
        # what FastAPI answers for a body it cannot decode (JSON's own errors are 422s)
        (400, "There was an error parsing the body"): "the body is not UTF-8 text: send JSON in UTF-8",
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
) -> FastAPI:
    """A FastAPI app serving ``model`` (a directory or registry name), loaded now: a missing model or
    a bad setting raises BertforgeError here, not at the first request."""
    _check_settings(api_key, max_batch_tokens, max_texts, max_chars, max_body_bytes, batch_window_ms)
    served = ServedModel(model, device, precision, runtime, max_batch_tokens, compile)
    name = (
        str(model) if not Path(model).exists() else Path(model).resolve().name
    )  # not the full path: /health is public
    metrics = Metrics(
        {"model": name, "task": served.task or "encoder", "precision": served.precision, "runtime": runtime}
    )
    batcher = Batcher(served.run, batch_window_ms / 1000, metrics)
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
    Endpoints(served, batcher, max_texts, max_chars).register(app, auth)

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
