"""Batch-all: every valid triplet in the batch."""

from __future__ import annotations

import torch

from deephash_cli.miners.base import MiningContext, Miner, Triplets, empty_triplets


class AllTripletsMiner(Miner):
    """Every ``(a, p, n)`` with ``label[a] == label[p]``, ``a != p``, ``label[n] != label[a]``.

    Ordered lexicographically by ``(a, p, n)``. ``positive_mean = True``: with all
    triplets, most are easy (zero loss) and a plain mean would shrink the loss as the
    model improves; Hermans et al.'s "batch-all" averages over the positive ones.

    Memory: no ``B^3`` mask. Each anchor's negatives are listed once (``B x B``), and the
    output is expanded pair by pair with ``repeat_interleave``, so the cost is
    ``O(B^2 + T)`` with ``T = sum_a npos(a) * nneg(a)`` the output size (P classes x K
    items: ``T = B (K - 1)(B - K)``, 444k at B=256, K=8; 7.3M at B=1024). ``margin`` is
    ignored. The index tensors are the bulk: ``24 T`` bytes.
    """

    positive_mean = True

    def mine(self, ctx: MiningContext, margin: float, generator: torch.Generator | None) -> Triplets:
        pa, pp = ctx.positive_pairs()
        if pa.numel() == 0:
            return empty_triplets(ctx.device)
        # Row a of neg_list starts with a's negatives in index order (stable sort of 0/1 keys).
        neg_list = (~ctx.negative).to(torch.int8).sort(dim=1, stable=True).indices
        n_neg = ctx.negative.sum(dim=1)
        per_pair = n_neg[pa]
        pair_of = torch.repeat_interleave(torch.arange(pa.numel(), device=ctx.device), per_pair)
        if pair_of.numel() == 0:
            return empty_triplets(ctx.device)
        starts = per_pair.cumsum(0) - per_pair
        offset = torch.arange(pair_of.numel(), device=ctx.device) - starts[pair_of]
        a = pa[pair_of]
        return a, pp[pair_of], neg_list[a, offset]
