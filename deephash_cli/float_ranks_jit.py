"""The numba loops of :mod:`deephash_cli.float_ranks` (imported only when numba is installed).

Module-level functions, so numba's on-disk cache (``cache=True``) finds them again in the next
process: the algorithm and the buffers are described in :mod:`deephash_cli.float_ranks`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Runs of relevant distances sharing a bucket longer than this are sorted with np.sort instead
# of an insertion sort.
SCAN = 16

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
def keep_candidate(j, d, top_k, k, cand_col, cand_d, nc):
    """Column j at distance d (<= the k-th smallest so far) becomes k-NN candidate number nc; a distance below
    the k-th enters the sorted top k.  Returns the new candidate count."""
    cand_col[nc] = j
    cand_d[nc] = d
    if d < top_k[k - 1]:
        p = k - 1
        while p > 0 and top_k[p - 1] > d:
            top_k[p] = top_k[p - 1]
            p -= 1
        top_k[p] = d
    return nc + 1


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
            nc = keep_candidate(j, d, top_k, k, cand_col, cand_d, nc)
            thr = top_k[k - 1]
    return nc


@jit
def knn_range(Draw, col_scale, ra, euclidean, prescale, j0, j1, top_k, k, cand_col, cand_d, nc):
    """k-NN candidates of columns j0:j1 for rows without relevant items."""
    thr = top_k[k - 1]
    for j in range(j0, j1):
        d = finish(Draw[j], col_scale[j], ra, euclidean, prescale)
        if d <= thr:
            nc = keep_candidate(j, d, top_k, k, cand_col, cand_d, nc)
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
