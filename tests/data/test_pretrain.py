"""Pretraining data: sentence splitting, masking, instance building, shards on disk, the reader, the CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bertforge.data import pretrain, sentences
from bertforge.data.corpus import word_continues
from bertforge.data.masking import MaskingRule, mask_tokens
from bertforge.data.pretrain import PretrainDataConfig, prepare
from bertforge.data.sentences import read_documents, split_sentences
from bertforge.data.shards import IGNORE_INDEX, PretrainShards
from bertforge.errors import BertforgeError
from bertforge.heads import IGNORE_INDEX as HEADS_IGNORE_INDEX
from bertforge.tokenizer import Tokenizer

ASSETS = Path(__file__).parents[1] / "assets"
CORPUS_EN = ASSETS / "corpus_en.txt"
CORPUS_ZH = ASSETS / "corpus_zh.txt"
VOCAB_EN = ASSETS / "vocab_en.txt"
VOCAB_ZH = ASSETS / "vocab_zh.txt"
SMALL = PretrainDataConfig(
    max_seq_len=64, dupe_factor=10, seed=1, eval_fraction=0.1, chunk_documents=4, max_predictions_per_seq=10
)


def run(tmp: Path, name: str, corpus=(CORPUS_EN,), vocab=VOCAB_EN, workers: int = 1, **changes) -> PretrainShards:
    config = PretrainDataConfig(**{**SMALL.__dict__, **changes})
    prepare(list(corpus), vocab, tmp / name, config, workers=workers, progress=False)
    return PretrainShards(tmp / name, "train")


def instances(shards: PretrainShards) -> list[dict[str, np.ndarray]]:
    return [shards[i] for i in range(len(shards))]


def originals(x: dict[str, np.ndarray]) -> np.ndarray:
    """The instance's tokens before masking."""
    ids = x["input_ids"].copy()
    if "masked_positions" in x:
        ids[x["masked_positions"]] = x["masked_labels"]
    return ids


