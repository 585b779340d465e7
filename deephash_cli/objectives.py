"""Training objectives: what a training stage optimises, built once from the options.

An :class:`Objective` is a loss (with the :class:`~deephash_cli.distances.Distance` and margin its miner
shares), the head output the loss expects, the output width, a per-epoch schedule, how outputs become the
stage's artifact (float embeddings or packed codes) and how validation scores them. ``train-triplet``,
``train-hash`` and ``finetune`` all build theirs here:

* :func:`embedding_objective`: a loss of :data:`deephash_cli.embedding_losses.EMBEDDING_LOSSES`;
* :func:`hash_objective`: a method of :data:`deephash_cli.hashing.HASH_METHODS`.

A new loss or hash method is one file in :mod:`deephash_cli.losses` and one registry line; the stages do not
change. The miner is built by the training loop from the loss (``train.make_miner``), never from copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from deephash_cli.errors import DeephashError

FAMILIES = ("triplet", "hash")  # finetune --objective: an embedding (triplet-family losses) or hash codes


def binarize(outputs: torch.Tensor) -> tuple[np.ndarray, int]:
    """Relaxed outputs (n, bits) -> packed codes (n, ceil(bits/8)) uint8 and bits (1 where output > 0)."""
    from deephash_cli.codes import pack_codes

    values = outputs.cpu().numpy()
    return pack_codes(values), int(values.shape[1])


def validation_map(outputs: np.ndarray, labels: np.ndarray, *, distance: str, bits: int | None = None) -> float:
    """Leave-one-out mAP of the validation split against itself (each query's own row excluded)."""
    from deephash_cli.metrics import evaluate_retrieval

    result = evaluate_retrieval(outputs, labels, outputs, labels, distance=distance, bits=bits, precision_at=(),
                                knn_k=1, exclude_self=True)
    return result.map


@dataclass
class Objective:
    """One training objective (see the module docstring).

    ``family``: ``"triplet"`` (float embeddings) or ``"hash"`` (binary codes); ``name``: the loss or method;
    ``out_dim``: the code length for hash objectives, None for embeddings (the stage's ``--dim``);
    ``schedule(epoch)`` sets schedule-driven loss attributes before each epoch (1-based) and returns them for
    the history; ``record``: the resolved settings (defaults filled in) that artifacts store;
    ``needs_labels``: trains on class labels directly, not only on similar/dissimilar relations.
    """

    family: str
    name: str
    loss: nn.Module
    head_output: str
    out_dim: int | None
    schedule: Callable[[int], dict[str, float]]
    record: dict[str, Any] = field(default_factory=dict)
    needs_labels: bool = False

    @property
    def produces(self) -> str:
        return "codes" if self.family == "hash" else "embeddings"

    def encode(self, outputs: torch.Tensor) -> tuple[np.ndarray, int | None]:
        """Outputs (n, d) -> what the stage writes: packed codes and bits, or float embeddings and None."""
        if self.family == "hash":
            return binarize(outputs)
        return outputs.cpu().numpy(), None

    def score(self, outputs: torch.Tensor, labels: np.ndarray) -> float:
        """Validation mAP of outputs (n, d): Hamming on the codes, Euclidean on embeddings."""
        values, bits = self.encode(outputs)
        return validation_map(values, labels, distance="hamming" if bits else "euclidean", bits=bits)


def embedding_objective(loss: str, margin: float | None, n_classes: int, loss_options: Any = None) -> Objective:
    """The embedding loss ``loss`` (``margin`` ignored by losses without one)."""
    from deephash_cli.embedding_losses import EMBEDDING_LOSSES, LossOptions, build_loss

    loss_options = loss_options or LossOptions()
    if loss not in EMBEDDING_LOSSES:
        build_loss(loss, None, n_classes, loss_options)  # names the valid losses, or says it is a hashing loss
    loss_options.check()
    spec = EMBEDDING_LOSSES[loss]
    margin = margin if spec.margin else None
    module = build_loss(loss, margin, n_classes, loss_options)
    record: dict[str, Any] = {"loss": loss, "margin": margin}
    if loss == "margin":
        record.update(beta=loss_options.beta, beta_init=loss_options.beta_init, beta_lr=loss_options.beta_lr)
    elif loss == "npair":
        record["npair_reg"] = loss_options.npair_reg
    return Objective("triplet", loss, module, spec.output, None, lambda epoch: {}, record)


def hash_objective(method: str, bits: int, hash_options: Any, data: Any) -> Objective:
    """The hash method ``method`` at ``bits`` bits; ``data``: the :class:`~deephash_cli.hashing.TrainingData` it
    may read (classes for centres or a classifier, labels and current outputs for FTDE's code inference)."""
    from deephash_cli.hashing import HASH_METHODS, check_bits

    check_bits(bits)
    spec = HASH_METHODS.get(method)
    hash_options.check()
    if spec.needs_labels and data.n_classes < 2:
        raise DeephashError(f"--method {method} learns from class labels and needs at least two classes, found "
                            f"{data.n_classes}")
    module = spec.make_loss(bits, hash_options, data)
    record = {"method": method, "bits": bits, **hash_options.__dict__, "lam": spec.lam(hash_options, bits)}
    return Objective("hash", method, module, spec.output, bits,
                     lambda epoch: spec.schedule(module, bits, epoch, hash_options, data), record, spec.needs_labels)


def build_objective(family: str, *, loss: str, margin: float | None, bits: int, method: str, hash_options: Any,
                    data: Any, loss_options: Any = None) -> Objective:
    """``finetune --objective``: ``triplet`` (an embedding loss) or ``hash`` (a hash method); ``data``: the
    :class:`~deephash_cli.hashing.TrainingData`."""
    if family == "triplet":
        return embedding_objective(loss, margin, data.n_classes, loss_options)
    if family == "hash":
        return hash_objective(method, bits, hash_options, data)
    raise DeephashError(f"unknown objective '{family}'; valid names: {', '.join(FAMILIES)}")
