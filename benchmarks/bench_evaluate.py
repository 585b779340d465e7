"""Benchmark of deephash_cli.metrics.evaluate_retrieval (a script, not a test).

Hamming part: random 64-bit codes, 10,000 queries x 50,000 database items, 10 classes.
  * our exact tie-aware mAP alone (distance pass + per-distance histograms + closed form),
  * the whole evaluate_retrieval call (adds mAP@K, precision@K, k-NN vote),
  * a plain reference: per query np.argsort of the Hamming distances and AP of that
    ranking.  It is timed on a subset of queries and extrapolated linearly (said so in
    the output).  On the subset it must reproduce our optimistic and pessimistic mAP
    exactly (relevant-first / relevant-last orderings inside ties); its index-order
    ("stable") mAP is shown for comparison with the tie-aware value.
Float part: peak extra memory (tracemalloc; inputs excluded) and time of a 10,000 x
50,000 x 128-d euclidean evaluation.

Usage: python benchmarks/bench_evaluate.py [--queries 10000] [--database 50000] [--subset 500]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from deephash_cli import metrics  # noqa: E402
from deephash_cli.codes import hamming_distances  # noqa: E402
from deephash_cli.metrics import evaluate_retrieval  # noqa: E402


def tie_aware_map_only(q_codes, q_lab, db_codes, db_lab, bits, chunk=None):
    """Our exact tie-aware mAP without the k-NN vote and without @K metrics."""
    n_db = db_codes.shape[0]
    chunk = chunk or metrics._default_chunk(n_db, 1 << 22)
    q_order = np.argsort(q_lab, kind="stable")
    present, counts = np.unique(db_lab, return_counts=True)
    count_of = dict(zip(present.tolist(), counts.tolist()))
    R = np.array([count_of.get(l, 0) for l in q_lab[q_order].tolist()], dtype=np.int64)
    ap = np.empty(q_lab.size)
    for c0, c1, groups, _ in metrics._hamming_pass(q_codes, q_lab, q_order, db_codes, db_lab, bits, None, chunk):
        ap[c0:c1] = metrics._group_metrics(*groups, c1 - c0, n_db, R[c0:c1], (), ()).ap
    return float(ap.mean())


def reference_argsort(q_codes, q_lab, db_codes, db_lab):
    """Per-query np.argsort reference: mean AP of the stable, optimistic, pessimistic orders."""
    dist = hamming_distances(q_codes, db_codes)
    out = {"stable": [], "optimistic": [], "pessimistic": []}
    for i in range(dist.shape[0]):
        d = dist[i]
        rel = db_lab == q_lab[i]
        R = int(rel.sum())
        orders = {
            "stable": np.argsort(d, kind="stable"),
            "optimistic": np.lexsort((~rel, d)),  # relevant first inside ties
            "pessimistic": np.lexsort((rel, d)),  # relevant last inside ties
        }
        for name, order in orders.items():
            r = rel[order]
            if R == 0:
                out[name].append(0.0)
                continue
            precision = np.cumsum(r) / np.arange(1, r.size + 1)
            out[name].append(float(precision[r].sum() / R))
    return {k: float(np.mean(v)) for k, v in out.items()}


def timed(fn, repeat=1):
    best, value = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--database", type=int, default=50_000)
    ap.add_argument("--subset", type=int, default=500, help="queries timed for the argsort reference")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="best-of repeats for the fast timings")
    ap.add_argument("--skip-float", action="store_true")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    nbytes = (args.bits + 7) // 8
    q = rng.integers(0, 256, (args.queries, nbytes), dtype=np.uint8)
    db = rng.integers(0, 256, (args.database, nbytes), dtype=np.uint8)
    if args.bits % 8:
        mask = np.uint8((0xFF << (8 - args.bits % 8)) & 0xFF)
        q[:, -1] &= mask
        db[:, -1] &= mask
    ql = rng.integers(0, args.classes, args.queries)
    dl = rng.integers(0, args.classes, args.database)
    pairs = args.queries * args.database

    print(f"# bench_evaluate: {args.queries:,} queries x {args.database:,} database, {args.bits}-bit codes, "
          f"{args.classes} classes ({pairs:.2e} pairs)")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start")

    t_map, map_value = timed(lambda: tie_aware_map_only(q, ql, db, dl, args.bits), args.repeat)
    t_full, res = timed(
        lambda: evaluate_retrieval(q, ql, db, dl, distance="hamming", bits=args.bits,
                                   map_at=(100, 1000), precision_at=(100,), knn_k=10),
        args.repeat,
    )
    assert abs(map_value - res.map) < 1e-12, (map_value, res.map)

    sub = min(args.subset, args.queries)
    t_ref_sub, ref = timed(lambda: reference_argsort(q[:sub], ql[:sub], db, dl))
    t_ref = t_ref_sub * args.queries / sub
    ours_sub = evaluate_retrieval(q[:sub], ql[:sub], db, dl, distance="hamming", bits=args.bits)
    d_opt = abs(ours_sub.map_optimistic - ref["optimistic"])
    d_pess = abs(ours_sub.map_pessimistic - ref["pessimistic"])
    agree = d_opt < 1e-9 and d_pess < 1e-9

    print()
    print("| measurement | seconds | notes |")
    print("|---|---:|---|")
    print(f"| tie-aware mAP only (ours) | {t_map:.2f} | best of {args.repeat}; mAP = {map_value:.6f} |")
    print(f"| full evaluate_retrieval, hamming | {t_full:.2f} | best of {args.repeat}; + mAP@100/1000, P@100, 10-NN |")
    print(f"| argsort reference (extrapolated) | {t_ref:.2f} | measured {t_ref_sub:.2f} s on {sub} queries x "
          f"{args.queries / sub:.0f}; one stable argsort per query |")
    print(f"| speed ratio reference / ours (mAP) | {t_ref / t_map:.1f}x | full call: {t_ref / t_full:.1f}x |")
    print()
    print(f"agreement on the {sub}-query subset: optimistic |diff| = {d_opt:.1e}, pessimistic |diff| = {d_pess:.1e} "
          f"-> {'OK' if agree else 'MISMATCH'}")
    print(f"subset mAP: tie-aware {ours_sub.map:.6f}, optimistic {ours_sub.map_optimistic:.6f}, pessimistic "
          f"{ours_sub.map_pessimistic:.6f}, index-order (stable argsort) {ref['stable']:.6f}")
    print(f"full-run metrics: {res.to_dict()}")

    if not args.skip_float:
        fq = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
        fdb = rng.normal(size=(args.database, args.dim)).astype(np.float32)
        input_mb = (fq.nbytes + fdb.nbytes) / 2**20
        tracemalloc.start()
        t0 = time.perf_counter()
        fres = evaluate_retrieval(fq, ql, fdb, dl, distance="euclidean", map_at=(100,), precision_at=(100,))
        t_float = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print()
        print("| float evaluation (euclidean) | value |")
        print("|---|---:|")
        print(f"| shape | {args.queries:,} x {args.database:,} x {args.dim} |")
        print(f"| seconds | {t_float:.2f} |")
        print(f"| peak traced extra memory (tracemalloc, inputs excluded) | {peak / 2**20:.0f} MB |")
        print(f"| inputs | {input_mb:.0f} MB |")
        print(f"| process max RSS (whole script) | {rss:.0f} MB |")
        print(f"float metrics: map={fres.map:.6f} knn_accuracy={fres.knn_accuracy:.4f}")
    if not agree:
        sys.exit(1)


if __name__ == "__main__":
    main()