def document_streams(corpus: Path, tok: Tokenizer, segment=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each document's token ids (sentences tokenized one by one, as the pipeline does) and, with a
    segmenter, its word-continuation flags."""
    streams = []
    for doc in read_documents(corpus):
        encs = tok.encode_batch(doc, add_special_tokens=False)
        ids = np.array([i for e in encs for i in e.ids])
        flags = np.array(
            [f for s, e in zip(doc, encs, strict=True) for f in word_continues(s, e.tokens, e.offsets, segment)]
        )
        streams.append((ids, flags))
    return streams


def find(segment: np.ndarray, stream: np.ndarray, start: int = 0) -> int:
    """Index of the first occurrence of ``segment`` in ``stream`` at or after ``start``; -1 if none."""
    if len(segment) > len(stream) - start:
        return -1
    windows = np.lib.stride_tricks.sliding_window_view(stream[start:], len(segment))
    hits = np.flatnonzero((windows == segment).all(axis=1))
    return start + int(hits[0]) if len(hits) else -1


def segments(x: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    ids = originals(x)
    b = int(np.argmax(x["token_type_ids"])) if x["token_type_ids"].any() else len(ids)
    return ids[1 : b - 1], ids[b:-1]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pretrain")


@pytest.fixture(scope="module")
def tok_en() -> Tokenizer:
    return Tokenizer.from_pretrained(VOCAB_EN)


@pytest.fixture(scope="module")
def en(tmp) -> PretrainShards:
    return run(tmp, "en")


@pytest.fixture(scope="module")
def jieba_segment():
    import jieba

    jieba.initialize()
    return jieba.tokenize


# -- sentences and documents ------------------------------------------------------------------------------


def test_documents_from_both_text_layouts(tmp):
    google = tmp / "google.txt"
    google.write_text("First sentence here.\nSecond one.\n\nOther document.\nIts end.\n", encoding="utf-8")
    paragraphs = tmp / "paragraphs.txt"
    paragraphs.write_text("First sentence here. Second one.\n\n\nOther document. Its end.", encoding="utf-8")
    expected = [["First sentence here.", "Second one."], ["Other document.", "Its end."]]
    assert list(read_documents(google)) == expected
    assert list(read_documents(paragraphs)) == expected


def test_jsonl_gives_the_same_shards_as_text(tmp):
    docs = list(read_documents(CORPUS_EN))
    jsonl = tmp / "corpus.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"text": " ".join(d), "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8"
    )
    assert list(read_documents(jsonl)) == docs
    a = run(tmp, "from-text", dupe_factor=1)
    b = run(tmp, "from-jsonl", corpus=(jsonl,), dupe_factor=1)
    assert len(a) == len(b) > 0
    for x, y in zip(instances(a), instances(b), strict=True):
        assert np.array_equal(x["input_ids"], y["input_ids"])
        assert np.array_equal(x["masked_positions"], y["masked_positions"])


def test_long_documents_are_read_in_pieces_with_the_same_result(tmp, monkeypatch):
    whole = run(tmp, "whole", dupe_factor=2)
    monkeypatch.setattr(sentences, "PIECE_SENTENCES", 2)  # every document split into pieces of 2 sentences
    monkeypatch.setattr("bertforge.data.corpus._TASK_PIECES", 3)  # and tokenized a few pieces at a time
    assert list(read_documents(CORPUS_EN)) == list(read_documents_unpatched(CORPUS_EN))
    pieces = run(tmp, "pieces", dupe_factor=2)
    assert pieces.manifest["corpus"] == whole.manifest["corpus"]
    assert shard_files(tmp / "pieces") == shard_files(tmp / "whole")


def read_documents_unpatched(path: Path) -> list[list[str]]:
    """Documents split on blank lines, independently of the reader under test."""
    text = path.read_text(encoding="utf-8")
    return [
        [s for line in block.split("\n") for s in split_sentences(line)]
        for block in text.split("\n\n")
        if block.strip()
    ]


# -- masking ------------------------------------------------------------------------------------------------
RULE = MaskingRule(mask_id=4, vocab_size=1000, special_ids=(0, 1, 2, 3, 4), prob=0.15, max_predictions=20)


def test_masking_statistics():
    rng = np.random.default_rng(0)
    kinds = np.zeros(3)
    for _ in range(3000):
        n = int(rng.integers(8, 200))
        ids = np.concatenate(([2], rng.integers(5, 1000, n - 2), [3]))
        out, pos, labels = mask_tokens(ids, RULE, rng)
        assert len(pos) == min(20, max(1, round(n * 0.15)))  # 15% of the sequence, up to the cap
        assert np.array_equal(labels, ids[pos]) and np.all(np.diff(pos) > 0)
        assert ids[0] == out[0] == 2 and ids[-1] == out[-1] == 3 and 0 not in pos and n - 1 not in pos
        unmasked = np.setdiff1d(np.arange(n), pos)
        assert np.array_equal(out[unmasked], ids[unmasked])
        is_mask = out[pos] == 4
        kept = out[pos] == ids[pos]
        kinds += [is_mask.sum(), kept.sum(), (~is_mask & ~kept).sum()]
        assert not np.isin(out[pos][~is_mask], RULE.special_ids).any()  # random replacements are never special
    share = kinds / kinds.sum()  # ~ 35,000 masked positions: 80/10/10 within 1.5 points
    assert abs(share[0] - 0.8) < 0.015 and abs(share[1] - 0.1) < 0.015 and abs(share[2] - 0.1) < 0.015


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(st.integers(0, 60), min_size=1, max_size=80),
    continues=st.lists(st.booleans(), min_size=80, max_size=80),
    whole_word=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_masking_properties(ids, continues, whole_word, seed):
    rule = MaskingRule(
        mask_id=4, vocab_size=61, special_ids=(0, 1, 2, 3, 4), prob=0.15, max_predictions=5, whole_word=whole_word
    )
    ids = np.array(ids)
    flags = np.array(continues[: len(ids)])
    out, pos, labels = mask_tokens(ids, rule, np.random.default_rng(seed), flags)
    special = np.isin(ids, rule.special_ids)
    assert not special[pos].any()
    assert np.array_equal(labels, ids[pos]) and len(np.unique(pos)) == len(pos)
    k = rule.num_to_predict(len(ids))
    assert len(pos) <= k
    if not whole_word:
        assert len(pos) == min(k, int((~special).sum()))
    else:  # a word is masked entirely or not at all
        masked = np.zeros(len(ids), dtype=bool)
        masked[pos] = True
        joined = flags[1:] & ~special[1:] & ~special[:-1]  # token i+1 belongs to token i's word
        assert np.array_equal(masked[1:][joined], masked[:-1][joined])


def test_ignore_index_matches_the_heads():
    assert IGNORE_INDEX == HEADS_IGNORE_INDEX == -100


# -- instances ----------------------------------------------------------------------------------------------
def test_static_masks_in_shards(en, tok_en):
    items = instances(en)
    assert len(items) > 500
    rule = en.rule
    kinds = np.zeros(3)
    for x in items:
        ids, orig, pos = x["input_ids"], originals(x), x["masked_positions"]
        assert len(pos) == rule.num_to_predict(len(ids))
        assert not np.isin(orig[pos], [tok_en.cls_id, tok_en.sep_id]).any()
        kinds += [(ids[pos] == tok_en.mask_id).sum(), (ids[pos] == orig[pos]).sum(), 0]
        kinds[2] += len(pos) - (ids[pos] == tok_en.mask_id).sum() - (ids[pos] == orig[pos]).sum()
    share = kinds / kinds.sum()
    assert abs(share[0] - 0.8) < 0.03 and abs(share[1] - 0.1) < 0.03 and abs(share[2] - 0.1) < 0.03


def test_layout_lengths_and_segment_b(en, tok_en):
    lengths = []
    for x in instances(en):
        ids, types = x["input_ids"], x["token_type_ids"]
        lengths.append(len(ids))
        seps = np.flatnonzero(ids == tok_en.sep_id)
        b = int(np.argmax(types))
        assert ids[0] == tok_en.cls_id and (ids == tok_en.cls_id).sum() == 1
        assert len(seps) == 2 and seps[1] == len(ids) - 1
        assert b == seps[0] + 1 and types[:b].sum() == 0 and types[b:].all()  # B starts right after the first [SEP]
        assert seps[0] >= 2 and len(ids) - b >= 2  # A and B hold at least one token each
    lengths = np.array(lengths)
    assert lengths.max() == 64  # never longer than max_seq_len, and full ones exist


def test_short_seq_prob_makes_shorter_instances(tmp):
    words = "the river bread train ship old small long".split()
    rng = np.random.default_rng(5)
    docs = [" ".join(" ".join(rng.choice(words, 3)).capitalize() + "." for _ in range(40)) for _ in range(10)]
    corpus = tmp / "short-sentences.txt"
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")

    def short_share(prob: float) -> float:
        shards = run(tmp, f"short-{prob}", corpus=(corpus,), short_seq_prob=prob, eval_fraction=0.0)
        lengths = np.array([len(x["input_ids"]) for x in instances(shards)])
        assert lengths.max() <= 64
        return float((lengths < 40).mean())

    assert short_share(0.5) > short_share(0.0) + 0.2


def test_nsp_balance_and_is_next_follows_a(en, tok_en):
    docs = [ids for ids, _ in document_streams(CORPUS_EN, tok_en)]
    labels = []
    for x in instances(en):
        a, b = segments(x)
        doc = docs[int(x["document"])]
        at = find(a, doc)
        assert at >= 0  # A is a stretch of its document
        if x["next_sentence_label"] == 0:
            assert find(b, doc, at + len(a)) >= 0  # IsNext: B is a later stretch of the same document
        else:
            assert find(b, doc) < 0  # random: B comes from another document
        labels.append(int(x["next_sentence_label"]))
    assert 0.45 < np.mean(labels) < 0.6  # 50/50, with Google's extra random ones for single-sentence chunks


def test_truncation_keeps_pairs_within_max(tmp, tok_en):
    words = "the lighthouse stood on a rocky point at the mouth of the harbour and the river begins".split()
    rng = np.random.default_rng(3)
    long_docs = ["\n".join(" ".join(rng.choice(words, 60)) + "." for _ in range(4)) for _ in range(6)]
    corpus = tmp / "long.txt"
    corpus.write_text("\n\n".join(long_docs) + "\n", encoding="utf-8")
    shards = run(tmp, "long", corpus=(corpus,), max_seq_len=32, short_seq_prob=0.0, eval_fraction=0.0)
    docs = [ids for ids, _ in document_streams(corpus, tok_en)]
    for x in instances(shards):
        a, b = segments(x)
        assert len(x["input_ids"]) == 32 and len(a) >= 1 and len(b) >= 1
        if x["next_sentence_label"] == 0:
            doc = docs[int(x["document"])]
            assert find(b, doc, find(a, doc) + len(a)) >= 0


@settings(max_examples=300, deadline=None)
@given(la=st.integers(1, 300), lb=st.integers(1, 300), max_tokens=st.integers(2, 200), seed=st.integers(0, 2**32 - 1))
def test_truncate_pair_matches_googles_loop(la, lb, max_tokens, seed):
    a, b = [100, 100 + la], [1000, 1000 + lb]
    pretrain._truncate_pair(a, b, max_tokens, np.random.default_rng(seed))
    ref_a, ref_b = la, lb  # google-research/bert: drop one token from the longer side (B on ties) until it fits
    while ref_a + ref_b > max_tokens:
        if ref_a > ref_b:
            ref_a -= 1
        else:
            ref_b -= 1
    assert (a[1] - a[0], b[1] - b[0]) == (ref_a, ref_b)
    assert 100 <= a[0] <= a[1] <= 100 + la and 1000 <= b[0] <= b[1] <= 1000 + lb  # cut from the ends only


def test_whole_word_masking_english(tmp, tok_en):
    shards = run(tmp, "wwm-en", whole_word_mask=True)
    pieces = 0
    for x in instances(shards):
        orig = originals(x)
        masked = np.zeros(len(orig), dtype=bool)
        masked[x["masked_positions"]] = True
        tokens = [tok_en.id_to_token(int(i)) for i in orig]
        for i in range(1, len(tokens)):
            if tokens[i].startswith("##") and tokens[i - 1] not in ("[CLS]", "[SEP]"):
                assert masked[i] == masked[i - 1], tokens  # no ## piece masked without its whole word
                pieces += masked[i]
        assert 1 <= masked.sum() <= shards.rule.num_to_predict(len(orig))
    assert pieces > 100  # the rule was exercised


def test_chinese_end_to_end_whole_word_masking(tmp, jieba_segment):
    tok = Tokenizer.from_pretrained(VOCAB_ZH)
    assert word_continues(
        "这家酒店的位置非常方便", list("这家酒店的位置非常方便"), [(i, i + 1) for i in range(11)], jieba_segment
    ) == [
        False,
        True,
        False,
        True,
        False,
        False,
        True,
        False,
        True,
        False,
        True,  # 这家/酒店/的/位置/非常/方便
    ]
    shards = run(tmp, "zh", corpus=(CORPUS_ZH,), vocab=VOCAB_ZH, whole_word_mask=True)
    manifest = shards.manifest
    assert manifest["whole_word_mask"] and manifest["zh_segmenter"] == "jieba" and manifest["corpus"]["documents"] == 15
    streams = document_streams(CORPUS_ZH, tok, jieba_segment)
    words = 0
    for x in instances(shards):
        orig = originals(x)
        assert len(orig) <= 64 and orig[0] == tok.cls_id
        assert all(len(tok.id_to_token(int(i))) == 1 or i in tok.special_ids for i in orig)  # ids stay characters
        masked = np.zeros(len(orig), dtype=bool)
        masked[x["masked_positions"]] = True
        a, _ = segments(x)
        ids, flags = streams[int(x["document"])]
        at = find(a, ids)
        assert at >= 0
        continues = flags[at : at + len(a)].astype(bool)  # the jieba word structure of segment A
        continues[0] = False
        body = masked[1 : 1 + len(a)]
        assert np.array_equal(body[1:][continues[1:]], body[:-1][continues[1:]])  # a jieba word is masked whole
        words += int((body[1:] & continues[1:]).sum())
    assert words > 20


def test_no_nsp_packs_documents(tmp, tok_en):
    shards = run(tmp, "mlm", nsp=False, dupe_factor=1, short_seq_prob=0.0, eval_fraction=0.0)
    assert shards.manifest["nsp"] is False
    assert not list((tmp / "mlm").glob("*.nsp_label.npy"))
    docs = [ids for ids, _ in document_streams(CORPUS_EN, tok_en)]
    bodies: dict[int, list[np.ndarray]] = {}
    for x in instances(shards):
        ids = originals(x)
        assert "next_sentence_label" not in x and not x["token_type_ids"].any()
        assert ids[0] == tok_en.cls_id and ids[-1] == tok_en.sep_id and (ids == tok_en.sep_id).sum() == 1
        assert len(ids) <= 64
        bodies.setdefault(int(x["document"]), []).append(ids[1:-1])
    for d, parts in bodies.items():  # contiguous blocks that cover the document exactly
        assert np.array_equal(np.concatenate(parts), docs[d])
        assert all(len(p) == 62 for p in parts[:-1])
    assert sorted(bodies) == list(range(len(docs)))
    batch = shards.collate([0, 1], np.random.default_rng(0))
    assert "next_sentence_label" not in batch


def test_sentence_order_pairs_are_continuations_swapped_half_the_time(tmp, tok_en):
    shards = run(tmp, "sop", sop=True)
    assert shards.manifest["sop"] is True
    docs = [ids for ids, _ in document_streams(CORPUS_EN, tok_en)]
    labels = []
    for x in instances(shards):
        a, b = segments(x)
        doc = docs[int(x["document"])]
        if find(b, doc) < 0:  # only a single-sentence chunk takes a random B, as ALBERT's does
            assert x["next_sentence_label"] == 1 and find(a, doc) >= 0
            continue
        first, second = (a, b) if x["next_sentence_label"] == 0 else (b, a)
        assert find(second, doc, find(first, doc) + len(first)) >= 0  # in order, or swapped
        labels.append(int(x["next_sentence_label"]))
    assert 0.4 < np.mean(labels) < 0.6 and len(labels) > 100


def test_packing_fills_blocks_across_one_document_boundary(tmp, tok_en):
    shards = run(tmp, "pack", nsp=False, pack=True, dupe_factor=1, short_seq_prob=0.0, eval_fraction=0.0,
                 chunk_documents=1000)  # fmt: skip
    stream = np.concatenate([ids for ids, _ in document_streams(CORPUS_EN, tok_en)])
    pieces, lengths = [], []
    for x in instances(shards):
        a, b = segments(x)
        pieces += [a, b]
        lengths.append(len(a) + len(b))
        assert originals(x)[-1] == tok_en.sep_id and len(originals(x)) <= 64
    assert np.array_equal(np.concatenate(pieces), stream)  # every token once, in order
    assert all(n == 61 for n in lengths[:-1])  # full blocks (64 less three specials) but the last
    with pytest.raises(BertforgeError, match="--pack fills single segments"):
        PretrainDataConfig(pack=True).check()
    with pytest.raises(BertforgeError, match="sentence-order pairs need pairs"):
        PretrainDataConfig(sop=True, nsp=False).check()


# -- determinism and dynamic masking --------------------------------------------------------------------------
def shard_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_deterministic_and_independent_of_workers(tmp):
    run(tmp, "w1", dupe_factor=3, workers=1)
    run(tmp, "w1-again", dupe_factor=3, workers=1)
    run(tmp, "w2", dupe_factor=3, workers=2, shard_size=50)
    run(tmp, "w2-same-shards", dupe_factor=3, workers=2)
    run(tmp, "seed2", dupe_factor=3, workers=1, seed=2)
    one = shard_files(tmp / "w1")
    assert len(one) > 5
    assert one == shard_files(tmp / "w1-again") == shard_files(tmp / "w2-same-shards")
    assert one != shard_files(tmp / "seed2")
    a, b = PretrainShards(tmp / "w1"), PretrainShards(tmp / "w2")  # other shard boundaries, same instances
    assert len(a) == len(b) and len(b.manifest["splits"]["train"]["shards"]) > 1
    for i in range(len(a)):
        assert np.array_equal(a[i]["input_ids"], b[i]["input_ids"])


@pytest.mark.parametrize("whole_word", [False, True])
def test_dynamic_masking(tmp, tok_en, whole_word):
    shards = run(tmp, f"dynamic-{whole_word}", dynamic_mask=True, whole_word_mask=whole_word, dupe_factor=2)
    assert not list((tmp / f"dynamic-{whole_word}").glob("*.mask_*.npy"))
    assert bool(list((tmp / f"dynamic-{whole_word}").glob("*.word_continues.npy"))) == whole_word
    assert shards.manifest["splits"]["train"]["masked_tokens"] is None
    idx = list(range(len(shards)))
    first = shards.collate(idx, np.random.default_rng(1))
    again = shards.collate(idx, np.random.default_rng(1))
    other = shards.collate(idx, np.random.default_rng(2))
    assert torch.equal(first["labels"], again["labels"]) and torch.equal(first["input_ids"], again["input_ids"])
    assert not torch.equal(first["labels"], other["labels"])  # a fresh draw, fresh masks
    raw = [shards[i] for i in idx]
    kinds = np.zeros(3)
    for batch in (first, other):
        for r, x in enumerate(raw):
            n = len(x["input_ids"])
            labels, ids = batch["labels"][r, :n].numpy(), batch["input_ids"][r, :n].numpy()
            pos = np.flatnonzero(labels != IGNORE_INDEX)
            assert np.array_equal(labels[pos], x["input_ids"][pos])
            assert not np.isin(x["input_ids"][pos], [tok_en.cls_id, tok_en.sep_id]).any()
            if whole_word:
                assert 1 <= len(pos) <= shards.rule.num_to_predict(n)
                masked = labels != IGNORE_INDEX
                joined = x["word_continues"][1:] & ~np.isin(x["input_ids"][:-1], [tok_en.cls_id, tok_en.sep_id])
                assert np.array_equal(masked[1:][joined], masked[:-1][joined])  # whole words
            else:
                assert len(pos) == shards.rule.num_to_predict(n)  # 15% of the sequence, up to the cap
            kinds += [(ids[pos] == tok_en.mask_id).sum(), (ids[pos] == labels[pos]).sum(), 0]
            kinds[2] += len(pos) - (ids[pos] == tok_en.mask_id).sum() - (ids[pos] == labels[pos]).sum()
    share = kinds / kinds.sum()
    assert abs(share[0] - 0.8) < 0.03 and abs(share[1] - 0.1) < 0.03 and abs(share[2] - 0.1) < 0.03
    with pytest.raises(BertforgeError, match="random generator"):
        shards.collate([0])


def test_collate_pads_on_the_right(en, tok_en):
    idx = [0, 5, 9]
    batch = en.collate(idx, np.random.default_rng(0))
    items = [en[i] for i in idx]
    T = max(len(x["input_ids"]) for x in items)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "input_ids": (3, T),
        "attention_mask": (3, T),
        "token_type_ids": (3, T),
        "labels": (3, T),
        "next_sentence_label": (3,),
    }
    assert all(v.dtype == torch.int64 for v in batch.values())
    for r, x in enumerate(items):
        n = len(x["input_ids"])
        assert batch["input_ids"][r, :n].tolist() == x["input_ids"].tolist()
        assert (batch["input_ids"][r, n:] == tok_en.pad_id).all() and batch["attention_mask"][r].sum() == n
        assert batch["token_type_ids"][r, :n].tolist() == x["token_type_ids"].tolist()
        expected = np.full(T, IGNORE_INDEX)
        expected[x["masked_positions"]] = x["masked_labels"]
        assert batch["labels"][r].tolist() == expected.tolist()
        assert int(batch["next_sentence_label"][r]) == int(x["next_sentence_label"])


# -- the manifest ---------------------------------------------------------------------------------------------
def test_manifest_counts_equal_what_is_on_disk(en, tmp):
    m = en.manifest
    directory = tmp / "en"
    assert m["vocab_sha256"] == hashlib.sha256(VOCAB_EN.read_bytes()).hexdigest()
    assert (m["max_seq_len"], m["nsp"], m["whole_word_mask"], m["dynamic_mask"], m["dupe_factor"], m["seed"]) == (
        64,
        True,
        False,
        False,
        10,
        1,
    )
    assert (
        m["special_ids"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
        and m["vocab_size"] == 400
        and m["lowercase"] is True
    )
    assert m["corpus"]["documents"] == 22 == m["splits"]["train"]["documents"] + m["splits"]["eval"]["documents"]
    assert m["splits"]["eval"]["documents"] == 2  # 10% of 22 documents
    for split in ("train", "eval"):
        totals = {"instances": 0, "tokens": 0, "masked_tokens": 0}
        for shard in m["splits"][split]["shards"]:
            load = lambda field, name=shard["name"]: np.load(directory / f"{name}.{field}.npy")  # noqa: E731
            offsets = load("offsets")
            assert shard["instances"] == len(offsets) - 1 == len(load("b_start")) == len(load("nsp_label"))
            assert shard["tokens"] == offsets[-1] == len(load("input_ids"))
            assert shard["masked_tokens"] == len(load("mask_positions")) == load("mask_offsets")[-1]
            for key in totals:
                totals[key] += shard[key]
        assert totals == {k: m["splits"][split][k] for k in totals}
        assert len(PretrainShards(directory, split)) == totals["instances"] > 0


def test_eval_split_holds_its_own_documents(en, tmp):
    held_out = PretrainShards(tmp / "en", "eval")
    train_docs = {int(x["document"]) for x in instances(en)}
    eval_docs = {int(x["document"]) for x in instances(held_out)}
    assert len(eval_docs) == 2 and not train_docs & eval_docs and len(train_docs | eval_docs) == 22
    assert held_out.manifest["splits"]["eval"]["passes"] == 1 and en.manifest["splits"]["train"]["passes"] == 10
    with pytest.raises(BertforgeError, match="unknown split 'test'"):
        PretrainShards(tmp / "en", "test")


# -- bad input ------------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_file(tmp):
    config = PretrainDataConfig(max_seq_len=32)

    def fails(corpus, match):
        with pytest.raises(BertforgeError, match=match):
            prepare(corpus, VOCAB_EN, tmp / "bad", config, workers=1, progress=False)

    fails([tmp / "missing.txt"], r"missing\.txt: no such file")
    fails([str(tmp / "nothing-*.txt")], r"nothing-\*\.txt: no file matches")
    latin1 = tmp / "latin1.txt"
    latin1.write_bytes("A first line.\n\nCaf\xe9 au lait.\n".encode("latin-1"))
    fails([latin1], r"latin1\.txt: line 3 is not UTF-8")
    empty = tmp / "empty.txt"
    empty.write_text("\n\n  \n", encoding="utf-8")
    fails([empty], r"empty\.txt: no text")
    broken = tmp / "broken.jsonl"
    broken.write_text('{"text": "Fine."}\n{"body": "no text field"}\n', encoding="utf-8")
    fails([broken], r"broken\.jsonl: line 2 has no string field 'text'")
    assert not (tmp / "bad").exists() and not list(tmp.glob(".bad.tmp-*"))  # nothing half-written is left
    with pytest.raises(BertforgeError, match="manifest.json: no such file"):
        PretrainShards(tmp)


def test_cli_end_to_end(tmp):
    out = tmp / "cli"
    bertforge = Path(sys.executable).parent / "bertforge"
    cmd = [
        str(bertforge),
        "prepare-pretrain",
        "--corpus",
        str(ASSETS / "corpus_e*.txt"),
        "--vocab",
        str(VOCAB_EN),
        "--out",
        str(out),
        "--max-seq-len",
        "64",
        "--dupe-factor",
        "2",
        "--workers",
        "2",
        "--seed",
        "3",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert (
        manifest["corpus"]["files"] == [str(CORPUS_EN.resolve())]
        and manifest["dupe_factor"] == 2
        and manifest["seed"] == 3
    )
    train = manifest["splits"]["train"]["instances"]
    assert train > 0 and f"{train:,} train" in done.stdout and done.stdout.startswith(f"wrote {out}")
    bad = subprocess.run([*cmd[:3], str(tmp / "nope.txt"), *cmd[4:]], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == f"bertforge: error: {tmp / 'nope.txt'}: no such file"


def test_the_reader_does_not_load_the_builder():
    """Training reads shards without the builder's code (jieba, the worker pool, the tokenizing stage)."""
    code = "import sys, bertforge.data.shards, bertforge.tasks.pretrain; print(' '.join(sys.modules))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert "bertforge.data.shards" in loaded
    assert not loaded & {"bertforge.data.pretrain", "bertforge.data.corpus", "bertforge.data.workers", "jieba"}
