"""Which packages the wheel holds; everything else about the project is in pyproject.toml.

``tiers/`` and ``controllers/`` live at the top of the repository but install inside the
``tiered`` namespace, as ``tiered.tiers`` and ``tiered.controllers``: nothing called ``tiers``
or ``controllers`` lands in site-packages. Every package (a folder with ``__init__.py``) under
the three source folders is found here, so a new subpackage needs no edit.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent

# Import name -> source folder, relative to this file.
PACKAGE_DIR = {"tiered": "tiered", "tiered.tiers": "tiers", "tiered.controllers": "controllers"}

setup(
    package_dir=PACKAGE_DIR,
    packages=[
        name
        for package, folder in PACKAGE_DIR.items()
        for name in (
            package,
            *(f"{package}.{sub}" for sub in find_packages(where=str(HERE / folder))),
        )
    ],
)
