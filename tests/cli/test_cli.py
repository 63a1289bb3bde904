"""The ``bertforge`` console script, run as users run it: fetch, vocab, embed, similarity.

Every error must be one line on stderr, "bertforge: error: ...", exit status 2, and no traceback.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BERTFORGE, assert_one_line_error, run_all

from bertforge import Embedder, assets
from bertforge.cli import _read_pairs, main
from bertforge.tokenizer import SPECIAL_TOKENS


def run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess:
    return run_all(list(args), ok=ok)[0]


def _main_error(monkeypatch, capsys, *args: str | Path) -> str:
    """Run ``bertforge ARGS`` in process; it must fail with exit status 2 and one line on stderr: that line."""
    monkeypatch.setattr(sys, "argv", ["bertforge", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("bertforge: error: "), err
    return err.rstrip("\n")


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.from_pretrained("minilm-l6")


def test_console_script_is_installed():
    assert BERTFORGE.is_file()


HELP = {
    "": ["fetch", "vocab", "embed", "similarity"],
    "fetch": ["--all", "--list"],
    "vocab": ["--corpus", "--vocab-size", "--out", "--cased", "--min-frequency"],
    "embed": ["--model", "--input", "--output", "--pooling", "--normalize", "--max-length", "--max-tokens"],
    "similarity": ["--model", "--pairs", "--threshold"],
}


def test_help_of_each_command():
    results = run_all(*([c, "--help"] if c else ["--help"] for c in HELP))
    for (command, options), proc in zip(HELP.items(), results, strict=True):
        assert proc.stdout.startswith(f"Usage: bertforge {command}".rstrip()), proc.stdout
        for option in options:
            assert option in proc.stdout, (command, option)


def test_similarity_of_two_sentences(embedder):
    a, b = "A man is playing a guitar.", "Someone plays the guitar."
    proc, unrelated = run_all(
        ["similarity", a, b], ["similarity", a, "The stock market fell sharply today.", "--threshold", "0.5"]
    )
    m = re.fullmatch(r"(-?\d\.\d{4})  (same|different) meaning\n", proc.stdout)
    assert m, proc.stdout
    expected = float(embedder.similarity([a], [b])[0])
    assert abs(float(m.group(1)) - expected) < 1e-4
    assert m.group(2) == ("same" if expected >= 0.7 else "different")
    assert unrelated.stdout.endswith("  different meaning\n")


def test_similarity_pairs_file_with_gold_labels(tmp_path, embedder):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(
        "# a comment, then a blank line\n\n"
        "A man is playing a guitar.\tSomeone plays the guitar.\tyes\n"
        "A man is playing a guitar.\tThe stock market fell sharply today.\tno\n"
        "The cat sleeps on the sofa.\tA kitten is napping on the couch.\n",
        encoding="utf-8",
    )
    proc = run("similarity", "--pairs", pairs)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["cosine", "same?", "gold"]
    assert len(lines) == 1 + 3 + 1
    scores = embedder.similarity(
        ["A man is playing a guitar.", "A man is playing a guitar.", "The cat sleeps on the sofa."],
        ["Someone plays the guitar.", "The stock market fell sharply today.", "A kitten is napping on the couch."],
    )
    for line, score in zip(lines[1:4], scores, strict=True):
        assert abs(float(line.split()[0]) - score) < 1e-3
    assert lines[1].split()[1:3] == ["yes", "yes"] and lines[2].split()[1:3] == ["no", "no"]
    assert lines[-1] == "agreement with gold: 2/2 at threshold 0.7"


def test_similarity_errors_are_one_line(tmp_path):
    malformed, non_utf8 = tmp_path / "malformed.tsv", tmp_path / "latin1.tsv"
    malformed.write_text("one\ttwo\nno tab on this line\n")
    non_utf8.write_bytes("one\ttwo\nthree\tcaf\u00e9\n".encode("latin-1"))
    results = run_all(
        ["similarity", "--pairs", malformed],
        ["similarity", "--pairs", tmp_path / "missing.tsv"],
        ["similarity", "--pairs", non_utf8],
        ["similarity", "only one"],
        ok=False,
    )
    messages = [
        f"{malformed}: line 2: expected two tab-separated sentences",
        f"{tmp_path / 'missing.tsv'}: no such file",
        f"{non_utf8}: line 2 is not UTF-8 text",
        "give two sentences, or --pairs FILE",
    ]
    for proc, message in zip(results, messages, strict=True):
        assert_one_line_error(proc, message)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"one\t\n", "line 1: expected two tab-separated sentences"),
        (b"one\ttwo\tmaybe\n", "line 1: unknown label 'maybe' (use 1/0, yes/no, same/different, true/false)"),
        (
            b"one\ttwo\tTrue\nthree\tfour\t1\textra\n",
            "line 2: 4 tab-separated columns; expected sentence A, sentence B and an optional gold label",
        ),
        (b"# only a comment\n\n", "no sentence pairs"),
        (b"a\tb\n\xff\n", "line 2 is not UTF-8 text (byte 0xff)"),
    ],
)
def test_more_pairs_errors_in_process(tmp_path, monkeypatch, capsys, content, message):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_bytes(content)
    monkeypatch.setattr(sys, "argv", ["bertforge", "similarity", "--pairs", str(pairs)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert capsys.readouterr().err == f"bertforge: error: {pairs}: {message}\n"


def test_similarity_refuses_sentences_with_pairs_and_a_threshold_beyond_cosine(tmp_path, monkeypatch, capsys):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("one\ttwo\n")
    assert _main_error(monkeypatch, capsys, "similarity", "--pairs", pairs, "a", "b") == (
        "bertforge: error: give two sentences or --pairs FILE, not both"
    )
    for value, bound in (("2", "less than or equal to 1"), ("-1.5", "greater than or equal to -1")):
        err = _main_error(monkeypatch, capsys, "similarity", "a", "b", "--threshold", value)
        assert f"Invalid value for '--threshold': Input should be {bound}" in err


def test_a_pairs_file_of_one_pair_prints_the_table(tmp_path, embedder):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("A man is playing a guitar.\tSomeone plays the guitar.\n")
    lines = run("similarity", "--pairs", pairs).stdout.splitlines()
    assert len(lines) == 2 and lines[0].split() == ["cosine", "same?", "sentence", "A", "sentence", "B"]
    score = embedder.similarity(["A man is playing a guitar."], ["Someone plays the guitar."])[0]
    assert abs(float(lines[1].split()[0]) - score) < 1e-3 and lines[1].split()[1] == "yes"


def test_pairs_lines_split_on_newlines_only(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_bytes("a\u2028still a\tb\x0cstill b\t1\r\nc\td\n".encode())
    a, b, gold = _read_pairs(pairs)
    assert a == ["a\u2028still a", "c"] and b == ["b\x0cstill b", "d"] and gold == [True, None]


def test_embed_writes_the_embedder_output(tmp_path, rotten_tomatoes, embedder):
    texts = [r["text"].replace("\n", " ") for r in rotten_tomatoes["valid"][:19]] + ["one line\u2028with a separator"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    proc, _ = run_all(
        ["embed", "--model", "minilm-l6", "--input", tmp_path / "texts.txt", "--output", tmp_path / "out.npy"],
        [
            "embed",
            "-m",
            "minilm-l6",
            "-i",
            tmp_path / "texts.txt",
            "-o",
            tmp_path / "out.jsonl",
            "--pooling",
            "cls",
            "--no-normalize",
        ],
    )
    assert proc.stdout.strip() == f"wrote {tmp_path / 'out.npy'}: 20 x 384"
    vectors = np.load(tmp_path / "out.npy")
    assert vectors.shape == (20, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, embedder(texts), atol=1e-6)
    assert not list(tmp_path.glob(".out.npy*.tmp"))
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records] == texts
    np.testing.assert_allclose(
        np.array([r["embedding"] for r in records]), embedder(texts, pooling="cls", normalize=False), atol=1e-6
    )


def test_embed_errors(tmp_path):
    (tmp_path / "texts.txt").write_text("hello\n")
    bad_suffix, bad_model = run_all(
        ["embed", "-m", "minilm-l6", "-i", tmp_path / "texts.txt", "-o", tmp_path / "out.csv"],
        ["embed", "-m", tmp_path / "nope", "-i", tmp_path / "texts.txt", "-o", tmp_path / "out.npy"],
        ok=False,
    )
    assert_one_line_error(bad_suffix, "out.csv: output must end in .npy or .jsonl")
    assert_one_line_error(bad_model, "nope: no such file or directory, and not a registry name")
    (tmp_path / "blank.txt").write_text("hello\n \nworld\n")
    (tmp_path / "empty.txt").write_text("")
    blank, empty, empty_sentence, no_length = run_all(
        ["embed", "-m", "minilm-l6", "-i", tmp_path / "blank.txt", "-o", tmp_path / "out.npy"],
        ["embed", "-m", "minilm-l6", "-i", tmp_path / "empty.txt", "-o", tmp_path / "out.npy"],
        ["similarity", "a sentence", "  "],
        ["embed", "-m", "minilm-l6", "-i", tmp_path / "texts.txt", "-o", tmp_path / "out.npy", "--max-length", "0"],
        ok=False,
    )
    assert_one_line_error(blank, f"{tmp_path / 'blank.txt'}: line 2 is empty")
    assert_one_line_error(empty, f"{tmp_path / 'empty.txt'}: no lines")
    assert_one_line_error(empty_sentence, "sentence 2 is empty")
    assert_one_line_error(no_length, "max_length 0 leaves no room for text")  # not "no limit"
    assert not (tmp_path / "out.npy").exists()


def test_embed_refuses_a_vocabulary_larger_than_the_model(tmp_path, tiny_dir, monkeypatch, capsys):
    """An id past the word embeddings failed (IndexError) only when a text held that token: refused at load."""
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    (model / "tokenizer.json").unlink()
    with (model / "vocab.txt").open("a", encoding="utf-8") as f:
        f.write("zzqqxx\n")
    (tmp_path / "texts.txt").write_text("hello\n")  # no extra token in it: refused all the same
    monkeypatch.setattr(
        sys,
        "argv",
        ["bertforge", "embed", "-m", str(model), "-i", str(tmp_path / "texts.txt"), "-o", str(tmp_path / "out.npy")],
    )
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        f"bertforge: error: {model}: the tokenizer has 30523 entries, more than config.json's "
        "vocab_size 30522: use the vocabulary the model was trained with\n"
    )
    assert not (tmp_path / "out.npy").exists()


def test_vocab_writes_a_vocabulary(tmp_path, tiny_corpus):
    outs = {cased: tmp_path / ("cased" if cased else "uncased") / "vocab.txt" for cased in (False, True)}
    results = run_all(
        ["vocab", "--corpus", tiny_corpus, "--vocab-size", "200", "--out", outs[False]],
        ["vocab", "--corpus", tiny_corpus, "--vocab-size", "200", "--out", outs[True], "--cased"],
    )
    for (cased, out), proc in zip(outs.items(), results, strict=True):
        tokens = out.read_text(encoding="utf-8").split("\n")[:-1]
        assert proc.stdout == f"wrote {out} ({len(tokens)} entries, {'cased' if cased else 'uncased'})\n"
        assert tokens[:5] == list(SPECIAL_TOKENS) and 100 < len(tokens) <= 200
        assert ("The" in tokens) is cased and "the" in tokens


def test_vocab_error_for_a_missing_corpus(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bertforge", "vocab", "--corpus", str(tmp_path / "none.txt")])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert capsys.readouterr().err == f"bertforge: error: {tmp_path / 'none.txt'}: no such file\n"


def test_vocab_names_the_file_and_line_that_is_not_utf8(tmp_path, tiny_corpus, monkeypatch, capsys):
    """As prepare-pretrain says it; the trainer's own message names neither."""
    latin = tmp_path / "latin.txt"
    latin.write_bytes("hello world\ncaf\u00e9 au lait\n".encode("latin-1"))
    err = _main_error(
        monkeypatch,
        capsys,
        "vocab",
        "--corpus",
        tiny_corpus,
        "--corpus",
        latin,
        "--vocab-size",
        "200",
        "--out",
        tmp_path / "v.txt",
    )
    assert err == f"bertforge: error: {latin}: line 2 is not UTF-8 text (byte 0xe9)"
    assert not (tmp_path / "v.txt").exists()


