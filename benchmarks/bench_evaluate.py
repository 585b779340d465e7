"""Benchmark of deephash_cli.metrics.evaluate_retrieval (a script, not a test).

Hamming part: random 64-bit codes, 10,000 queries x 50,000 database items, 10 classes.
  * our exact tie-aware mAP alone (distance pass + per-distance histograms + closed form),
  * the whole evaluate_retrieval call (adds mAP@K, precision@K, k-NN vote),
  * a plain reference: per query np.argsort of the Hamming distances and AP of that
    ranking.  It is timed on a subset of queries and extrapolated linearly (said so in
    the output).  On the subset it must reproduce our optimistic and pessimistic mAP
    exactly (relevant-first / relevant-last orderings inside ties); its index-order
    ("stable") mAP is shown for comparison with the tie-aware value.
Float part: 10,000 x 50,000 x 128-d euclidean features (normal), 10 classes, in one run:
  * the bare matrix product (query @ database.T, float32) and the full evaluate_retrieval call
    (mAP@all, mAP@1000, precision@100, 10-NN) with the numba kernel (DEEPHASH_KERNELS=numba; its
    first call, which compiles or loads the cached code, is timed separately on 2 queries) in
    --float-repeat rounds of two matmuls and one evaluate call, each the best of its calls, so
    that both see the same stretches of a shared machine's noise (without numba: the best of
    --float-repeat matmuls); then the numpy path (DEEPHASH_KERNELS=numpy; best of
    --float-repeat), each with its ratio to the bare matrix product, and the max |difference|
    of every result field between the two,
  * two lower bounds in evaluate_retrieval's own pipeline (``distance_floor``): the chunked
    matmul with the finishing into distances and one read of them, and the same plus the
    least per-pair work of a bucket-table rank count (bucket, one table gather, one histogram),
  * pytorch-metric-learning's AccuracyCalculator on the same arrays (if installed),
  * the previous implementation of the float path (sort-based, copied below as
    ``legacy_*`` from the commit before the bucket tables): the max |difference| of every
    result field,
  * peak extra memory of our call (tracemalloc; inputs excluded).

Usage: python benchmarks/bench_evaluate.py [--queries 10000] [--database 50000] [--subset 500]
       [--skip-hamming] [--skip-float] [--skip-legacy] [--skip-pml] [--skip-numba]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from deephash_cli import float_ranks, metrics  # noqa: E402
from deephash_cli.errors import DeephashError  # noqa: E402
from deephash_cli.codes import hamming_distances  # noqa: E402
from deephash_cli.metrics import (  # noqa: E402
    _KNN_BLOCK_PAIRS,
    _PerQuery,
    _harmonic_diff,
    _label_runs,
    _pipelined,
    _workers,
    evaluate_retrieval,
)


# --------------------------------------------------------------------------------------
# The float path before the bucket tables (deephash_cli/metrics.py at commit 3881cbb),
# copied verbatim except for the legacy_ prefix; helpers that did not change are imported.
# It sorts every distance row (np.sort) and binary-searches the sorted relevant distances.
# --------------------------------------------------------------------------------------


def legacy_group_metrics(
    row: np.ndarray,
    before: np.ndarray,
    size: np.ndarray,
    rel_before: np.ndarray,
    rel: np.ndarray,
    n_rows: int,
    n_db: int,
    R: np.ndarray,
    map_ks: tuple[int, ...],
    prec_ks: tuple[int, ...],
) -> _PerQuery:
    """Exact tie-aware AP, optimistic/pessimistic AP, AP@K and precision@K from tie groups.

    Each entry describes one tie group that holds at least one relevant item (groups
    without relevant items contribute nothing to any of these metrics):
    row (g,) int64 query row; before (g,) int64 items ranked before the group (N);
    size (g,) int64 group size (m); rel_before (g,) int64 relevant items before it (Rb);
    rel (g,) int64 relevant items in it (r).  R (n_rows,) relevant items per query.
    Returns per-query arrays of length n_rows.
    """
    Rf = R.astype(np.float64)
    has_rel = R > 0

    def mean_over(total: np.ndarray, denom: np.ndarray) -> np.ndarray:
        return np.where(has_rel, total / np.maximum(denom, 1.0), 0.0)

    # Singleton groups (no tie; with float features almost all of them) have r = m = 1 and
    # contribute P(N+1) = (Rb+1)/(N+1) to every AP variant; only true ties need the sums.
    single = size == 1
    s_row, s_N = row[single], before[single].astype(np.float64)
    s_val = (rel_before[single] + 1.0) / (s_N + 1.0)
    multi = ~single
    row, N, m, Rb, r = row[multi], before[multi], size[multi], rel_before[multi], rel[multi]
    mf = m.astype(np.float64)
    rf = r.astype(np.float64)
    p1 = rf / mf  # E[rel(k)] inside the group
    p2 = rf * (rf - 1.0) / (mf * (mf - 1.0))  # E[rel(j) rel(k)], j != k, inside the group

    def expected_sum(first: np.ndarray) -> np.ndarray:
        """E[Σ_{i=1..first} P(N+i) rel(N+i)] over the group's first ``first`` positions."""
        s0 = _harmonic_diff(N, N + first)  # Σ_{i=1..first} 1/(N+i)
        # Σ_{i=1..first} (i−1)/(N+i) = first − (N+1)·s0
        return p1 * (Rb + 1) * s0 + p2 * np.maximum(first - (N + 1) * s0, 0.0)

    def per_row(single_values: np.ndarray, multi_values: np.ndarray) -> np.ndarray:
        return np.bincount(s_row, weights=single_values, minlength=n_rows) + np.bincount(
            row, weights=multi_values, minlength=n_rows
        )

    ap = mean_over(per_row(s_val, expected_sum(m)), Rf)
    # Relevant first: ranks N+1..N+r hold relevant items, Σ (Rb+i)/(N+i) = r − (N−Rb)·Σ_{N+1..N+r} 1/k.
    opt = rf - (N - Rb) * _harmonic_diff(N, N + r)
    # Relevant last: ranks N+m−r+1..N+m, Σ (Rb+t)/(N+m−r+t) = r − (N+m−r−Rb)·Σ_{N+m−r+1..N+m} 1/k.
    pess = rf - (N + m - r - Rb) * _harmonic_diff(N + m - r, N + m)
    out = _PerQuery(ap=ap, ap_opt=mean_over(per_row(s_val, opt), Rf), ap_pess=mean_over(per_row(s_val, pess), Rf))
    for K in map_ks:
        first = np.clip(K - N, 0, m)
        out.ap_at[K] = mean_over(per_row(np.where(s_N < K, s_val, 0.0), expected_sum(first)), np.minimum(Rf, float(K)))
    for K in prec_ks:
        Kc = min(K, n_db)
        first = np.clip(Kc - N, 0, m)
        out.prec_at[K] = per_row((s_N < Kc).astype(np.float64), rf * first / mf) / Kc
    return out


