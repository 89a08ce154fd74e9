"""What a user gets: the wheel, installed into a fresh environment, and a bare checkout.

The wheel is built from a copy of the checkout and installed into a fresh virtual environment
that has no editable install and no checkout on its path; there, every module of the package
must import and the console script must run. A second fresh environment has no ``tiered`` at
all and gets the checkout through ``PYTHONPATH``, as experiments/benchmarks/gpu_check.sh does
on a GPU machine: ``tiered._source_layout`` must map ``tiered.tiers`` and
``tiered.controllers`` to the top-level folders.

The fresh environments get the dependencies (torch, Lightning, ...) offline from the
environment running the tests: a ``.pth`` file adds a folder of links to its site-packages,
minus anything called ``tiered``. A path line in a ``.pth`` file only extends ``sys.path``;
the ``.pth`` files of the folder it names (an editable install's finder among them) do not
run, and every test checks where its modules came from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"
# The source folders and the import names they install as (see setup.py).
SOURCE_ROOTS = {"tiered": "tiered", "tiers": "tiered.tiers", "controllers": "tiered.controllers"}
# Left out of the copy the wheel is built from: environments, build outputs, run folders.
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".whl",
    "runs",
    "lightning_logs",
)


def _env(**extra: str) -> dict[str, str]:
    """The current environment without PYTHONPATH or the user's site-packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "PYTHONNOUSERSITE": "1", **extra}


def _run(args: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in ``cwd``; fails the test, with its output, unless it exits 0."""
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result


@dataclass(frozen=True)
class FreshVenv:
    """A virtual environment made by ``python -m venv --without-pip``."""

    root: Path
    site: Path  # its site-packages

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def script(self, name: str) -> Path:
        return self.root / "bin" / name

    def probe(self, code: str, cwd: Path, **env: str) -> object:
        """Run ``code`` with this environment's python; returns what it printed, as JSON."""
        return json.loads(_run([self.python, "-c", code], cwd, **env).stdout)


def _fresh_venv(path: Path, dependencies: Path) -> FreshVenv:
    """A fresh environment at ``path`` whose ``sys.path`` ends with ``dependencies``."""
    _run([sys.executable, "-m", "venv", "--without-pip", path], path.parent)
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([path / "bin" / "python", "-c", code], path.parent).stdout.strip())
    (site / "test_dependencies.pth").write_text(f"{dependencies}\n")
    return FreshVenv(path, site)


