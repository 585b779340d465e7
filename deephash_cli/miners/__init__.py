"""Triplet miners, one per file, registered by name in ``MINERS``.

Calling convention (see :mod:`deephash_cli.miners.base`):
``miner(embeddings (B, d), labels (B,), margin, generator) -> (a, p, n)`` index tensors.

A training step combines a miner and a loss like this::

    triplets = miner(emb, labels, margin=loss.margin, generator=gen)
    value = loss(emb, labels, triplets,
                 reduction="positive_mean" if miner.positive_mean else None)
    if embedding_collapse(emb): warn(...)
"""

from deephash_cli.miners.all_triplets import AllTripletsMiner
from deephash_cli.miners.base import Miner, MiningContext
from deephash_cli.miners.collapse import embedding_collapse
from deephash_cli.miners.distance_weighted import DistanceWeightedMiner
from deephash_cli.miners.hardest import HardestMiner
from deephash_cli.miners.random_hard import RandomHardMiner
from deephash_cli.miners.semihard import SemiHardMiner
from deephash_cli.registry import Registry

MINERS: Registry = Registry("miner")
MINERS.register("all")(AllTripletsMiner)
MINERS.register("hardest")(HardestMiner)
MINERS.register("semihard")(SemiHardMiner)
MINERS.register("random-hard")(RandomHardMiner)
MINERS.register("distance-weighted")(DistanceWeightedMiner)

__all__ = [
    "MINERS",
    "AllTripletsMiner",
    "DistanceWeightedMiner",
    "HardestMiner",
    "Miner",
    "MiningContext",
    "RandomHardMiner",
    "SemiHardMiner",
    "embedding_collapse",
]
