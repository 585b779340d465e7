"""Triplet ranking hinge of DNNH (Lai, Pan, Liu & Yan 2015, "Simultaneous feature learning
and hash coding with deep neural networks")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deephash_cli.distances import Distance, triplet_distances
from deephash_cli.losses.base import TripletLoss


class TripletRankingLoss(TripletLoss):
    """Per triplet: ``max(0, ||h_a - h_p||^2 - ||h_a - h_n||^2 + m)`` on bounded outputs ``h``.

    Choice made here: the loss takes the *raw* head outputs ``x (B, bits)`` and bounds
    them itself, ``h = tanh(x)`` in (-1, 1) (``apply_tanh=True``); pass
    ``apply_tanh=False`` when the head already ends in tanh. Binary codes are
    ``sign(x) = sign(tanh(x))`` either way. DNNH used a piece-wise linear squashing into
    [0, 1]; tanh into (-1, 1) is the usual smooth substitute.

    Args:
        margin: ``m``, required. The caller computes the conventional default
            ``m = bits / 4`` (see :meth:`default_margin`): squared distances between
            vectors in (-1, 1)^bits lie in [0, 4 bits).
        apply_tanh: squash the inputs with tanh first.
        reduction: ``"mean"`` or ``"positive_mean"``.

    Call: ``loss(x (B, bits) float, labels (B,), (a, p, n) each (T,) int64) -> scalar``.
    """

    def __init__(self, margin: float, apply_tanh: bool = True, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.margin = float(margin)
        self.apply_tanh = apply_tanh
        self.distance = Distance(normalize=False, squared=True, tanh=apply_tanh)

    @staticmethod
    def default_margin(bits: int) -> float:
        """The default margin ``bits / 4``."""
        return bits / 4.0

    def terms(self, embeddings, labels, a, p, n):
        h = torch.tanh(embeddings) if self.apply_tanh else embeddings
        d_ap, d_an = triplet_distances(h, a, p, n, squared=True)
        return F.relu(d_ap - d_an + self.margin)
