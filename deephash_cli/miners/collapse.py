"""Detecting a collapsed embedding (every item mapped to nearly the same point)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deephash_cli.distances import pairwise_distances


def embedding_collapse(embeddings: torch.Tensor, threshold: float = 1e-3, normalize: bool = False) -> bool:
    """True when the mean pairwise Euclidean distance (over ``i != j``) is below ``threshold``.

    ``embeddings (B, d)``; ``normalize=True`` measures on the unit sphere (what a
    FaceNet-style loss sees; note that normalisation hides collapse of the raw scale
    only, not of directions). Fewer than two rows cannot be judged: False. Returns a
    Python bool (one host sync): meant for an occasional warning, not every step.
    """
    b = embeddings.shape[0]
    if b < 2:
        return False
    with torch.no_grad():
        emb = embeddings.detach()
        if normalize:
            emb = F.normalize(emb, p=2, dim=1)
        dist = pairwise_distances(emb, None, squared=False)
        mean = dist.sum() / (b * (b - 1))  # the diagonal is exactly 0
        return bool(mean < threshold)
