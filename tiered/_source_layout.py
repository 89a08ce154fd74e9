"""Make ``tiered.tiers`` and ``tiered.controllers`` importable from a source checkout.

Installed (wheel or editable), setuptools maps the top-level folders ``tiers/`` and
``controllers/`` into the ``tiered`` namespace. When Python instead finds ``tiered/`` on
``sys.path`` directly (running from the repository root without an install, or with a
wheel installed but the checkout first on the path), this finder supplies the same mapping.
It only acts when the folder above ``tiered/`` is this project's checkout.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

SUBPACKAGES = {"tiered.tiers": "tiers", "tiered.controllers": "controllers"}


class SourceLayoutFinder(importlib.abc.MetaPathFinder):
    """Finds the mapped subpackages (and their modules) under a checkout root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        for package, folder in SUBPACKAGES.items():
            if fullname == package:
                location = self.root / folder
                return importlib.util.spec_from_file_location(
                    fullname,
                    location / "__init__.py",
                    submodule_search_locations=[str(location)],
                )
        return None


def _is_checkout(root: Path) -> bool:
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return False
    if not all((root / folder / "__init__.py").is_file() for folder in SUBPACKAGES.values()):
        return False
    return 'name = "tiered"' in pyproject.read_text(encoding="utf-8")


def install(package_dir: Path) -> None:
    """Register the finder if ``package_dir`` (the ``tiered/`` folder) sits in a checkout."""
    root = package_dir.resolve().parent
    if not _is_checkout(root):
        return
    if any(isinstance(finder, SourceLayoutFinder) for finder in sys.meta_path):
        return
    # Ahead of the default PathFinder, which would look for tiered/tiers/ and fail.
    sys.meta_path.insert(0, SourceLayoutFinder(root))
