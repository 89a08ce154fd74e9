"""Griffe extension: document ``tiers/`` and ``controllers/`` as ``tiered.tiers`` and
``tiered.controllers``.

setuptools maps those top-level folders into the ``tiered`` namespace (``package_dir`` in
setup.py); griffe reads sources statically and only finds ``tiered/``, so ``tiered.tiers.RAM``
would not resolve. When griffe has loaded the ``tiered`` package, this loads each mapped folder
and hangs it under ``tiered`` by its import name. The mapping is read from
``tiered/_source_layout.py`` (the one the import finder uses) without importing ``tiered``.
mkdocs.yml names this file in the mkdocstrings handler's ``extensions``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import griffe

ROOT = Path(__file__).resolve().parents[2]


def _subpackages() -> dict[str, str]:
    """Import name -> folder, e.g. ``{"tiered.tiers": "tiers"}``, as the finder maps them."""
    spec = importlib.util.spec_from_file_location(
        "_tiered_source_layout", ROOT / "tiered" / "_source_layout.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.SUBPACKAGES)


class SourceLayout(griffe.Extension):
    """Attach the mapped subpackages to the ``tiered`` package griffe loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.path != "tiered":
            return
        for import_name, folder in _subpackages().items():
            name = import_name.rsplit(".", 1)[1]
            if name in pkg.members:
                continue
            loaded = loader.load(ROOT / folder)
            # Loaded under its folder's name as a top-level package: move it under `tiered`.
            loader.modules_collection.del_member(loaded.name)
            pkg.set_member(name, loaded)
            loaded.name = name
