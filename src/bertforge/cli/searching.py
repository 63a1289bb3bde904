"""Semantic search from the command line: ``index`` a corpus once, ``search`` it with queries."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import BertforgeError
from .common import Model, Precision, app, read_texts


@app.command()
def index(
    model: Model,
    input: Annotated[
        Path, typer.Option("--input", "-i", dir_okay=False, help="Corpus: JSONL/CSV/TSV with id and text columns.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory to write.")],
    dtype: Annotated[str, typer.Option(help="float32, or int8 (a quarter of the size).")] = "float32",
    backend: Annotated[
        str, typer.Option(help="exact (every score computed), or faiss (approximate: millions of vectors).")
    ] = "exact",
    faiss_spec: Annotated[
        str | None,
        typer.Option(help="The faiss index (index_factory string; default HNSW32, with int8 HNSW32,SQ8)."),
    ] = None,
    long_text: Annotated[
        str, typer.Option(help="Documents over --max-length: window (a vector a window) or cut.")
    ] = "window",
    max_length: Annotated[
        int | None, typer.Option(min=8, help="Tokens a window (default: the model's length).")
    ] = None,
    stride: Annotated[
        int | None, typer.Option(min=0, help="Tokens windows overlap by (default: a quarter of --max-length).")
    ] = None,
    id_column: Annotated[str, typer.Option(help="The documents' id column (default: line numbers if absent).")] = "id",
    text_column: Annotated[str, typer.Option(help="The documents' text column.")] = "text",
    precision: Precision = "fp32",
) -> None:
    """Embed every document of a corpus into an on-disk index for `bertforge search` (long documents in
    overlapping windows, a vector each)."""
    from ..search import build_index

    path = build_index(
        model, input, out, dtype=dtype, backend=backend, faiss_spec=faiss_spec, long_text=long_text,
        max_length=max_length, stride=stride, id_column=id_column, text_column=text_column, precision=precision,
        progress=True,
    )  # fmt: skip
    meta = json.loads((path / "index.json").read_text(encoding="utf-8"))
    typer.echo(
        f"wrote {path} ({meta['documents']:,} documents in {meta['chunks']:,} windows, {meta['dim']} dims, {dtype}, "
        f"{backend})"
    )


@app.command()
def search(
    query: Annotated[list[str] | None, typer.Argument(help="Query text(s).")] = None,
    index: Annotated[Path, typer.Option("--index", help="An index written by `bertforge index`.")] = Path("index"),
    queries: Annotated[
        Path | None, typer.Option("--queries", dir_okay=False, help="A query a line; prints JSONL, one line each.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Default: the model the index was built with.")
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Hits per query.")] = 10,
    corpus: Annotated[
        Path | None, typer.Option("--corpus", dir_okay=False, help="The indexed corpus: print each hit's text too.")
    ] = None,
    precision: Precision = "fp32",
    rerank: Annotated[
        str | None,
        typer.Option("--rerank", help="A cross-encoder (reranker) that re-orders the top --candidates hits."),
    ] = None,
    candidates: Annotated[int, typer.Option("--candidates", min=1, help="Hits retrieved for --rerank.")] = 100,
) -> None:
    """Top-k documents of an index for each query (cosine similarity), each once, by its best window; with
    --rerank, the top --candidates re-ordered by a cross-encoder (texts from --corpus, default the one indexed)."""
    from ..search import Index
    from ..search import search as run

    if (queries is None) == (not query):
        raise BertforgeError("give query text(s) or --queries FILE (one of the two)")
    texts = read_texts(queries) if queries is not None else list(query or [])
    if model is None:
        model = Index(index).meta["model"]
    reorder = None
    if rerank is not None:  # (loaded first: a bad model is refused before the search)
        from ..rerank import Reranker, rerank_hits

        reorder = functools.partial(rerank_hits, Reranker(rerank, precision=precision))
    hits = run(index, model, texts, k=k, corpus=corpus, precision=precision, rerank=reorder, candidates=candidates)
    for text, row in zip(texts, hits, strict=True):
        if queries is not None:
            found = [{"id": h.id, "score": round(h.score, 6), "start": h.start, "end": h.end,
                      **({"text": h.text} if h.text is not None else {})} for h in row]  # fmt: skip
            typer.echo(json.dumps({"query": text, "hits": found}, ensure_ascii=False))
            continue
        if len(texts) > 1:
            typer.echo(f"# {text}")
        for h in row:
            typer.echo(f"{h.score:.4f}  {h.id}" + (f"  {h.text}" if h.text is not None else ""))
