"""The commands that do not train: what they import, what they print, how they fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tiered.describe import arguments, public_classes
from tiered.describe import main as tiers_main
from tiered.rom_cli import main as rom_main
from tiered.storage import KVStore

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "lightning", "matplotlib", "ray", "faiss")


def imported_after(code: str, cwd: Path) -> set[str]:
    """The heavy top-level modules a fresh interpreter has imported after running ``code``."""
    probe = f"import sys\n{code}\nprint(sorted({{m.split('.')[0] for m in sys.modules}}))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=cwd
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return set(yaml.safe_load(result.stdout.strip().splitlines()[-1])) & set(HEAVY)


def test_help_version_rom_info_and_dry_runs_import_neither_torch_nor_lightning(tmp_path):
    KVStore.create(str(tmp_path / "store"), 4, 3).append(
        np.ones((5, 4), np.float32), np.ones((5, 3), np.float32)
    )
    sweep = ROOT / "experiments" / "sweeps" / "kv_lookup.yaml"
    for argv in (["--help"], ["--version"], ["rom", "info", str(tmp_path / "store")],
                 ["sweep", "run", "--dry-run", str(sweep)]):  # fmt: skip
        code = f"from tiered.cli import main\nmain({argv!r})"
        assert imported_after(code, tmp_path) == set(), argv
    assert imported_after("import tiered", tmp_path) == set()
    assert "torch" in imported_after("import tiered\ntiered.TieredModule", tmp_path)
    assert "torch" in imported_after("import tiered\ntiered.tiers.RAM", tmp_path)


def test_tiers_lists_every_tier_with_each_argument_type_default_and_doc(capsys):
    from tiered.tier import Tier

    assert tiers_main([]) == 0
    out = capsys.readouterr().out
    tiers = public_classes()["tiers"]
    assert {cls.__name__ for cls in tiers} == {"Register", "Cache", "RAM", "ROM", "Disk"}
    assert all(issubclass(cls, Tier) for cls in tiers)
    assert "LSTMController (tiered.controllers.LSTMController)" in out
    assert "Copy (tiered.tasks.Copy)" in out
    ram = arguments(public_classes()["tiers"][[c.__name__ for c in tiers].index("RAM")])
    by_name = {arg.name: arg for arg in ram}
    assert by_name["slots"].type == "int" and by_name["slots"].default is None
    assert by_name["k"].default == "8" and "SAM" in by_name["k"].doc
    assert "    k: int = 8" in out and "    slots: int (required)" in out
    for cls in tiers:  # every argument of every tier is documented
        assert all(arg.doc for arg in arguments(cls)), cls


def test_tiers_yaml_entry_round_trips_through_the_constructor(capsys):
    from tiered.tiers import Cache

    assert tiers_main(["cache", "--yaml"]) == 0  # case-insensitive
    (entry,) = yaml.safe_load(capsys.readouterr().out)
    assert entry["class_path"] == "tiered.tiers.Cache"
    args = {**entry["init_args"], "slots": 5, "width": 3}
    cache = Cache(**args)
    assert (cache.slots, cache.read_heads) == (5, 1)


def test_tiers_yaml_entries_carry_inherited_defaults(capsys):
    from tiered.tasks import Copy

    assert tiers_main(["Copy", "--yaml"]) == 0
    (entry,) = yaml.safe_load(capsys.readouterr().out)
    args = entry["init_args"]
    assert args["batch_size"] == 32 and args["seed"] == 0  # SequenceTask's, through **kwargs
    assert args["lengths"] == [1, 20]
    assert Copy(**args).batch_size == 32


def test_tiers_with_an_unknown_name_suggests_the_nearest(capsys):
    assert tiers_main(["Cahce"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: tiered tiers: no class named 'Cahce' (did you mean 'Cache'?)")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--keys", "{tmp}/missing.npy"], "--keys '{tmp}/missing.npy': no such file or folder"),
        (["--keys", "{tmp}/text.npy"], "--keys '{tmp}/text.npy': cannot be read as a .npy"),
        (["--keys", "{tmp}/flat.npy"], "--keys '{tmp}/flat.npy': must be 2-D"),
        (["--chunk-rows", "0"], "argument --chunk-rows: must be a positive integer, got '0'"),
        (["--dtype", "float7"], "argument --dtype: invalid choice: 'float7'"),
        (
            ["--values", "{tmp}/short.npy"],
            "--keys '{tmp}/keys.npy' has 6 rows but --values "
            "'{tmp}/short.npy' has 5; give one value row per key row",
        ),
        (["--out", "/proc/no/such/store"], "--out '/proc/no/such/store' cannot be written"),
    ],
    ids=["missing-file", "not-an-array", "not-2d", "chunk-rows", "dtype", "rows", "out"],
)
def test_rom_build_input_errors_are_one_line_and_leave_nothing(argv, expected, tmp_path, capsys):
    np.save(tmp_path / "keys.npy", np.ones((6, 4), np.float32))
    np.save(tmp_path / "values.npy", np.ones((6, 2), np.float32))
    np.save(tmp_path / "flat.npy", np.ones(6, np.float32))
    np.save(tmp_path / "short.npy", np.ones((5, 2), np.float32))
    (tmp_path / "text.npy").write_text("not an array")
    given = dict(zip(argv[::2], argv[1::2], strict=True))
    base = {"--keys": "{tmp}/keys.npy", "--values": "{tmp}/values.npy", "--out": "{tmp}/out"}
    merged = [part.format(tmp=tmp_path) for k, v in {**base, **given}.items() for part in (k, v)]
    before = sorted(tmp_path.iterdir())
    try:
        code = rom_main(["build", *merged])
    except SystemExit as exit_info:  # argparse exits
        code = exit_info.code
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and expected.format(tmp=tmp_path) in line, line
    assert sorted(tmp_path.iterdir()) == before  # no store, no leftovers
