"""Shared fixtures: registry assets, the tiny fixtures in tests/assets, random Hugging Face models.

Assets come through ``bertforge.assets.fetch``, which downloads what is missing: a test that needs an
asset fails when it cannot be had, it is never skipped.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import bertforge
from bertforge import assets
from bertforge.assets import fetch
from bertforge.train import TrainArgs

ASSETS = Path(__file__).parent / "assets"
BERTFORGE = Path(sys.executable).parent / "bertforge"

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

# A tiny encoder: big enough for every code path (several heads, token types, padding), small enough
# that building and running one costs milliseconds.
TINY = dict(
    vocab_size=300,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)


# -- assets -----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return fetch("minilm-l6", quiet=True)


@pytest.fixture(scope="session")
def chinese_vocab() -> Path:
    return fetch("chinese-vocab", quiet=True)


@pytest.fixture(scope="session")
def rotten_tomatoes() -> dict[str, list[dict[str, str]]]:
    """split -> rows (text, label)."""
    root = fetch("rotten-tomatoes", quiet=True)
    return {s: _read_csv(root / f"{s}.csv") for s in ("train", "valid", "test")}


@pytest.fixture(scope="session")
def wiki_topics() -> dict[str, list[dict[str, str]]]:
    """split -> records (title, text, topic)."""
    root = fetch("wiki-topics-en", quiet=True)
    return {s: _read_jsonl(root / f"{s}.jsonl") for s in ("train", "valid", "test")}


@pytest.fixture(scope="session")
def chinese_sentiment() -> dict[str, list[dict[str, str]]]:
    root = fetch("chinese-sentiment", quiet=True)
    return {s: _read_csv(root / f"{s}.csv") for s in ("train", "valid", "test")}


@pytest.fixture(scope="session")
def chinese_corpus() -> Path:
    return fetch("chinese-sentiment", quiet=True) / "corpus.txt"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- tiny fixtures in tests/assets ------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_vocab() -> Path:
    """132 uncased WordPiece entries: the specials, punctuation, digits, letters, ##letters, common words."""
    return ASSETS / "vocab.txt"


@pytest.fixture(scope="session")
def tiny_corpus() -> Path:
    """24 plain English sentences, with capitals, numbers and a few rare words."""
    return ASSETS / "corpus.txt"


# -- random models and batches ----------------------------------------------------------------------
def perturb(model: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Add N(0, scale) noise to every parameter, so that biases are non-zero, LayerNorms are not the
    identity and attention is far from uniform: a wrong name or a transposed weight then shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.fixture
def hf_model() -> Callable[..., torch.nn.Module]:
    """Factory: a transformers model (class name, default BertModel) on the tiny config with
    ``overrides``, randomly initialised from ``seed`` and perturbed, in eval mode."""

    def make(cls_name: str = "BertModel", seed: int = 0, attn: str = "sdpa", **overrides) -> torch.nn.Module:
        config = transformers.BertConfig(**{**TINY, **overrides}, attn_implementation=attn)
        torch.manual_seed(seed)
        model = getattr(transformers, cls_name)(config)
        return perturb(model, seed).eval()

    return make


@pytest.fixture
def our_model() -> Callable[..., torch.nn.Module]:
    """Factory: our BertModel (head=None) or BertWithHead on the tiny config, perturbed, in eval mode."""

    def make(head: str | None = None, seed: int = 0, **overrides) -> torch.nn.Module:
        config = bertforge.BertConfig(**{**TINY, **overrides})
        torch.manual_seed(seed)
        model = bertforge.BertModel(config) if head is None else bertforge.BertWithHead(config, head)
        return perturb(model, seed).eval()

    return make


def random_batch(
    lengths: list[int],
    vocab_size: int = TINY["vocab_size"],
    type_vocab_size: int = 2,
    seed: int = 0,
    side: str = "right",
    total: int | None = None,
) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, token_type_ids for sequences of the given real lengths, padded (with
    id 0, type 0) to ``total`` (default: the longest) on the given side. Token types are random
    at real positions; ids avoid 0 so that padding is recognisable."""
    g = torch.Generator().manual_seed(seed)
    T = total or max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        where = slice(0, n) if side == "right" else slice(T - n, T)
        ids[i, where] = torch.randint(1, vocab_size, (n,), generator=g)
        types[i, where] = torch.randint(0, type_vocab_size, (n,), generator=g)
        mask[i, where] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@pytest.fixture
def make_batch() -> Callable[..., dict[str, torch.Tensor]]:
    return random_batch


# -- the command line -----------------------------------------------------------------------------------
def run_all(*commands: list, ok: bool = True) -> list[subprocess.CompletedProcess]:
    """Run several ``bertforge`` command lines at once (each mostly waits on imports) and return
    their results in order; with ``ok`` each must exit 0."""
    env = {**os.environ, "BERTFORGE_HOME": str(assets.home())}
    procs = [
        subprocess.Popen(
            [str(BERTFORGE), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for args in commands
    ]
    results = []
    for args, p in zip(commands, procs, strict=True):
        out, err = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(args, p.returncode, out, err))
        if ok:
            assert p.returncode == 0, err
    return results


def assert_one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    """Exit 2 and one line on stderr, ``bertforge: error: ...`` holding ``message``; no traceback."""
    assert proc.returncode == 2, (proc.args, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bertforge: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny BERT with the real uncased vocabulary (minilm-l6's): fast to fine-tune."""
    tok = bertforge.Tokenizer.from_pretrained(fetch("minilm-l6"))
    torch.manual_seed(0)
    model = bertforge.BertModel(
        bertforge.BertConfig.preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=128)
    )
    return bertforge.save_pretrained(model, tmp_path_factory.mktemp("tiny"), tokenizer=tok)


