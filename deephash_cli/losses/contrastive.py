"""Contrastive loss (Hadsell, Chopra & LeCun 2006), fed with triplets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deephash_cli.distances import Distance, safe_sqrt, triplet_distances
from deephash_cli.losses.base import TripletLoss


class ContrastiveLoss(TripletLoss):
    """Pair loss: same class ``d^2``; different classes ``max(0, m - d)^2``; ``d`` Euclidean.

    Each triplet ``(a, p, n)`` contributes two pairs: ``(a, p)`` positive and ``(a, n)``
    negative. The terms are these ``2T`` pair losses (no de-duplication: a pair that
    occurs in several triplets is counted that many times, which weights it like the
    miner did), so ``"mean"`` is the mean over the ``2T`` pairs and
    ``last_active_fraction`` is the fraction of *pairs* with positive loss. (Hadsell et
    al. write ``1/2`` in front of both terms; we leave it out, the brief's definition;
    it is a global factor of 2 on the loss and gradient.)

    Args:
        margin: ``m``, on the scale of (non-squared) Euclidean distances.
        normalize: L2-normalise embeddings first (off by default, as in the paper).
        reduction: ``"mean"`` or ``"positive_mean"``.

    Call: ``loss(embeddings (B, d) float, labels (B,), (a, p, n) each (T,) int64) -> scalar``.
    """

    def __init__(self, margin: float = 1.0, normalize: bool = False, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.margin = float(margin)
        self.normalize = normalize
        self.distance = Distance(normalize=normalize, squared=False)  # the margin is on plain distances

    def terms(self, embeddings, labels, a, p, n):
        if self.normalize:
            embeddings = F.normalize(embeddings, p=2, dim=1)
        # Squared positive distances come straight from d^2 (no sqrt, exact gradient at 0);
        # the negative hinge needs the plain distance.
        d2_ap, d2_an = triplet_distances(embeddings, a, p, n, squared=True)
        return torch.cat([d2_ap, F.relu(self.margin - safe_sqrt(d2_an)).pow(2)])
