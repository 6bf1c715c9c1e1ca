"""Prepare a synthetic data set as a memmap-able .npy file (a thin CLI over memlab).

    python data/prepare.py --workload transformer --samples 100000
    python data/prepare.py --shape 64 --samples 1000000 --out data/generated/big.npy

Writes ``<file>.npy`` (inputs) and ``<file>.labels.npy`` (int64 labels) under data/generated/
(git-ignored) unless --out says otherwise; prints the paths and sizes. The same function,
``memlab.workloads.data.prepare_memmap``, runs when an experiment asks for ``data="memmap"``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Runs from a checkout without installing memlab.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memlab.config import ConfigError, parse_bytes  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--workload",
        choices=["mlp", "cnn", "transformer"],
        default="mlp",
        help="use this workload's input shape and the file name runs look for",
    )
    p.add_argument("--shape", type=int, nargs="+", help="input shape of one sample instead")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--samples", type=int, default=100_000, help="number of samples")
    size.add_argument("--size", help="total size of the inputs instead, e.g. 512MB or 2GiB")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="output .npy path (default: data/generated/...)")
    p.add_argument("--overwrite", action="store_true", help="rewrite an existing file")
    args = p.parse_args(argv)

    import numpy as np

    from memlab.workloads.builtin import SPECS
    from memlab.workloads.data import memmap_path, prepare_memmap

    shape = tuple(args.shape) if args.shape else SPECS[args.workload].input_shape
    n = args.samples
    if args.size is not None:
        try:
            total = parse_bytes(args.size, name="--size")
        except ConfigError as e:
            p.error(str(e))
        n = max(1, total // (int(np.prod(shape)) * np.dtype(args.dtype).itemsize))
    if n <= 0:
        p.error(f"--samples must be a positive int, got {n}")
    name = args.workload if not args.shape else "custom"
    out = args.out or memmap_path(name, n, shape, args.dtype, args.seed)
    files = prepare_memmap(out, n, shape, args.dtype, args.seed, overwrite=args.overwrite)
    print(f"{files.x_path}  {files.n} x {files.shape} {files.dtype}  {files.x_bytes / 1e6:.1f} MB")
    print(f"{files.y_path}  {files.n} int64 labels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
