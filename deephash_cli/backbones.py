"""Backbones: pretrained CNNs cut before their final classifier, plus a raw-pixel baseline.

Each registered builder makes the full torchvision classifier (so a state_dict saved from the
full model loads unchanged), loads the requested weights, then returns the network truncated
to the layer before classification. ``layer`` names that layer for ``--help`` and artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from deephash_cli.errors import DeephashError
from deephash_cli.registry import Registry


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: the torchvision constructor and where to cut it."""

    name: str
    layer: str  # the layer whose output are the features, for humans
    dim: int | None  # feature dimension (None: depends on the image size, as for pixels)
    build: Callable[[], nn.Module]  # the full classifier, random weights
    truncate: Callable[[nn.Module], nn.Module]  # full classifier -> feature extractor


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def _tv(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models as models

        return getattr(models, name)(weights=None)

    return build


class _VGGFc7(nn.Module):
    """VGG up to fc7 after its ReLU (4096-d): conv features, pool, fc6, ReLU, dropout, fc7, ReLU."""

    def __init__(self, vgg: nn.Module) -> None:
        super().__init__()
        self.features, self.avgpool = vgg.features, vgg.avgpool
        self.head = vgg.classifier[:5]  # Linear, ReLU, Dropout (identity in eval), Linear, ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.avgpool(self.features(x)), 1))


def _drop_attr(attr: str, keep: int | None = None) -> Callable[[nn.Module], nn.Module]:
    """Replace ``model.<attr>`` by Identity (or by its first ``keep`` layers)."""

    def truncate(model: nn.Module) -> nn.Module:
        setattr(model, attr, nn.Identity() if keep is None else getattr(model, attr)[:keep])
        return model

    return truncate


def _register(name: str, layer: str, dim: int, truncate: Callable[[nn.Module], nn.Module]) -> None:
    BACKBONES.register(name)(BackboneSpec(name, layer, dim, _tv(name), truncate))


for _name in ("vgg16", "vgg19"):
    _register(_name, "fc7 after ReLU", 4096, _VGGFc7)
for _name, _dim in (("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("resnet101", 2048),
                    ("resnet152", 2048)):
    _register(_name, "global average pool", _dim, _drop_attr("fc"))
_register("mobilenet_v2", "global average pool", 1280, _drop_attr("classifier"))
# MobileNetV3's classifier is Linear -> Hardswish -> Dropout -> Linear: keep the penultimate
# (pre-classifier) layer, matching VGG's fc7 convention.
_register("mobilenet_v3_small", "penultimate linear after Hardswish", 1024, _drop_attr("classifier", keep=3))
_register("mobilenet_v3_large", "penultimate linear after Hardswish", 1280, _drop_attr("classifier", keep=3))
_register("efficientnet_b0", "global average pool", 1280, _drop_attr("classifier"))
BACKBONES.register("pixels")(BackboneSpec("pixels", "raw normalised pixels, flattened", None,
                                          lambda: nn.Flatten(), lambda m: m))


def backbone_help() -> str:
    """One line per backbone: name, feature layer and dimension (for --help)."""
    return "; ".join(f"{s.name}: {s.layer} ({s.dim or 'C*H*W'})" for s in (BACKBONES.get(n) for n in BACKBONES))


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise DeephashError(f"weights file {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DeephashError(f"weights file {path}: not a readable state_dict ({first_line})") from None
    # Checkpoints often wrap the state_dict; accept the two common wrappers.
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DeephashError(f"weights file {path}: expected a state_dict (name -> tensor), found "
                            f"{type(state).__name__}")
    return state


def build_backbone(name: str, weights: str = "none") -> tuple[nn.Module, BackboneSpec]:
    """The feature extractor ``name`` in eval mode, with ``weights`` = 'default' | 'none' | PATH.

    'default' asks torchvision for its pretrained weights (downloaded and cached by torchvision;
    fails offline). PATH is a state_dict of the full torchvision classifier, loaded with
    ``weights_only=True`` (no arbitrary code) and checked key by key and shape by shape.
    """
    spec = BACKBONES.get(name)
    if name == "pixels":
        if weights not in ("none", "default"):
            raise DeephashError("the pixels backbone has no weights; drop --weights")
        return spec.build().eval(), spec
    if weights == "none":
        model = spec.build()
    elif weights == "default":
        import torchvision.models as models

        try:
            model = getattr(models, name)(weights="DEFAULT")
        except Exception as err:  # noqa: BLE001 - network errors come in many types
            raise DeephashError(f"cannot get torchvision's pretrained weights for {name} ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}); offline, pass --weights PATH "
                                f"to a state_dict file") from None
    else:
        model = spec.build()
        state = _load_state_dict(Path(weights))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            expected = model.state_dict()
            missing = [k for k in expected if k not in state]
            unexpected = [k for k in state if k not in expected]
            shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
            detail = "; ".join(part for part in (
                f"{len(missing)} missing keys (e.g. {missing[0]})" if missing else "",
                f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})" if unexpected else "",
                f"{len(shape)} shape mismatches (e.g. {shape[0]}: file {tuple(state[shape[0]].shape)}, "
                f"model {tuple(expected[shape[0]].shape)})" if shape else "") if part) or str(err).splitlines()[0]
            raise DeephashError(f"weights file {weights} does not fit backbone {name}: {detail}") from None
    return spec.truncate(model).eval(), spec


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cuda' without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeephashError("--device cuda: no CUDA device is available here (use auto or cpu)")
    if device not in ("cpu", "cuda"):
        raise DeephashError(f"unknown device '{device}'; valid: auto, cpu, cuda")
    return torch.device(device)
