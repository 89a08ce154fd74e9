"""Issue 16: the algorithmic reproductions scored at settings never trained on.

For every finished run of a sweep folder (``tiered sweep run experiments/sweeps/repro_<task>
.yaml``), load its ``last.ckpt`` and score fresh test sequences at each setting of the task
(longer copies, more repeats, more items, bigger graphs). The task is built from the task
file the sweep trained on, with only its test range replaced, so the model's input and output
sizes are the trained ones. Bit tasks: wrong bits per sequence (the NTM paper's cost) and
the chance level (half the scored bits); token tasks: accuracy per answer and per query
(a query is right when all its answers are). Median and range over the seeds of each variant.
Writes ``<task>.md`` and ``<task>.csv`` under ``experiments/results/reproductions/``.

    python experiments/benchmarks/reproduce.py copy experiments/results/sweeps/repro_copy
"""

from __future__ import annotations

import argparse
import csv
import importlib
import statistics
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown

from tiered.metrics import bit_errors, sequence_correct, token_hits
from tiered.sweeps.runner import read_status

EXPERIMENTS = Path(__file__).resolve().parents[1]
RESULTS = EXPERIMENTS / "results" / "reproductions"


class Reproduction(NamedTuple):
    """A task's test settings and what the paper reported.

    ``settings``: (label, test attributes of the task) pairs; each attribute is a
    [low, high] range that replaces the task's test range.
    """

    task_file: str
    trained: str
    settings: tuple[tuple[str, dict[str, tuple[int, int]]], ...]
    paper: str


def _fixed(**ranges: int | tuple[int, int]) -> dict[str, tuple[int, int]]:
    return {k: (v, v) if isinstance(v, int) else v for k, v in ranges.items()}


REPRODUCTIONS: dict[str, Reproduction] = {
    "copy": Reproduction(
        "copy_ntm.yaml",
        "lengths 1..20",
        tuple((f"L = {n}", _fixed(eval_lengths=n)) for n in (10, 20, 30, 50, 80, 120)),
        "NTM (Graves et al. 2014, section 4.1, 128 memory locations): trained on lengths "
        "1..20, it 'continues to copy as the length increases, while LSTM rapidly degrades "
        "beyond length 20'; its copy of length 120 had 'a few more local errors and one global "
        "error' (example outputs; no error counts per length)",
    ),
    "repeat_copy": Reproduction(
        "repeat_copy.yaml",
        "lengths 1..10, repeats 1..10",
        tuple(
            (f"length {n}, {r} repeats", _fixed(eval_lengths=n, eval_repeats=r))
            for n, r in ((10, 10), (10, 15), (10, 20), (15, 10), (20, 10))
        ),
        "NTM (Graves et al. 2014, section 4.2): trained on lengths 1..10 and 1..10 repeats, "
        "tested with each doubled: it 'succeeds with longer sequences and is able to perform "
        "more than ten repetitions; however it is unable to keep count' (the end marker comes "
        "after every repetition beyond the eleventh; example outputs, no error counts)",
    ),
    "recall": Reproduction(
        "associative_recall.yaml",
        "2..6 items",
        tuple((f"{n} items", _fixed(eval_items=n)) for n in (6, 8, 12, 16)),
        "NTM (Graves et al. 2014, section 4.3): trained on 2..6 items, the feed-forward NTM "
        "was 'nearly perfect for sequences of up to 12 items' and below 1 bit per sequence "
        "at 15 items, after about 30,000 episodes",
    ),
    "priority_sort": Reproduction(
        "priority_sort_ntm.yaml",
        "20 inputs, the 16 highest sorted",
        (("20 in, 16 out", _fixed(eval_items=20)),),
        "NTM (Graves et al. 2014, section 4.5): 20 inputs, the 16 highest sorted; NTMs "
        "'substantially outperform LSTM' (learning curves only: no test error figure and no "
        "test at other sizes)",
    ),
    "traversal": Reproduction(
        "traversal.yaml",
        "5..10 nodes, 1..3 hops",
        (
            ("5-10 nodes, 1-3 hops", _fixed(eval_nodes=(5, 10), eval_hops=(1, 3))),
            ("11-16 nodes, 1-3 hops", _fixed(eval_nodes=(11, 16), eval_hops=(1, 3))),
            ("11-16 nodes, 4-6 hops", _fixed(eval_nodes=(11, 16), eval_hops=(4, 6))),
        ),
        "DNC (Graves et al. 2016, Fig. 2): after a curriculum on random graphs, 98.8% "
        "average accuracy on the curriculum's final lesson and on random seven-step "
        "traversals of the London Underground map; the best LSTM reached 37% and did not "
        "finish the first lesson",
    ),
    "shortest_path": Reproduction(
        "shortest_path.yaml",
        "5..10 nodes",
        (
            ("5-10 nodes", _fixed(eval_nodes=(5, 10))),
            ("11-16 nodes", _fixed(eval_nodes=(11, 16))),
        ),
        "DNC (Graves et al. 2016, Fig. 2): after a curriculum on random graphs, 55.3% "
        "average accuracy on all four-step shortest paths of the London Underground map",
    ),
}


