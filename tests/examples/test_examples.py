"""The scripts in examples/ run as a user runs them, with the tiny budget CI can afford.

Each runs in a fresh process from a temporary folder; ``train_in_python.py`` trains once
(module fixture) and the other two read what it wrote. One thread per process: the scripts
are tiny, and several torch threads on a shared 2-core machine only wait on each other.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TIERS = ("register", "cache", "ram")  # the stack in examples/stack.py


def run_example(script: str, *args: str | Path, cwd: Path) -> str:
    """Run ``examples/<script>`` in ``cwd``; fails the test with its output unless it exits 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, EXAMPLES / script, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the run folder, the output) of train_in_python.py with its default tiny budget."""
    cwd = tmp_path_factory.mktemp("examples")
    out = run_example("train_in_python.py", "--steps", "4", "--out", "runs", cwd=cwd)
    return cwd / "runs", out


def _section(output: str, tier: str) -> list[str]:
    """The indented lines printed under ``<tier>:``."""
    lines = output.splitlines()
    start = lines.index(f"{tier}:") + 1
    section = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        section.append(line)
    return section


def test_train_in_python_fits_and_prints_each_tiers_metrics(trained: tuple[Path, str]) -> None:
    runs, out = trained
    assert re.search(r"after 4 steps: train/loss \d", out)
    for tier in TIERS:
        section = _section(out, tier)
        # Training and validation values, each named <stage>/<statistic>/<tier>.
        assert any(line.split()[0].startswith("train/") for line in section), out
        assert any(line.split()[0].startswith("val/") for line in section), out
        assert all(line.split()[0].split("/")[-1] == tier for line in section), out
    checkpoint = Path(re.search(r"checkpoint: (.+)", out).group(1))  # type: ignore[union-attr]
    assert (runs.parent / checkpoint).is_file() or checkpoint.is_file()
    assert list(runs.rglob("metrics.csv"))


def test_inspect_metrics_tabulates_the_csv_and_plots(trained: tuple[Path, str]) -> None:
    runs, _ = trained
    out = run_example("inspect_metrics.py", "--out", runs, cwd=runs.parent)
    assert re.search(r"tiers cache, ram, register", out), out
    for tier in TIERS:
        section = _section(out, tier)
        assert section[0].split() == ["metric", "first", "last", "mean"]
        assert len(section) > 1
    plot = Path(re.search(r"plot: (.+)", out).group(1))  # type: ignore[union-attr]
    assert (runs.parent / plot).stat().st_size > 0


def test_load_checkpoint_tests_and_predicts(trained: tuple[Path, str]) -> None:
    runs, _ = trained
    out = run_example("load_checkpoint.py", "--out", runs, cwd=runs.parent)
    assert re.search(r"loaded .+\.ckpt \(trained 4 steps\)", out), out
    assert re.search(r"test: .*test/loss \d", out), out
    assert re.search(r"batch of 16: [\d.]+ wrong bits per sequence", out), out
    for tier in TIERS:
        assert re.search(rf"^  {tier}: \w+ ", out, re.MULTILINE), out
