"""Where an evaluate call's time goes on float features, and how much it varies (a script, not a test).

Times --calls consecutive evaluate_retrieval calls with the numba kernel (10,000 x 50,000 x 128,
euclidean, mAP@all + mAP@1000 + P@100 + 10-NN, as bench_evaluate.py) after a first call, and for
each: wall time, the process's CPU time, and the CPU time of the worker threads spent in the
chunk matmuls (``np.matmul`` as metrics.py calls it) and in the compiled kernel
(``float_ranks.rank_chunk``), summed over the workers (``time.thread_time``); busy = (matmul +
kernel) / (workers x wall).  Then --calls bare matmuls ``query @ database.T`` in a row.

Usage: python benchmarks/bench_float_pipeline.py [--calls 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from deephash_cli import float_ranks, metrics  # noqa: E402
from deephash_cli.metrics import evaluate_retrieval  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=10)
    args = ap.parse_args()
    os.environ[float_ranks.KERNELS_ENV] = "numba"
    if float_ranks.kernel() is None:
        sys.exit("numba is not installed (the 'fast' extra)")
    rng = np.random.default_rng(1)
    fq = rng.normal(size=(10_000, 128)).astype(np.float32)
    fdb = rng.normal(size=(50_000, 128)).astype(np.float32)
    ql, dl = rng.integers(0, 10, 10_000), rng.integers(0, 10, 50_000)
    kw = dict(distance="euclidean", map_at=(1000,), precision_at=(100,), knn_k=10)
    evaluate_retrieval(fq[:2], ql[:2], fdb, dl, **kw)

    spent = {"matmul": 0.0, "kernel": 0.0}
    lock = threading.Lock()

    def timed_in_thread(name, fn):
        def wrapper(*a, **k):
            c = time.thread_time()
            out = fn(*a, **k)
            with lock:
                spent[name] += time.thread_time() - c
            return out
        return wrapper

    real_matmul, real_rank_chunk = np.matmul, float_ranks.rank_chunk
    workers = metrics._workers(2)
    print(f"# bench_float_pipeline: 10,000 x 50,000 x 128 euclidean, numba kernel, {workers} workers; "
          f"load average {os.getloadavg()[0]:.2f} at start\n")
    print("| call | wall (s) | process CPU (s) | matmul CPU, workers summed (s) | kernel CPU (s) | busy |")
    print("|---:|---:|---:|---:|---:|---:|")
    try:
        metrics.np.matmul = timed_in_thread("matmul", real_matmul)
        float_ranks.rank_chunk = timed_in_thread("kernel", real_rank_chunk)
        for call in range(1, args.calls + 1):
            spent.update(matmul=0.0, kernel=0.0)
            t, c = time.perf_counter(), time.process_time()
            evaluate_retrieval(fq, ql, fdb, dl, **kw)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            busy = (spent["matmul"] + spent["kernel"]) / (workers * wall)
            print(f"| {call} | {wall:.2f} | {cpu:.2f} | {spent['matmul']:.2f} | {spent['kernel']:.2f} | {busy:.0%} |")
    finally:
        metrics.np.matmul, float_ranks.rank_chunk = real_matmul, real_rank_chunk
    times = []
    for _ in range(args.calls):
        t = time.perf_counter()
        out = fq @ fdb.T
        times.append(time.perf_counter() - t)
        del out
    print(f"\nbare matmuls in a row (s): {' '.join(f'{x:.2f}' for x in times)}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
