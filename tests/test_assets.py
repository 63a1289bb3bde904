"""The asset registry: what each fetched asset holds, and fetch itself on a local archive (no network)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest

from bertforge import BertforgeError, assets
from bertforge.assets import REGISTRY, Asset, fetch, peoples_daily_bio, resolve_model_dir, resolve_path

REQUIRED = (
    "minilm-l6",
    "chinese-vocab",
    "rotten-tomatoes",
    "wiki-topics-en",
    "chinese-sentiment",
    "peoples-daily",
    "squad-sample",
    "aclsum",
    "stsb",
)


def _split_counts(asset_dir: Path) -> dict[str, int]:
    """The train/valid/test sizes SPLITS.txt promises."""
    text = (asset_dir / "SPLITS.txt").read_text()
    return {k: int(v) for k, v in re.findall(r"\b(train|valid|test) (\d+)", text)}


def test_registry_names_every_asset():
    assert set(REQUIRED) <= set(REGISTRY)
    for name, a in REGISTRY.items():
        assert a.name == name and a.kind in ("model", "vocab", "dataset")
        assert re.fullmatch(r"[0-9a-f]{64}", a.sha256)


def test_unknown_asset_is_an_error_listing_the_known_ones():
    with pytest.raises(BertforgeError) as e:
        fetch("imagenet")
    assert str(e.value).startswith("unknown asset 'imagenet' (known: minilm-l6, minilm-l3-paraphrase, chinese-vocab, ")


def test_minilm_is_a_model_directory(minilm_dir):
    assert resolve_model_dir("minilm-l6") == minilm_dir
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "modules.json"):
        assert (minilm_dir / name).is_file(), name
    assert json.loads((minilm_dir / "config.json").read_text())["hidden_size"] == 384
    assert (minilm_dir / ".complete").read_text().split()[0] == REGISTRY["minilm-l6"].sha256


def test_chinese_vocab_is_the_bert_base_chinese_vocab(chinese_vocab):
    assert chinese_vocab.name == "vocab.txt" and chinese_vocab.is_file()
    lines = chinese_vocab.read_text(encoding="utf-8").split("\n")  # not splitlines: entries hold U+2028 etc.
    assert lines.pop() == "" and len(lines) == 21128
    assert lines[0] == "[PAD]" and lines[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert "中" in lines and "##文" in lines


def test_rotten_tomatoes_splits(rotten_tomatoes):
    counts = _split_counts(fetch("rotten-tomatoes"))
    assert (
        {s: len(rows) for s, rows in rotten_tomatoes.items()} == counts == {"train": 10202, "valid": 1275, "test": 1275}
    )
    for rows in rotten_tomatoes.values():
        assert {r["label"] for r in rows} == {"fresh", "rotten"}
        assert all(r["text"].strip() == r["text"] and r["text"] for r in rows)
    seen = [r["text"] for rows in rotten_tomatoes.values() for r in rows]
    assert len(seen) == len(set(seen))  # duplicates removed, so no text is in two splits


def test_wiki_topics_splits(wiki_topics):
    root = fetch("wiki-topics-en")
    assert {s: len(rows) for s, rows in wiki_topics.items()} == _split_counts(root)
    topics = {r["topic"] for rows in wiki_topics.values() for r in rows}
    assert len(topics) == 11 and "Uncategorized" not in topics
    assert all(set(r) == {"title", "text", "topic"} for r in wiki_topics["test"])
    corpus = (root / "corpus.txt").read_text(encoding="utf-8")
    # every extract, Uncategorized ones included (a few extracts hold blank lines of their own)
    assert len(corpus.split("\n\n")) >= 10033
    assert all(r["text"] in corpus for r in wiki_topics["test"])


def test_chinese_sentiment_splits(chinese_sentiment, chinese_corpus):
    assert {s: len(rows) for s, rows in chinese_sentiment.items()} == _split_counts(chinese_corpus.parent)
    assert {r["label"] for r in chinese_sentiment["train"]} == {"positive", "negative"}
    texts = [r["text"] for rows in chinese_sentiment.values() for r in rows]
    assert len(texts) == len(set(texts)) == 17363
    assert len(chinese_corpus.read_text(encoding="utf-8").strip().split("\n\n")) == 17363


def test_other_datasets_have_their_files():
    pd = fetch("peoples-daily")
    first = (pd / "test.conll").read_text(encoding="utf-8").split("\n\n")[0].splitlines()
    assert all(len(line.split("\t")) == 2 for line in first)
    assert {line.split("\t")[1] for line in first} <= {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}
    squad = fetch("squad-sample")
    assert (
        squad.name == "squad.json" and json.loads(squad.read_text())["data"][0]["title"] == "University_of_Notre_Dame"
    )
    acl = fetch("aclsum")
    assert all((acl / f"{s}.jsonl").is_file() for s in ("train", "val", "test"))


def test_stsb_is_the_benchmark_in_its_official_splits():
    """Dev and test as the files name them (the package's loader swaps them): their first pairs are
    the benchmark's."""
    root = fetch("stsb")
    rows = {}
    for s in ("train", "valid", "test"):
        with (root / f"{s}.csv").open(encoding="utf-8", newline="") as f:
            rows[s] = list(csv.DictReader(f))
    assert {s: len(r) for s, r in rows.items()} == _split_counts(root) == {"train": 5749, "valid": 1500, "test": 1379}
    for split in rows.values():
        assert all(set(r) == {"sentence1", "sentence2", "score"} and r["sentence1"] and r["sentence2"] for r in split)
        assert all(0 <= float(r["score"]) <= 5 for r in split)
    firsts = [(r[0]["sentence1"], r[0]["sentence2"], float(r[0]["score"])) for r in rows.values()]
    assert firsts == [
        ("A plane is taking off.", "An air plane is taking off.", 5.0),
        ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0),
        ("A girl is styling her hair.", "A girl is brushing her hair.", 2.5),
    ]


