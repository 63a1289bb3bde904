"""What an encoder does without fine-tuning, declared as tasks: sentence embeddings, the similarity of
two texts, and training-free extractive summaries. Their model is an ``infer.Embedder``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from ..errors import BertforgeError
from ..infer import Embedder
from ..summary import METHODS, Document, document_input, summarize_untrained, summary_limits
from .extsum import SummarizeRequest, documents_from_request
from .schemas import Request, SummarizeResponse


class EncoderTask:
    """A use of a bare encoder. ``max_tokens``: padded tokens per model batch (None: the device's)."""

    name: ClassVar[str]
    endpoint: ClassVar[str]
    about: ClassVar[str]  # what its endpoint answers (the server's docs)
    batch_kind: ClassVar[str]  # the server's model calls, as /metrics labels them
    head: ClassVar[str | None] = None
    needs: ClassVar[str | None] = None  # the server option it is served with (None: always)
    Settings: ClassVar[type | None] = None
    Request: ClassVar[type[BaseModel]]
    Response: ClassVar[type[BaseModel]]

    def __init__(self, settings: Any = None):
        self.settings = settings
        self.max_tokens: int | None = None

    def load(self, md, device: str | None, precision: str, runtime: str, compile: bool) -> Embedder:
        return Embedder.from_pretrained(md, device, precision, runtime, compile)

    def open(self, md) -> None:
        """Read what it serves beside the model (called once, by the server, before the first request)."""

    def example(self, x: Any, where: str) -> Any:
        raise NotImplementedError

    def predict(self, embedder: Embedder, examples: list) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Options:
    """How a request's texts are embedded (texts with equal options share a model call)."""

    prompt_name: str | None = None
    normalize: bool | None = None
    truncate: bool = True
    dimensions: int | None = None


@dataclass(frozen=True)
class Text:
    text: str
    options: Options = Options()
    extra: Any = None  # what the answer needs of its request (the format, the model's name, k)


@dataclass
class Embedding:
    vector: np.ndarray
    tokens: int
    truncated: bool
    extra: Any = None


def embed_grouped(embedder: Embedder, items: list[Text], max_tokens: int | None) -> list[Embedding]:
    """Each item's embedding, one model call per set of options, in the items' order."""
    out: list[Embedding | None] = [None] * len(items)
    groups: dict[Options, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.options, []).append(i)
    for o, idx in groups.items():
        got = embedder.embed(
            [items[i].text for i in idx],
            prompt_name=o.prompt_name,
            normalize=o.normalize,
            truncate=o.truncate,
            dimensions=o.dimensions,
            max_tokens=max_tokens,
        )
        for j, i in enumerate(idx):
            out[i] = Embedding(got.vectors[j], int(got.tokens[j]), bool(got.truncated[j]), items[i].extra)
    return out  # type: ignore[return-value]


class EmbedOptions(Request):
    truncate: bool = Field(True, description="Cut texts over the model's length (false: such a text is a 413).")
    normalize: bool | None = Field(None, description="Unit-length vectors (default: as the checkpoint says).")
    prompt_name: str | None = Field(None, description="One of the model's prompts, put before each text.")
    dimensions: int | None = Field(None, ge=1, description="Keep the first ones (Matryoshka), normalised again.")

    def options(self) -> Options:
        return Options(self.prompt_name, self.normalize, self.truncate, self.dimensions)


# -- embed ----------------------------------------------------------------------------------------------
class EmbedRequest(EmbedOptions):
    model_config = EmbedOptions.model_config | {
        "json_schema_extra": {"examples": [{"texts": ["A gripping film.", "Dull."]}]}
    }
    texts: list[str] = Field(min_length=1, description="Texts to embed (at most --max-texts).")


class EmbedResponse(BaseModel):
    embeddings: list[list[float]] = Field(
        description="One vector per text, in order, normalised as the checkpoint says."
    )
    truncated: list[bool] = Field(description="Which texts were cut at the model's length.")


class EmbedTask(EncoderTask):
    """Sentence embeddings, pooled and normalised as the checkpoint says."""

    name = endpoint = batch_kind = "embed"
    about = "Sentence embeddings, pooled and normalised as the checkpoint says."
    Request, Response = EmbedRequest, EmbedResponse

    def example(self, x: Any, where: str) -> str:
        if not isinstance(x, str):
            raise BertforgeError(f"{where}: an embedder takes texts, not {type(x).__name__}")
        return x

    def from_request(self, body: EmbedRequest, limits) -> list[Text]:
        limits.check_texts(body.texts, "texts")
        return [Text(t, body.options()) for t in body.texts]

    def predict(self, embedder: Embedder, examples: list[str] | list[Text]) -> np.ndarray | list[Embedding]:
        """Texts (a pipeline's): their vectors; a request's: each one's vector and how it was read."""
        if examples and isinstance(examples[0], Text):
            return embed_grouped(embedder, examples, self.max_tokens)
        return embedder(examples, max_tokens=self.max_tokens)

    def respond(self, results: list[Embedding]) -> dict:
        return {"embeddings": [r.vector.tolist() for r in results], "truncated": [r.truncated for r in results]}


# -- similarity -------------------------------------------------------------------------------------------
class SimilarityRequest(Request):
    model_config = Request.model_config | {
        "json_schema_extra": {
            "examples": [
                {"pairs": [["A cat sits on the mat.", "A cat is on a mat."]]},
                {"a": ["A cat sits on the mat."], "b": ["The stock market fell."]},
            ]
        }
    }
    pairs: list[tuple[str, str]] | None = Field(None, min_length=1, description="[text, text] pairs.")
    a: list[str] | None = Field(None, min_length=1, description="First texts (with b, as long).")
    b: list[str] | None = Field(None, min_length=1, description="Second texts.")


class SimilarityResponse(BaseModel):
    scores: list[float] = Field(description="Cosine similarity of each pair.")


class SimilarityTask(EncoderTask):
    """Cosine similarity of each pair: ``pairs`` or ``a`` and ``b``."""

    name = endpoint = "similarity"
    batch_kind = "embed"  # its model calls embed texts
    about = "Cosine similarity of each pair: ``pairs`` or ``a`` and ``b``."
    Request, Response = SimilarityRequest, SimilarityResponse

    def example(self, x: Any, where: str) -> tuple[str, str]:
        if not (isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(t, str) for t in x)):
            raise BertforgeError(f"{where}: similarity takes (text, text) pairs")
        return x[0], x[1]

    def from_request(self, body: SimilarityRequest, limits) -> list[tuple[str, str]]:
        if (body.pairs is None) == (body.a is None and body.b is None):
            raise BertforgeError("give 'pairs', or 'a' and 'b'")
        if body.pairs is not None:
            limits.check_count(len(body.pairs), "pairs")
            limits.check_chars((f"pairs[{i}][{j}]", t) for i, p in enumerate(body.pairs) for j, t in enumerate(p))
            return [tuple(p) for p in body.pairs]
        if body.a is None or body.b is None:
            raise BertforgeError(f"{'b' if body.b is None else 'a'} is missing: give 'a' and 'b' (as many texts each)")
        if len(body.a) != len(body.b):
            raise BertforgeError(f"'a' has {len(body.a)} texts but 'b' has {len(body.b)}: give as many")
        limits.check_count(len(body.a), "pairs")
        limits.check_chars(
            [*((f"a[{i}]", t) for i, t in enumerate(body.a)), *((f"b[{i}]", t) for i, t in enumerate(body.b))]
        )
        return list(zip(body.a, body.b, strict=True))

    def predict(self, embedder: Embedder, examples: list[tuple[str, str]]) -> np.ndarray:
        return embedder.similarity([a for a, _ in examples], [b for _, b in examples], max_tokens=self.max_tokens)

    def respond(self, scores: np.ndarray) -> dict:
        return {"scores": scores.tolist()}


