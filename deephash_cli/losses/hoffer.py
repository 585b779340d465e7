"""Triplet network loss of Hoffer & Ailon 2015, "Deep metric learning using triplet network"."""

from __future__ import annotations

import torch

from deephash_cli.distances import Distance, triplet_distances
from deephash_cli.losses.base import TripletLoss


class HofferTripletLoss(TripletLoss):
    """Softmax-ratio triplet loss, no margin.

    ``d+ = ||f(a) - f(p)||_2``, ``d- = ||f(a) - f(n)||_2`` (plain Euclidean, unnormalised
    embeddings, as in the paper);
    ``(s+, s-) = softmax(d+, d-)``, i.e. ``s+ = e^{d+} / (e^{d+} + e^{d-}) = sigmoid(d+ - d-)``;
    per triplet ``||(s+, s- - 1)||_2^2 = s+^2 + (s- - 1)^2 = 2 s+^2`` (since ``s- - 1 = -s+``;
    the paper notes this equality). ``s+`` is computed as ``sigmoid(d+ - d-)``, which
    cannot overflow where ``exp(d)`` would.

    Every triplet has a positive loss (``s+ > 0``), so ``last_active_fraction`` is 1
    unless ``sigmoid`` underflows, and ``"positive_mean"`` equals ``"mean"``.

    Call: ``loss(embeddings (B, d) float, labels (B,), (a, p, n) each (T,) int64) -> scalar``.
    """

    distance = Distance(normalize=False, squared=False)

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__(reduction)

    def terms(self, embeddings, labels, a, p, n):
        d_ap, d_an = triplet_distances(embeddings, a, p, n, squared=False)
        s_pos = torch.sigmoid(d_ap - d_an)
        return 2.0 * s_pos * s_pos
