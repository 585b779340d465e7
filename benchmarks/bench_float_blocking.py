"""Would column-blocked distances make the numba float rank work faster?  (a script, not a test)

Idea tested (issue 14, part 2): instead of writing a whole chunk of distances (335 rows x 50,000,
64 MB) and then reading it back row by row, compute the chunk in column blocks of B database
items into a cache-sized buffer and run the rank work on each block at once, accumulating every
row's histogram across blocks.

It measures, on one thread (CPU time, ``time.thread_time``, best of --repeat; 335 x 50,000 x 128,
float32, euclidean), with the kernel functions of deephash_cli/float_ranks_jit.py:

1. sgemm cost: the chunk's full product against the same product in column blocks of B into one
   reused buffer; and exactness: every column block (including the last partial one and a
   database smaller than a block) equals the same columns of the full product; a product over a
   gathered subset of columns equals those columns of the full one, for several row counts.
2. rank work per pair (finish + bucket and block minima, then the table / histogram loop):
   a. row order over the full chunk (distances streamed from DRAM), with one table, sorted
      relevant distances and histogram reused for every row: what the kernel does now;
   b. the same on 4 rows repeated (distances resident in cache): the most that cache-resident
      distances could save;
   c. column-block order: for each block of B columns, every row's pass over it, each row with its
      own table (G int32), relevant distances and histogram, as a blocked kernel would need.

Usage: python benchmarks/bench_float_blocking.py [--rows 335] [--database 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from deephash_cli import float_ranks, float_ranks_jit  # noqa: E402


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=335)
    ap.add_argument("--database", type=int, default=50000)
    ap.add_argument("--relevant", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from numba import njit

    m, n, R, k = args.rows, args.database, args.relevant, 10
    rng = np.random.default_rng(0)
    db = rng.standard_normal((n, 128)).astype(np.float32)
    q2 = rng.standard_normal((m, 128)).astype(np.float32) * np.float32(-2.0)
    print(f"# bench_float_blocking: {m} x {n} x 128 float32, one thread (CPU time), best of {args.repeat}")
    print(f"numpy {np.__version__}, load average {os.getloadavg()[0]:.2f} at start")

    # 1. sgemm: full vs column blocks, and exactness
    full = np.empty((m, n), np.float32)
    t_full = best(lambda: np.matmul(q2, db.T, out=full), args.repeat)
    print(f"\nsgemm full product: {t_full * 1e9 / (m * n):.2f} ns/pair")
    for B in (512, 1024, 2048, 4096):
        buf = np.empty((m, B), np.float32)

        def blocked():
            for j0 in range(0, n - B + 1, B):
                np.matmul(q2, db[j0:j0 + B].T, out=buf)

        t = best(blocked, args.repeat)
        whole = (n // B) * B
        exact = all(np.array_equal(np.matmul(q2, db[j0:j0 + B].T), full[:, j0:j0 + B]) for j0 in range(0, n, B))
        print(f"sgemm in column blocks of {B}: {t * 1e9 / (m * whole):.2f} ns/pair; "
              f"every block (last one partial) equals the full product: {exact}")
    small = db[:300]
    print("database smaller than a block (300 items) equals its columns of the full product:",
          np.array_equal(np.matmul(q2, small.T), full[:, :300]))
    cols = np.sort(rng.choice(n, R, replace=False))
    for rows in (1, 2, 7, 64, m):
        ref = full[:rows][:, cols] if rows > 1 else np.matmul(q2[:1], db.T)[:, cols]
        print(f"gathered {R} columns, {rows} rows: equals the full product of the same rows:",
              np.array_equal(np.matmul(q2[:rows], db[cols].T), ref))

    # 2. rank work per pair
    ns = float_ranks_jit
    G = float_ranks.buckets_for(R)
    top = np.float32(G - 1)
    col = np.einsum("ij,ij->i", db, db)
    ra = np.einsum("ij,ij->i", q2, q2) / np.float32(4.0)
    lo = np.empty(m, np.float32)
    sc = np.empty(m, np.float32)
    tables = np.empty((m, G + 1), np.int16 if R <= float_ranks.TABLE_INT16_MAX_R else np.int32)
    As = np.empty((m, R + 2), np.float32)
    for i in range(m):  # row i's relevant items: R random columns; table as the kernel builds it
        d = np.maximum(full[i] + col + ra[i], 0).astype(np.float32)
        rel = np.sort(d[cols])
        lo[i] = rel[0]
        sc[i] = np.float32((G - 2) / (float(rel[-1]) - float(rel[0])))
        b = np.clip((rel - lo[i]) * sc[i], 0, top).astype(np.int64)
        cnt = np.bincount(b, minlength=G)[:G]
        start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        tables[i, :G] = np.where(cnt < 3, start, -1 - start)
        tables[i, G] = R
        As[i, :R] = rel
        As[i, R:] = np.inf
    hists = np.zeros((m, 2 * R + 4), np.int32)
    tops = np.full((m, k), np.inf, np.float32)
    fr, br, cr = ns.finish_row, ns.buckets_range, ns.count_range

    @njit(nogil=True)
    def rows_order(dist, col, ra, lo, sc, top, tables, As, R, hists, tops, k, rowb, keyb, bminb, W, shared, reps):
        mm, nn = dist.shape
        for _ in range(reps):
            for i in range(mm):
                s = 0 if shared else i
                fr(dist[i], col, ra[i], True, True, rowb)
                br(rowb, lo[i], sc[i], top, keyb, bminb, W)
                cr(rowb, keyb, 0, nn, tables[s], As[s], hists[s])

    @njit(nogil=True)
    def block_order(buf, n, col, ra, lo, sc, top, tables, As, R, hists, tops, k, rowb, keyb, bminb, W):
        mm, B = buf.shape
        for j0 in range(0, n - B + 1, B):
            for i in range(mm):
                fr(buf[i], col[j0:j0 + B], ra[i], True, True, rowb[:B])
                br(rowb[:B], lo[i], sc[i], top, keyb[:B], bminb, W)
                cr(rowb, keyb, 0, B, tables[i], As[i], hists[i])

    rowb = np.empty(n, np.float32)
    keyb = np.empty(n, np.uint16)
    W = float_ranks.KNN_BLOCK
    bminb = np.empty(n // W + 1, np.int32)

    def run(fn, *a):
        def go():
            hists[:] = 0
            tops[:] = np.inf
            fn(*a)
        return go

    print("\nrank work (finish + bucket and block minima, table / histogram loop), ns per pair:")
    common = (col, ra, lo, sc, top, tables, As, R, hists, tops, k, rowb, keyb, bminb, W)
    t = best(run(rows_order, full, *common, True, 1), args.repeat)
    print(f"  row order, whole chunk from DRAM, state reused (the kernel now): {t * 1e9 / (m * n):.2f}")
    four = np.ascontiguousarray(full[:4])
    t = best(run(rows_order, four, *common, True, m // 4), args.repeat)
    print(f"  row order, 4 cache-resident rows repeated, state reused:          {t * 1e9 / (4 * (m // 4) * n):.2f}")
    for B in (512, 1024, 2048, 4096):
        buf = np.ascontiguousarray(full[:, :B])  # one cache-sized block, reused for every column block
        t = best(run(block_order, buf, n, *common), args.repeat)
        print(f"  column blocks of {B}, per-row state swapped in per block:      {t * 1e9 / (m * (n // B) * B):.2f}")
    print(f"\nper-row state of a blocked kernel: table {tables[0].nbytes // 1024} KB + relevant distances "
          f"{R * 4 // 1024} KB + histogram {hists[0].nbytes // 1024} KB per row, {m} rows; "
          f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
