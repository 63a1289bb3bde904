"""Unpadding: the pure functions of padding.py, and that padding never changes a real token's output."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bertforge.padding import Packing, from_slots, pad, to_slots, unpad


@st.composite
def masks(draw) -> torch.Tensor:
    """(B, T) 0/1 masks with padding anywhere, including empty rows."""
    B = draw(st.integers(1, 6))
    T = draw(st.integers(1, 12))
    bits = draw(st.lists(st.lists(st.integers(0, 1), min_size=T, max_size=T), min_size=B, max_size=B))
    return torch.tensor(bits, dtype=torch.long)


@settings(max_examples=200, deadline=None)
@given(mask=masks(), width=st.integers(1, 3))
def test_unpad_then_pad_is_the_identity_on_real_tokens(mask, width):
    B, T = mask.shape
    x = torch.randn(B, T, width)
    p = Packing.from_mask(mask)
    packed = unpad(x, p)
    assert packed.shape == (int(mask.sum()), width)
    # row-major order of the real tokens
    assert torch.equal(packed, x[mask.bool()])
    back = pad(packed, p)
    assert torch.equal(back, x * mask[..., None])
    assert torch.equal(unpad(back, p), packed)


@settings(max_examples=200, deadline=None)
@given(mask=masks())
def test_slots_left_align_each_sequence(mask):
    B, T = mask.shape
    x = torch.randn(B, T, 2)
    p = Packing.from_mask(mask)
    lengths = mask.sum(1)
    assert p.lengths.tolist() == lengths.tolist() and p.max_len == int(lengths.max())
    slots = to_slots(unpad(x, p), p)
    assert slots.shape == (B, p.max_len, 2)
    for b in range(B):
        real = x[b][mask[b].bool()]
        n = len(real)
        assert torch.equal(slots[b, :n], real)
        assert torch.equal(slots[b, n:], x[mask.bool()][:1].expand(p.max_len - n, 2))  # masked filler
    assert torch.equal(from_slots(slots, p), unpad(x, p))
    key = p.key_mask()
    assert key.shape == (B, 1, 1, p.max_len)
    assert key[:, 0, 0].sum(1).tolist() == lengths.tolist()


def test_packing_of_a_known_mask():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    p = Packing.from_mask(mask)
    assert p.indices.tolist() == [0, 1, 5, 6, 7]
    assert p.slots.tolist() == [0, 1, 3, 4, 5]  # tight layout: 3 slots per sequence
    assert p.sources.tolist() == [0, 1, 0, 2, 3, 4, 0, 0, 0]  # padding slots read the first token
    assert (p.batch, p.seq_len, p.max_len) == (3, 4, 3)


# -- the encoder ------------------------------------------------------------------------------------
def _alone(model, ids, types):
    with torch.no_grad():
        return model(ids[None], torch.ones_like(ids)[None], types[None])


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("unpad_", [True, False])
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_padding_does_not_change_real_outputs(our_model, make_batch, side, unpad_, attention):
    model = our_model(seed=3)
    model.unpad = unpad_
    model.set_attention(attention)
    lengths = [9, 4, 1, 13, 7]
    batch = make_batch(lengths, seed=5, side=side, total=16)
    mask = batch["attention_mask"]
    # positions count from each sequence's first real token, so left padding needs explicit positions
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(**batch, position_ids=positions)
    for i in range(len(lengths)):
        real = mask[i].bool()
        alone = _alone(model, batch["input_ids"][i][real], batch["token_type_ids"][i][real])
        torch.testing.assert_close(out.last_hidden_state[i][real], alone.last_hidden_state[0], atol=1e-5, rtol=1e-5)
        if side == "right":  # the pooler reads position 0: the [CLS] slot only under right padding
            torch.testing.assert_close(out.pooler_output[i], alone.pooler_output[0], atol=1e-5, rtol=1e-5)
        if unpad_:
            assert not out.last_hidden_state[i][~real].any()  # padding holds zeros


def test_unpadded_and_dense_paths_agree(our_model, make_batch):
    model = our_model(seed=1)
    batch = make_batch([12, 3, 8, 12, 5], seed=2)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        model.unpad = True
        packed = model(**batch)
        model.unpad = False
        dense = model(**batch)
    torch.testing.assert_close(packed.last_hidden_state[real], dense.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.pooler_output, dense.pooler_output, atol=1e-5, rtol=1e-5)
    assert not packed.last_hidden_state[~real].any()
    assert dense.last_hidden_state[~real].abs().sum() > 0  # the dense path computes something there


def test_a_full_mask_is_the_same_as_no_mask(our_model, make_batch):
    model = our_model(seed=4)
    batch = make_batch([10, 10, 10], seed=1)
    with torch.no_grad():
        with_mask = model(**batch)
        without = model(batch["input_ids"], None, batch["token_type_ids"])
    assert torch.equal(with_mask.last_hidden_state, without.last_hidden_state)
    assert torch.equal(with_mask.pooler_output, without.pooler_output)
