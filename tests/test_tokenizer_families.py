"""The tokenizers of every BERT family against transformers: WordPiece (BERT, DistilBERT, ELECTRA), RoBERTa's
byte-level BPE, XLM-R's and ALBERT's SentencePiece Unigram.

Each kind is trained here on a small mixed corpus, saved, and loaded by transformers' AutoTokenizer and by the
family's own class; RoBERTa's vocab.json + merges.txt and SentencePiece .model files (no tokenizer.json) are
read by both libraries, each with its own code. Ids, type ids, offsets, pairs, truncation and stride windows
must be equal, on the corpus and on adversarial text.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from bertforge import BertforgeError, Tokenizer, train_vocab
from bertforge.cli import main

ASSETS = Path(__file__).parent / "assets"
KINDS = ("wordpiece", "bpe", "unigram")
AUTO_CLASS = {"wordpiece": "BertTokenizer", "bpe": "RobertaTokenizer", "unigram": "XLMRobertaTokenizer"}
FAMILY_CLASSES = {  # the transformers classes that must read each kind's saved directory
    "wordpiece": ("BertTokenizerFast", "DistilBertTokenizerFast", "ElectraTokenizerFast"),
    "bpe": ("RobertaTokenizerFast",),
    "unigram": ("XLMRobertaTokenizerFast",),
}
ADVERSARIAL = [
    "",
    " ",
    "     ",
    "\t\n \r\n",
    "café naïve Ångström façade Zürich crème brûlée",
    "combining e\u0301 and n\u0303, ligature ﬁ, ß and ǅ",
    "ＡＢＣ full-width １２３ and ｶﾀｶﾅ",
    "我爱北京天安门，今天天气很好！這是繁體字。",
    "emoji 😀👍🏽 and a flag 🇫🇷 and a family 👨‍👩‍👧",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u2028line\u00a0nbsp",
    "control\x00\x07\x1b\x7f chars and \x85 next line",
    "a" * 250,
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 6,
    "  leading, trailing  and   inner   spaces  ",
    "It's 3.14, not 2,718 -- (or $5.00?) #hash @user e-mail@example.com",
    "mixed 中文 and English 混合 text 123",
]


QUESTIONS = ["what is it?", "who?", "où est-il ?", "谁写的？", "😀?", "", "  "]


def _corpus_lines() -> list[str]:
    """A few hundred lines: the sentences of the English and Chinese test corpora, and sentences mixing them
    with accents, numbers and emoji (a fixed seed)."""
    text = " ".join((ASSETS / f).read_text(encoding="utf-8") for f in ("corpus_en.txt", "corpus.txt"))
    english = [s.strip() + "." for s in text.replace("\n", " ").split(". ") if len(s.strip()) > 3]
    text = (ASSETS / "corpus_zh.txt").read_text(encoding="utf-8")
    chinese = [s.strip() + "。" for s in text.replace("\n", "").split("。") if len(s.strip()) > 3]
    extras = ["café", "naïve", "Zürich", "Ångström", "2024", "3.14", "😀", "déjà vu", "Ärger", "niño", "北京", "東京"]
    rng = random.Random(0)
    mixed = [
        f"{rng.choice(english)} {rng.choice(extras)} {rng.choice(chinese)} {rng.choice(extras)}" for _ in range(200)
    ]
    return english + chinese + mixed


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return _corpus_lines()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, lines) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus) -> dict[str, tuple[Tokenizer, Path]]:
    """Kind -> (our trained tokenizer, the directory it saved)."""
    out = {}
    for kind in KINDS:
        tok = train_vocab([corpus], 700, kind=kind, show_progress=False)
        out[kind] = (tok, tok.save_pretrained(tmp_path_factory.mktemp(kind)))
    return out


def _hf(cls_name: str, directory: Path):
    loader = transformers.AutoTokenizer if cls_name == "auto" else getattr(transformers, cls_name)
    return loader.from_pretrained(directory)


def _assert_same(ours: list, theirs, texts: list, label: str = "") -> None:
    """Ids, type ids and offsets equal, text by text; the first that differs is named."""
    assert len(ours) == len(theirs["input_ids"]), label
    for i, e in enumerate(ours):
        got = (e.ids, e.type_ids, e.offsets)
        want = (theirs["input_ids"][i], theirs["token_type_ids"][i], [tuple(o) for o in theirs["offset_mapping"][i]])
        assert got == want, f"{label} text {i} differs: {texts[i % len(texts)][:80]!r}"


def _call(hf, texts, pairs=None, **kwargs):
    return hf(texts, pairs, return_token_type_ids=True, return_offsets_mapping=True, **kwargs)


# -- trained, saved, loaded by transformers ---------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_saved_tokenizers_load_in_transformers_with_equal_encodings(trained, lines, kind):
    tok, directory = trained[kind]
    texts = lines + ADVERSARIAL
    ours = tok.encode_batch(texts)
    auto = _hf("auto", directory)
    assert type(auto).__name__ == AUTO_CLASS[kind]
    assert json.loads((directory / "tokenizer_config.json").read_text())["tokenizer_class"] == AUTO_CLASS[kind]
    _assert_same(ours, _call(auto, texts), texts, kind)
    for cls_name in FAMILY_CLASSES[kind]:
        _assert_same(ours, _call(_hf(cls_name, directory), texts), texts, cls_name)
    # the specials transformers reads are ours, and our reload is the same tokenizer
    for role in ("cls", "sep", "pad", "unk", "mask"):
        assert getattr(auto, f"{role}_token_id") == getattr(tok, f"{role}_id"), role
    again = Tokenizer.from_pretrained(directory)
    assert [e.ids for e in again.encode_batch(texts)] == [e.ids for e in ours]
    assert (again.kind, again.specials, again.special_ids) == (tok.kind, tok.specials, tok.special_ids)
    assert [auto.decode(e.ids, skip_special_tokens=True) for e in ours[:50]] == [tok.decode(e.ids) for e in ours[:50]]


def test_trained_specials_and_vocabularies(trained):
    wordpiece, bpe, unigram = (trained[k][0] for k in KINDS)
    assert [wordpiece.id_to_token(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for tok in (bpe, unigram):  # RoBERTa's and XLM-R's first five ids
        assert [tok.id_to_token(i) for i in range(5)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        assert (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
        assert tok.lowercase is False and tok.encode("The").ids != tok.encode("the").ids
    assert [(t.kind, t.vocab_size) for t in (wordpiece, bpe, unigram)] == [
        ("wordpiece", 700),
        ("bpe", 700),
        ("unigram", 700),
    ]
    # byte-level BPE never needs <unk>; Chinese gets multi-character pieces from both BPE and Unigram
    assert bpe.unk_id not in [i for e in bpe.encode_batch(ADVERSARIAL) for i in e.ids]
    assert any(
        len(t.lstrip("▁")) > 1 and all("\u4e00" <= c <= "\u9fff" for c in t.lstrip("▁")) for t in unigram.get_vocab()
    )
    assert bpe.decode(bpe.encode("我爱北京 and café 😀").ids) == "我爱北京 and café 😀"


@pytest.fixture(scope="module")
def auto(trained) -> dict:
    """Kind -> transformers' AutoTokenizer on our saved directory."""
    return {kind: _hf("auto", directory) for kind, (_, directory) in trained.items()}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=st.text(max_size=60), b=st.text(max_size=60), max_length=st.integers(10, 40))
