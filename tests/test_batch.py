"""The batch helper: right padding, the encoder's three inputs, and flattened windows."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from bertforge.batch import encoder_batch, flatten_windows, pad_rows


def test_pad_rows_left_aligns_and_fills_with_the_value():
    out = pad_rows([[1, 2, 3], [4], []], -100)
    assert out.dtype == torch.int64
    assert out.tolist() == [[1, 2, 3], [4, -100, -100], [-100, -100, -100]]


def test_pad_rows_takes_numpy_rows_and_a_fixed_length():
    out = pad_rows([np.array([7, 8], dtype=np.uint16), np.array([9], dtype=np.int32)], 0, length=4)
    assert out.dtype == torch.int64
    assert out.tolist() == [[7, 8, 0, 0], [9, 0, 0, 0]]


def test_pad_rows_of_no_rows_is_empty():
    assert pad_rows([], 0).shape == (0, 0)


def test_encoder_batch_pads_ids_with_pad_id_types_with_zero_and_masks_real_tokens():
    batch = encoder_batch([[101, 5, 102], [101, 102]], [[0, 0, 1], [0, 1]], pad_id=3)
    assert list(batch) == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(v.dtype == torch.int64 for v in batch.values())
    assert batch["input_ids"].tolist() == [[101, 5, 102], [101, 102, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 1, 0]]


def test_encoder_batch_rounds_the_length_up_to_a_multiple():
    batch = encoder_batch([[1, 2, 3]], [[0, 0, 0]], pad_id=0, pad_to_multiple_of=8)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (1, 8)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0]]
    assert encoder_batch([[1] * 8], [[0] * 8], pad_id=0, pad_to_multiple_of=8)["input_ids"].shape == (1, 8)


def test_encoder_batch_of_no_rows_is_empty():
    batch = encoder_batch([], [], pad_id=0)
    assert all(v.shape == (0, 0) for v in batch.values())


def test_encoder_batch_of_encodings_matches_a_plain_loop(tiny_vocab):
    from bertforge import Tokenizer

    tok = Tokenizer.from_pretrained(tiny_vocab)
    encs = tok.encode_batch(["hello world", "a", "the quick brown fox"], ["x y", "z", "w"])
    batch = encoder_batch([e.ids for e in encs], [e.type_ids for e in encs], tok.pad_id)
    T = max(len(e.ids) for e in encs)
    for i, e in enumerate(encs):
        n = len(e.ids)
        assert batch["input_ids"][i].tolist() == e.ids + [tok.pad_id] * (T - n)
        assert batch["token_type_ids"][i].tolist() == e.type_ids + [0] * (T - n)
        assert batch["attention_mask"][i].tolist() == e.attention_mask + [0] * (T - n)
    assert tok.to_tensors(encs).keys() == batch.keys()
    assert all(torch.equal(tok.to_tensors(encs)[k], v) for k, v in batch.items())


@dataclass
class Enc:
    name: str
    overflowing: list = field(default_factory=list)


def test_flatten_windows_lists_every_window_with_its_owner_in_order():
    encs = [Enc("a", [Enc("a1"), Enc("a2")]), Enc("b"), Enc("c", [Enc("c1")])]
    flat, owner = flatten_windows(encs)
    assert [e.name for e in flat] == ["a", "a1", "a2", "b", "c", "c1"]
    assert owner == [0, 0, 0, 1, 2, 2]


def test_flatten_windows_without_windows_keeps_the_first_of_each():
    encs = [Enc("a", [Enc("a1")]), Enc("b")]
    flat, owner = flatten_windows(encs, windows=False)
    assert [e.name for e in flat] == ["a", "b"]
    assert owner == [0, 1]


def test_flatten_windows_of_real_encodings(tiny_vocab):
    from bertforge import Tokenizer

    tok = Tokenizer.from_pretrained(tiny_vocab)
    encs = tok.encode_batch(["word " * 40, "short"], max_length=16, stride=4)
    flat, owner = flatten_windows(encs)
    assert len(flat) == len(owner) == sum(1 + len(e.overflowing) for e in encs) > 2
    assert owner[-1] == 1 and set(owner[:-1]) == {0}
    assert all(len(e.ids) <= 16 for e in flat)
