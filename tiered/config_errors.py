"""Config errors in one line: the error first, the nearest known names, no traceback.

jsonargparse reports a bad value deep in a tier stack as a nested block (every Union it
tried, every value it was given, often 40+ lines). ``one_line_parser_error`` reduces such a
block to its innermost message and the path of keys and classes leading to it, and adds the
nearest known names: ``Cahce`` gets ``Cache``, ``slotss`` gets ``slots``, ``--trainer.max_stepz``
gets ``--trainer.max_steps``. ``locate`` then finds the ``--config`` file and line that holds
the offending name. Nothing here imports torch or Lightning.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

# Lines of a jsonargparse error block that only describe its structure.
_STRUCTURE = re.compile(
    r"^(- )?(Does not validate against any of the Union subtypes|Subtypes: |Errors:|"
    r"Expected a <class 'NoneType'>|Given value type: |Given value: |$)"
)
_KEY = re.compile(r'^(?:- )?Parser key "([^"]+)":?$')
_CLASS = re.compile(r"^(?:- )?Problem with given class_path '([^']+)':?$")
_OPTION = re.compile(r"^Option '([^']+)' is not accepted")
_NO_ATTRIBUTE = re.compile(r"^module '([^']+)' has no attribute '([^']+)'")
_NOT_IMPORTABLE = re.compile(r"^Expected a dot import path string: (\S+)")
_KEY_NOT_EXPECTED = re.compile(r"""^Key ["']([^"']+)["'] is not expected""")
_UNRECOGNIZED = "unrecognized arguments: "

# Modules whose public classes are the names a config may give without a module path.
SHORT_NAME_MODULES = ("tiered.tiers", "tiered.controllers", "tiered.tasks")


class ConfigError(Exception):
    """A config or command-line error, worded as the one line to print.

    Args:
        message: the line, starting with ``error:``.
        token: the offending name as written in a config (``Cahce``, ``slotss``), used to
            find the file and line that hold it; None when there is none.
    """

    def __init__(self, message: str, token: str | None = None) -> None:
        super().__init__(message)
        self.token = token


@dataclass(frozen=True)
class Reduced:
    """The innermost message of a jsonargparse error block and what leads to it.

    Attributes:
        message: the innermost line, e.g. ``Option 'slotss' is not accepted``.
        keys: the config keys above it, outermost first, e.g. ``("model", "controller")``.
        classes: the classes above it, outermost first.
    """

    message: str
    keys: tuple[str, ...]
    classes: tuple[str, ...]


def nearest(name: str, known: Iterable[str], n: int = 3) -> str:
    """``" (did you mean 'Cache'?)"`` for the known names closest to ``name``, else ``""``."""
    options = sorted(set(known) - {name})
    matches = difflib.get_close_matches(name, options, n=n, cutoff=0.6)
    if not matches:
        lowered = {option.lower(): option for option in options}
        matches = [lowered[m] for m in difflib.get_close_matches(name.lower(), lowered, n=n)]
    if not matches:
        return ""
    return f" (did you mean {' or '.join(repr(m) for m in matches)}?)"


def reduce_block(message: str) -> Reduced:
    """The deepest non-structural line of a (possibly nested) jsonargparse message, with
    the ``Parser key`` and ``class_path`` lines that enclose it."""
    stack: list[tuple[int, str, str]] = []  # (indent, "key" | "class", name)
    best: tuple[int, str, list[tuple[int, str, str]]] | None = None
    for raw in message.splitlines():
        text = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if key := _KEY.match(text):
            stack.append((indent, "key", key.group(1)))
        elif cls := _CLASS.match(text):
            stack.append((indent, "class", cls.group(1)))
        elif not _STRUCTURE.match(text) and (best is None or indent > best[0]):
            best = (indent, text.removeprefix("- "), list(stack))
    if best is None:
        return Reduced(message.strip().splitlines()[0] if message.strip() else message, (), ())
    _, text, context = best
    keys = tuple(name for _, kind, name in context if kind == "key")
    classes = tuple(name for _, kind, name in context if kind == "class")
    return Reduced(text, keys, classes)


def short_names() -> dict[str, str]:
    """Every public class a config may name without its module: short name -> import path."""
    names: dict[str, str] = {"TieredModule": "tiered.TieredModule"}
    for module_name in SHORT_NAME_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            if inspect.isclass(getattr(module, name, None)) and not name.endswith(
                ("State", "Output", "Aux", "Batch")
            ):
                names[name] = f"{module_name}.{name}"
    return names


def init_arguments(class_path: str) -> list[str]:
    """The ``__init__`` argument names of the class at ``class_path`` ([] if unknown),
    following ``**kwargs`` into the base classes as jsonargparse does."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for klass in getattr(cls, "__mro__", ()):
        if "__init__" not in vars(klass) or klass is object:
            continue
        try:
            parameters = inspect.signature(vars(klass)["__init__"]).parameters
        except (ValueError, TypeError):
            break
        kinds = {p.kind for p in parameters.values()}
        names += [
            p for p, v in parameters.items()
            if p != "self" and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL) and p not in names
        ]  # fmt: skip
        if inspect.Parameter.VAR_KEYWORD not in kinds:
            break
    return names