def test_any_text_and_pair_encodes_like_transformers(trained, auto, a, b, max_length):
    for kind in KINDS:
        tok = trained[kind][0]
        _assert_same([tok.encode(a)], _call(auto[kind], [a]), [a], kind)
        pair = tok.encode(a, b, max_length=max_length)
        _assert_same([pair], _call(auto[kind], [a], [b], truncation="longest_first", max_length=max_length), [a], kind)


@pytest.mark.parametrize("kind", KINDS)
def test_pairs_have_the_familys_specials_and_type_ids(trained, lines, kind):
    tok, directory = trained[kind]
    a, b = lines[:150] + ADVERSARIAL, lines[150:300] + ADVERSARIAL[::-1]
    ours = tok.encode_batch(a, b)
    _assert_same(ours, _call(_hf("auto", directory), a, b), a, kind)
    for e in ours:
        n_a, n_b = e.sequence_ids.count(0), e.sequence_ids.count(1)
        specials = [i for i, s in zip(e.ids, e.sequence_ids, strict=True) if s is None]
        if kind == "wordpiece":  # [CLS] A [SEP] B [SEP], segments 0 then 1
            assert e.sequence_ids == [None, *[0] * n_a, None, *[1] * n_b, None]
            assert specials == [tok.cls_id, tok.sep_id, tok.sep_id]
            assert e.type_ids == [0] * (n_a + 2) + [1] * (n_b + 1)
        else:  # <s> A </s></s> B </s>, all segment 0 (as transformers returns them for RoBERTa and XLM-R)
            assert e.sequence_ids == [None, *[0] * n_a, None, None, *[1] * n_b, None]
            assert specials == [tok.cls_id, tok.sep_id, tok.sep_id, tok.sep_id]
            assert e.type_ids == [0] * len(e.ids)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("strategy", ["longest_first", "only_second"])
