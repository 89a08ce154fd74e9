"""Algorithmic tasks as LightningDataModules that generate their data from a seed."""

from tiered.tasks.babi import BAbI
from tiered.tasks.base import SequenceBatch, SequenceTask
from tiered.tasks.copy import Copy, RepeatCopy
from tiered.tasks.graph import ShortestPath, Traversal
from tiered.tasks.kv_recall import KeyValueRecall
from tiered.tasks.lookup import KeyValueLookup
from tiered.tasks.ponder import Addition, Parity
from tiered.tasks.recall import AssociativeRecall, PrioritySort

__all__ = [
    "Addition",
    "AssociativeRecall",
    "BAbI",
    "Copy",
    "KeyValueLookup",
    "KeyValueRecall",
    "Parity",
    "PrioritySort",
    "RepeatCopy",
    "SequenceBatch",
    "SequenceTask",
    "ShortestPath",
    "Traversal",
]