def test_vocab_refuses_an_empty_corpus_and_an_out_it_cannot_write(tmp_path, tiny_corpus):
    """As prepare-pretrain: an empty corpus is an error, not a vocabulary of the specials alone; --out is
    checked before the training (a directory, the corpus itself)."""
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n", encoding="utf-8")
    (tmp_path / "dir").mkdir()
    no_text, directory, itself = run_all(
        ["vocab", "--corpus", empty, "--vocab-size", "200", "--out", tmp_path / "v.txt"],
        ["vocab", "--corpus", tiny_corpus, "--vocab-size", "200", "--out", tmp_path / "dir"],
        ["vocab", "--corpus", empty, "--vocab-size", "200", "--out", empty],
        ok=False,
    )
    assert_one_line_error(no_text, f"{empty}: no text (empty corpus)")
    assert not (tmp_path / "v.txt").exists()
    assert_one_line_error(directory, f"{tmp_path / 'dir'}: is a directory")
    assert_one_line_error(itself, f"{empty}: is the input file")
    assert empty.read_text(encoding="utf-8") == "\n  \n\n"


def test_vocab_stdout_is_the_wrote_line_alone(tmp_path, tiny_corpus, monkeypatch):
    """The tokenizers trainer ends each of its progress bars with a newline on stdout: no bars (stderr not a
    terminal, or TQDM_DISABLE) and no newlines; on a terminal the bars and their newlines go to stderr."""
    import os
    import pty
    import threading

    out = tmp_path / "v.txt"
    cmd = ["vocab", "--corpus", tiny_corpus, "--vocab-size", "200", "--out", out]
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    [piped] = run_all(cmd)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    [quiet] = run_all(cmd)
    monkeypatch.delenv("TQDM_DISABLE")
    master, terminal = pty.openpty()
    shown: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # the terminal's other end closed
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        on_terminal = subprocess.run(
            [str(BERTFORGE), *map(str, cmd)], stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=300
        )
    finally:
        os.close(terminal)
    reader.join(30)
    os.close(master)
    entries = len(out.read_text(encoding="utf-8").split("\n")) - 1
    for proc in (piped, quiet, on_terminal):
        assert proc.returncode == 0
        assert proc.stdout == f"wrote {out} ({entries} entries, uncased)\n", proc.stdout
    assert piped.stderr == quiet.stderr == ""
    assert "Compute merges" in b"".join(shown).decode("utf-8", "replace")


