"""Every YAML shipped in experiments/ is parsed and instantiated (like litgpt's config hub)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiered import TieredModule
from tiered.cli import make_cli
from tiered.controllers import Controller
from tiered.tasks import SequenceTask

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
TASKS = sorted((EXPERIMENTS / "tasks").glob("*.yaml"))
STACKS = sorted((EXPERIMENTS / "stacks").glob("*.yaml"))
BABI = set((EXPERIMENTS / "babi").glob("*.yaml"))  # tested in test_babi.py
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


def test_every_shipped_yaml_is_covered_by_a_test():
    covered = set(TASKS) | set(STACKS) | BABI
    shipped = set(EXPERIMENTS.rglob("*.yaml"))
    # Sweep files have their own test, and so do the bAbI configs (test_babi.py: the real
    # data is not part of the project); every other YAML must be a task or a stack here.
    shipped = {path for path in shipped if "sweeps" not in path.parts}
    assert shipped == covered, f"untested YAML files: {sorted(shipped - covered)}"
    assert len(TASKS) >= 5 and len(STACKS) >= 4


@pytest.mark.parametrize("task", TASKS, ids=lambda p: p.stem)
@pytest.mark.parametrize("stack", STACKS, ids=lambda p: p.stem)
def test_task_and_stack_instantiate_with_linked_sizes(task, stack, lookup_store_in_cwd):
    cli = make_cli(["--config", str(task), "--config", str(stack), *QUIET], run=False)
    assert isinstance(cli.model, TieredModule)
    assert isinstance(cli.datamodule, SequenceTask)
    controller = cli.model.controller
    assert isinstance(controller, Controller)
    assert controller.input_size == cli.datamodule.input_size
    assert controller.output_size == cli.datamodule.output_size
    assert cli.model.loss_kind == cli.datamodule.loss
    batch = cli.datamodule.make_batch("train", 0)
    out = controller(batch.inputs[:2, :5])
    steps = min(5, batch.inputs.shape[1])  # parity: one step per sequence
    assert out.output.shape == (2, steps, cli.datamodule.output_size)
