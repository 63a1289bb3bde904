"""The encoder's other faces on the server: OpenAI's embeddings API (``/v1/embeddings``: its request and
response shape, so the official clients work), the tokens a text is read as (``/v1/tokenize``) and
semantic search over an index built with the same model (``/v1/search``, when the server has one).

Every embedding request may set ``truncate`` (False: a text over the model's length is a 413),
``normalize``, ``prompt_name`` (a prompt of config_sentence_transformers.json) and ``dimensions``
(Matryoshka: the first ones, normalised again); each answer says which texts were cut.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..errors import BertforgeError
from ..infer import Embedder
from .encoder import Embedding, EmbedOptions, EncoderTask, Options, Text, embed_grouped
from .schemas import Request


# -- /v1/embeddings: OpenAI's --------------------------------------------------------------------------------
class EmbeddingsRequest(EmbedOptions):
    model_config = EmbedOptions.model_config | {
        "json_schema_extra": {"examples": [{"input": ["A gripping film.", "Dull."], "model": "minilm-l6"}]}
    }
    input: str | list[str] = Field(description="A text or a list of texts (at most --max-texts).")
    model: str | None = Field(None, description="Echoed back; the server's one model answers.")
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32.")
    user: str | None = Field(None, description="Accepted, unused.")


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    truncated: bool = Field(description="Cut at the model's length (bertforge's, beside OpenAI's fields).")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens the model read, special tokens and prompts included.")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class EmbeddingsTask(EncoderTask):
    """OpenAI's embeddings API."""

    name = endpoint = "embeddings"
    batch_kind = "embed"
    about = "Sentence embeddings in OpenAI's request and response shape (its clients work unchanged)."
    Request, Response = EmbeddingsRequest, EmbeddingsResponse
    model_name = "bertforge"  # set by the server: the name answers carry when a request names none

    def example(self, x: Any, where: str) -> Text:
        if not isinstance(x, str):
            raise BertforgeError(f"{where}: an embedder takes texts, not {type(x).__name__}")
        return Text(x)

    def from_request(self, body: EmbeddingsRequest, limits) -> list[Text]:
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise BertforgeError("input is empty")
        limits.check_texts(texts, "input")
        extra = (body.encoding_format, body.model or self.model_name)
        return [Text(t, body.options(), extra) for t in texts]

    def predict(self, embedder: Embedder, examples: list[Text]) -> list[Embedding]:
        return embed_grouped(embedder, examples, self.max_tokens)

    def respond(self, results: list[Embedding]) -> dict:
        fmt, model = results[0].extra
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": (
                    base64.b64encode(r.vector.astype("<f4").tobytes()).decode("ascii")
                    if fmt == "base64"
                    else r.vector.tolist()
                ),
                "truncated": r.truncated,
            }
            for i, r in enumerate(results)
        ]
        tokens = sum(r.tokens for r in results)
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


# -- /v1/tokenize ----------------------------------------------------------------------------------------
class TokenizeRequest(Request):
    model_config = Request.model_config | {"json_schema_extra": {"examples": [{"texts": ["A gripping film."]}]}}
    texts: list[str] = Field(min_length=1, description="Texts to tokenize (at most --max-texts).")
    prompt_name: str | None = Field(None, description="One of the model's prompts, put before each text.")


class Token(BaseModel):
    id: int
    token: str
    start: int = Field(description="Its characters in the text (with the prompt before it): [start, end).")
    end: int
    special: bool


class TokenizeResponse(BaseModel):
    tokens: list[list[Token]] = Field(description="The tokens each text is embedded as.")
    truncated: list[bool]


class TokenizeTask(EncoderTask):
    """The tokens each text is read as, cut at the model's length as embedding cuts it."""

    name = endpoint = batch_kind = "tokenize"
    about = "The tokens each text is embedded as (ids, strings, character spans), cut at the model's length."
    Request, Response = TokenizeRequest, TokenizeResponse

    def example(self, x: Any, where: str) -> Text:
        return Text(x)

    def from_request(self, body: TokenizeRequest, limits) -> list[Text]:
        limits.check_texts(body.texts, "texts")
        return [Text(t, Options(prompt_name=body.prompt_name)) for t in body.texts]

    def predict(self, embedder: Embedder, examples: list[Text]) -> list[dict]:
        out = []
        for x in examples:
            prompt = embedder.settings.resolve_prompt(None, x.options.prompt_name) or ""
            e = embedder.tokenizer.encode(prompt + x.text, max_length=embedder.max_length)
            tokens = [
                {"id": i, "token": t, "start": s, "end": end, "special": bool(sp)}
                for i, t, (s, end), sp in zip(e.ids, e.tokens, e.offsets, e.special_tokens_mask, strict=True)
            ]
            out.append({"tokens": tokens, "truncated": bool(e.overflowing)})
        return out

    def respond(self, results: list[dict]) -> dict:
        return {"tokens": [r["tokens"] for r in results], "truncated": [r["truncated"] for r in results]}


# -- /v1/search ------------------------------------------------------------------------------------------
@dataclass
class SearchSettings:
    index: str | None = None  # an index built with the served model (`bertforge index`)


class SearchRequest(Request):
    model_config = Request.model_config | {"json_schema_extra": {"examples": [{"queries": ["a moving film"], "k": 5}]}}
    queries: list[str] = Field(min_length=1, description="Query texts (at most --max-texts).")
    k: int = Field(10, ge=1, le=1000, description="Documents per query.")
    prompt_name: str | None = Field(None, description="One of the model's prompts, put before each query.")


class SearchHit(BaseModel):
    id: str
    score: float = Field(description="Cosine similarity of the query and the document's best window.")
    start: int = Field(description="That window's characters in the document: [start, end).")
    end: int


class SearchResponse(BaseModel):
    results: list[list[SearchHit]] = Field(description="Each query's documents, best first, each once.")


class SearchTask(EncoderTask):
    """Semantic search over the index the server was started with (``--index``)."""

    name = endpoint = batch_kind = "search"
    about = "The documents of the server's index (--index) nearest each query, each once, by its best window."
    needs = "index"  # served only when the server is given one
    Settings = SearchSettings
    Request, Response = SearchRequest, SearchResponse

    def open(self, md) -> None:
        from ..search import Index

        self.index = Index(self.settings.index)
        self.index.check_model(md)

    def example(self, x: Any, where: str) -> Text:
        return Text(x)

    def from_request(self, body: SearchRequest, limits) -> list[Text]:
        limits.check_texts(body.queries, "queries")
        return [Text(q, Options(prompt_name=body.prompt_name, normalize=True), body.k) for q in body.queries]

    def predict(self, embedder: Embedder, examples: list[Text]) -> list[list[dict]]:
        found = embed_grouped(embedder, examples, self.max_tokens)
        out = []
        for e in found:
            (hits,) = self.index.search(e.vector[None, :], e.extra)
            out.append([{"id": h.id, "score": h.score, "start": h.start, "end": h.end} for h in hits])
        return out

    def respond(self, results: list[list[dict]]) -> dict:
        return {"results": list(results)}