def test_pair_truncation_matches_transformers(trained, lines, kind, strategy):
    tok, directory = trained[kind]
    if strategy == "longest_first":
        a, b = lines[:200], lines[200:400]
    else:  # the first text must fit
        a, b = [QUESTIONS[i % len(QUESTIONS)] for i in range(200)], lines[200:400]
    hf = _hf("auto", directory)
    ours = tok.encode_batch(a, b, max_length=40, truncation=strategy)
    _assert_same(ours, _call(hf, a, b, truncation=strategy, max_length=40), a, f"{kind} {strategy}")
    assert max(len(e.ids) for e in ours) == 40


@pytest.mark.parametrize("kind", KINDS)
def test_stride_windows_match_transformers(trained, lines, kind):
    tok, directory = trained[kind]
    hf = _hf("auto", directory)
    texts = lines[:120] + ADVERSARIAL
    want = _call(hf, texts, truncation=True, max_length=24, stride=6, return_overflowing_tokens=True)
    windows = [w for e in tok.encode_batch(texts, max_length=24, stride=6) for w in [e, *e.overflowing]]
    assert len(windows) > len(texts)
    _assert_same(windows, want, texts, f"{kind} windows")
    # question + context windows over the context only, as extractive QA makes them
    questions, contexts = [QUESTIONS[i % len(QUESTIONS)] for i in range(80)], lines[80:160]
    want = _call(
        hf, questions, contexts, truncation="only_second", max_length=40, stride=8, return_overflowing_tokens=True
    )
    encodings = tok.encode_batch(questions, contexts, max_length=40, truncation="only_second", stride=8)
    _assert_same([w for e in encodings for w in [e, *e.overflowing]], want, questions, f"{kind} qa windows")


def test_mask_token_takes_the_space_before_it(trained):
    """RoBERTa's and XLM-R's <mask> (lstrip, as their tokenizer.json files say), BERT's [MASK] a word."""
    for kind, mask in (("bpe", "<mask>"), ("unigram", "<mask>"), ("wordpiece", "[MASK]")):
        tok, directory = trained[kind]
        text = f"The capital is {mask}."
        e = tok.encode(text)
        assert e.ids.count(tok.mask_id) == 1 and e.ids == _hf("auto", directory)(text)["input_ids"]
        is_ = tok.encode("is", add_special_tokens=False).ids
        assert tok.encode("is " + mask, add_special_tokens=False).ids == is_ + [tok.mask_id]  # no space token


def test_family_class_and_config_survive_a_round_trip(trained, lines, tmp_path):
    """An ELECTRA directory stays ELECTRA's; special tokens written as transformers 4's AddedToken dicts are read."""
    _, saved = trained["wordpiece"]
    electra = tmp_path / "electra"
    shutil.copytree(saved, electra)
    config = json.loads((electra / "tokenizer_config.json").read_text())
    mask = {"__type": "AddedToken", "content": "[MASK]", "lstrip": False, "normalized": False, "rstrip": False}
    (electra / "tokenizer_config.json").write_text(
        json.dumps({**config, "tokenizer_class": "ElectraTokenizerFast", "mask_token": mask})
    )
    ours = Tokenizer.from_pretrained(electra)
    assert ours.specials["mask"] == "[MASK]" and ours.tokenizer_class() == "ElectraTokenizer"
    again = ours.save_pretrained(tmp_path / "again")
    assert json.loads((again / "tokenizer_config.json").read_text())["tokenizer_class"] == "ElectraTokenizer"
    assert (again / "vocab.txt").read_text() == (saved / "vocab.txt").read_text()
    _assert_same(ours.encode_batch(lines), _call(_hf("auto", again), lines), lines, "electra")


