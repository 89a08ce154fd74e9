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
from tiered.cli import main, make_cli
from tiered.config_errors import ConfigError, nearest, reduce_block

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
    # The checkpoint callback's newest, and last.ckpt saved at the end of fit (same step).
    names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert names == ["epoch=1-step=6.ckpt", "last.ckpt"], names
    checkpoint = run / "checkpoints" / "last.ckpt"
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
        ({"class_path": "Cache", "init_args": {"slots": 4, "width": 4, "slotz": 3}},
         "Option 'slotz' is not accepted (did you mean 'slots'?)"),
        ({"class_path": "Cache", "init_args": {"slots": "many", "width": 4}}, "slots"),
        ({"class_path": "Cache", "init_args": {"slots": 4}}, "width"),
        ({"class_path": "tiered.tiers.Nope", "init_args": {"slots": 4}},
         "no class tiered.tiers.Nope"),
        ({"class_path": "Cahce", "init_args": {"slots": 4, "width": 4}},
         "no class named 'Cahce' (did you mean 'Cache'?)"),
        ({"class_path": "tiered.tiers.Cahce", "init_args": {"slots": 4, "width": 4}},
         "no class tiered.tiers.Cahce (did you mean 'Cache'?)"),
    ],
    ids=["unknown-argument", "wrong-type", "missing-required", "nonexistent-class",
         "misspelled-short-class", "misspelled-class-path"],
)  # fmt: skip
def test_bad_configs_fail_in_one_line_naming_the_field(tier, expected, tmp_path, capsys):
    path = _write(tmp_path, tier)
    assert main(["fit", "--config", str(path), *SMALL_COPY]) == 2
    captured = capsys.readouterr()
    error, hint = captured.err.strip().splitlines()  # the error first, then one hint line
    assert error.startswith("error: ") and expected in error, captured.err
    assert hint == "(`tiered fit --help` lists the options)"
    assert "usage:" not in captured.err and "Traceback" not in captured.err
    assert "Given value" not in error and "Union" not in error  # jsonargparse's nesting gone


def test_a_misspelled_argument_names_the_config_file_and_line(tmp_path, capsys):
    path = _write(tmp_path, {"class_path": "Cache", "init_args": {"slots": 4, "slotz": 3}})
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "slotz" in text)
    assert main(["fit", "--config", str(path), *SMALL_COPY]) == 2
    error = capsys.readouterr().err.splitlines()[0]
    assert error.endswith(f"(in {path} line {line})"), error
    assert "Cache accepts slots, width, read_heads" in error


def test_an_unknown_command_line_flag_gets_the_nearest_flags(capsys):
    assert main(["fit", "--config", str(STACK), *SMALL_COPY, "--trainer.max_stepz", "3"]) == 2
    error = capsys.readouterr().err.splitlines()[0]
    assert error.startswith("error: unrecognized arguments: --trainer.max_stepz")
    assert "did you mean '--trainer.max_steps'" in error
    assert main(["fti", "--config", str(STACK)]) == 2
    assert "unknown command 'fti' (did you mean 'fit'?)" in capsys.readouterr().err


def test_misspelled_keys_in_trainer_and_model_sections_get_the_nearest_and_the_line(
    tmp_path, capsys
):
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  max_stepz: 3\n")
    assert main(["fit", "--config", str(STACK), *SMALL_COPY, "--config", str(typo)]) == 2
    error = capsys.readouterr().err.splitlines()[0]
    assert error.startswith("error: fit does not accept 'trainer.max_stepz' (did you mean "
                            "'trainer.max_steps'")  # fmt: skip
    assert error.endswith(f"(in {typo} line 2)")
    bad = tmp_path / "optim.yaml"
    bad.write_text(STACK.read_text().replace("optimizer:", "optimzer:"))
    assert main(["fit", "--config", str(bad), *SMALL_COPY]) == 2
    error = capsys.readouterr().err.splitlines()[0]
    assert "Option 'optimzer' is not accepted (did you mean 'optimizer'?)" in error
    bad.write_text(STACK.read_text().replace("torch.optim.Adam", "torch.optim.Adamm"))
    assert main(["fit", "--config", str(bad), *SMALL_COPY]) == 2
    error = capsys.readouterr().err.splitlines()[0]
    assert error.startswith("error: model.init_args.optimizer: no class torch.optim.Adamm "
                            "(did you mean 'Adam'")  # fmt: skip


