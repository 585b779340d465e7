"""What `search`'s tie counts add to a flat binary search (a script, not a test).

Builds a flat index of `--database` 48-bit codes and times, for `--queries` queries in one batch as
`deephash search --queries` sends them, `faiss_index.search` (the k nearest) and `faiss_index.count_ties`
(the range search that counts the items at the k-th distance and closer), best of `--repeat`. Two kinds of
codes: uniform random codes (few ties) and clustered codes (10 centres, each bit flipped with probability
`--flip`: large buckets at small distances, as trained hash codes of a 10-class collection have).

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_tie_counts.py [--database 1000000] [--queries 200] [--k 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from deephash_cli import faiss_index  # noqa: E402
from deephash_cli.faiss_index import IndexSpec  # noqa: E402


def best(call, repeat: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = call()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import faiss

    print(f"# bench_tie_counts: flat binary search vs tie counting, {args.database:,} {args.bits}-bit codes, "
          f"{args.queries} queries, k = {args.k}")
    print(f"python {platform.python_version()}, faiss {faiss.__version__}, OMP_NUM_THREADS "
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')} (faiss {faiss.omp_get_max_threads()} threads), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    rng = np.random.default_rng(0)
    n, q, bits = args.database, args.queries, args.bits
    centres = rng.random((10, bits)) < 0.5
    kinds = {
        "uniform": (rng.random((n + q, bits)) < 0.5),
        f"clustered (flip {args.flip})": centres[rng.integers(0, 10, n + q)] ^ (rng.random((n + q, bits)) < args.flip),
    }
    spec = IndexSpec("flat", True, "hamming", bits)
    print("\n| codes | search ms/query | tie counts ms/query | added | median tied_at_kth | max tied_at_kth |")
    print("|---|---|---|---|---|---|")
    for name, unpacked in kinds.items():
        codes = np.packbits(unpacked, axis=1)
        database, queries = codes[:n], codes[n:]
        del unpacked
        index = faiss_index.build(spec, database[:1])
        faiss_index.add(index, spec, database)
        search_s, (raw, ids) = best(lambda: faiss_index.search(index, queries, args.k), args.repeat)
        ties_s, (closer, tied) = best(lambda: faiss_index.count_ties(index, spec, queries, raw, ids), args.repeat)
        print(f"| {name} | {1000 * search_s / q:.2f} | {1000 * ties_s / q:.2f} | {100 * ties_s / search_s:.0f} % "
              f"| {int(np.median(tied)):,} | {int(tied.max()):,} |")


if __name__ == "__main__":
    main()