def legacy_knn_predict(
    dist: np.ndarray,
    kth: np.ndarray,
    k: int,
    db_labels: np.ndarray,
    exclude_cols: np.ndarray | None = None,
) -> np.ndarray:
    """Tie-aware majority-vote label of the k nearest database items for every row of ``dist``.

    dist (q, n) real or unsigned; kth (q,) same dtype, the k-th smallest distance of each
    row; db_labels (n,) int64 label of each column; exclude_cols (q,) int64 optional column
    that row i must not use (leave-one-out). Returns (q,) int64.

    Items closer than the k-th distance vote 1 each; the ``k - n_closer`` remaining votes are
    shared equally by the items *at* the k-th distance (the expected vote over all orderings
    of that tie group, so neither database order nor label order decides a tie). The label
    with most votes wins; equal votes go to the label with the nearest member, then to the
    smallest label.
    """
    q, n = dist.shape
    classes, db_codes = np.unique(db_labels, return_inverse=True)
    n_cls = classes.size
    pred = np.empty(q, dtype=np.int64)
    step = max(1, _KNN_BLOCK_PAIRS // max(n, 1))
    for start in range(0, q, step):
        block = dist[start : start + step]
        m = block.shape[0]
        # np.flatnonzero is ~10x faster than 2-D np.nonzero here.
        flat = np.flatnonzero(block <= kth[start : start + step, None])
        rows, cols = np.divmod(flat, n)
        if exclude_cols is not None:
            keep = cols != exclude_cols[start + rows]
            flat, rows, cols = flat[keep], rows[keep], cols[keep]
        d = block.ravel()[flat]
        closer = d < kth[start + rows]
        n_closer = np.bincount(rows[closer], minlength=m)
        n_tied = np.bincount(rows[~closer], minlength=m)
        share = (k - n_closer) / np.maximum(n_tied, 1)
        weight = np.where(closer, 1.0, share[rows])
        key = rows * n_cls + db_codes[cols]
        votes = np.bincount(key, weights=weight, minlength=m * n_cls).reshape(m, n_cls)
        # Nearest member of each (row, label): sort by (key, distance), first of each key.
        order = np.lexsort((d, key))
        first = np.ones(order.size, dtype=bool)
        first[1:] = key[order][1:] != key[order][:-1]
        nearest = np.full(m * n_cls, np.inf)
        nearest[key[order][first]] = d[order][first]
        nearest = nearest.reshape(m, n_cls)
        # Shares are rationals summed in float64: equal votes may differ in the last bits.
        leading = votes >= votes.max(axis=1, keepdims=True) - 1e-9
        pred[start : start + m] = classes[np.argmin(np.where(leading, nearest, np.inf), axis=1)]
    return pred


def legacy_groups_from_sorted(sorted_all: np.ndarray, rel_sorted: np.ndarray, has_ties: bool):
    """Tie groups with relevant items of one query with float distances.

    sorted_all (n,) all distances ascending; rel_sorted (R,) distances of the relevant
    items ascending.  Returns (before, size, rel_before, rel) int64 arrays, one per distinct
    relevant distance.
    """
    right = np.searchsorted(sorted_all, rel_sorted, side="right")
    if not has_ties:
        # All distances distinct: every relevant item is its own group of size 1.
        ones = np.ones(rel_sorted.size, dtype=np.int64)
        return right - 1, ones, np.arange(rel_sorted.size, dtype=np.int64), ones
    first = np.ones(rel_sorted.size, dtype=bool)
    first[1:] = rel_sorted[1:] != rel_sorted[:-1]
    f = np.flatnonzero(first)
    left = np.searchsorted(sorted_all, rel_sorted[f], side="left")
    rel = np.diff(np.append(f, rel_sorted.size))
    return left, right[f] - left, f, rel


def legacy_concat_groups(parts: list[tuple[np.ndarray, ...]]):
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty
    return tuple(np.concatenate([p[i] for p in parts]).astype(np.int64, copy=False) for i in range(5))


def legacy_float_pass(qf, q_lab, q_order, dbf, db_lab, label_members, distance, k, chunk, exclude_self=False):
    """Yield (c0, c1, tie groups, k-NN predictions) per chunk of rows c0:c1 of ``q_order``.

    Per query chunk: distances by one matmul, an ascending sort of every row, and of the
    relevant block; each distinct relevant distance is then located in the sorted row
    (binary search) to get its tie group's position and size.
    """
    n_q = q_order.size
    q_lab_sorted = q_lab[q_order]
    if distance == "euclidean":
        db_sq = np.einsum("ij,ij->i", dbf, dbf)
    else:
        norms = np.sqrt(np.einsum("ij,ij->i", dbf, dbf, dtype=np.float64))
        # Zero vectors get similarity 0 with everything (distance 1), never NaN.
        db_inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)
    starts = list(range(0, n_q, chunk))

    def process(i: int):
        c0 = starts[i]
        c1 = min(c0 + chunk, n_q)
        qc = qf[q_order[c0:c1]]
        dist = qc @ dbf.T  # (rows, n) float32
        if distance == "euclidean":
            # ||q||^2 + ||d||^2 - 2 q.d, clamped at 0 against rounding (as faiss does).
            dist *= -2.0
            dist += db_sq[None, :]
            dist += np.einsum("ij,ij->i", qc, qc)[:, None]
            np.maximum(dist, 0.0, out=dist)
        else:
            # Rank by -cos (same order as 1 - cos, one rounding fewer).
            q_norm = np.sqrt(np.einsum("ij,ij->i", qc, qc, dtype=np.float64))
            q_inv = np.where(q_norm > 0, 1.0 / np.where(q_norm > 0, q_norm, 1.0), 0.0).astype(np.float32)
            dist *= db_inv[None, :]
            dist *= -q_inv[:, None]
            dist += 0.0  # turn -0.0 into +0.0 so equal similarities compare and sort as equal
        if exclude_self:
            # Leave-one-out: the own item moves behind every finite distance, so it is the
            # last relevant group of its row (dropped below) and never a k-NN candidate.
            dist[np.arange(c1 - c0), q_order[c0:c1]] = np.inf
        sorted_all = np.sort(dist, axis=1)
        has_ties = np.any(sorted_all[:, 1:] == sorted_all[:, :-1], axis=1)
        parts = []
        for a, b in _label_runs(q_lab_sorted[c0:c1]):
            members = label_members.get(int(q_lab_sorted[c0 + a]))
            if members is None:
                continue
            rel_sorted = np.sort(dist[a:b][:, members], axis=1)
            for r in range(a, b):
                before, size, rel_before, rel = legacy_groups_from_sorted(sorted_all[r], rel_sorted[r - a], bool(has_ties[r]))
                if exclude_self:
                    before, size, rel_before, rel = before[:-1], size[:-1], rel_before[:-1], rel[:-1]
                parts.append((np.full(before.size, r, dtype=np.int64), before, size, rel_before, rel))
        return c0, c1, legacy_concat_groups(parts), legacy_knn_predict(dist, sorted_all[:, k - 1], k, db_lab)

    yield from _pipelined(process, len(starts), _workers(len(starts)))


