"""Sentence-transformers directories, read and written: tiny random models built and saved by the real
library (each pooling mode, several at once, Dense and Normalize, prompts, a Transformer in a subfolder,
a RoBERTa-family encoder) embed here as ``SentenceTransformer.encode`` does, and a directory saved here
loads in sentence-transformers and encodes the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from conftest import sentiment_rows
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

import bertforge
from bertforge import sentence
from bertforge.modeldir import ModelDir

# different lengths, so batches pad; the last is cut by the shorter max_seq_length below
TEXTS = [
    "a cat",
    "the quick brown fox jumps over the lazy dog near the river",
    "hello world",
    "x",
    "sentence embeddings from a small random model, padded in batches of different lengths",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen",
]
MODES = ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]


def save_st(path: Path, encoder: Path, after, max_seq_length: int | None = None, **kwargs) -> Path:
    """A SentenceTransformer of ``encoder`` then ``after(width)``'s modules, saved to ``path``."""
    torch.manual_seed(0)
    transformer = Transformer(str(encoder), max_seq_length=max_seq_length)
    model = SentenceTransformer(modules=[transformer, *after(transformer.get_embedding_dimension())], **kwargs)
    model.save(str(path))
    return path


def reference(directory: Path, texts=TEXTS, **kwargs) -> torch.Tensor:
    return SentenceTransformer(str(directory), device="cpu").encode(texts, convert_to_tensor=True, **kwargs)


def assert_same(directory: Path, texts=TEXTS, **kwargs) -> torch.Tensor:
    """Our Embedder (with a small batch budget: several batches) equals sentence-transformers' encode."""
    got = torch.as_tensor(bertforge.Embedder.from_pretrained(directory)(texts, max_tokens=64, **kwargs))
    torch.testing.assert_close(got, reference(directory, texts, **kwargs), atol=1e-5, rtol=0)
    return got


def edit_json(path: Path, **changes) -> None:
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**cfg, **changes}))


def test_minilm_directory(minilm_dir):
    """The real all-MiniLM-L6-v2: legacy pooling flags, max_seq_length 256, Normalize."""
    assert_same(minilm_dir, TEXTS[:4])


@pytest.mark.parametrize("mode", MODES)
def test_each_pooling_mode(tiny_dir, tmp_path, mode):
    d = save_st(tmp_path / "st", tiny_dir, lambda h: [Pooling(h, pooling_mode=mode)], max_seq_length=16)
    assert ModelDir.open(d).pooling.pooling == mode and not ModelDir.open(d).pooling.normalize
    assert_same(d)


def test_several_modes_concatenate_in_their_order(tiny_dir, tmp_path):
    d = save_st(tmp_path / "st", tiny_dir, lambda h: [Pooling(h, pooling_mode=("max", "mean", "cls"))])
    assert assert_same(d).shape == (len(TEXTS), 3 * ModelDir.open(d).config.hidden_size)
    # the legacy flags: sentence-transformers' fixed order (cls, max, mean_sqrt_len_tokens), whatever the keys' order
    flags = {f"pooling_mode_{k}": True for k in ("mean_sqrt_len_tokens", "max_tokens", "cls_token")}
    (d / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": ModelDir.open(d).config.hidden_size, **flags})
    )
    assert ModelDir.open(d).pooling.pooling == "cls+max+mean_sqrt_len_tokens"
    assert_same(d)


def test_dense_tanh_identity_and_normalize(tiny_dir, tmp_path):
    def after(h):
        return [Pooling(h), Dense(h, 16, activation_function=torch.nn.Tanh()), Dense(16, 8, bias=False,
                activation_function=torch.nn.Identity()), Normalize()]  # fmt: skip

    d = save_st(tmp_path / "st", tiny_dir, after)
    got = assert_same(d)
    assert got.shape == (len(TEXTS), 8)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(TEXTS)))
    # older saves keep the Dense weights in pytorch_model.bin
    for folder in ("2_Dense", "3_Dense"):
        torch.save(load_file(d / folder / "model.safetensors"), d / folder / "pytorch_model.bin")
        (d / folder / "model.safetensors").unlink()
    assert_same(d)


def test_prompts_excluded_from_every_mode(tiny_dir, tmp_path):
    prompts = {"query": "search query: ", "doc": "a passage of text: "}
    d = save_st(
        tmp_path / "st",
        tiny_dir,
        lambda h: [Pooling(h, pooling_mode=tuple(MODES), include_prompt=False)],
        prompts=prompts,
        default_prompt_name="query",
    )
    embedder = bertforge.Embedder.from_pretrained(d)
    assert embedder.settings.default_prompt_name == "query" and embedder.settings.prompts["doc"] == prompts["doc"]
    default = assert_same(d)  # the default prompt, out of the pooling
    assert not torch.allclose(default, assert_same(d, prompt_name="doc"), atol=1e-3)
    assert_same(d, prompt="the ")
    with pytest.raises(bertforge.BertforgeError, match="unknown prompt name 'nope'"):
        embedder(TEXTS, prompt_name="nope")


