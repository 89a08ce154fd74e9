"""Graph tasks as token sequences (in the spirit of the DNC paper): shortest path on random
undirected graphs, and traversal of random graphs with labelled edges."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from tiered.tasks.base import Example, SequenceTask, check_range
from tiered.validation import check_non_negative_float, check_positive_int


def random_graph(rng: np.random.Generator, nodes: int, extra_edges: float) -> list[tuple[int, int]]:
    """A connected undirected graph on nodes 0..n-1: a random tree plus extra edges.

    Returns:
        The edge list, each edge (u, v) with u < v, no duplicates, no self-loops.
    """
    edges = {tuple(sorted((i, int(rng.integers(0, i))))) for i in range(1, nodes)}
    target = len(edges) + round(extra_edges * nodes)
    possible = nodes * (nodes - 1) // 2
    while len(edges) < min(target, possible):
        u, v = (int(x) for x in rng.choice(nodes, size=2, replace=False))
        edges.add((min(u, v), max(u, v)))
    return sorted(edges)  # type: ignore[arg-type]


def shortest_paths_from(start: int, nodes: int, edges: list[tuple[int, int]]):
    """Breadth-first search: (distance, number of shortest paths, a parent) per node."""
    neighbours: list[list[int]] = [[] for _ in range(nodes)]
    for u, v in edges:
        neighbours[u].append(v)
        neighbours[v].append(u)
    distance = [-1] * nodes
    count = [0] * nodes
    parent = [-1] * nodes
    distance[start], count[start] = 0, 1
    queue = deque([start])
    while queue:
        u = queue.popleft()
        for v in sorted(neighbours[u]):
            if distance[v] == -1:
                distance[v], parent[v] = distance[u] + 1, u
                queue.append(v)
            if distance[v] == distance[u] + 1:
                count[v] += count[u]
    return distance, count, parent


def shortest_path_example(
    rng: np.random.Generator, nodes: int, max_nodes: int, extra_edges: float
) -> Example:
    """Edges one per step, then a (start, goal) query; output the path, then END.

    Node ids are drawn at random from 0..max_nodes-1, so every id is trained on. The query
    has a unique shortest path whenever one exists among 20 draws.
    Inputs (T, 2 max_nodes + 3): an edge step is one-hot(u) on [0, M) and one-hot(v) on
    [M, 2M) with the edge flag (channel 2M); the query step has start and goal with the
    query flag (2M + 1); then one answer step (flag 2M + 2) per output token.
    Targets (T,): node ids along the path from start to goal, then END = max_nodes.
    """
    M = max_nodes
    edges = random_graph(rng, nodes, extra_edges)
    for _ in range(20):
        start, goal = (int(x) for x in rng.choice(nodes, size=2, replace=False))
        _, count, parent = shortest_paths_from(start, nodes, edges)
        if count[goal] == 1:
            break
    path = [goal]
    while path[-1] != start:
        path.append(parent[path[-1]])
    path.reverse()
    ids = rng.permutation(M)[:nodes]  # relabel the nodes with random ids
    order = rng.permutation(len(edges))
    E, A = len(edges), len(path) + 1
    T = E + 1 + A
    inputs = np.zeros((T, 2 * M + 3), dtype=np.float32)
    for step, e in enumerate(order):
        u, v = edges[e]
        if rng.random() < 0.5:
            u, v = v, u
        inputs[step, ids[u]] = inputs[step, M + ids[v]] = inputs[step, 2 * M] = 1.0
    inputs[E, ids[start]] = inputs[E, M + ids[goal]] = inputs[E, 2 * M + 1] = 1.0
    inputs[E + 1 :, 2 * M + 2] = 1.0
    targets = np.zeros(T, dtype=np.int64)
    targets[E + 1 : E + 1 + len(path)] = ids[path]
    targets[T - 1] = M
    mask = np.zeros(T, dtype=bool)
    mask[E + 1 :] = True
    return Example(inputs, targets, mask)


def check_node_range(task: SequenceTask, field: str, low: int, high: int) -> tuple[int, int]:
    """A curriculum's level for a graph task: node ranges stay within the node ids (the
    vocabulary, ``max_nodes``, fixed when the task was made) and have at least 2 nodes."""
    owner = type(task).__name__
    if field in ("nodes", "eval_nodes"):
        if low < 2:
            raise ValueError(f"{owner}: {field} [{low}, {high}] needs at least 2 nodes")
        if high > task.max_nodes:
            raise ValueError(
                f"{owner}: {field} [{low}, {high}] exceeds max_nodes={task.max_nodes}, the node "
                "ids the model's inputs and outputs were sized for (the larger top of nodes and "
                "eval_nodes when the task was made): raise eval_nodes to make room"
            )
    return low, high


class ShortestPath(SequenceTask):
    """Shortest path: read a graph's edges and a query, output the path node by node.

    Args:
        nodes: [low, high] nodes per graph for training and validation.
        eval_nodes: [low, high] nodes per graph for test.
        extra_edges: edges beyond a spanning tree, as a fraction of the node count.
        **kwargs: batch_size, train_batches, val_batches, test_batches, seed and
            num_workers, as in ``SequenceTask``.
    """

    loss = "tokens"

    def __init__(
        self,
        nodes: tuple[int, int] = (5, 10),
        eval_nodes: tuple[int, int] = (11, 16),
        extra_edges: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.nodes = check_range("ShortestPath", "nodes", nodes, minimum=2)
        self.eval_nodes = check_range("ShortestPath", "eval_nodes", eval_nodes, minimum=2)
        self.extra_edges = check_non_negative_float("ShortestPath", "extra_edges", extra_edges)
        self.max_nodes = max(self.nodes[1], self.eval_nodes[1])

    def check_difficulty(self, field: str, value: Any) -> tuple[int, int]:
        return check_node_range(self, field, *super().check_difficulty(field, value))

    @property
    def input_size(self) -> int:
        return 2 * self.max_nodes + 3

    @property
    def output_size(self) -> int:
        return self.max_nodes + 1

    def example(self, rng: np.random.Generator, split: str) -> Example:
        low, high = self.eval_nodes if split == "test" else self.nodes
        nodes = int(rng.integers(low, high + 1))
        return shortest_path_example(rng, nodes, self.max_nodes, self.extra_edges)


def labelled_graph(
    rng: np.random.Generator, nodes: int, labels: int, out_degree: int
) -> dict[tuple[int, int], int]:
    """A directed graph with labelled edges, at most one edge per (node, label).

    Node u gets ``min(out_degree, labels)`` edges, each with its own label drawn without
    replacement and a destination other than u, so a (start, labels) walk is deterministic.

    Returns:
        ``{(source, label): destination}``.
    """
    edges = {}
    for u in range(nodes):
        for label in rng.choice(labels, size=min(out_degree, labels), replace=False):
            v = int(rng.integers(0, nodes - 1))
            edges[(u, int(label))] = v + (v >= u)  # any node but u
    return edges


def traversal_example(
    rng: np.random.Generator,
    nodes: int,
    hops: int,
    max_nodes: int,
    labels: int,
    out_degree: int,
) -> Example:
    """Labelled edges one per step, then a start node and ``hops`` edge labels to follow;
    output the node reached after each hop (the DNC paper's traversal, on random graphs).

    Node ids are drawn at random from 0..max_nodes-1, so every id is trained on.
    Inputs (T, 2 M + K + 3) with M = max_nodes, K = labels: an edge step is one-hot(u) on
    [0, M), one-hot(label) on [M, M + K) and one-hot(v) on [M + K, 2M + K) with the edge
    flag (2M + K); the query's first step carries the start node on [0, M) with the query
    flag (2M + K + 1), and each of its ``hops`` steps after one label on [M, M + K) with the
    query flag; then one answer step (flag 2M + K + 2) per hop.
    Targets (T,): the node ids visited, in order, on the answer steps (the scored ones).
    """
    M, K = max_nodes, labels
    edges = labelled_graph(rng, nodes, labels, out_degree)
    start = node = int(rng.integers(0, nodes))
    path, walk = [], []
    for _ in range(hops):
        choices = sorted(label for (u, label) in edges if u == node)
        label = choices[int(rng.integers(0, len(choices)))]
        node = edges[(node, label)]
        walk.append(label)
        path.append(node)
    ids = rng.permutation(M)[:nodes]
    items = list(edges.items())
    order = rng.permutation(len(items))
    E = len(items)
    T = E + 1 + hops + hops
    width = 2 * M + K + 3
    inputs = np.zeros((T, width), dtype=np.float32)
    for step, e in enumerate(order):
        (u, label), v = items[e]
        inputs[step, ids[u]] = inputs[step, M + label] = inputs[step, M + K + ids[v]] = 1.0
        inputs[step, 2 * M + K] = 1.0
    inputs[E, ids[start]] = inputs[E, 2 * M + K + 1] = 1.0
    for h, label in enumerate(walk):
        inputs[E + 1 + h, M + label] = inputs[E + 1 + h, 2 * M + K + 1] = 1.0
    inputs[E + 1 + hops :, 2 * M + K + 2] = 1.0
    targets = np.zeros(T, dtype=np.int64)
    targets[E + 1 + hops :] = ids[path]
    mask = np.zeros(T, dtype=bool)
    mask[E + 1 + hops :] = True
    return Example(inputs, targets, mask)


class Traversal(SequenceTask):
    """Graph traversal (DNC paper): read labelled edges, then follow a start node and a
    sequence of edge labels; output every node reached. Token accuracy is the share of
    answers right, exact match the share of queries (paths) wholly right.

    Args:
        nodes: [low, high] nodes per graph for training and validation.
        eval_nodes: [low, high] nodes per graph for test.
        hops: [low, high] edges to follow per query for training and validation.
        eval_hops: [low, high] edges to follow per query for test.
        labels: distinct edge labels (like the lines of a transport map).
        out_degree: labelled edges leaving each node (at most ``labels``).
        **kwargs: batch_size, train_batches, val_batches, test_batches, seed and
            num_workers, as in ``SequenceTask``.
    """

    loss = "tokens"

    def __init__(
        self,
        nodes: tuple[int, int] = (5, 10),
        eval_nodes: tuple[int, int] = (11, 16),
        hops: tuple[int, int] = (1, 3),
        eval_hops: tuple[int, int] = (4, 6),
        labels: int = 4,
        out_degree: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        owner = "Traversal"
        self.nodes = check_range(owner, "nodes", nodes, minimum=2)
        self.eval_nodes = check_range(owner, "eval_nodes", eval_nodes, minimum=2)
        self.hops = check_range(owner, "hops", hops)
        self.eval_hops = check_range(owner, "eval_hops", eval_hops)
        self.labels = check_positive_int(owner, "labels", labels)
        self.out_degree = check_positive_int(owner, "out_degree", out_degree)
        if self.out_degree > self.labels:
            raise ValueError(
                f"Traversal: out_degree={out_degree} needs at least as many labels, got "
                f"labels={labels} (one edge per label leaves a node)"
            )
        self.max_nodes = max(self.nodes[1], self.eval_nodes[1])

    def check_difficulty(self, field: str, value: Any) -> tuple[int, int]:
        return check_node_range(self, field, *super().check_difficulty(field, value))

    @property
    def input_size(self) -> int:
        return 2 * self.max_nodes + self.labels + 3

    @property
    def output_size(self) -> int:
        return self.max_nodes

    def example(self, rng: np.random.Generator, split: str) -> Example:
        nodes_range, hops_range = (
            (self.eval_nodes, self.eval_hops) if split == "test" else (self.nodes, self.hops)
        )
        nodes = int(rng.integers(nodes_range[0], nodes_range[1] + 1))
        hops = int(rng.integers(hops_range[0], hops_range[1] + 1))
        return traversal_example(rng, nodes, hops, self.max_nodes, self.labels, self.out_degree)
