"""Hash methods: which loss, which head output, and which per-epoch schedule, by name.

A method turns B real outputs into a loss over index triplets; codes are sign(outputs) packed by
``codes.pack_codes``. Schedules are pure functions of the epoch (1-based) that set loss attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from deephash_cli.errors import DeephashError
from deephash_cli.hash_centers import hash_centers
from deephash_cli.losses import DTSHLoss, TripletRankingLoss
from deephash_cli.losses.central import CentralSimilarityLoss
from deephash_cli.losses.greedyhash import GreedyHashLoss
from deephash_cli.registry import Registry

MIN_BITS, MAX_BITS = 8, 256


@dataclass
class HashOptions:
    """Method hyper-parameters. None means the method's paper default for the code length."""

    alpha: float | None = None  # DTSH margin α (paper constant: bits/2)
    lam: float | None = None  # quantisation weight λ (dtsh, centers, greedyhash); None: the method's default
    lam_warmup: int = 0  # DTSH: λ = 0 for the first N epochs, then ``lam``
    alpha_ramp: str | None = None  # DTSH: "START:END:EVERY": α starts at START, doubles every EVERY epochs up to END
    margin: float | None = None  # triplet-ranking margin (default bits/4)

    def check(self) -> None:
        """Raise DeephashError for values no method can use (before any work is done)."""
        for option, value in (("--alpha", self.alpha), ("--ranking-margin", self.margin)):
            if value is not None and not value > 0:
                raise DeephashError(f"{option} must be positive, got {value}")
        if self.lam is not None and not self.lam >= 0:
            raise DeephashError(f"--lambda must be ≥ 0, got {self.lam}")
        if self.lam_warmup < 0:
            raise DeephashError(f"--lam-warmup must be ≥ 0 epochs, got {self.lam_warmup}")
        if self.alpha_ramp:
            parse_ramp(self.alpha_ramp)


@dataclass
class HashMethod:
    """A loss factory, the head output it expects, and a schedule (epoch -> logged values).

    The miner measures the loss's own ``distance`` with its ``margin`` (``train.make_miner``): DTSH's −½uᵀv
    with α, triplet-ranking's squared distance of the tanh outputs with bits/4.
    """

    name: str
    output: str  # head output: 'raw' or 'tanh'
    make_loss: Callable[[int, HashOptions, int, int], nn.Module]  # (bits, options, n_classes, seed) -> loss
    schedule: Callable[[nn.Module, int, int, HashOptions], dict[str, float]]
    default_lam: float | None = None  # the quantisation weight λ when --lambda is not given (None: no λ)
    needs_labels: bool = False  # trains on class labels directly (not only similar/dissimilar relations)

    def lam(self, options: HashOptions) -> float | None:
        """The λ this method uses: ``--lambda`` or the method's default."""
        return options.lam if options.lam is not None else self.default_lam


HASH_METHODS: Registry[HashMethod] = Registry("hash method")


def check_bits(bits: int) -> int:
    """Code lengths from 8 to 256 bits."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise DeephashError(f"--bits must lie in {MIN_BITS}..{MAX_BITS}, got {bits}")
    return bits


def parse_ramp(text: str) -> tuple[float, float, int]:
    """'1:16:2' -> (start 1, end 16, every 2 epochs)."""
    try:
        start, end, every = text.split(":")
        parsed = float(start), float(end), int(every)
    except ValueError:
        raise DeephashError(f"--alpha-ramp expects START:END:EVERY (e.g. 1:16:2), got '{text}'") from None
    if parsed[0] <= 0 or parsed[1] < parsed[0] or parsed[2] <= 0:
        raise DeephashError(f"--alpha-ramp needs 0 < START <= END and EVERY > 0, got '{text}'")
    return parsed


def dtsh_alpha(bits: int, epoch: int, options: HashOptions) -> float:
    """α at ``epoch``: the ramp START·2^((epoch-1)//EVERY) capped at END, else the constant (bits/2 default)."""
    if options.alpha_ramp:
        start, end, every = parse_ramp(options.alpha_ramp)
        return min(end, start * 2 ** ((epoch - 1) // every))
    return options.alpha if options.alpha is not None else bits / 2


def _dtsh_schedule(loss: nn.Module, bits: int, epoch: int, options: HashOptions) -> dict[str, float]:
    loss.alpha = dtsh_alpha(bits, epoch, options)
    loss.lam = 0.0 if epoch <= options.lam_warmup else HASH_METHODS.get("dtsh").lam(options)
    return {"alpha": loss.alpha, "lam": loss.lam}


HASH_METHODS.register("dtsh")(HashMethod(
    "dtsh", "raw",
    make_loss=lambda bits, o, n_classes, seed: DTSHLoss(alpha=dtsh_alpha(bits, 1, o),
                                                        lam=HASH_METHODS.get("dtsh").lam(o)),
    schedule=_dtsh_schedule,
    default_lam=1.0,
))
HASH_METHODS.register("triplet-ranking")(HashMethod(
    "triplet-ranking", "tanh",
    make_loss=lambda bits, o, n_classes, seed: TripletRankingLoss(
        margin=o.margin or TripletRankingLoss.default_margin(bits), apply_tanh=False),
    schedule=lambda loss, bits, epoch, o: {"margin": loss.margin},
))


def _centers_loss(bits: int, options: HashOptions, n_classes: int, seed: int) -> nn.Module:
    import torch

    centers, _ = hash_centers(n_classes, bits, seed)
    return CentralSimilarityLoss(torch.from_numpy(centers.astype("float32")),
                                 lam=HASH_METHODS.get("centers").lam(options))


HASH_METHODS.register("centers")(HashMethod(
    "centers", "raw", make_loss=_centers_loss,
    schedule=lambda loss, bits, epoch, o: {"lam": loss.lam},
    default_lam=1e-4, needs_labels=True,
))
HASH_METHODS.register("greedyhash")(HashMethod(
    "greedyhash", "raw",
    make_loss=lambda bits, o, n_classes, seed: GreedyHashLoss(bits, n_classes, HASH_METHODS.get("greedyhash").lam(o),
                                                              seed=seed),
    schedule=lambda loss, bits, epoch, o: {"lam": loss.alpha},
    default_lam=0.1, needs_labels=True,
))
