"""Training stages: train-triplet (embeddings) and train-hash (binary codes), plus encode.

Each stage reads a features artifact, carves a stratified validation split from train, trains
with ``train.fit`` (the same loop, losses, miners and model selection for both), and writes
artifacts. The test split is never used to choose anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from deephash_cli import artifacts
from deephash_cli.artifacts import Artifact, Split
from deephash_cli.datasets import stratified_split
from deephash_cli.embedding_losses import EMBEDDING_LOSSES, LossOptions
from deephash_cli.errors import DeephashError
from deephash_cli.hashing import TrainingData
from deephash_cli.heads import Head, build_head, load_state_arrays, state_arrays
from deephash_cli.objectives import Objective, binarize, embedding_objective, hash_objective, validation_map
from deephash_cli.train import FitResult, TrainOptions, as_tensor, embed, fit
from deephash_cli.ui import advance, progress_bar, warn


@dataclass
class PreparedData:
    """Train (after carving val), val and test arrays of a features artifact."""

    artifact: Artifact
    splits: dict[str, Split]

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """train features (n, d), train labels (n,) and val features (m, d) as tensors on ``device``."""
        train, val = self.splits["train"], self.splits["val"]
        return as_tensor(train.features, device), as_tensor(train.labels, device), as_tensor(val.features, device)


def prepare_splits(features_path: Path, val_fraction: float, seed: int) -> PreparedData:
    """Read a features/embeddings artifact and carve a stratified, seeded validation split from train.

    An artifact that already holds a val split keeps it (so chained stages agree on validation).
    """
    artifact = artifacts.read_artifact(features_path, expect_kinds=("features", "embeddings"))
    train = artifact.split("train")
    classes = np.unique(train.labels)
    if len(classes) == 0:
        raise DeephashError(f"{artifacts.display_name(features_path)}: the train split is empty; training needs "
                            f"items of at least two classes")
    if len(classes) < 2:
        raise DeephashError(f"{features_path}: the train split holds a single class ({classes.tolist()}); triplets "
                            f"need at least two")
    splits = dict(artifact.splits)
    if "val" not in splits:
        try:
            keep, held = stratified_split(train.labels, val_fraction, seed)
        except DeephashError as err:
            raise DeephashError(f"--val-fraction {val_fraction}: {err}") from None
        splits["train"], splits["val"] = train.subset(keep), train.subset(held)
    return PreparedData(artifact, splits)


def _progress_fit(label: str, model: torch.nn.Module, loss_fn: torch.nn.Module, train_x: torch.Tensor,
                  train_y: torch.Tensor, options: TrainOptions, validate: Callable[[torch.nn.Module], float],
                  before_epoch=None, **hooks: Any) -> FitResult:
    """``fit`` with a rich progress bar (items/s, loss, validation mAP) on stderr; ``hooks`` go to ``fit``."""
    with progress_bar(label, total=None, unit="items") as progress:
        last = {"loss": float("nan")}

        def on_step(items: int, loss: float) -> None:
            last["loss"] = loss
            advance(progress, items, unit="items", info=f"loss {loss:.4f}")

        def on_epoch(row: dict[str, Any]) -> None:
            # One compact line per epoch above the bar (no timestamp or source location, never wrapped).
            progress.console.print(f"{label} epoch {row['epoch']}: loss {row['loss']:.4f}, active "
                                   f"{row['active_fraction']:.3f}, val mAP {row['val_map']:.4f}, "
                                   f"{row['seconds']:.1f} s", markup=False, highlight=False, soft_wrap=True)

        return fit(model, loss_fn, train_x, train_y, options, validate=validate, before_epoch=before_epoch,
                   on_step=on_step, on_epoch=on_epoch, warn=warn, **hooks)


def _write_outputs(model: Head, data: PreparedData, output: Path, *, kind: str, features_path: Path,
                   config: dict[str, Any], history: list[dict[str, Any]], device: torch.device,
                   encode: Callable[[torch.Tensor], tuple[np.ndarray, int | None]], force: bool,
                   features_sha256: str | None = None) -> None:
    """Map every split through ``model`` and write the embeddings/codes artifact (``features_sha256``: the
    input's hash taken when the stage started)."""
    with artifacts.ArtifactWriter(output, kind=kind, class_names=data.artifact.class_names, config=config,
                                  parent=features_path, parent_sha256=features_sha256, force=force) as writer:
        for name in artifacts.SPLITS:
            if name not in data.splits:
                continue
            split = data.splits[name]
            values, bits = encode(embed(model, as_tensor(split.features, device)))
            if bits is None:
                writer.write_split(name, Split(split.labels, split.index, features=values, paths=split.paths))
            else:
                writer.write_split(name, Split(split.labels, split.index, codes=values, bits=bits, paths=split.paths))
        writer.write_history(history)


def save_model(model: Head, path: Path, *, features_path: Path, extra: dict[str, Any], config: dict[str, Any],
               history: list[dict[str, Any]], force: bool, features_sha256: str | None = None) -> None:
    """A ``model`` artifact: architecture (JSON) + parameters as datasets; no pickle."""
    with artifacts.ArtifactWriter(path, kind="model", class_names=None, config=config, parent=features_path,
                                  parent_sha256=features_sha256, force=force) as writer:
        writer.write_model({**model.architecture(), **extra}, state_arrays(model))
        writer.write_history(history)


def load_model(path: Path) -> tuple[Head, dict[str, Any]]:
    """Rebuild a head saved by ``save_model``; returns it (eval mode, CPU) and its architecture."""
    artifact = artifacts.read_artifact(path, expect_kinds=("model",))
    architecture = artifact.model_attrs
    if architecture.get("type") != "head":
        raise DeephashError(f"{path}: expected a head model (train-triplet / train-hash), found "
                            f"{architecture.get('type', 'an unknown model type')}")
    artifacts.check_head(architecture, artifact.parameters, f"{path}:/model")  # nothing is built from bad fields
    model = build_head(architecture)
    load_state_arrays(model, artifact.parameters, str(path))
    return model.eval(), architecture


def input_signature(artifact: Artifact) -> dict[str, Any]:
    """What a model trained on this features artifact expects of its input."""
    config = artifact.config
    return {"backbone": config.get("backbone"), "dim": int(artifact.split("train").features.shape[1]),
            "image_size": config.get("image_size"), "dataset": config.get("dataset"), "kind": artifact.kind}


# --------------------------------------------------------------------------- train-triplet


def run_train_triplet(features_path: Path, output: Path, *, save_model_path: Path | None, head: str, dim: int,
                      hidden: int, loss: str, margins: Sequence[float], val_fraction: float, options: TrainOptions,
                      device: torch.device, force: bool, loss_options: LossOptions | None = None) -> dict[str, Any]:
    """Train one embedding head per margin (``margins``: at least one, each > 0), keep the best on validation mAP,
    write embeddings (+ model).

    ``loss_options``: the margin loss's β settings and the N-pair loss's L2 penalty (default ``LossOptions()``).
    """
    loss_options = loss_options or LossOptions()
    margin_list: list[float | None] = list(margins)
    if not margin_list or not all(m > 0 for m in margin_list):
        raise DeephashError(f"--margin: expected at least one margin, each > 0, got {margin_list}")
    embedding_objective(loss, margin_list[0], 2, loss_options)  # names the valid losses, checks their options
    if dim <= 0:
        raise DeephashError(f"--dim must be positive, got {dim}")
    options.check()
    if not EMBEDDING_LOSSES[loss].margin:
        margin_list = [None]  # hoffer has no margin: one run
    artifacts.check_outputs_differ({"--output": output, "--save-model": save_model_path})
    artifacts.check_output(output, force)
    if save_model_path is not None:
        artifacts.check_output(save_model_path, force)
    features_sha256 = artifacts.check_input(features_path)  # recorded as it was read, whatever happens to it later
    data = prepare_splits(features_path, val_fraction, options.seed)
    train, val = data.splits["train"], data.splits["val"]
    train_x, train_y, val_x = data.tensors(device)

    def validate(model: torch.nn.Module) -> float:
        return validation_map(embed(model, val_x).cpu().numpy(), val.labels, distance="euclidean")

    runs = []
    best: tuple[float, Head, FitResult, float | None, Objective] | None = None
    for margin in margin_list:
        torch.manual_seed(options.seed)  # same initial weights for every margin
        objective = embedding_objective(loss, margin, len(data.artifact.class_names), loss_options)
        model = Head(head, train.features.shape[1], dim, hidden, objective.head_output).to(device)
        model.fit_standardizer(train_x)
        loss_fn = objective.loss
        start = time.perf_counter()
        result = _progress_fit(f"{loss} margin {margin}" if margin is not None else loss, model, loss_fn, train_x,
                               train_y, options, validate, before_epoch=objective.schedule)
        runs.append({"margin": margin, "val_map": result.best_score, "best_epoch": result.best_epoch,
                     "epochs_run": len(result.history), "seconds": time.perf_counter() - start,
                     "seconds_per_epoch": float(np.mean([h["seconds"] for h in result.history])),
                     **loss_fn.summary()})
        if best is None or result.best_score > best[0]:
            best = (result.best_score, model, result, margin, objective)
    assert best is not None
    best_score, model, result, chosen_margin, objective = best
    summary = {"margin_search": runs, "chosen_margin": chosen_margin, "best_val_map": best_score,
               "best_epoch": result.best_epoch}
    config = {"stage": "train-triplet", "loss": loss, "head": head, "dim": dim, "hidden": hidden,
              "val_fraction": val_fraction,
              **{k: v for k, v in objective.record.items() if k not in ("loss", "margin")}, **options.__dict__,
              "device": str(device), "input": input_signature(data.artifact), **summary,
              "source": data.artifact.config}
    if save_model_path is not None:
        # The model first, so the embeddings can name it (and its SHA-256): `deephash index` finds the
        # encoder of new query images through this link.
        save_model(model, save_model_path, features_path=features_path, config=config, history=result.history,
                   extra={"input": input_signature(data.artifact), "loss": loss, "margin": chosen_margin,
                          "produces": "embeddings", "val_fraction": val_fraction,
                          "seed": options.seed}, force=force, features_sha256=features_sha256)
        config = {**config, "model": artifacts.parent_reference(save_model_path, output),
                  "model_sha256": artifacts.sha256_file(save_model_path)}
    _write_outputs(model, data, output, kind="embeddings", features_path=features_path, config=config,
                   history=result.history, device=device, encode=objective.encode, force=force,
                   features_sha256=features_sha256)
    return summary


# --------------------------------------------------------------------------- train-hash


def run_train_hash(features_path: Path, output: Path, *, bits: int, method: str, hash_options: Any, head: str,
                   hidden: int, val_fraction: float, options: TrainOptions, device: torch.device,
                   force: bool) -> dict[str, Any]:
    """Train a hash head (features -> bits real outputs -> sign); save it as a model artifact."""
    hash_objective(method, bits, hash_options, TrainingData(2, np.zeros(0, np.int64), options.seed))  # checks first
    options.check()
    artifacts.check_output(output, force)
    features_sha256 = artifacts.check_input(features_path)  # recorded as it was read, whatever happens to it later
    data = prepare_splits(features_path, val_fraction, options.seed)
    train, val = data.splits["train"], data.splits["val"]
    train_x, train_y, val_x = data.tensors(device)

    torch.manual_seed(options.seed)
    training = TrainingData(len(data.artifact.class_names), train.labels, options.seed)
    objective = hash_objective(method, bits, hash_options, training)
    model = Head(head, train.features.shape[1], bits, hidden, objective.head_output).to(device)
    model.fit_standardizer(train_x)
    training.outputs = lambda: embed(model, train_x)

    def validate(model: torch.nn.Module) -> float:
        return objective.score(embed(model, val_x), val.labels)

    result = _progress_fit(f"{method} {bits} bits", model, objective.loss, train_x, train_y, options, validate,
                           before_epoch=objective.schedule)
    summary = {"best_val_map": result.best_score, "best_epoch": result.best_epoch,
               "seconds_per_epoch": float(np.mean([h["seconds"] for h in result.history]))}
    config = {"stage": "train-hash", "method": method, "bits": bits, "head": head, "hidden": hidden,
              "val_fraction": val_fraction, **objective.record, **options.__dict__, "device": str(device),
              "input": input_signature(data.artifact), **summary, "source": data.artifact.config}
    save_model(model, output, features_path=features_path, config=config, history=result.history,
               extra={"input": input_signature(data.artifact), "method": method, "bits": bits,
                      "produces": "codes", "val_fraction": val_fraction, "seed": options.seed}, force=force,
               features_sha256=features_sha256)
    return summary


# --------------------------------------------------------------------------- encode


def run_encode(features_path: Path, model_path: Path, output: Path, *, relaxed: bool, device: torch.device,
               force: bool) -> dict[str, Any]:
    """Map every split of a features artifact through a saved head: codes (hash models) or embeddings.

    A model refuses features of another dimension or backbone. With the model's validation
    settings, the same validation split it was selected on is carved again and stored.
    """
    artifacts.check_output(output, force)
    features_sha256 = artifacts.check_input(features_path)
    model_sha256 = artifacts.check_input(model_path)
    model, architecture = load_model(model_path)
    expected = architecture.get("input", {})
    data_artifact = artifacts.read_artifact(features_path, expect_kinds=("features", "embeddings"))
    found = input_signature(data_artifact)
    mismatches = [f"{key} {expected[key]!r} (model) vs {found[key]!r} (features)" for key in ("dim", "backbone")
                  if key in expected and expected[key] != found[key]]
    if mismatches:
        raise DeephashError(f"{model_path} was trained on other features than {features_path}: "
                            f"{'; '.join(mismatches)}")
    produces = architecture.get("produces", "embeddings")
    data = prepare_splits(features_path, architecture.get("val_fraction", 0.1), architecture.get("seed", 0))
    model = model.to(device)
    if produces == "codes" and not relaxed:
        kind, encode = "codes", binarize
    else:
        kind, encode = "embeddings", (lambda out: (out.cpu().numpy(), None))
    config = {"stage": "encode", "model": artifacts.parent_reference(model_path, output),
              "model_sha256": model_sha256,
              "relaxed": relaxed, "produces": kind, "method": architecture.get("method"),
              "loss": architecture.get("loss"), "bits": architecture.get("bits"), "input": found,
              "source": data_artifact.config, "model_config": artifacts.read_header(model_path)["config"]}
    _write_outputs(model, data, output, kind=kind, features_path=features_path, config=config, history=[],
                   device=device, encode=encode, force=force, features_sha256=features_sha256)
    return {"kind": kind, "bits": architecture.get("bits")}
