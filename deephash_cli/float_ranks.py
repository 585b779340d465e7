r"""Compiled rank work of the float evaluation path (optional: needs numba, the ``fast`` extra).

:func:`deephash_cli.metrics.evaluate_retrieval` computes a chunk of float distances with one
matmul.  Everything after the matmul is per query row and is done here in compiled loops
instead of about twenty numpy passes; the results are the same numbers (the tie-aware
definitions are in :mod:`deephash_cli.metrics`).

Per row (n database items, R relevant ones, G value buckets):

1. Finish every matmul output of the row into a float32 distance exactly as the numpy path
   does (euclidean: ``((-2 q·d) + ‖d‖²) + ‖q‖²`` then ``max(·, 0)``; cosine:
   ``((q·d) · 1/‖d‖) · (−1/‖q‖) + 0``; no fused multiply-add: numba does not contract without
   fastmath), in one vectorized loop; gather the relevant ones and take their range [lo, hi].
2. Sort the relevant distances into A by a counting sort over G buckets of [lo, hi]; its
   exclusive prefix sum of the counts is the table: for bucket u, the index in A of the first
   relevant distance at or above u (stored as -1 - it when the bucket holds 3 or more).  The
   buckets reaching 2 are listed while counting and sorted exactly after the scatter (insertion
   sort, np.sort for long runs).  The bucket ``min(max(trunc((d − lo) · (G − 2) / (hi − lo)), 0), G − 1)``
   is non-decreasing in d, so an item in a lower bucket is strictly closer; distances outside
   [lo, hi] clamp to the end buckets, which is still exact.
3. a. One vectorized loop computes every item's bucket, and the smallest bucket of each block
   of KNN_BLOCK items.  Those minima belong to distinct items, so the k-th smallest of them, B,
   is at least the bucket of the k-th smallest distance; the k-NN candidates are the items of
   buckets <= B (found in the blocks whose minimum is <= B) at or below the k-th smallest
   distance seen so far (a running top k).
   b. One scalar loop: q = number of relevant distances <= d is the table entry s plus
   ``d >= A[s]`` plus ``d >= A[s+1]`` (a linear scan of the bucket for the rare crowded ones;
   A ends with +inf); a histogram over (q, whether d equals one of them) counts every item.
4. Walk the sorted relevant distances: a group of equal relevant distances A[a:e] is preceded
   by the items counted at q <= a and holds the items counted at (e, equal).  A relevant item
   alone in its group adds ``(a + 1) / (N + 1)`` to the AP sums, AP@K and P@K; true tie groups
   are returned as (row, N, m, Rb, r) for the caller's closed forms
   (:func:`deephash_cli.metrics._tie_group_terms`).  The k-th smallest distance is the last of
   the running top k; candidates up to it are returned for the caller's tie-aware vote.

Outputs go to buffers the caller allocates (so tracemalloc sees them); the kernel stops before
a row whose worst case would not fit and the caller drains the buffers and continues from that
row.  The loops live in :mod:`deephash_cli.float_ranks_jit`, compiled with ``cache=True``.

:func:`kernel` selects the implementation; ``DEEPHASH_KERNELS=numpy`` forces the numpy path.
"""

from __future__ import annotations

import os

import numpy as np

from deephash_cli.errors import DeephashError

__all__ = ["kernel", "KERNELS_ENV", "FloatRankScratch", "rank_chunk"]

