"""Seconds per training epoch of train-triplet's loop: 45,000 features of dimension 1280, mlp head.

Target (issue 3): one epoch in <= 10 s on a 2-core CPU for the mlp head. Measures the random-triplet
mode (45,000 fresh triplets in steps of 256) and two mined modes (P x K = 10 x 25 batches), each
with the FaceNet loss; validation is excluded from the epoch time (it is reported separately by
the training history as seconds_with_validation).

    python benchmarks/bench_train.py [--features FILE.h5] [--epochs 2]

Without --features, class-structured random features are used (the timing does not depend on
their values). With --features, the train split of a features artifact is used.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from deephash_cli.heads import Head
from deephash_cli.losses import FaceNetTripletLoss
from deephash_cli.train import TrainOptions, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", help="features artifact whose train split is used")
    parser.add_argument("--n", type=int, default=45_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, the core count)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.features:
        from deephash_cli.artifacts import read_artifact

        train = read_artifact(args.features, splits=["train"]).split("train")
        rows = np.sort(np.random.default_rng(0).permutation(len(train))[: args.n])  # all classes, not the first
        x, y = train.features[rows], train.labels[rows]
    else:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, args.n)
        x = (rng.normal(size=(10, args.dim))[y] + rng.normal(size=(args.n, args.dim))).astype(np.float32)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    print(f"# bench_train: {len(y):,} x {x.shape[1]} features, mlp head 512 -> 128, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
          f"python {platform.python_version()}\n")
    print("| triplets | epoch seconds (each epoch) | best | items/s |")
    print("|---|---|---:|---:|")
    for label, miner in (("random (45k triplets, 256/step)", None), ("mined: semihard, P×K 10×25", "semihard"),
                         ("mined: hardest, P×K 10×25", "hardest"), ("mined: all, P×K 10×25", "all")):
        torch.manual_seed(0)
        model = Head("mlp", x.shape[1], 128, 512, "normalized")
        model.fit_standardizer(x_t)
        items = []
        result = fit(model, FaceNetTripletLoss(0.2), x_t, y_t,
                     TrainOptions(epochs=args.epochs, miner=miner, batch_size=256),
                     validate=lambda m: 0.0, on_step=lambda n, loss: items.append(n))
        seconds = [row["seconds"] for row in result.history]
        per_epoch_items = sum(items) / len(seconds)
        print(f"| {label} | {', '.join(f'{s:.2f}' for s in seconds)} | {min(seconds):.2f} | "
              f"{per_epoch_items / min(seconds):,.0f} |")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"\n(total {time.perf_counter() - start:.1f} s)")