def _is_tiered(name: str) -> bool:
    """An installed file of tiered itself: the package, its metadata, an editable finder."""
    return name == "tiered" or name.startswith(("tiered-", "tiered.", "__editable__"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("packaging")


@pytest.fixture(scope="module")
def workdir(scratch) -> Path:
    """The current folder of every subprocess: no checkout, nothing importable."""
    path = scratch / "work"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def dependencies(scratch) -> Path:
    """Links to everything in the test environment's site-packages except tiered."""
    folder = scratch / "dependencies"
    folder.mkdir()
    paths = sysconfig.get_paths()
    for site in dict.fromkeys(Path(paths[key]) for key in ("purelib", "platlib")):
        for entry in site.iterdir():
            link = folder / entry.name
            if not _is_tiered(entry.name) and not link.exists():
                link.symlink_to(entry)
    return folder


@pytest.fixture(scope="module")
def wheel(scratch) -> Path:
    """The wheel ``pip wheel`` builds from a clean copy of the checkout."""
    source = scratch / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES, symlinks=True)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation"]
    _run([*pip_wheel, "--quiet", "-w", scratch / "dist"], scratch)
    (built,) = (scratch / "dist").glob("tiered-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.fixture(scope="module")
def installed(scratch, wheel, dependencies) -> FreshVenv:
    """A fresh environment with the wheel installed (no dependencies: they come linked)."""
    venv = _fresh_venv(scratch / "venv-wheel", dependencies)
    pip = [sys.executable, "-m", "pip", "--python", venv.python, "--disable-pip-version-check"]
    _run([*pip, "install", "--quiet", "--no-deps", "--no-index", wheel], scratch)
    return venv


@pytest.fixture(scope="module")
def bare(scratch, dependencies) -> FreshVenv:
    """A fresh environment without tiered: only its dependencies."""
    return _fresh_venv(scratch / "venv-bare", dependencies)


def _inside(path: str | None, folder: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(folder.resolve())


# The wheel


def test_wheel_puts_everything_under_the_tiered_namespace(wheel, wheel_names):
    top_level = {name.split("/")[0] for name in wheel_names}
    assert top_level == {"tiered", wheel.name.split("-py")[0] + ".dist-info"}
    assert "tiered/py.typed" in wheel_names


def test_wheel_holds_every_module_of_the_checkout(wheel_names):
    """Every .py file under tiered/, tiers/ and controllers/, subpackages included."""
    expected = set()
    for folder, package in SOURCE_ROOTS.items():
        for path in (ROOT / folder).rglob("*.py"):
            relative = path.relative_to(ROOT / folder).as_posix()
            expected.add(f"{package.replace('.', '/')}/{relative}")
    assert expected - set(wheel_names) == set()
    for name in ("tiered/tiers/ram.py", "tiered/controllers/lstm.py", "tiered/tasks/copy.py"):
        assert name in wheel_names, name


def test_every_module_imports_from_the_installed_wheel(installed, wheel_names, workdir):
    modules = sorted(
        name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for name in wheel_names
        if name.endswith(".py")
    )
    assert {"tiered", "tiered.tasks", "tiered.sweeps.cli", "tiered.tiers.ram"} <= set(modules)
    code = (
        "import importlib, json, sys\n"
        f"names = {modules!r}\n"
        "print(json.dumps({n: importlib.import_module(n).__file__ for n in names}))"
    )
    files = installed.probe(code, workdir)
    assert isinstance(files, dict)
    outside = {name: file for name, file in files.items() if not _inside(file, installed.site)}
    assert outside == {}, f"imported from outside {installed.site}"


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")
def test_the_installed_wheel_builds_and_runs_the_link_kernels(installed, wheel_names, workdir,
                                                              scratch):  # fmt: skip
    # The C source ships in the wheel, and a user's first dense RAM step compiles it into
    # their cache folder (here a fresh one) and steps with it.
    assert "tiered/tiers/kernels/links.c" in wheel_names
    cache = scratch / "xdg-cache"
    code = (
        "import json, torch\n"
        "from tiered.tiers import link_kernels\n"
        "from tiered.controllers import LSTMController\n"
        "from tiered.tiers import RAM, Register\n"
        "c = LSTMController(3, 2, Register(5), [RAM(7, 4, read_heads=2, sparse=False)])\n"
        "c(torch.randn(2, 3, 3)).output.sum().backward()\n"
        "print(json.dumps([link_kernels.resolved_kernel(torch.device('cpu')),"
        " str(link_kernels.SOURCE)]))"
    )
    kernel, source = installed.probe(code, workdir, XDG_CACHE_HOME=str(cache))
    assert kernel == "c"
    assert _inside(source, installed.site)
    assert len(list((cache / "tiered" / "kernels").glob("links-*.so"))) == 1


def test_console_script_prints_a_config(installed, workdir):
    task = EXPERIMENTS / "tasks" / "copy.yaml"
    stack = EXPERIMENTS / "stacks" / "ram.yaml"
    fit = [installed.script("tiered"), "fit", "--config", task, "--config", stack]
    config = yaml.safe_load(_run([*fit, "--print_config"], workdir).stdout)
    assert config["data"]["class_path"] == "tiered.tasks.Copy"
    assert config["data"]["init_args"]["bits"] == 8
    controller = config["model"]["init_args"]["controller"]
    assert controller["class_path"] == "tiered.controllers.LSTMController"
    register, tiers = controller["init_args"]["register"], controller["init_args"]["tiers"]
    assert register["class_path"] == "tiered.tiers.Register"
    assert [tier["class_path"] for tier in tiers] == ["tiered.tiers.RAM"]
    assert not (workdir / "runs").exists()


def test_console_script_lists_a_sweep(installed, workdir, scratch):
    sweep = EXPERIMENTS / "sweeps" / "tier_ablation_copy.yaml"  # 4 stacks x 3 seeds
    out = scratch / "sweep"
    run = [installed.script("tiered"), "sweep", "run", sweep, "--dry-run", "--out", out]
    *lines, summary = _run(run, workdir).stdout.splitlines()
    assert summary == f"12 runs in {out}"
    runs = {name: (state, command) for name, state, command in (line.split("\t") for line in lines)}
    assert len(runs) == 12
    assert {state for state, _ in runs.values()} == {"pending"}
    assert all(command.startswith("tiered fit --config ") for _, command in runs.values())
    assert "config=ram,seed=2" in runs
    assert not out.exists()  # a dry run writes nothing


def test_console_script_rom_help(installed, workdir):
    text = _run([installed.script("tiered"), "rom", "--help"], workdir).stdout
    assert text.startswith("usage: tiered rom")
    assert "build" in text and "info" in text


# The checkout without an install (experiments/benchmarks/gpu_check.sh; pytest from the root)

CHECKOUT_PROBE = (
    "import json, tiered, tiered.tiers, tiered.tiers.ram, tiered.controllers, tiered.tasks,"
    " tiered.sweeps\n"
    "names = ['tiered', 'tiered.tiers', 'tiered.tiers.ram', 'tiered.controllers',"
    " 'tiered.tasks', 'tiered.sweeps']\n"
    "print(json.dumps({n: __import__('sys').modules[n].__file__ for n in names}))"
)
FIND_TIERED = (
    "import importlib.util, json; spec = importlib.util.find_spec('tiered');"
    " print(json.dumps(spec and spec.origin))"
)


@pytest.mark.parametrize("venv", ["bare", "installed"])
def test_checkout_on_pythonpath_supplies_every_subpackage(venv, request, workdir):
    """With the checkout on PYTHONPATH, tiered and its subpackages all come from it: in an
    environment without tiered, and ahead of an installed wheel."""
    fresh: FreshVenv = request.getfixturevalue(venv)
    if venv == "bare":  # the dependencies bring no tiered with them
        assert fresh.probe(FIND_TIERED, workdir) is None
    files = fresh.probe(CHECKOUT_PROBE, workdir, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    assert files == {
        "tiered": str(ROOT / "tiered" / "__init__.py"),
        "tiered.tiers": str(ROOT / "tiers" / "__init__.py"),
        "tiered.tiers.ram": str(ROOT / "tiers" / "ram.py"),
        "tiered.controllers": str(ROOT / "controllers" / "__init__.py"),
        "tiered.tasks": str(ROOT / "tiered" / "tasks" / "__init__.py"),
        "tiered.sweeps": str(ROOT / "tiered" / "sweeps" / "__init__.py"),
    }
