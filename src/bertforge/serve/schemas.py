"""The server's own paths and bodies (each task declares its request and response bodies itself):
/health, the error body ``{"error": "one line"}``, and how a validation error becomes that line."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from ..tasks import endpoints

ENDPOINTS = tuple(endpoints())  # every /v1 endpoint some model serves, in the order of the docs
# /docs is Swagger UI with its script, style and icon served from here (read once from the swagger-ui-bundle
# package, by fixed names: no request names a file), so the page works without internet; FastAPI's default
# loads them from a CDN. There is no /redoc: ReDoc's script would come from a CDN, a blank page offline.
DOCS_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}
OPEN_PATHS = frozenset({"/health", "/docs", *(f"/docs/{f}" for f in DOCS_FILES), "/openapi.json"})  # no API key needed
KNOWN_PATHS = frozenset({*(f"/v1/{e}" for e in ENDPOINTS), "/metrics", *OPEN_PATHS})


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
    what = {
        401: "Missing or wrong API key",
        404: "Not served by this model",
        413: "Too many texts, too long a text, too big a body",
        422: "Malformed or invalid request",
        429: "The queue is full (--max-queue, --max-queue-tokens): retry after Retry-After seconds",
        503: "No model call started within --request-timeout",
        504: "The model call ran past --request-timeout",
    }
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}


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
