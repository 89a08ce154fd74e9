"""``tiered tiers``: every tier, controller and task with its arguments, from the docstrings.

    tiered tiers                 # all of them
    tiered tiers RAM Cache       # just these
    tiered tiers RAM --yaml      # a YAML entry with every default, to paste into a stack

jsonargparse's ``--model.help CLASS`` cannot reach a tier inside the controller's ``tiers``
list, so this command reads the same sources LightningCLI does (the ``__init__`` signature
and its Google-style ``Args:`` section) and prints them. The classes are found by walking
``tiered.tiers``, ``tiered.controllers`` and ``tiered.tasks``, so a new class appears here
without a list to keep up.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tiered.config_errors import OneLineArgumentParser, nearest

# (heading, module, base class path): the public classes of ``module`` that subclass the base.
SECTIONS = (
    ("tiers", "tiered.tiers", "tiered.tier.Tier"),
    ("controllers", "tiered.controllers", "tiered.controllers.base.Controller"),
    ("tasks", "tiered.tasks", "tiered.tasks.base.SequenceTask"),
)
# Filled in by the controller from the task (linked in the CLI) or from the stack.
LINKED = {"input_size", "output_size"}


@dataclass(frozen=True)
class Argument:
    """One constructor argument as the CLI sees it.

    Attributes:
        name: the argument's name in ``init_args``.
        type: its annotation as written, e.g. ``int | None``.
        default: its default as Python text, or None when it is required.
        doc: its description from the ``Args:`` section, on one line ("" if undocumented).
        value: the default itself (``inspect.Parameter.empty`` when it is required).
    """

    name: str
    type: str
    default: str | None
    doc: str
    value: Any = inspect.Parameter.empty


def _load(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def public_classes() -> dict[str, list[type]]:
    """Heading -> the public (exported, non-abstract) classes of that section."""
    found: dict[str, list[type]] = {}
    for heading, module_name, base_path in SECTIONS:
        module, base = importlib.import_module(module_name), _load(base_path)
        found[heading] = [
            value for name in module.__all__
            if inspect.isclass(value := getattr(module, name))
            and issubclass(value, base) and value is not base and not inspect.isabstract(value)
        ]  # fmt: skip
    return found


def summary(cls: type) -> str:
    """The first paragraph of ``cls``'s docstring, on one line."""
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def arguments(cls: type) -> list[Argument]:
    """``cls``'s constructor arguments with types, defaults and docs, following ``**kwargs``
    into base classes (as jsonargparse does)."""
    import docstring_parser

    found: list[Argument] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        init = vars(klass)["__init__"]
        docs = {
            p.arg_name: " ".join(p.description.split())
            for source in (init, klass)
            for p in docstring_parser.parse(inspect.getdoc(source) or "").params
            if p.description
        }
        parameters = inspect.signature(init).parameters
        for name, p in parameters.items():
            if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            if any(a.name == name for a in found):
                continue
            annotation = p.annotation
            type_text = (
                "" if annotation is p.empty
                else annotation if isinstance(annotation, str)
                else inspect.formatannotation(annotation)
            )  # fmt: skip
            default = None if p.default is p.empty else repr(p.default)
            found.append(Argument(name, type_text, default, docs.get(name, ""), p.default))
        if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            break
    return found


def _is_controller(cls: type) -> bool:
    return issubclass(cls, _load(SECTIONS[1][2]))


def class_path(cls: type) -> str:
    """The import path a config names ``cls`` by: its public module's, e.g. tiered.tiers.RAM."""
    for _, module_name, _ in SECTIONS:
        if getattr(importlib.import_module(module_name), cls.__name__, None) is cls:
            return f"{module_name}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def describe(cls: type, width: int = 100) -> str:
    """A class's entry: its path, summary, then each argument with type, default and doc."""
    lines = [f"{cls.__name__} ({class_path(cls)})"]
    lines += textwrap.wrap(summary(cls), width, initial_indent="  ", subsequent_indent="  ")
    for arg in arguments(cls):
        head = f"    {arg.name}: {arg.type or 'any'}"
        head += " (required)" if arg.default is None else f" = {arg.default}"
        if arg.name in LINKED and _is_controller(cls):
            head += " (linked from the task by `tiered fit`)"
        lines.append(head)
        lines += textwrap.wrap(arg.doc, width, initial_indent=" " * 8, subsequent_indent=" " * 8)
    return "\n".join(lines)


def yaml_entry(cls: type) -> str:
    """A ``class_path`` / ``init_args`` entry with every default, for a stack's YAML."""
    import yaml

    init_args: dict[str, Any] = {}
    for arg in arguments(cls):
        if arg.name in LINKED and _is_controller(cls):
            continue
        if arg.value is inspect.Parameter.empty:
            init_args[arg.name] = None  # required: fill in
        else:
            init_args[arg.name] = list(arg.value) if isinstance(arg.value, tuple) else arg.value
    return yaml.safe_dump(
        [{"class_path": class_path(cls), "init_args": init_args}], sort_keys=False
    ).rstrip()


def main(argv: Sequence[str]) -> int:
    parser = OneLineArgumentParser(
        prog="tiered tiers",
        description="List every tier, controller and task with its arguments (types, "
        "defaults and docs, from the docstrings), or only the classes named.",
    )
    parser.add_argument("names", nargs="*", help="class names, e.g. RAM Cache (default: all)")
    parser.add_argument("--yaml", action="store_true", help="print YAML entries with defaults")
    args = parser.parse_args(list(argv))
    sections = public_classes()
    by_name = {cls.__name__: cls for classes in sections.values() for cls in classes}
    lowered = {name.lower(): cls for name, cls in by_name.items()}
    chosen: list[type] = []
    for name in args.names:
        cls = by_name.get(name) or lowered.get(name.lower())
        if cls is None:
            known = ", ".join(by_name)
            print(f"error: tiered tiers: no class named {name!r}{nearest(name, by_name)}; "
                  f"known: {known}", file=sys.stderr)  # fmt: skip
            return 2
        chosen.append(cls)
    if args.yaml:
        print("\n".join(yaml_entry(cls) for cls in chosen or by_name.values()))
        return 0
    if chosen:
        print("\n\n".join(describe(cls) for cls in chosen))
        return 0
    blocks = []
    for heading, classes in sections.items():
        blocks.append(f"== {heading} ==\n\n" + "\n\n".join(describe(cls) for cls in classes))
    print("\n\n".join(blocks))
    print("\n`tiered tiers NAME --yaml` prints an entry to paste into a stack's YAML.")
    return 0
