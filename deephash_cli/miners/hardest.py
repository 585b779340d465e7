"""Batch-hard mining (Hermans, Beyer & Leibe 2017, "In defense of the triplet loss")."""

from __future__ import annotations

import torch

from deephash_cli.miners.base import MiningContext, Miner, Triplets


class HardestMiner(Miner):
    """One triplet per anchor: its farthest positive and its nearest negative.

    Anchors without a positive (singleton class in the batch) or without a negative
    (single-class batch) are skipped. Ties go to the lowest index (``torch.max``/``min``
    semantics on CPU). ``margin`` is ignored. ``O(B^2)``. Hermans et al. average the
    resulting ``B`` terms plainly (``positive_mean = False``).
    """

    def mine(self, ctx: MiningContext, margin: float, generator: torch.Generator | None) -> Triplets:
        far_pos = ctx.dist.masked_fill(~ctx.positive, float("-inf")).max(dim=1).indices
        near_neg = ctx.dist.masked_fill(~ctx.negative, float("inf")).min(dim=1).indices
        keep = (ctx.positive.any(dim=1) & ctx.negative.any(dim=1)).nonzero(as_tuple=True)[0]
        return keep, far_pos[keep], near_neg[keep]