def test_peoples_daily_bio_merges_surname_and_given_name():
    chars, tags = peoples_daily_bio("江/nr  泽民/nr  在/p  北京/ns  人民大会堂/nt  讲话/v  。/w")
    assert "".join(chars) == "江泽民在北京人民大会堂讲话。"
    assert tags == [
        "B-PER",
        "I-PER",
        "I-PER",
        "O",
        "B-LOC",
        "I-LOC",
        "B-ORG",
        "I-ORG",
        "I-ORG",
        "I-ORG",
        "I-ORG",
        "O",
        "O",
        "O",
    ]
    chars, tags = peoples_daily_bio("张/nr  和/c  李/nr")  # two people: a word in between
    assert tags == ["B-PER", "O", "B-PER"]


def test_split_is_seeded_and_covers_everything():
    a = assets._split(list(range(1000)))
    assert a == assets._split(list(range(1000)))
    assert [len(a[s]) for s in ("train", "valid", "test")] == [800, 100, 100]
    assert sorted(a["train"] + a["valid"] + a["test"]) == list(range(1000))
    assert a["train"][:5] != list(range(5))


def test_resolve_path_errors(tmp_path):
    with pytest.raises(BertforgeError, match="nothing-here: no such file or directory, and not a registry name"):
        resolve_path("nothing-here")
    with pytest.raises(BertforgeError, match=f"{tmp_path}: not a model directory \\(no config.json\\)"):
        resolve_model_dir(tmp_path)


def test_describe_lists_every_asset_and_its_state(minilm_dir):
    table = assets.describe()
    rows = {line.split()[0]: line.split()[2] for line in table.splitlines()}
    assert set(rows) == set(REGISTRY)
    assert rows["minilm-l6"] == "fetched"


# -- fetch on a local archive -----------------------------------------------------------------------
@pytest.fixture
def fake_asset(tmp_path, monkeypatch):
    """A registry entry whose verified archive is already in $BERTFORGE_HOME/downloads: fetch
    unpacks and prepares it without pip. Returns (name, calls to prepare)."""
    home = tmp_path / "home"
    (home / "downloads").mkdir(parents=True)
    archive = home / "downloads" / "fake-0.1-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("fake/data/a.txt", "alpha\n")
        z.writestr("fake/data/b.txt", "beta\n")
        z.writestr("fake/other.txt", "not wanted\n")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    calls = []

    def prepare(src: Path, out: Path) -> None:
        calls.append(src)
        for p in sorted((src / "fake" / "data").iterdir()):
            (out / p.name).write_text(p.read_text().upper())

    monkeypatch.setenv("BERTFORGE_HOME", str(home))
    entries = {
        "fake": Asset(
            "fake", "dataset", "fake==0.1", archive.name, sha, ("fake/data/",), "MIT", "a fake data set", prepare
        ),
        "fake-file": Asset(
            "fake-file",
            "dataset",
            "fake==0.1",
            archive.name,
            sha,
            ("fake/data/a.txt",),
            "MIT",
            "one file",
            prepare,
            "A.TXT",
        ),
        "fake-missing": Asset(
            "fake-missing", "dataset", "fake==0.1", archive.name, sha, ("fake/nothere.txt",), "MIT", "broken", prepare
        ),
    }
    monkeypatch.setattr(assets, "REGISTRY", {**REGISTRY, **entries})
    return home, calls


def test_fetch_unpacks_prepares_and_marks_complete(fake_asset):
    home, calls = fake_asset
    out = fetch("fake", quiet=True)
    assert out == home / "assets" / "fake"
    assert (out / "a.txt").read_text() == "ALPHA\n" and (out / "b.txt").read_text() == "BETA\n"
    assert not (out / "other.txt").exists()
    assert "from PyPI fake==0.1" in (out / "SOURCE.txt").read_text()
    assert (out / ".complete").read_text().split()[0] == assets.REGISTRY["fake"].sha256
    assert fetch("fake", quiet=True) == out and len(calls) == 1  # the second fetch reuses it
    (out / ".complete").unlink()
    assert fetch("fake", quiet=True) == out and len(calls) == 2  # an incomplete asset is prepared again
    assert not [p for p in (home / "assets").iterdir() if p.name.startswith(".")]  # no staging left


def test_fetch_returns_the_entry_file(fake_asset):
    home, _ = fake_asset
    assert fetch("fake-file", quiet=True) == home / "assets" / "fake-file" / "A.TXT"
    assert resolve_path("fake-file") == home / "assets" / "fake-file" / "A.TXT"


def test_fetch_of_an_archive_without_the_member_is_an_error(fake_asset):
    home, _ = fake_asset
    with pytest.raises(BertforgeError, match="fake-0.1-py3-none-any.whl: does not contain fake/nothere.txt"):
        fetch("fake-missing", quiet=True)
    assert not (home / "assets" / "fake-missing").exists()