# Environment variable choosing the float rank implementation: "numba", "numpy" or unset (auto).
KERNELS_ENV = "DEEPHASH_KERNELS"
# Buckets per row: a power of two of at least BUCKETS_PER_RELEVANT times the largest relevant
# count R, so that few items fall in a bucket holding 3 or more relevant distances (the slow
# path) while the O(G) table fill stays small against the O(n) counting pass.  Measured on
# CIFAR-10-sized rows (R <= 5,091, n = 50,000, one thread; benchmarks/bench_float_buckets.py,
# benchmarks/RESULTS.md, session 8): G = 32,768 3.76 ns per pair, 65,536 3.80, 16,384 4.49, 8,192 7.28.
BUCKETS_PER_RELEVANT = 4
MAX_BUCKETS = 1 << 16
# Items per block of the k-NN bound (the smallest bucket of each block is kept).
KNN_BLOCK = 128
# The bucket table is int16 up to this many relevant items per row (its entries lie in [-1 - R, R]).
TABLE_INT16_MAX_R = (1 << 15) - 2

# "auto" uses the compiled kernel from this many query-database pairs on.  A process pays about
# 1.6-1.8 s to import numba and load the cached machine code (measured on an idle 2-core machine,
# benchmarks/RESULTS.md, session 8), and the kernel saves 4.5-5.2 ns per pair against the numpy
# path (1.77-1.89 s against 4.04-4.48 s at 5e8 pairs): break-even near 3-4e8 pairs, a clear gain
# from 1e9.
AUTO_MIN_PAIRS = 1_000_000_000

_compiled = None  # the numba kernel once loaded (or False when numba is missing)


def _load():
    """The compiled kernel (numba compiles it once and caches it on disk); ImportError without numba."""
    from deephash_cli import float_ranks_jit

    return float_ranks_jit.rank_rows


def kernel(pairs: int | None = None):
    """The compiled rank kernel, or None for the numpy path.

    ``DEEPHASH_KERNELS`` = ``numpy`` forces the numpy path, ``numba`` requires numba, unset or
    ``auto`` uses numba when it is importable and the evaluation has at least
    :data:`AUTO_MIN_PAIRS` query-database ``pairs`` (None: any size).  numba is imported only
    on first use.
    """
    global _compiled
    choice = os.environ.get(KERNELS_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "numba", "numpy"):
        raise DeephashError(f"{KERNELS_ENV} must be 'auto', 'numba' or 'numpy', got {choice!r}.")
    if choice == "numpy" or (choice == "auto" and pairs is not None and pairs < AUTO_MIN_PAIRS):
        return None
    if _compiled is None:
        try:
            _compiled = _load()
        except ImportError:
            _compiled = False
    if _compiled is False and choice == "numba":
        raise DeephashError(f"{KERNELS_ENV}=numba but numba is not installed; install the 'fast' extra.")
    return _compiled or None


def buckets_for(r_max: int) -> int:
    """Buckets per row when rows have at most r_max relevant items: the power of two >=
    BUCKETS_PER_RELEVANT · r_max, between 4 and MAX_BUCKETS."""
    want = max(4, BUCKETS_PER_RELEVANT * int(r_max))
    return int(min(MAX_BUCKETS, 1 << (want - 1).bit_length()))


