"""The encoder against transformers' BertModel: random tiny configs, same weights, same outputs (fp32, 1e-5).

Each case builds a randomly initialised transformers model, saves it with ``save_pretrained`` and loads
it with ``bertforge.load_pretrained``: the key table, the fused q/k/v and every activation are checked
at once. Our "math" backend is compared with transformers' "eager" attention, "sdpa" with "sdpa".
"""

from __future__ import annotations

import pytest
import torch

import bertforge
from bertforge import BertforgeError

# (hidden_act, hidden size, heads, token types): every activation BERT checkpoints name, 1 to 8 heads
CASES = [
    ("gelu", 32, 4, 2),
    ("gelu_new", 48, 2, 3),
    ("relu", 64, 8, 2),
    ("silu", 32, 1, 4),
    ("swish", 40, 5, 2),
    ("gelu_pytorch_tanh", 64, 4, 2),
    ("gelu_fast", 32, 2, 2),
]
BACKENDS = [("math", "eager"), ("sdpa", "sdpa")]
LENGTHS = [17, 5, 11, 1, 17, 2]  # padded batch: different lengths, one of a single token
TOL = dict(atol=1e-5, rtol=1e-5)


def _pair(hf_model, tmp_path, act, hidden, heads, types, backend, hf_backend, unpad, seed=0):
    theirs = hf_model(
        seed=seed,
        attn=hf_backend,
        hidden_act=act,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=3 * hidden,
        type_vocab_size=types,
        num_hidden_layers=2,
    )
    theirs.save_pretrained(tmp_path)
    ours, ours_report = bertforge.load_with_report(tmp_path, attention=backend, unpad=unpad)
    assert ours_report.initialised == [] and ours_report.unused == []
    return ours, theirs


@pytest.mark.parametrize("backend, hf_backend", BACKENDS)
@pytest.mark.parametrize("act, hidden, heads, types", CASES)
def test_dense_path_matches_transformers_everywhere(
    hf_model, make_batch, tmp_path, act, hidden, heads, types, backend, hf_backend
):
    ours, theirs = _pair(hf_model, tmp_path, act, hidden, heads, types, backend, hf_backend, unpad=False)
    batch = make_batch(LENGTHS, type_vocab_size=types, seed=1)
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    # every position, padding included: the dense path computes exactly what transformers does
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, **TOL)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, **TOL)


@pytest.mark.parametrize("backend, hf_backend", BACKENDS)
@pytest.mark.parametrize("act, hidden, heads, types", CASES)
def test_unpadded_path_matches_transformers_at_real_tokens(
    hf_model, make_batch, tmp_path, act, hidden, heads, types, backend, hf_backend
):
    ours, theirs = _pair(hf_model, tmp_path, act, hidden, heads, types, backend, hf_backend, unpad=True, seed=2)
    batch = make_batch(LENGTHS, type_vocab_size=types, seed=3)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real], **TOL)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, **TOL)
    assert not a.last_hidden_state[~real].any()


@pytest.mark.parametrize("unpad", [True, False])
def test_explicit_position_ids_match_transformers(hf_model, make_batch, tmp_path, unpad):
    theirs = hf_model(seed=4, max_position_embeddings=40)
    theirs.save_pretrained(tmp_path)
    ours = bertforge.load_pretrained(tmp_path, unpad=unpad)
    batch = make_batch([12, 7, 3], seed=4)
    positions = torch.arange(12).expand(3, 12) + torch.tensor([[0], [5], [20]])  # shifted starts
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        a = ours(**batch, position_ids=positions)
        b = theirs(**batch, position_ids=positions)
        default = ours(**batch)
    torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real], **TOL)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, **TOL)
    assert not torch.allclose(a.last_hidden_state[1][real[1]], default.last_hidden_state[1][real[1]], atol=1e-3)


@pytest.mark.parametrize("mask", [True, False])
def test_batches_without_padding_match_transformers(hf_model, make_batch, tmp_path, mask):
    theirs = hf_model(seed=5, type_vocab_size=3)
    theirs.save_pretrained(tmp_path)
    ours = bertforge.load_pretrained(tmp_path)
    batch = make_batch([20, 20, 20, 20], type_vocab_size=3, seed=6)
    if not mask:
        batch["attention_mask"] = None
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, **TOL)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, **TOL)


def test_switching_backend_after_loading(hf_model, make_batch, tmp_path):
    theirs = hf_model(seed=6, attn="eager")
    theirs.save_pretrained(tmp_path)
    ours = bertforge.load_pretrained(tmp_path, attention="sdpa")
    ours.set_attention("math")
    assert all(layer.attn.backend == "math" for layer in ours.layers)
    batch = make_batch([9, 4], seed=7)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real], **TOL)
    with pytest.raises(BertforgeError, match="unknown attention backend 'flash9'"):
        ours.set_attention("flash9")


def test_pool_false_skips_the_pooler(our_model, make_batch):
    model = our_model()
    batch = make_batch([5, 3])
    with torch.no_grad():
        out = model(**batch, pool=False)
        full = model(**batch)
    assert out.pooler_output is None
    assert torch.equal(out.last_hidden_state, full.last_hidden_state)


def test_sequence_longer_than_positions_is_an_error(our_model):
    model = our_model()  # 64 positions
    with pytest.raises(BertforgeError, match="sequence of 65 tokens is longer than the model's 64 positions"):
        model(torch.ones(1, 65, dtype=torch.long))


def test_unknown_attention_backend_is_an_error():
    with pytest.raises(BertforgeError, match="unknown attention backend 'flash'"):
        bertforge.BertModel(bertforge.BertConfig.preset("tiny"), attention="flash")


def test_dropout_is_active_in_training_and_off_in_eval(our_model, make_batch):
    model = our_model(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    batch = make_batch([8, 8])
    with torch.no_grad():
        e1, e2 = model(**batch).last_hidden_state, model(**batch).last_hidden_state
        model.train()
        t1, t2 = model(**batch).last_hidden_state, model(**batch).last_hidden_state
    assert torch.equal(e1, e2)
    assert not torch.allclose(t1, t2)


@pytest.mark.parametrize("unpad", [False, True])
def test_first_token_only_equals_the_full_last_layer(hf_model, make_batch, tmp_path, unpad):
    """Classification heads read [CLS] alone, so the last layer computes that row alone: the pooled
    output and the gradients it sends back are the full computation's."""
    theirs = hf_model(
        seed=4, attn="sdpa", hidden_size=32, num_attention_heads=4, intermediate_size=96, num_hidden_layers=3
    )
    theirs.save_pretrained(tmp_path)
    ours = bertforge.load_pretrained(tmp_path, unpad=unpad)
    batch = make_batch(LENGTHS, seed=5)
    full = ours(**batch)
    first = ours(**batch, first_token_only=True)
    assert first.last_hidden_state.shape == (len(LENGTHS), 1, 32)
    torch.testing.assert_close(first.last_hidden_state[:, 0], full.last_hidden_state[:, 0], **TOL)
    torch.testing.assert_close(first.pooler_output, full.pooler_output, **TOL)
    with torch.no_grad():
        torch.testing.assert_close(first.pooler_output, theirs(**batch).pooler_output, **TOL)
    g_full = torch.autograd.grad(full.pooler_output.square().sum(), list(ours.parameters()), allow_unused=True)
    g_first = torch.autograd.grad(first.pooler_output.square().sum(), list(ours.parameters()), allow_unused=True)
    for a, b in zip(g_full, g_first, strict=True):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
