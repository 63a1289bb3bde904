"""The WordPiece tokenizer against transformers, on every text of three real corpora, and on its own.

Our tokenizer is built from a bare vocab.txt (our normaliser, pre-tokeniser and template), and
transformers' from the checkpoint's own files, so the comparison checks our construction, not a copy
of theirs. ``BertTokenizerLegacy`` is transformers' pure-Python original, an independent
implementation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE, WordLevel
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from bertforge import BertforgeError, Tokenizer, train_vocab
from bertforge.tokenizer import SPECIAL_TOKENS


@pytest.fixture(scope="module")
def ours(minilm_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(minilm_dir / "vocab.txt")


@pytest.fixture(scope="module")
def theirs(minilm_dir):
    return transformers.AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def ours_zh(chinese_vocab) -> Tokenizer:
    return Tokenizer.from_pretrained(chinese_vocab)


@pytest.fixture(scope="module")
def theirs_zh(chinese_vocab):
    return transformers.BertTokenizer(vocab=str(chinese_vocab))


@pytest.fixture(scope="module")
def english(wiki_topics, rotten_tomatoes) -> list[str]:
    """Every text of wiki-topics-en and rotten-tomatoes, all splits (about 22,000)."""
    return [r["text"] for rows in (*wiki_topics.values(), *rotten_tomatoes.values()) for r in rows]


@pytest.fixture(scope="module")
def chinese(chinese_sentiment) -> list[str]:
    return [r["text"] for rows in chinese_sentiment.values() for r in rows]


def _compare(ours_encodings, hf_batch, texts, offsets=True, word_ids=False) -> None:
    """Assert ids, type ids (and offsets, word ids) equal; name the first text that differs."""
    for i, (e, text) in enumerate(zip(ours_encodings, texts, strict=True)):
        got = (e.ids, e.type_ids)
        want = (hf_batch["input_ids"][i], hf_batch["token_type_ids"][i])
        if offsets:
            got += (e.offsets,)
            want += ([tuple(o) for o in hf_batch["offset_mapping"][i]],)
        if word_ids:
            got += (e.word_ids,)
            want += (hf_batch.word_ids(i),)
        assert got == want, f"text {i} differs: {text[:200]!r}"


# -- whole corpora ----------------------------------------------------------------------------------
def test_lowercasing_is_inferred_from_the_vocabulary(ours, ours_zh, tiny_vocab, tmp_path):
    assert ours.lowercase is True and ours_zh.lowercase is True
    assert Tokenizer.from_pretrained(tiny_vocab).lowercase is True
    cased = tmp_path / "vocab.txt"
    cased.write_text("\n".join([*SPECIAL_TOKENS, *"ABCDEFGHIJ", *"abc", "The", "the"]) + "\n")
    tok = Tokenizer.from_pretrained(cased)
    assert tok.lowercase is False
    assert tok.tokenize("The the") == ["The", "the"]
    assert Tokenizer.from_pretrained(cased, lowercase=True).tokenize("The") == ["the"]


def test_english_corpora_match_transformers(ours, theirs, english):
    assert len(english) > 20_000
    hf = theirs(english, truncation=False, return_offsets_mapping=True)
    _compare(ours.encode_batch(english), hf, english)


def test_chinese_corpus_matches_transformers(ours_zh, theirs_zh, chinese):
    assert len(chinese) > 15_000
    hf = theirs_zh(chinese, truncation=False, return_offsets_mapping=True)
    _compare(ours_zh.encode_batch(chinese), hf, chinese)
    # CJK characters are words of their own, and this vocabulary covers these reviews well
    ids = [i for e in ours_zh.encode_batch(chinese[:500]) for i in e.ids]
    assert ids.count(ours_zh.unk_id) < 0.01 * len(ids)


def test_loading_the_checkpoint_directory_matches_too(minilm_dir, theirs, rotten_tomatoes):
    texts = [r["text"] for r in rotten_tomatoes["test"]]
    from_dir = Tokenizer.from_pretrained(minilm_dir)  # tokenizer.json, whose truncation at 128 is dropped
    assert from_dir.model_max_length == 512
    hf = theirs(texts, truncation=False, return_offsets_mapping=True)
    _compare(from_dir.encode_batch(texts), hf, texts)
    assert [e.ids for e in Tokenizer.from_pretrained("minilm-l6").encode_batch(texts[:50])] == hf["input_ids"][:50]


def test_pure_python_legacy_tokenizer_agrees(
    ours, ours_zh, minilm_dir, chinese_vocab, wiki_topics, rotten_tomatoes, chinese
):
    legacy = BertTokenizerLegacy(vocab_file=str(minilm_dir / "vocab.txt"))
    texts = [r["text"] for r in wiki_topics["valid"][:300]] + [r["text"] for r in rotten_tomatoes["valid"][:300]]
    for text, e in zip(texts, ours.encode_batch(texts), strict=True):
        assert legacy(text)["input_ids"] == e.ids, text[:200]
    legacy_zh = BertTokenizerLegacy(vocab_file=str(chinese_vocab))
    for text, e in zip(chinese[:300], ours_zh.encode_batch(chinese[:300]), strict=True):
        assert legacy_zh(text)["input_ids"] == e.ids, text[:200]


# -- pairs, truncation, windows ---------------------------------------------------------------------
def _pairs(wiki_topics, rotten_tomatoes, strategy, ours) -> tuple[list[str], list[str]]:
    wiki = wiki_topics["test"][:400]
    if strategy == "longest_first":  # two long texts
        return [r["text"] for r in wiki], [r["text"] for r in rotten_tomatoes["test"][:400]]
    # the side that is not cut must fit: a title plus the three special tokens in 64
    wiki = [r for r in wiki if len(ours.tokenize(r["title"])) < 40]
    if strategy == "only_first":
        return [r["text"] for r in wiki], [r["title"] for r in wiki]
    return [r["title"] for r in wiki], [r["text"] for r in wiki]


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
def test_pairs_truncate_like_transformers(ours, theirs, wiki_topics, rotten_tomatoes, strategy):
    a, b = _pairs(wiki_topics, rotten_tomatoes, strategy, ours)
    assert len(a) > 300
    hf = theirs(a, b, truncation=strategy, max_length=64, return_offsets_mapping=True)
    encodings = ours.encode_batch(a, b, max_length=64, truncation=strategy)
    _compare(encodings, hf, a)
    assert max(len(e.ids) for e in encodings) == 64
    for e in encodings:  # [CLS] A [SEP] B [SEP], segments 0 then 1
        assert e.ids[0] == ours.cls_id and e.ids[-1] == ours.sep_id and e.ids.count(ours.sep_id) == 2
        first = e.ids.index(ours.sep_id) + 1
        assert e.type_ids == [0] * first + [1] * (len(e.ids) - first)
        assert e.sequence_ids == [None] + [0] * (first - 2) + [None] + [1] * (len(e.ids) - first - 1) + [None]


def test_odd_room_trims_a_pair_as_the_fast_tokenizer_does(ours, theirs):
    kept = " ".join(ours.encode("a b c", "d e f", max_length=8).tokens)
    assert kept == "[CLS] a b [SEP] d e f [SEP]"  # the documented choice
    assert (
        ours.encode("a b c", "d e f", max_length=8).ids
        == theirs("a b c", "d e f", truncation="longest_first", max_length=8)["input_ids"]
    )
    a, b = ["a", "b", "c"], ["d", "e", "f"]
    while len(a) + len(b) > 8 - 3:  # Google's truncate_seq_pair: trim the longer, the second on a tie
        (a if len(a) > len(b) else b).pop()
    assert (a, b) == (["a", "b", "c"], ["d", "e"])  # not what we do: the fast tokenizer is the reference


def test_impossible_truncation_is_an_error(ours):
    with pytest.raises(BertforgeError, match="cannot encode with max_length=16, truncation=only_first"):
        ours.encode("a", "many words " * 30, max_length=16, truncation="only_first")
    # a pair whose truncation leaves one text fewer tokens than the stride: tokenizers panics (a BaseException)
    with pytest.raises(BertforgeError, match=r"stride=20: `stride` must be strictly less than `max_len=14`$"):
        ours.encode("a question of some words " * 3, "the context is long here " * 20, max_length=32, stride=20)


def test_stride_windows_match_transformers(ours, theirs, wiki_topics):
    texts = [r["text"] for r in wiki_topics["valid"][:200]]
    hf = theirs(
        texts, truncation=True, max_length=64, stride=16, return_overflowing_tokens=True, return_offsets_mapping=True
    )
    windows = [w for e in ours.encode_batch(texts, max_length=64, stride=16) for w in [e, *e.overflowing]]
    assert len(windows) == len(hf["input_ids"]) > len(texts)
    for w, ids, offsets in zip(windows, hf["input_ids"], hf["offset_mapping"], strict=True):
        assert w.ids == ids and w.offsets == [tuple(o) for o in offsets]
    # consecutive windows of one text overlap by exactly `stride` tokens
    e = ours.encode(texts[0], max_length=64, stride=16)
    assert e.overflowing
    for left, right in zip([e, *e.overflowing], e.overflowing, strict=False):
        assert left.ids[-17:-1] == right.ids[1:17]


def test_question_context_windows_match_transformers(ours, theirs, wiki_topics):
    records = wiki_topics["test"][:100]
    questions = [f"what is {r['title']} about?" for r in records]
    contexts = [r["text"] for r in records]
    hf = theirs(questions, contexts, truncation="only_second", max_length=96, stride=24, return_overflowing_tokens=True)
    windows = [
        w
        for e in ours.encode_batch(questions, contexts, max_length=96, truncation="only_second", stride=24)
        for w in [e, *e.overflowing]
    ]
    assert [w.ids for w in windows] == hf["input_ids"]
    assert [w.type_ids for w in windows] == hf["token_type_ids"]


def test_max_length_counts_the_special_tokens(ours):
    text = " ".join(f"w{i}" for i in range(100))
    e = ours.encode(text, max_length=10)
    assert len(e.ids) == 10 and e.ids[0] == ours.cls_id and e.ids[-1] == ours.sep_id
    # without a stride the cut-off tokens still come back, as windows that do not overlap
    content = [i for w in [e, *e.overflowing] for i in w.ids[1:-1]]
    assert content == ours.encode(text).ids[1:-1]


def test_word_ids_match_transformers(ours, theirs, rotten_tomatoes):
    texts = [r["text"] for r in rotten_tomatoes["valid"][:500]]
    hf = theirs(texts, return_offsets_mapping=True)
    _compare(ours.encode_batch(texts), hf, texts, word_ids=True)
    e = ours.encode("unaffable tokenization")
    assert e.word_ids[0] is None and e.word_ids[-1] is None
    assert len({w for w in e.word_ids if w is not None}) == 2


def test_pretokenized_words_match_transformers(ours, theirs):
    words = [["John", "Smith", "lives", "in", "New", "York", "."], ["unaffable", "Zürich", "42"]]
    hf = theirs(words, is_split_into_words=True)
    encodings = ours.encode_batch(words, is_pretokenized=True)
    for i, e in enumerate(encodings):
        assert e.ids == hf["input_ids"][i] and e.word_ids == hf.word_ids(i)


def test_decode_matches_transformers(ours, theirs, rotten_tomatoes):
    texts = [r["text"] for r in rotten_tomatoes["test"][:300]]
    for e in ours.encode_batch(texts):
        assert ours.decode(e.ids) == theirs.decode(e.ids, skip_special_tokens=True)
    ids = ours.encode("Hello, world! This is a test.").ids
    assert ours.decode(ids) == "hello, world! this is a test."
    assert ours.decode(ids, skip_special_tokens=False) == "[CLS] hello, world! this is a test. [SEP]"


def test_special_tokens_in_raw_text_are_special(ours, theirs):
    text = "the capital of france is [MASK]. [SEP] [mask]"
    assert ours.encode(text).ids == theirs(text)["input_ids"]
    assert ours.encode(text).ids.count(ours.mask_id) == 1  # "[mask]" is not the mask token


def test_long_words_become_unknown(ours, theirs):
    text = "short " + "a" * 101 + " " + "b" * 100
    assert ours.encode(text).ids == theirs(text)["input_ids"]
    assert ours.tokenize(text)[1] == "[UNK]" and ours.tokenize(text)[2] != "[UNK]"


# -- properties -------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_any_unicode_text_encodes_like_transformers(ours, theirs, text):
    e = ours.encode(text)
    assert e.ids == theirs(text)["input_ids"]
    assert e.ids[0] == ours.cls_id and e.ids[-1] == ours.sep_id
    assert all(0 <= s <= t <= len(text) for s, t in e.offsets)


@settings(max_examples=150, deadline=None)
@given(a=st.text(min_size=1), b=st.text(min_size=1), max_length=st.integers(8, 40))
def test_any_pair_truncates_like_transformers(ours, theirs, a, b, max_length):
    e = ours.encode(a, b, max_length=max_length)
    hf = theirs(a, b, truncation="longest_first", max_length=max_length)
    assert (e.ids, e.type_ids) == (hf["input_ids"], hf["token_type_ids"])
    assert len(e.ids) <= max_length


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("我爱北京天安门，。！？abc ABC 123 ｆｕｌｌ　é𠀋")))
def test_any_chinese_text_encodes_like_transformers(ours_zh, theirs_zh, text):
    assert ours_zh.encode(text).ids == theirs_zh(text)["input_ids"]


# -- tensors ----------------------------------------------------------------------------------------
def test_to_tensors_right_pads(ours):
    encodings = ours.encode_batch(["a b c d e", "a", "a b"])
    batch = ours.to_tensors(encodings)
    assert batch["input_ids"].shape == (3, 7)
    assert batch["attention_mask"].tolist() == [[1] * 7, [1] * 3 + [0] * 4, [1] * 4 + [0] * 3]
    assert batch["input_ids"][1].tolist() == encodings[1].ids + [ours.pad_id] * 4
    assert batch["input_ids"].dtype == torch.int64
    assert ours.to_tensors(encodings, pad_to_multiple_of=8)["input_ids"].shape == (3, 8)
    pairs = ours.to_tensors(ours.encode_batch(["a"], ["b c"]))
    assert pairs["token_type_ids"].tolist() == [[0, 0, 0, 1, 1, 1]]


# -- training a vocabulary --------------------------------------------------------------------------
def test_train_vocab_on_english(tiny_corpus, tmp_path):
    tok = train_vocab([tiny_corpus], vocab_size=300, show_progress=False)
    vocab = tok.get_vocab()
    assert [tok.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert 100 < tok.vocab_size <= 300
    assert {"the", "and", "model"} <= set(vocab)
    assert not any(c.isupper() for t in vocab if t not in SPECIAL_TOKENS for c in t)
    lines = tiny_corpus.read_text().splitlines()
    ids = [i for e in tok.encode_batch(lines) for i in e.ids]
    assert tok.unk_id not in ids
    assert tok.tokenize("The model") == ["the", "model"]
    # the saved vocab.txt is a transformers vocabulary with the same ids
    path = tok.save_vocab(tmp_path / "vocab.txt")
    assert path.read_text().splitlines()[:5] == list(SPECIAL_TOKENS)
    hf = transformers.BertTokenizer(vocab=str(path))
    assert hf(lines)["input_ids"] == [e.ids for e in tok.encode_batch(lines)]
    assert Tokenizer.from_pretrained(path).encode(lines[0]).ids == tok.encode(lines[0]).ids


def test_train_vocab_refuses_an_empty_corpus(tiny_corpus, tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n\t\n", encoding="utf-8")
    with pytest.raises(BertforgeError, match=r"blank\.txt: no text \(empty corpus\)"):
        train_vocab([blank], vocab_size=300, show_progress=False)
    assert "the" in train_vocab([blank, tiny_corpus], vocab_size=300, show_progress=False).get_vocab()  # one is enough


def test_train_vocab_cased_keeps_capitals(tiny_corpus):
    cased = train_vocab([tiny_corpus], vocab_size=300, lowercase=False, show_progress=False)
    uncased = train_vocab([tiny_corpus], vocab_size=300, lowercase=True, show_progress=False)
    assert cased.lowercase is False and uncased.lowercase is True
    assert "The" in cased.get_vocab() and "The" not in uncased.get_vocab()
    assert cased.encode("The").ids != cased.encode("the").ids
    assert uncased.encode("The").ids == uncased.encode("the").ids
    assert cased.tokenize("The model") == ["The", "model"]


def test_train_vocab_on_chinese(chinese_corpus, tmp_path):
    lines = [line for line in chinese_corpus.read_text(encoding="utf-8").splitlines() if line.strip()][:3000]
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = train_vocab([corpus], vocab_size=3000, show_progress=False)
    vocab = tok.get_vocab()
    assert [tok.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert {"的", "是", "不", "好"} <= set(vocab)

    def cjk(c: str) -> bool:
        return "\u4e00" <= c <= "\u9fff"

    # Chinese characters are words of their own: no multi-character Chinese entries
    assert not [t for t in vocab if any(cjk(c) for c in t) and len(t.removeprefix("##")) > 1]
    sample = lines[0]
    tokens = tok.tokenize(sample)
    assert [t for t in tokens if any(cjk(c) for c in t)] == [c for c in sample if cjk(c)]
    ids = [i for e in tok.encode_batch(lines[:200]) for i in e.ids]
    assert ids.count(tok.unk_id) < 0.01 * len(ids)
    hf = transformers.BertTokenizer(vocab=str(tok.save_vocab(tmp_path / "vocab.txt")))
    assert hf(lines[:200])["input_ids"] == [e.ids for e in tok.encode_batch(lines[:200])]


def test_train_vocab_errors(tiny_corpus, tmp_path):
    with pytest.raises(BertforgeError, match=f"{tmp_path / 'nope.txt'}: no such file"):
        train_vocab([tmp_path / "nope.txt"], vocab_size=1000)
    with pytest.raises(BertforgeError, match="vocab size 10 is too small"):
        train_vocab([tiny_corpus], vocab_size=10)


# -- saving and bad input ---------------------------------------------------------------------------
def test_save_pretrained_loads_in_transformers(ours, tiny_vocab, tmp_path):
    tok = Tokenizer.from_pretrained(tiny_vocab)
    tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["do_lower_case"] is True and config["tokenizer_class"] == "BertTokenizer"
    assert (tmp_path / "vocab.txt").read_text() == tiny_vocab.read_text()
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    texts = ["The model reads [MASK] words.", "Zephyr, 42!", ""]
    assert hf(texts)["input_ids"] == [e.ids for e in tok.encode_batch(texts)]
    legacy = BertTokenizerLegacy.from_pretrained(tmp_path)
    assert [legacy(t)["input_ids"] for t in texts] == [e.ids for e in tok.encode_batch(texts)]


def test_vocab_without_specials_names_the_file_and_tokens(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\nhello\nworld\n")
    with pytest.raises(BertforgeError) as e:
        Tokenizer.from_pretrained(path)
    assert str(e.value) == f"{path}: vocabulary lacks the special token(s) [CLS], [SEP], [MASK]"


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty vocabulary"), (b"[PAD]\n\xff\xfe\n", "not UTF-8 text (invalid start byte at byte 6)")],
)
def test_unreadable_vocab_names_the_file(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    path.write_bytes(content)
    with pytest.raises(BertforgeError, match=f"^{path}: {message.replace('(', '.').replace(')', '.')}$"):
        Tokenizer.from_pretrained(path)


def test_directories_and_json_files_that_are_not_tokenizers(tmp_path):
    with pytest.raises(BertforgeError, match="no tokenizer.json, vocab.txt, vocab.json \\+ merges.txt, sentencepiece"):
        Tokenizer.from_pretrained(tmp_path)
    Backend(WordLevel({"[UNK]": 0}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(BertforgeError, match="not a WordPiece, BPE or Unigram tokenizer \\(WordLevel\\)$"):
        Tokenizer.from_pretrained(tmp_path / "tokenizer.json")
    Backend(BPE()).save(str(tmp_path / "tokenizer.json"))  # a BPE tokenizer.json, without special tokens
    with pytest.raises(BertforgeError, match="tokenizer.json: no pad token \\(none in its config, and no \\[PAD\\] or"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(BertforgeError, match="broken.json: not a tokenizers JSON file"):
        Tokenizer.from_pretrained(tmp_path / "broken.json")


def test_bad_encode_arguments(ours):
    with pytest.raises(BertforgeError, match="unknown truncation 'middle'"):
        ours.encode("x", truncation="middle")
    with pytest.raises(BertforgeError, match="max_length 8 with stride 6 leaves no room for text"):
        ours.encode("x", max_length=8, stride=6)
    with pytest.raises(BertforgeError, match="^max_length 0 leaves no room for text$"):  # 0 is not "no limit"
        ours.encode("x", max_length=0)
    with pytest.raises(BertforgeError, match="^max_length -4 leaves no room for text$"):
        ours.encode("x", max_length=-4)
    # a negative stride: tokenizers raised OverflowError (with a max_length), or ignored it (without)
    for max_length in (16, None):
        with pytest.raises(BertforgeError, match="^stride -1 is negative"):
            ours.encode("a question", "its context", max_length=max_length, stride=-1)
        with pytest.raises(BertforgeError, match="^stride -2 is negative"):
            ours.encode_batch(["a b", "c"], max_length=max_length, stride=-2)
    with pytest.raises(BertforgeError, match="text 1 is NoneType, not a string"):
        ours.encode_batch(["a", None])
    with pytest.raises(BertforgeError, match="2 texts but 1 pair texts"):
        ours.encode_batch(["a", "b"], ["c"])
    with pytest.raises(BertforgeError, match="pair text 0 is int, not a string"):
        ours.encode_batch(["a"], [3])


def test_no_such_path(tmp_path):
    with pytest.raises(BertforgeError, match="no such file or directory, and not a registry name"):
        Tokenizer.from_pretrained(Path(tmp_path) / "missing" / "vocab.txt")
