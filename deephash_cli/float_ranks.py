r"""Compiled rank work of the float evaluation path (optional: needs numba, the ``fast`` extra).

:func:`deephash_cli.metrics.evaluate_retrieval` computes a chunk of float distances with one
matmul.  Everything after the matmul is per query row and is done here in compiled loops
instead of about twenty numpy passes; the results are the same numbers (the tie-aware
definitions are in :mod:`deephash_cli.metrics`).

Per row (n database items, R relevant ones, G value buckets):

1. Finish the relevant items' matmul outputs into float32 distances exactly as the numpy path
   does (euclidean: ``((-2 q·d) + ‖d‖²) + ‖q‖²`` then ``max(·, 0)``; cosine:
   ``((q·d) · 1/‖d‖) · (−1/‖q‖) + 0``; no fused multiply-add: numba does not contract without
   fastmath) and take their range [lo, hi].
2. Sort the relevant distances into A by a counting sort over G buckets of [lo, hi] (exact
   order inside a bucket by insertion sort, np.sort for long runs); its running count is the
   table: for bucket u, the index in A of the first relevant distance at or above u (stored as
   -1 - it when the bucket holds 3 or more).  The bucket ``min(max(trunc((d − lo) · (G − 2) / (hi − lo)), 0), G − 1)`` is non-decreasing in d,
   so an item in a lower bucket is strictly closer; distances outside [lo, hi] clamp to the end
   buckets, which is still exact.
3. a. One vectorized loop finishes every distance of the row and computes its bucket.
   b. One scalar loop: q = number of relevant distances <= d is the table entry s plus
   ``d >= A[s]`` plus ``d >= A[s+1]`` (a binary search for the rare crowded buckets); a
   histogram over (q, whether d equals one of them) counts every item; the k-NN candidates are
   the items at or below the k-th smallest distance seen so far (a running top k).
4. Walk the sorted relevant distances: a group of equal relevant distances A[a:e] is preceded
   by the items counted at q <= a and holds the items counted at (e, equal).  A relevant item
   alone in its group adds ``(a + 1) / (N + 1)`` to the AP sums, AP@K and P@K; true tie groups
   are returned as (row, N, m, Rb, r) for the caller's closed forms
   (:func:`deephash_cli.metrics._tie_group_terms`).  The k-th smallest distance is the last of
   the running top k; candidates up to it are returned for the caller's tie-aware vote.

Outputs go to buffers the caller allocates (so tracemalloc sees them); the kernel stops before
a row whose worst case would not fit and the caller drains the buffers and continues from that
row.  The functions are compiled with ``cache=True`` (one signature each).

:func:`kernel` selects the implementation; ``DEEPHASH_KERNELS=numpy`` forces the numpy path.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np

from deephash_cli.errors import DeephashError

__all__ = ["kernel", "KERNELS_ENV", "FloatRankScratch", "rank_chunk"]

# Environment variable choosing the float rank implementation: "numba", "numpy" or unset (auto).
KERNELS_ENV = "DEEPHASH_KERNELS"
# Fine buckets per row: a power of two near the database size; with R relevant distances
# spread over them few buckets hold 3 or more (those need a binary search), and the O(G)
# table fill stays below the O(n) pass.
MAX_BUCKETS = 1 << 16
# Runs of relevant distances sharing a bucket longer than this are sorted with np.sort instead
# of an insertion sort.
SCAN = 16

_compiled = None  # the numba kernel once compiled (or False when numba is missing)


def kernel():
    """The compiled rank kernel, or None for the numpy path.

    ``DEEPHASH_KERNELS`` = ``numpy`` forces the numpy path, ``numba`` requires numba, unset or
    ``auto`` uses numba when it is importable.  numba is imported only on first use.
    """
    global _compiled
    choice = os.environ.get(KERNELS_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "numba", "numpy"):
        raise DeephashError(f"{KERNELS_ENV} must be 'auto', 'numba' or 'numpy', got {choice!r}.")
    if choice == "numpy":
        return None
    if _compiled is None:
        try:
            _compiled = _build().rank_rows
        except ImportError:
            _compiled = False
    if _compiled is False and choice == "numba":
        raise DeephashError(f"{KERNELS_ENV}=numba but numba is not installed; install the 'fast' extra.")
    return _compiled or None


def buckets_for(n: int) -> int:
    """Buckets per row for a database of n items: the power of two >= n, at most MAX_BUCKETS."""
    return int(min(MAX_BUCKETS, 1 << max(2, (int(n) - 1).bit_length())))


class FloatRankScratch:
    """Buffers of one worker of the compiled float pass (all allocated here, by numpy).

    rows, n: chunk shape; r_max: most relevant items of a row; k: voting neighbours;
    n_sums: per-row sum columns (1 + number of mAP@K + number of P@K); G: buckets.
    """

    def __init__(self, rows: int, n: int, r_max: int, k: int, n_sums: int, G: int):
        self.dist = np.empty((rows, n), dtype=np.float32)
        self.row = np.empty(n, dtype=np.float32)  # one row's distances
        self.keys = np.empty(n, dtype=np.int32)  # every item's bucket
        self.count = np.zeros(G + 1, dtype=np.int32)  # relevant distances per bucket (zero between rows)
        self.table = np.empty(G, dtype=np.int32)  # first relevant index of each bucket (-1 - it: 3 or more)
        self.rel = np.empty(r_max, dtype=np.float32)  # relevant distances in member order
        self.rel_bucket = np.empty(r_max, dtype=np.int32)
        self.A = np.empty(r_max + 2, dtype=np.float32)  # sorted relevant distances, then +inf, +inf
        self.Ab = np.empty(r_max, dtype=np.int32)  # their buckets
        self.hist = np.zeros(2 * r_max + 4, dtype=np.int64)  # (q, equal) histogram (zero between rows)
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
                       self_cols, k, G, ks_map, ks_prec, n_eff, S.count, S.table, S.rel, S.rel_bucket, S.A, S.Ab,
                       S.hist, S.row, S.keys, S.top, S.cand_col, S.cand_d, sums, kth, S.groups, S.out_row, S.out_col, S.out_d)
        groups.append(S.groups[:ng].copy())
        rows.append(S.out_row[:nc].copy())
        cols.append(S.out_col[:nc].copy())
        ds.append(S.out_d[:nc].copy())
    cat = lambda parts: np.concatenate(parts) if len(parts) > 1 else parts[0]  # noqa: E731
    return sums.copy(), tuple(cat(groups).T), cat(rows), cat(cols), cat(ds), kth.copy()


def _build() -> SimpleNamespace:
    """Compile (or load from numba's cache) the kernel and its helpers; ImportError without numba."""
    from numba import njit

    jit = njit(cache=True, nogil=True)

    @jit
    def finish(raw, c, ra, euclidean, prescale):
        """The float32 distance of one matmul output, as the numpy path computes it."""
        if euclidean:
            d = raw if prescale else raw * np.float32(-2.0)
            d = d + c
            d = d + ra
            return d if d >= np.float32(0.0) else np.float32(0.0)
        d = raw * c
        return d * ra + np.float32(0.0)

    @jit
    def bucket_of(d, lo, scale, top):
        """min(max(trunc((d - lo) * scale), 0), top): non-decreasing in d."""
        x = (d - lo) * scale
        if x <= np.float32(0.0):
            return 0
        if x >= top:
            return np.int64(top)
        return np.int64(x)

    @jit
    def sort_run(A, a, b):
        """Sort A[a:b] ascending in place (short runs: insertion sort)."""
        if b - a > SCAN:
            A[a:b].sort()
            return
        for i in range(a + 1, b):
            v = A[i]
            j = i - 1
            while j >= a and A[j] > v:
                A[j + 1] = A[j]
                j -= 1
            A[j + 1] = v

    @jit
    def upper(A, a, b, x):
        """First index in [a, b) with A[index] > x (A[a:b] sorted), else b."""
        while a < b:
            mid = (a + b) >> 1
            if A[mid] <= x:
                a = mid + 1
            else:
                b = mid
        return a

    @jit
    def buckets_range(Draw, col_scale, ra, euclidean, prescale, lo, scale, top, row, bkt):
        """Step 3a: every item's distance (into ``row``) and bucket (into ``bkt``).  One loop per
        distance formula without branches inside, so that it vectorizes (its results are those
        of :func:`finish` and :func:`bucket_of`)."""
        z = np.float32(0.0)
        if euclidean and prescale:
            for j in range(Draw.size):
                d = Draw[j] + col_scale[j]
                d = d + ra
                row[j] = d if d >= z else z
        elif euclidean:
            for j in range(Draw.size):
                d = Draw[j] * np.float32(-2.0) + col_scale[j]
                d = d + ra
                row[j] = d if d >= z else z
        else:
            for j in range(Draw.size):
                d = Draw[j] * col_scale[j]
                row[j] = d * ra + z
        for j in range(Draw.size):
            x = (row[j] - lo) * scale
            x = x if x > z else z
            x = x if x < top else top
            bkt[j] = np.int32(x)

    @jit
    def count_range(row, bkt, j0, j1, table, A, R, hist, top_k, k, cand_col, cand_d, nc):
        """Step 3b over columns j0:j1: q = relevant distances <= d from the table and the first
        two relevant distances of the item's bucket (a binary search for buckets holding 3 or
        more), the histogram of (q, equal), and the k-NN candidates; returns the new candidate
        count."""
        thr = top_k[k - 1]
        for j in range(j0, j1):
            d = row[j]
            s = table[bkt[j]]
            if s >= 0:
                a1 = A[s]
                a2 = A[s + 1]
                key = 2 * (s + np.int64(d >= a1) + np.int64(d >= a2)) + (np.int64(d == a1) | np.int64(d == a2))
            else:
                q = upper(A, -1 - s, R, d)
                key = 2 * q + (1 if (q > 0 and A[q - 1] == d) else 0)
            hist[key] += 1
            if d <= thr:  # k-NN candidate; keep the k smallest distances seen
                cand_col[nc] = j
                cand_d[nc] = d
                nc += 1
                if d < thr:
                    p = k - 1
                    while p > 0 and top_k[p - 1] > d:
                        top_k[p] = top_k[p - 1]
                        p -= 1
                    top_k[p] = d
                    thr = top_k[k - 1]
        return nc

    @jit
    def knn_range(Draw, col_scale, ra, euclidean, prescale, j0, j1, top_k, k, cand_col, cand_d, nc):
        """k-NN candidates of columns j0:j1 for rows without relevant items."""
        thr = top_k[k - 1]
        for j in range(j0, j1):
            d = finish(Draw[j], col_scale[j], ra, euclidean, prescale)
            if d <= thr:
                cand_col[nc] = j
                cand_d[nc] = d
                nc += 1
                if d < thr:
                    p = k - 1
                    while p > 0 and top_k[p - 1] > d:
                        top_k[p] = top_k[p - 1]
                        p -= 1
                    top_k[p] = d
                    thr = top_k[k - 1]
        return nc

    @jit
    def rank_rows(dist, r_start, euclidean, prescale, col_scale, row_add, row_class, member_ptr, members, self_cols,
                  k, G, ks_map, ks_prec, n_eff, count, table, rel, rel_bucket, A, Ab, hist, row, keys, top_k, cand_col,
                  cand_d,
                  sums, kth, groups, out_row, out_col, out_d):
        m, n = dist.shape
        top = np.float32(G - 1)
        n_map = ks_map.size
        n_prec = ks_prec.size
        ng = 0
        nc_out = 0
        inf = np.float32(np.inf)
        for i in range(r_start, m):
            cls = row_class[i]
            own = self_cols[i]
            R = 0 if cls < 0 else member_ptr[cls + 1] - member_ptr[cls] - (1 if own >= 0 else 0)
            if ng + max(R, 0) > groups.shape[0] or nc_out + n > out_row.shape[0]:
                return i, ng, nc_out
            Draw = dist[i]
            ra = row_add[i]
            for c in range(sums.shape[1]):
                sums[i, c] = 0.0
            for c in range(k):
                top_k[c] = inf
            nc = 0
            j_own = own if own >= 0 else n  # columns 0:j_own and j_own+1:n are ranked
            if R <= 0:
                nc = knn_range(Draw, col_scale, ra, euclidean, prescale, 0, j_own, top_k, k, cand_col, cand_d, nc)
                nc = knn_range(Draw, col_scale, ra, euclidean, prescale, j_own + 1, n, top_k, k, cand_col, cand_d,
                               nc)
            else:
                # 1. the relevant distances and their range
                lo = inf
                hi = -inf
                rr = 0
                for p in range(member_ptr[cls], member_ptr[cls + 1]):
                    col = members[p]
                    if col == own:
                        continue
                    d = finish(Draw[col], col_scale[col], ra, euclidean, prescale)
                    rel[rr] = d
                    lo = min(lo, d)
                    hi = max(hi, d)
                    rr += 1
                span = np.float64(hi) - np.float64(lo)
                scale = np.float32((G - 2) / span) if span > 1e-30 else np.float32(0.0)
                # 2. counting sort by bucket, exact order inside buckets; the bucket table
                for p in range(R):
                    b = bucket_of(rel[p], lo, scale, top)
                    rel_bucket[p] = b
                    count[b] += 1
                run = 0
                for u in range(G):
                    c = count[u]
                    table[u] = run if c < 3 else -1 - run
                    count[u] = run  # now the bucket's start: scatter cursor
                    run += c
                for p in range(R):
                    b = rel_bucket[p]
                    at = count[b]
                    A[at] = rel[p]
                    Ab[at] = b
                    count[b] = at + 1
                A[R] = inf
                A[R + 1] = inf
                a = 0
                while a < R:
                    e = a + 1
                    while e < R and Ab[e] == Ab[a]:
                        e += 1
                    if e - a > 1:
                        sort_run(A, a, e)
                    a = e
                for u in range(G):  # clean state for the next row (dense: cheaper than per bucket)
                    count[u] = 0
                # 3. one counting pass over the row: q = relevant distances <= d, tie flag, k-NN
                buckets_range(Draw, col_scale, ra, euclidean, prescale, lo, scale, top, row, keys)
                nc = count_range(row, keys, 0, j_own, table, A, R, hist, top_k, k, cand_col, cand_d, nc)
                nc = count_range(row, keys, j_own + 1, n, table, A, R, hist, top_k, k, cand_col, cand_d, nc)
                # 4. AP sums over the relevant items' tie groups.  Every item, relevant or not, was
                # counted at q = relevant distances <= it; a group of equal relevant distances
                # A[a:e] is preceded by the items with q <= a and holds those counted at (e, equal).
                before = hist[0] + hist[1]
                a = 0
                while a < R:
                    e = a + 1
                    while e < R and A[e] == A[a]:
                        e += 1
                    size = hist[2 * e + 1]
                    if size == 1:
                        val = (a + 1.0) / (before + 1.0)
                        sums[i, 0] += val
                        for c in range(n_map):
                            if before < ks_map[c]:
                                sums[i, 1 + c] += val
                        for c in range(n_prec):
                            if before < min(ks_prec[c], n_eff):
                                sums[i, 1 + n_map + c] += 1.0
                    else:
                        groups[ng, 0] = i
                        groups[ng, 1] = before
                        groups[ng, 2] = size
                        groups[ng, 3] = a
                        groups[ng, 4] = e - a
                        ng += 1
                    for q in range(a + 1, e + 1):
                        before += hist[2 * q] + hist[2 * q + 1]
                    a = e
                for u in range(2 * R + 4):
                    hist[u] = 0
            # k-NN: every item at or below the k-th smallest distance was a candidate
            kd = top_k[k - 1]
            kth[i] = kd
            for c in range(nc):
                if cand_d[c] <= kd:
                    out_row[nc_out] = i
                    out_col[nc_out] = cand_col[c]
                    out_d[nc_out] = cand_d[c]
                    nc_out += 1
        return m, ng, nc_out

    return SimpleNamespace(**{f.__name__: f for f in (finish, bucket_of, sort_run, upper, buckets_range, count_range,
                                                      knn_range, rank_rows)})
