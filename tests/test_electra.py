"""ELECTRA pretraining (`bertforge pretrain --objective electra`): the loss against a hand computation and
transformers' ElectraForMaskedLM / ElectraForPreTraining, replaced-token labels, whole-word masks reaching
the generator, exports that transformers loads with the same logits, exact resume, fine-tuning from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, quick_args, sentiment_rows, write_csv
from safetensors.torch import load_file

from bertforge import BertConfig, BertforgeError, Tokenizer, load_pretrained
from bertforge.assets import fetch
from bertforge.data.pretrain import PretrainDataConfig, prepare
from bertforge.electra import ElectraPretrainer, generator_config, gumbel_sample, replaced_labels
from bertforge.heads import IGNORE_INDEX
from bertforge.tasks.pretrain import ElectraPretrainTask

ASSETS = Path(__file__).parent / "assets"
BIN = Path(sys.executable).parent
QUIET = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """English shards with the real uncased vocabulary (minilm-l6's), so a fine-tune can learn words."""
    out = tmp_path_factory.mktemp("electra") / "en"
    config = PretrainDataConfig(max_seq_len=48, dupe_factor=2, eval_fraction=0.1, nsp=False)
    prepare([ASSETS / "corpus_en.txt"], fetch("minilm-l6"), out, config, workers=1, progress=False)
    return out


def pretrain(shards: Path, out: Path, *extra: str, steps: int = 12, wait: bool = True):
    cmd = [str(BIN / "bertforge"), "pretrain", "--data", str(shards), "--out", str(out), "--objective", "electra",
           "--preset", "tiny", "--generator-size", "0.5", "--max-steps", str(steps), "--batch-size", "8",
           "--lr", "1e-3", "--warmup", "2", "--log-every", "1", "--eval-every", "6", *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("electra-run") / "run"
    pretrain(shards, out, "--save-every", "4")
    return out


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def tiny_pair(vocab_size: int, seed: int = 0) -> ElectraPretrainer:
    torch.manual_seed(seed)
    config = BertConfig.preset("tiny", model_type="electra", vocab_size=vocab_size, embedding_size=64, **QUIET)
    return ElectraPretrainer.new(config, 0.5).eval()


def test_generator_config_follows_electra():
    small = BertConfig.preset("L12-H256", model_type="electra")  # ELECTRA-small: 12 x 256, 128-wide embeddings
    gen = generator_config(small, 0.25)
    assert (gen.hidden_size, gen.num_attention_heads, gen.intermediate_size) == (64, 1, 256)
    assert (gen.embedding_width, gen.num_hidden_layers) == (128, 12)
    base = generator_config(BertConfig.preset("base", model_type="electra", embedding_size=768), 1 / 3)
    assert (base.hidden_size, base.num_attention_heads, base.embedding_width) == (256, 4, 768)
    with pytest.raises(BertforgeError, match="must be in"):
        generator_config(small, 0)


def test_embeddings_are_shared_and_sampling_has_no_gradient():
    pair = tiny_pair(100)
    d, g = pair.discriminator.bert.embeddings, pair.generator.bert.embeddings
    assert all(getattr(d, n) is getattr(g, n) for n in ("word", "position", "token_type", "norm"))
    assert pair.generator.head.mlm.decoder.weight is d.word.weight
    assert d.project is not None and g.project is None  # 64-wide embeddings: 128 in the discriminator, 64 here
    ids = torch.randint(5, 100, (2, 10))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 3:6] = ids[:, 3:6]
    out = pair.train()(ids.masked_fill(labels != IGNORE_INDEX, 4), torch.ones_like(ids), labels)
    # the discriminator's loss reaches the generator only through the shared embeddings, never through sampling
    out.discriminator_loss.backward()
    assert pair.generator.bert.layers[0].ffn.up.weight.grad is None
    assert pair.generator.head.mlm.transform.weight.grad is None
    assert d.word.weight.grad is not None and pair.discriminator.bert.layers[0].ffn.up.weight.grad is not None


def test_loss_against_hand_computation_and_transformers(shards, tmp_path):
    """On a real batch (padding, 80/10/10 masks): the generator's loss is transformers' ElectraForMaskedLM
    cross-entropy at the masked positions, the samples are the Gumbel-max draws from its logits, the
    labels mark what changed, the discriminator's loss is the hand-written BCE over real tokens of
    ElectraForPreTraining's logits (and its own loss), and the task's loss is generator + 50 x that."""
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    tok = Tokenizer.from_pretrained(fetch("minilm-l6"))
    task = ElectraPretrainTask(shards, tok)
    batch = task.collate(list(range(6)), np.random.default_rng(0))
    mask = batch["attention_mask"]
    assert (mask == 0).any()  # padded
    pair = tiny_pair(tok.vocab_size)
    pair.save(tmp_path / "pair")
    out = pair(**batch, generator=torch.Generator().manual_seed(7))

    gen_hf = ElectraForMaskedLM.from_pretrained(tmp_path / "pair" / "generator").eval()
    disc_hf = ElectraForPreTraining.from_pretrained(tmp_path / "pair").eval()
    labels = batch["labels"]
    masked = labels != IGNORE_INDEX
    with torch.no_grad():
        logits = gen_hf(batch["input_ids"], mask, batch["token_type_ids"]).logits[masked]  # (M, V)
    gen_loss = -(logits.log_softmax(-1).gather(1, labels[masked][:, None])).mean()
    torch.testing.assert_close(out.generator_loss, gen_loss, atol=1e-5, rtol=0)

    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(7))
    sampled = (logits - torch.log(-torch.log(u))).argmax(-1)
    original = torch.where(masked, labels, batch["input_ids"])
    corrupted = original.clone()
    corrupted[masked] = sampled
    assert torch.equal(out.corrupted, corrupted)
    for r in range(labels.size(0)):
        for t in range(labels.size(1)):
            expected = IGNORE_INDEX if not mask[r, t] else int(corrupted[r, t] != original[r, t])
            assert int(out.replaced[r, t]) == expected
    assert 0 < int((out.replaced == 1).sum()) <= int(masked.sum())

    with torch.no_grad():
        hf = disc_hf(corrupted, mask, batch["token_type_ids"], labels=out.replaced.clamp_min(0))
    torch.testing.assert_close(out.discriminator_logits[mask.bool()], hf.logits[mask.bool()], atol=1e-5, rtol=0)
    x, y = hf.logits[mask.bool()], out.replaced[mask.bool()].float()
    p = torch.sigmoid(x)
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    torch.testing.assert_close(out.discriminator_loss, bce, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.discriminator_loss, hf.loss, atol=1e-5, rtol=0)

    torch.manual_seed(7)  # the task's losses draw from the global generator: the same draws as above
    torch.testing.assert_close(u, torch.rand(logits.shape))
    torch.manual_seed(7)
    terms = task.losses(pair, batch)
    assert task.counts(batch) == {"mlm": int(masked.sum()), "rtd": int(mask.sum())}
    torch.testing.assert_close(terms["mlm"], gen_loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(terms["rtd"], 50 * bce, atol=5e-4, rtol=0)


def test_a_sampled_token_equal_to_the_original_counts_as_original():
    """A generator that always says token 7: where 7 was the original the discriminator's label is 0 (not
    replaced), elsewhere among the masks 1; unmasked real tokens 0, padding ignored."""
    pair = tiny_pair(50)
    with torch.no_grad():
        pair.generator.head.mlm.decoder.bias[7] = 1e4
    ids = torch.tensor([[2, 7, 9, 11, 7, 3, 0, 0], [2, 12, 7, 13, 14, 15, 16, 3]])
    mask = (ids != 0).long()
    labels = torch.full_like(ids, IGNORE_INDEX)
    for r, t in [(0, 1), (0, 2), (0, 4), (1, 2), (1, 5)]:
        labels[r, t] = ids[r, t]
    inputs = ids.masked_fill(labels != IGNORE_INDEX, 4)
    out = pair(inputs, mask, labels)
    assert torch.equal(out.corrupted, torch.where(labels != IGNORE_INDEX, torch.tensor(7), ids))
    expected = torch.tensor([[0, 0, 1, 0, 0, 0, -100, -100], [0, 0, 0, 0, 0, 1, 0, 0]])
    assert torch.equal(out.replaced, expected)
    assert torch.equal(replaced_labels(ids, ids, mask), torch.zeros_like(ids).masked_fill(mask == 0, IGNORE_INDEX))
    # gumbel-max draws follow the softmax
    logits = torch.tensor([[0.0, np.log(3.0)]]).repeat(20000, 1)
    share = float(gumbel_sample(logits, torch.Generator().manual_seed(0)).float().mean())
    assert share == pytest.approx(0.75, abs=0.015)


def test_whole_word_masks_reach_the_generator(tmp_path):
    """Chinese shards with jieba whole-word dynamic masks: the generator predicts exactly the masked
    positions, which are whole jieba words, and the discriminator's input differs only there."""
    out = tmp_path / "zh"
    config = PretrainDataConfig(max_seq_len=64, dupe_factor=2, eval_fraction=0.1, whole_word_mask=True,
                                dynamic_mask=True, nsp=False)  # fmt: skip
    prepare([ASSETS / "corpus_zh.txt"], ASSETS / "vocab_zh.txt", out, config, workers=1, progress=False)
    tok = Tokenizer.from_pretrained(ASSETS / "vocab_zh.txt")
    task = ElectraPretrainTask(out, tok)
    idx = list(range(min(16, task.num_train())))
    batch = task.collate(idx, np.random.default_rng(3))
    pair = tiny_pair(tok.vocab_size)
    seen = {}
    pair.generator.register_forward_hook(lambda m, args, kwargs, o: seen.update(kwargs), with_kwargs=True)
    result = pair(**batch)
    masked = batch["labels"] != IGNORE_INDEX
    assert torch.equal(seen["labels"], batch["labels"]) and result.generator_logits.size(0) == int(masked.sum())
    joined_words = 0
    for r, i in enumerate(idx):
        x = task.train_data[i]
        n = len(x["input_ids"])
        m = masked[r, :n].numpy()
        special = np.isin(x["input_ids"], list(tok.special_ids))
        joined = x["word_continues"][1:].astype(bool) & ~special[:-1]
        assert np.array_equal(m[1:][joined], m[:-1][joined])  # a word is masked whole or not at all
        joined_words += int((m[1:] & joined).sum())
    assert joined_words > 5  # multi-character words were masked
    original = torch.where(masked, batch["labels"], batch["input_ids"])
    assert torch.equal(result.corrupted[~masked], original[~masked])


def test_run_curves_and_exports_load_in_transformers(run):
    """The discriminator is an ElectraForPreTraining directory, the generator an ElectraForMaskedLM one;
    transformers loads both with nothing missing and gives our logits within 1e-5; both load back here."""
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    evals = [r for r in rows(run) if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [6, 12]
    names = {"generator_loss", "generator_accuracy", "discriminator_loss", "rtd_accuracy", "rtd_accuracy_baseline"}
    assert names <= set(evals[0])
    assert evals[0]["rtd_accuracy_baseline"] == max(evals[0]["replaced_share"], 1 - evals[0]["replaced_share"])
    train = [r["loss"] for r in rows(run) if r["split"] == "train"]
    assert len(train) == 12 and train[-1] < train[0]
    assert (run / "curves.png").stat().st_size > 1000
    final = run / "final"
    assert json.loads((final / "config.json").read_text())["architectures"] == ["ElectraForPreTraining"]
    assert json.loads((final / "generator" / "config.json").read_text())["architectures"] == ["ElectraForMaskedLM"]
    a, b = load_file(str(final / "model.safetensors")), load_file(str(final / "generator" / "model.safetensors"))
    for k in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
        key = f"electra.embeddings.{k}.weight"
        assert torch.equal(a[key], b[key]), key  # one shared table, saved in both

    tok = Tokenizer.from_pretrained(final)
    enc = [tok.encode(t).ids for t in ("the river ran into the sea .", "a short line")]
    ids = torch.zeros(2, max(map(len, enc)), dtype=torch.long)
    for r, e in enumerate(enc):
        ids[r, : len(e)] = torch.tensor(e)
    mask = (ids != 0).long()
    real = mask.bool()
    for directory, cls, head in ((final, ElectraForPreTraining, "discriminator"),
                                 (final / "generator", ElectraForMaskedLM, "mlm")):  # fmt: skip
        hf, info = cls.from_pretrained(directory, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        ours = load_pretrained(directory, head=head)
        with torch.no_grad():
            theirs, mine = hf.eval()(ids, mask).logits, ours(ids, mask).logits
        torch.testing.assert_close(mine[real], theirs[real], atol=1e-5, rtol=0)
    pair = ElectraPretrainer.load(final)
    assert pair.generator.bert.embeddings.word is pair.discriminator.bert.embeddings.word
    with pytest.raises(BertforgeError, match="no generator"):
        ElectraPretrainer.load(final / "generator")


def test_kill_9_and_resume_gives_identical_weights(shards, run, tmp_path):
    """Dropout on, samples drawn every step: killed with SIGKILL and resumed, both models end bit-identical
    to the straight run (the module's run: 12 steps, a checkpoint every 4)."""
    killed = tmp_path / "killed"
    proc = pretrain(shards, killed, "--save-every", "4", wait=False)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-8" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    said = pretrain(shards, killed, "--save-every", "4", "--resume")
    assert "(step 8)" in said.stdout + said.stderr
    for sub in ("", "generator"):
        a = load_file(str(run / "final" / sub / "model.safetensors"))
        b = load_file(str(killed / "final" / sub / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (sub, k)

    def curves(r: Path) -> list[dict]:  # (time and throughput differ)
        return [{k: v for k, v in x.items() if k not in ("elapsed_s", "tokens_per_s")} for x in rows(r)]

    assert curves(killed) == curves(run)


def test_continued_pretraining_and_finetuning_from_the_discriminator(shards, run, tmp_path):
    """--init continues from a run's final/ (both models); the discriminator fine-tunes for classification."""
    from bertforge.api import finetune

    second = tmp_path / "second"
    pretrain(shards, second, "--init", str(run / "final"), "--save-every", "0", steps=2)
    assert (second / "final" / "generator" / "model.safetensors").is_file()
    train = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(480, 0))
    metrics = finetune(
        "classify", run / "final", train, tmp_path / "clf", args=quick_args(tmp_path / "clf" / "run", 90)
    )
    assert metrics["accuracy"] > 0.9
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["architectures"] == ["ElectraForSequenceClassification"]


def test_bad_objective_settings_are_one_line_errors(shards, tmp_path):
    base = [str(BIN / "bertforge"), "pretrain", "--data", str(shards), "--max-steps", "1"]
    cases = [
        (["--objective", "electra", "--family", "bert"], "the electra objective trains an ELECTRA model"),
        (["--objective", "mlm+nsp"], "mlm+nsp needs shards of sentence pairs"),
        (["--objective", "bogus"], "unknown objective 'bogus'"),
    ]
    for i, (extra, message) in enumerate(cases):
        proc = subprocess.run([*base, "--out", str(tmp_path / f"r{i}"), *extra], capture_output=True, text=True)
        assert_one_line_error(proc, message)


def test_two_processes_under_torchrun(shards, tmp_path):
    """torchrun with 2 CPU processes (gloo): the pair trains with the batch split between them and rank 0
    alone writes both models (the samples are drawn per rank, so the steps are not one process's)."""
    out = tmp_path / "ddp"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "bertforge", "pretrain",
           "--data", str(shards), "--out", str(out), "--objective", "electra", "--preset", "tiny",
           "--max-steps", "4", "--batch-size", "8", "--log-every", "1", "--save-every", "0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [r["loss"] for r in rows(out) if r["split"] == "train"]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-4"]
    assert (out / "final" / "generator" / "model.safetensors").is_file()