# -- summarize ----------------------------------------------------------------------------------------------
@dataclass
class SummarizeSettings:
    method: str = field(default="centroid", metadata={"help": "centroid | cluster | lead"})
    top_k: int | None = field(default=3, metadata={"help": "Sentences per summary (default 3)."})
    max_words: int | None = field(
        default=None,
        metadata={"help": "Length budget in words (a CJK character is a word), instead of or with --top-k."},
    )
    trigram_blocking: bool = field(default=True, metadata={"help": "centroid: skip sentences repeating a trigram."})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BertforgeError(f"unknown method {self.method!r} (choose from {', '.join(METHODS)})")
        summary_limits(self.top_k, self.max_words)


class SummarizeTask(EncoderTask):
    """Extractive summaries without training: the sentences closest to the document's centroid in
    sentence-embedding space, one per k-means cluster, or the first ones (Lead-k)."""

    name = endpoint = batch_kind = "summarize"
    about = "Extractive summaries: the sentences chosen from each document."
    Settings = SummarizeSettings
    Request, Response = SummarizeRequest, SummarizeResponse

    def __init__(self, settings: SummarizeSettings | None = None):
        super().__init__(settings or SummarizeSettings())

    def example(self, x: Any, where: str) -> Document:
        return document_input(x)

    def from_request(self, body: SummarizeRequest, limits) -> list[Document]:
        return documents_from_request(body, limits, "text")

    def predict(self, embedder: Embedder, examples: list[Document]) -> list[dict]:
        s = self.settings

        def budgeted(texts, **kwargs):
            return embedder(texts, max_tokens=self.max_tokens, **kwargs)

        return summarize_untrained(budgeted, examples, s.method, s.top_k, s.max_words, s.trigram_blocking)

    def respond(self, summaries: list[dict]) -> dict:
        return {"summaries": list(summaries)}
