"""Commands that use a fine-tuned model (or any encoder): evaluate, predict, summarize, serve, export."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..errors import BertforgeError, missing_extra
from .args import Deferred, build, option, settings_options, task_settings, typed
from .common import BATCH_BUDGET, Compile, Device, Model, Precision, Runtime, app, count


def _inference_options() -> list:
    """What evaluate and predict share: how to run the model, and the task settings they may override."""
    from ..tasks import TASKS

    return [
        typed("precision", Precision, "fp32"),
        typed("runtime", Runtime, "torch"),
        typed("compile", Compile, False),
        typed("device", Device, None),
        *settings_options(TASKS.values(), "predict"),
    ]


COLUMNS = {"text_column": (None, "Default: as in training."), "text_pair_column": (None, None)}


def _file_options(
    text_column: str | None,
    text_pair_column: str | None,
    precision: str,
    runtime: str,
    compile: bool,
    device: str | None,
    **settings,
) -> dict:
    """evaluate_file's and predict_file's keywords from the options evaluate and predict share."""
    return {
        "precision": precision,
        "runtime": runtime,
        "compile": compile,
        "device": device,
        "text_column": text_column,
        "text_pair_column": text_pair_column,
        "extra": task_settings(None, settings),
    }


@app.command(cls=Deferred)
def evaluate() -> None:
    """Score a model on labelled data: the task's metrics (and a confusion matrix).

    qa: SQuAD exact match and F1 (v2.0: also HasAns / NoAns); extsum: ROUGE-1/2/L F1 against
    `summary` and sentence precision/recall/F1 against `labels`, where the data has them; rerank:
    MRR@10 and NDCG@10 of each query's rows. An encoder (minilm-l6, a sentence-transformers directory,
    `finetune embed`'s): Pearson and Spearman of cosine on scored pairs (sentence1, sentence2, score),
    or, given a directory of corpus.jsonl ({"id", "text"}) and queries.jsonl ({"id", "text",
    "relevant": [ids]}), NDCG@10, MRR@10, MAP@100 and recall@1/10/100 of retrieving the corpus.
    """


def _evaluate(
    model: str,
    data: Path,
    output: Path | None,
    label_column: str | None,
    rerank: str | None,
    candidates: int,
    **options,
) -> None:
    from ..api import evaluate_file

    result = evaluate_file(
        model, data, output, label_column=label_column, rerank=rerank, candidates=candidates, **_file_options(**options)
    )
    for k, v in result.items():
        if isinstance(v, float):
            typer.echo(f"{k:18} {v:.4f}")
    if "confusion_matrix" in result:
        labels = result["labels"]
        w = max(8, *(len(lab) for lab in labels))
        typer.echo("\nconfusion matrix (rows: gold, columns: predicted)")
        typer.echo(" " * w + "".join(f"{lab[:w]:>{w + 1}}" for lab in labels))
        for lab, row in zip(labels, result["confusion_matrix"], strict=True):
            typer.echo(f"{lab[:w]:{w}}" + "".join(f"{v:>{w + 1}}" for v in row))
    if output:
        typer.echo(f"wrote {output}")


def _evaluate_command():
    params = [
        typed("model", Model),
        option("data", Path, help="Labelled file in the task's format (an encoder: also a retrieval set's directory)."),
        option("output", Path | None, None, "Write the metrics as JSON here."),
        option("text_column", str | None, None, "Default: as in training."),
        option("text_pair_column", str | None, None),
        option("label_column", str | None, None),
        option("rerank", str | None, None, "A retrieval set: a cross-encoder re-orders each query's top --candidates."),
        option("candidates", int, 100, "Hits per query --rerank re-orders.", min=1),
        *_inference_options(),
    ]
    return build(_evaluate, params, evaluate.__doc__)


@app.command(cls=Deferred)
def predict() -> None:
    """Predict with a fine-tuned model: labels and probabilities, tags with their spans, answers
    (qa: answer, score, start, end in the context's characters) or summaries (extsum: summary, selected)."""


def _predict(model: str, input: Path, output: Path, **options) -> None:
    from ..api import predict_file

    n = predict_file(model, input, output, label_column=None, **_file_options(**options))
    typer.echo(f"wrote {output} ({count(n, 'prediction')})")


def _predict_command():
    params = [
        typed("model", Model),
        option(
            "input",
            Path,
            help="Texts in the task's format (labels not needed).",
            dir_okay=False,
            param_decls=("--input", "-i"),
        ),
        option(
            "output",
            Path,
            help="JSONL: the input's fields plus the prediction (an input field of the same name kept as input_NAME).",
            param_decls=("--output", "-o"),
        ),
        option("text_column", str | None, None, "Default: as in training."),
        option("text_pair_column", str | None, None),
        *_inference_options(),
    ]
    return build(_predict, params, predict.__doc__)


Deferred.builders.update(evaluate=_evaluate_command, predict=_predict_command)


@app.command()
def summarize(
    input: Annotated[
        Path, typer.Option("--input", "-i", dir_okay=False, help="JSONL documents: 'sentences' (a list) or 'text'.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="JSONL: the input's fields plus summary and selected.")
    ],
    model: Model = "minilm-l6",
    method: Annotated[str, typer.Option(help="centroid | cluster | lead")] = "centroid",
    top_k: Annotated[int | None, typer.Option("--top-k", help="Sentences per summary (default 3).")] = None,
    max_words: Annotated[
        int | None,
        typer.Option(
            "--max-words", help="Length budget in words (a CJK character is a word), instead of or with --top-k."
        ),
    ] = None,
    trigram_blocking: Annotated[
        bool,
        typer.Option("--trigram-blocking/--no-trigram-blocking", help="centroid: skip sentences repeating a trigram."),
    ] = True,
    text_column: Annotated[str, typer.Option("--text-column", help="Column (JSONL field) holding the text.")] = "text",
    device: Device = None,
) -> None:
    """Summarise documents without training: the sentences closest to the document's centroid in
    sentence-embedding space, one sentence per k-means cluster, or the first ones (Lead-k).

    Prints ROUGE-1/2/L F1 (against `summary`) and sentence F1 (against `labels`) when the input has them.
    """
    import json

    from ..api import note_clashes, with_prediction
    from ..data import tables
    from ..infer import Embedder
    from ..modeldir import ModelDir
    from ..outputs import atomic_open, check_output
    from ..summary import read_documents, score_summaries, summarize_untrained
    from ..tasks import EncoderTask, for_model

    check_output(output, input)
    if method != "lead" and not isinstance(for_model(ModelDir.open(model), "summarize"), EncoderTask):
        # a fine-tuned summariser: its trained scorer would sit unused
        raise BertforgeError(
            f"{model}: is a fine-tuned summariser; summarize runs the untrained methods: "
            f"use `bertforge predict --model {model}` (or `evaluate`)"
        )
    documents = read_documents(input, text_column)
    if top_k is None:
        top_k = None if max_words is not None else 3
    if method == "lead" and device is not None:
        from ..device import pick_device

        pick_device(device)  # checked even where Lead-k reads no model
    embedder = Embedder.from_pretrained(model, device) if method != "lead" else None
    preds = summarize_untrained(embedder, documents, method, top_k, max_words, trigram_blocking, progress=True)
    clashes: set[str] = set()
    with atomic_open(output) as f:
        for r, p in zip(tables.read_records(input), preds, strict=True):
            f.write(json.dumps(with_prediction(r.fields, p, clashes), ensure_ascii=False) + "\n")
    note_clashes(input, clashes)
    for k, v in score_summaries(preds, documents).items():
        typer.echo(f"{k:18} {v:.4f}")
    typer.echo(f"wrote {output} ({count(len(preds), 'summary', 'summaries')})")


@app.command()
def serve(
    model: Model,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free one, printed at start).")] = 8000,
    precision: Precision = "fp32",
    runtime: Runtime = "torch",
    compile: Compile = False,
    max_batch_tokens: Annotated[int | None, typer.Option("--max-batch-tokens", help=BATCH_BUDGET)] = None,
    device: Device = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="BERTFORGE_API_KEY",
            help="Require 'Authorization: Bearer KEY' on /v1/* and /metrics (or set BERTFORGE_API_KEY: not shown by "
            "ps).",
        ),
    ] = None,
    max_texts: Annotated[
        int, typer.Option("--max-texts", help="Texts (pairs, questions, documents) per request; more: 413.")
    ] = 256,
    max_chars: Annotated[int, typer.Option("--max-chars", help="Characters per text; more: 413.")] = 20_000,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Request body size in MiB; more: 413.")] = 4.0,
    batch_window_ms: Annotated[
        float,
        typer.Option(
            "--batch-window-ms",
            help="How long an idle server waits for concurrent requests to batch together (only once requests have "
            "come together: a lone client's wait once at most, right after a burst).",
        ),
    ] = 5.0,
    max_queue: Annotated[
        int | None,
        typer.Option("--max-queue", help="Requests waiting for the model, at most; more: 429 with Retry-After."),
    ] = None,
    max_queue_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-queue-tokens",
            help="Tokens (of the texts) waiting for the model, at most; more: 429 with Retry-After. A request over "
            "the whole budget still runs when nothing waits.",
        ),
    ] = None,
    request_timeout: Annotated[
        float | None,
        typer.Option(
            "--request-timeout",
            help="Seconds a request may take: 503 if no model call started on it by then, 504 if its call ran past.",
        ),
    ] = None,
    index: Annotated[
        Path | None,
        typer.Option("--index", help="An index built with this model (`bertforge index`): serve /v1/search over it."),
    ] = None,
) -> None:
    """Serve a model over HTTP (FastAPI): the endpoints its task supports, /health, /metrics, /docs.

    An encoder (minilm-l6) serves /v1/embed, /v1/similarity, /v1/summarize, OpenAI's /v1/embeddings,
    /v1/tokenize and, with --index, /v1/search; a fine-tuned model
    serves /v1/classify, /v1/tag, /v1/qa or /v1/summarize. Concurrent requests are batched into one
    model call; each answer's x-queue-time, x-tokenization-time, x-inference-time and x-compute-tokens
    headers say where its time went. A client that hangs up has its queued work dropped. SIGINT or
    SIGTERM stops it after the requests in flight are answered (new ones are refused); a second one, at
    once. SIGHUP loads the model again without dropping requests.
    """
    try:
        from ..serve import serve as run
    except ImportError as e:
        raise missing_extra(f"serve ({e})", "serve") from None

    if api_key is None and os.environ.get("BERTFORGE_API_KEY") == "":  # click reads an empty variable as unset
        api_key = ""  # refused below: a deploy whose secret went missing must not serve openly
    if not max_body_mb > 0:
        raise BertforgeError(f"--max-body-mb must be above 0, not {max_body_mb}")
    run(
        model,
        host=host,
        port=port,
        echo=typer.echo,
        device=device,
        precision=precision,
        runtime=runtime,
        max_batch_tokens=max_batch_tokens,
        api_key=api_key,
        max_texts=max_texts,
        max_chars=max_chars,
        max_body_bytes=int(max_body_mb * 2**20),
        batch_window_ms=batch_window_ms,
        compile=compile,
        max_queue=max_queue,
        max_queue_tokens=max_queue_tokens,
        request_timeout=request_timeout,
        index=index,
    )


