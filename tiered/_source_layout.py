"""Make ``tiered.tiers`` and ``tiered.controllers`` importable from a source checkout.

Installed (wheel or editable), setuptools maps the top-level folders ``tiers/`` and
``controllers/`` into the ``tiered`` namespace (``package_dir`` in setup.py). When Python
instead finds ``tiered/`` on ``sys.path`` directly, this finder supplies the same mapping.
That happens with no install at all (experiments/benchmarks/gpu_check.sh puts the checkout on
``PYTHONPATH`` on a GPU machine), and with a regular (non-editable) install when the checkout
comes first on the path (``python -m pytest`` from the repository root). It only acts when the
folder above ``tiered/`` is this project's checkout. tests/tiered/test_packaging.py checks
both cases in fresh environments.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

# The same mapping as PACKAGE_DIR in setup.py.
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
