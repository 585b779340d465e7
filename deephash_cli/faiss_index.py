"""faiss indexes over deephash codes and embeddings: build, add, search, serialize (no I/O, no HDF5).

The one module that talks to faiss. An ``IndexSpec`` says what to build; ``build`` makes the (trained,
empty) index, ``add`` appends vectors, ``search`` answers queries with distances on the same scale as
``deephash evaluate``:

* binary codes (packed uint8, ``numpy.packbits`` order, as in artifacts): Hamming distance, int;
* ``l2`` float embeddings: squared euclidean distance (faiss's own, the evaluation path's ranking key);
* ``cosine`` float embeddings: 1 − cos, vectors L2-normalised before they enter the index.

Index types (``INDEX_TYPES`` lists them with the faiss class each maps to): binary ``flat``, ``ivf``,
``hnsw``, ``hash``; float ``flat``, ``ivf``, ``hnsw``, ``ivfpq``; or any faiss factory string
(``factory:IVF1024,PQ16``, or ``factory:BIVF256`` for codes) for experts.

Tie order of exact (flat) search: the binary flat index runs faiss's counting k-selection
(``use_heap = False``), which keeps, per distance, the lowest ids first; so results are sorted by
(distance, id), the same order as a stable sort of the evaluation path's distances over the index's item
order. Float flat results are re-sorted by (distance, id) too. Which item gets which id is the caller's
choice (``index --tie-order``: ties.py). ``count_ties`` says how many items share the k-th distance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from deephash_cli.errors import DeephashError

# type name -> (applies to binary codes?, faiss class, what it is); the CLI's --help lists these.
INDEX_TYPES: dict[str, tuple[bool, str, str]] = {
    "flat": (True, "IndexBinaryFlat / IndexFlatL2 / IndexFlatIP", "exact search"),
    "ivf": (True, "IndexBinaryIVF / IndexIVFFlat", "inverted lists over k-means cells (--nlist, --nprobe)"),
    "hnsw": (True, "IndexBinaryHNSW / IndexHNSWFlat", "graph search (--hnsw-m, --ef)"),
    "hash": (True, "IndexBinaryMultiHash", "codes only: multi-index hashing (--nhash, --nflip)"),
    "ivfpq": (False, "IndexIVFPQ", "float only: inverted lists + product quantisation (--pq-m)"),
}
METRICS = ("hamming", "l2", "cosine")
FACTORY_PREFIX = "factory:"


def faiss_module():
    """faiss, or a DeephashError saying how to install it."""
    try:
        import faiss  # noqa: PLC0415 - optional heavy import, only for index/search
    except ImportError as err:
        raise DeephashError(f"faiss is not installed ({err}); pip install faiss-cpu") from None
    return faiss


@dataclass
class IndexSpec:
    """What to build: ``type`` (an INDEX_TYPES name or ``factory:STRING``), ``binary``, ``metric``, ``width``
    (bits for codes, dimension for floats) and the type's parameters (None: chosen from the data size)."""

    type: str
    binary: bool
    metric: str
    width: int
    nlist: int | None = None
    hnsw_m: int = 32
    nhash: int | None = None
    hash_bits: int | None = None
    pq_m: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IndexSpec":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError as err:
            raise DeephashError(f"index spec is incomplete ({err})") from None

    @property
    def is_exact(self) -> bool:
        return self.type == "flat"

    def check(self) -> None:
        """Refuse impossible combinations, naming what was expected."""
        if self.metric not in METRICS:
            raise DeephashError(f"unknown metric '{self.metric}'; valid: {', '.join(METRICS)}")
        if self.binary != (self.metric == "hamming"):
            raise DeephashError(f"metric {self.metric} does not fit {'binary codes' if self.binary else 'floats'}")
        if self.type.startswith(FACTORY_PREFIX):
            if not self.type[len(FACTORY_PREFIX):].strip():
                raise DeephashError("--type factory:STRING needs a faiss factory string, e.g. factory:IVF256,Flat")
            return
        if self.type not in INDEX_TYPES:
            raise DeephashError(f"unknown index type '{self.type}'; valid: {', '.join(INDEX_TYPES)} or "
                                f"factory:STRING")
        if self.type == "hash" and not self.binary:
            raise DeephashError("index type hash (multi-index hashing) is for binary codes; for embeddings use "
                                "flat, ivf, hnsw or ivfpq")
        if self.type == "ivfpq" and self.binary:
            raise DeephashError("index type ivfpq is for float embeddings; for binary codes use flat, ivf, hnsw "
                                "or hash")
        for name in ("nlist", "hnsw_m", "nhash", "hash_bits", "pq_m"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise DeephashError(f"--{name.replace('_', '-')} must be positive, got {value}")


def code_dimension(bits: int) -> int:
    """faiss's binary dimension for ``bits``-bit codes: the packed width in bits (a multiple of 8; the
    unused trailing bits are zero in every code, so Hamming distances are unchanged)."""
    return 8 * ((int(bits) + 7) // 8)


def default_nlist(n: int) -> int:
    """Inverted lists for ``n`` items: about 4·√n, at most n/39 (faiss wants ≥ 39 training points per
    centroid), at least 1."""
    return int(max(1, min(round(4 * math.sqrt(max(n, 1))), n // 39)))


def _default_pq_m(dim: int) -> int:
    """Sub-quantisers of IVFPQ: the largest divisor of ``dim`` that is at most dim/8 (16 bytes for 128-d)."""
    target = max(1, dim // 8)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def resolve(spec: IndexSpec, n_train: int) -> IndexSpec:
    """Fill the parameters left to the data size (nlist, multi-hash layout, PQ size)."""
    spec.check()
    values = asdict(spec)
    if spec.type in ("ivf", "ivfpq") and spec.nlist is None:
        values["nlist"] = default_nlist(n_train)
    if spec.type == "hash":
        dim = code_dimension(spec.width)
        hash_bits = spec.hash_bits or min(16, dim)
        nhash = spec.nhash or max(1, dim // hash_bits)
        if nhash * hash_bits > dim:
            raise DeephashError(f"--nhash {nhash} × --hash-bits {hash_bits} = {nhash * hash_bits} exceeds the code "
                                f"length {dim}")
        values.update(nhash=nhash, hash_bits=hash_bits)
    if spec.type == "ivfpq":
        pq_m = spec.pq_m or _default_pq_m(spec.width)
        if spec.width % pq_m:
            raise DeephashError(f"--pq-m {pq_m} must divide the embedding dimension {spec.width}")
        values["pq_m"] = pq_m
    return IndexSpec(**values)


def build(spec: IndexSpec, train: np.ndarray):
    """A trained, empty faiss index for ``spec`` (``train``: vectors to train on, as ``add`` takes them)."""
    faiss = faiss_module()
    train = prepare(spec, train)
    if spec.binary:
        dim = code_dimension(spec.width)
        if spec.type.startswith(FACTORY_PREFIX):
            index = _factory(lambda s: faiss.index_binary_factory(dim, s), spec)
        elif spec.type == "flat":
            index = faiss.IndexBinaryFlat(dim)
        elif spec.type == "ivf":
            quantizer = faiss.IndexBinaryFlat(dim)
            index = faiss.IndexBinaryIVF(quantizer, dim, int(spec.nlist))
            index.own_fields = True
            quantizer.this.disown()
        elif spec.type == "hnsw":
            index = faiss.IndexBinaryHNSW(dim, int(spec.hnsw_m))
        else:  # hash
            index = faiss.IndexBinaryMultiHash(dim, int(spec.nhash), int(spec.hash_bits))
    else:
        dim = int(spec.width)
        metric = faiss.METRIC_L2 if spec.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if spec.type.startswith(FACTORY_PREFIX):
            index = _factory(lambda s: faiss.index_factory(dim, s, metric), spec)
        elif spec.type == "flat":
            index = faiss.IndexFlatL2(dim) if spec.metric == "l2" else faiss.IndexFlatIP(dim)
        elif spec.type == "ivf":
            quantizer = faiss.IndexFlatL2(dim) if spec.metric == "l2" else faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, int(spec.nlist), metric)
            index.own_fields = True
            quantizer.this.disown()
        elif spec.type == "hnsw":
            index = faiss.IndexHNSWFlat(dim, int(spec.hnsw_m), metric)
        else:  # ivfpq
            quantizer = faiss.IndexFlatL2(dim) if spec.metric == "l2" else faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFPQ(quantizer, dim, int(spec.nlist), int(spec.pq_m), 8, metric)
            index.own_fields = True
            quantizer.this.disown()
    if not index.is_trained:
        nlist = _nlist_of(index)
        if nlist is not None and len(train) < nlist:
            raise DeephashError(f"an IVF index with {nlist} lists needs at least {nlist} items to train on, found "
                                f"{len(train)} (lower --nlist)")
        if spec.type == "ivfpq" and len(train) < 256:
            raise DeephashError(f"ivfpq trains 256 centroids per sub-quantiser: needs at least 256 items, found "
                                f"{len(train)} (use ivf or flat)")
        _checked(lambda: index.train(train), "training the index")
    return index


def _factory(make, spec: IndexSpec):
    text = spec.type[len(FACTORY_PREFIX):]
    try:
        return make(text)
    except RuntimeError as err:
        raise DeephashError(f"faiss cannot build factory string '{text}' ({_first_line(err)})") from None


def _nlist_of(index) -> int | None:
    faiss = faiss_module()
    for extract in (getattr(faiss, "extract_index_ivf", None), getattr(faiss, "extract_index_binary_ivf", None)):
        if extract is None:
            continue
        try:
            return int(extract(index).nlist)
        except (RuntimeError, TypeError, AttributeError):
            continue
    return getattr(index, "nlist", None)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return next((line.strip() for line in text if "Error in" not in line and line.strip()), type(err).__name__)


def _checked(call, what: str):
    try:
        return call()
    except RuntimeError as err:
        raise DeephashError(f"faiss failed {what}: {_first_line(err)}") from None


def prepare(spec: IndexSpec, vectors: np.ndarray) -> np.ndarray:
    """Vectors as the index takes them: packed uint8 codes, or float32 rows (normalised for cosine)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise DeephashError(f"expected a (n, width) array of vectors, found shape {vectors.shape}")
    if spec.binary:
        width = code_dimension(spec.width) // 8
        if vectors.dtype != np.uint8 or vectors.shape[1] != width:
            raise DeephashError(f"expected packed {spec.width}-bit codes ((n, {width}) uint8), found "
                                f"{vectors.shape} {vectors.dtype}")
        return np.ascontiguousarray(vectors)
    if vectors.shape[1] != spec.width:
        raise DeephashError(f"expected {spec.width}-d embeddings, found {vectors.shape[1]}-d")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if spec.metric == "cosine":
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms > 0, norms, 1.0)
    return vectors


def add(index, spec: IndexSpec, vectors: np.ndarray) -> None:
    """Append ``vectors`` (ids continue from ``index.ntotal``)."""
    _checked(lambda: index.add(prepare(spec, vectors)), "adding vectors")


def search(index, queries: np.ndarray, k: int, *, nprobe: int | None = None, ef: int | None = None,
           nflip: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest items of each query row: (distances (q, k), ids (q, k) int64, -1 where an
    approximate index found fewer than k). ``queries`` must already be prepared (``prepare``).

    ``nprobe`` (IVF lists visited), ``ef`` (HNSW search breadth) and ``nflip`` (multi-hash: bits flipped
    per sub-code) tune approximate indexes; they are ignored by the others.
    """
    faiss = faiss_module()
    if k <= 0:
        raise DeephashError(f"-k must be positive, got {k}")
    if k > index.ntotal:
        raise DeephashError(f"-k {k} exceeds the {index.ntotal} items in the index")
    if nprobe is not None:
        ivf = _ivf_of(index)
        if ivf is not None:
            ivf.nprobe = int(nprobe)
    if ef is not None and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(ef)
    if nflip is not None and hasattr(index, "nflip"):
        index.nflip = int(nflip)
    if isinstance(index, faiss.IndexBinaryFlat):
        index.use_heap = False  # counting k-selection: ties in database order (module docstring)
    distances, ids = index.search(queries, k)
    if isinstance(index, faiss.IndexFlat) and k > 1:
        # Equal float distances within the k returned: database order, as for codes.
        larger_first = index.metric_type == faiss.METRIC_INNER_PRODUCT  # similarities: best is largest
        order = _tie_order(-distances if larger_first else distances, ids)
        distances, ids = np.take_along_axis(distances, order, 1), np.take_along_axis(ids, order, 1)
    return distances, ids


#: Range-search results held at once while counting ties (about 12 bytes each): bounds the memory of a query
#: whose k-th distance is shared by a large part of the index.
TIE_COUNT_RESULTS = 1 << 23


def count_ties(index, spec: IndexSpec, queries: np.ndarray, raw: np.ndarray, ids: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per query, over every item of a flat index: (items strictly closer than the k-th result, items at
    exactly the k-th result's distance); ``raw``/``ids`` are ``search``'s answer for ``queries`` (prepared).

    faiss's range search finds the items within the k-th distance (queries in chunks sorted by it, at most
    ``TIE_COUNT_RESULTS`` results per chunk), then they are counted. Codes: exact integer Hamming distances.
    Floats: the candidates come from a slightly wider radius and are compared with the range search's own
    distance of the k-th result, so the count is one computation's exact equality (duplicate vectors tie).
    """
    faiss = faiss_module()
    if not spec.is_exact:
        raise DeephashError(f"tie counts need an exact (flat) index, not {spec.type}")
    n = len(queries)
    kth, kth_id = raw[:, -1], ids[:, -1]
    similarity = not spec.binary and index.metric_type == faiss.METRIC_INNER_PRODUCT  # larger is closer
    closer, tied = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    if n == 0:
        return closer, tied
    norms = None if spec.binary else np.einsum("ij,ij->i", queries, queries)
    order = np.argsort(-kth if similarity else kth, kind="stable")
    step = max(1, TIE_COUNT_RESULTS // max(int(index.ntotal), 1))
    for start in range(0, n, step):
        chunk = order[start:start + step]
        if spec.binary:
            radius = int(kth[chunk].max()) + 1  # range search keeps distance < radius
        elif similarity:
            low = float(kth[chunk].min())  # keeps similarity > radius
            radius = low - 1e-4 * max(abs(low), 1.0)
        else:
            high = float(kth[chunk].max())  # margin far above float32 rounding of |q|² + |y|² − 2⟨q, y⟩
            radius = high + 1e-4 * (high + float(norms[chunk].max())) + 1e-12
        lims, found, found_ids = _checked(lambda: index.range_search(queries[chunk], radius), "counting ties")
        owner = np.repeat(np.arange(len(chunk)), np.diff(lims.astype(np.int64)))
        reference = kth[chunk].copy()
        if not spec.binary:
            own = np.flatnonzero(found_ids == kth_id[chunk][owner])
            reference[owner[own]] = found[own]  # the range search's distance of the k-th result itself
        if similarity:
            is_closer = found > reference[owner]
        else:
            is_closer = found < reference[owner]
        closer[chunk] = np.bincount(owner[is_closer], minlength=len(chunk))
        tied[chunk] = np.bincount(owner[found == reference[owner]], minlength=len(chunk))
    return closer, tied


def _tie_order(distances: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per row, the permutation sorting by (distance, id)."""
    rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
    flat = np.lexsort((ids.ravel(), distances.ravel(), rows))  # row first, then distance, then id
    return (flat - rows * ids.shape[1]).reshape(ids.shape)


def _ivf_of(index):
    faiss = faiss_module()
    for extract in ("extract_index_ivf", "extract_index_binary_ivf"):
        function = getattr(faiss, extract, None)
        if function is None:
            continue
        try:
            return function(index)
        except (RuntimeError, TypeError, AttributeError):
            continue
    return index if hasattr(index, "nprobe") else None


def to_distances(spec: IndexSpec, raw: np.ndarray) -> np.ndarray:
    """faiss's scores on the evaluation scale: Hamming and squared L2 as they are, inner product -> 1 − cos."""
    if spec.metric == "cosine":
        return (1.0 - raw).astype(np.float32)
    return raw


def serialize(index) -> np.ndarray:
    """The index in faiss's own serialization, as a uint8 array (stored in the index artifact)."""
    faiss = faiss_module()
    if isinstance(index, faiss.IndexBinary):
        return faiss.serialize_index_binary(index)
    return faiss.serialize_index(index)


def deserialize(data: np.ndarray, spec: IndexSpec, where: str):
    """Rebuild an index from ``serialize``'s bytes; truncated or foreign bytes are a DeephashError."""
    faiss = faiss_module()
    data = np.ascontiguousarray(data, dtype=np.uint8)
    try:
        index = faiss.deserialize_index_binary(data) if spec.binary else faiss.deserialize_index(data)
    except (RuntimeError, ValueError) as err:
        raise DeephashError(f"{where}: the stored faiss index cannot be read by faiss {faiss.__version__} "
                            f"({_first_line(err)}); the file is truncated, damaged or from an incompatible faiss: "
                            f"rebuild it with deephash index") from None
    expected = code_dimension(spec.width) if spec.binary else spec.width
    if index.d != expected:
        raise DeephashError(f"{where}: the stored faiss index has dimension {index.d}, its spec says {expected}")
    return index


def exact_neighbours(spec: IndexSpec, database: np.ndarray, queries: np.ndarray, k: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth for ``--check-recall``: a flat index over ``database`` searched for ``queries``."""
    exact = IndexSpec("flat", spec.binary, spec.metric, spec.width)
    flat = build(exact, database)  # a flat index needs no training: nothing is fitted on the database
    add(flat, exact, database)
    return search(flat, prepare(spec, queries), k)


def recall_at_k(spec: IndexSpec, found_distances: np.ndarray, found_ids: np.ndarray, exact_distances: np.ndarray,
                exact_ids: np.ndarray) -> float:
    """Recall@k of approximate results against exact ones.

    Binary codes tie a lot, so a returned item counts as correct when its (exact) Hamming distance is at most
    the exact k-th neighbour's: any item at that distance is as right as the one flat search happened to
    keep. Floats: the fraction of the exact k ids returned. -1 ids (nothing found) count as wrong.
    """
    k = exact_ids.shape[1]
    if spec.binary:
        kth = exact_distances[:, -1:]
        correct = (found_ids >= 0) & (found_distances <= kth)
        return float(correct.sum() / (k * len(exact_ids)))
    hits = sum(len(set(a[a >= 0].tolist()) & set(b.tolist())) for a, b in zip(found_ids, exact_ids))
    return float(hits / (k * len(exact_ids)))