# -- the families' own vocabulary files, read by both libraries -------------------------------------
def test_roberta_vocab_and_merges_load_like_transformers(trained, lines, tmp_path):
    tok, _ = trained["bpe"]
    assert tok.save_vocab(tmp_path) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "vocab.json"]
    ours = Tokenizer.from_pretrained(tmp_path)
    assert ours.kind == "bpe" and ours.vocab_size == tok.vocab_size
    theirs = transformers.RobertaTokenizerFast.from_pretrained(tmp_path)  # transformers' own build from the files
    texts = lines + ADVERSARIAL
    ours_enc = ours.encode_batch(texts)
    _assert_same(ours_enc, _call(theirs, texts), texts, "vocab.json")
    _assert_same(ours.encode_batch(texts[:100], texts[100:200]), _call(theirs, texts[:100], texts[100:200]), texts)
    assert [e.ids for e in ours_enc] == [e.ids for e in tok.encode_batch(texts)]
    # transformers 5 builds <mask> from these files without RoBERTa's lstrip (a "Ġ" before it); transformers 4,
    # RoBERTa's tokenizer.json and ours have it, and so does transformers reading what we save
    space, mask = ours.token_to_id("Ġ"), ours.mask_id
    is_ = ours.encode("is", add_special_tokens=False).ids
    assert ours.encode("is <mask>", add_special_tokens=False).ids == is_ + [mask]
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert theirs("is <mask>", add_special_tokens=False)["input_ids"] == is_ + [space, mask]
    saved = _hf("auto", ours.save_pretrained(tmp_path / "saved"))
    assert saved("is <mask>", add_special_tokens=False)["input_ids"] == is_ + [mask]


def _train_spm(lines: list[str], **options) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=900,
        minloglevel=2,
        **{"model_type": "unigram", **options},
    )
    return model.getvalue()


ALBERT_SPM = dict(pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, control_symbols=["[CLS]", "[SEP]", "[MASK]"])


@pytest.fixture(scope="module")
def spm_models(lines) -> dict[str, bytes]:
    """XLM-R's layout (<unk> <s> </s> first) and ALBERT's (<pad> <unk> [CLS] [SEP] [MASK])."""
    return {"xlmr": _train_spm(lines), "albert": _train_spm(lines, **ALBERT_SPM)}


@pytest.mark.parametrize(
    "flavour, filename, cls_name",
    [("xlmr", "sentencepiece.bpe.model", "XLMRobertaTokenizer"), ("albert", "spiece.model", "AlbertTokenizer")],
)
def test_sentencepiece_models_load_like_transformers(spm_models, lines, tmp_path, flavour, filename, cls_name):
    (tmp_path / filename).write_bytes(spm_models[flavour])
    ours = Tokenizer.from_pretrained(tmp_path)
    theirs = getattr(transformers, cls_name).from_pretrained(tmp_path)  # transformers' own conversion of the .model
    texts = [t for t in lines + ADVERSARIAL if "<mask>" not in t]
    _assert_same(ours.encode_batch(texts), _call(theirs, texts), texts, filename)
    a, b = texts[:100], texts[100:200]
    _assert_same(ours.encode_batch(a, b, max_length=32), _call(theirs, a, b, truncation=True, max_length=32), a)
    specials = {
        "xlmr": ("<s>", "</s>", "<pad>", "<unk>", "<mask>"),
        "albert": ("[CLS]", "[SEP]", "<pad>", "<unk>", "[MASK]"),
    }
    assert tuple(ours.specials[r] for r in ("cls", "sep", "pad", "unk", "mask")) == specials[flavour]
    assert ours.cls_id == theirs.cls_token_id and ours.mask_id == theirs.mask_token_id
    # saved with the family's class, settings and specials, it loads in transformers as the same tokenizer
    saved = ours.save_pretrained(tmp_path / "saved")
    auto = _hf("auto", saved)
    assert type(auto).__name__ == cls_name
    _assert_same(ours.encode_batch(texts), _call(auto, texts), texts, f"saved {filename}")


def test_xlmr_pieces_are_sentencepieces_own_shifted_by_fairseqs_pad(spm_models, lines, tmp_path):
    """An independent reference: SentencePiece itself. XLM-R's ids are its ids + 1 (for <pad>), <unk> at 3."""
    (tmp_path / "sentencepiece.bpe.model").write_bytes(spm_models["xlmr"])
    ours = Tokenizer.from_pretrained(tmp_path)
    sp = spm.SentencePieceProcessor(model_proto=spm_models["xlmr"])
    fairseq = {0: 3, 1: 0, 2: 2}
    for text in lines:
        want = [fairseq.get(i, i + 1) for i in sp.encode(text)]
        assert ours.encode(text, add_special_tokens=False).ids == want, text


# -- errors: one line, naming the file --------------------------------------------------------------
def _error(call) -> str:
    with pytest.raises(BertforgeError) as e:
        call()
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


