"""The tiered command end to end: fit, saved config, checkpoint loading, bad configs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tiered import TieredModule
from tiered.cli import make_cli

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "experiments" / "stacks" / "cache_ram.yaml"
SMALL_COPY = [
    "--data", "Copy",
    "--data.init_args.lengths", "[1, 3]",
    "--data.init_args.eval_lengths", "[4, 5]",
    "--data.init_args.batch_size", "4",
    "--data.init_args.train_batches", "3",
    "--data.init_args.val_batches", "1",
    "--data.init_args.test_batches", "1",
]  # fmt: skip


def tiered_command() -> list[str]:
    script = shutil.which("tiered", path=str(Path(sys.executable).parent))
    assert script is not None, "the tiered console script is not installed"
    return [script]


def test_fit_end_to_end_through_the_console_script(tmp_path):
    result = subprocess.run(
        [*tiered_command(), "fit", "--config", str(STACK), *SMALL_COPY,
         "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
         "--trainer.log_every_n_steps", "1",
         "--seed_everything", "3", "--evaluate_after_fit", "true"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "runs" / "lightning_logs").iterdir()
    config = yaml.safe_load((run / "config.yaml").read_text())  # the resolved config
    assert config["data"]["class_path"] == "tiered.tasks.Copy"
    assert config["model"]["init_args"]["controller"]["init_args"]["register"]
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    controller = hparams["controller"]["init_args"]
    assert controller["input_size"] == 9 and controller["output_size"] == 8  # linked from data
    metrics = (run / "metrics.csv").read_text()
    for key in ("train/loss", "train/penalty/cache", "train/rewrite/ram", "val/bit_errors"):
        assert key in metrics
    assert "test/bit_errors" in result.stdout  # the tables printed after fit
    assert "val/bit_errors" in result.stdout
    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    model = TieredModule.load_from_checkpoint(checkpoint)
    assert [t.name for t in model.controller.tiers] == ["cache", "ram"]
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    torch.testing.assert_close(model.state_dict(), state)


def _write(tmp_path: Path, tier: dict) -> Path:
    config = {
        "model": {
            "class_path": "tiered.TieredModule",
            "init_args": {
                "controller": {
                    "class_path": "tiered.controllers.LSTMController",
                    "init_args": {
                        "register": {"class_path": "Register", "init_args": {"hidden_size": 8}},
                        "tiers": [tier],
                    },
                }
            },
        }
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        ({"class_path": "Cache", "init_args": {"slots": 4, "width": 4, "slotz": 3}}, "slotz"),
        ({"class_path": "Cache", "init_args": {"slots": "many", "width": 4}}, "slots"),
        ({"class_path": "Cache", "init_args": {"slots": 4}}, "width"),
        ({"class_path": "tiered.tiers.Nope", "init_args": {"slots": 4}}, "tiered.tiers.Nope"),
    ],
    ids=["unknown-argument", "wrong-type", "missing-required", "nonexistent-class"],
)
def test_bad_configs_fail_with_an_error_naming_the_field(tier, expected, tmp_path, capsys):
    path = _write(tmp_path, tier)
    with pytest.raises(SystemExit) as exit_info:
        make_cli(["fit", "--config", str(path), *SMALL_COPY])
    assert exit_info.value.code != 0
    message = capsys.readouterr().err
    assert expected in message, message[-2000:]


def test_a_value_out_of_range_names_the_tier_argument(tmp_path, capsys):
    path = _write(tmp_path, {"class_path": "RAM", "init_args": {"slots": 0, "width": 4}})
    with pytest.raises((SystemExit, ValueError)) as error:
        make_cli(["fit", "--config", str(path), *SMALL_COPY, "--trainer.logger", "false"])
    text = str(error.value) + capsys.readouterr().err
    assert "RAM: slots must be a positive integer (>= 1), got 0" in text


def test_top_level_help_names_the_tool_its_version_and_every_subcommand():
    result = subprocess.run(
        [*tiered_command(), "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    from lightning.pytorch.cli import LightningCLI

    import tiered
    from tiered.cli import COMMANDS, EXTRA_COMMANDS

    assert set(COMMANDS) == set(LightningCLI.subcommands()) | set(EXTRA_COMMANDS)
    assert f"tiered {tiered.__version__}" in out and "Lightning Trainer" not in out
    for name in ("fit", "validate", "test", "predict", *EXTRA_COMMANDS):
        (line,) = [line for line in out.splitlines() if line.strip().startswith(name + " ")]
        assert line.split(None, 1)[1] == COMMANDS[name]
    version = subprocess.run(
        [*tiered_command(), "--version"], capture_output=True, text=True, timeout=300
    )
    assert version.returncode == 0 and version.stdout.strip() == f"tiered {tiered.__version__}"
    bare = subprocess.run(tiered_command(), capture_output=True, text=True, timeout=300)
    assert bare.returncode == 2 and "commands:" in bare.stderr


def test_a_config_file_with_a_yaml_syntax_error_is_named_with_its_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_steps: [1, 2\nmodel: {}\n")
    result = subprocess.run(
        [*tiered_command(), "fit", "--config", str(STACK), "--config", str(broken)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()  # one line, naming the file and the line
    assert line.startswith(f"error: --config {broken}: YAML syntax error at line 3, column")
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == [broken]