def legacy_float_evaluate(query, query_labels, database, database_labels, *, distance, map_at, precision_at, knn_k):
    """evaluate_retrieval's float branch before the bucket tables (no validation, no
    leave-one-out): the same fields as RetrievalResult.to_dict()."""
    q_lab = np.asarray(query_labels, dtype=np.int64)
    db_lab = np.asarray(database_labels, dtype=np.int64)
    qf = np.asarray(query, dtype=np.float32)
    dbf = np.asarray(database, dtype=np.float32)
    n_q, n_db = qf.shape[0], dbf.shape[0]
    map_ks, prec_ks = tuple(map_at), tuple(precision_at)
    k = int(min(knn_k, n_db))
    q_order = np.argsort(q_lab, kind="stable")
    present, counts = np.unique(db_lab, return_counts=True)
    pos = np.minimum(np.searchsorted(present, q_lab), present.size - 1)
    R = np.where(present[pos] == q_lab, counts[pos], 0).astype(np.int64)
    chunk = metrics._default_chunk(n_db, 1 << 23)
    db_order = np.argsort(db_lab, kind="stable")
    db_sorted_lab = db_lab[db_order]
    label_members = {int(db_sorted_lab[a]): db_order[a:b] for a, b in _label_runs(db_sorted_lab)}
    R_sorted = R[q_order]
    ap, ap_opt, ap_pess = (np.empty(n_q) for _ in range(3))
    ap_at = {K: np.empty(n_q) for K in map_ks}
    prec = {K: np.empty(n_q) for K in prec_ks}
    pred = np.empty(n_q, dtype=np.int64)
    passes = legacy_float_pass(qf, q_lab, q_order, dbf, db_lab, label_members, distance, k, chunk)
    for c0, c1, groups, chunk_pred in passes:
        per_q = legacy_group_metrics(*groups, c1 - c0, n_db, R_sorted[c0:c1], map_ks, prec_ks)
        ap[c0:c1], ap_opt[c0:c1], ap_pess[c0:c1] = per_q.ap, per_q.ap_opt, per_q.ap_pess
        for K in map_ks:
            ap_at[K][c0:c1] = per_q.ap_at[K]
        for K in prec_ks:
            prec[K][c0:c1] = per_q.prec_at[K]
        pred[c0:c1] = chunk_pred
    return {
        "map": float(ap.mean()),
        "map_optimistic": float(ap_opt.mean()),
        "map_pessimistic": float(ap_pess.mean()),
        "map_at": {str(K): float(v.mean()) for K, v in ap_at.items()},
        "precision_at": {str(K): float(v.mean()) for K, v in prec.items()},
        "knn_accuracy": float(np.mean(pred == q_lab[q_order])),
        "knn_k": k,
        "queries": n_q,
        "database": n_db,
        "queries_without_relevant": int(np.count_nonzero(R == 0)),
        "distance": distance,
    }


