"""Binary hash codes: packing, unpacking and Hamming distances (pure numpy, no I/O).

Packed layout
-------------
A code of ``bits`` bits is stored as ``ceil(bits / 8)`` bytes exactly as
``numpy.packbits(bits01, axis=1)`` lays it out: bit ``j`` of the code is bit
``7 - j % 8`` (most significant bit first) of byte ``j // 8``, and the unused
trailing bits of the last byte are zero.  This is the layout faiss' ``IndexBinary*``
indexes expect, so packed codes can be added to them unchanged.

Sign convention
---------------
Real-valued or ±1 inputs are binarised with ``value > 0``: a strictly positive value
gives a 1 bit, and ``0`` (as well as any negative value) gives a 0 bit.  In other words
``sign(0)`` counts as a 0 bit, the same as ``-1``.  Boolean inputs map True -> 1.
"""

from __future__ import annotations

import numpy as np

from deephash_cli.errors import DeephashError

__all__ = [
    "pack_codes",
    "unpack_codes",
    "codes_to_pm1",
    "hamming_distances",
    "distance_dtype",
    "popcount",
]

# Popcount of every byte value, used when numpy has no ``bitwise_count`` (numpy < 2.0).
_POPCOUNT_TABLE = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

# Database columns processed per tile in ``hamming_distances``: the uint64 XOR buffer of a
# tile (rows x _TILE x 8 bytes) then stays cache-sized instead of growing with the database.
_TILE = 8192


def n_bytes(bits: int) -> int:
    """Bytes of one packed code of ``bits`` bits: ``ceil(bits / 8)``."""
    return (int(bits) + 7) // 8


def distance_dtype(bits: int) -> np.dtype:
    """Smallest unsigned dtype that holds every Hamming distance 0..bits.

    uint8 for ``bits <= 255``, uint16 up to 65535 bits, uint32 beyond.
    """
    if bits <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    if bits <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def popcount(words: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Number of set bits of every element of an unsigned integer array.

    words (...) uint8/uint16/uint32/uint64 -> (...) uint8 (or ``out``'s dtype).
    Uses ``np.bitwise_count`` (numpy >= 2.0) and a byte lookup table otherwise.
    """
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words, out=out)
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(words.shape + (words.itemsize,))
    counts = _POPCOUNT_TABLE[as_bytes].sum(axis=-1, dtype=np.uint8)
    if out is None:
        return counts
    out[...] = counts
    return out


def pack_codes(bits_pm1_or_bool: np.ndarray) -> np.ndarray:
    """Pack binary codes given as ±1, {0,1}, bool or real values into bytes.

    bits_pm1_or_bool (n, bits) bool or real -> codes (n, ceil(bits/8)) uint8.

    Bit j is 1 exactly when value j is > 0; zero and negative values give 0 bits
    (``sign(0)`` counts as a 0 bit).  Packing is ``numpy.packbits(axis=1)``: MSB first,
    unused trailing bits zero.
    """
    x = np.asarray(bits_pm1_or_bool)
    if x.ndim != 2:
        raise DeephashError(f"codes to pack must be a 2-D (items, bits) array, got shape {x.shape}.")
    if x.shape[1] == 0:
        raise DeephashError("codes to pack must have at least one bit.")
    if x.dtype == bool:
        bits01 = x
    elif np.issubdtype(x.dtype, np.number):
        if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any():
            raise DeephashError("codes to pack contain NaN values, which have no sign.")
        bits01 = x > 0
    else:
        raise DeephashError(f"codes to pack must be boolean or numeric, got dtype {x.dtype}.")
    return np.packbits(bits01, axis=1)


def _check_packed(codes: np.ndarray, bits: int | None, what: str) -> np.ndarray:
    """Validate packed codes (n, nbytes) uint8, optionally against ``bits``."""
    c = np.asarray(codes)
    if c.dtype != np.uint8:
        raise DeephashError(f"{what} must be packed uint8 codes, got dtype {c.dtype}.")
    if c.ndim != 2 or c.shape[1] == 0:
        raise DeephashError(f"{what} must be a 2-D (items, bytes) array of packed codes, got shape {c.shape}.")
    if bits is not None:
        if int(bits) <= 0:
            raise DeephashError(f"the number of bits must be positive, got {bits}.")
        if c.shape[1] != n_bytes(bits):
            raise DeephashError(
                f"{what} have {c.shape[1]} bytes per code but {bits} bits need {n_bytes(bits)}."
            )
    return c


def unpack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unpack codes (n, ceil(bits/8)) uint8 into bits (n, bits) uint8 with values {0, 1}."""
    c = _check_packed(codes, bits, "codes")
    return np.unpackbits(c, axis=1, count=int(bits))


def codes_to_pm1(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unpack codes (n, ceil(bits/8)) uint8 into (n, bits) float32 with values ±1 (1 bit -> +1)."""
    b = unpack_codes(codes, bits).astype(np.float32)
    return b * 2.0 - 1.0


def as_words(codes: np.ndarray) -> np.ndarray:
    """View packed codes (n, nbytes) uint8 as (n, ceil(nbytes/8)) uint64 words.

    Codes are zero-padded to a multiple of 8 bytes first; padding bytes are equal in every
    code, so they XOR to zero and never change a Hamming distance.
    """
    n, nb = codes.shape
    width = -(-nb // 8) * 8
    padded = np.zeros((n, width), dtype=np.uint8)
    padded[:, :nb] = codes
    return padded.view(np.uint64)


def hamming_words(query_words: np.ndarray, db_words: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Hamming distances between word-packed codes, written into ``out``.

    query_words (q, w) uint64, db_words (n, w) uint64 -> out (q, n) unsigned int.
    Works through the database in tiles so the uint64 XOR buffer stays small.
    """
    q, w = query_words.shape
    n = db_words.shape[0]
    tile = min(_TILE, max(n, 1))
    xor_buf = np.empty((q, tile), dtype=np.uint64)
    cnt_buf = np.empty((q, tile), dtype=np.uint8) if w > 1 else None
    for start in range(0, n, tile):
        stop = min(start + tile, n)
        x = xor_buf[:, : stop - start]
        dst = out[:, start:stop]
        for word in range(w):
            np.bitwise_xor(query_words[:, word, None], db_words[None, start:stop, word], out=x)
            if word == 0:
                popcount(x, out=dst)
            else:
                # A word's popcount is at most 64, so uint8 is enough for the per-word count;
                # the running sum fits ``out``'s dtype, chosen for the full code length.
                c = popcount(x, out=cnt_buf[:, : stop - start])
                np.add(dst, c, out=dst)
    return out


def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances between packed codes.

    query_codes (q, nbytes) uint8, db_codes (n, nbytes) uint8 -> (q, n) ``distance_dtype(8*nbytes)``
    (uint8 up to 255 bits, i.e. nbytes <= 31; uint16 for 256 bits and more).

    Codes are viewed as uint64 words (zero-padded to a multiple of 8 bytes), XORed and
    popcounted.  Memory is the output plus a small tile buffer.
    """
    qc = _check_packed(query_codes, None, "query codes")
    dc = _check_packed(db_codes, None, "database codes")
    if qc.shape[1] != dc.shape[1]:
        raise DeephashError(
            f"query codes have {qc.shape[1]} bytes per code but database codes have {dc.shape[1]}."
        )
    out = np.empty((qc.shape[0], dc.shape[0]), dtype=distance_dtype(8 * qc.shape[1]))
    return hamming_words(as_words(qc), as_words(dc), out)
