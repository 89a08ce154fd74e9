"""Write docs/results.md, the table of every reproduction, from the results files.

Each entry names the paper's figure, the files our figure is read from, the seeds, the
budget, the config and the command. An entry whose results are missing says "not run yet"
with the command that produces them. tests/tiered/test_results_table.py checks that the
committed docs/results.md is what this script writes, so the table is never typed by hand.

    python experiments/benchmarks/results_table.py [--out docs/results.md]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results"


def _rows(path: Path) -> list[dict[str, str]] | None:
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def sweep_figure(name: str) -> str | None:
    """Per variant: the sweep's metric, mean +- std over finished seeds, from its
    report.csv."""
    rows = _rows(RESULTS / "sweeps" / name / "report.csv")
    if not rows:
        return None
    parts = []
    for row in rows:
        if not row.get("mean") or int(row.get("finished") or 0) == 0:
            continue
        variant = row["variant"].removeprefix("config=")
        parts.append(
            f"{variant} {float(row['mean']):.2f} +- {float(row['std'] or 0):.2f} "
            f"({row['finished']} seeds)"
        )
    return "; ".join(parts) if parts else None


def reproduction_figure(name: str) -> str | None:
    """Per variant and test setting: the median over seeds, from reproductions/<name>.csv
    (experiments/benchmarks/reproduce.py)."""
    rows = _rows(RESULTS / "reproductions" / f"{name}.csv")
    if not rows:
        return None
    parts = []
    for variant in sorted({r["variant"] for r in rows}):
        mine = [r for r in rows if r["variant"] == variant]
        seeds = len({r["seed"] for r in mine})
        cells = []
        for setting in dict.fromkeys(r["setting"] for r in mine):
            at = [r for r in mine if r["setting"] == setting]

            def median(key: str, at: list = at) -> float:
                return statistics.median(float(r[key]) for r in at)

            if "bit_errors" in at[0]:
                wrong, chance = median("bit_errors"), median("chance")
                cells.append(f"{setting}: {wrong:.1f} (chance {chance:.0f})")
            else:
                answers, queries = median("per_answer"), median("per_query")
                cells.append(f"{setting}: {answers:.2f} / {queries:.2f}")
        parts.append(f"{variant} ({seeds} seeds) " + ", ".join(cells))
    return "; ".join(parts)


def babi_figure() -> str | None:
    """Per stack: mean test error over tasks and failed tasks (above 5%), from
    reproductions/babi.csv (experiments/benchmarks/reproduce_babi.py)."""
    rows = _rows(RESULTS / "reproductions" / "babi.csv")
    if not rows:
        return None
    parts = []
    for variant in sorted({r["variant"] for r in rows}):
        mine = [r for r in rows if r["variant"] == variant]
        seeds = sorted({r["seed"] for r in mine})
        errors = [float(r["error"]) for r in mine]
        tasks = len(mine) // len(seeds)
        failed = statistics.fmean(  # tasks above 5% error, per run, mean over seeds
            sum(float(r["error"]) > 0.05 for r in mine if r["seed"] == s) for s in seeds
        )
        parts.append(f"{variant} {100 * statistics.fmean(errors):.1f}% ({failed:g} of {tasks} "
                     f"failed, {len(seeds)} seed{'s' if len(seeds) > 1 else ''})")  # fmt: skip
    return "; ".join(parts)


def act_figure(name: str) -> str | None:
    """Per variant: the error (wrong bits per sequence) and internal steps, means over
    seeds, from <name>.csv (experiments/benchmarks/act_report.py)."""
    rows = _rows(RESULTS / f"{name}.csv")
    if not rows:
        return None
    parts = []
    firsts = {r["variant"]: r for r in reversed(rows)}
    order = sorted(firsts, key=lambda v: (firsts[v]["max_steps"] != "1",  # none, ACT, PonderNet
                                          firsts[v]["halting"] == "PonderNet",
                                          -float(firsts[v]["tau"] or 0)))  # fmt: skip
    for variant in order:
        mine = [r for r in rows if r["variant"] == variant]
        first = mine[0]
        if first["max_steps"] == "1":
            label = "no pondering"
        elif first["halting"] == "PonderNet":
            label = f"PonderNet (beta {float(first['beta']):g}, prior {float(first['prior']):g})"
        else:
            label = f"ACT tau {float(first['tau']):g}"
        mine = [r for r in mine if r["bit_errors"] and r["ponder_steps"]]  # logged ones
        if not mine:
            continue
        error = statistics.fmean(float(r["bit_errors"]) for r in mine)
        steps = statistics.fmean(float(r["ponder_steps"]) for r in mine)
        seeds = f"{len(mine)} seed{'s' if len(mine) > 1 else ''}"
        kind = "expected halting step" if first["halting"] == "PonderNet" else "steps"
        parts.append(f"{label} {error:.3f} ({steps:.1f} {kind}, {seeds})")
    return "; ".join(parts)


def _reproduction(name: str, task: str, paper: str, unit: str, budget: str) -> dict:
    return {
        "task": task,
        "paper": paper,
        "ours": lambda: reproduction_figure(name),
        "ours_unit": unit,
        "details": f"reproductions/{name}.md",
        "seeds": "3",
        "budget": budget,
        "config": f"experiments/sweeps/repro_{name}.yaml",
        "command": f"tiered sweep run experiments/sweeps/repro_{name}.yaml --out "
        f"experiments/results/sweeps/repro_{name} --workers 2; python "
        f"experiments/benchmarks/reproduce.py {name} experiments/results/sweeps/repro_{name}",
    }


BITS = "median wrong bits per sequence by test setting"
TOKENS = "median accuracy per answer / per query by test setting"
DNC = "LSTM 100 + dense RAM 128 x 20, 1 read head"
ENTRIES = [
    _reproduction(
        "copy",
        "Copy (NTM paper), trained on lengths 1..20",
        "copies 'continue' as length grows; at 120 'a few more local errors and one global "
        "error' (Graves et al. 2014, 4.1; example outputs, no error counts)",
        BITS,
        f"{DNC}; 2,000 steps of batch 16, Adam 1e-3 (the paper: batch 1, RMSProp)",
    ),
    _reproduction(
        "repeat_copy",
        "Repeat copy (NTM paper), trained on lengths 1..10, repeats 1..10",
        "succeeds on longer sequences and more than ten repeats but 'is unable to keep "
        "count' (Graves et al. 2014, 4.2; example outputs)",
        BITS,
        f"{DNC}; 600 steps of batch 32",
    ),
    _reproduction(
        "recall",
        "Associative recall (NTM paper), trained on 2..6 items",
        "'nearly perfect for sequences of up to 12 items', below 1 bit per sequence at 15 "
        "(Graves et al. 2014, 4.3; about 30,000 episodes)",
        BITS,
        f"{DNC}; 1,500 steps of batch 32",
    ),
    _reproduction(
        "priority_sort",
        "Priority sort (NTM paper), 20 inputs, the 16 highest sorted",
        "NTMs 'substantially outperform LSTM' (Graves et al. 2014, 4.5; learning curves "
        "only, no test figure)",
        BITS,
        f"{DNC}; 2,000 steps of batch 16",
    ),
    _reproduction(
        "traversal",
        "Graph traversal (DNC paper), random graphs of 5..10 nodes, 1..3 hops",
        "98.8% on random seven-step traversals of the London Underground map after a "
        "curriculum; the best LSTM 37% (Graves et al. 2016, Fig. 2)",
        TOKENS,
        f"{DNC}; 2,000 steps of batch 32, no curriculum",
    ),
    _reproduction(
        "shortest_path",
        "Shortest path (DNC paper), random graphs of 5..10 nodes",
        "55.3% on all four-step shortest paths of the London Underground map after a "
        "curriculum (Graves et al. 2016, Fig. 2)",
        TOKENS,
        f"{DNC}; 2,000 steps of batch 32, no curriculum",
    ),
    {
        "task": "bAbI 1k, 20 tasks trained jointly",
        "paper": "LSTM (1k, one model per task): mean error 51%, all 20 tasks above 5% (Weston et "
        "al. 2015, Table 3); DNC 16.7 +- 7.6% and LSTM 27.3 +- 0.8% on the 10k split "
        "(Graves et al. 2016, Extended Data Table 1)",
        "ours": babi_figure,
        "details": "reproductions/babi.md",
        "ours_unit": "mean test error over tasks, tasks above 5% error",
        "seeds": "1 per stack",
        "budget": "1,500 steps of batch 32 (about 8.5 epochs of the 1k split); DNC: LSTM 128 "
        "+ dense RAM 64 x 32, 4 read heads; LSTM: 256 units",
        "config": "experiments/babi/sweep.yaml",
        "command": "tiered sweep run experiments/babi/sweep.yaml --out "
        "experiments/results/sweeps/repro_babi --workers 2; python "
        "experiments/benchmarks/reproduce_babi.py experiments/results/sweeps/repro_babi",
    },
    {
        "task": "Parity (ACT paper) at 8 entries, one vector per sequence",
        "paper": "at 64 entries: without ACT 'a mean of almost 40% error compared to 50% for "
        "random guessing. For penalties of 0.03 and below the mean error was below 5%.' "
        "(Graves 2016, 3.1; an RNN of 128 tanh units, batch 128, 1M iterations on each of 16 "
        "threads)",
        "ours": lambda: act_figure("act_parity_8"),
        "ours_unit": "error rate at the last validation, mean over seeds; internal steps per input",
        "details": "act_parity_8.md",
        "seeds": "3 per variant",
        "budget": "LSTM 128, at most 10 internal steps; 6,000 steps of batch 128 (at 16 and "
        "64 entries only PonderNet learnt anything: docs/act.md)",
        "config": "experiments/sweeps/act_parity_8.yaml",
        "command": "tiered sweep run experiments/sweeps/act_parity_8.yaml --out "
        "experiments/results/sweeps/act_parity_8 --workers 2; python "
        "experiments/benchmarks/act_report.py experiments/results/sweeps/act_parity_8",
    },
    {
        "task": "Addition (ACT paper): 1..5 numbers of up to 5 digits",
        "paper": "'the task was perfectly solved by the ACT networks for all values of tau in "
        "the grid search' (Graves 2016, 3.3; LSTM 512, batch 32, at most 20 internal steps)",
        "ours": lambda: act_figure("act_addition"),
        "ours_unit": "wrong bits per sequence at the last validation, mean over seeds; "
        "internal steps per input",
        "details": "act_addition.md",
        "seeds": "3 per variant",
        "budget": "LSTM 128, at most 10 internal steps; 3,000 steps of batch 32",
        "config": "experiments/sweeps/act_addition.yaml, act_addition_pondernet.yaml",
        "command": "tiered sweep run experiments/sweeps/act_addition.yaml --out "
        "experiments/results/sweeps/act_addition --workers 2; tiered sweep run "
        "experiments/sweeps/act_addition_pondernet.yaml --out "
        "experiments/results/sweeps/act_addition_pondernet --workers 2; python "
        "experiments/benchmarks/act_report.py experiments/results/sweeps/act_addition "
        "experiments/results/sweeps/act_addition_pondernet --name act_addition",
    },
    {
        "task": "The DNC's fixes, copy (trained on lengths 1..10, tested on 21..40), dense "
        "RAM 32 x 16",
        "paper": "masking, de-allocation and sharpness each improve the DNC on the "
        "paper's synthetic tasks and bAbI (Csordás & Schmidhuber 2019; other tasks and "
        "sizes than these)",
        "ours": lambda: sweep_figure("dnc_fixes_copy"),
        "ours_unit": "test bit errors per sequence, mean +- std",
        "seeds": "3 per variant",
        "budget": "2,000 steps of batch 32, LSTM 100",
        "config": "experiments/sweeps/dnc_fixes_copy.yaml",
        "command": "tiered sweep run experiments/sweeps/dnc_fixes_copy.yaml --out "
        "experiments/results/sweeps/dnc_fixes_copy --workers 2",
    },
    {
        "task": "The DNC's fixes, associative recall (trained on 2..6 items, tested on "
        "7..12), dense RAM 32 x 16",
        "paper": "as above",
        "ours": lambda: sweep_figure("dnc_fixes_recall"),
        "ours_unit": "test bit errors per sequence, mean +- std",
        "seeds": "3 per variant",
        "budget": "2,000 steps of batch 32, LSTM 100",
        "config": "experiments/sweeps/dnc_fixes_recall.yaml",
        "command": "tiered sweep run experiments/sweeps/dnc_fixes_recall.yaml --out "
        "experiments/results/sweeps/dnc_fixes_recall --workers 2",
    },
]


def render() -> str:
    lines = [
        "# Results: the classic tasks, reproduced",
        "",
        "Generated by `python experiments/benchmarks/results_table.py` from the results "
        "files it names; do not edit by hand (a test checks that this page is what the "
        "script writes). Every run is on the project's 2-core CPU machine unless its files "
        "say otherwise, at a far smaller budget than the papers': the budget column states "
        "ours, and the paper column the paper's setting where it differs.",
        "",
        "| task | paper | ours | seeds | budget | config |",
        "|---|---|---|---|---|---|",
    ]
    pending = []
    for entry in ENTRIES:
        figure = entry["ours"]()
        ours = f"{figure} ({entry['ours_unit']})" if figure else "not run yet"
        details = entry.get("details")
        if figure and details and (RESULTS / details).is_file():
            ours += f"; [details](../experiments/results/{details})"
        if not figure:
            pending.append(entry)
        lines.append(
            f"| {entry['task']} | {entry['paper']} | {ours} | {entry['seeds']} | "
            f"{entry['budget']} | `{entry['config']}` |"
        )
    lines += ["", "## Commands", ""]
    for entry in ENTRIES:
        lines.append(f"- {entry['task']}: `{entry['command']}`")
    if pending:
        lines += ["", f"{len(pending)} of {len(ENTRIES)} entries are not run yet."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args(argv)
    args.out.write_text(render())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
