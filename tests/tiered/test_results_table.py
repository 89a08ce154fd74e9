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
        "variant,seed,L10,L120\ndnc,0,0.5,30.0\ndnc,1,1.5,10.0\ndnc,2,1.0,20.0\n"
    )
    sweep = tmp_path / "sweeps" / "dnc_fixes_copy"
    sweep.mkdir(parents=True)
    (sweep / "report.csv").write_text(
        "variant,mean,std,finished,failed,not_finite,other,wall_s\n"
        "config=classic,0.25,0.05,3,0,0,0,100\nconfig=deallocate,,,0,0,0,3,\n"
    )
    text = table.render()
    assert "dnc (3 seeds) 10: 1.0, 120: 20.0" in text  # medians over seeds
    assert "classic 0.25 +- 0.05 (3 seeds)" in text and "deallocate" not in text
    assert "1 of 3 entries are not run yet." in text  # recall has no report
    out = tmp_path / "results.md"
    assert table.main(["--out", str(out)]) == 0 and out.read_text() == text
