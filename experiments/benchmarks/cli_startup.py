"""How long each ``tiered`` command takes to answer, and what it imports.

Runs each command several times through the installed ``tiered`` console script (a fresh
interpreter each time, as a user's shell does), records the median and the worst wall-clock
time, and whether torch or Lightning was imported (``python -X importtime``). The commands
that do not train must answer in under 2 s; ``tiered fit --help`` and ``tiered tiers`` need
torch and Lightning and are measured beside them for comparison.

    .venv/bin/python experiments/benchmarks/cli_startup.py [--repeats 5] [--compare DIR]

``--compare DIR`` times the same commands, in the same run, with another checkout of tiered
(e.g. ``git worktree add DIR a6ceb0c``, the commit before issue 12) first on ``PYTHONPATH``.

Writes experiments/results/cli_startup.{csv,md}.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results"
LIMIT_S = 2.0
SWEEP = ROOT / "experiments" / "sweeps" / "kv_lookup.yaml"


def commands(store: Path) -> list[tuple[list[str], bool]]:
    """(arguments, must answer in under LIMIT_S)."""
    return [
        (["--help"], True),
        (["--version"], True),
        (["rom", "info", str(store)], True),
        (["sweep", "run", "--dry-run", str(SWEEP)], True),
        (["rom", "--help"], True),
        (["sweep", "--help"], True),
        (["tiers", "RAM"], False),
        (["fit", "--help"], False),
    ]


def heavy_imports(script: str, args: list[str], cwd: Path) -> list[str]:
    """Which of torch / lightning a run of the command imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", script, *args],
        capture_output=True, text=True, cwd=cwd, timeout=600,
    )  # fmt: skip
    names = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    return [name for name in ("torch", "lightning") if name in names]


def row_markdown(row: dict[str, str]) -> str:
    cells = ("`" + row["command"] + "`", row["median_s"], row["max_s"], row["limit_s"],
             row["imports"], row["within_limit"], row["compare_median_s"])  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def timed(script: str, argv: list[str], cwd: str, repeats: int, env: dict | None) -> list[float]:
    """Wall-clock seconds of ``repeats`` runs; [] if the command fails (absent there)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([script, *argv], capture_output=True, cwd=cwd, timeout=600, env=env)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            return []
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare", help="another checkout to time beside this one")
    parser.add_argument("--compare-label", default="", help="what --compare is, for the table")
    args = parser.parse_args()
    script = shutil.which("tiered", path=str(Path(sys.executable).parent))
    assert script is not None, "install tiered first (make install)"
    from tiered.storage import KVStore

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        KVStore.create(str(store), 16, 8).append(
            np.ones((1000, 16), np.float32), np.ones((1000, 8), np.float32)
        )
        for argv, limited in commands(store):
            times = timed(script, argv, tmp, args.repeats, None)
            assert times, f"tiered {argv} failed"
            before = ""
            if args.compare:
                env = {**os.environ, "PYTHONPATH": str(Path(args.compare).resolve())}
                other = timed(script, argv, tmp, args.repeats, env)
                before = f"{statistics.median(other):.2f}" if other else "n/a"
            shown = " ".join(a if not a.startswith(tmp) else "STORE" for a in argv)
            shown = shown.replace(str(ROOT) + "/", "")
            rows.append({
                "command": f"tiered {shown}",
                "median_s": f"{statistics.median(times):.2f}",
                "max_s": f"{max(times):.2f}",
                "limit_s": f"{LIMIT_S:.0f}" if limited else "",
                "compare_median_s": before,
                "imports": "+".join(heavy_imports(script, argv, Path(tmp))) or "neither",
                "within_limit": ("yes" if max(times) < LIMIT_S else "NO") if limited else "",
            })  # fmt: skip
            print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "cli_startup.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = ("| command | median s | max s | limit s | torch / Lightning imported | within "
              "| median s, --compare checkout |")  # fmt: skip
    lines = [
        "# Command-line start-up time",
        "",
        f"Each command run {args.repeats} times through the installed `tiered` script, a fresh",
        "interpreter each time; wall-clock seconds, median and worst. Commands that do not",
        f"train must answer in under {LIMIT_S:.0f} s (issue 12); `fit --help` and `tiers` import",
        "torch and Lightning and are shown for comparison. Made by",
        "`experiments/benchmarks/cli_startup.py`.",
        "",
        f"Compared with: {args.compare_label}" if args.compare else "No comparison run.",
        "",
        header,
        "|---|---|---|---|---|---|---|",
        *(row_markdown(r) for r in rows),
        "",
        "Machine:",
        "",
        machine_markdown(),
        "",
    ]
    (RESULTS / "cli_startup.md").write_text("\n".join(lines))
    print((RESULTS / "cli_startup.md").read_text())


if __name__ == "__main__":
    main()
