"""experiments/benchmarks/large_memory.py on a tiny trained run (the real fit, load, test)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from tiered.cli import make_cli

BENCHMARKS = Path(__file__).resolve().parents[2] / "experiments" / "benchmarks"
TASK = BENCHMARKS.parent / "tasks" / "kv_recall.yaml"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("large_memory", BENCHMARKS / "large_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_trained_run_is_tested_on_longer_sequences_and_tabled(tmp_path, monkeypatch):
    pytest.importorskip("faiss")  # the run's RAM searches through a lossy FAISS index
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the benchmark imports machine.py
    run = tmp_path / "runs" / "config=tiny,seed=0"
    ram = ("{class_path: tiered.tiers.RAM, init_args: {slots: 64, width: 40, read_heads: 1, "
           "k: 4, links: 0, sparse: true, index: faiss, nprobe: 1, "
           "exhaustive_rows: 0}}")  # fmt: skip
    make_cli([
        "fit", "--config", str(TASK),
        "--model", "tiered.TieredModule",
        "--model.init_args.controller", "tiered.controllers.LSTMController",
        "--model.init_args.controller.init_args.register", "tiered.tiers.Register",
        "--model.init_args.controller.init_args.register.init_args.hidden_size", "7",
        "--model.init_args.controller.init_args.tiers", f"[{ram}]",
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "1",
        "--data.init_args.batch_size", "2", "--data.init_args.val_batches", "1",
        "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(run), "--trainer.logger.name", "logs",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.dirpath", str(run / "checkpoints"),
    ])  # fmt: skip
    assert (run / "checkpoints" / "last.ckpt").exists()
    benchmark = _load_benchmark()
    out = tmp_path / "out"
    assert benchmark.main([
        "--runs", str(tmp_path / "runs"), "--out", str(out), "--items", "5", "33",
        "--batch", "3", "--chunk", "4", "--recall-every", "2", "--index", "trained", "exact",
        "--dense-slots", "8", "16", "--dense-steps", "2",
    ]) == 0  # fmt: skip
    with open(out / "test.csv") as handle:
        tests = list(csv.DictReader(handle))
    assert [(t["index"], int(t["items"])) for t in tests] == [
        ("trained", 5), ("trained", 33), ("exact", 5), ("exact", 33)]  # fmt: skip
    for t in tests:
        assert 0.0 <= float(t["bit_error_rate"]) <= 1.0 and float(t["recall_checked"]) > 0
    for t in tests[:2]:
        # FAISS visiting 1 of its 8 lists, from the first row on: a lossy index, measured
        assert 0.0 < float(t["index_recall"]) < 1.0
    for t in tests[2:]:
        assert float(t["index_recall"]) == 1.0  # exact search at test: nothing missed
    with open(out / "chunks.csv") as handle:
        chunks = [c for c in csv.DictReader(handle) if c["items"] == "33"]
    assert [int(c["steps_done"]) for c in chunks] == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 41]
    assert float(chunks[-1]["rows_written"]) <= 41  # at most one new row a step
    with open(out / "dense.csv") as handle:
        dense = list(csv.DictReader(handle))
    # the dense state holds the B x N x N link matrix: 4x the bytes at 2x the slots, nearly
    assert [int(d["slots"]) for d in dense] == [8, 16]
    assert 2.0 < float(dense[1]["state_mib"]) / float(dense[0]["state_mib"]) < 4.0
    text = (out / "large_memory.md").read_text()
    assert "| config=tiny,seed=0 | 3 | [2, 8] | exact | 33 |" in text
    assert (out / "curves.png").exists() and (out / "step_time.png").exists()


def test_the_long_run_benchmark_records_time_memory_and_bookkeeping(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("long_run", BENCHMARKS / "long_run.py")
    long_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(long_run)
    argv = ["--steps", "120", "--slots", "97", "--width", "16", "--read-heads", "2",
            "--window", "20", "--every", "40", "--out", str(tmp_path)]  # fmt: skip
    assert long_run.main(argv) == 0
    with open(tmp_path / "long_run.csv") as handle:
        records = list(csv.DictReader(handle))
    assert [int(r["steps"]) for r in records] == [0, 40, 80, 120]
    rows = [float(r["rows_written"]) for r in records[1:]]
    assert rows == sorted(rows) and rows[-1] == 97  # the memory fills, then stays full
    # the LRU heap compacts itself: at most 4x the rows accessed plus 64 entries
    assert all(int(r["heap_entries"]) <= 4 * 97 + 64 for r in records)
    assert float(records[-1]["source_found"]) == 1.0  # 97 rows, searched exactly
    assert "120 steps of one sequence" in (tmp_path / "long_run.md").read_text()
