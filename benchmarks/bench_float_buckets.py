"""Buckets per row of the compiled float rank kernel: time per pair against G (a script, not a test).

One thread runs deephash_cli.float_ranks.rank_chunk (the numba kernel: finishing, sort of the
relevant distances, bucket table, counting pass, AP sums, k-NN candidates) over one chunk of
raw matmul output, --rows x --database x 128, euclidean, 10 classes (R ~ database / 10 relevant
items per row), mAP@all + mAP@1000 + P@100 + 10-NN, for each G of --buckets; best and median of
--repeat, and whether every output equals the first G's.  The matmul is not timed.  The share of
items whose bucket holds 3 or more relevant distances (the kernel's slow path) is counted on the
first rows.  float_ranks.buckets_for picks G from the largest relevant count; this shows why.

Usage: python benchmarks/bench_float_buckets.py [--rows 400] [--database 50000] [--repeat 7]
       [--buckets 8192,16384,32768,65536]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from deephash_cli import float_ranks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--database", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--buckets", default="8192,16384,32768,65536")
    args = ap.parse_args()
    fn = float_ranks.kernel()
    if fn is None:
        sys.exit("numba is not installed (the 'fast' extra)")
    m, n = args.rows, args.database
    rng = np.random.default_rng(1)
    fq = rng.normal(size=(m, 128)).astype(np.float32)
    fdb = rng.normal(size=(n, 128)).astype(np.float32)
    ql, dl = rng.integers(0, 10, m), rng.integers(0, 10, n)
    dist = np.matmul(fq * np.float32(-2.0), fdb.T)
    db_sq, q_sq = np.einsum("ij,ij->i", fdb, fdb), np.einsum("ij,ij->i", fq, fq)
    members = [np.flatnonzero(dl == c) for c in range(10)]
    member_ptr = np.zeros(11, dtype=np.int64)
    member_ptr[1:] = np.cumsum([v.size for v in members])
    members_flat = np.concatenate(members).astype(np.int64)
    row_class = ql.astype(np.int64)
    r_max = int(np.diff(member_ptr).max())
    own = np.full(m, -1, dtype=np.int64)
    print(f"# bench_float_buckets: {m} rows x {n:,} items x 128, R <= {r_max:,}; python {platform.python_version()}, "
          f"1 thread, load average {os.getloadavg()[0]:.2f} at start")
    print(f"float_ranks.buckets_for({r_max}) = {float_ranks.buckets_for(r_max)}\n")
    print("| G (buckets per row) | ns per pair, best | median | items in buckets holding >= 3 | outputs equal |")
    print("|---:|---:|---:|---:|---|")
    ref = None
    for G in (int(g) for g in args.buckets.split(",")):
        S = float_ranks.FloatRankScratch(m, n, r_max, 10, 3, G)

        def run():
            return float_ranks.rank_chunk(fn, dist, True, True, db_sq, q_sq, row_class, member_ptr, members_flat, own,
                                          10, [1000], [100], n, S, G)

        out = run()
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        flat = [out[0], *out[1], *out[2:]]
        if ref is None:
            ref = flat
        same = all(np.array_equal(a, b) for a, b in zip(flat, ref))
        crowded = 0.0
        for i in range(min(m, 20)):  # the kernel's buckets, recomputed in numpy
            d = np.maximum(dist[i] + db_sq + q_sq[i], np.float32(0))
            rel = d[members[ql[i]]]
            lo, hi = rel.min(), rel.max()
            scale = np.float32((G - 2) / (np.float64(hi) - np.float64(lo)))
            top = np.float32(G - 1)
            cnt = np.bincount(np.clip((rel - lo) * scale, 0, top).astype(np.int64), minlength=G)
            crowded += (cnt[np.clip((d - lo) * scale, 0, top).astype(np.int64)] >= 3).mean() / min(m, 20)
        t_best, t_med = min(times), sorted(times)[len(times) // 2]
        print(f"| {G:,} | {t_best / (m * n) * 1e9:.2f} | {t_med / (m * n) * 1e9:.2f} | {crowded:.2%} | {same} |")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
