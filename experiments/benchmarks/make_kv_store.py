"""Build the random key/value store of the key-value lookup task (not committed: ~200 MiB).

Keys are Gaussian (key width 32), values random signs (value width 16), so a value cannot
be predicted from its key: it must be looked up. Writes the store with its FAISS index.

    python experiments/benchmarks/make_kv_store.py [--rows 1048576] [--out runs/stores/kv_1m]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from tiered.rom_cli import main as rom_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1 << 20)
    parser.add_argument("--key-width", type=int, default=32)
    parser.add_argument("--value-width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/stores/kv_1m")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        keys = Path(folder) / "keys.npy"
        values = Path(folder) / "values.npy"
        np.save(keys, rng.standard_normal((args.rows, args.key_width)).astype(np.float32))
        np.save(
            values, np.sign(rng.standard_normal((args.rows, args.value_width))).astype(np.float32)
        )
        code = rom_main(["build", "--keys", str(keys), "--values", str(values), "--out", args.out,
                         "--overwrite"])  # fmt: skip
    print(f"{args.rows} rows in {time.perf_counter() - start:.1f} s (exit {code})")


if __name__ == "__main__":
    main()
