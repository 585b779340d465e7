"""Where triplets come from before any mining: P x K batches, or random triplets.

* :class:`PKBatchSampler` yields batches of ``P`` classes x ``K`` items, the input that
  in-batch miners (batch-hard, semi-hard, ...) need: every anchor has ``K - 1``
  positives and ``(P - 1) K`` negatives.
* :func:`random_triplets` draws ``(anchor, positive, negative)`` dataset indices
  uniformly from the whole train set, fresh each epoch: the "random triplets" baseline
  (the loop embeds those indices and passes the triplets re-indexed over that batch).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from deephash_cli.errors import DeephashError


class PKBatchSampler(Sampler[list[int]]):
    """Batches of ``classes_per_batch`` (P) distinct classes x ``samples_per_class`` (K) items.

    Use as ``DataLoader(dataset, batch_sampler=PKBatchSampler(...))``; call
    ``set_epoch(e)`` before each epoch. Batch ``i`` of epoch ``e`` depends only on
    ``(seed, e)``: iterating the same epoch twice gives the same batches, different
    epochs give different ones.

    Per batch: P classes uniformly without replacement; per class K of its items
    without replacement, or **with replacement when the class has fewer than K items**
    (the documented fallback: such a batch repeats items, so some positive pairs are
    an item with itself, at distance 0; miners treat those like any positive).

    Args:
        labels: ``(n,)`` class labels of the dataset (any dtype ``np.unique`` handles).
        classes_per_batch: P >= 2 (a batch needs negatives), at most the number of classes.
        samples_per_class: K >= 2 (a batch needs positives).
        seed: base seed.
        batches_per_epoch: epoch length; default ``max(1, n // (P K))`` (about one pass
            over the data's worth of items).
    """

    def __init__(
        self,
        labels: np.ndarray,
        classes_per_batch: int,
        samples_per_class: int,
        seed: int = 0,
        batches_per_epoch: int | None = None,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise DeephashError("the P x K sampler needs a non-empty 1-D array of labels.")
        classes, inverse = np.unique(labels, return_inverse=True)
        n_classes = len(classes)
        if samples_per_class < 2:
            raise DeephashError(
                f"samples per class must be at least 2 (got {samples_per_class}), "
                "otherwise a batch has no positive pairs to form triplets."
            )
        if classes_per_batch < 2:
            raise DeephashError(
                f"classes per batch must be at least 2 (got {classes_per_batch}), "
                "otherwise a batch has no negatives to form triplets."
            )
        if classes_per_batch > n_classes:
            raise DeephashError(
                f"classes per batch ({classes_per_batch}) exceeds the {n_classes} classes in the data."
            )
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise DeephashError(f"batches per epoch must be at least 1 (got {batches_per_epoch}).")
        self.p = int(classes_per_batch)
        self.k = int(samples_per_class)
        self.seed = int(seed)
        self.epoch = 0
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=n_classes)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        # Item indices of each class, in dataset order.
        self._members = [order[bounds[c] : bounds[c + 1]] for c in range(n_classes)]
        self.batches_per_epoch = (
            int(batches_per_epoch) if batches_per_epoch is not None else max(1, labels.size // (self.p * self.k))
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n_classes = len(self._members)
        for _ in range(self.batches_per_epoch):
            batch: list[int] = []
            for c in rng.choice(n_classes, size=self.p, replace=False):
                members = self._members[c]
                batch.extend(rng.choice(members, size=self.k, replace=len(members) < self.k).tolist())
            yield batch


def random_triplets(
    labels: np.ndarray | torch.Tensor, n_triplets: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n_triplets`` uniformly random triplets over a labelled set, as dataset indices.

    Anchor: uniform over items whose class has at least two items; positive: uniform
    over the *other* items of the anchor's class; negative: uniform over all items of
    other classes. Fully vectorised (one sort of the labels, then arithmetic on index
    ranges). Call once per epoch with the same generator for fresh, reproducible draws.

    Args:
        labels: ``(n,)`` labels (numpy or torch).
        n_triplets: ``T >= 0``.
        generator: CPU ``torch.Generator`` (``None``: torch's global RNG).

    Returns:
        ``(anchor, positive, negative)``, each ``(T,)`` int64 on the CPU.

    Raises:
        DeephashError: fewer than two classes, or no class with two items.
    """
    lab = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).reshape(-1).cpu()
    if n_triplets < 0:
        raise ValueError(f"n_triplets must be >= 0, got {n_triplets}")
    _, inverse, counts = torch.unique(lab, return_inverse=True, return_counts=True)
    if counts.numel() < 2:
        raise DeephashError("random triplets need at least two classes, but the labels contain only one.")
    if int(counts.max()) < 2:
        raise DeephashError("random triplets need a class with at least two items, but every class has one.")
    n = lab.numel()
    order = torch.argsort(inverse, stable=True)  # items grouped by class
    starts = counts.cumsum(0) - counts
    item_cls = inverse[order]  # class of each position in `order`
    item_count = counts[item_cls]
    eligible = (item_count >= 2).nonzero(as_tuple=True)[0]  # positions that can anchor

    def rand(size: int) -> torch.Tensor:
        return torch.rand(size, generator=generator, dtype=torch.float64)

    a_pos = eligible[(rand(n_triplets) * eligible.numel()).long().clamp_max(eligible.numel() - 1)]
    cls = item_cls[a_pos]
    cnt = counts[cls]
    start = starts[cls]
    # Positive: shift the anchor's rank within its class by 1..cnt-1 (mod cnt): uniform
    # over the other members.
    rank = a_pos - start
    shift = 1 + (rand(n_triplets) * (cnt - 1)).long().clamp_max(cnt - 2)
    p_pos = start + (rank + shift) % cnt
    # Negative: uniform j in [0, n - cnt) over the positions outside the class block
    # [start, start + cnt); skip over the block.
    outside = n - cnt
    j = (rand(n_triplets) * outside).long().clamp_max(outside - 1)
    n_pos = torch.where(j < start, j, j + cnt)
    return order[a_pos], order[p_pos], order[n_pos]
