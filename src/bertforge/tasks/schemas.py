"""What the request and response bodies of every task share; each task declares its own beside its code.
They validate HTTP requests and are the server's OpenAPI docs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Request(BaseModel):
    """A request body: unknown fields are errors, not ignored."""

    model_config = ConfigDict(extra="forbid")


class Summary(BaseModel):
    summary: str
    selected: list[int] = Field(description="Indices of the chosen sentences, in document order.")
    scores: list[float] | None = Field(None, description="Each sentence's score.")


class SummarizeResponse(BaseModel):
    summaries: list[Summary]
