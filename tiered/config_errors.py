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
_NO_ATTRIBUTE = re.compile(r"module '([\w.]+)' has no attribute '(\w+)'")
_NOT_IMPORTABLE = re.compile(r"Expected a dot import path string: (\S+)")
_NOT_ACCEPTED = re.compile(r"^Subcommand '(\w+)' does not accept option '([^']+)'")
_UNRECOGNIZED = "unrecognized arguments: "


class ConfigError(Exception):
    """A config or command-line error, worded as the one line to print.

    Args:
        message: the line, starting with ``error:``.
        token: the offending name as written in a config (``Cahce``, ``slotss``), used to
            find the file and line that hold it; None when there is none.
        owner: the class whose arguments hold ``token`` (``tiered.tiers.Cache``), if known:
            the line searched for starts at that class's entry.
    """

    def __init__(self, message: str, token: str | None = None, owner: str | None = None) -> None:
        super().__init__(message)
        self.token = token
        self.owner = owner


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
    the ``Parser key`` and ``class_path`` lines that enclose it. Where several types were
    allowed, their deepest lines are siblings: they are joined, with the value given."""
    stack: list[tuple[int, str, str]] = []  # (indent, "key" | "class", name)
    leaves: list[tuple[int, str, tuple[tuple[int, str, str], ...]]] = []
    given: dict[tuple[tuple[int, str, str], ...], str] = {}
    for raw in message.splitlines():
        text = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if key := _KEY.match(text):
            stack.append((indent, "key", key.group(1)))
        elif cls := _CLASS.match(text):
            stack.append((indent, "class", cls.group(1)))
        elif text.startswith("Given value: "):
            given.setdefault(tuple(stack), text.removeprefix("Given value: "))
        elif not _STRUCTURE.match(text):
            leaves.append((indent, text.removeprefix("- "), tuple(stack)))
    if not leaves:
        return Reduced(message.strip().splitlines()[0] if message.strip() else message, (), ())
    deepest = max(indent for indent, _, _ in leaves)
    _, text, context = next(leaf for leaf in leaves if leaf[0] == deepest)
    siblings = [t for i, t, c in leaves if i == deepest and c == context and
                t != "Expected a <class 'NoneType'>"]  # fmt: skip
    if len(siblings) > 1:
        text = "; ".join(siblings)
        if context in given:
            value = given[context]
            text += f"; got {value if len(value) <= 80 else value[:77] + '...'}"
    keys = tuple(name for _, kind, name in context if kind == "key")
    classes = tuple(name for _, kind, name in context if kind == "class")
    return Reduced(text, keys, classes)


def short_names() -> dict[str, str]:
    """Every public class a config may name without its module: short name -> import path
    (``tiered tiers`` lists the same classes)."""
    from tiered.describe import class_path, public_classes

    names = {"TieredModule": "tiered.TieredModule"}
    for classes in public_classes().values():
        names.update({cls.__name__: class_path(cls) for cls in classes})
    return names


def init_arguments(class_path: str) -> list[str]:
    """The ``__init__`` argument names of the class at ``class_path`` ([] if unknown),
    following ``**kwargs`` into the base classes as jsonargparse does."""
    from tiered.describe import arguments

    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return []
    return [arg.name for arg in arguments(cls)] if inspect.isclass(cls) else []


def _options(parser: Any) -> list[str]:
    return [s for action in getattr(parser, "_actions", ()) for s in action.option_strings]


def one_line_parser_error(message: str, parser: Any = None) -> ConfigError:
    """A jsonargparse error ``message`` as one line with the nearest known names."""
    if message.startswith(_UNRECOGNIZED):
        rest = message[len(_UNRECOGNIZED) :]
        unknown = [a.split("=", 1)[0] for a in rest.split() if a.startswith("-")]
        hints = "".join(nearest(a, _options(parser)) for a in unknown[:1])
        return ConfigError(f"error: unrecognized arguments: {' '.join(unknown) or rest}{hints}",
                           unknown[0].lstrip("-") if unknown else None)  # fmt: skip
    if match := _NOT_ACCEPTED.match(message):
        key = match.group(2)
        known = [o.removeprefix("--") for o in _options(parser) if o.startswith("--")]
        return ConfigError(f"error: {match.group(1)} does not accept {key!r}"
                           f"{nearest(key, known)}", key.rpartition(".")[2])  # fmt: skip
    reduced = reduce_block(message)
    where = ".init_args.".join(reduced.keys)
    owner = reduced.classes[-1] if reduced.classes else None
    text, token, hint = reduced.message, None, ""
    if match := _OPTION.match(text):
        token = match.group(1).split(".")[0]  # 'optimzer.init_args.lr': the first key
        accepted = init_arguments(owner) if owner else []
        hint = nearest(token, accepted)
        text = f"Option {token!r} is not accepted"
        if accepted:
            hint += f"; {owner.rpartition('.')[2]} accepts {', '.join(accepted)}"
    elif match := _NO_ATTRIBUTE.search(text):
        module_name, token = match.groups()
        try:
            known = getattr(importlib.import_module(module_name), "__all__", None)
            known = known or [n for n in dir(importlib.import_module(module_name)) if
                              n[:1].isupper()]  # fmt: skip
        except ImportError:
            known = []
        hint = nearest(token, known)
        token = f"{module_name}.{token}"
        text = f"no class {token}"
    elif match := _NOT_IMPORTABLE.search(text):
        token = match.group(1)
        known = short_names()
        hint = nearest(token, [*known, *known.values()])
        text = f"no class named {token!r}"
    context = f"{where}: " if where else ""
    if owner and not text.startswith("no class"):
        context += f"{owner}: "
    return ConfigError(f"error: {context}{text}{hint}", token, owner)


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are one line naming the command, the argument and
    the value (no usage block before it; ``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (`{self.prog} --help` shows the usage)\n")


def config_files(args: Sequence[str]) -> list[str]:
    """The files given to ``--config`` / ``-c`` in ``args``, in order."""
    files = [b for a, b in itertools.pairwise(args) if a in ("--config", "-c")]
    return files + [a.split("=", 1)[1] for a in args if a.startswith("--config=")]


def locate(token: str, args: Sequence[str], owner: str | None = None) -> str:
    """``" (in FILE line N)"`` for the first ``--config`` file in ``args`` whose text holds
    ``token`` as a word (after the first line naming ``owner``'s class, when it has one),
    else ``""``."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(token)}(?!\w)")
    owners = [re.compile(rf"(?<![\w]){re.escape(name)}(?!\w)") for name in
              ([owner, owner.rpartition(".")[2]] if owner else [])]  # fmt: skip
    for name in config_files(args):
        try:
            lines = Path(name).read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        code = [line.split("#", 1)[0] for line in lines]
        start = next((i for i, line in enumerate(code) if any(o.search(line) for o in owners)), 0)
        for number in (*range(start, len(code)), *range(start)):
            if pattern.search(code[number]):
                return f" (in {name} line {number + 1})"
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
