"""The numba loops of :mod:`deephash_cli.float_ranks` (imported only when numba is installed).

Module-level functions, so numba's on-disk cache (``cache=True``) finds them again in the next
process: the algorithm and the buffers are described in :mod:`deephash_cli.float_ranks`.

Hot loops index arrays with unsigned integers (``A[np.uint64(i)]``): numba wraps a signed
index around (``i < 0`` counts from the end), and in the per-item loop that check cost more
than a tenth of the kernel (benchmarks/RESULTS.md).  Every such index is >= 0 by construction.
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
    """min(max(trunc((d - lo) * scale), 0), top): non-decreasing in d (branch-free, vectorizes)."""
    z = np.float32(0.0)
    x = (d - lo) * scale
    x = x if x > z else z
    x = x if x < top else top
    return np.int32(x)


@jit
def sort_run(A, a, b):
    """Sort A[a:b] ascending in place (short runs: insertion sort)."""
    if b - a == 2:  # the common case, branch-free
        x = A[np.uint64(a)]
        y = A[np.uint64(a + 1)]
        A[np.uint64(a)] = min(x, y)
        A[np.uint64(a + 1)] = max(x, y)
        return
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
def finish_row(Draw, col_scale, ra, euclidean, prescale, row):
    """Step 1a: every item's distance into ``row``.  One loop per distance formula without
    branches inside, so that it vectorizes (its results are those of :func:`finish`)."""
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


@jit
def smallest(seg):
    """The smallest value of an unsigned 16-bit array (65,535 if empty; a vectorized reduction)."""
    mn = np.int32(65535)
    for j in range(seg.size):
        mn = min(mn, np.int32(seg[j]))
    return mn


@jit
def buckets_range(row, lo, scale, top, bkt, bmin, W):
    """Step 3a: every item's bucket into ``bkt`` (one vectorized loop), then the smallest bucket
    of each block of W items into ``bmin``."""
    n = row.size
    for j in range(n):
        bkt[j] = bucket_of(row[j], lo, scale, top)
    for bb in range((n + W - 1) // W):
        bmin[bb] = smallest(bkt[bb * W:(bb + 1) * W])


@jit
def insert_smallest(top_k, k, v):
    """v below top_k[k - 1] enters the ascending top_k[:k] (the k smallest values seen so far)."""
    if v < top_k[k - 1]:
        p = k - 1
        while p > 0 and top_k[p - 1] > v:
            top_k[p] = top_k[p - 1]
            p -= 1
        top_k[p] = v


@jit
def keep_candidate(j, d, top_k, k, cand_col, cand_d, nc):
    """Column j at distance d (<= the k-th smallest so far) becomes k-NN candidate number nc; a distance below
    the k-th enters the sorted top k.  Returns the new candidate count."""
    cand_col[nc] = j
    cand_d[nc] = d
    insert_smallest(top_k, k, d)
    return nc + 1


@jit
def knn_buckets(row, bkt, bmin, W, j_own, top_k, k, cand_col, cand_d, nc):
    """k-NN candidates of a row with buckets: each block minimum is a distinct item's bucket, so
    the k-th smallest block minimum B bounds the bucket of the k-th smallest distance (buckets
    are non-decreasing in the distance); only blocks whose minimum is <= B are scanned, and their
    items in buckets <= B go through :func:`keep_candidate`.  Column j_own (>= n: none) is
    skipped.  Returns the new candidate count."""
    n = row.size
    nb = (n + W - 1) // W
    if j_own < n:  # the own column's block: its minimum without it
        j0 = (j_own // W) * W
        bmin[j_own // W] = min(smallest(bkt[j0:j_own]), smallest(bkt[j_own + 1:min(j0 + W, n)]))
    for c in range(k):  # top_k holds the k smallest block minima first
        top_k[c] = np.inf
    for bb in range(nb):
        insert_smallest(top_k, k, np.float32(bmin[bb]))
    B = top_k[k - 1]  # +inf when there are fewer than k blocks: every item is scanned
    for c in range(k):
        top_k[c] = np.inf
    thr = top_k[k - 1]
    for bb in range(nb):
        if np.float32(bmin[bb]) <= B:
            j0 = bb * W
            for j in range(j0, min(j0 + W, n)):
                if np.float32(bkt[j]) <= B and j != j_own:
                    d = row[j]
                    if d <= thr:
                        nc = keep_candidate(j, d, top_k, k, cand_col, cand_d, nc)
                        thr = top_k[k - 1]
    return nc


@jit
def count_range(row, bkt, j0, j1, table, A, hist):
    """Step 3b over columns j0:j1: q = relevant distances <= d from the table and the first
    two relevant distances of the item's bucket (a linear scan of the bucket for the rare
    buckets holding 3 or more; A ends with +inf) and the histogram of (q, equal)."""
    for jj in range(j0, j1):
        j = np.uint64(jj)
        d = row[j]
        s = table[np.uint64(bkt[j])]
        if s >= 0:
            a1 = A[np.uint64(s)]
            a2 = A[np.uint64(s + 1)]
            key = 2 * (s + np.int64(d >= a1) + np.int64(d >= a2)) + (np.int64(d == a1) | np.int64(d == a2))
        else:
            q = -1 - s
            while A[np.uint64(q)] <= d:
                q += 1
            key = 2 * q + (1 if (q > 0 and A[np.uint64(q - 1)] == d) else 0)
        hist[np.uint64(key)] += 1


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
def settle(srow, ks_map, ks_prec, n_eff, last, before, s0, cnt):
    """Record the AP@K and P@K sums of every threshold K in (last, before]: the singletons so far
    (AP sum s0, count cnt).  Returns the smallest threshold above before (2**62 if none)."""
    n_map = ks_map.size
    nxt = np.int64(1) << 62
    for c in range(n_map + ks_prec.size):
        K = ks_map[c] if c < n_map else min(ks_prec[c - n_map], n_eff)
        if last < K <= before:
            srow[1 + c] = s0 if c < n_map else cnt
        elif K > before:
            nxt = min(nxt, K)
    return nxt


@jit
def ap_sums(A, R, hist, srow, ks_map, ks_prec, n_eff, groups, ng, i):
    """Step 4 for row i: walk the sorted relevant distances A[:R].  Every item, relevant or not,
    was counted at q = relevant distances <= it; a group of equal relevant distances A[a:e] is
    preceded by the items counted at q <= a (N = before) and holds those counted at (e, equal).
    A singleton adds (a + 1) / (N + 1) to R·AP; true tie groups go to groups[ng:] as
    (row, N, m, Rb, r); returns the new ng.

    srow gets R·AP, then min(R, K)·AP@K for each K of ks_map, then the relevant count in the top
    K for each K of ks_prec.  A singleton counts towards K while N < K, and N never decreases
    along the walk, so those sums are the running sums at the moment N first reaches K: the same
    additions in the same order, recorded once instead of accumulated in memory per item."""
    s0 = 0.0
    cnt = 0.0
    before = hist[0] + hist[1]
    huge = np.int64(1) << 62
    last = np.int64(-1)
    nxt = settle(srow, ks_map, ks_prec, n_eff, huge, last, s0, cnt)  # only the first threshold
    a = 0
    while a < R:
        ua = np.uint64(a)
        e = a + 1
        while e < R and A[np.uint64(e)] == A[ua]:
            e += 1
        size = hist[np.uint64(2 * e + 1)]
        if size == 1:
            if before >= nxt:
                nxt = settle(srow, ks_map, ks_prec, n_eff, last, before, s0, cnt)
                last = before
            s0 += (a + 1.0) / (before + 1.0)
            cnt += 1.0
        else:
            g = np.uint64(ng)
            groups[g, 0] = i
            groups[g, 1] = before
            groups[g, 2] = size
            groups[g, 3] = a
            groups[g, 4] = e - a
            ng += 1
        for q in range(a + 1, e + 1):
            before += hist[np.uint64(2 * q)] + hist[np.uint64(2 * q + 1)]
        a = e
    settle(srow, ks_map, ks_prec, n_eff, last, huge, s0, cnt)  # thresholds never reached
    srow[0] = s0
    return ng


@jit
def rank_rows(dist, r_start, euclidean, prescale, col_scale, row_add, row_class, member_ptr, members, self_cols,
              k, G, W, ks_map, ks_prec, n_eff, count, table, rel, rel_bucket, A, Ab, hist, row, keys, bmin, top_k,
              cand_col, cand_d, sums, kth, groups, out_row, out_col, out_d):
    m, n = dist.shape
    top = np.float32(G - 1)
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
            # 1. every distance of the row; the relevant ones and their range
            finish_row(Draw, col_scale, ra, euclidean, prescale, row)
            lo = inf
            hi = -inf
            rr = 0
            for p in range(member_ptr[cls], member_ptr[cls + 1]):
                col = members[np.uint64(p)]
                if col == own:
                    continue
                d = row[np.uint64(col)]
                rel[np.uint64(rr)] = d
                lo = min(lo, d)
                hi = max(hi, d)
                rr += 1
            span = np.float64(hi) - np.float64(lo)
            scale = np.float32((G - 2) / span) if span > 1e-30 else np.float32(0.0)
            # 2. counting sort by bucket: the counts (a bucket reaching 2 relevant distances is
            # listed in Ab once, branch-free), the table as their exclusive prefix sum, the scatter
            # (each bucket filled from its end, so count returns to 0 for the next row), then the
            # listed buckets sorted exactly and those holding 3 or more marked in the table
            nm = 0
            for pp in range(R):
                p = np.uint64(pp)
                b = bucket_of(rel[p], lo, scale, top)
                rel_bucket[p] = b
                c = count[np.uint64(b)] + 1
                count[np.uint64(b)] = c
                Ab[np.uint64(nm)] = b
                nm += np.int64(c == 2)
            run = 0
            for uu in range(G):
                u = np.uint64(uu)
                table[u] = run
                run += count[u]
            table[G] = run
            for pp in range(R):
                p = np.uint64(pp)
                b = np.uint64(rel_bucket[p])
                c = count[b] - 1
                count[b] = c
                A[np.uint64(table[b] + c)] = rel[p]
            A[R] = inf
            A[R + 1] = inf
            for t in range(nm):
                b = Ab[np.uint64(t)]
                a = table[np.uint64(b)]
                e = table[np.uint64(b + 1)]
                sort_run(A, a, e)
                if e - a >= 3:
                    Ab[np.uint64(t)] = -1 - b  # crowded: marked below, once no start is read any more
            for t in range(nm):
                v = Ab[np.uint64(t)]
                if v < 0:
                    table[np.uint64(-1 - v)] = -1 - table[np.uint64(-1 - v)]
            # 3. every item's bucket; the k-NN candidates; one counting pass: q = relevant distances <= d, tie flag
            buckets_range(row, lo, scale, top, keys, bmin, W)
            nc = knn_buckets(row, keys, bmin, W, j_own, top_k, k, cand_col, cand_d, nc)
            count_range(row, keys, 0, j_own, table, A, hist)
            count_range(row, keys, j_own + 1, n, table, A, hist)
            # 4. AP sums and tie groups
            ng = ap_sums(A, R, hist, sums[i], ks_map, ks_prec, n_eff, groups, ng, i)
            hist[:2 * R + 4] = 0
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
