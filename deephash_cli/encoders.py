"""Encoders: everything needed to turn a new image into the representation an artifact holds.

``describe_encoder`` reads it from an artifact's own provenance, so a chain made by deephash needs no extra
option:

* ``extract`` features: the backbone, its weights file (and SHA-256), image size, mean/std;
* ``extract --model`` embeddings/codes: the fine-tuned model artifact (and SHA-256);
* ``encode`` codes/embeddings: the head model it applied (and SHA-256) on top of its parent's extractor;
* ``train-triplet`` embeddings: the model saved with ``--save-model`` (one without it cannot encode images;
  the description says so in ``unavailable``).

The description is a JSON-able dict stored in index artifacts. ``load_encoder`` rebuilds the network from
it after checking every file against its recorded SHA-256 (an error names the file and the hash expected),
and ``Encoder.encode`` maps decoded images to packed codes or float rows, exactly as the stages did.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from deephash_cli import artifacts
from deephash_cli.errors import DeephashError

# Settings that must agree for two artifacts to share an index (``index --add``), in the order reported.
COMPARED = ("produces", "width", "image_size", "mean", "std", "extractor.type", "extractor.backbone",
            "extractor.weights_sha256", "extractor.model_sha256", "head.model_sha256", "head.binarize")


def _file_ref(stored: str, sha256: str | None, base: Path) -> dict[str, Any]:
    """A file the encoder needs: its absolute path when found (stored relative to ``base`` or the working
    directory), the recorded SHA-256 and whether the file found has it."""
    from deephash_cli.info import resolve_reference

    candidates = [resolve_reference(stored, base)] if stored not in ("-", "") else []
    if not Path(stored).is_absolute():
        candidates.append(Path(stored))
    found = next((c for c in candidates if c is not None and c.is_file()), None)
    ref: dict[str, Any] = {"path": str((found or candidates[0] if candidates else Path(stored)).resolve()),
                           "sha256": sha256, "recorded_as": stored}
    ref["status"] = "missing" if found is None else (
        "ok" if sha256 is None or artifacts.sha256_file(found) == sha256 else "changed")
    return ref


def _extractor(config: Mapping[str, Any], base: Path) -> tuple[dict[str, Any], list[str]]:
    """The image -> vector part of an ``extract`` config (``base``: the artifact the config belongs to)."""
    problems: list[str] = []
    if config.get("model"):  # extract --model: a fine-tuned backbone + head
        ref = _file_ref(str(config["model"]), config.get("model_sha256"), base)
        return {"type": "finetuned", "model": ref, "model_sha256": config.get("model_sha256")}, problems
    backbone, weights = config.get("backbone"), config.get("weights", "default")
    extractor: dict[str, Any] = {"type": "backbone", "backbone": backbone, "weights": weights,
                                 "weights_sha256": config.get("weights_sha256")}
    if backbone is None:
        problems.append("its provenance names no backbone")
    elif weights == "none" and backbone != "pixels":
        problems.append(f"its {backbone} had random weights (--weights none), which cannot be rebuilt")
    elif weights not in ("default", "none"):
        extractor["weights"] = _file_ref(str(weights), config.get("weights_sha256"), base)
    return extractor, problems


def describe_encoder(path: Path, header: Mapping[str, Any], kind: str, width: int) -> dict[str, Any]:
    """The encoder of artifact ``path`` (kind features, embeddings or codes; ``width`` = dim or bits).

    ``unavailable`` holds the reason when new images cannot be encoded (the index still answers
    ``--queries`` artifacts)."""
    config = header.get("config", {})
    stage = config.get("stage")
    encoder: dict[str, Any] = {"produces": kind, "width": int(width), "head": None, "unavailable": None}
    problems: list[str] = []
    base = Path(path)
    if stage == "extract":
        extractor_config = config
    elif stage in ("encode", "train-triplet"):
        extractor_config = config.get("source", {})
        parent = header.get("parent")
        from deephash_cli.info import resolve_reference

        parent_path = resolve_reference(parent, base) if parent else None
        base_of_source = parent_path if parent_path is not None else base
        if stage == "train-triplet" and not config.get("model"):
            problems.append("train-triplet saved no model for these embeddings (rerun it with --save-model)")
        if config.get("model"):
            encoder["head"] = {"model": _file_ref(str(config["model"]), config.get("model_sha256"), base),
                               "model_sha256": config.get("model_sha256"),
                               "binarize": kind == "codes"}
        if extractor_config.get("stage") != "extract":
            problems.append(f"its parent was made by '{extractor_config.get('stage')}', not extract")
        base = base_of_source
    else:
        extractor_config = {}
        problems.append(f"it was made by '{stage}', whose input images cannot be traced")
    extractor, more = _extractor(extractor_config, base) if extractor_config else ({}, [])
    problems += more
    encoder["extractor"] = extractor
    encoder["image_size"] = extractor_config.get("image_size")
    encoder["mean"] = extractor_config.get("mean")
    encoder["std"] = extractor_config.get("std")
    if problems:
        encoder["unavailable"] = "; ".join(problems)
    return encoder


def _get(encoder: Mapping[str, Any], dotted: str) -> Any:
    value: Any = encoder
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Settings in which two encoders differ, as 'name: old vs new' (empty when they make the same vectors)."""
    return [f"{name}: {_get(old, name)!r} (index) vs {_get(new, name)!r} (new artifact)" for name in COMPARED
            if _get(old, name) != _get(new, name)]


