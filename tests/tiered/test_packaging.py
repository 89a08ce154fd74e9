"""The package layout: tiered.tiers and tiered.controllers import from anywhere and from a wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = "import tiered, tiered.tiers, tiered.controllers; print(tiered.tiers.__file__)"


def _python(code: str, cwd: Path, env_path: str | None = None) -> str:
    env = None
    if env_path is not None:
        import os

        env = dict(os.environ, PYTHONPATH=env_path)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_subpackages_import_from_the_repository_root():
    location = _python(PROBE, ROOT)
    assert Path(location) == ROOT / "tiers" / "__init__.py"


def test_subpackages_import_from_another_directory(tmp_path):
    assert Path(_python(PROBE, tmp_path)).name == "__init__.py"


def test_wheel_puts_everything_under_the_tiered_namespace(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("tiered-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"tiered", wheel.name.split("-py")[0] + ".dist-info"}
    for expected in ("tiered/py.typed", "tiered/tiers/ram.py", "tiered/controllers/lstm.py"):
        assert expected in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel installs by unpacking
    location = _python(PROBE, tmp_path, env_path=str(site))
    assert Path(location) == site / "tiered" / "tiers" / "__init__.py"
