"""Triplet-fed losses, one per file, registered by name in ``LOSSES``.

Every loss is an ``nn.Module`` called as
``loss(embeddings (B, d), labels (B,), (anchor, positive, negative) each (T,) int64,
reduction=None) -> scalar`` and exposes ``last_active_fraction`` (see
:class:`deephash_cli.losses.base.TripletLoss`).
"""

from deephash_cli.losses.base import REDUCTIONS, TripletLoss, Triplets
from deephash_cli.losses.contrastive import ContrastiveLoss
from deephash_cli.losses.dtsh import DTSHLoss
from deephash_cli.losses.facenet import FaceNetTripletLoss
from deephash_cli.losses.hoffer import HofferTripletLoss
from deephash_cli.losses.margin import MarginLoss
from deephash_cli.losses.npair import NPairLoss
from deephash_cli.losses.triplet_ranking import TripletRankingLoss
from deephash_cli.registry import Registry

LOSSES: Registry = Registry("loss")
LOSSES.register("hoffer")(HofferTripletLoss)
LOSSES.register("facenet")(FaceNetTripletLoss)
LOSSES.register("contrastive")(ContrastiveLoss)
LOSSES.register("dtsh")(DTSHLoss)
LOSSES.register("triplet-ranking")(TripletRankingLoss)
LOSSES.register("npair")(NPairLoss)
LOSSES.register("margin")(MarginLoss)

__all__ = [
    "LOSSES",
    "REDUCTIONS",
    "ContrastiveLoss",
    "DTSHLoss",
    "FaceNetTripletLoss",
    "HofferTripletLoss",
    "MarginLoss",
    "NPairLoss",
    "TripletLoss",
    "TripletRankingLoss",
    "Triplets",
]
