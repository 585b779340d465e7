"""How many code bits does int8 quantisation flip, under each ONNX Runtime quantisation setting tried?

A hash model's code bit is the sign of a head output; `extract --runtime int8` flipped bits in half of
the fine-tuned 48-bit codes (docs/runtimes.md). This script compares, on a fixed sample of test images,
the eager codes with the int8 codes of the shipped setting (MinMax, per-channel weights, QDQ) and of
variants: percentile calibration, the head left in float (only convolution-side ops quantised),
convolutions only. Calibration: a fixed sample of training images, as `extract` draws it.

    python benchmarks/bench_int8_codes.py --model ft4-hash48-lr.model.h5 --data-dir /tmp/cifar10
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime.quantization as quantization
import torch

from deephash_cli.datasets import load_dataset
from deephash_cli.extract import image_batches, make_transform
from deephash_cli.finetune import load_finetuned
from deephash_cli.runtimes import build_runtime

VARIANTS = {
    "shipped (MinMax)": {},
    "percentile calibration": {"calibrate_method": quantization.CalibrationMethod.Percentile},
    "head in float": {"op_types_to_quantize": ["Conv", "Add", "Clip", "Relu", "GlobalAveragePool", "Flatten"]},
    "convolutions only": {"op_types_to_quantize": ["Conv"]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--calibration-images", type=int, default=256)
    args = parser.parse_args()

    model, architecture = load_finetuned(args.model)
    size = architecture["image_size"]
    data = load_dataset("imagefolder", args.data_dir)
    transform = make_transform(size, architecture["mean"], architecture["std"])
    rng = np.random.default_rng(0)
    calibration_rows = np.sort(rng.choice(len(data.train), args.calibration_images, replace=False))
    query_rows = np.sort(rng.choice(len(data.test), args.queries, replace=False))
    images = torch.cat(list(image_batches(data.test.subset(query_rows), transform, size, batch_size=128)))
    with torch.inference_mode():
        reference = model(images) > 0
    print(f"{args.queries} test images, {reference.shape[1]}-bit codes, {args.calibration_images} calibration images, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'variant':<24} {'bits flipped':>14} {'codes changed':>14} {'images/s':>9}")
    shipped = quantization.quantize_static
    for name, options in VARIANTS.items():
        def patched(*positional, _options=options, **keywords):
            return shipped(*positional, **{**keywords, **_options})

        quantization.quantize_static = patched  # runtimes.int8 imports it at call time
        try:
            network = build_runtime("int8", model, images[:2], lambda: image_batches(
                data.train.subset(calibration_rows), transform, size, batch_size=32))
        finally:
            quantization.quantize_static = shipped
        with torch.inference_mode():
            network(images[:128])
            start = time.perf_counter()
            codes = network(images) > 0
            seconds = time.perf_counter() - start
        flipped = codes != reference
        print(f"{name:<24} {int(flipped.sum()):>6} / {flipped.numel():<7} {int(flipped.any(1).sum()):>6} / "
              f"{len(codes):<6} {len(codes) / seconds:>9.0f}")


if __name__ == "__main__":
    main()