export_app = typer.Typer(help="Export a model to another format.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("onnx")
def export_onnx(
    model: Model,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="A FILE.onnx, or else a directory DIR (made if missing) for DIR/model.onnx (DIR/model.int8.onnx with "
            "--int8). Default: MODEL.",
        ),
    ] = None,
    int8: Annotated[
        bool, typer.Option("--int8", help="Quantize the linear layers to int8 (onnxruntime dynamic quantization).")
    ] = False,
) -> None:
    """Export an encoder, or a classify, pair, regress, tag or qa model (not extsum), to ONNX with
    dynamic batch and length.

    `--runtime onnx` in embed, evaluate, predict and serve then runs it through onnxruntime; they
    read MODEL/model.onnx (model.int8.onnx at --precision int8), so --out elsewhere is for shipping
    the graph to other ONNX runtimes. The graph records the weights it came from: after the model
    changes, they ask for a new export.
    """
    from ..checkpoint import load_pretrained
    from ..modeldir import ModelDir
    from ..onnx import EXPORTABLE_HEADS
    from ..onnx import export_onnx as export
    from ..outputs import check_out_dir
    from ..tasks import TASKS, saved_spec

    md = ModelDir.open(model)
    directory = md.path
    spec = saved_spec(md)  # bertforge's settings, or a Hugging Face task architecture
    head = TASKS[spec.task].head if spec is not None else None
    if head not in EXPORTABLE_HEADS:
        can = ", ".join(["encoder", *(t for t, task in TASKS.items() if task.head in EXPORTABLE_HEADS)])
        article = "an" if spec.task[0] in "aeiou" else "a"
        raise BertforgeError(f"{directory}: {article} {spec.task} model cannot be exported to ONNX ({can} can)")
    precision = "int8" if int8 else "fp32"
    out = out or directory
    if out.suffix.lower() != ".onnx":  # a directory (made if missing), never a file of another kind overwritten
        out = check_out_dir(out) / md.onnx_path(precision).name
    path = export(load_pretrained(directory, head=head), out, int8=int8, source=directory)
    typer.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
