"""deephash's search layer against faiss called directly, flat binary index, on a quiet machine (a script).

The overhead rows of bench_search.py on their own, so they can be rerun in seconds when the machine is quiet:
random 64-bit codes at 1M and 10M items, 250 queries per call, `deephash_cli.faiss_index.search` and
`index.search` interleaved, best of 9 each, and whether both return identical results. Target (issue 11):
overhead < 5%.

Usage: python benchmarks/bench_search_overhead.py
"""

import os, sys, time
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np, faiss
from deephash_cli import faiss_index
faiss.omp_set_num_threads(2)
print("| items | queries per call | index.search s | faiss_index.search s | overhead | same results |")
print("|---:|---:|---:|---:|---:|---|")
print(f"load average at start {os.getloadavg()[0]:.2f}", file=sys.stderr)
rng = np.random.default_rng(0)
for n in (1_000_000, 10_000_000):
    db = rng.integers(0, 256, size=(n, 8), dtype=np.uint8)
    q = rng.integers(0, 256, size=(250, 8), dtype=np.uint8)
    flat = faiss.IndexBinaryFlat(64); flat.add(db); flat.use_heap = False
    direct = wrapped = float("inf"); same = True
    for _ in range(9):
        t0 = time.perf_counter(); Dd, Id = flat.search(q, 10); direct = min(direct, time.perf_counter() - t0)
        t0 = time.perf_counter(); Dw, Iw = faiss_index.search(flat, q, 10); wrapped = min(wrapped, time.perf_counter() - t0)
        same &= bool(np.array_equal(Dd, Dw) and np.array_equal(Id, Iw))
    print(f"| {n:,} | 250 | {direct:.4f} | {wrapped:.4f} | {100 * (wrapped / direct - 1):+.2f}% | {same} |")
print(f"load average at end {os.getloadavg()[0]:.2f}")
