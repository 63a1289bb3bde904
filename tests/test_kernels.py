"""The fp32 kernel choice: timed per shape and cached, the chosen layers equal to PyTorch's, and the
threads fitted to the CPUs this process may use."""

import json
import os
import subprocess
import sys

import pytest
import torch

from bertforge import kernels, load_pretrained
from bertforge.device import ThreadTuner, available_cpus
from bertforge.kernels import TrainLinear
from bertforge.precision import FusedLinear, prepare, train_linears


def test_each_shape_is_timed_once_and_cached(tmp_path, monkeypatch):
    cache = tmp_path / "kernels.json"
    calls = []
    real = kernels.time_shape
    monkeypatch.setattr(kernels, "time_shape", lambda *s: calls.append(s) or real(*s))
    first = kernels.packed_wins({(32, 96), (32, 128)}, cache)
    assert sorted(calls) == [(32, 96), (32, 128)] and set(first) == {(32, 96), (32, 128)}
    saved = json.loads(cache.read_text())
    [entry] = saved.values()
    assert set(entry) == {"32x96", "32x128"} and all(v["default_s"] > 0 and v["onednn_s"] > 0 for v in entry.values())
    assert kernels.packed_wins({(32, 96)}, cache) == {(32, 96): first[(32, 96)]} and len(calls) == 2  # read back
    entry["32x96"] = {"default_s": 1.0, "onednn_s": 0.5}  # what a machine where oneDNN wins would have timed
    cache.write_text(json.dumps(saved))
    assert kernels.packed_wins({(32, 96)}, cache) == {(32, 96): True}


@pytest.mark.parametrize("packed", [True, False])
def test_fp32_on_either_kernel_gives_the_same_numbers(minilm_dir, monkeypatch, packed):
    monkeypatch.setattr("bertforge.precision.packed_wins", lambda shapes: dict.fromkeys(shapes, packed))
    reference = load_pretrained(minilm_dir).eval()
    model = prepare(load_pretrained(minilm_dir), "fp32", "cpu")
    fused = [m for m in model.modules() if isinstance(m, FusedLinear)]
    assert len(fused) == (4 * 6 if packed else 0)  # qkv, out, up (with its GELU), down in 6 layers
    ids = torch.randint(1000, 30000, (4, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    with torch.inference_mode():
        want, got = reference(ids, attention_mask=mask), model(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got.last_hidden_state[real], want.last_hidden_state[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("forward,grad", [(True, True), (True, False), (False, True)])
def test_training_on_either_kernel_gives_the_same_loss_and_gradients(our_model, make_batch, monkeypatch, forward, grad):
    """The oneDNN forward and input gradient of ``TrainLinear`` equal PyTorch's (fp32, 1e-5); a model
    swapped by ``train_linears`` keeps its parameters and state dict, and the undo puts the layers back."""
    wins = lambda shapes: {s: forward if s[0] <= s[1] else grad for s in shapes}  # noqa: E731 (up-projections: forward)
    monkeypatch.setattr("bertforge.precision.packed_wins", wins)
    reference, model = our_model(seed=1), our_model(seed=1)
    keys = list(model.state_dict())
    undo = train_linears(model)
    assert list(model.state_dict()) == keys and any(isinstance(m, TrainLinear) for m in model.modules())
    reference.eval(), model.eval()  # (no dropout: the two draw differently)
    batch = make_batch([9, 5, 7])
    weights = torch.randn(3, 9, 32, generator=torch.Generator().manual_seed(0))
    for net in (reference, model):
        (net(**batch).last_hidden_state * weights).sum().backward()
    for (name, want), got in zip(reference.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-5, rtol=1e-5, msg=name)
    undo()
    assert not any(isinstance(m, TrainLinear) for m in model.modules())


def test_threads_follow_the_affinity_mask_not_the_core_count():
    code = (
        "import os, torch; from bertforge.device import available_cpus, fit_threads; "
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); torch.set_num_threads(4); "
        "print(available_cpus(), fit_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["1", "1"], out.stderr
    assert available_cpus() == len(os.sched_getaffinity(0))


def _drive(tuner: ThreadTuner, seconds_per_token: dict[int, float], batches: int) -> list[int]:
    """Run ``batches`` batches of 1000 tokens whose cost per token depends on the thread count."""
    used = []
    for _ in range(batches):
        n = tuner.threads()
        used.append(n)
        tuner.record(n, 1000, 1000 * seconds_per_token[n])
    return used


def test_the_thread_tuner_keeps_every_cpu_on_a_quiet_machine_and_probes_ever_less():
    used = _drive(ThreadTuner(4), {4: 1.0, 2: 1.8, 1: 3.2, 8: 0.9}, 400)
    assert used.count(4) > 390 and max(used) == 4  # never past the CPUs it has
    gaps = [i for i, n in enumerate(used) if n != 4]
    assert gaps[1] - gaps[0] < gaps[-1] - gaps[-2] == 64  # each lost try doubles the wait, up to 64


def test_the_thread_tuner_finds_fewer_threads_when_cores_are_taken_and_comes_back():
    tuner = ThreadTuner(2)
    busy = _drive(tuner, {2: 2.0, 1: 1.2}, 40)  # another process holds a core: 2 threads wait on it
    assert busy[-20:].count(1) >= 18 and busy.index(1) <= ThreadTuner.PROBE_EVERY  # (a try of 2 now and then)
    quiet = _drive(tuner, {2: 0.6, 1: 1.2}, 100)  # the core is free again
    assert quiet[-20:].count(2) >= 18


def test_a_model_on_packed_kernels_still_saves_and_exports(minilm_dir, tmp_path, monkeypatch):
    from bertforge import save_pretrained
    from bertforge.onnx import OnnxModel, export_onnx

    monkeypatch.setattr("bertforge.precision.packed_wins", lambda shapes: dict.fromkeys(shapes, True))
    model = prepare(load_pretrained(minilm_dir), "fp32", "cpu")
    again = load_pretrained(save_pretrained(model, tmp_path / "saved")).eval()
    ids = torch.randint(1000, 30000, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = model(ids).last_hidden_state
        torch.testing.assert_close(again(ids).last_hidden_state, want, atol=1e-5, rtol=1e-5)
    graph = OnnxModel(export_onnx(model, tmp_path / "model.onnx"), model.config, None)
    got = graph(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
    torch.testing.assert_close(torch.as_tensor(got.last_hidden_state), want, atol=1e-4, rtol=1e-4)


def test_a_tuned_pass_leaves_the_process_its_threads(minilm_dir, monkeypatch):
    from bertforge import Embedder

    tuner = ThreadTuner(2)
    tuner.current = 1  # as after finding a core taken
    monkeypatch.setattr("bertforge.infer.thread_tuner", lambda: tuner)
    torch.set_num_threads(2)
    Embedder.from_pretrained(minilm_dir, device="cpu")(["a text", "another one"])
    assert 1 in tuner.rate and torch.get_num_threads() == 2  # batches ran at 1; the process has its 2 back
