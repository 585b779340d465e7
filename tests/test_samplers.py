"""P x K batch sampler and random triplets."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deephash_cli.errors import DeephashError
from deephash_cli.samplers import PKBatchSampler, random_triplets


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 12), min_size=2, max_size=10),  # class sizes (some below K)
    st.integers(2, 4),
    st.integers(2, 5),
    st.integers(0, 1000),
)
def test_pk_batches_have_p_classes_times_k_items(sizes, p, k, seed):
    p = min(p, len(sizes))
    labels = np.repeat(np.arange(len(sizes)) * 7 + 3, sizes)  # non-contiguous label values
    sampler = PKBatchSampler(labels, p, k, seed=seed, batches_per_epoch=5)
    first = list(sampler)
    assert len(first) == len(sampler) == 5
    for b in first:
        assert len(b) == p * k
        counts = Counter(labels[b].tolist())
        assert len(counts) == p and set(counts.values()) == {k}
        for c in counts:  # no repeats unless the class is smaller than K
            members = [i for i in b if labels[i] == c]
            if sizes[(c - 3) // 7] >= k:
                assert len(set(members)) == k
    assert list(sampler) == first  # same epoch, same batches
    again = PKBatchSampler(labels, p, k, seed=seed, batches_per_epoch=5)
    assert list(again) == first  # same seed, same batches
    if sum(sizes) > p * k:  # enough room for epochs to differ
        sampler.set_epoch(1)
        assert list(sampler) != first


def test_default_epoch_length_and_dataloader_use():
    labels = np.repeat(np.arange(10), 20)  # n = 200
    sampler = PKBatchSampler(labels, 4, 5, seed=0)
    assert len(sampler) == 200 // 20
    loader = torch.utils.data.DataLoader(torch.arange(200), batch_sampler=sampler)
    assert [len(x) for x in loader] == [20] * 10


def test_pk_errors_are_one_sentence():
    labels = np.repeat(np.arange(3), 4)
    with pytest.raises(DeephashError, match="at least 2"):
        PKBatchSampler(labels, 2, 1, seed=0)
    with pytest.raises(DeephashError, match="exceeds the 3 classes"):
        PKBatchSampler(labels, 4, 2, seed=0)


def test_random_triplets_constraints_and_reproducible():
    labels = np.array([5, 5, 5, 7, 7, 9, 2, 2, 2, 2])  # class 9 is a singleton: never an anchor
    gen = torch.Generator().manual_seed(0)
    a, p, n = random_triplets(labels, 5000, gen)
    assert a.shape == p.shape == n.shape == (5000,) and a.dtype == torch.long
    la, lp, ln = labels[a.numpy()], labels[p.numpy()], labels[n.numpy()]
    assert (la == lp).all() and (a != p).all() and (la != ln).all()
    assert 5 not in set(a.tolist())
    # Uniform anchors over the 9 eligible items; uniform negatives over other classes.
    counts = Counter(a.tolist())
    assert set(counts) == {0, 1, 2, 3, 4, 6, 7, 8, 9}
    assert max(counts.values()) - min(counts.values()) < 250
    neg_of_0 = Counter(n[a == 0].tolist())
    assert set(neg_of_0) == {3, 4, 5, 6, 7, 8, 9}
    again = random_triplets(labels, 5000, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip((a, p, n), again))
    fresh = random_triplets(labels, 5000, gen)  # next epoch, same generator: new draw
    assert not torch.equal(fresh[0], a)


def test_random_triplets_single_class_raises():
    with pytest.raises(DeephashError, match="only one"):
        random_triplets(np.zeros(5, dtype=int), 3, torch.Generator().manual_seed(0))
    with pytest.raises(DeephashError):
        random_triplets(np.arange(4), 3, torch.Generator().manual_seed(0))
