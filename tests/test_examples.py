"""The examples run."""
import pathlib
import subprocess
import sys

import pytest

import fastad as fa

EXAMPLES = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path):
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_main_job_runs():
    r = subprocess.run([sys.executable, "-m", "fastad", "--no-peers", "--quick"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "fastad value_and_grad" in r.stdout and "fastad fisher" in r.stdout
    # The header says what the figures ran on: the kernels' instruction set and the CPU.
    assert f"{fa.instruction_set()} kernels on " in r.stdout.splitlines()[0]
