"""The benchmark scripts are not run in the suite (their runs are long, their numbers go to the
README), but each must start: its imports, its command line, its usage errors."""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "common.py")


def run_all(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    procs = [
        subprocess.Popen([sys.executable, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in commands
    ]
    results = []
    for cmd, p in zip(commands, procs, strict=True):
        out, err = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(cmd, p.returncode, out, err))
    return results


def test_every_script_explains_its_options_and_their_defaults():
    assert {p.name for p in SCRIPTS} >= {
        "infer.py",
        "serve.py",
        "finetune.py",
        "engines.py",
        "cuda_check.py",
        "pretrain.py",
    }
    for proc in run_all(*[[str(p), "--help"] for p in SCRIPTS]):
        assert proc.returncode == 0, (proc.args, proc.stderr)
        entries = re.split(r"\n  -", proc.stdout.split("options:")[1])[1:]  # "-h, --help ...", "-model MODEL ..."
        assert len(entries) > 1, proc.args
        for entry in entries:  # the invocation, then (on its line or the next) its help
            assert len(re.split(r"\s{2,}", entry.strip(), maxsplit=1)) == 2, (proc.args, entry)
        assert "(default: " in proc.stdout, proc.args


def test_a_bad_device_is_a_usage_error():
    infer, finetune = (str(BENCHMARKS / name) for name in ("infer.py", "finetune.py"))
    for proc in run_all([infer, "--device", "banana"], [finetune, "--device", "banana"]):
        assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr, (
            proc.args,
            proc.stderr,
        )


def test_list_options_take_commas_or_spaces_and_check_each_item(capsys):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from common import Listed, argument_parser
    finally:
        sys.path.remove(str(BENCHMARKS))
    p = argument_parser(None)
    p.add_argument("--precisions", action=Listed, options=("fp32", "bf16", "int8"), default=["fp32"])
    p.add_argument("--clients", action=Listed, item=int, default=[1, 8], help="clients")
    p.add_argument("--skip", action=Listed, nargs="*", default=[])
    assert p.parse_args(["--precisions", "fp32,int8", "bf16"]).precisions == ["fp32", "int8", "bf16"]
    assert p.parse_args(["--clients", "1", "32"]).clients == p.parse_args(["--clients", "1,32"]).clients == [1, 32]
    assert (
        p.parse_args([]) == p.parse_args(["--skip"]) == argparse.Namespace(precisions=["fp32"], clients=[1, 8], skip=[])
    )
    assert "(default: 1,8)" in p.format_help()
    for bad, said in (
        (["--precisions", "fp32,fp64"], "'fp64' is not one of fp32, bf16, int8"),
        (["--clients", "1,x"], "'x' is not a valid int"),
        (["--clients", ","], "give at least one value"),
    ):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
        assert said in capsys.readouterr().err, bad
    serve = run_all([str(BENCHMARKS / "serve.py"), "--precisions", "fp32,fp64"])[0]
    assert serve.returncode == 2 and "'fp64' is not one of" in serve.stderr and "Traceback" not in serve.stderr, (
        serve.stderr
    )


def test_results_name_the_machine_and_busy_cores_are_kept_busy():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from common import busy, machine
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert machine().startswith("CPU: ") and "CPUs available to this process" in machine()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    with busy(1):
        time.sleep(1.0)
    spun = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before
    assert spun > 0.3  # the spinning process ran, and was reaped on exit
