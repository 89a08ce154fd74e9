"""The argument docs reach users: through ``help(...)`` and through the API reference.

Every public tier, controller and task class (and ``TieredModule``) documents each
``__init__`` argument in a Google-style ``Args:`` section; ``help(cls)`` (pydoc) shows that
section, and the strict mkdocs build (mkdocs.yml, the site ``make docs`` builds) renders it
into the reference pages. The build test is skipped where mkdocs is not installed (the
``docs`` extra; ``make install`` includes it).
"""

from __future__ import annotations

import html
import importlib.util
import inspect
import pydoc
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tiered
import tiered.controllers
import tiered.tasks
import tiered.tiers

ROOT = Path(__file__).resolve().parents[2]

# The classes a user builds, by the package that exports them.
PUBLIC_PACKAGES = {
    "tiered.tiers": tiered.tiers,
    "tiered.controllers": tiered.controllers,
    "tiered.tasks": tiered.tasks,
    "tiered": tiered,
}


def _public_classes() -> list[type]:
    """Classes in each package's ``__all__`` that take constructor arguments of their own
    (states and other NamedTuples excluded)."""
    found = []
    for package in PUBLIC_PACKAGES.values():
        for name in package.__all__:
            obj = getattr(package, name)
            if not inspect.isclass(obj) or issubclass(obj, tuple):
                continue
            if "__init__" in vars(obj) and _init_parameters(obj):
                found.append(obj)
    return found


def _init_parameters(cls: type) -> list[str]:
    """``__init__``'s parameters as a docstring names them (``*args``, ``**kwargs``)."""
    names = []
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        prefix = {
            inspect.Parameter.VAR_POSITIONAL: "*",
            inspect.Parameter.VAR_KEYWORD: "**",
        }.get(parameter.kind, "")
        names.append(prefix + parameter.name)
    return names


def documented_args(docstring: str | None) -> dict[str, str]:
    """Argument name -> first line of its description, from a Google ``Args:`` section."""
    lines = inspect.cleandoc(docstring or "").splitlines()
    args: dict[str, str] = {}
    inside, indent = False, 0
    for line in lines:
        if not inside:
            inside = line.strip() == "Args:"
            indent = len(line) - len(line.lstrip())
            continue
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break  # the next section
        entry = re.match(r"\s*(\*{0,2}\w+)(?: \([^)]*\))?: (.+)", line)
        if entry and len(line) - len(line.lstrip()) == indent + 4:
            args[entry.group(1)] = entry.group(2).strip()
    return args


def _class_args(cls: type) -> dict[str, str]:
    return documented_args(cls.__doc__) or documented_args(cls.__init__.__doc__)


PUBLIC_CLASSES = _public_classes()


def test_public_classes_are_found() -> None:
    names = {cls.__name__ for cls in PUBLIC_CLASSES}
    expected = {"Register", "Cache", "RAM", "ROM", "Disk", "LSTMController", "Copy"}
    assert expected | {"TieredModule", "SequenceTask"} <= names


def test_documented_args_reads_a_google_section() -> None:
    doc = """Summary.

    Args:
        slots: number of slots,
            continued.
        width (int): the width.
        **kwargs: the rest.

    Returns:
        value: not an argument.
    """
    assert documented_args(doc) == {
        "slots": "number of slots,",
        "width": "the width.",
        "**kwargs": "the rest.",
    }


@pytest.mark.parametrize("cls", PUBLIC_CLASSES, ids=lambda cls: cls.__qualname__)
def test_every_init_argument_is_documented(cls: type) -> None:
    documented = _class_args(cls)
    missing = [name for name in _init_parameters(cls) if name not in documented]
    assert not missing, f"{cls.__qualname__}: no Args entry for {missing}"
    unknown = sorted(set(documented) - set(_init_parameters(cls)))
    assert not unknown, f"{cls.__qualname__}: Args documents {unknown}, not in __init__"


@pytest.mark.parametrize("cls", PUBLIC_CLASSES, ids=lambda cls: cls.__qualname__)
def test_help_shows_each_argument_and_its_doc_line(cls: type) -> None:
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for name, first_line in _class_args(cls).items():
        assert f"{name}: {first_line}" in text, f"help({cls.__qualname__}) lacks {name!r}"


def _page_text(path: Path) -> str:
    """A built page's visible text, with tags and all whitespace removed (an inline tag
    such as ``<code>`` may or may not sit beside a space)."""
    text = re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8"))
    return re.sub(r"\s+", "", html.unescape(text))


def _plain(docstring_text: str) -> str:
    """A docstring line compared like ``_page_text``: no code markers, no whitespace."""
    return re.sub(r"\s+", "", docstring_text.replace("`", ""))


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None
    or importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason="mkdocs and mkdocstrings[python] are not installed (the docs extra)",
)
def test_strict_docs_build_renders_the_argument_docs(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", site],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    pages = {
        "tiered.tiers": "api/tiers/index.html",
        "tiered.controllers": "api/controllers/index.html",
        "tiered.tasks": "api/tasks/index.html",
        "tiered": "api/tiered/index.html",
    }
    for package_name, page in pages.items():
        text = _page_text(site / page)
        package = PUBLIC_PACKAGES[package_name]
        for cls in PUBLIC_CLASSES:
            if cls.__name__ not in package.__all__:
                continue
            # The heading (full path), then the signature.
            heading = re.escape(f"{package_name}.{cls.__name__}") + r"\W*" + re.escape(cls.__name__)
            assert re.search(heading + r"\(", text), f"{page} lacks {cls.__name__}'s entry"
            for name, first_line in _class_args(cls).items():
                assert _plain(first_line) in text, f"{page}: {cls.__name__}.{name} not shown"


def _repository_links():
    spec = importlib.util.spec_from_file_location(
        "repository_links", ROOT / "docs" / "tools" / "repository_links.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_links_out_of_docs_are_checked_and_rewritten(caplog: pytest.LogCaptureFixture) -> None:
    links = _repository_links()
    docs = ROOT / "docs"
    page = (
        "[experiments/README.md](../experiments/README.md), [the RAM](ram.md#sparse), "
        "[a table](../experiments/README.md#stacks), [gone](../experiments/no_such_file.md)\n"
        "```\n[kept](../experiments/README.md)\n```\n"
    )
    plain = links.rewrite_links(page, docs, ROOT, "quickstart.md", None)
    assert plain.startswith("`experiments/README.md`, [the RAM](ram.md#sparse), ")
    assert "a table (`experiments/README.md`)" in plain
    assert "[gone](../experiments/no_such_file.md)" in plain  # left for mkdocs to report
    assert "no_such_file.md" in caplog.text
    assert "[kept](../experiments/README.md)" in plain  # code is not touched
    url = links.rewrite_links(page, docs, ROOT, "quickstart.md", "https://example.org/t/")
    assert "[a table](https://example.org/t/blob/main/experiments/README.md#stacks)" in url