def test_transformer_in_a_subfolder(tiny_dir, tmp_path):
    d = save_st(tmp_path / "st", tiny_dir, lambda h: [Pooling(h, pooling_mode="cls"), Normalize()])
    sub = d / "0_Transformer"
    sub.mkdir()
    keep = {"modules.json", "config_sentence_transformers.json", "README.md"}
    for f in [f for f in d.iterdir() if f.is_file() and f.name not in keep]:
        f.rename(sub / f.name)
    modules = json.loads((d / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (d / "modules.json").write_text(json.dumps(modules))
    md = ModelDir.open(d)
    assert (md.path, md.root) == (sub, d)
    assert_same(d)


def test_onnx_runtime_applies_the_modules(tiny_dir, tmp_path):
    from bertforge.onnx import export_onnx

    d = save_st(tmp_path / "st", tiny_dir, lambda h: [Pooling(h, pooling_mode=("mean", "max")), Dense(2 * h, 8)])
    md = ModelDir.open(d)
    export_onnx(bertforge.load_pretrained(md), md.onnx_path("fp32"), source=md.path)
    got = torch.as_tensor(bertforge.Embedder.from_pretrained(d, runtime="onnx")(TEXTS))
    torch.testing.assert_close(got, reference(d), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory) -> Path:
    """A random tiny RoBERTa saved by transformers, with a byte-level BPE vocabulary trained here (cased)."""
    d = tmp_path_factory.mktemp("roberta")
    corpus = d / "corpus.txt"
    corpus.write_text("".join(f"{text}\n{text.title()}\n" for text, _ in sentiment_rows(1000, 5)), encoding="utf-8")
    tok = bertforge.train_vocab([corpus], 400, kind="bpe", show_progress=False)
    config = transformers.RobertaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, type_vocab_size=1,
        vocab_size=tok.vocab_size, max_position_embeddings=66, pad_token_id=tok.pad_id, bos_token_id=tok.cls_id,
        eos_token_id=tok.sep_id, layer_norm_eps=1e-5,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    return d / "model"


def test_roberta_family_with_lowercasing_and_a_length(roberta_dir, tmp_path):
    d = save_st(tmp_path / "st", roberta_dir, lambda h: [Pooling(h, pooling_mode="weightedmean"), Dense(h, 8)])
    edit_json(d / "sentence_bert_config.json", max_seq_length=12, do_lower_case=True)
    texts = [t.title() for t in TEXTS[:4]] + ["A Wonderful Film, The Plot Was Awful And Boring But The Music Superb"]
    settings = ModelDir.open(d).sentence
    assert (settings.max_length, settings.lowercase) == (12, True)
    got = assert_same(d, texts)
    torch.testing.assert_close(got, assert_same(d, [t.lower() for t in texts]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean", "manhattan"])
def test_similarity_functions(tiny_dir, tmp_path, name):
    d = save_st(tmp_path / "st", tiny_dir, lambda h: [Pooling(h, pooling_mode="max")], similarity_fn_name=name)
    a, b = TEXTS[:3], TEXTS[3:]
    st = SentenceTransformer(str(d), device="cpu")
    expected = st.similarity_pairwise(st.encode(a, convert_to_tensor=True), st.encode(b, convert_to_tensor=True))
    got = torch.as_tensor(bertforge.Embedder.from_pretrained(d).similarity(a, b))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "modes, activation",
    [(("cls", "mean"), "torch.nn.modules.activation.Tanh"), (("max", "cls"), "torch.nn.modules.linear.Identity")],
)
def test_saved_directory_loads_in_sentence_transformers(tiny_dir, tmp_path, modes, activation):
    model, tok = bertforge.load_pretrained(tiny_dir), bertforge.Tokenizer.from_pretrained(tiny_dir)
    width = model.config.hidden_size
    torch.manual_seed(1)
    dense = sentence.Dense.from_linear(torch.nn.Linear(2 * width, 8), activation)
    modules = bertforge.SentenceModules(
        (sentence.Pooling(modes, include_prompt=False), dense, sentence.Normalize()),
        max_length=20,
        prompts={"query": "search query: "},
        default_prompt_name="query",
        similarity_fn_name="dot",
    )
    d = bertforge.save_sentence_transformer(model, tmp_path / "st", tok, modules)
    st = SentenceTransformer(str(d), device="cpu")
    assert (st.similarity_fn_name, st.default_prompt_name, st.max_seq_length) == ("dot", "query", 20)
    expected = st.encode(TEXTS, convert_to_tensor=True)
    direct = bertforge.embed(model, tok, TEXTS, max_length=20, modules=modules, prompt="search query: ")
    torch.testing.assert_close(torch.as_tensor(direct), expected, atol=1e-5, rtol=0)
    assert_same(d)
    with pytest.raises(bertforge.BertforgeError, match="sentence-transformers has no pooler mode"):
        bertforge.save_sentence_transformer(model, tmp_path / "p", tok, bertforge.SentenceModules().override("pooler"))
    assert not (tmp_path / "p").exists()  # refused before anything is written


def test_unknown_module_type_is_a_one_line_error(tiny_dir, tmp_path):
    d = save_st(tmp_path / "st", tiny_dir, lambda h: [Pooling(h)])
    modules = json.loads((d / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"})
    (d / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(bertforge.BertforgeError) as e:
        bertforge.Embedder.from_pretrained(d)
    assert str(e.value) == (
        f"{d}: unknown module type 'sentence_transformers.models.LayerNorm' in modules.json "
        "(bertforge reads Transformer, Pooling, Dense, Normalize)"
    )


def test_missing_dense_weights_is_a_one_line_error(tiny_dir, tmp_path):
    d = save_st(tmp_path / "st", tiny_dir, lambda h: [Pooling(h), Dense(h, 8)])
    (d / "2_Dense" / "model.safetensors").unlink()
    with pytest.raises(bertforge.BertforgeError) as e:
        bertforge.Embedder.from_pretrained(d)
    assert str(e.value) == f"{d / '2_Dense'}: no model.safetensors or pytorch_model.bin (the Dense module's weights)"
    shutil.rmtree(d / "2_Dense")
    with pytest.raises(bertforge.BertforgeError, match="a Dense module without its config.json"):
        bertforge.Embedder.from_pretrained(d)
