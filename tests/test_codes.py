"""Tests for deephash_cli.codes: packing layout, round trips and Hamming distances."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from deephash_cli import codes as codes_mod
from deephash_cli.codes import codes_to_pm1, hamming_distances, pack_codes, unpack_codes
from deephash_cli.errors import DeephashError


def naive_hamming(a_bits: np.ndarray, b_bits: np.ndarray) -> np.ndarray:
    """Plain-loop Hamming distances between {0,1} bit matrices."""
    out = np.zeros((len(a_bits), len(b_bits)), dtype=np.int64)
    for i, a in enumerate(a_bits):
        for j, b in enumerate(b_bits):
            out[i, j] = sum(int(x) != int(y) for x, y in zip(a, b))
    return out


def test_pack_layout_is_msb_first_with_zero_padding():
    bits = np.array([[1, 0, 0, 0, 0, 0, 0, 1, 1, 1]], dtype=bool)
    packed = pack_codes(bits)
    assert packed.dtype == np.uint8
    assert packed.shape == (1, 2)
    assert packed.tolist() == [[0b10000001, 0b11000000]]


def test_pack_sign_zero_is_a_zero_bit():
    x = np.array([[1.0, -1.0, 0.0, -0.0, 1e-30, -1e-30, 3.0, 0.0]])
    assert pack_codes(x).tolist() == [[0b10001010]]
    assert pack_codes(np.array([[0, 1, -1, 2]])).tolist() == [[0b01010000]]


def test_pack_rejects_bad_input():
    with pytest.raises(DeephashError):
        pack_codes(np.zeros(8))
    with pytest.raises(DeephashError):
        pack_codes(np.array([[np.nan, 1.0]]))
    with pytest.raises(DeephashError):
        unpack_codes(np.zeros((2, 2), dtype=np.uint8), bits=20)
    with pytest.raises(DeephashError):
        unpack_codes(np.zeros((2, 2), dtype=np.int32), bits=16)
    with pytest.raises(DeephashError):
        hamming_distances(np.zeros((2, 2), dtype=np.uint8), np.zeros((2, 3), dtype=np.uint8))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=70),
        elements=st.sampled_from([-1.0, 1.0, 0.0, 0.5, -2.5]),
    )
)
def test_pack_unpack_round_trip_matches_numpy(x):
    bits = x.shape[1]
    packed = pack_codes(x)
    assert np.array_equal(packed, np.packbits(x > 0, axis=1))
    unpacked = unpack_codes(packed, bits)
    assert unpacked.dtype == np.uint8
    assert np.array_equal(unpacked, np.unpackbits(packed, axis=1, count=bits))
    assert np.array_equal(unpacked, (x > 0).astype(np.uint8))
    pm1 = codes_to_pm1(packed, bits)
    assert pm1.dtype == np.float32
    assert np.array_equal(pm1, np.where(x > 0, 1.0, -1.0).astype(np.float32))
    assert np.array_equal(pack_codes(pm1), packed)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 140),
    st.integers(1, 6),
    st.integers(1, 7),
    st.integers(0, 2**32 - 1),
)
def test_hamming_equals_naive_popcount_and_is_symmetric(bits, nq, ndb, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, (nq, bits)).astype(np.uint8)
    b = rng.integers(0, 2, (ndb, bits)).astype(np.uint8)
    pa, pb = pack_codes(a), pack_codes(b)
    d = hamming_distances(pa, pb)
    assert d.dtype == np.uint8
    assert np.array_equal(d, naive_hamming(a, b))
    assert np.array_equal(hamming_distances(pb, pa), d.T)
    assert np.all(np.diag(hamming_distances(pa, pa)) == 0)


def test_hamming_dtype_switches_to_uint16_at_256_bits():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, (3, 256)).astype(np.uint8)
    ones, zeros = np.ones((1, 256), dtype=np.uint8), np.zeros((1, 256), dtype=np.uint8)
    d = hamming_distances(pack_codes(np.vstack([a, ones])), pack_codes(np.vstack([a, zeros])))
    assert d.dtype == np.uint16
    assert d[3, 3] == 256  # would wrap to 0 in uint8
    assert np.array_equal(d[:3, :3], naive_hamming(a, a))
    assert hamming_distances(pack_codes(a[:, :248]), pack_codes(a[:, :248])).dtype == np.uint8


def test_hamming_tiles_over_large_database(monkeypatch):
    # Force several tiles so the tiling loop boundaries are exercised.
    monkeypatch.setattr(codes_mod, "_TILE", 7)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, (4, 72)).astype(np.uint8)
    b = rng.integers(0, 2, (30, 72)).astype(np.uint8)
    assert np.array_equal(hamming_distances(pack_codes(a), pack_codes(b)), naive_hamming(a, b))


def test_popcount_fallback_without_bitwise_count(monkeypatch):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 2, (5, 100)).astype(np.uint8)
    b = rng.integers(0, 2, (9, 100)).astype(np.uint8)
    expected = naive_hamming(a, b)
    if hasattr(np, "bitwise_count"):
        monkeypatch.delattr(np, "bitwise_count")
    assert not hasattr(np, "bitwise_count")
    assert np.array_equal(hamming_distances(pack_codes(a), pack_codes(b)), expected)
