"""Hash methods: which loss, which head output, and which per-epoch schedule, by name.

A method turns B real outputs into a loss over index triplets; codes are sign(outputs) packed by
``codes.pack_codes``. Schedules are pure functions of the epoch (1-based) that set loss attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from torch import nn

from deephash_cli.errors import DeephashError
from deephash_cli.hash_centers import hash_centers
from deephash_cli.losses import DTSHLoss, TripletRankingLoss
from deephash_cli.losses.central import CentralSimilarityLoss
from deephash_cli.losses.ftde import FTDECodesLoss
from deephash_cli.losses.greedyhash import GreedyHashLoss
from deephash_cli.losses.hashnet import HashNetLoss
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
    continuation: str = "1:16:2"  # HashNet β: "START:END:EVERY", starts at START, doubles every EVERY epochs up to END
    ftde_every: int = 3  # FTDE: infer the codes again every N epochs (epochs 1, 1 + N, ...)
    ftde_triplets: int = 4  # FTDE: triplets per training item for each code inference

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
            parse_ramp(self.alpha_ramp, "--alpha-ramp")
        parse_ramp(self.continuation, "--continuation")
        if self.ftde_every <= 0:
            raise DeephashError(f"--ftde-every must be a positive number of epochs, got {self.ftde_every}")
        if self.ftde_triplets <= 0:
            raise DeephashError(f"--ftde-triplets must be positive, got {self.ftde_triplets}")


@dataclass
class TrainingData:
    """What a method may read of the training set: the class count, the labels ``(n,)``, the seed and, once the
    stage has built its model, ``outputs()``: the current outputs ``(n, bits)`` of every training item (FTDE
    infers its codes from them)."""

    n_classes: int
    labels: np.ndarray
    seed: int
    outputs: Callable[[], "torch.Tensor"] | None = None


@dataclass
class HashMethod:
    """A loss factory, the head output it expects, and a schedule (epoch -> logged values).

    The miner measures the loss's own ``distance`` with its ``margin`` (``train.make_miner``): DTSH's −½uᵀv
    with α, triplet-ranking's squared distance of the tanh outputs with bits/4.
    """

    name: str
    output: str  # head output: 'raw' or 'tanh'
    make_loss: Callable[[int, HashOptions, TrainingData], nn.Module]  # (bits, options, data) -> loss
    schedule: Callable[[nn.Module, int, int, HashOptions, TrainingData], dict[str, float]]  # loss, bits, epoch
    default_lam: Callable[[int], float] | None = None  # bits -> λ when --lambda is not given (None: no λ)
    needs_labels: bool = False  # trains on class labels directly (not only similar/dissimilar relations)

    def lam(self, options: HashOptions, bits: int) -> float | None:
        """The λ this method uses: ``--lambda`` or the method's default at ``bits``."""
        if options.lam is not None:
            return options.lam
        return None if self.default_lam is None else self.default_lam(bits)


HASH_METHODS: Registry[HashMethod] = Registry("hash method")


