"""Random hard negatives: a uniformly random negative among those with positive loss."""

from __future__ import annotations

import torch

from deephash_cli.miners.base import MiningContext, Miner, Triplets, empty_triplets, uniform


class RandomHardMiner(Miner):
    """Per positive pair ``(a, p)``: one negative drawn uniformly from
    ``{n : d(a, n) < d(a, p) + margin}`` (hard and semi-hard negatives, i.e. those with
    positive hinge loss), with ``generator``. Pairs with no such negative are skipped.

    Those negatives are a prefix of the anchor's sorted negative row, so the draw is an
    index ``floor(u * count)`` into it: ``O(B^2 log B)``, no per-pair ``B``-wide weights.
    """

    def mine(self, ctx: MiningContext, margin: float, generator: torch.Generator | None) -> Triplets:
        pa, pp = ctx.positive_pairs()
        if pa.numel() == 0:
            return empty_triplets(ctx.device)
        values, indices, n_neg = ctx.sorted_negatives()
        count = ctx.search_pairs(values, pa, ctx.dist[pa, pp] + margin, right=False)
        count = torch.minimum(count, n_neg[pa])
        u = uniform((pa.numel(),), generator, ctx.device)
        pick = (u * count).long().clamp_max((count - 1).clamp_min(0))
        keep = count > 0
        a, p = pa[keep], pp[keep]
        return a, p, indices[a, pick[keep]]
