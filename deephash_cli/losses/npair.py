"""Multi-class N-pair loss (Sohn 2016, "Improved deep metric learning with multi-class N-pair loss objective")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deephash_cli.distances import Distance
from deephash_cli.losses.base import TripletLoss


class NPairLoss(TripletLoss):
    """Per class of the batch one (anchor, positive) pair; every other pair's positive is a negative of it.

    With ``N`` pairs ``(f_i, f_i+)`` of ``N`` different classes, pair ``i`` costs::

        log(1 + Σ_{j≠i} exp(f_iᵀ f_j+ − f_iᵀ f_i+))  =  cross-entropy of row i of (f_a f_pᵀ) at column i

    on the raw (not normalised) embeddings, as in the paper. The loss is the mean over the ``N`` pairs plus
    Sohn's L2 penalty on the embeddings, ``λ/4 · (mean‖f_i‖² + mean‖f_i+‖²)`` (TensorFlow's ``npairs_loss``
    form; ``λ = 0.002`` there).

    The pairs come from the triplets' (anchor, positive) pairs: for each anchor class the **first** pair in
    the order given (pytorch-metric-learning's ``NPairsLoss`` rule), so the miner decides which pair a class
    contributes: with ``--miner all`` over a P×K batch it is the class's first two items, and P×2 batches
    (``--samples-per-class 2``) are the paper's N-pair batches. The negatives (``n``) are not used.

    Every term is positive, so ``last_active_fraction`` is 1 and both reductions agree.

    Args:
        l2_reg: ``λ`` (≥ 0).
        reduction: ``"mean"`` or ``"positive_mean"``.

    Call: ``loss(embeddings (B, d) float, labels (B,), (a, p, n) each (T,) int64) -> scalar``.
    """

    distance = Distance(normalize=False, inner=True)  # similarities are raw inner products

    def __init__(self, l2_reg: float = 0.002, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.l2_reg = float(l2_reg)
        self._pairs: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def pairs(labels: torch.Tensor, a: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first (anchor, positive) pair of each anchor class, in increasing class order."""
        if a.numel() == 0:
            return a, p
        classes = labels[a]
        order = torch.sort(classes, stable=True).indices
        sorted_classes = classes[order]
        first = torch.ones_like(sorted_classes, dtype=torch.bool)
        first[1:] = sorted_classes[1:] != sorted_classes[:-1]
        keep = order[first]
        return a[keep], p[keep]

    def terms(self, embeddings, labels, a, p, n):
        if labels is None:
            raise ValueError("the N-pair loss needs the labels")
        a, p = self.pairs(labels, a, p)
        self._pairs = (a, p)
        anchors, positives = embeddings[a], embeddings[p]
        logits = anchors @ positives.t()
        return F.cross_entropy(logits, torch.arange(a.numel(), device=embeddings.device), reduction="none")

    def regularizer(self, embeddings):
        if self.l2_reg == 0.0 or self._pairs is None or self._pairs[0].numel() == 0:
            return None
        a, p = self._pairs
        norms = embeddings.pow(2).sum(dim=1)
        return 0.25 * self.l2_reg * (norms[a].mean() + norms[p].mean())