def distance_floor(fq, fdb, with_lookup: bool) -> None:
    """Lower bounds for the float path, run in the same pipeline as evaluate_retrieval's
    euclidean pass (same chunk size, worker threads and BLAS threads per worker): every
    chunk's matmul, the finishing into distances (two adds per pair) and a row maximum and
    minimum per block of rows, i.e. the distance matrix computed and read once, with no rank
    work.  ``with_lookup`` adds the least per-pair work of a bucket-table rank count: each
    distance's bucket, one gather from a table of 65,536 entries per row, and one histogram
    (torch.bincount) of the gathered values."""
    import torch

    n_q, n = fq.shape[0], fdb.shape[0]
    chunk = metrics._default_chunk(n, metrics._FLOAT_CHUNK_PAIRS)
    starts = list(range(0, n_q, chunk))
    workers = _workers(len(starts))
    db_sq = np.einsum("ij,ij->i", fdb, fdb)
    rows, G = metrics._FLOAT_BLOCK_ROWS, metrics._FLOAT_BUCKETS
    table = np.random.default_rng(0).integers(0, 5000, rows * G).astype(np.int32)
    offsets = (np.arange(rows) * G).astype(np.int32)[:, None]
    free = [(np.empty((min(chunk, n_q), n), np.float32), np.empty((rows, n), np.float32),
             np.empty((rows, n), np.int32), np.empty((rows, n), np.int32)) for _ in range(workers)]

    def process(i):
        dist, scaled, idx, got = free.pop()
        c0, c1 = starts[i], min(starts[i] + chunk, n_q)
        qc = fq[c0:c1]
        np.matmul(qc * np.float32(-2.0), fdb.T, out=dist[: c1 - c0])
        q_sq = np.einsum("ij,ij->i", qc, qc)
        for r0 in range(0, c1 - c0, rows):
            D = dist[r0 : min(r0 + rows, c1 - c0)]
            nb = D.shape[0]
            D += db_sq[None, :]
            D += q_sq[r0 : r0 + nb, None]
            lo, hi = D.min(axis=1), D.max(axis=1)
            if with_lookup:
                scale = ((G - 2) / np.maximum(hi.astype(np.float64) - lo, 1e-30)).astype(np.float32)
                np.subtract(D, lo[:, None], out=scaled[:nb])
                np.multiply(scaled[:nb], scale[:, None], out=idx[:nb], casting="unsafe")
                idx[:nb] += offsets[:nb]
                metrics._gather(table, idx[:nb], got[:nb])
                torch.bincount(torch.from_numpy(got[:nb].reshape(-1)), minlength=5000)
        free.append((dist, scaled, idx, got))

    with metrics._blas_threads(max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None), \
            metrics._torch_one_thread():
        for _ in _pipelined(process, len(starts), workers):
            pass


