"""Trainable heads on top of frozen features: embedding networks and hash networks, by name.

A head standardises its input with the train split's per-dimension mean and std (stored as
buffers, so they travel with the saved model), then maps it through ``linear`` or ``mlp``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deephash_cli.errors import DeephashError
from deephash_cli.registry import Registry

HEADS: Registry = Registry("head")


@HEADS.register("linear")
def _linear(in_dim: int, out_dim: int, hidden: int) -> nn.Module:
    """d -> dim, one affine map."""
    return nn.Linear(in_dim, out_dim)


@HEADS.register("mlp")
def _mlp(in_dim: int, out_dim: int, hidden: int) -> nn.Module:
    """d -> hidden -> dim: Linear, BatchNorm, ReLU, Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class Head(nn.Module):
    """Standardise -> network -> (L2-normalise | tanh | nothing).

    ``output``: 'normalized' (unit-length embeddings, for FaceNet-style losses), 'tanh'
    (bounded relaxed hash codes), or 'raw'.
    """

    OUTPUTS = ("normalized", "tanh", "raw")

    def __init__(self, name: str, in_dim: int, out_dim: int, hidden: int = 512, output: str = "normalized") -> None:
        super().__init__()
        if out_dim <= 0:
            raise DeephashError(f"output dimension must be positive, got {out_dim}")
        if hidden <= 0:
            raise DeephashError(f"--hidden must be positive, got {hidden}")
        if output not in self.OUTPUTS:
            raise ValueError(f"output must be one of {self.OUTPUTS}, got {output!r}")
        self.name, self.in_dim, self.out_dim, self.hidden, self.output = name, in_dim, out_dim, hidden, output
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.net = HEADS.get(name)(in_dim, out_dim, hidden)

    def fit_standardizer(self, features: torch.Tensor) -> None:
        """Set the input mean/std from the training features (n, d); constant dims keep std 1."""
        std = features.std(dim=0)
        self.input_mean.copy_(features.mean(dim=0))
        self.input_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net((x - self.input_mean) / self.input_std)
        if self.output == "normalized":
            return F.normalize(z, dim=1)
        if self.output == "tanh":
            return torch.tanh(z)
        return z

    def architecture(self) -> dict[str, Any]:
        """Everything needed to rebuild this head (stored as JSON in model artifacts)."""
        return {"type": "head", "head": self.name, "in_dim": self.in_dim, "out_dim": self.out_dim,
                "hidden": self.hidden, "output": self.output}


def build_head(architecture: dict[str, Any]) -> Head:
    """Rebuild a Head from its architecture dict (the inverse of ``Head.architecture``)."""
    try:
        return Head(architecture["head"], int(architecture["in_dim"]), int(architecture["out_dim"]),
                    int(architecture.get("hidden", 512)), architecture.get("output", "normalized"))
    except KeyError as err:
        raise DeephashError(f"model architecture lacks {err}; found keys {sorted(architecture)}") from None


def state_arrays(module: nn.Module) -> dict[str, Any]:
    """Parameters and buffers as numpy arrays (the on-disk form; no pickle)."""
    return {name: tensor.detach().cpu().numpy() for name, tensor in module.state_dict().items()}


def load_state_arrays(module: nn.Module, arrays: dict[str, Any], where: str) -> None:
    """Load numpy arrays into ``module``; missing, extra or mis-shaped tensors are a DeephashError."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    if missing or unexpected:
        raise DeephashError(f"{where}: parameters do not fit the architecture (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    state = {}
    for name, target in expected.items():
        value = torch.as_tensor(arrays[name])
        if tuple(value.shape) != tuple(target.shape):
            raise DeephashError(f"{where}: parameter {name} has shape {tuple(value.shape)}, expected "
                                f"{tuple(target.shape)}")
        state[name] = value.to(target.dtype)
    module.load_state_dict(state)
