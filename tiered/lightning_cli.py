"""The Lightning half of the ``tiered`` command: ``fit``, ``validate``, ``test``, ``predict``.

``tiered.cli`` dispatches here only for those four, so ``tiered --help``, ``tiered rom`` and
``tiered sweep`` never import Lightning. The model is a ``TieredModule`` (or a subclass) and
the data any ``SequenceTask``, both in subclass mode, so YAML chooses them by ``class_path``
and short class names work. The task's input size, output size and loss kind are linked into
the model, so a config never writes them twice.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import tiered.controllers
import tiered.tasks
import tiered.tiers  # noqa: F401
from tiered.callbacks import FinalCheckpoint, StepProgressBar, TieredModelSummary
from tiered.config_errors import ConfigError, one_line_parser_error, root_cause
from tiered.module import TieredModule
from tiered.tasks.base import SequenceTask

CONTROLLER = "model.init_args.controller.init_args"


class TieredArgumentParser(LightningArgumentParser):
    """A parser whose errors come first and in one line, with the nearest known names."""

    def error(self, message: str, ex: Exception | None = None) -> None:  # type: ignore[override]
        if not self.exit_on_error:  # a subcommand's parser: its parent reports the error
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        raise one_line_parser_error(message, parser)


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
            "the final weights (last.ckpt, saved at the end of every fit), or the checkpoint "
            "callback's best when it monitors a metric, and print which checkpoint and step "
            "they evaluate.",
        )

    def instantiate_classes(self) -> None:
        """Build the model, data and trainer; a constructor's range check becomes one line."""
        try:
            super().instantiate_classes()
        except Exception as error:
            cause = root_cause(error)
            if not _raised_by_a_check(cause):
                raise
            raise ConfigError(f"error: {cause}") from error

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        """Add tiered's progress bar, model summary and final checkpoint unless the
        config chooses its own."""
        from lightning.pytorch.callbacks import ModelSummary, ProgressBar

        configured = config.get("callbacks") or []
        if not isinstance(configured, (list, tuple)):
            configured = [configured]  # one callback, not a list: Lightning accepts it too
        chosen = list(callbacks) + list(configured)
        extra: list[Any] = []
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(callback, ProgressBar) for callback in chosen
        ):
            extra.append(StepProgressBar())
        if config.get("enable_model_summary") is not False and not any(
            isinstance(callback, ModelSummary) for callback in chosen
        ):
            extra.append(TieredModelSummary())
        if config.get("enable_checkpointing") is not False and not any(
            isinstance(callback, FinalCheckpoint) for callback in chosen
        ):
            extra.append(FinalCheckpoint())
        return super()._instantiate_trainer(with_atomic_checkpoints(config), [*callbacks, *extra])

    def after_fit(self) -> None:
        if not self.config.get("fit", {}).get("evaluate_after_fit"):
            return
        ckpt, said = evaluated_checkpoint(self.trainer)
        print(f"evaluate_after_fit: {said}", flush=True)
        for run in (self.trainer.validate, self.trainer.test):
            run(self.model, datamodule=self.datamodule, ckpt_path=ckpt, weights_only=True)


# How tiered's argument checks begin their messages: the class, and a tier's name if any
# ("RAM: slots must be ...", "Register 'register': input_size is ...").
_CHECK_MESSAGE = re.compile(r"^[A-Z]\w*( '[^']*')?: ")


def _raised_by_a_check(error: BaseException) -> bool:
    """Whether ``error`` is an argument check: one of Lightning's own
    (``MisconfigurationException``), or a ``ValueError`` / ``TypeError`` raised in tiered's
    own code with a message that starts with the class it checks. A bug deeper down (in a
    library, or an error message of another shape) keeps its traceback."""
    import traceback

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    import tiered

    if isinstance(error, MisconfigurationException):
        return True
    frames = traceback.extract_tb(error.__traceback__)
    if not frames or not isinstance(error, (ValueError, TypeError)):
        return False
    if not _CHECK_MESSAGE.match(str(error)):
        return False
    package = Path(tiered.__file__).resolve().parent
    roots = (package, package.parent / "tiers", package.parent / "controllers")
    where = Path(frames[-1].filename).resolve()
    return any(where.is_relative_to(root) for root in roots)


def evaluated_checkpoint(trainer: Any) -> tuple[str | None, str]:
    """Which weights ``--evaluate_after_fit`` evaluates, and a line that says so.

    With a monitored metric, the checkpoint callback's best checkpoint of this run (one in
    its own folder: after a resume Lightning keeps the best path of the run resumed from).
    Otherwise the ``last.ckpt`` that ``FinalCheckpoint`` saved at the end of this fit: the
    final weights. Without either, the weights in memory.
    """
    callback = trainer.checkpoint_callback
    step = trainer.global_step
    if callback is None:
        return None, f"validating and testing the weights in memory (step {step}; no checkpoint)"
    monitor = getattr(callback, "monitor", None)
    best = getattr(callback, "best_model_path", "") or ""
    score = getattr(callback, "best_model_score", None)
    folder = getattr(callback, "dirpath", None)
    own = bool(best) and folder is not None and Path(best).parent == Path(folder)
    if monitor and own and score is not None:
        return best, (f"validating and testing {best} (best {monitor} = {float(score):.4g}; "
                      f"training ended at step {step})")  # fmt: skip
    last = getattr(callback, "last_model_path", "") or ""
    if last:
        return last, f"validating and testing {last} (the final weights, step {step})"
    return None, f"validating and testing the weights in memory (step {step}; no checkpoint)"


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
        parser_class=TieredArgumentParser,
    )
