"""faiss index types for search over binary hash codes and float embeddings (a script, not a test).

All index types are measured side by side in one run; on a shared machine the ratios inside one
run (speed-up vs the flat index of the same size) are the meaningful figures.

Binary part: synthetic class-structured codes, packed uint8 in numpy.packbits (MSB-first) order,
shape (n, bits/8). --classes random centre codes; each item is its class centre XOR a noise mask
in which every bit is flipped independently with probability --flip-prob (drawn as uint16 < a
threshold, so the effective probability is round(p * 65536) / 65536; it is printed). Queries are
drawn from the same distribution and are not in the database. The database of size n is the first
n items of one database of the largest size, so smaller sizes are prefixes of the larger ones.
  * IndexBinaryFlat (exact; ground truth), both with use_heap = True and use_heap = False,
  * IndexBinaryIVF (flat binary quantizer, trained on a sample; nlist x nprobe sweep),
  * IndexBinaryHNSW (efSearch sweep; built at a larger size only if the build time at the
    smallest size, scaled by n log n, stays under --hnsw-max-minutes),
  * IndexBinaryMultiHash (nhash x b <= bits; nflip sweep, cut short once one search is slower
    than the flat index).
Float part: unit-normalised Gaussian mixture (so L2 and cosine rankings agree), IndexFlatL2
(ground truth), IndexIVFFlat, IndexHNSWFlat and IndexIVFPQ (no re-ranking).

Columns: build seconds (train + add), bytes per item (serialized size / ntotal), queries per
second (all queries in one batch search call, best of --repeat), speed-up vs the fastest flat
setting of the same size, recall@10.

recall@10, binary (tie-aware, Hamming distances tie a lot): for each query let d10 be the 10th
smallest exact Hamming distance (from the flat index). A returned id counts as correct if its exact
Hamming distance to the query (recomputed here from the stored codes, not taken from faiss) is
<= d10; ids of -1 and repeated ids count as wrong. recall = correct / (10 * queries).
recall@10, float: fraction of the exact 10 nearest ids (IndexFlatL2) that the index returns.

"deephash layer overhead": the flat binary search through deephash_cli.faiss_index.search vs
index.search called directly, interleaved, best of --overhead-repeat each.

faiss runs with --threads OpenMP threads and, by default, OMP_WAIT_POLICY=PASSIVE: with libgomp's default
spin-waiting, faiss calls were several times slower and erratic while other jobs kept the 2 cores busy.

Usage: python benchmarks/bench_search.py [--sizes 1000000,10000000] [--bits 64] [--queries 1000]
           [--float-size 1000000] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import platform
import sys
import time

import numpy as np

faiss = None  # imported in main(), after OMP_WAIT_POLICY is set (libgomp reads it when it loads)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)
START = time.perf_counter()


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def pairs(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        nhash, b = item.lower().split("x")
        out.append((int(nhash), int(b)))
    return out


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


try:
    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallinfo2.restype = _Mallinfo2
    HEAP_KIND = "malloc in-use bytes (glibc mallinfo2)"
except (OSError, AttributeError):
    _libc = None
    HEAP_KIND = "resident set size (/proc/self/statm; freed memory may be reused)"


def heap_bytes() -> int:
    """Bytes currently allocated through malloc (C++ new included), or the RSS without glibc."""
    if _libc is not None:
        m = _libc.mallinfo2()
        return int(m.uordblks + m.hblkhd)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def elapsed() -> str:
    return f"{time.perf_counter() - START:.0f} s"


def best_of(fn, repeat: int, give_up_after: float | None = None):
    """Best wall time of `repeat` calls of fn() and the last result; stops after the first call if
    it took longer than give_up_after seconds (returns the number of calls made)."""
    best, value, calls = float("inf"), None, 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
        calls += 1
        if give_up_after is not None and best > give_up_after:
            break
    return best, value, calls


# ----------------------------------------------------------------------------- data


def binary_codes(n, centres, p, rng, chunk=1 << 20):
    """n codes: centre of a random class XOR a mask with each bit set with probability p."""
    nbytes = centres.shape[1]
    bits = nbytes * 8
    thr = np.uint16(round(p * 65536))
    out = np.empty((n, nbytes), dtype=np.uint8)
    labels = rng.integers(0, centres.shape[0], n)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        mask = np.packbits(rng.integers(0, 65536, (e - s, bits), dtype=np.uint16) < thr, axis=1)
        out[s:e] = centres[labels[s:e]] ^ mask
    return out


def float_vectors(n, centres, noise, rng, chunk=1 << 18):
    """Unit-normalised Gaussian mixture: centre (unit norm) + N(0, noise^2 / dim) per coordinate."""
    d = centres.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    labels = rng.integers(0, centres.shape[0], n)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        x = centres[labels[s:e]] + rng.standard_normal((e - s, d), dtype=np.float32) * np.float32(noise / math.sqrt(d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:e] = x
    return out


# ----------------------------------------------------------------------------- recall


def hamming_to(queries, db, ids):
    """Exact Hamming distances between queries[i] and db[ids[i, j]] (ids of -1 give 0)."""
    safe = np.where(ids >= 0, ids, 0)
    return POPCOUNT[queries[:, None, :] ^ db[safe]].sum(axis=-1)


def repeated(ids):
    """Boolean mask of ids that already appeared earlier in the same row."""
    order = np.argsort(ids, axis=1, kind="stable")
    s = np.take_along_axis(ids, order, axis=1)
    dup_sorted = np.zeros_like(s, dtype=bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return dup


def binary_recall(queries, db, d_kth, D, I, k):
    """Tie-aware recall@k (see module docstring); also the number of faiss distances that differ
    from the recomputed exact ones (for valid ids)."""
    I = I[:, :k]
    exact = hamming_to(queries, db, I)
    valid = (I >= 0) & ~repeated(I)
    correct = valid & (exact <= d_kth[:, None])
    mismatch = int(((I >= 0) & (exact != D[:, :k])).sum())
    return float(correct.sum()) / (k * queries.shape[0]), mismatch


def float_recall(I_true, I, k):
    I = I[:, :k]
    hit = (I[:, :, None] == I_true[:, None, :k]).any(axis=2) & (I >= 0) & ~repeated(I)
    return float(hit.sum()) / (k * I.shape[0])


# ----------------------------------------------------------------------------- tables


class Table:
    HEAD = ("| index | parameters | build s | bytes/item | heap growth/item | QPS | speed-up vs flat | recall@10 | notes |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---|")

    def __init__(self, title):
        self.title = title
        self.rows = []  # dicts

    def add(self, **row):
        self.rows.append(row)
        r = row
        # progress line on stderr so a long run can be followed; stdout keeps only the tables
        print(f"  [{elapsed()}, load {load()}] {r['index']} {r['params']}: qps {r.get('qps', float('nan')):.1f} "
              f"recall {r.get('recall', float('nan')):.4f} {r.get('notes', '')}", file=sys.stderr, flush=True)

    def print(self, flat_qps):
        print()
        print(self.title)
        print()
        print(self.HEAD)
        for r in self.rows:
            qps = r.get("qps")
            build = "" if r.get("build") is None else f"{r['build']:.2f}"
            bpi = "" if r.get("bpi") is None else f"{r['bpi']:.1f}"
            rss = "" if r.get("rss") is None else f"{r['rss']:.1f}"
            qps_s = "" if qps is None else f"{qps:,.1f}"
            sp = "" if qps is None else f"{qps / flat_qps:.2f}x"
            rec = "" if r.get("recall") is None else f"{r['recall']:.4f}"
            print(f"| {r['index']} | {r['params']} | {build} | {bpi} | {rss} | {qps_s} | {sp} | {rec} | {r.get('notes', '')} |")
        sys.stdout.flush()


# ----------------------------------------------------------------------------- binary


def run_binary_size(n, db_all, q, bits, args, hnsw_first, ivf_trained, dh_search, summary):
    db = db_all[:n]
    k = args.k
    nq = q.shape[0]
    table = Table(f"### binary {bits}-bit codes, {n:,} items, {nq:,} queries, k = {k} "
                  f"(load {load()} at start of this size)")
    print(f"\n[binary n={n:,}: start at {elapsed()}, load {load()}]", file=sys.stderr, flush=True)

    # --- flat, both use_heap settings, interleaved
    r0 = heap_bytes()
    t0 = time.perf_counter()
    flat = faiss.IndexBinaryFlat(bits)
    flat.add(db)
    t_build = time.perf_counter() - t0
    rss_flat = (heap_bytes() - r0) / n
    bpi_flat = faiss.serialize_index_binary(flat).size / flat.ntotal
    times = {True: float("inf"), False: float("inf")}
    results = {}
    for _ in range(args.repeat):
        for heap in (True, False):
            flat.use_heap = heap
            t0 = time.perf_counter()
            results[heap] = flat.search(q, k)
            times[heap] = min(times[heap], time.perf_counter() - t0)
    D_true, I_true = results[False]
    same_dist = bool(np.array_equal(results[True][0], results[False][0]))
    d_kth = D_true[:, k - 1].astype(np.int64)
    # the flat result itself must be exact: check against a recomputation on the returned ids
    exact_flat = hamming_to(q, db, I_true)
    assert np.array_equal(exact_flat, D_true), "flat distances differ from the recomputed Hamming distances"
    fastest_heap = min(times, key=times.get)
    flat.use_heap = fastest_heap
    flat_qps = nq / times[fastest_heap]
    for heap in (True, False):
        rec, mm = binary_recall(q, db, d_kth, *results[heap], k)
        table.add(index="IndexBinaryFlat", params=f"use_heap={heap}", build=t_build, bpi=bpi_flat, rss=rss_flat,
                  qps=nq / times[heap], recall=rec,
                  notes=("fastest flat (speed-up reference)" if heap == fastest_heap else "") +
                        (f"; {mm} distance mismatches" if mm else ""))
    summary["flat"][n] = dict(qps=flat_qps, use_heap=fastest_heap, times=dict(times), same_dist=same_dist)
    summary["bpi"].setdefault("IndexBinaryFlat", {})[n] = (bpi_flat, rss_flat)
    summary["d10"][n] = (float(d_kth.mean()), int(d_kth.min()), int(d_kth.max()))
    # how many database items lie within d10 of a query (why recall must be tie-aware): counted on a
    # prefix of at most 100k items and scaled to n
    m = min(n, 100_000)
    within = sum(int((POPCOUNT[q[i:i + 50, None, :] ^ db[None, :m, :]].sum(-1) <= d_kth[i:i + 50, None]).sum())
                 for i in range(0, nq, 50))
    summary["ties"][n] = (within / nq * n / m, m)

    # --- deephash layer overhead
    run_overhead(n, flat, q, k, args, dh_search, summary)

    # --- IVF
    train_rng = np.random.default_rng(args.seed + 7)
    for nlist in args.nlist:
        if n < 39 * nlist:
            table.add(index="IndexBinaryIVF", params=f"nlist={nlist}", notes=f"skipped: n < 39 x nlist")
            continue
        # train once per nlist (on a sample of the smallest size, a prefix of every larger one) and reuse
        # the trained empty index at larger sizes; its training seconds are counted in build s everywhere
        if nlist not in ivf_trained:
            ntrain = min(n, max(args.ivf_train, 50 * nlist))
            sample = db[np.sort(train_rng.choice(n, ntrain, replace=False))]
            t0 = time.perf_counter()
            quant = faiss.IndexBinaryFlat(bits)
            ivf = faiss.IndexBinaryIVF(quant, bits, nlist)
            ivf.cp.niter = args.ivf_niter
            ivf.train(sample)
            t_train = time.perf_counter() - t0
            ivf_trained[nlist] = (faiss.serialize_index_binary(ivf), t_train, ntrain, n)
            del ivf, quant, sample
        blob, t_train, ntrain, n_trained = ivf_trained[nlist]
        r0 = heap_bytes()
        t0 = time.perf_counter()
        ivf = faiss.deserialize_index_binary(blob)
        ivf.add(db)
        t_add = time.perf_counter() - t0
        t_build = t_train + t_add
        rss = (heap_bytes() - r0) / n
        bpi = faiss.serialize_index_binary(ivf).size / ivf.ntotal
        summary["bpi"].setdefault(f"IndexBinaryIVF nlist={nlist}", {})[n] = (bpi, rss)
        sizes = np.array([ivf.get_list_size(i) for i in range(nlist)])
        note0 = (f"train {t_train:.1f} s on {ntrain:,} items of the first {n_trained:,}, {args.ivf_niter} iter"
                 f"{' (trained once, reused)' if n != n_trained else ''}; add {t_add:.1f} s; "
                 f"list sizes {sizes.min()}-{sizes.max()}")
        for nprobe in args.nprobe:
            if nprobe > nlist:
                continue
            ivf.nprobe = nprobe
            t, (D, I), calls = best_of(lambda: ivf.search(q, k), args.repeat, give_up_after=times[fastest_heap])
            rec, mm = binary_recall(q, db, d_kth, D, I, k)
            notes = note0 if nprobe == args.nprobe[0] else ""
            if calls < args.repeat:
                notes += f"{'; ' if notes else ''}1 call only (slower than flat)"
            if mm:
                notes += f"; {mm} distance mismatches"
            table.add(index="IndexBinaryIVF", params=f"nlist={nlist}, nprobe={nprobe}", build=t_build, bpi=bpi,
                      rss=rss, qps=nq / t, recall=rec, notes=notes)
        del ivf

    # --- HNSW
    M = args.hnsw_m
    if hnsw_first["n"] is None or n == hnsw_first["n"]:
        build_ok, why = True, ""
    else:
        n0, t0_build = hnsw_first["n"], hnsw_first["t"]
        est = t0_build * (n / n0) * (math.log(n) / math.log(n0))
        build_ok = est < args.hnsw_max_minutes * 60
        why = (f"estimated build {est / 60:.1f} min = {t0_build:.1f} s at {n0:,} x (n/n0) x (log n / log n0); "
               f"limit {args.hnsw_max_minutes:g} min")
    if not build_ok:
        table.add(index="IndexBinaryHNSW", params=f"M={M}", notes=f"not built: {why}")
        summary["hnsw_skipped"][n] = why
    else:
        r0 = heap_bytes()
        t0 = time.perf_counter()
        hnsw = faiss.IndexBinaryHNSW(bits, M)
        hnsw.hnsw.efConstruction = args.hnsw_ef_construction
        hnsw.add(db)
        t_build = time.perf_counter() - t0
        rss = (heap_bytes() - r0) / n
        if hnsw_first["n"] is None:
            hnsw_first.update(n=n, t=t_build)
        bpi = faiss.serialize_index_binary(hnsw).size / hnsw.ntotal
        summary["bpi"].setdefault(f"IndexBinaryHNSW M={M}", {})[n] = (bpi, rss)
        for ef in args.ef:
            hnsw.hnsw.efSearch = ef
            t, (D, I), calls = best_of(lambda: hnsw.search(q, k), args.repeat, give_up_after=times[fastest_heap])
            rec, mm = binary_recall(q, db, d_kth, D, I, k)
            notes = f"efConstruction={args.hnsw_ef_construction}{'; ' + why if why else ''}" if ef == args.ef[0] else ""
            if calls < args.repeat:
                notes += f"{'; ' if notes else ''}1 call only (slower than flat)"
            if mm:
                notes += f"; {mm} distance mismatches"
            table.add(index="IndexBinaryHNSW", params=f"M={M}, efSearch={ef}", build=t_build, bpi=bpi, rss=rss,
                      qps=nq / t, recall=rec, notes=notes)
        del hnsw

    # --- MultiHash
    for nhash, b in args.multihash:
        if nhash * b > bits:
            continue
        r0 = heap_bytes()
        t0 = time.perf_counter()
        mh = faiss.IndexBinaryMultiHash(bits, nhash, b)
        mh.add(db)
        t_build = time.perf_counter() - t0
        rss = (heap_bytes() - r0) / n
        bpi = faiss.serialize_index_binary(mh).size / mh.ntotal
        summary["bpi"].setdefault(f"IndexBinaryMultiHash nhash={nhash} b={b}", {})[n] = (bpi, rss)
        for nflip in args.nflip:
            mh.nflip = nflip
            t, (D, I), calls = best_of(lambda: mh.search(q, k), args.repeat, give_up_after=times[fastest_heap])
            rec, mm = binary_recall(q, db, d_kth, D, I, k)
            notes = "1 call only (slower than flat)" if calls < args.repeat else ""
            if mm:
                notes += f"; {mm} distance mismatches"
            table.add(index="IndexBinaryMultiHash", params=f"nhash={nhash}, b={b}, nflip={nflip}", build=t_build,
                      bpi=bpi, rss=rss, qps=nq / t, recall=rec, notes=notes)
            if t > times[fastest_heap]:
                rest = [f for f in args.nflip if f > nflip]
                if rest:
                    table.add(index="IndexBinaryMultiHash", params=f"nhash={nhash}, b={b}, nflip={','.join(map(str, rest))}",
                              notes=f"not run: nflip={nflip} was already slower than flat")
                break
        del mh

    table.print(flat_qps)
    print(f"\nflat at {n:,}: use_heap=True {times[True]:.3f} s, use_heap=False {times[False]:.3f} s per {nq} queries "
          f"(best of {args.repeat}, interleaved) -> use_heap={fastest_heap} is faster "
          f"({max(times.values()) / min(times.values()):.2f}x); identical distances: {same_dist}. "
          f"d10 mean {d_kth.mean():.2f} (min {d_kth.min()}, max {d_kth.max()})"
          + f"; on average {summary['ties'][n][0]:,.1f} database items are within d10 of a query "
          f"(counted on the first {summary['ties'][n][1]:,} items, scaled to n)")
    sys.stdout.flush()
    summary["tables"][n] = table
    del flat


def run_overhead(n, flat, q, k, args, dh_search, summary):
    nq = min(args.overhead_queries, q.shape[0])
    qq = np.ascontiguousarray(q[:nq])
    if isinstance(dh_search, str):
        summary["overhead"][n] = dh_search
        return
    direct, wrapped = float("inf"), float("inf")
    try:
        ref = None
        for _ in range(args.overhead_repeat):
            t0 = time.perf_counter()
            Dd, Id = flat.search(qq, k)
            direct = min(direct, time.perf_counter() - t0)
            t0 = time.perf_counter()
            Dw, Iw = dh_search(flat, qq, k, nprobe=None, ef=None, nflip=None)
            wrapped = min(wrapped, time.perf_counter() - t0)
            ref = (Dd, Id, Dw, Iw)
        Dd, Id, Dw, Iw = ref
        same = bool(np.array_equal(np.asarray(Dd), np.asarray(Dw)) and np.array_equal(np.asarray(Id), np.asarray(Iw)))
        summary["overhead"][n] = dict(direct=direct, wrapped=wrapped, queries=nq, same=same)
    except Exception as exc:  # the module is being written concurrently: report, never fail the run
        summary["overhead"][n] = f"deephash_cli.faiss_index.search failed: {type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- float


def run_float(args, summary):
    n, d, k = args.float_size, args.dim, args.k
    rng = np.random.default_rng(args.seed + 1)
    centres = rng.standard_normal((args.float_clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    print(f"\n[float n={n:,}: start at {elapsed()}, load {load()}]", file=sys.stderr, flush=True)
    xb = float_vectors(n, centres, args.float_noise, rng)
    xq = float_vectors(args.queries, centres, args.float_noise, rng)
    nq = xq.shape[0]
    table = Table(f"### float {d}-d embeddings, {n:,} items, {nq:,} queries, k = {k} (load {load()} at start)")

    r0 = heap_bytes()
    t0 = time.perf_counter()
    flat = faiss.IndexFlatL2(d)
    flat.add(xb)
    t_build = time.perf_counter() - t0
    rss = (heap_bytes() - r0) / n
    bpi = faiss.serialize_index(flat).size / flat.ntotal
    t_flat, (D_true, I_true), _ = best_of(lambda: flat.search(xq, k), args.repeat)
    flat_qps = nq / t_flat
    table.add(index="IndexFlatL2", params="", build=t_build, bpi=bpi, rss=rss, qps=flat_qps,
              recall=float_recall(I_true, I_true, k), notes="exact (ground truth)")
    summary["float_bpi"]["IndexFlatL2"] = (bpi, rss)
    train_rng = np.random.default_rng(args.seed + 8)

    def train_sample(nlist):
        ntrain = min(n, max(args.float_train, 50 * nlist))
        return xb[np.sort(train_rng.choice(n, ntrain, replace=False))], ntrain

    def sweep(name, index, values, apply, params, first_note, t_build, bpi, rss):
        """Search ``index`` at each of ``values`` (``apply(v)`` sets it): one table row each."""
        for value in values:
            apply(value)
            t, (D, I), calls = best_of(lambda: index.search(xq, k), args.repeat, give_up_after=t_flat)
            notes = first_note if value == values[0] else ""
            if calls < args.repeat:
                notes += f"{'; ' if notes else ''}1 call only (slower than flat)"
            table.add(index=name, params=params(value), build=t_build, bpi=bpi, rss=rss, qps=nq / t,
                      recall=float_recall(I_true, I, k), notes=notes)

    def build(make, sample=None):
        """``make()``'s index trained on ``sample`` (if any) and filled with ``xb``: index, seconds, bytes per item."""
        r0 = heap_bytes()
        t0 = time.perf_counter()
        index = make()
        if sample is not None:
            index.train(sample)
        t_train = time.perf_counter() - t0
        index.add(xb)
        t_build = time.perf_counter() - t0
        rss = (heap_bytes() - r0) / n
        return index, t_train, t_build, faiss.serialize_index(index).size / index.ntotal, rss

    # IVFFlat
    nlist = args.float_nlist
    sample, ntrain = train_sample(nlist)
    ivf, t_train, t_build, bpi, rss = build(lambda: faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist), sample)
    summary["float_bpi"][f"IndexIVFFlat nlist={nlist}"] = (bpi, rss)
    sweep("IndexIVFFlat", ivf, args.float_nprobe, lambda v: setattr(ivf, "nprobe", v),
          lambda v: f"nlist={nlist}, nprobe={v}", f"train {t_train:.1f} s on {ntrain:,}", t_build, bpi, rss)
    del ivf

    # HNSWFlat
    M = args.float_hnsw_m

    def make_hnsw():
        index = faiss.IndexHNSWFlat(d, M)
        index.hnsw.efConstruction = args.hnsw_ef_construction
        return index

    hnsw, _, t_build, bpi, rss = build(make_hnsw)
    summary["float_bpi"][f"IndexHNSWFlat M={M}"] = (bpi, rss)
    sweep("IndexHNSWFlat", hnsw, args.ef, lambda v: setattr(hnsw.hnsw, "efSearch", v),
          lambda v: f"M={M}, efSearch={v}", f"efConstruction={args.hnsw_ef_construction}", t_build, bpi, rss)
    del hnsw

    # IVFPQ
    m = args.pq_m
    sample, ntrain = train_sample(nlist)
    pq, t_train, t_build, bpi, rss = build(lambda: faiss.IndexIVFPQ(faiss.IndexFlatL2(d), d, nlist, m, 8), sample)
    summary["float_bpi"][f"IndexIVFPQ nlist={nlist} m={m}x8"] = (bpi, rss)
    sweep("IndexIVFPQ", pq, args.float_nprobe, lambda v: setattr(pq, "nprobe", v),
          lambda v: f"nlist={nlist}, m={m}, nbits=8, nprobe={v}",
          f"train {t_train:.1f} s on {ntrain:,}; PQ distances, no re-ranking", t_build, bpi, rss)
    del pq
    table.print(flat_qps)


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=ints, default=ints("1000000,10000000"), help="binary database sizes")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--flip-prob", type=float, default=0.15)
    ap.add_argument("--repeat", type=int, default=3, help="best-of repeats of each batch search")
    ap.add_argument("--threads", type=int, default=2, help="faiss.omp_set_num_threads")
    ap.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "env"],
                    help="OMP_WAIT_POLICY for faiss's libgomp; 'env' keeps the environment's value. PASSIVE (default) "
                         "avoids spin-waiting OpenMP threads, which slows faiss several-fold on an oversubscribed machine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nlist", type=ints, default=ints("1024,4096"), help="binary IVF nlist values")
    ap.add_argument("--nprobe", type=ints, default=ints("1,2,4,8,16,32,64"))
    ap.add_argument("--ivf-train", type=int, default=100_000, help="IVF training sample (at least 50 x nlist)")
    ap.add_argument("--ivf-niter", type=int, default=25, help="k-means iterations of the binary IVF training")
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--hnsw-ef-construction", type=int, default=40)
    ap.add_argument("--ef", type=ints, default=ints("16,32,64,128,256"), help="HNSW efSearch values")
    ap.add_argument("--hnsw-max-minutes", type=float, default=15.0,
                    help="build binary HNSW at a larger size only if the extrapolated build time is below this")
    ap.add_argument("--multihash", type=pairs, default=pairs("4x16,3x21"), help="nhash x b list")
    ap.add_argument("--nflip", type=ints, default=ints("0,1,2,3"))
    ap.add_argument("--overhead-queries", type=int, default=250, help="queries per call in the overhead rows")
    ap.add_argument("--overhead-repeat", type=int, default=5)
    ap.add_argument("--float-size", type=int, default=1_000_000, help="0 skips the float part")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--float-clusters", type=int, default=100)
    ap.add_argument("--float-noise", type=float, default=0.7, help="noise norm relative to the unit centre")
    ap.add_argument("--float-nlist", type=int, default=1024)
    ap.add_argument("--float-nprobe", type=ints, default=ints("1,4,16,64"))
    ap.add_argument("--float-train", type=int, default=100_000)
    ap.add_argument("--float-hnsw-m", type=int, default=16)
    ap.add_argument("--pq-m", type=int, default=16)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 100k binary, 100k float, nlist 256/1024, fewer sweep points")
    args = ap.parse_args()
    if args.quick:
        args.sizes = [100_000]
        args.float_size = min(args.float_size, 100_000)
        args.nlist = [256, 1024]
        args.nprobe = [1, 4, 16]
        args.ef = [16, 64]
        args.nflip = [0, 1, 2]
        args.float_nlist = 256
        args.float_nprobe = [1, 8]
        args.ivf_train = 20_000
        args.float_train = 20_000
    args.sizes = sorted(args.sizes)
    if args.omp_wait_policy != "env":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    global faiss
    import faiss as _faiss  # noqa: E402
    faiss = _faiss
    assert args.bits % 8 == 0, "--bits must be a multiple of 8"
    faiss.omp_set_num_threads(args.threads)

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"# bench_search: faiss index types; binary {args.bits}-bit codes at {', '.join(f'{s:,}' for s in args.sizes)} "
          f"items, float {args.dim}-d at {args.float_size:,} items; {args.queries:,} queries, recall@{args.k}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}, "
          f"{os.cpu_count()} CPUs, {args.threads} faiss threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, RAM {ram / 2**30:.1f} GiB, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    p_eff = round(args.flip_prob * 65536) / 65536
    print(f"binary data: {args.classes} classes (random centre codes), each bit flipped with p = {p_eff:.6f}; "
          f"queries from the same distribution, not in the database; smaller sizes are prefixes of the largest.")
    print(f"QPS: {args.queries} queries in one batch search call, best of {args.repeat}. bytes/item: serialized size "
          f"/ ntotal. heap growth/item: change of the {HEAP_KIND} across the build "
          f"/ n. Build s = train + add. Speed-up = QPS / QPS of the faster flat setting of the same size. "
          f"Overhead rows: {args.overhead_queries} queries per call.")
    print(f"binary recall@{args.k} is tie-aware: a returned id is correct if its exact Hamming distance to the query is "
          f"<= the {args.k}th smallest exact distance (flat index); -1 and repeated ids are wrong; "
          f"recall = correct / ({args.k} x queries). float recall@{args.k}: fraction of the exact {args.k} nearest ids returned.")

    try:
        from deephash_cli import faiss_index as dh_faiss  # noqa: E402
        dh_search = dh_faiss.search
    except Exception as exc:  # missing or broken module: report and continue
        dh_search = f"deephash_cli.faiss_index not available yet ({type(exc).__name__}: {exc})"

    summary = dict(flat={}, bpi={}, float_bpi={}, overhead={}, hnsw_skipped={}, d10={}, ties={}, tables={})
    rng = np.random.default_rng(args.seed)
    nbytes = args.bits // 8
    if args.sizes:
        centres = rng.integers(0, 256, (args.classes, nbytes), dtype=np.uint8)
        t0 = time.perf_counter()
        db_all = binary_codes(args.sizes[-1], centres, args.flip_prob, rng)
        q = binary_codes(args.queries, centres, args.flip_prob, rng)
        print(f"generated {args.sizes[-1]:,} codes in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        hnsw_first = dict(n=None, t=None)
        ivf_trained = {}
        for n in args.sizes:
            run_binary_size(n, db_all, q, args.bits, args, hnsw_first, ivf_trained, dh_search, summary)
        del db_all

    if args.float_size:
        run_float(args, summary)

    # --- deephash layer overhead
    if args.sizes:
        print()
        print(f"### deephash layer overhead: flat binary search, deephash_cli.faiss_index.search vs index.search "
              f"(interleaved, best of {args.overhead_repeat} each)")
        print()
        print("| items | queries per call | index.search s | faiss_index.search s | overhead | same results |")
        print("|---:|---:|---:|---:|---:|---|")
        for n in args.sizes:
            o = summary["overhead"].get(n)
            if isinstance(o, dict):
                ov = o["wrapped"] / o["direct"] - 1
                print(f"| {n:,} | {o['queries']} | {o['direct']:.4f} | {o['wrapped']:.4f} | {ov * 100:+.2f}% "
                      f"({'<' if ov < 0.05 else '>='} 5% target) | {o['same']} |")
            else:
                print(f"| {n:,} | | | | {o} | |")

    # --- memory note
    print()
    print(f"### memory: bytes per item and the largest database of {args.bits}-bit codes that would fit in RAM")
    print()
    print(f"RAM (os.sysconf) = {ram:,} bytes ({ram / 2**30:.1f} GiB). Max items = RAM / bytes per item: an upper "
          f"bound that ignores other processes, the OS, the queries and any build-time memory. Serialized bytes/item "
          f"and heap growth/item ({HEAP_KIND} across the build / n) are taken at the largest size each type was built; "
          f"in-RAM structures (e.g. hash tables, graph levels) can be larger than their serialized form.")
    print()
    print("| index | measured at | serialized bytes/item | heap growth/item | max items in RAM (serialized) "
          "| max items in RAM (heap growth) |")
    print("|---|---:|---:|---:|---:|---:|")

    def mx(b):
        return f"{ram / b:,.0f}" if b > 0 else "n/a"

    for name, by_n in summary["bpi"].items():
        n = max(by_n)
        bpi, hp = by_n[n]
        print(f"| {name} | {n:,} | {bpi:.1f} | {hp:.1f} | {mx(bpi)} | {mx(hp)} |")
    for name, (bpi, hp) in summary["float_bpi"].items():
        print(f"| {name} ({args.dim}-d float) | {args.float_size:,} | {bpi:.1f} | {hp:.1f} | {mx(bpi)} | {mx(hp)} |")

    # --- verdict
    if args.sizes:
        n = args.sizes[-1]
        table = summary["tables"][n]
        flat_qps = summary["flat"][n]["qps"]
        cands = [r for r in table.rows if r["index"] != "IndexBinaryFlat" and r.get("qps") is not None
                 and r.get("recall") is not None and r["recall"] >= 0.95]
        print()
        print(f"### verdict: target = an approximate binary index with recall@{args.k} >= 0.95 at >= 10x the flat "
              f"queries/second at {n:,} items")
        print()
        if not cands:
            print(f"No measured approximate setting reaches recall@{args.k} >= 0.95 at {n:,} items: target NOT met.")
        else:
            best = max(cands, key=lambda r: r["qps"])
            sp = best["qps"] / flat_qps
            print(f"Fastest setting with recall@{args.k} >= 0.95 at {n:,} items: {best['index']} {best['params']}: "
                  f"{best['qps']:,.1f} QPS, recall@{args.k} {best['recall']:.4f}, {sp:.2f}x the flat index "
                  f"({flat_qps:,.1f} QPS, use_heap={summary['flat'][n]['use_heap']}). "
                  f"Target {'MET' if sp >= 10 else 'NOT met'} ({sp:.2f}x {'>=' if sp >= 10 else '<'} 10x).")
        if n in summary["hnsw_skipped"]:
            print(f"IndexBinaryHNSW was not built at {n:,} ({summary['hnsw_skipped'][n]}), so it is not a candidate there.")
    print()
    print(f"total {time.perf_counter() - START:.0f} s; load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
