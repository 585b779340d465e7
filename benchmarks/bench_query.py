"""End-to-end latency of one query image (a script, not a test): decode, encode, search.

Loads an index artifact and its encoder once (as a long-running search service would; the one-off load
is timed apart), then answers one image at a time through the same functions `deephash search` calls:
PIL decode (`datasets._open_image`), `Encoder.encode` (resize + centre crop, normalise, forward, pack
the bits), `faiss_index.search`. Reports the median and 90th percentile over `--repeats` queries, the
parts separately, and the same search against a flat index of `--database` random codes of the same
width (to see how latency grows with the collection). Also times the whole command
`deephash search INDEX IMAGE` in a fresh process (interpreter and torch start-up included).

Target (issue 11): one query image answered in < 100 ms at 112 px on 2 cores.

Usage: python benchmarks/bench_query.py INDEX.h5 IMAGE [IMAGE ...] [--repeats 50] [--database 1000000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from deephash_cli import artifacts, faiss_index  # noqa: E402
from deephash_cli.backbones import resolve_device  # noqa: E402
from deephash_cli.datasets import _open_image  # noqa: E402
from deephash_cli.encoders import load_encoder  # noqa: E402
from deephash_cli.faiss_index import IndexSpec  # noqa: E402


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path)
    parser.add_argument("images", type=Path, nargs="+")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--database", type=int, default=1_000_000, help="random codes for the scaled search row")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    import faiss
    import torch

    print(f"# bench_query: one query image end to end, index {args.index}")
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"faiss {faiss.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    print(f"command: python benchmarks/bench_query.py {' '.join(sys.argv[1:])}")
    start = time.perf_counter()
    stored = artifacts.read_index(args.index)
    spec = IndexSpec.from_dict(stored.spec)
    index = faiss_index.deserialize(stored.serialized, spec, str(args.index))
    encoder = load_encoder(stored.encoder, args.index, resolve_device("cpu"))
    load_seconds = time.perf_counter() - start
    print(f"one-off load of the index ({index.ntotal:,} items, {spec.type}) and encoder "
          f"({stored.encoder.get('extractor', {}).get('backbone') or 'fine-tuned model'} at {encoder.image_size} px): "
          f"{load_seconds:.2f} s")

    parts: dict[str, list[float]] = {"decode": [], "encode": [], "search": [], "total": []}
    for r in range(args.repeats + 3):
        path = args.images[r % len(args.images)]
        t0 = time.perf_counter()
        image = _open_image(path)
        t1 = time.perf_counter()
        vector = encoder.encode([image])
        t2 = time.perf_counter()
        faiss_index.search(index, faiss_index.prepare(spec, vector), args.k)
        t3 = time.perf_counter()
        if r >= 3:  # first calls warm up allocators and kernels
            for name, value in (("decode", t1 - t0), ("encode", t2 - t1), ("search", t3 - t2), ("total", t3 - t0)):
                parts[name].append(1000 * value)

    rows = []
    for name in ("decode", "encode", "search", "total"):
        median, p90 = percentiles(parts[name])
        rows.append((name, median, p90))

    scaled = None
    if spec.binary and args.database > 0:
        rng = np.random.default_rng(0)
        width = faiss_index.code_dimension(spec.width) // 8
        codes = rng.integers(0, 256, size=(args.database, width), dtype=np.uint8)
        flat = faiss_index.build(IndexSpec("flat", True, "hamming", spec.width), codes[:1])
        faiss_index.add(flat, IndexSpec("flat", True, "hamming", spec.width), codes)
        vector = encoder.encode([_open_image(args.images[0])])
        times = []
        for r in range(args.repeats + 3):
            t0 = time.perf_counter()
            faiss_index.search(flat, vector, args.k)
            if r >= 3:
                times.append(1000 * (time.perf_counter() - t0))
        scaled = percentiles(times)

    print()
    print(f"| part | median ms | p90 ms | ({args.repeats} single-image queries, k = {args.k}) |")
    print("|---|---:|---:|---|")
    notes = {"decode": "PIL open + RGB", "encode": "resize/crop, normalise, forward, binarise",
             "search": f"{spec.type} index, {index.ntotal:,} items", "total": "decode + encode + search"}
    for name, median, p90 in rows:
        print(f"| {name} | {median:.1f} | {p90:.1f} | {notes[name]} |")
    if scaled is not None:
        median, p90 = scaled
        print(f"| search, flat {args.database:,} random {spec.width}-bit codes | {median:.1f} | {p90:.1f} | "
              f"the same query; latency of the collection at that size |")
        total = rows[0][1] + rows[1][1] + median
        print(f"| total at {args.database:,} items (medians added) | {total:.1f} | | |")

    deephash = [sys.executable, "-m", "deephash_cli", "search", str(args.index), str(args.images[0]), "-k",
                str(args.k)]
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(deephash, check=True, capture_output=True)
        walls.append(time.perf_counter() - t0)
    print(f"\nwhole command in a fresh process (`deephash search INDEX IMAGE`, start-up and loading included), best "
          f"of 3: {min(walls):.2f} s")
    verdict = "met" if rows[-1][1] < 100 else "NOT met"
    print(f"target < 100 ms per query image (loaded service, median): {rows[-1][1]:.1f} ms -> {verdict}")


if __name__ == "__main__":
    main()