def check_bits(bits: int) -> int:
    """Code lengths from 8 to 256 bits."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise DeephashError(f"--bits must lie in {MIN_BITS}..{MAX_BITS}, got {bits}")
    return bits


def parse_ramp(text: str, option: str = "--alpha-ramp") -> tuple[float, float, int]:
    """'1:16:2' -> (start 1, end 16, every 2 epochs)."""
    try:
        start, end, every = text.split(":")
        parsed = float(start), float(end), int(every)
    except ValueError:
        raise DeephashError(f"{option} expects START:END:EVERY (e.g. 1:16:2), got '{text}'") from None
    if not (0 < parsed[0] <= parsed[1] < float("inf")) or parsed[2] <= 0:
        raise DeephashError(f"{option} needs 0 < START <= END and EVERY > 0, got '{text}'")
    return parsed


def ramp_value(text: str, epoch: int) -> float:
    """The value of a START:END:EVERY ramp at ``epoch`` (1-based): START·2^((epoch−1)//EVERY), at most END."""
    start, end, every = parse_ramp(text)
    return min(end, start * 2 ** ((epoch - 1) // every))


def dtsh_alpha(bits: int, epoch: int, options: HashOptions) -> float:
    """α at ``epoch``: the ramp START·2^((epoch-1)//EVERY) capped at END, else the constant (bits/2 default)."""
    if options.alpha_ramp:
        return ramp_value(options.alpha_ramp, epoch)
    return options.alpha if options.alpha is not None else bits / 2


def _dtsh_schedule(loss: nn.Module, bits: int, epoch: int, options: HashOptions, data: TrainingData) -> dict[str, float]:
    loss.alpha = dtsh_alpha(bits, epoch, options)
    loss.lam = 0.0 if epoch <= options.lam_warmup else HASH_METHODS.get("dtsh").lam(options, bits)
    return {"alpha": loss.alpha, "lam": loss.lam}


HASH_METHODS.register("dtsh")(HashMethod(
    "dtsh", "raw",
    make_loss=lambda bits, o, data: DTSHLoss(alpha=dtsh_alpha(bits, 1, o),
                                                        lam=HASH_METHODS.get("dtsh").lam(o, bits)),
    schedule=_dtsh_schedule,
    # The quantisation term averaged over the bits (DeepHash-pytorch's form): λ = 1/bits on our per-item sum.
    # Measured at 48 bits (docs/hashing.md): the paper's λ = 1 costs 0.25 validation mAP.
    default_lam=lambda bits: 1.0 / bits,
))
HASH_METHODS.register("triplet-ranking")(HashMethod(
    "triplet-ranking", "tanh",
    make_loss=lambda bits, o, data: TripletRankingLoss(
        margin=o.margin or TripletRankingLoss.default_margin(bits), apply_tanh=False),
    schedule=lambda loss, bits, epoch, o, data: {"margin": loss.margin},
))


def _centers_loss(bits: int, options: HashOptions, data: TrainingData) -> nn.Module:
    import torch

    centers, _ = hash_centers(data.n_classes, bits, data.seed)
    return CentralSimilarityLoss(torch.from_numpy(centers.astype("float32")),
                                 lam=HASH_METHODS.get("centers").lam(options, bits))


HASH_METHODS.register("centers")(HashMethod(
    "centers", "raw", make_loss=_centers_loss,
    schedule=lambda loss, bits, epoch, o, data: {"lam": loss.lam},
    default_lam=lambda bits: 1e-4, needs_labels=True,
))
HASH_METHODS.register("greedyhash")(HashMethod(
    "greedyhash", "raw",
    make_loss=lambda bits, o, data: GreedyHashLoss(bits, data.n_classes,
                                                    HASH_METHODS.get("greedyhash").lam(o, bits), seed=data.seed),
    schedule=lambda loss, bits, epoch, o, data: {"lam": loss.lam},
    default_lam=lambda bits: 0.1, needs_labels=True,
))


def _hashnet_schedule(loss: nn.Module, bits: int, epoch: int, options: HashOptions, data: TrainingData):
    loss.beta = ramp_value(options.continuation, epoch)
    return {"beta": loss.beta, "alpha": loss.alpha if loss.alpha is not None else loss.default_alpha(bits)}


HASH_METHODS.register("hashnet")(HashMethod(
    "hashnet", "raw", make_loss=lambda bits, o, data: HashNetLoss(alpha=o.alpha), schedule=_hashnet_schedule,
))

#: FTDE step 1's passes over all bits per code inference (the solver stops earlier at a local minimum).
FTDE_SWEEPS = 5


def _ftde_schedule(loss: nn.Module, bits: int, epoch: int, options: HashOptions, data: TrainingData):
    """Step 1 on epochs 1, 1 + N, ...: codes inferred from fresh triplets, starting from sign(current outputs)."""
    import torch

    from deephash_cli.ftde import infer_codes, triplet_satisfaction
    from deephash_cli.samplers import random_triplets

    if (epoch - 1) % options.ftde_every:
        return {}
    if data.outputs is None:
        raise RuntimeError("ftde needs the stage to bind the training outputs (TrainingData.outputs)")
    start = np.where(data.outputs().cpu().numpy() >= 0, 1, -1).astype(np.int8)
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([data.seed, epoch]).generate_state(1)[0]))
    a, p, n = (t.numpy() for t in random_triplets(data.labels, options.ftde_triplets * len(data.labels), generator))
    codes = infer_codes(start, a, p, n, sweeps=FTDE_SWEEPS, rng=[data.seed, epoch])
    loss.set_codes(codes)
    return {"ftde_satisfied_before": triplet_satisfaction(start, a, p, n),
            "ftde_satisfied": triplet_satisfaction(codes, a, p, n),
            "ftde_changed_bits": float((codes != start).mean())}


HASH_METHODS.register("ftde")(HashMethod(
    "ftde", "raw", make_loss=lambda bits, o, data: FTDECodesLoss(len(data.labels), bits), schedule=_ftde_schedule,
))