def _options(parser: Any) -> list[str]:
    return [s for action in getattr(parser, "_actions", ()) for s in action.option_strings]


def one_line_parser_error(message: str, parser: Any = None) -> ConfigError:
    """A jsonargparse error ``message`` as one line with the nearest known names."""
    if message.startswith(_UNRECOGNIZED):
        unknown = [a.split("=", 1)[0] for a in message[len(_UNRECOGNIZED):].split() if
                   a.startswith("-")]  # fmt: skip
        hints = "".join(nearest(a, _options(parser)) for a in unknown[:1])
        return ConfigError(f"error: unrecognized arguments: {' '.join(unknown) or message}"
                           f"{hints}", unknown[0].lstrip("-") if unknown else None)  # fmt: skip
    reduced = reduce_block(message)
    where = ".init_args.".join(reduced.keys)
    owner = reduced.classes[-1] if reduced.classes else None
    text, token, hint = reduced.message, None, ""
    if match := _OPTION.match(text):
        token = match.group(1)
        accepted = init_arguments(owner) if owner else []
        hint = nearest(token, accepted)
        if accepted:
            hint += f"; {owner.rpartition('.')[2]} accepts {', '.join(accepted)}"
    elif match := _NO_ATTRIBUTE.match(text):
        module_name, token = match.groups()
        try:
            known = getattr(importlib.import_module(module_name), "__all__", ())
        except ImportError:
            known = ()
        hint = nearest(token, known)
        token = f"{module_name}.{token}"
        text = f"no class {token}"
    elif match := _NOT_IMPORTABLE.match(text):
        token = match.group(1)
        known = short_names()
        hint = nearest(token, [*known, *known.values()])
        text = f"no class named {token!r}"
    elif match := _KEY_NOT_EXPECTED.match(text):
        token = match.group(1).rpartition(".")[2]
        hint = nearest(match.group(1), _options(parser) and [o.lstrip("-") for o in
                                                            _options(parser)])  # fmt: skip
    context = f"{where}: " if where else ""
    if owner and not text.startswith("no class"):
        context += f"{owner}: "
    return ConfigError(f"error: {context}{text}{hint}", token)


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are one line naming the command, the argument and
    the value (no usage block before it; ``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (`{self.prog} --help` shows the usage)\n")


def config_files(args: Sequence[str]) -> list[str]:
    """The files given to ``--config`` / ``-c`` in ``args``, in order."""
    files = [b for a, b in itertools.pairwise(args) if a in ("--config", "-c")]
    return files + [a.split("=", 1)[1] for a in args if a.startswith("--config=")]


def locate(token: str, args: Sequence[str]) -> str:
    """``" (in FILE line N)"`` for the first ``--config`` file in ``args`` whose text holds
    ``token`` as a word, else ``""``."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(token)}(?!\w)")
    for name in config_files(args):
        try:
            lines = Path(name).read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for number, line in enumerate(lines, start=1):
            if pattern.search(line.split("#", 1)[0]):
                return f" (in {name} line {number})"
    return ""


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s ``__cause__`` chain."""
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    return error


def quiet_lightning() -> None:
    """Silence what a user cannot act on: Lightning's tips advertising other products, its
    note on the model summary callback, and the ``LeafSpec`` deprecation warning that
    Lightning's own pytree code triggers in torch.

    Call before Lightning is imported or after; the filters sit on the loggers Lightning's
    ``rank_zero_info`` writes to, which ``logging`` creates on first request either way.
    """
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(f is _no_tips for f in logger.filters):
            logger.addFilter(_no_tips)


RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


# Lightning's advertisements, and its note that the model summary callback tiered adds
# replaces its own (the table is printed either way).
_UNACTIONABLE = ("💡 Tip", "Trainer already configured with model summary callbacks")


def _no_tips(record: Any) -> bool:
    """False for the messages in ``_UNACTIONABLE``."""
    return not str(record.msg).startswith(_UNACTIONABLE)
