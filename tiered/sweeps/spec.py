"""Sweep files: parse, validate and expand a grid of overrides into named runs.

A sweep file is YAML with four keys:

    base: [experiments/tasks/copy.yaml]          # config files, stacked in order
    grid:                                        # dotted keys -> lists of values
      config: [experiments/stacks/register.yaml, experiments/stacks/ram.yaml]
      model.init_args.gradient_clip_val: [1.0, 10.0]
    seeds: [0, 1, 2]
    metric: {name: val/bit_errors, mode: min}

The grid key ``config`` takes config files (a whole tier stack is one value); every other
key is a command-line override (``--key value``). Relative paths are resolved against the
sweep file's folder first, then the current directory. An optional ``args`` list adds fixed
command-line arguments to every run (e.g. ``[--trainer.max_steps, "500"]``).

The command line can override a file (``SweepSpec.with_overrides``): ``--seeds`` replaces
its seeds and the arguments after ``--`` are appended to every run's, after the file's
``args`` (so they win where both set a key).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

KEYS = ("base", "grid", "seeds", "metric", "args")
# Options of ``tiered fit`` the sweep sets per run itself: extra arguments may not set them.
RESERVED = {
    "--seed_everything": "the sweep sets it per run from the seeds; use --seeds",
    "--data.init_args.seed": "the sweep sets it per run from the seeds; use --seeds",
    "--ckpt_path": "the sweep sets it to resume a run from its last.ckpt",
    "--trainer.default_root_dir": "the sweep sets it to the run's folder",
    "--trainer.logger": "the sweep logs every run to CSV in its folder",
    "--trainer.enable_progress_bar": "the sweep turns it off (runs write to log.txt)",
    "--trainer.enable_checkpointing": "the sweep keeps each run's last.ckpt to resume it",
}
# Lightning's seeds are 32-bit unsigned integers.
MAX_SEED = 2**32 - 1


class SweepError(ValueError):
    """A sweep file that cannot be run; the message names the field and the value."""


@dataclass(frozen=True)
class Run:
    """One run of a sweep: a variant (grid point) and a seed.

    Attributes:
        name: unique folder name, e.g. ``config=ram,seed=1``.
        variant: the name without the seed; runs of one variant differ only by seed.
        seed: the seed.
        args: the arguments to ``tiered fit`` (configs, overrides, the file's ``args``,
            the extra arguments, seed).
        extra_args: the part of ``args`` given on the command line after ``--``.
    """

    name: str
    variant: str
    seed: int
    args: tuple[str, ...]
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file, with the command line's overrides if any.

    Attributes:
        seeds: the seeds run: the file's, or those of ``--seeds``.
        args: the file's ``args``.
        extra_args: arguments from the command line (after ``--``), after ``args``.
    """

    path: Path
    base: tuple[Path, ...]
    grid: dict[str, tuple[Any, ...]]
    seeds: tuple[int, ...]
    metric: str
    mode: str
    args: tuple[str, ...] = field(default=())
    extra_args: tuple[str, ...] = field(default=())

    def with_overrides(
        self, seeds: Sequence[str] | None = None, extra_args: Sequence[str] = ()
    ) -> SweepSpec:
        """This sweep with ``--seeds`` (as typed) replacing its seeds and ``extra_args``
        appended to every run's arguments; raises ``SweepError`` (one line naming the
        argument and the value) on bad input."""
        return replace(
            self,
            seeds=self.seeds if seeds is None else parse_seeds(seeds),
            extra_args=check_extra_args(extra_args),
        )

    def runs(self) -> list[Run]:
        """Every (grid point, seed) as a named run, in a stable order."""
        keys = sorted(self.grid)
        short = _short_names(keys)
        runs = []
        for values in itertools.product(*(self.grid[key] for key in keys)):
            parts, args = [], []
            for key, value in zip(keys, values, strict=True):
                if key == "config":
                    path = Path(value)
                    parts.append(f"config={path.stem}")
                    args += ["--config", str(path)]
                else:
                    parts.append(f"{short[key]}={_format(value)}")
                    args += [f"--{key}", _as_arg(value)]
            variant = ",".join(parts) if parts else "base"
            config_args = [a for p in self.base for a in ("--config", str(p))]
            for seed in self.seeds:
                seed_args = ["--seed_everything", str(seed), "--data.init_args.seed", str(seed)]
                runs.append(
                    Run(
                        name=_safe(f"{variant},seed={seed}"),
                        variant=_safe(variant),
                        seed=seed,
                        args=(*config_args, *args, *self.args, *self.extra_args, *seed_args),
                        extra_args=self.extra_args,
                    )
                )
        names = [run.name for run in runs]
        if len(set(names)) != len(names):
            raise SweepError(f"sweep: two grid points get the same run name: {names}")
        return runs


