"""docs/results.md is what experiments/benchmarks/results_table.py writes from the files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load():
    path = ROOT / "experiments" / "benchmarks" / "results_table.py"
    spec = importlib.util.spec_from_file_location("results_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_results_page_is_the_generated_one():
    assert (ROOT / "docs" / "results.md").read_text() == _load().render(), (
        "docs/results.md is stale: run python experiments/benchmarks/results_table.py"
    )


def test_figures_are_read_from_the_results_files(tmp_path, monkeypatch):
    table = _load()
    monkeypatch.setattr(table, "RESULTS", tmp_path)
    assert "not run yet" in table.render()
    (tmp_path / "reproductions").mkdir()
    (tmp_path / "reproductions" / "copy.csv").write_text(
        "variant,seed,setting,bit_errors,chance\n"
        "dnc,0,L = 10,0.5,40\ndnc,0,L = 120,30.0,480\n"
        "dnc,1,L = 10,1.5,40\ndnc,1,L = 120,10.0,480\n"
        "dnc,2,L = 10,1.0,40\ndnc,2,L = 120,20.0,480\n"
    )
    (tmp_path / "reproductions" / "traversal.csv").write_text(
        "variant,seed,setting,per_answer,per_query\n"
        "dnc,0,small,0.9,0.5\ndnc,1,small,0.7,0.25\ndnc,2,small,0.8,0.75\n"
    )
    (tmp_path / "reproductions" / "babi.csv").write_text(
        "variant,seed,task,error\nlstm,0,1,0.5\nlstm,0,2,0.01\ndnc,0,1,0.0\ndnc,0,2,0.2\n"
    )
    sweep = tmp_path / "sweeps" / "dnc_fixes_copy"
    sweep.mkdir(parents=True)
    (sweep / "report.csv").write_text(
        "variant,mean,std,finished,failed,not_finite,other,wall_s\n"
        "config=classic,0.25,0.05,3,0,0,0,100\nconfig=deallocate,,,0,0,0,3,\n"
    )
    (tmp_path / "act_parity_8.csv").write_text(  # act_report.py's columns, its run order
        "variant,halting,max_steps,tau,beta,prior,bit_errors,ponder_steps\n"
        "no_ponder,ACT,1,0.001,,,0.4,1.0\npondernet,PonderNet,10,,0.01,0.2,0.0,9.5\n"
        "pondernet,PonderNet,10,,0.01,0.2,0.1,9.7\ntau_1e-2,ACT,10,0.01,,,0.2,2.0\n"
        "tau_1e-3,ACT,10,0.001,,,0.02,9.0\ntau_1e-3,ACT,10,0.001,,,,\n"  # one never logged
    )
    text = table.render()
    assert ("no pondering 0.400 (1.0 steps, 1 seed); ACT tau 0.01 0.200 (2.0 steps, 1 seed); "
            "ACT tau 0.001 0.020 (9.0 steps, 1 seed); PonderNet (beta 0.01, prior 0.2) 0.050 "
            "(9.6 expected halting step, 2 seeds)") in text  # fmt: skip
    assert "dnc (3 seeds) L = 10: 1.0 (chance 40), L = 120: 20.0 (chance 480)" in text
    assert "dnc (3 seeds) small: 0.80 / 0.50" in text  # medians over seeds
    assert "dnc 10.0% (1 of 2 failed, 1 seed); lstm 25.5% (1 of 2 failed, 1 seed)" in text
    assert "classic 0.25 +- 0.05 (3 seeds)" in text and "deallocate" not in text
    assert "6 of 11 entries are not run yet." in text
    out = tmp_path / "results.md"
    assert table.main(["--out", str(out)]) == 0 and out.read_text() == text
