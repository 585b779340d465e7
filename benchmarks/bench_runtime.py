"""Inference runtimes side by side, in one run: images/s of the same network's forward pass under each.

Issue 14, part 1: `extract --runtime` must reach >= 2x eager's images/s on these CPU cores with the
CIFAR-10 mAP within 0.005 of eager (the mAP side is measured by extracting with each runtime and
`deephash evaluate`; the commands are in benchmarks/RESULTS.md). Here every runtime gets the same
real, preprocessed images (the first --images of an image folder, or random ones without
--data-dir), in rounds that alternate the runtimes so load on a shared machine hits all alike;
the median over rounds is reported with the speed-up against eager and the largest difference of
the outputs from eager's (relative to eager's largest output).

    python benchmarks/bench_runtime.py --data-dir /tmp/cifar10 \
        --weights ../shared/weights/mobilenet_v2-imagenet.pth --mean 0.5 --std 0.5 --image-size 112

Runtimes: the three of `extract --runtime` (eager, onnx, int8) plus two that were tried and not kept:
channels-last eager and `torch.compile` (--with-compile: its first call compiles for minutes here).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

from deephash_cli.backbones import build_backbone
from deephash_cli.datasets import load_dataset
from deephash_cli.extract import image_batches, make_transform
from deephash_cli.runtimes import build_runtime


def _images(args: argparse.Namespace) -> torch.Tensor:
    if args.data_dir is None:
        return torch.rand(args.images, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    source = load_dataset("imagefolder", args.data_dir).train
    rows = np.sort(np.random.default_rng(0).choice(len(source), args.images, replace=False))
    transform = make_transform(args.image_size, (args.mean,) * 3, (args.std,) * 3)
    return torch.cat(list(image_batches(source.subset(rows), transform, args.image_size, batch_size=256)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--mean", type=float, default=0.5)
    parser.add_argument("--std", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=1024, help="images per round and runtime")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--with-compile", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, _ = build_backbone(args.backbone, args.weights)
    images = _images(args)
    calibration = images[:args.calibration_images]
    example = images[:2]
    built: dict[str, tuple[torch.nn.Module, float]] = {}
    for name in ("eager", "onnx", "int8"):
        start = time.perf_counter()
        runtime = build_runtime(name, model, example, lambda: iter(calibration.split(32)))
        built[name] = (runtime, time.perf_counter() - start)
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)  # .to() changes in place

    class ChannelsLast(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return channels_last(x.contiguous(memory_format=torch.channels_last))

    built["channels-last"] = (ChannelsLast(), 0.0)
    if args.with_compile:
        start = time.perf_counter()
        compiled = torch.compile(model)
        with torch.inference_mode():
            compiled(images[:args.batch_size])
        built["compile"] = (compiled, time.perf_counter() - start)

    def run(net: torch.nn.Module) -> tuple[float, torch.Tensor]:
        outputs = []
        with torch.inference_mode():
            start = time.perf_counter()
            for batch in images.split(args.batch_size):
                outputs.append(net(batch))
            return time.perf_counter() - start, torch.cat(outputs)

    reference = run(model)[1]  # also the warm-up of eager
    scale = float(reference.abs().max())
    seconds: dict[str, list[float]] = {name: [] for name in built}
    difference: dict[str, float] = {}
    for name, (net, _) in built.items():
        difference[name] = float((run(net)[1] - reference).abs().max()) / scale  # warm-up + outputs
    for _ in range(args.rounds):
        for name, (net, _) in built.items():
            seconds[name].append(run(net)[0])
    eager = len(images) / statistics.median(seconds["eager"])
    print(f"{args.backbone} at {args.image_size} px, {len(images)} images x {args.rounds} rounds, batch "
          f"{args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"{'real images from ' + args.data_dir if args.data_dir else 'random images'}")
    print(f"{'runtime':<14} {'images/s':>9} {'vs eager':>9} {'max |diff| / max |eager|':>25} {'build s':>8}")
    for name in built:
        rate = len(images) / statistics.median(seconds[name])
        print(f"{name:<14} {rate:>9.1f} {rate / eager:>8.2f}x {difference[name]:>25.2e} {built[name][1]:>8.1f}")


if __name__ == "__main__":
    main()
