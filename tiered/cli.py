"""The ``tiered`` command: dispatch to a subcommand, importing only what it needs.

    tiered fit --config experiments/tasks/copy.yaml --config experiments/stacks/cache_ram.yaml
    tiered test --config ... --ckpt_path runs/.../checkpoints/last.ckpt
    tiered tiers RAM        # a tier's arguments, types, defaults and docs
    tiered inspect runs/.../checkpoints/last.ckpt   # per-tier reads, writes, spills

``tiered --help`` lists every subcommand (``COMMANDS``). fit, validate, test and predict are
Lightning's, built in ``tiered.lightning_cli`` and imported only for them; the others
(``EXTRA_COMMANDS``: sweep, rom, tiers, inspect) import neither Lightning nor, where they can,
torch, so ``--help``, ``--version``, ``rom info`` and ``sweep run --dry-run`` start in well
under 2 s (``inspect`` imports them after parsing its arguments).
A config error ends in one line (``tiered.config_errors``) and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tiered.malloc import tune_malloc


def _sweep(argv: list[str]) -> int:
    from tiered.sweeps.cli import main as sweep_main

    return sweep_main(argv)


def _rom(argv: list[str]) -> int:
    from tiered.rom_cli import main as rom_main

    return rom_main(argv)


def _tiers(argv: list[str]) -> int:
    from tiered.describe import main as tiers_main

    return tiers_main(argv)


def _inspect(argv: list[str]) -> int:
    from tiered.inspect_cli import main as inspect_main

    return inspect_main(argv)


# name -> function taking the remaining arguments.
EXTRA_COMMANDS: dict[str, Callable[[list[str]], int | None]] = {
    "sweep": _sweep,
    "rom": _rom,
    "tiers": _tiers,
    "inspect": _inspect,
}

# Every subcommand with its one line for ``tiered --help``: Lightning's four, then ours.
COMMANDS = {
    "fit": "train a tier stack on a task: --config TASK.yaml --config STACK.yaml",
    "validate": "evaluate a model on the task's training range of lengths",
    "test": "evaluate a model on the task's evaluation range (generalisation)",
    "predict": "write a model's predictions for the test split",
    "sweep": "run, resume and report ablation sweeps, locally or on a Ray cluster",
    "rom": "build and inspect key/value stores for the ROM and Disk tiers",
    "tiers": "list every tier and controller with its arguments, types, defaults and docs",
    "inspect": "draw how each tier of a checkpoint's model reads, writes and spills (PNG + text)",
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


def config_syntax_error(args: Sequence[str]) -> str | None:
    """One line naming the first ``--config`` file that is not valid YAML, else None."""
    import yaml

    from tiered.config_errors import config_files
    from tiered.sweeps.spec import yaml_error_line

    for name in config_files(args):
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
    if args[0] in EXTRA_COMMANDS:
        return EXTRA_COMMANDS[args[0]](args[1:])
    if args[0] not in COMMANDS and not args[0].startswith("-"):
        from tiered.config_errors import nearest

        print(f"error: unknown command {args[0]!r}{nearest(args[0], COMMANDS)}; "
              f"`tiered --help` lists them", file=sys.stderr)  # fmt: skip
        return 2
    command = next((a for a in args if a in COMMANDS), "fit")
    hint = f"(`tiered {command} --help` lists the options)"
    syntax = config_syntax_error(args)
    if syntax is not None:  # before jsonargparse, which names neither the file nor the line
        print(f"{syntax}\n{hint}", file=sys.stderr)
        return 2
    from tiered.config_errors import ConfigError, locate, quiet_lightning

    quiet_lightning()
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from tiered.lightning_cli import make_cli

    try:
        make_cli(None if argv is None else args)  # None: LightningCLI reads sys.argv itself
    except ConfigError as error:
        where = locate(error.token, args, error.owner) if error.token else ""
        print(f"{error}{where}\n{hint}", file=sys.stderr)
        return 2
    except MisconfigurationException as error:  # Lightning's own check, e.g. at fit's start
        print(f"error: {error}\n{hint}", file=sys.stderr)
        return 2
    return 0


def __getattr__(name: str) -> Any:
    """``tiered.cli.make_cli`` and the other Lightning parts, imported on first use."""
    if name in ("TieredCLI", "make_cli", "trainer_defaults", "with_atomic_checkpoints"):
        import tiered.lightning_cli

        return getattr(tiered.lightning_cli, name)
    raise AttributeError(f"module 'tiered.cli' has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