def test_missing_special_tokens_are_one_line_errors(trained, tmp_path):
    _, saved = trained["bpe"]
    bad = tmp_path / "bad"
    shutil.copytree(saved, bad)
    config = json.loads((bad / "tokenizer_config.json").read_text())
    (bad / "tokenizer_config.json").write_text(json.dumps({**config, "mask_token": "<nope>"}))
    assert _error(lambda: Tokenizer.from_pretrained(bad)) == (
        f"{bad / 'tokenizer.json'}: tokenizer_config.json's mask_token '<nope>' is not in the vocabulary"
    )
    (bad / "tokenizer_config.json").write_text("{")
    assert _error(lambda: Tokenizer.from_pretrained(bad)).startswith(f"{bad / 'tokenizer_config.json'}: not valid JSON")
    # a BPE tokenizer.json whose vocabulary has no mask token, and no config to name one
    lone = tmp_path / "lone.json"
    Backend(BPE({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4}, [])).save(str(lone))
    assert _error(lambda: Tokenizer.from_pretrained(lone)) == (
        f"{lone}: no mask token (none in its config, and no [MASK] or <mask> in the vocabulary)"
    )


def test_unreadable_vocabulary_files_are_one_line_errors(trained, spm_models, tmp_path, monkeypatch):
    tok, _ = trained["bpe"]
    d = tok.save_vocab(tmp_path / "bpe")
    (d / "merges.txt").rename(d / "kept.txt")
    assert (
        _error(lambda: Tokenizer.from_pretrained(d))
        == f"{d}: vocab.json without merges.txt (a byte-level BPE needs both)"
    )
    (d / "merges.txt").write_text("#version: 0.2\nĠ t\nthree tokens here\n", encoding="utf-8")
    assert (
        _error(lambda: Tokenizer.from_pretrained(d))
        == f"{d / 'merges.txt'}: line 3: expected two tokens separated by a space"
    )
    (d / "kept.txt").rename(d / "merges.txt")
    (d / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    assert "vocab.json: vocabulary lacks the special token(s) <s>, <pad>, </s>, <unk>, <mask>" in _error(
        lambda: Tokenizer.from_pretrained(d)
    )
    (d / "vocab.json").write_text("[1, 2")
    assert _error(lambda: Tokenizer.from_pretrained(d)).startswith(f"{d / 'vocab.json'}: not valid JSON")
    # SentencePiece: not a model, a BPE one, ALBERT's layout under XLM-R's name, no sentencepiece package
    model = tmp_path / "sentencepiece.bpe.model"
    model.write_bytes(b"\xff\x00 not a protobuf")
    assert _error(lambda: Tokenizer.from_pretrained(model)).startswith(f"{model}: not a SentencePiece model")
    model.write_bytes(spm_models["albert"])
    assert _error(lambda: Tokenizer.from_pretrained(model)) == (
        f"{model}: not an XLM-R SentencePiece model (it starts <pad> <unk> [CLS], not <unk> <s> </s>)"
    )
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    assert _error(lambda: Tokenizer.from_pretrained(model)) == (
        f"{model}: reading a SentencePiece model needs the sentencepiece package: "
        "pip install 'bertforge[sentencepiece]'"
    )


def test_a_sentencepiece_bpe_model_is_refused(lines, tmp_path):
    (tmp_path / "spiece.model").write_bytes(_train_spm(lines, model_type="bpe"))
    assert _error(lambda: Tokenizer.from_pretrained(tmp_path)) == (
        f"{tmp_path / 'spiece.model'}: a SentencePiece BPE model; only Unigram ones (XLM-R's, ALBERT's) are read"
    )


def test_training_and_saving_errors(trained, corpus, tmp_path):
    assert _error(lambda: train_vocab([corpus], 700, kind="chars")) == (
        "unknown vocabulary kind 'chars' (choose from wordpiece, bpe, unigram)"
    )
    assert (
        _error(lambda: train_vocab([corpus], 200, kind="bpe"))
        == "vocab size 200 is too small (a byte-level BPE needs 262)"
    )
    assert _error(lambda: train_vocab([corpus], 700, lowercase=True, kind="unigram")).startswith(
        "a unigram vocabulary keeps case"
    )
    assert _error(lambda: trained["unigram"][0].save_vocab(tmp_path)) == (
        "a unigram vocabulary has no file of its own: use save_pretrained"
    )


# -- the command line -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_vocab_command_writes_a_tokenizer_directory(corpus, lines, tmp_path, monkeypatch, capsys, kind):
    out = tmp_path / kind
    argv = ["bertforge", "vocab", "--corpus", str(corpus), "--vocab-size", "700", "--kind", kind, "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0
    assert capsys.readouterr().out == f"wrote {out}/tokenizer.json and its config (700 entries, {kind}, cased)\n"
    ours = Tokenizer.from_pretrained(out)
    _assert_same(ours.encode_batch(lines), _call(_hf("auto", out), lines), lines, kind)