def field_differences(ours: dict, ref: dict) -> dict:
    """|ours - ref| of every numeric field of two RetrievalResult.to_dict()-like dicts."""
    out = {}
    for key, value in ours.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                out[f"{key}[{sub}]"] = abs(v - ref[key][sub])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = abs(value - ref[key])
        else:
            assert value == ref[key], (key, value, ref[key])
    return out


def pml_accuracy(q, ql, db, dl, k):
    """pytorch-metric-learning's AccuracyCalculator (mean_average_precision, precision_at_1)
    with k neighbours; None if the package is not installed."""
    try:
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    except ImportError:
        return None
    calc = AccuracyCalculator(include=("mean_average_precision", "precision_at_1"), k=k, device=torch_cpu())
    return calc.get_accuracy(q, ql, db, dl, ref_includes_query=False)


def torch_cpu():
    import torch

    return torch.device("cpu")


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


@contextlib.contextmanager
def kernels(name: str):
    """Run evaluate_retrieval's float path with DEEPHASH_KERNELS=name, restoring the setting after."""
    before = os.environ.get(float_ranks.KERNELS_ENV)
    os.environ[float_ranks.KERNELS_ENV] = name
    try:
        yield
    finally:
        if before is None:
            del os.environ[float_ranks.KERNELS_ENV]
        else:
            os.environ[float_ranks.KERNELS_ENV] = before


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
    ap.add_argument("--repeat", type=int, default=3, help="best-of repeats for the fast hamming timings")
    ap.add_argument("--float-repeat", type=int, default=3, help="best-of repeats for the matmul and float evaluate")
    ap.add_argument("--pml-k", type=int, default=1000, help="neighbours for pytorch-metric-learning")
    ap.add_argument("--skip-hamming", action="store_true")
    ap.add_argument("--skip-float", action="store_true")
    ap.add_argument("--skip-legacy", action="store_true", help="do not run the previous float implementation")
    ap.add_argument("--skip-pml", action="store_true")
    ap.add_argument("--skip-numba", action="store_true", help="do not time the numba kernel")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    pairs = args.queries * args.database
    print(f"# bench_evaluate: {args.queries:,} queries x {args.database:,} database, {args.classes} classes "
          f"({pairs:.2e} pairs)")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    ok = True
    if not args.skip_hamming:
        ok = hamming_section(args, rng)
    if not args.skip_float:
        float_section(args)
    if not ok:
        sys.exit(1)


