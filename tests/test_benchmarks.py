"""The benchmark scripts are not run in the suite (their runs are long, their numbers go to the
README), but each must start: its imports, its command line, its usage errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "common.py")


def run_all(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in commands]
    results = []
    for cmd, p in zip(commands, procs, strict=True):
        out, err = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(cmd, p.returncode, out, err))
    return results


def test_every_script_explains_its_options_and_their_defaults():
    assert {p.name for p in SCRIPTS} >= {"infer.py", "serve.py", "finetune.py", "engines.py", "cuda_check.py"}
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
        assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr, (proc.args, proc.stderr)
