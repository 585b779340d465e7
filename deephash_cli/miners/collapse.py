"""Detecting a collapsed embedding (every item mapped to nearly the same point)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deephash_cli.distances import pairwise_distances


def embedding_collapse(embeddings: torch.Tensor, threshold: float = 0.05, normalize: bool = False) -> bool:
    """True when the embeddings have (nearly) collapsed onto one point.

    Measured scale-free: the mean pairwise Euclidean distance (over ``i != j``) divided by the
    mean norm of the embeddings falls below ``threshold`` (default 0.05). For unit-length
    embeddings the mean norm is 1 and healthy batches sit near 1–1.4 (random directions give
    ~√2), while the classic batch-hard collapse leaves ~0.01; dividing by the norm makes the
    same rule hold for unnormalised outputs of any scale. An all-zero batch counts as collapsed.

    ``embeddings (B, d)``; ``normalize=True`` measures on the unit sphere (what a
    FaceNet-style loss sees). Fewer than two rows cannot be judged: False. Returns a Python
    bool (one host sync): meant for an occasional warning, not every step.
    """
    b = embeddings.shape[0]
    if b < 2:
        return False
    with torch.no_grad():
        emb = embeddings.detach()
        if normalize:
            emb = F.normalize(emb, p=2, dim=1)
        dist = pairwise_distances(emb, None, squared=False)
        mean_dist = dist.sum() / (b * (b - 1))  # the diagonal is exactly 0
        mean_norm = emb.norm(dim=1).mean()
        return bool(mean_dist <= threshold * mean_norm)
