"""Extraction throughput against the bare forward pass of the same model, in one run.

Target (issue 2): `deephash extract` images/s >= 90% of the bare forward images/s. The bare forward
feeds pre-made random tensors of the same size through the same truncated network; the extraction
runs the real path (`extract_chunks`: JPEG decode, resize, normalise, DataLoader, forward,
float32 copy-out) over the first images of an image folder.

    python benchmarks/bench_extract.py --data-dir /tmp/cifar10 \
        --weights ../shared/weights/mobilenet_v2-imagenet.pth --image-size 112 --images 2000

Without --data-dir a temporary folder of random 32x32 JPEGs is made.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deephash_cli.backbones import build_backbone
from deephash_cli.datasets import load_dataset
from deephash_cli.extract import extract_chunks, make_transform


def _random_folder(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "train" / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return root


def bare_forward(model: torch.nn.Module, image_size: int, batch_size: int, images: int) -> float:
    """Images/s of model(x) on ready tensors, no data loading."""
    x = torch.randn(batch_size, 3, image_size, image_size)
    with torch.inference_mode():
        model(x)  # warm-up
        start = time.perf_counter()
        done = 0
        while done < images:
            model(x)
            done += batch_size
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_dir) if args.data_dir else _random_folder(Path(tmp), args.images)
        data = load_dataset("imagefolder", str(root))
        rows = np.random.default_rng(0).permutation(len(data.train))[: args.images]
        source = data.train.subset(np.sort(rows))
        model, _ = build_backbone(args.backbone, args.weights)
        transform = make_transform(args.image_size, (0.5,) * 3, (0.5,) * 3)
        print(f"# bench_extract: {args.backbone} @ {args.image_size}px, batch {args.batch_size}, {len(source)} images "
              f"from {root}, torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.2f}\n")
        print("| measurement | images/s | ratio to bare forward |")
        print("|---|---:|---:|")
        # Interleave: bare forward before and after each extraction, so drifting machine load
        # affects both sides alike.
        for workers in args.workers:
            before = bare_forward(model, args.image_size, args.batch_size, len(source))
            start = time.perf_counter()
            n = sum(len(chunk[1]) for chunk in extract_chunks(model, source, transform, args.image_size,
                                                              batch_size=args.batch_size, workers=workers))
            extract_rate = n / (time.perf_counter() - start)
            after = bare_forward(model, args.image_size, args.batch_size, len(source))
            bare = (before + after) / 2
            print(f"| bare forward (mean of before/after) | {bare:,.1f} | 1.00 |")
            print(f"| extract, {workers} DataLoader workers | {extract_rate:,.1f} | {extract_rate / bare:.2f} |")


if __name__ == "__main__":
    main()