def test_fetch(minilm_dir):
    listing, fetched, unknown, nothing = run_all(
        ["fetch", "--list"], ["fetch", "minilm-l6"], ["fetch", "imagenet"], ["fetch"], ok=False
    )
    assert listing.returncode == 0 and fetched.returncode == 0
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert [r[0] for r in rows] == list(assets.REGISTRY)
    assert [r[2] for r in rows if r[0] == "minilm-l6"] == ["fetched"]
    assert fetched.stdout.strip() == str(minilm_dir)
    assert_one_line_error(unknown, "unknown asset 'imagenet'")
    assert_one_line_error(nothing, "name an asset (or --all, --list)")


def test_progress_bars_go_to_stderr_unless_tqdm_disable_is_set(tmp_path, monkeypatch):
    (tmp_path / "texts.txt").write_text("one text\nanother text\n")
    embed = ["embed", "-m", "minilm-l6", "-i", tmp_path / "texts.txt", "-o", tmp_path / "out.npy"]
    [shown] = run_all(embed)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    [quiet] = run_all(embed)
    assert "encoding" in shown.stderr and "seq/s" in shown.stderr
    assert quiet.stderr == "" and quiet.stdout == shown.stdout


def test_usage_errors_are_one_line_naming_the_help(monkeypatch, capsys):
    """click's usage errors (a missing option, a value of the wrong type, an unknown option) are one line,
    as every other error, with the way to the command's options."""
    assert _main_error(monkeypatch, capsys, "embed", "-m", "minilm-l6", "-o", "x.npy") == (
        "bertforge: error: Missing option '--input' / '-i'; see 'bertforge embed --help'"
    )
    assert "Invalid value for '--batch-size'" in _main_error(
        monkeypatch, capsys, "finetune", "classify", "--batch-size", "x"
    )
    assert (
        _main_error(monkeypatch, capsys, "nope") == "bertforge: error: No such command 'nope'; see 'bertforge --help'"
    )
    monkeypatch.setattr(sys, "argv", ["bertforge"])  # no command: the help, as before
    with pytest.raises(SystemExit):
        main()
    assert "Usage: " in capsys.readouterr().err