class FloatRankScratch:
    """Buffers of one worker of the compiled float pass (all allocated here, by numpy).

    rows, n: chunk shape; r_max: most relevant items of a row; k: voting neighbours;
    n_sums: per-row sum columns (1 + number of mAP@K + number of P@K); G: buckets.
    """

    def __init__(self, rows: int, n: int, r_max: int, k: int, n_sums: int, G: int):
        self.dist = np.empty((rows, n), dtype=np.float32)
        self.row = np.empty(n, dtype=np.float32)  # one row's distances
        # The counting pass reads keys, table and hist at random: the narrowest dtypes that hold
        # their values keep more of them in the first-level cache (benchmarks/RESULTS.md).
        self.keys = np.empty(n, dtype=np.uint16)  # every item's bucket (G <= MAX_BUCKETS = 2**16)
        self.bmin = np.empty(n // KNN_BLOCK + 1, dtype=np.int32)  # each KNN_BLOCK items' smallest bucket
        self.count = np.zeros(G + 1, dtype=np.int32)  # relevant distances per bucket (zero between rows)
        # table[u]: index in A of bucket u's first relevant distance (-1 - it: 3 or more); table[G] = R
        self.table = np.empty(G + 1, dtype=np.int16 if r_max <= TABLE_INT16_MAX_R else np.int32)
        self.rel = np.empty(r_max, dtype=np.float32)  # relevant distances in member order
        self.rel_bucket = np.empty(r_max, dtype=np.int32)
        self.A = np.empty(r_max + 2, dtype=np.float32)  # sorted relevant distances, then +inf, +inf
        self.Ab = np.empty(r_max + 1, dtype=np.int32)  # the buckets holding 2 or more
        # (q, equal) histogram, zero between rows; a count is at most n
        self.hist = np.zeros(2 * r_max + 4, dtype=np.int32 if n < 1 << 31 else np.int64)
        self.top = np.empty(k, dtype=np.float32)  # the k smallest distances seen so far
        self.cand_col = np.empty(n, dtype=np.int64)
        self.cand_d = np.empty(n, dtype=np.float32)
        self.sums = np.zeros((rows, n_sums), dtype=np.float64)
        self.kth = np.empty(rows, dtype=np.float32)
        # Output buffers: a row is started only when its worst case fits (r_max groups, n candidates).
        self.groups = np.empty((2 * r_max + 16, 5), dtype=np.int64)
        self.out_row = np.empty(2 * n + 16, dtype=np.int64)
        self.out_col = np.empty(2 * n + 16, dtype=np.int64)
        self.out_d = np.empty(2 * n + 16, dtype=np.float32)


def rank_chunk(fn, dist, euclidean, prescale, col_scale, row_add, row_class, member_ptr, members, self_cols, k,
               map_ks, prec_ks, n_eff, S: FloatRankScratch, G: int):
    """Run the compiled kernel over every row of ``dist`` (m, n) float32, the raw matmul output.

    col_scale (n,) float32: ‖d‖² (euclidean) or 1/‖d‖ (cosine, 0 for zero vectors); row_add
    (m,) float32: ‖q‖² or −1/‖q‖; row_class (m,) int64 index into member_ptr of the row's
    label (−1: none in the database); member_ptr (C+1,) int64 and members (n,) int64: the
    database columns of each label, ascending; self_cols (m,) int64 own column under
    leave-one-out (−1: none).

    Returns sums (m, 1 + len(map_ks) + len(prec_ks)) float64 — per row, the singleton terms of
    R·AP, of min(R,K)·AP@K and of the relevant count in the top K —, the true tie groups
    (row, N, m, Rb, r) int64 arrays, and the k-NN candidates (rows, cols, distances) and kth (m,)
    float32, the k-th smallest distance of each row.
    """
    m = dist.shape[0]
    ks_map = np.asarray(map_ks, dtype=np.int64)
    ks_prec = np.asarray(prec_ks, dtype=np.int64)
    sums = S.sums[:m]
    kth = S.kth[:m]
    groups, rows, cols, ds = [], [], [], []
    r = 0
    while r < m:
        r, ng, nc = fn(dist, r, int(euclidean), int(prescale), col_scale, row_add, row_class, member_ptr, members,
                       self_cols, k, G, KNN_BLOCK, ks_map, ks_prec, n_eff, S.count, S.table, S.rel, S.rel_bucket,
                       S.A, S.Ab, S.hist, S.row, S.keys, S.bmin, S.top, S.cand_col, S.cand_d, sums, kth, S.groups,
                       S.out_row, S.out_col, S.out_d)
        groups.append(S.groups[:ng].copy())
        rows.append(S.out_row[:nc].copy())
        cols.append(S.out_col[:nc].copy())
        ds.append(S.out_d[:nc].copy())
    cat = lambda parts: np.concatenate(parts) if len(parts) > 1 else parts[0]  # noqa: E731
    return sums.copy(), tuple(cat(groups).T), cat(rows), cat(cols), cat(ds), kth.copy()
