"""The ``tiered`` command: a LightningCLI for tier stacks described in YAML.

    tiered fit --config experiments/tasks/copy.yaml --config experiments/stacks/cache_ram.yaml
    tiered test --config ... --ckpt_path runs/.../checkpoints/last.ckpt

``tiered --help`` lists every subcommand (``COMMANDS``); fit, validate, test and predict
come from Lightning. The model is a
``TieredModule`` (or a subclass) and the data any ``SequenceTask``, both in subclass mode,
so YAML chooses them by ``class_path`` and short class names work. The task's input size,
output size and loss kind are linked into the model, so a config never writes them twice.
Other subcommands (``tiered sweep``, ``tiered rom``) plug into ``EXTRA_COMMANDS``.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import tiered.tasks
import tiered.tiers  # noqa: F401  (registers the tier classes for short names)
from tiered.malloc import tune_malloc
from tiered.module import TieredModule
from tiered.tasks.base import SequenceTask

CONTROLLER = "model.init_args.controller.init_args"


def _sweep(argv: list[str]) -> int:
    from tiered.sweeps.cli import main as sweep_main

    return sweep_main(argv)


def _rom(argv: list[str]) -> int:
    from tiered.rom_cli import main as rom_main

    return rom_main(argv)


# name -> function taking the remaining arguments.
EXTRA_COMMANDS: dict[str, Callable[[list[str]], int | None]] = {"sweep": _sweep, "rom": _rom}

# Every subcommand with its one line for ``tiered --help``: Lightning's four, then ours.
COMMANDS = {
    "fit": "train a tier stack on a task: --config TASK.yaml --config STACK.yaml",
    "validate": "evaluate a model on the task's training range of lengths",
    "test": "evaluate a model on the task's evaluation range (generalisation)",
    "predict": "write a model's predictions for the test split",
    "sweep": "run, resume and report ablation sweeps, locally or on a Ray cluster",
    "rom": "build and inspect key/value stores for the ROM and Disk tiers",
}


def top_level_help() -> str:
    """What ``tiered --help`` prints: the tool, its version and every subcommand."""
    from tiered import __version__

    width = max(*map(len, COMMANDS), len("-h, --help"))
    lines = [
        f"usage: tiered [-h] [--version] {{{','.join(COMMANDS)}}} ...",
        "",
        f"tiered {__version__}: neural networks with a memory hierarchy (register, cache, RAM,",
        "ROM and disk tiers), described in YAML and trained with Lightning.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {line}" for name, line in COMMANDS.items()),
        "",
        "options:",
        f"  {'-h, --help':<{width}}  show this message and exit",
        f"  {'--version':<{width}}  show the version and exit",
        "",
        "`tiered COMMAND --help` shows a command's options; docs/quickstart.md starts from here.",
    ]
    return "\n".join(lines)


class TieredCLI(LightningCLI):
    """LightningCLI with the task's sizes linked into the controller."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.input_size", f"{CONTROLLER}.input_size", apply_on="instantiate")
        parser.link_arguments(
            "data.output_size", f"{CONTROLLER}.output_size", apply_on="instantiate"
        )
        parser.link_arguments("data.loss", "model.init_args.loss", apply_on="instantiate")
        parser.add_argument(
            "--evaluate_after_fit",
            type=bool,
            default=False,
            help="After fit, run validate (training range) and test (evaluation range) on "
            "the checkpoint kept by the checkpoint callback and print their tables.",
        )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        """Add a rich progress bar when rich is installed and no progress bar is chosen."""
        from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

        chosen = list(callbacks) + list(config.get("callbacks") or [])
        wants_bar = config.get("enable_progress_bar") is not False
        has_bar = any(isinstance(callback, ProgressBar) for callback in chosen)
        if wants_bar and not has_bar and importlib.util.find_spec("rich"):
            callbacks = [*callbacks, RichProgressBar()]
        return super()._instantiate_trainer(with_atomic_checkpoints(config), callbacks)

    def after_fit(self) -> None:
        if self.config.get("fit", {}).get("evaluate_after_fit"):
            callback = self.trainer.checkpoint_callback
            saved = callback is not None and bool(getattr(callback, "best_model_path", ""))
            ckpt = "best" if saved else None  # no checkpoint yet: the weights in memory
            self.trainer.validate(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)


def with_atomic_checkpoints(config: dict[str, Any]) -> dict[str, Any]:
    """The Trainer's arguments with ``AtomicCheckpointIO`` among its plugins, unless they
    already hold a ``CheckpointIO`` (checkpoints then survive a kill mid-save)."""
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

    from tiered.checkpoint import AtomicCheckpointIO

    strategy = config.get("strategy")
    if getattr(strategy, "_checkpoint_io", None) is not None or "xla" in str(strategy).lower():
        return config  # the strategy brings its own (Lightning refuses two)
    plugins = config.get("plugins")
    if plugins is None:
        plugins = []
    elif not isinstance(plugins, (list, tuple)):
        plugins = [plugins]
    if any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        return config
    return {**config, "plugins": [*plugins, AtomicCheckpointIO()]}


def trainer_defaults() -> dict[str, Any]:
    """CSV logs under runs/, or TensorBoard logs when tensorboard is installed."""
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": "runs"},
        }
    else:
        logger = {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": "runs"},
        }
    return {"logger": logger}


def make_cli(args: Sequence[str] | None, run: bool = True) -> TieredCLI:
    """Build (and with ``run`` execute) the CLI on ``args``, as ``tiered`` does.

    With ``run=False`` there are no subcommands: ``args`` are a config's flags only, and
    the model, data and trainer are instantiated but nothing is trained.
    """
    return TieredCLI(
        TieredModule,
        SequenceTask,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        args=None if args is None else list(args),
        auto_configure_optimizers=False,
        run=run,
    )


def config_syntax_error(args: Sequence[str]) -> str | None:
    """One line naming the first ``--config`` file that is not valid YAML, else None."""
    import yaml

    from tiered.sweeps.spec import yaml_error_line

    files = [b for a, b in itertools.pairwise(args) if a in ("--config", "-c")]
    files += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for name in files:
        path = Path(name)
        if path.is_file():
            try:
                yaml.safe_load(path.read_text())
            except yaml.YAMLError as error:
                return f"error: --config {name}: {yaml_error_line(error)}"
            except (OSError, UnicodeDecodeError):
                continue  # unreadable: jsonargparse says so
    return None


def main(argv: Sequence[str] | None = None) -> int | None:
    """Entry point of the ``tiered`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in ([], ["-h"], ["--help"]):
        print(top_level_help(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args == ["--version"]:
        from tiered import __version__

        print(f"tiered {__version__}")
        return 0
    tune_malloc()
    if args and args[0] in EXTRA_COMMANDS:
        return EXTRA_COMMANDS[args[0]](args[1:])
    syntax = config_syntax_error(args)
    if syntax is not None:  # before jsonargparse, which names neither the file nor the line
        print(syntax, file=sys.stderr)
        return 2
    make_cli(None if argv is None else args)  # None: LightningCLI reads sys.argv itself
    return 0


if __name__ == "__main__":
    sys.exit(main())