def _verified(ref: Mapping[str, Any], role: str, index_folder: Path) -> Path:
    """The file of ``ref`` after checking it still has its recorded SHA-256; errors name file and hash."""
    stored = Path(ref["path"])
    candidates = [stored]
    if ref.get("relative"):  # where it lies relative to the index: survives moving both together
        candidates.insert(0, Path(os.path.normpath(index_folder / ref["relative"])))
    found = next((c for c in candidates if c.is_file()), None)
    expected = ref.get("sha256")
    if found is None:
        raise DeephashError(f"encoder {role} {stored}: missing (expected a file with SHA-256 {expected})")
    if expected is not None:
        actual = artifacts.sha256_file(found)
        if actual != expected:
            raise DeephashError(f"encoder {role} {found} changed since the index was built (expected SHA-256 "
                                f"{expected}, found {actual})")
    return found


@dataclass
class Encoder:
    """A rebuilt encoder: ``encode(images) -> (n, width)`` packed uint8 codes or float32 rows."""

    network: Any  # torch.nn.Module: images -> real outputs
    transform: Callable
    image_size: int
    produces: str
    device: Any

    def encode(self, images: Sequence[Any]) -> np.ndarray:
        import torch

        if not images:
            raise DeephashError("no images to encode")
        batch = torch.stack([self.transform(image) for image in images]).to(self.device)
        with torch.inference_mode():
            outputs = torch.flatten(self.network(batch), 1).float().cpu().numpy()
        if self.produces == "codes":
            from deephash_cli.codes import pack_codes

            return pack_codes(outputs)
        return np.ascontiguousarray(outputs, dtype=np.float32)


def load_encoder(encoder: Mapping[str, Any], index_path: Path, device: Any, runtime: str = "eager") -> Encoder:
    """Rebuild the network an index's items were made with, checking each file's SHA-256 first; ``runtime``
    (runtimes.RUNTIMES, one that needs no calibration) executes it."""
    from torch import nn

    from deephash_cli.extract import make_transform

    if encoder.get("unavailable"):
        raise DeephashError(f"{index_path}: cannot encode new images: {encoder['unavailable']}; search it with "
                            f"--queries ARTIFACT instead")
    folder = Path(index_path).parent
    extractor = encoder.get("extractor") or {}
    if extractor.get("type") == "finetuned":
        from deephash_cli.finetune import load_finetuned

        network, _ = load_finetuned(_verified(extractor["model"], "model", folder))
    else:
        from deephash_cli.backbones import build_backbone

        weights = extractor.get("weights", "default")
        if isinstance(weights, Mapping):
            weights = str(_verified(weights, "weights", folder))
        network, _ = build_backbone(str(extractor.get("backbone")), weights)
    head = encoder.get("head")
    if head:
        from deephash_cli.train_stages import load_model

        head_model, _ = load_model(_verified(head["model"], "head model", folder))
        network = nn.Sequential(network, nn.Flatten(1), head_model)
    network = network.to(device).eval()
    size = int(encoder["image_size"])
    if runtime != "eager":
        import torch

        from deephash_cli.runtimes import build_runtime

        if getattr(device, "type", str(device)) != "cpu":
            raise DeephashError(f"--runtime {runtime} runs on the CPU; use --device cpu")
        network = build_runtime(runtime, network, torch.zeros(2, 3, size, size))
    transform = make_transform(size, encoder["mean"], encoder["std"])
    return Encoder(network, transform, size, encoder["produces"], device)


def expand_queries(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Image files given as files or folders (searched recursively, sorted), in the order given."""
    from deephash_cli.datasets import IMAGE_EXTENSIONS

    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DeephashError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DeephashError(f"{path}: no such image file or folder")
    return files