def test_the_line_named_is_the_one_under_the_class_the_error_is_about(tmp_path, capsys):
    both = {"slots": 4, "width": 4, "usage_decay": 0.5}  # valid for the Cache, not the RAM
    config = yaml.safe_load(_write(tmp_path, {"class_path": "Cache", "init_args": both})
                            .read_text())  # fmt: skip
    tiers = config["model"]["init_args"]["controller"]["init_args"]["tiers"]
    tiers.append({"class_path": "RAM", "init_args": dict(both)})
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config, default_flow_style=None))
    lines = path.read_text().splitlines()
    ram_line = next(i for i, text in enumerate(lines, 1) if "RAM" in text)
    assert main(["fit", "--config", str(path), *SMALL_COPY]) == 2
    error = capsys.readouterr().err.splitlines()[0]
    assert "tiered.tiers.RAM: Option 'usage_decay' is not accepted" in error
    line = int(error.rsplit(" line ", 1)[1].rstrip(")"))
    assert line >= ram_line and "usage_decay" in lines[line - 1]


def test_lightnings_own_checks_are_one_line_too(tmp_path, capsys):
    assert main(["fit", "--config", str(STACK), *SMALL_COPY, "--trainer.max_steps", "-5"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("error: `max_steps` must be a non-negative integer")
    assert "Traceback" not in err
    one = tmp_path / "one_callback.yaml"  # a single callback, not a list: Lightning takes it
    one.write_text("trainer:\n  callbacks:\n    class_path: "
                   "lightning.pytorch.callbacks.LearningRateMonitor\n")  # fmt: skip
    args = ["fit", "--config", str(STACK), *SMALL_COPY, "--config", str(one),
            "--trainer.logger", "false", "--trainer.max_steps", "1",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-2] == (
        "error: Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger."
    )


def test_a_value_out_of_range_is_one_line_without_a_traceback(tmp_path, capsys):
    path = _write(tmp_path, {"class_path": "RAM", "init_args": {"slots": 0, "width": 4}})
    args = ["fit", "--config", str(path), *SMALL_COPY, "--trainer.logger", "false"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: RAM: slots must be a positive integer (>= 1), got 0"
    assert "Traceback" not in err and "Namespace" not in err
    with pytest.raises(ConfigError, match="RAM: slots must be"):  # in Python: an exception
        make_cli(args)


def test_only_errors_raised_by_tiereds_own_checks_become_config_errors():
    import tiered
    from tiered.lightning_cli import _raised_by_a_check
    from tiered.validation import check_positive_int

    def raise_here():
        raise ValueError("RAM: slots must be ... (shaped like a check, raised in a test)")

    inside = str(Path(tiered.__file__).parent / "module.py")  # as if raised in tiered's code

    def raise_inside(message):
        exec(compile(f"raise ValueError({message!r})", inside, "exec"))

    calls = [
        lambda: check_positive_int("RAM", "slots", 0),  # a check: True
        raise_here,  # outside tiered's code: False
        lambda: raise_inside("RAM: slots must be a positive integer"),  # True
        lambda: raise_inside("Unknown format code 'f' for object of type 'str'"),  # a bug
    ]
    errors = []
    for call in calls:
        try:
            call()
        except ValueError as error:
            errors.append(error)
    assert [_raised_by_a_check(e) for e in errors] == [True, False, True, False]


def test_nearest_and_reduce_block_on_a_nested_jsonargparse_message():
    message = """Parser key "model":
  Does not validate against any of the Union subtypes
  Errors:
    - Problem with given class_path 'tiered.TieredModule':
        Parser key "controller":
          Problem with given class_path 'tiered.controllers.LSTMController':
            Parser key "tiers":
              Errors:
                - Problem with given class_path 'tiered.tiers.Cache':
                    Option 'slotss' is not accepted
                - Expected a <class 'NoneType'>
              Given value: [{'class_path': 'tiered.tiers.Cache'}]
    - Expected a <class 'NoneType'>
  Given value type: <class 'dict'>"""
    reduced = reduce_block(message)
    assert reduced.message == "Option 'slotss' is not accepted"
    assert reduced.keys == ("model", "controller", "tiers")
    assert reduced.classes[-1] == "tiered.tiers.Cache"
    precision = """Parser key "trainer.precision":
  Does not validate against any of the Union subtypes
  Subtypes: [typing.Literal[64, 32, 16], typing.Literal['16-mixed', 'bf16'], <class 'NoneType'>]
  Errors:
    - Expected a typing.Literal[64, 32, 16]
    - Expected a typing.Literal['16-mixed', 'bf16']
    - Expected a <class 'NoneType'>
  Given value type: <class 'str'>
  Given value: 7"""
    reduced = reduce_block(precision)  # every allowed type, not the first one only
    assert reduced.message == (
        "Expected a typing.Literal[64, 32, 16]; Expected a typing.Literal['16-mixed', 'bf16']; "
        "got 7"
    )
    assert reduced.keys == ("trainer.precision",)
    assert nearest("Cahce", ["Cache", "RAM", "ROM"]) == " (did you mean 'Cache'?)"
    assert nearest("zzz", ["Cache", "RAM"]) == ""
    assert nearest("cache", ["Cache"]) == " (did you mean 'Cache'?)"  # case is forgiven


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
    # one line naming the file and the line, then the hint
    line, hint = result.stderr.strip().splitlines()
    assert hint == "(`tiered fit --help` lists the options)"
    assert line.startswith(f"error: --config {broken}: YAML syntax error at line 3, column")
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == [broken]


def test_a_run_shorter_than_val_check_interval_saves_last_and_says_what_it_evaluates(
    tmp_path, capsys
):
    short = [a if a != "3" else "7" for a in SMALL_COPY]  # 7 training batches per epoch
    args = ["fit", "--config", str(STACK), *short, "--trainer.max_steps", "2",
            "--trainer.val_check_interval", "5", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir",
            str(tmp_path), "--evaluate_after_fit", "true"]  # fmt: skip
    assert main(args) == 0
    (run,) = (tmp_path / "lightning_logs").iterdir()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    out = capsys.readouterr().out
    said = f"evaluate_after_fit: validating and testing {run / 'checkpoints' / 'last.ckpt'}"
    assert said in out and "(the final weights, step 2)" in out


def test_evaluate_after_fit_takes_the_final_weights_not_an_older_validation_checkpoint(
    tmp_path, capsys
):
    # 7 steps, a validation checkpoint at step 5: without a monitored metric the final
    # weights (step 7) are evaluated, not the step-5 checkpoint.
    short = [a if a != "3" else "9" for a in SMALL_COPY]
    args = ["fit", "--config", str(STACK), *short, "--trainer.max_steps", "7",
            "--trainer.val_check_interval", "5", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.callbacks+=tiered.callbacks.StepProgressBar",
            "--trainer.callbacks.refresh_rate", "0",  # a disabled bar: no division by 0
            "--evaluate_after_fit", "true"]  # fmt: skip
    assert main(args) == 0
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["epoch=0-step=5.ckpt", "last.ckpt"], names
    out = capsys.readouterr().out
    assert f"testing {tmp_path / 'checkpoints' / 'last.ckpt'} (the final weights, step 7)" in out


def test_a_fit_prints_steps_out_of_max_steps_and_none_of_lightnings_noise(tmp_path):
    result = subprocess.run(
        [*tiered_command(), "fit", "--config", str(STACK), *SMALL_COPY,
         "--trainer.max_steps", "4", "--trainer.log_every_n_steps", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert "train steps: 100%" in text and "4/4" in text and "train/loss=" in text
    for noise in ("💡 Tip", "LeafSpec", "FLOPs", "Flops", "v_num", "Epoch 0/-",
                  "Trainer already configured", "`weights_only` was not set"):  # fmt: skip
        assert noise not in text, noise
    assert "trainable params" in text  # the model summary is still printed
