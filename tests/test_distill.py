"""Distillation's losses against values worked out by hand, and the layers a student keeps."""

from __future__ import annotations

import math

import pytest
import torch

from bertforge.distill import kept_layers, soft_loss
from bertforge.errors import BertforgeError


def test_softmax_kl_at_a_temperature_by_hand():
    s, t, T = [1.0, 0.0], [0.0, 1.0], 2.0
    ps = [math.exp(x / T) / sum(math.exp(y / T) for y in s) for x in s]
    pt = [math.exp(x / T) / sum(math.exp(y / T) for y in t) for x in t]
    kl = sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True)) * T * T
    got = soft_loss(torch.tensor([s]), torch.tensor([t]), "softmax", T)
    assert got.item() == pytest.approx(kl, rel=1e-6)


def test_sigmoid_binary_kl_and_mse_by_hand():
    s, t = 0.5, -1.0
    a, b = 1 / (1 + math.exp(-s)), 1 / (1 + math.exp(-t))
    kl = b * math.log(b / a) + (1 - b) * math.log((1 - b) / (1 - a))
    assert soft_loss(torch.tensor([[s]]), torch.tensor([[t]]), "sigmoid", 1.0).item() == pytest.approx(kl, rel=1e-6)
    assert soft_loss(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 0.0]]), "mse").item() == pytest.approx(5.0)


def test_kept_layers():
    assert kept_layers(3, 6) == [0, 2, 4]
    assert kept_layers("0,3,5", 6) == [0, 3, 5]
    for bad in ("7", "0,0", "2,1", "a,b"):
        with pytest.raises(BertforgeError):
            kept_layers(bad, 6)
