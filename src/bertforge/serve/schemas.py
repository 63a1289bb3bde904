"""The HTTP interface: its paths, and the request and response bodies that validate requests and are
the OpenAPI docs. Every error answer is ``ErrorBody``, ``{"error": "one line"}``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

ENDPOINTS = ("embed", "similarity", "classify", "tag", "qa", "summarize")
# /docs is Swagger UI with its script, style and icon served from here (read once from the swagger-ui-bundle
# package, by fixed names: no request names a file), so the page works without internet; FastAPI's default
# loads them from a CDN. There is no /redoc: ReDoc's script would come from a CDN, a blank page offline.
DOCS_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}
OPEN_PATHS = frozenset({"/health", "/docs", *(f"/docs/{f}" for f in DOCS_FILES), "/openapi.json"})  # no API key needed
KNOWN_PATHS = frozenset({*(f"/v1/{e}" for e in ENDPOINTS), "/metrics", *OPEN_PATHS})


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
