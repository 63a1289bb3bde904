"""The real all-MiniLM-L6-v2 checkpoint (minilm-l6): hidden states and sentence embeddings against
transformers on real review snippets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import bertforge
from bertforge import Embedder, Tokenizer

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def texts(rotten_tomatoes) -> list[str]:
    return [r["text"] for r in rotten_tomatoes["test"][:64]]


@pytest.fixture(scope="module")
def theirs(minilm_dir):
    return transformers.AutoModel.from_pretrained(minilm_dir).eval()


@pytest.fixture(scope="module")
def hf_batch(minilm_dir, texts):
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    return dict(tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt"))


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.from_pretrained("minilm-l6")


@pytest.fixture(scope="module")
def hf_hidden(theirs, hf_batch):
    with torch.no_grad():
        return theirs(**hf_batch)


def test_checkpoint_loads_with_an_empty_report(minilm_dir):
    model, model_report = bertforge.load_with_report("minilm-l6")
    assert model_report.initialised == [] and model_report.unused == []
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.vocab_size) == (6, 384, 12, 30522)
    assert not hasattr(model, "load_report")  # returned beside the model, not stuck onto it


def test_batch_is_really_padded(hf_batch):
    lengths = hf_batch["attention_mask"].sum(1)
    assert hf_batch["input_ids"].shape[0] == 64
    assert lengths.min() < lengths.max() // 2  # plenty of padding to get wrong


@pytest.mark.parametrize("attention", ["sdpa", "math"])
@pytest.mark.parametrize("unpad", [True, False])
def test_hidden_states_match_transformers(minilm_dir, hf_batch, hf_hidden, attention, unpad):
    ours = bertforge.load_pretrained(minilm_dir, attention=attention, unpad=unpad)
    with torch.no_grad():
        out = ours(**hf_batch)
    real = hf_batch["attention_mask"].bool()
    torch.testing.assert_close(out.last_hidden_state[real], hf_hidden.last_hidden_state[real], **TOL)
    torch.testing.assert_close(out.pooler_output, hf_hidden.pooler_output, **TOL)


def test_our_tokenizer_gives_the_same_batch(hf_batch, texts):
    tok = Tokenizer.from_pretrained("minilm-l6")
    ours = tok.to_tensors(tok.encode_batch(texts, max_length=256))
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(ours[k], hf_batch[k]), k


def _reference_embeddings(hf_batch, hf_hidden) -> np.ndarray:
    """sentence-transformers' recipe: mean over real tokens, then L2 normalise."""
    m = hf_batch["attention_mask"].unsqueeze(-1).float()
    mean = (hf_hidden.last_hidden_state * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(mean, dim=-1).numpy()


def test_embed_equals_mean_pool_and_normalise(embedder, hf_batch, hf_hidden, texts):
    model, tok = embedder.model, embedder.tokenizer
    got = bertforge.embed(model, tok, texts, max_length=256)
    expected = _reference_embeddings(hf_batch, hf_hidden)
    assert got.shape == (64, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # a small token budget: many batches, reordered by length, results still in the caller's order
    small = bertforge.embed(model, tok, texts, max_length=256, max_tokens=256)
    np.testing.assert_allclose(small, expected, atol=1e-5)


def test_embedder_reads_the_checkpoint_settings(embedder, hf_batch, hf_hidden, texts):
    s = embedder.settings
    assert (s.pooling, s.normalize, s.max_length) == ("mean", True, 256)
    np.testing.assert_allclose(embedder(texts), _reference_embeddings(hf_batch, hf_hidden), atol=1e-5)
    raw = embedder(texts[:4], normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    cls = embedder(texts[:4], pooling="cls", normalize=False)
    np.testing.assert_allclose(cls, hf_hidden.last_hidden_state[:4, 0].numpy(), atol=1e-5)


def test_similarity_ranks_a_paraphrase_above_an_unrelated_sentence(embedder):
    a = ["A man is playing a guitar.", "A man is playing a guitar."]
    b = ["Someone plays the guitar.", "The stock market fell sharply today."]
    scores = embedder.similarity(a, b)
    assert scores.shape == (2,)
    assert scores[0] > 0.7 > 0.2 > scores[1]
    v = embedder(a[:1] + b[:1])
    np.testing.assert_allclose(scores[0], float(v[0] @ v[1]), atol=1e-6)
    with pytest.raises(bertforge.BertforgeError, match="2 first sentences but 1 second sentences"):
        embedder.similarity(a, b[:1])


def test_unknown_pooling_is_an_error(embedder):
    with pytest.raises(bertforge.BertforgeError, match="unknown pooling 'median'"):
        embedder(["x"], pooling="median")