def hamming_section(args, rng) -> bool:
    nbytes = (args.bits + 7) // 8
    q = rng.integers(0, 256, (args.queries, nbytes), dtype=np.uint8)
    db = rng.integers(0, 256, (args.database, nbytes), dtype=np.uint8)
    if args.bits % 8:
        mask = np.uint8((0xFF << (8 - args.bits % 8)) & 0xFF)
        q[:, -1] &= mask
        db[:, -1] &= mask
    ql = rng.integers(0, args.classes, args.queries)
    dl = rng.integers(0, args.classes, args.database)

    print()
    print(f"## Hamming: {args.bits}-bit codes")
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
    return agree


def float_section(args) -> None:
    rng = np.random.default_rng(1)
    fq = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    fdb = rng.normal(size=(args.database, args.dim)).astype(np.float32)
    ql = rng.integers(0, args.classes, args.queries)
    dl = rng.integers(0, args.classes, args.database)
    kw = dict(distance="euclidean", map_at=(1000,), precision_at=(100,), knn_k=10)
    rep = args.float_repeat

    print()
    print(f"## Float features: {args.queries:,} x {args.database:,} x {args.dim}, euclidean, "
          f"mAP@all + mAP@1000 + P@100 + 10-NN")

    def matmul():
        out = fq @ fdb.T
        del out

    # Compiled path (numba, if installed): the first call includes compiling or loading the
    # cached machine code.  Then `rep` rounds of two bare matmuls and one evaluate call, so that
    # both are timed across the same stretch of this shared machine's noise; each is the best of
    # its calls (the matmul the best of 2 * rep: the first of a round follows an evaluate call and
    # is the slower one, the second follows a matmul as in a block of matmuls).
    compiled = None
    rounds = []
    if not args.skip_numba:
        with kernels("numba"):
            try:
                t_first, _ = timed(lambda: evaluate_retrieval(fq[:2], ql[:2], fdb, dl, **kw))
                for _ in range(rep):
                    t_a, _ = timed(matmul)
                    t_b, _ = timed(matmul)
                    t_e, res_fast = timed(lambda: evaluate_retrieval(fq, ql, fdb, dl, **kw))
                    rounds.append((min(t_a, t_b), t_e))
                compiled = (t_first, min(t for _, t in rounds), res_fast.to_dict())
            except DeephashError as exc:
                print(f"numba path skipped: {exc}")
    t_gemm = min(g for g, _ in rounds) if rounds else timed(matmul, rep)[0]
    with kernels("numpy"):
        t_eval, res = timed(lambda: evaluate_retrieval(fq, ql, fdb, dl, **kw), rep)
    t_floor, _ = timed(lambda: distance_floor(fq, fdb, False), rep)
    t_lookup, _ = timed(lambda: distance_floor(fq, fdb, True), rep)
    ours = res.to_dict()

    t_pml = pml = None
    if not args.skip_pml:
        t_pml, pml = timed(lambda: pml_accuracy(fq, ql, fdb, dl, args.pml_k))

    t_legacy = diffs = None
    if not args.skip_legacy:
        t_legacy, legacy = timed(lambda: legacy_float_evaluate(fq, ql, fdb, dl, **kw))
        diffs = field_differences(ours, legacy)

    input_mb = (fq.nbytes + fdb.nbytes) / 2**20
    peaks = {}
    for name in ("numba", "numpy") if compiled else ("numpy",):
        with kernels(name):
            tracemalloc.start()
            evaluate_retrieval(fq, ql, fdb, dl, **kw)
            _, peaks[name] = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print()
    print("| measurement | seconds | notes |")
    print("|---|---:|---|")
    print(f"| bare matmul `query @ database.T` (float32) | {t_gemm:.2f} | best of {2 * len(rounds) or rep}; "
          f"allocates the {args.queries * args.database * 4 / 2**30:.1f} GiB result |")
    if compiled:
        t_first, t_fast, _ = compiled
        per_round = sorted(e / g for g, e in rounds)
        print(f"| evaluate_retrieval, euclidean, numba kernel (ours) | {t_fast:.2f} | best of {rep} after a first "
              f"call, in rounds with the matmul; {metrics._workers(2)} worker threads |")
        print(f"| ratio numba evaluate / bare matmul | {t_fast / t_gemm:.2f}x | per round (evaluate / faster matmul "
              f"of the round): {per_round[0]:.2f}-{per_round[-1]:.2f}x, median {np.median(per_round):.2f}x |")
        print(f"| first numba call (2 queries): compile or load cached code | {t_first:.2f} | one run |")
    print(f"| evaluate_retrieval, euclidean, numpy path (DEEPHASH_KERNELS=numpy) | {t_eval:.2f} | best of {rep}; "
          f"{metrics._workers(2)} worker threads |")
    print(f"| ratio numpy evaluate / bare matmul | {t_eval / t_gemm:.2f}x | |")
    print(f"| floor: evaluate's chunked matmul + finishing + row min/max, no rank work | {t_floor:.2f} | "
          f"best of {rep}; same chunks, workers and BLAS threads; {t_floor / t_gemm:.2f}x the bare matmul |")
    print(f"| floor + bucket index, one table gather, one histogram per pair | {t_lookup:.2f} | "
          f"best of {rep}; least rank work of a bucket-table count; {t_lookup / t_gemm:.2f}x the bare matmul |")
    if t_pml is not None:
        if pml is None:
            print("| pytorch-metric-learning AccuracyCalculator | - | not installed |")
        else:
            print(f"| pytorch-metric-learning AccuracyCalculator | {t_pml:.2f} | one run; k = {args.pml_k}, "
                  f"mean_average_precision + precision_at_1 (faiss k-NN) |")
    if t_legacy is not None:
        print(f"| previous float implementation (sort-based) | {t_legacy:.2f} | one run; copy in this script |")
    print()
    print(f"ours (numpy path): {ours}")
    if compiled:
        print(f"ours (numba kernel): {compiled[2]}")
        fast_diffs = field_differences(compiled[2], ours)
        print()
        print("max |numba kernel - numpy path| per field:")
        for key, value in fast_diffs.items():
            print(f"  {key}: {value:.3g}")
        print(f"  max over all fields: {max(fast_diffs.values()):.3g}")
    if pml is not None:
        print(f"pytorch-metric-learning (k={args.pml_k}): {pml}  "
              f"(its mean_average_precision is AP over the top k divided by R, all relevant items; "
              f"our mAP@{args.pml_k} divides by min(R, {args.pml_k}))")
    if diffs is not None:
        print()
        print("max |ours - previous implementation| per field:")
        for key, value in diffs.items():
            print(f"  {key}: {value:.3g}")
        print(f"  max over all fields: {max(diffs.values()):.3g}")
    print()
    print("memory: peak traced extra memory of our call " + ", ".join(f"{name} {peak / 2**20:.0f} MB" for name, peak
                                                                       in peaks.items())
          + f" (tracemalloc, inputs of {input_mb:.0f} MB excluded; the numba kernel allocates nothing itself); "
          f"process max RSS {rss:.0f} MB (whole script, includes the bare matmul's result)")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
