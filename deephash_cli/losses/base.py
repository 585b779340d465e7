"""The common interface of every triplet-fed loss: index triplets in, scalar out.

A training loop never needs to know where triplets come from: random triplets drawn
from the whole train set (the loop gathers their embeddings into a batch and re-indexes)
and triplets mined inside a P x K batch are both ``(anchor, positive, negative)`` index
tensors over the rows of ``embeddings``. Changing the miner never changes the loss.
"""

from __future__ import annotations

import torch
from torch import nn

from deephash_cli.distances import Distance

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

#: ``"mean"``: mean over every term given (an empty set gives 0).
#: ``"positive_mean"``: mean over the terms with positive loss ("batch-all" averaging of
#: Hermans et al. 2017, PML's ``AvgNonZeroReducer``); 0 when none is positive.
REDUCTIONS = ("mean", "positive_mean")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_triplets(embeddings: torch.Tensor, labels: torch.Tensor, triplets: Triplets) -> Triplets:
    """Validate shapes; returns the three index tensors as int64 on the embeddings' device."""
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (B, d), got shape {tuple(embeddings.shape)}")
    if labels is not None and labels.shape != (embeddings.shape[0],):
        raise ValueError(f"labels must be ({embeddings.shape[0]},), got shape {tuple(labels.shape)}")
    if len(triplets) != 3:
        raise ValueError("triplets must be a tuple (anchor_idx, positive_idx, negative_idx)")
    a, p, n = (torch.as_tensor(t, device=embeddings.device).long().reshape(-1) for t in triplets)
    if not (a.shape == p.shape == n.shape):
        raise ValueError(
            f"triplet index tensors differ in length: {a.numel()}, {p.numel()}, {n.numel()}"
        )
    return a, p, n


class TripletLoss(nn.Module):
    """Base class: subclasses implement :meth:`terms`, the per-item losses.

    ``forward(embeddings (B, d) float, labels (B,) int64, triplets) -> scalar`` where
    ``triplets = (anchor_idx, positive_idx, negative_idx)``, each ``(T,)`` int64 indexing
    rows of ``embeddings``. The terms (usually one per triplet, ``(T,)``) are reduced with
    ``reduction`` (constructor default, overridable per call: a loop passes
    ``reduction="positive_mean"`` when its miner's ``positive_mean`` is true), then
    :meth:`regularizer` is added.

    ``last_active_fraction``: detached 0-dim tensor, the fraction of terms with positive
    loss in the last call (0 for an empty triplet set). Kept as a tensor so logging it
    does not force a GPU sync on every step; ``float()`` it when printing.

    A loss with learnable parameters (the margin loss's β) hands them to the optimizer through
    :meth:`parameter_groups` (each group with its own learning rate) and reports them per epoch
    through :meth:`summary`. ``distance``: the :class:`~deephash_cli.distances.Distance` the loss
    measures, which a miner shares (``train.make_miner``); ``margin``: the loss's margin on that
    distance's scale, which the miner's window uses (0 for losses without one).
    """

    distance: Distance | None = None
    margin: float = 0.0
    #: ``False`` for losses that read only the batch's labels (pairwise or classification losses): a training
    #: loop then feeds them plain shuffled batches (or P×K batches) and skips mining.
    uses_triplets: bool = True

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.last_active_fraction: torch.Tensor = torch.zeros(())

    def terms(
        self, embeddings: torch.Tensor, labels: torch.Tensor, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor
    ) -> torch.Tensor:
        """Per-item losses, any shape (flattened for reduction), all ``>= 0``."""
        raise NotImplementedError

    def regularizer(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        """A term added after the reduction (e.g. DTSH's quantisation loss); none by default."""
        return None

    def parameter_groups(self) -> list[dict]:
        """Optimizer parameter groups of the loss's own learnable parameters (none by default)."""
        return []

    def summary(self) -> dict[str, float]:
        """Values of the loss's learnable parameters for the per-epoch history (none by default)."""
        return {}

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        triplets: Triplets,
        reduction: str | None = None,
    ) -> torch.Tensor:
        a, p, n = check_triplets(embeddings, labels, triplets)
        reduction = check_reduction(reduction or self.reduction)
        losses = self.terms(embeddings, labels, a, p, n).reshape(-1)
        active = losses.detach() > 0
        n_active = active.sum()
        count = n_active if reduction == "positive_mean" else torch.tensor(losses.numel(), device=losses.device)
        # Divide by max(count, 1) instead of branching on it: no host sync, and an empty
        # or all-zero set gives a 0 that is still attached to the graph (backward works).
        loss = losses.sum() / count.clamp_min(1).to(losses.dtype)
        self.last_active_fraction = (n_active.to(torch.float32) / max(losses.numel(), 1)).detach()
        extra = self.regularizer(embeddings)
        return loss if extra is None else loss + extra


class LabelLoss(TripletLoss):
    """Base of the losses that need only the batch's class labels (no triplets): subclasses implement
    :meth:`loss` ``(embeddings (B, d), labels (B,) int64) -> scalar``; the triplets argument is ignored.

    ``last_active_fraction`` is 1 for a non-empty batch (every item contributes).
    """

    uses_triplets = False

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, triplets: Triplets | None = None,
                reduction: str | None = None) -> torch.Tensor:
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be (B, d), got shape {tuple(embeddings.shape)}")
        if labels.shape != (embeddings.shape[0],):
            raise ValueError(f"labels must be ({embeddings.shape[0]},), got shape {tuple(labels.shape)}")
        self.last_active_fraction = torch.ones(()) if len(labels) else torch.zeros(())
        if not len(labels):
            return embeddings.sum() * 0.0
        return self.loss(embeddings, labels.to(embeddings.device).long())
