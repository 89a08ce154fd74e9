"""``tiered inspect CHECKPOINT``: draw and summarise how each tier of a trained model is used.

Its arguments are parsed before torch and Lightning are imported, so ``--help`` and argument
errors are quick; the work is ``tiered.diagnostics``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Run sequences of a checkpoint's task through its model; write figures and a summary."""
    parser = argparse.ArgumentParser(
        prog="tiered inspect",
        description="Run sequences of a checkpoint's task through its model and write, per "
        "sequence, a figure of each tier's reads and writes over time and slots, its write "
        "mass and spills (PNG), and a text summary of how each tier was used.",
    )
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by tiered fit")
    parser.add_argument(
        "--config", type=Path, default=None,
        help="the run's config.yaml (default: found beside the checkpoint)",
    )  # fmt: skip
    parser.add_argument(
        "--split", choices=("val", "test"), default="val",
        help="val: the training range of lengths; test: the longer one",
    )  # fmt: skip
    parser.add_argument("--sequences", type=int, default=2, help="how many sequences")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="output folder (default: inspect/ beside the checkpoint)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"checkpoint: no such file: {str(args.checkpoint)!r}")
    if args.sequences < 1:
        parser.error(f"--sequences must be at least 1, got {args.sequences}")
    config = args.config or find_config(args.checkpoint)
    if config is None or not config.is_file():
        parser.error(
            f"no config.yaml found beside {str(args.checkpoint)!r}; give the run's config "
            f"with --config"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tiered.diagnostics import draw, real_steps, summary, task_from_config, trace
    from tiered.module import TieredModule

    model = TieredModule.load_from_checkpoint(args.checkpoint, map_location="cpu")
    task = task_from_config(config)
    batch = task.make_batch(args.split, 0)
    n = min(args.sequences, batch.inputs.shape[0])
    records = trace(model.controller, batch.inputs[:n])
    out = args.out or args.checkpoint.parent / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    texts = []
    for b, record in enumerate(records):
        T = real_steps(batch, b)
        fig = draw(record, f"{args.checkpoint.name}, {args.split} sequence {b} ({T} steps)", T)
        fig.savefig(out / f"{args.split}_seq{b}.png", dpi=80)
        plt.close(fig)
        texts.append(f"{args.split} sequence {b} ({T} steps):\n{summary(record, T)}")
    text = "\n\n".join(texts)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"\nfigures and summary.txt in {out}")
    return 0


def find_config(checkpoint: Path) -> Path | None:
    """The config.yaml that ``tiered fit`` saved for the run of ``checkpoint``: beside it,
    or in a ``logs/version_*`` or ``lightning_logs/version_*`` folder near it."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        candidates = [folder / "config.yaml"]
        candidates += sorted(folder.glob("logs/version_*/config.yaml"))
        candidates += sorted(folder.glob("lightning_logs/version_*/config.yaml"))
        for path in candidates:
            if path.is_file():
                return path
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
