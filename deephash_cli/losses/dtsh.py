"""DTSH: Wang, Shi & Kitani 2016, "Deep supervised hashing with triplet labels"."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deephash_cli.distances import Distance
from deephash_cli.losses.base import TripletLoss


class DTSHLoss(TripletLoss):
    """Triplet likelihood on relaxed codes plus a quantisation penalty.

    ``u (B, bits)`` are the relaxed (real-valued) codes. ``Theta_ij = 1/2 u_i^T u_j``.
    The paper models ``P(triplet) = sigma(Theta_ap - Theta_an - alpha)``; its negative
    log-likelihood per triplet, with ``x = Theta_ap - Theta_an - alpha``, is::

        -(x - log(1 + e^x)) = log(1 + e^x) - x = log(1 + e^{-x}) = softplus(-x)

    (``log(1 + e^x) - x = log(e^{-x} (1 + e^x)) = log(e^{-x} + 1)``). ``softplus`` is the
    overflow-safe form; DeepHash-pytorch clamps ``x`` to [-100, 50] instead.

    Total: ``reduce_t softplus(-x_t) + lam * mean_i ||b_i - u_i||^2`` over the ``B`` rows
    of the batch, ``b = sign(u)`` detached (``sign(0)`` taken as +1 so codes are +-1).
    The quantisation term is a per-item squared norm (summed over bits, averaged over
    items); DeepHash-pytorch averages over bits too, so its ``lambda`` equals
    ``lam * bits`` here.

    Every triplet term is positive, so ``last_active_fraction`` is 1 (up to float
    underflow) and both reductions coincide on the triplet term.

    ``alpha`` and ``lam`` are plain mutable attributes: schedules may change them
    between steps.

    Call: ``loss(u (B, bits) float, labels (B,), (a, p, n) each (T,) int64) -> scalar``.
    """

    #: ``−½⟨u, v⟩ = −Θ``: ``softplus(−(Θ_ap − Θ_an − α))`` is a smooth hinge with margin α on it.
    distance = Distance(normalize=False, inner=True)

    def __init__(self, alpha: float = 5.0, lam: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.alpha = float(alpha)
        self.lam = float(lam)

    @property
    def margin(self) -> float:
        """The miner's margin: α (on the scale of ``−Θ``)."""
        return self.alpha

    def terms(self, embeddings, labels, a, p, n):
        b, bits = embeddings.shape
        t = a.numel()
        if 2 * t * bits <= b * b:
            ua = embeddings[a]
            theta_ap = 0.5 * (ua * embeddings[p]).sum(dim=1)
            theta_an = 0.5 * (ua * embeddings[n]).sum(dim=1)
        else:  # many triplets: one Gram matrix, then gathers (O(B^2 + T) memory)
            theta = 0.5 * (embeddings @ embeddings.t())
            theta_ap, theta_an = theta[a, p], theta[a, n]
        return F.softplus(-(theta_ap - theta_an - self.alpha))

    def regularizer(self, embeddings):
        if self.lam == 0.0 or embeddings.shape[0] == 0:
            return None
        codes = torch.where(embeddings >= 0, 1.0, -1.0).to(embeddings.dtype).detach()
        return self.lam * (codes - embeddings).pow(2).sum(dim=1).mean()
