"""Commands for retrieval training and reranking: order documents with a cross-encoder, mine hard negatives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import BertforgeError
from .common import Device, Model, Precision, app, count


@app.command()
def rerank(
    model: Model,
    query: Annotated[str, typer.Option("--query", "-q", help="The query.")],
    input: Annotated[
        Path, typer.Option("--input", "-i", dir_okay=False, help="Documents: JSONL/CSV/TSV with a text column.")
    ],
    top_n: Annotated[int | None, typer.Option("--top-n", "-k", min=1, help="Results to print (default: all).")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the results as JSONL (index, id, score, text).")
    ] = None,
    id_column: Annotated[str, typer.Option(help="The documents' id column (default: line numbers if absent).")] = "id",
    text_column: Annotated[str, typer.Option(help="The documents' text column.")] = "text",
    precision: Precision = "fp32",
    device: Device = None,
) -> None:
    """Order documents by a cross-encoder's relevance to a query, most relevant first.

    The model: a reranker fine-tuned with `bertforge finetune rerank`, or a transformers sequence
    classifier with one output (cross-encoder/ms-marco-*). Scores are the sigmoid of its logit.
    """
    from ..outputs import atomic_text, check_output
    from ..rerank import Reranker
    from ..search import read_corpus

    if output is not None:
        check_output(output, input)
    ids, texts = read_corpus(input, id_column, text_column)
    if not query.strip():
        raise BertforgeError("--query is empty")
    results = Reranker(model, device, precision)(query, texts, top_n)
    rows = [{"index": r["index"], "id": ids[r["index"]], "score": round(r["relevance_score"], 6),
             "text": texts[r["index"]]} for r in results]  # fmt: skip
    if output is not None:
        atomic_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        typer.echo(f"wrote {output} ({count(len(rows), 'result')})")
        return
    for r in rows:
        typer.echo(f"{r['score']:.4f}  {r['id']}  {r['text']}")


@app.command("mine-negatives")
def mine_negatives(
    model: Model,
    input: Annotated[
        Path, typer.Option("--input", "-i", dir_okay=False, help="(anchor, positive) pairs: JSONL/CSV/TSV.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="JSONL triplets (anchor, positive, negative) for finetune.")
    ],
    corpus: Annotated[
        Path | None,
        typer.Option("--corpus", dir_okay=False, help="More candidate documents (a text column) beside the positives."),
    ] = None,
    anchor_column: Annotated[str | None, typer.Option(help="Default: anchor, else the first column.")] = None,
    positive_column: Annotated[str | None, typer.Option(help="Default: positive, else the second column.")] = None,
    num_negatives: Annotated[int, typer.Option(min=1, help="Negatives per (anchor, positive) pair.")] = 3,
    range_min: Annotated[
        int, typer.Option(min=0, help="Skip the best N candidates (likely unlabelled positives).")
    ] = 0,
    range_max: Annotated[
        int | None, typer.Option(min=1, help="Draw from the best N candidates (default: just enough).")
    ] = None,
    margin: Annotated[
        float | None, typer.Option(help="A negative's cosine must be below the positive's by this much.")
    ] = None,
    relative_margin: Annotated[
        float | None, typer.Option(help="... or below the positive's times (1 - this), e.g. 0.05.")
    ] = None,
    max_score: Annotated[float | None, typer.Option(help="Rule out candidates with a higher cosine.")] = None,
    min_score: Annotated[float | None, typer.Option(help="Rule out candidates with a lower cosine.")] = None,
    sampling: Annotated[str, typer.Option(help="top (the hardest) | random (among those left).")] = "top",
    seed: Annotated[int, typer.Option(help="Seeds --sampling random.")] = 0,
    device: Device = None,
) -> None:
    """Mine hard negatives for (anchor, positive) pairs with a model's embeddings: triplets for
    `bertforge finetune embed` (or `finetune rerank`), as sentence-transformers' mine_hard_negatives."""
    from ..data import tables
    from ..infer import Embedder
    from ..mining import MineSettings, mine_hard_negatives
    from ..outputs import atomic_text, check_output
    from ..search import read_corpus

    check_output(output, input)
    records = tables.read_records(input)
    names = list(records[0].fields)
    if len(names) < 2 and not (anchor_column and positive_column):
        raise BertforgeError(f"{input}: needs an anchor and a positive column (columns: {', '.join(names)})")
    a = anchor_column or ("anchor" if "anchor" in names else names[0])
    p = positive_column or ("positive" if "positive" in names else names[1])
    anchors, positives = tables.texts(records, a, input), tables.texts(records, p, input)
    extra = read_corpus(corpus)[1] if corpus is not None else None
    settings = MineSettings(
        num_negatives, range_min, range_max, margin, relative_margin, max_score, min_score, sampling, seed
    )
    embedder = Embedder.from_pretrained(model, device)
    triplets, stats = mine_hard_negatives(embedder, anchors, positives, extra, settings, progress=True)
    lines = [json.dumps({"anchor": x, "positive": y, "negative": z}, ensure_ascii=False) for x, y, z in triplets]
    atomic_text(output, "".join(line + "\n" for line in lines))
    typer.echo(
        f"wrote {output} ({stats['triplets']:,} of {stats['possible']:,} triplets for {stats['queries']:,} anchors, "
        f"{stats['corpus']:,} candidates; positive - negative cosine {stats['mean_margin']:.4f} on average)"
    )
