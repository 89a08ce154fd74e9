"""Graph traversal: decoding an example's inputs and walking its edges gives its targets."""

from __future__ import annotations

import numpy as np
import pytest

from tiered.tasks import Traversal
from tiered.tasks.graph import traversal_example


def _walk(inputs: np.ndarray, M: int, K: int) -> list[int]:
    """Follow the query through the edges written in ``inputs``; the node ids reached."""
    edge_flag, query_flag, answer_flag = 2 * M + K, 2 * M + K + 1, 2 * M + K + 2
    edges = {}
    for step in inputs[inputs[:, edge_flag] == 1]:
        u = int(step[:M].argmax())
        label = int(step[M : M + K].argmax())
        v = int(step[M + K : 2 * M + K].argmax())
        assert (u, label) not in edges  # one edge per node and label: a deterministic walk
        edges[(u, label)] = v
    query = inputs[inputs[:, query_flag] == 1]
    node = int(query[0, :M].argmax())
    reached = []
    for step in query[1:]:
        node = edges[(node, int(step[M : M + K].argmax()))]
        reached.append(node)
    assert (inputs[:, answer_flag] == 1).sum() == len(reached)
    return reached


@pytest.mark.parametrize("seed", range(5))
def test_the_answers_are_the_nodes_the_labels_lead_to(seed):
    rng = np.random.default_rng(seed)
    M, K = 13, 5
    example = traversal_example(rng, nodes=9, hops=4, max_nodes=M, labels=K, out_degree=3)
    assert example.inputs.shape[1] == 2 * M + K + 3
    assert example.mask.sum() == 4
    assert list(example.targets[example.mask]) == _walk(example.inputs, M, K)
    assert (example.targets[~example.mask] == 0).all()


def test_test_sequences_use_the_larger_graphs_and_longer_walks():
    task = Traversal(nodes=[4, 5], eval_nodes=[9, 9], hops=[1, 2], eval_hops=[5, 5],
                     batch_size=4)  # fmt: skip
    assert task.input_size == 2 * 9 + 4 + 3 and task.output_size == 9
    train, test = task.make_batch("train", 0), task.make_batch("test", 0)
    assert set(train.mask.sum(-1).tolist()) <= {1, 2}
    assert test.mask.sum(-1).tolist() == [5] * 4
    assert int(train.targets[train.mask].max()) < 9


def test_more_edges_per_node_than_labels_is_an_error():
    with pytest.raises(ValueError, match="out_degree=5 needs at least as many labels.*=3"):
        Traversal(labels=3, out_degree=5)