# -- small fine-tuning runs: a synthetic sentiment task a tiny BERT learns in seconds -----------------
POS = ["good", "great", "wonderful", "excellent", "superb", "lovely"]
NEG = ["bad", "awful", "terrible", "boring", "dreadful", "poor"]
FILLER = "the a film movie plot story actors scene music script was is and it this very quite".split()


def sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rnd.choice(["positive", "negative"])
        words = rnd.sample(FILLER, 6) + [rnd.choice(POS if label == "positive" else NEG)]
        rnd.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, header: list[str], rows: list) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def quick_args(out: Path, steps: int = 60, **kw) -> TrainArgs:
    return TrainArgs(
        out=out, max_steps=steps, batch_size=16, lr=2e-3, warmup=0.1, eval_every=steps, progress=False, **kw
    )


@pytest.fixture(scope="session")
def sentiment_model(tiny_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny BERT fine-tuned on 480 synthetic reviews, and 100 more to test it on."""
    from bertforge.api import finetune

    d = tmp_path_factory.mktemp("sentiment")
    train = write_csv(d / "train.csv", ["text", "label"], sentiment_rows(480, 0))
    test = write_csv(d / "test.csv", ["text", "label"], sentiment_rows(100, 1))
    metrics = finetune("classify", tiny_dir, train, d / "model", args=quick_args(d / "model" / "run", steps=90))
    assert metrics["accuracy"] > 0.9  # validation carved from train
    return d / "model", test


# -- a fine-tuned classifier for the precision and ONNX tests -----------------------------------
@pytest.fixture(scope="session")
def sentiment(tmp_path_factory) -> tuple[Path, Path]:
    """minilm-l6 fine-tuned briefly on rotten-tomatoes (enough for ~75% held-out accuracy)."""
    from bertforge.api import finetune
    from bertforge.tasks import TaskSpec
    from bertforge.train import TrainArgs

    data = fetch("rotten-tomatoes")
    out = tmp_path_factory.mktemp("rt") / "model"
    with (data / "train.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:1600]
    train = out.parent / "train.csv"
    with train.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["text", "label"])
        w.writeheader()
        w.writerows(rows)
    test = out.parent / "test.csv"
    with (data / "test.csv").open(encoding="utf-8") as f, test.open("w", newline="", encoding="utf-8") as g:
        w = csv.DictWriter(g, ["text", "label"])
        w.writeheader()
        w.writerows(list(csv.DictReader(f))[:600])
    args = TrainArgs(out=out / "run", max_steps=50, batch_size=32, lr=1e-4, eval_every=50, progress=False)
    finetune("classify", "minilm-l6", train, out, spec=TaskSpec("classify", max_length=128), args=args)
    return out, test


# -- for the device, precision and ONNX tests: each module gets its own copy to write graphs into --------
@pytest.fixture(scope="module")
def texts() -> list[str]:
    with (fetch("rotten-tomatoes") / "test.csv").open(encoding="utf-8") as f:
        return [r["text"] for r in csv.DictReader(f)][:200]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> Path:
    """A copy of minilm-l6 we may write ONNX graphs into."""
    d = tmp_path_factory.mktemp("minilm") / "minilm"
    shutil.copytree(fetch("minilm-l6"), d)
    return d


@pytest.fixture(scope="module")
def fp32_embeddings(minilm, texts) -> np.ndarray:
    from bertforge import Embedder

    return Embedder.from_pretrained(minilm)(texts)
