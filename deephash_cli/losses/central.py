"""Central similarity quantization (CSQ): Yuan, Wang, Zhang, Hu, Zhang & Feng, CVPR 2020, "Central Similarity
Quantization for Efficient Image and Video Retrieval"."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deephash_cli.losses.base import LabelLoss


class CentralSimilarityLoss(LabelLoss):
    """Binary cross-entropy of each item's relaxed code to its class's hash centre, plus quantisation.

    Raw outputs ``x (B, bits)``, relaxed codes ``h = tanh(x)``; the centre of item ``i`` is ``c_{y_i}``
    (``centers (C, bits)`` ±1, :func:`deephash_cli.hash_centers.hash_centers`). The paper treats each bit of
    ``(h + 1)/2`` as a Bernoulli probability of ``(c + 1)/2``::

        L = mean_{i,k} BCE((h_ik + 1)/2, (c_{y_i,k} + 1)/2) + λ · mean_{i,k} (|h_ik| − 1)²

    ``(tanh(x) + 1)/2 = sigmoid(2x)``, so the BCE is computed as BCE-with-logits on ``2x`` (no log of 0).
    ``lam`` (λ) is a plain attribute. Needs class labels (one centre per class), unlike the triplet methods.

    Call: ``loss(x (B, bits) float, labels (B,) int64 in [0, C)) -> scalar``.
    """

    def __init__(self, centers: torch.Tensor, lam: float) -> None:
        super().__init__()
        self.register_buffer("centers", torch.as_tensor(centers, dtype=torch.float32))
        self.lam = float(lam)

    def loss(self, embeddings, labels):
        target = (self.centers[labels] + 1) / 2
        center = F.binary_cross_entropy_with_logits(2 * embeddings, target)
        quantization = (torch.tanh(embeddings).abs() - 1).pow(2).mean()
        return center + self.lam * quantization
