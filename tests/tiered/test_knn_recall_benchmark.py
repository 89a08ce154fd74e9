"""experiments/benchmarks/knn_recall.py's measurements, at a tiny size: the ground truth and
the metrics it reports hold exact values where they must (recall 1 for exact search and for
an IVF that visits every list, every stored row found without noise, attention mass shares
in [0, 1] and equal to a float64 reference)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
N, W, Q, K = 512, 16, 32, 8


def _benchmark():
    path = ROOT / "experiments" / "benchmarks" / "knn_recall.py"
    spec = importlib.util.spec_from_file_location("knn_recall", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _benchmark()


@pytest.fixture(scope="module")
def rows_and_probe(bench):
    rng = np.random.default_rng(0)
    rows = bench.unit_rows(N, W, rng)
    return rows, bench.make_probe(rows, Q, K, 0.0, rng)


def test_ground_truth_equals_a_float64_argsort_over_all_rows(bench, rows_and_probe):
    rows, probe = rows_and_probe
    scores = probe.random.astype(np.float64) @ rows.astype(np.float64).T
    expected = np.argsort(-scores, axis=1)[:, :K]
    found = bench.exact_top_k(rows, probe.random, K, block=37)  # odd blocks: merging works
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(probe.exact, expected)


def test_exact_has_recall_one_and_finds_every_stored_row_without_noise(bench, rows_and_probe):
    rows, probe = rows_and_probe
    rng = np.random.default_rng(1)
    (result,) = bench.measure(bench.build_exact(rows), rows, probe, K, 1, rng)
    assert result["recall"] == 1.0
    assert result["found"] == 1.0
    assert result["update_ms"] >= 0  # exact can replace rows (its norms cache)


def test_ivf_visiting_every_list_has_recall_one(bench, rows_and_probe):
    faiss = pytest.importorskip("faiss")
    rows, probe = rows_and_probe
    nlist = bench.ivf_nlist(N)
    built = bench.build_ivf_memory(faiss, rows, [1, nlist])
    few, every = bench.measure(built, rows, probe, K, 1, np.random.default_rng(1))
    assert every["setting"] == f"nprobe {nlist}"
    assert every["recall"] == 1.0 and every["found"] == 1.0
    assert few["recall"] < 1.0  # one list of many misses neighbours: the metric can fail


def test_attention_mass_shares_are_in_0_1_and_exact_holds_the_top_k_share(bench, rows_and_probe):
    rows, probe = rows_and_probe
    (result,) = bench.measure(bench.build_exact(rows), rows, probe, K, 1, np.random.default_rng(1))
    scores = probe.random.astype(np.float64) @ rows.astype(np.float64).T  # (Q, N)
    for strength in bench.STRENGTHS:
        weights = np.exp(strength * scores)
        weights /= weights.sum(axis=1, keepdims=True)
        top_k_share = np.sort(weights, axis=1)[:, -K:].sum(axis=1).mean()
        share = result[f"mass_s{strength:g}"]
        assert 0.0 <= share < 1.0
        assert math.isclose(share, top_k_share, rel_tol=1e-9)
    # the mass of every row is 1, of no row 0
    everything = np.tile(np.arange(N), (Q, 1))
    assert math.isclose(
        bench.mass_share(rows, probe.random, everything, 10.0, probe.log_z[10.0]), 1.0
    )
    nothing = np.full((Q, K), -1)
    assert bench.mass_share(rows, probe.random, nothing, 10.0, probe.log_z[10.0]) == 0.0


def test_noisy_queries_are_unit_and_at_the_documented_cosine_to_their_source(bench):
    rng = np.random.default_rng(2)
    rows = bench.unit_rows(N, 64, rng)
    sources = rng.choice(N, 256, replace=False)
    queries = bench.noisy_queries(rows, sources, 0.5, rng)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, rtol=1e-5)
    cosine = (queries * rows[sources]).sum(axis=1).mean()
    assert abs(cosine - 1 / math.sqrt(1.25)) < 0.02


def test_recall_and_found_count_hits_and_ignore_missing_neighbours(bench):
    exact = np.array([[0, 1, 2, 3]])
    assert bench.recall_at_k(np.array([[3, 9, -1, 0]]), exact) == 0.5
    assert bench.source_found(np.array([[3, 9], [1, -1]]), np.array([9, 2])) == 0.5


def test_nprobe_values_add_nlist_over_8_and_stay_within_nlist(bench):
    assert bench.nprobe_values(256, [8, 32, 64]) == [8, 32, 64]
    assert bench.nprobe_values(512, [8, 32, 64]) == [8, 32, 64]
    assert bench.nprobe_values(128, [8, 32, 64]) == [8, 16, 32, 64]
    assert bench.nprobe_values(22, [8, 32, 64]) == [2, 8, 22]