def parse_seeds(values: Sequence[str]) -> tuple[int, ...]:
    """The seeds of ``--seeds`` as typed: distinct integers >= 0."""
    valid = f"give distinct integers from 0 to {MAX_SEED}, e.g. --seeds 0 1 2"
    if not values:
        raise SweepError(f"--seeds: no seed given; {valid}")
    seeds: list[int] = []
    for value in values:
        try:
            seed = int(value)
        except ValueError:
            raise SweepError(f"--seeds: {value!r} is not an integer; {valid}") from None
        if not 0 <= seed <= MAX_SEED:
            raise SweepError(f"--seeds: {seed} is out of range; {valid}")
        if seed in seeds:
            raise SweepError(f"--seeds: {seed} is given twice; {valid}")
        seeds.append(seed)
    return tuple(seeds)


def _is_seed(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED


def check_extra_args(args: Sequence[str]) -> tuple[str, ...]:
    """The arguments after ``--``: options of ``tiered fit`` (``--key value`` or
    ``--key=value``), none of those the sweep sets per run itself (``RESERVED``)."""
    args = tuple(args)
    if args and not args[0].startswith("--"):
        raise SweepError(
            f"extra argument {args[0]!r} after --: give options of tiered fit, starting with "
            f"--KEY, e.g. -- --trainer.max_steps 100"
        )
    for arg in args:
        if arg == "--":
            raise SweepError("extra arguments: a second -- is given; put every option of "
                             "tiered fit after the first")  # fmt: skip
        key = arg.split("=", 1)[0].removesuffix("+")
        for reserved, why in RESERVED.items():
            if key == reserved or key.startswith(reserved + "."):
                raise SweepError(f"extra argument {arg!r} after --: {why}")
    return args


def _short_names(keys: list[str]) -> dict[str, str]:
    """The last component of each dotted key, or the whole key where that is ambiguous."""
    last = {key: key.split(".")[-1] for key in keys}
    counts = {name: list(last.values()).count(name) for name in last.values()}
    return {key: last[key] if counts[last[key]] == 1 else key for key in keys}


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def _as_arg(value: Any) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def _safe(name: str) -> str:
    """A folder-safe name: letters, digits and ``=,._-`` kept, the rest as ``_``."""
    return re.sub(r"[^A-Za-z0-9=,._\-]", "_", name)


def _resolve(path_value: Any, sweep_dir: Path, field_name: str) -> Path:
    if not isinstance(path_value, str):
        raise SweepError(f"sweep: {field_name} must be a config file path, got {path_value!r}")
    path = Path(path_value)
    for candidate in (sweep_dir / path, Path.cwd() / path, path):
        if candidate.is_file():
            return candidate.resolve()
    raise SweepError(
        f"sweep: {field_name} names {path_value!r}, which is not a file (looked in "
        f"{sweep_dir} and {Path.cwd()})"
    )


def yaml_error_line(error: yaml.YAMLError) -> str:
    """One line for a YAML parse error: where it is and what is wrong."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"YAML syntax error{where}: {problem}"


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; errors name the file, the field, the value and what
    is valid (a YAML syntax error, its line and column)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep: {str(path)!r} is not a file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SweepError(f"sweep {path}: {yaml_error_line(error)}") from None
    try:
        return _parse_sweep(path, data)
    except SweepError as error:
        raise SweepError(str(error).replace("sweep:", f"sweep {path}:", 1)) from None


def _parse_sweep(path: Path, data: Any) -> SweepSpec:
    """Validate the parsed mapping of the sweep file at ``path``."""
    if not isinstance(data, dict):
        raise SweepError(
            f"sweep: the file must be a mapping with keys {KEYS}, got {type(data).__name__}"
        )
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise SweepError(f"sweep: unknown keys {unknown}; valid keys are {list(KEYS)}")
    folder = path.resolve().parent
    base = data.get("base") or []
    if not isinstance(base, list):
        raise SweepError(f"sweep: base must be a list of config files, got {base!r}")
    base_paths = tuple(_resolve(item, folder, "base") for item in base)
    grid_in = data.get("grid") or {}
    if not isinstance(grid_in, dict):
        raise SweepError(f"sweep: grid must map dotted keys to lists of values, got {grid_in!r}")
    grid: dict[str, tuple[Any, ...]] = {}
    for key, values in grid_in.items():
        if not isinstance(values, list) or not values:
            raise SweepError(
                f"sweep: grid.{key} must be a non-empty list of values, got {values!r}"
            )
        if key == "config":
            values = [str(_resolve(v, folder, "grid.config")) for v in values]
        grid[str(key)] = tuple(values)
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(_is_seed(s) for s in seeds):
        raise SweepError(
            f"sweep: seeds must be a non-empty list of integers from 0 to {MAX_SEED}, got {seeds!r}"
        )
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"sweep: seeds must be distinct, got {seeds!r}")
    metric = data.get("metric")
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        raise SweepError(
            f"sweep: metric must be {{name: <logged metric, e.g. val/loss>, mode: min|max}}, "
            f"got {metric!r}"
        )
    mode = metric.get("mode", "min")
    if mode not in ("min", "max"):
        raise SweepError(f"sweep: metric.mode must be 'min' or 'max', got {mode!r}")
    args = data.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
        raise SweepError(f"sweep: args must be a list of command-line arguments, got {args!r}")
    return SweepSpec(
        path=path.resolve(),
        base=base_paths,
        grid=grid,
        seeds=tuple(seeds),
        metric=metric["name"],
        mode=mode,
        args=tuple(str(a) for a in args),
    )