BAD_VALUES = {  # (option, value, what is said); each command is given what it needs to get past the parser
    "pretrain": [
        ("--batch-size", "0", "greater than or equal to 1"),
        ("--grad-accum", "0", "greater than or equal to 1"),
        ("--lr", "-1", "greater than or equal to 0"),
        ("--lr", "nan", "greater than or equal to 0"),
        ("--weight-decay", "-0.1", "greater than or equal to 0"),
        ("--log-every", "0", "greater than or equal to 1"),
        ("--dropout", "1.5", "less than or equal to 1"),
        ("--dropout", "-0.1", "greater than or equal to 0"),
        ("--config", "DIR", "file 'DIR' is a directory"),
        ("--max-steps", "0", "greater than or equal to 1"),
        ("--generator-size", "0", "greater than or equal to 0.01"),
        ("--generator-size", "1.5", "less than or equal to 1"),
        ("--discriminator-weight", "-1", "greater than or equal to 0"),
    ],
    "finetune": [
        ("--batch-size", "0", "greater than or equal to 1"),
        ("--grad-accum", "0", "greater than or equal to 1"),
        ("--lr", "-1", "greater than or equal to 0"),
        ("--weight-decay", "-0.1", "greater than or equal to 0"),
        ("--dropout", "1.5", "less than or equal to 1"),
        ("--train", "DIR", "file 'DIR' is a directory"),
        ("--valid", "DIR", "file 'DIR' is a directory"),
        ("--max-steps", "0", "greater than or equal to 1"),
    ],
    "embed": [("--input", "DIR", "file 'DIR' is a directory")],
    "similarity": [("--pairs", "DIR", "file 'DIR' is a directory")],
    "vocab": [("--corpus", "DIR", "file 'DIR' is a directory")],
    "predict": [("--input", "DIR", "file 'DIR' is a directory")],
    "summarize": [("--input", "DIR", "file 'DIR' is a directory")],
}


