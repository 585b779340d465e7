"""FaceNet triplet loss (Schroff, Kalenichenko & Philbin 2015)."""

from __future__ import annotations

import torch.nn.functional as F

from deephash_cli.distances import Distance, triplet_distances
from deephash_cli.losses.base import TripletLoss


class FaceNetTripletLoss(TripletLoss):
    """Per triplet: ``max(0, ||f(a) - f(p)||^2 - ||f(a) - f(n)||^2 + alpha)``.

    ``f`` is the L2-normalised embedding (the paper constrains ``||f(x)||_2 = 1``); the
    normalisation happens inside (``normalize=False`` for embeddings that are already
    normalised or for the unnormalised variant). Distances are *squared* Euclidean, as
    in the paper, unless ``squared=False`` (the non-squared variant is PML's default
    ``TripletMarginLoss``).

    Args:
        margin: ``alpha`` (paper: 0.2), on the scale of squared distances on the unit
            sphere (which lie in [0, 4]).
        normalize: L2-normalise embeddings first.
        squared: squared (default) or plain Euclidean distances.
        reduction: ``"mean"`` or ``"positive_mean"`` (see :class:`TripletLoss`).

    Call: ``loss(embeddings (B, d) float, labels (B,), (a, p, n) each (T,) int64) -> scalar``.
    """

    def __init__(
        self, margin: float = 0.2, normalize: bool = True, squared: bool = True, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        self.margin = float(margin)
        self.normalize = normalize
        self.squared = squared
        self.distance = Distance(normalize=normalize, squared=squared)

    def terms(self, embeddings, labels, a, p, n):
        if self.normalize:
            embeddings = F.normalize(embeddings, p=2, dim=1)
        d_ap, d_an = triplet_distances(embeddings, a, p, n, squared=self.squared)
        return F.relu(d_ap - d_an + self.margin)
