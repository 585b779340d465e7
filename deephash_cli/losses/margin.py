"""Margin-based loss with learned boundaries β (Wu, Manmatha, Smola & Krähenbühl 2017, "Sampling matters in deep
embedding learning")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deephash_cli.distances import Distance, triplet_distances
from deephash_cli.losses.base import TripletLoss


class MarginLoss(TripletLoss):
    """Pair loss around a learned boundary: ``ℓ(i, j) = max(0, α + y_ij (D_ij − β))``, ``y = +1`` for a pair of
    one class and ``−1`` otherwise.

    ``D`` is the plain Euclidean distance between L2-normalised embeddings (the paper's unit sphere). Each
    triplet ``(a, p, n)`` gives a positive pair ``max(0, α + D_ap − β)`` and a negative pair
    ``max(0, α − D_an + β)``, so the terms are ``2T`` pair losses (first all positive, then all negative
    pairs). ``β = β_class(a)``, one learnable boundary per class of the anchor (``n_classes`` given), or one
    global β (``n_classes=None``), initialised at ``beta``.

    The default reduction is ``"positive_mean"``: the sum over pairs divided by the number of pairs with a
    positive loss, as the authors' code and pytorch-metric-learning's ``MarginLoss`` do. The β regulariser
    ``ν·β`` of the paper is left out (``ν = 0``, the authors' default).

    β is a parameter of this module: :meth:`parameter_groups` hands it to the optimizer with its own learning
    rate ``beta_lr`` (``0`` keeps β fixed at its initial value). Distances for a miner should be plain
    Euclidean on the unit sphere (:attr:`distance`); ``--miner distance-weighted`` is the paper's partner.

    Args:
        margin: ``α`` (paper: 0.2), on the scale of distances on the unit sphere ([0, 2]).
        beta: initial β (paper: 1.2).
        n_classes: number of classes for per-class β; None for one global β.
        beta_lr: β's learning rate (≥ 0).
        reduction: ``"positive_mean"`` (default) or ``"mean"``.

    Call: ``loss(embeddings (B, d) float, labels (B,), (a, p, n) each (T,) int64) -> scalar``.
    """

    distance = Distance(normalize=True, squared=False)

    def __init__(self, margin: float = 0.2, beta: float = 1.2, n_classes: int | None = None, beta_lr: float = 0.0,
                 reduction: str = "positive_mean") -> None:
        super().__init__(reduction)
        if n_classes is not None and n_classes <= 0:
            raise ValueError(f"n_classes must be positive, got {n_classes}")
        if beta_lr < 0:
            raise ValueError(f"beta_lr must be ≥ 0, got {beta_lr}")
        self.margin = float(margin)
        self.per_class = n_classes is not None
        self.beta_lr = float(beta_lr)
        self.beta = nn.Parameter(torch.full((n_classes or 1,), float(beta)), requires_grad=self.beta_lr > 0)

    def terms(self, embeddings, labels, a, p, n):
        emb = F.normalize(embeddings, p=2, dim=1)
        d_ap, d_an = triplet_distances(emb, a, p, n, squared=False)
        if self.per_class:
            if labels is None:
                raise ValueError("per-class β needs the labels")
            beta = self.beta[labels[a]]
        else:
            beta = self.beta.expand(a.numel())
        beta = beta.to(emb.dtype)
        return torch.cat([F.relu(self.margin + d_ap - beta), F.relu(self.margin - d_an + beta)])

    def parameter_groups(self) -> list[dict]:
        if self.beta_lr == 0.0:
            return []
        return [{"params": [self.beta], "lr": self.beta_lr, "weight_decay": 0.0}]

    def summary(self) -> dict[str, float]:
        beta = self.beta.detach()
        return {"beta_mean": float(beta.mean()), "beta_min": float(beta.min()), "beta_max": float(beta.max())}