def test_bad_option_values_are_usage_errors_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """Values the training loop, torch or a file read would crash on (a division by zero, torch's optimizer or
    dropout, a directory read as a file) stop at the command line, naming the option; nothing is written."""
    directory, file = tmp_path / "adir", tmp_path / "a.txt"
    directory.mkdir()
    file.write_text("a text\n")
    out = tmp_path / "out"
    needs = {
        "pretrain": ["--data", directory, "--out", out],
        "finetune": ["classify", "-m", "minilm-l6", "--train", file, "--out", out],
        "embed": ["-m", "minilm-l6", "-i", file, "-o", out / "e.npy"],
        "similarity": [],
        "vocab": ["--corpus", file, "--out", out / "v.txt"],
        "evaluate": ["-m", "minilm-l6", "--data", file],
        "predict": ["-m", "minilm-l6", "-i", file, "-o", out / "p.jsonl"],
        "summarize": ["-i", file, "-o", out / "s.jsonl"],
    }
    for command, cases in BAD_VALUES.items():
        for option, value, said in cases:
            value, said = (directory, said.replace("DIR", str(directory))) if value == "DIR" else (value, said)
            err = _main_error(monkeypatch, capsys, command, *needs[command], option, value)
            assert (
                f"Invalid value for '{option}'" in err and said in err and f"see 'bertforge {command} --help'" in err
            ), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "adir"] and not list(directory.iterdir())