def build_task(task_file: Path, test_ranges: dict[str, tuple[int, int]], sequences: int):
    """The task of ``task_file`` with ``sequences`` per batch and its test ranges replaced.

    The ranges are set after construction so that sizes fixed by the trained ranges (a
    graph's node vocabulary, the repeat count's scale) stay those the model was built with.
    """
    data = yaml.safe_load(task_file.read_text())["data"]
    module, _, name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    args: dict[str, Any] = {**data.get("init_args", {}), "batch_size": sequences}
    task = cls(**args)
    for key, value in test_ranges.items():
        if not hasattr(task, key):
            raise ValueError(f"{name} has no test range {key!r}")
        setattr(task, key, tuple(value))
    return task


def score(model, task, seed: int = 1234) -> dict[str, float]:
    """Scores of ``model`` on one test batch of ``task`` (a fixed seed: every run sees the
    same sequences)."""
    task.seed = seed
    batch = task.make_batch("test", 0)
    with torch.no_grad():
        logits = model.controller(batch.inputs).output
    if task.loss == "bits":
        scored_bits = batch.mask.sum(-1).double() * logits.shape[-1]
        return {
            "bit_errors": float(bit_errors(logits, batch.targets, batch.mask).mean()),
            "chance": float(scored_bits.mean() / 2),
        }
    right, scored = token_hits(logits, batch.targets, batch.mask)
    return {
        "per_answer": float(right.sum() / scored.sum()),
        "per_query": float(sequence_correct(logits, batch.targets, batch.mask).double().mean()),
    }


def finished_runs(folder: Path) -> list[tuple[str, int, Path]]:
    """(variant, seed, last.ckpt) of every finished run in a sweep folder."""
    runs = []
    for run_dir in sorted(p for p in folder.iterdir() if (p / "status.json").is_file()):
        if read_status(run_dir).get("state") != "finished":
            continue
        checkpoints = sorted(run_dir.rglob("last.ckpt"))
        if not checkpoints:
            continue
        variant, _, seed = run_dir.name.rpartition(",seed=")
        runs.append((variant.removeprefix("config="), int(seed), checkpoints[-1]))
    return runs


def _summary(values: list[float], digits: int) -> str:
    middle, low, high = statistics.median(values), min(values), max(values)
    return f"{middle:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def write_tables(name: str, rows: list[dict[str, Any]], sweep: Path, sequences: int, out: Path):
    """``<name>.csv`` (one row per run and setting) and ``<name>.md`` (median and range)."""
    spec = REPRODUCTIONS[name]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    metrics = [k for k in rows[0] if k not in ("variant", "seed", "setting")]
    lines = [
        f"# {name.replace('_', ' ').capitalize()}: scored at settings never trained on",
        "",
        f"Trained on {spec.trained} (task file `experiments/tasks/{spec.task_file}`, sweep "
        f"folder `{sweep}`); {sequences} fresh test sequences per setting, the same for every "
        "run; median (min-max) over the seeds of each variant.",
        "",
        f"Paper: {spec.paper}.",
        "",
        "| variant | seeds | setting | " + " | ".join(m.replace("_", " ") for m in metrics) + " |",
        "|---|---:|---|" + "---:|" * len(metrics),
    ]
    for variant in sorted({r["variant"] for r in rows}):
        for label, _ in spec.settings:
            mine = [r for r in rows if r["variant"] == variant and r["setting"] == label]
            if not mine:
                continue
            digits = 2 if "bit_errors" in metrics else 3
            cells = [_summary([r[m] for r in mine], digits) for m in metrics]
            lines.append(f"| {variant} | {len(mine)} | {label} | " + " | ".join(cells) + " |")
    if "chance" in metrics:
        lines += ["", "Chance: half of the scored bits wrong (the chance column)."]
    else:
        lines += ["", "Per answer: the share of answer steps right; per query: the share of "
                  "queries with every answer right."]  # fmt: skip
    lines += ["", "Machine:", "", machine_markdown(), ""]
    (out / f"{name}.md").write_text("\n".join(lines))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(REPRODUCTIONS))
    parser.add_argument("sweep", type=Path, help="the sweep folder of repro_<task>.yaml")
    parser.add_argument("--sequences", type=int, default=64, help="test sequences per setting")
    parser.add_argument("--tasks-dir", type=Path, default=EXPERIMENTS / "tasks")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from tiered.module import TieredModule

    spec = REPRODUCTIONS[args.task]
    runs = finished_runs(args.sweep) if args.sweep.is_dir() else []
    if not runs:
        print(f"no finished run with a last.ckpt in {args.sweep}", file=sys.stderr)
        return 2
    rows = []
    for variant, seed, checkpoint in runs:
        model = TieredModule.load_from_checkpoint(checkpoint, map_location="cpu")
        model.eval()
        for label, ranges in spec.settings:
            task = build_task(args.tasks_dir / spec.task_file, ranges, args.sequences)
            rows.append({"variant": variant, "seed": seed, "setting": label,
                         **score(model, task)})  # fmt: skip
            print(rows[-1], flush=True)
    print(write_tables(args.task, rows, args.sweep, args.sequences, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
