"""The fine-tuning memory pre-flight against a real training step (a script, not a test).

For MobileNetV2 (torchvision, --weights as finetune's) with a linear 48-output head in training mode,
at each --sizes: what deephash_cli.memory measures autograd keeps per image and in all, then one real
step (forward, a sum as the loss, backward) of --batch images and the process's peak resident memory
during it (Linux: VmHWM after resetting it through /proc/self/clear_refs), minus the resident memory
before it (run one size per process: memory freed by one step stays resident for the next).  Shows how much of a step's peak the pre-flight's measure covers, and what it predicts for
the P×K batches of docs/hashing.md.

Usage: python benchmarks/bench_memory.py [--weights PATH] [--sizes 224] [--batch 20] [--pk 100,250]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from deephash_cli import memory  # noqa: E402
from deephash_cli.backbones import build_backbone  # noqa: E402


def rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="none")
    ap.add_argument("--sizes", default="224")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--pk", default="100,250", help="images per step to predict for")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cnn, spec = build_backbone("mobilenet_v2", args.weights)
    net = nn.Sequential(cnn, nn.Linear(spec.dim, 48)).train()
    pk = [int(x) for x in args.pk.split(",")]
    cpu = torch.device("cpu")
    print(f"# bench_memory: mobilenet_v2 + linear head, training mode, one thread; real step of {args.batch} images")
    print(f"MemAvailable now: {memory.available_bytes(cpu) / 2**30:.1f} GiB\n")
    print("| size (px) | kept per image, measured (MiB) | fixed (MiB) | real step: peak RSS above the start (MiB) "
          "| pre-flight's measure for that step (MiB) | share | predicted for " + ", ".join(map(str, pk))
          + " images (GiB) |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        x = torch.randn(args.batch, 3, size, size)
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        start = rss("VmRSS")
        net.zero_grad(set_to_none=True)
        net(x).sum().backward()
        peak = rss("VmHWM") - start
        per_image, fixed = memory.bytes_per_image(net, size, cpu)  # after the real step: its peak is not inflated
        measure = fixed + per_image * args.batch
        predicted = ", ".join(f"{(fixed + per_image * n) / 2**30:.1f}" for n in pk)
        print(f"| {size} | {per_image / 2**20:.1f} | {fixed / 2**20:.1f} | {peak / 2**20:.0f} | {measure / 2**20:.0f} "
              f"| {measure / peak:.0%} | {predicted} |")


if __name__ == "__main__":
    main()
