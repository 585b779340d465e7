"""End-to-end fine-tuning: a backbone and a head trained together from images (``deephash finetune``).

The parts are the head trainers' own: the dataset loading and transforms of ``extract`` (random
resized crop + flip for training, resize + centre crop for everything else), the stratified
validation split, the losses (``--objective triplet``) or hash methods (``--objective hash``),
the miners and P×K sampler, and ``train.fit`` for the loop and model selection on validation mAP.

The result is a ``model`` artifact (architecture JSON naming the backbone, image size, mean/std
and head; every parameter a dataset; no pickle). After every epoch it is rewritten atomically
with the best-so-far model plus a ``/checkpoint`` group (running model, optimizer state, RNG
states, epoch, history), so ``--resume`` continues a killed run from its last completed epoch
and ends bitwise equal to an uninterrupted run on CPU. ``deephash extract --model`` maps every
split through the model. Under ``torchrun`` the batch is sharded over processes
(:mod:`deephash_cli.distributed`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from deephash_cli import artifacts, distributed
from deephash_cli.datasets import ImageSource
from deephash_cli.errors import DeephashError
from deephash_cli.heads import Head, build_head, load_state_arrays
from deephash_cli.objectives import FAMILIES as OBJECTIVES, Objective, build_objective
from deephash_cli.train import Checkpoint, FitResult, TrainOptions, fit, items_per_step

STANDARDIZER_SAMPLE = 1024  # training images whose initial backbone features fit the head's standardiser


class FinetuneModel(nn.Module):
    """Images -> backbone (a torchvision CNN cut before its classifier) -> flatten -> :class:`Head`.

    ``freeze_bn``: the backbone's BatchNorm layers stay in eval mode (fixed running statistics)
    even while the model trains; their affine weights still learn.
    """

    def __init__(self, backbone: nn.Module, head: Head, freeze_bn: bool) -> None:
        super().__init__()
        self.backbone, self.head, self.freeze_bn = backbone, head, freeze_bn

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.backbone(images), 1))

    def train(self, mode: bool = True) -> "FinetuneModel":
        super().train(mode)
        if self.freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


# --------------------------------------------------------------------------- loading (extract --model)


def load_finetuned(path: Path) -> tuple[FinetuneModel, dict[str, Any]]:
    """Rebuild a model saved by ``finetune`` (eval mode, CPU) and return it with its architecture."""
    from deephash_cli.backbones import build_backbone

    artifact = artifacts.read_artifact(path, expect_kinds=("model",))
    architecture = artifact.model_attrs
    if architecture.get("type") != "finetuned":
        raise DeephashError(f"{path}: expected a fine-tuned model (deephash finetune), found a "
                            f"{architecture.get('type', 'unknown')} model; heads trained on features are applied "
                            f"with `deephash encode`")
    backbone, _ = build_backbone(architecture["backbone"], "none")
    model = FinetuneModel(backbone, build_head(architecture["head"]), bool(architecture.get("freeze_bn", True)))
    load_state_arrays(model, artifact.parameters, str(path))
    return model.eval(), architecture


def load_for_extract(path: Path, *, backbone: str, weights: str, image_size: int | None, mean: Sequence[float],
                     std: Sequence[float]) -> tuple[FinetuneModel, dict[str, Any]]:
    """``extract --model``: the model fixes backbone, weights and preprocessing; contradicting options are errors
    (options left at their defaults are not contradictions)."""
    from deephash_cli.extract import IMAGENET_MEAN, IMAGENET_STD

    model, architecture = load_finetuned(path)
    conflicts = []
    if backbone not in ("pixels", architecture["backbone"]):
        conflicts.append(f"--backbone {backbone} (the model's is {architecture['backbone']})")
    if weights != "default":
        conflicts.append("--weights (the model carries its own)")
    if image_size is not None and image_size != architecture["image_size"]:
        conflicts.append(f"--image-size {image_size} (the model's is {architecture['image_size']})")
    for option, value, default, key in (("--mean", mean, IMAGENET_MEAN, "mean"), ("--std", std, IMAGENET_STD, "std")):
        if not np.allclose(value, default) and not np.allclose(value, architecture[key]):
            conflicts.append(f"{option} {','.join(map(str, value))} (the model's is "
                             f"{','.join(map(str, architecture[key]))})")
    if conflicts:
        raise DeephashError(f"{path} fixes the backbone and preprocessing; drop {'; '.join(conflicts)}")
    return model, architecture


# --------------------------------------------------------------------------- images


def item_seed(seed: int, epoch: int, step: int, position: int) -> int:
    """The augmentation seed of the item at ``position`` of batch ``step`` of ``epoch``.

    Depends on nothing else, so the crops are the same whichever process (torchrun) or run
    (--resume) loads the item.
    """
    return int(np.random.SeedSequence([seed, epoch, step, position]).generate_state(1)[0])


def load_train_batch(source: ImageSource, rows: Sequence[int], transform: Callable,
                     seeds: Sequence[int]) -> torch.Tensor:
    """Augmented images ``(len(rows), 3, s, s)``; image ``j``'s random crop and flip depend only on ``seeds[j]``.

    A file that does not decode raises CorruptImageError naming it.
    """
    images = []
    for row, seed in zip(rows, seeds):
        image = source.load(int(row))
        with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from torch's global RNG
            torch.manual_seed(seed)
            images.append(transform(image))
    return torch.stack(images)


class EpochImages(torch.utils.data.Dataset):
    """Item ``i``: the augmented images of step ``i + 1`` of ``epoch`` (this process's part of the batch).

    Read by a DataLoader with workers, so JPEG decoding and augmentation run in other processes,
    ahead of the step that needs them; the images are those :func:`load_train_batch` gives in the
    main process (each item's crop depends only on its seed). A file that does not decode comes
    back as ``(path, reason)`` and is raised in the main process (exceptions do not cross
    processes intact).
    """

    def __init__(self, source: ImageSource, transform: Callable, seed: int, epoch: int,
                 parts: Sequence[tuple[np.ndarray, int]]) -> None:
        self.source, self.transform, self.seed, self.epoch, self.parts = source, transform, seed, epoch, parts

    def __len__(self) -> int:
        return len(self.parts)

    def __getitem__(self, i: int) -> tuple[np.ndarray, torch.Tensor | None, tuple[str, str] | None]:
        from deephash_cli.datasets import CorruptImageError

        rows, start = self.parts[i]
        seeds = [item_seed(self.seed, self.epoch, i + 1, start + j) for j in range(len(rows))]
        try:
            return rows, load_train_batch(self.source, rows, self.transform, seeds), None
        except CorruptImageError as err:
            return rows, None, (err.path, err.reason)


def prefetched_batches(dataset: EpochImages, workers: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """``dataset``'s steps in order, decoded by ``workers`` processes two steps ahead each."""
    from deephash_cli.datasets import CorruptImageError

    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                         prefetch_factor=2, persistent_workers=False)
    for rows, images, failure in loader:
        if failure is not None:
            raise CorruptImageError(*failure)
        yield rows, images


def embed_source(module: nn.Module, source: ImageSource, transform: Callable, image_size: int, *,
                 batch_size: int, workers: int, context: distributed.DistContext) -> torch.Tensor:
    """``module``'s outputs (n, d) float32 on the CPU for every item of ``source``, without augmentation.

    Reuses extract's batched loop (eval mode, no gradients); under torchrun each rank embeds its
    shard and the shards are all-gathered, so every rank returns the same matrix.
    """
    from deephash_cli.datasets import CorruptImageError
    from deephash_cli.extract import extract_chunks

    part = distributed.shard(len(source), context)
    local = source.subset(np.arange(part.start, part.stop))
    try:
        chunks = [torch.from_numpy(features) for features, _, _ in
                  extract_chunks(module, local, transform, image_size, batch_size=batch_size,
                                 device=context.device, workers=workers)]
    except CorruptImageError as err:
        raise DeephashError(f"{err.path}: cannot decode image; fine-tuning needs every image (fix or remove the "
                            f"file)") from None
    if not chunks:
        raise DeephashError(f"{len(source)} images cannot be shared among {context.world_size} processes")
    outputs = torch.cat(chunks).to(context.device)
    return distributed.gather_rows(outputs, len(source), context).cpu()


# --------------------------------------------------------------------------- checkpoints (no pickle)


def checkpoint_arrays(checkpoint: Checkpoint) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A :class:`Checkpoint` as JSON state + named arrays (the best-so-far state is the artifact's /model)."""
    arrays = {f"model/{name}": tensor.detach().cpu().numpy() for name, tensor in checkpoint.model.items()}
    arrays.update({f"loss/{name}": tensor.detach().cpu().numpy() for name, tensor in checkpoint.loss.items()})
    extra: dict[str, dict[str, Any]] = {}
    for param_id, entries in checkpoint.optimizer["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                arrays[f"optimizer/{param_id}/{key}"] = value.detach().cpu().numpy()
            else:
                extra.setdefault(str(param_id), {})[key] = value
    arrays["rng/generator"] = checkpoint.generator.numpy()
    arrays["rng/torch"] = checkpoint.torch_rng.numpy()
    state = {"epoch": checkpoint.epoch, "optimizer": {"param_groups": checkpoint.optimizer["param_groups"],
                                                      "extra": extra},
             "scaler": checkpoint.scaler, "best_epoch": checkpoint.best.best_epoch,
             "best_score": checkpoint.best.best_score,
             "epochs_without_improvement": checkpoint.epochs_without_improvement, "stopped": checkpoint.stopped}
    return state, arrays


def read_resume(path: Path, fingerprint: dict[str, Any]) -> Checkpoint:
    """The checkpoint in ``path``, after checking it was made with the same configuration (``fingerprint``)."""
    header = artifacts.read_header(path)
    if header["kind"] != "model" or header["config"].get("stage") != "finetune":
        raise DeephashError(f"--resume: {path} is not a fine-tuning checkpoint (kind {header['kind']}, stage "
                            f"{header['config'].get('stage')})")
    saved = header["config"].get("fingerprint", {})
    differing = sorted(key for key in set(saved) | set(fingerprint) if saved.get(key) != fingerprint.get(key))
    if differing:
        details = "; ".join(f"{key} {saved.get(key)!r} (checkpoint) vs {fingerprint.get(key)!r} (now)"
                            for key in differing)
        raise DeephashError(f"--resume: {path} was trained with another configuration: {details}. Resume with the "
                            f"same options (only --epochs, --early-stopping, --device and --workers may change), "
                            f"or start over with --force and without --resume")
    state, arrays = artifacts.read_checkpoint(path)
    artifact = artifacts.read_artifact(path, expect_kinds=("model",))
    tensor = lambda value: torch.from_numpy(np.array(value))  # noqa: E731 - a copy, writable
    optimizer: dict[str, Any] = {"state": {}, "param_groups": state["optimizer"]["param_groups"]}
    for name, value in arrays.items():
        if name.startswith("optimizer/"):
            _, param_id, key = name.split("/", 2)
            optimizer["state"].setdefault(int(param_id), {})[key] = tensor(value)
    for param_id, entries in state["optimizer"]["extra"].items():
        optimizer["state"].setdefault(int(param_id), {}).update(entries)
    best = FitResult({name: tensor(value) for name, value in artifact.parameters.items()}, int(state["best_epoch"]),
                     float(state["best_score"]), list(artifact.history))
    return Checkpoint(int(state["epoch"]), {name[len("model/"):]: tensor(value) for name, value in arrays.items()
                                            if name.startswith("model/")},
                      optimizer, state["scaler"], tensor(arrays["rng/generator"]), tensor(arrays["rng/torch"]), best,
                      int(state["epochs_without_improvement"]), bool(state["stopped"]),
                      {name[len("loss/"):]: tensor(value) for name, value in arrays.items()
                       if name.startswith("loss/")})


# --------------------------------------------------------------------------- the stage


def _objective(family: str, *, loss: str, margin: float | None, bits: int, method: str, hash_options: Any,
               loss_options: Any = None, data: Any = None) -> Objective:
    """``--objective``'s :class:`~deephash_cli.objectives.Objective` (``margin``: the triplet loss's, > 0;
    fine-tuning trains one model)."""
    from deephash_cli.hashing import TrainingData

    data = data or TrainingData(2, np.zeros(0, np.int64), 0)  # options checked before the dataset is read

    if family == "triplet":
        from deephash_cli.embedding_losses import EMBEDDING_LOSSES

        if loss not in EMBEDDING_LOSSES:
            from deephash_cli.losses import LOSSES

            LOSSES.get(loss)
            raise DeephashError(f"loss '{loss}' is a hashing loss; use --objective hash --method {loss}")
        if margin is None or not margin > 0:
            raise DeephashError(f"--margin must be > 0 for --objective triplet, got {margin}")
        return build_objective(family, loss=loss, margin=margin, bits=bits, method=method,
                               hash_options=hash_options, loss_options=loss_options, data=data)
    return build_objective(family, loss=loss, margin=None, bits=bits, method=method, hash_options=hash_options,
                           loss_options=loss_options, data=data)


def run_finetune(output: Path, *, objective: str, dataset: str, data_dir: str | None, backbone: str, weights: str,
                 image_size: int | None, mean: Sequence[float], std: Sequence[float], limit_per_class: int | None,
                 test_fraction: float, head: str, dim: int, hidden: int, loss: str, margin: float | None, bits: int,
                 method: str,
                 hash_options: Any, val_fraction: float, options: TrainOptions, lr_backbone: float,
                 freeze_bn: bool, amp: bool, device: str, workers: int, eval_batch_size: int, resume: bool,
                 force: bool, split_seed: int, init: Path | None = None, loss_options: Any = None,
                 split: str = "official", memory_check: bool = True) -> dict[str, Any]:
    """Fine-tune ``backbone`` + a head on ``dataset``'s images; write (and checkpoint every epoch) a model artifact.

    ``init``: start from a fine-tuned model artifact instead of ``weights``: its backbone and preprocessing
    always, its head too when the new head has the same architecture (same objective and shape), e.g. to
    continue a run with lower learning rates; otherwise a new head, e.g. hash codes on a fine-tuned embedding.

    ``split_seed``: the seed of the test split of a dataset without one (``extract --seed``), independent of
    the training seed ``options.seed``. ``split``: the dataset's official split or the class-disjoint one
    (``classes``: training sees only the first half of the classes). ``loss_options``: the margin loss's β
    settings and the N-pair loss's penalty (``embedding_losses.LossOptions``). ``memory_check``: before
    training in one process, refuse a step whose backward pass cannot fit in memory
    (:func:`deephash_cli.memory.check_step_fits`).

    Returns a summary (best validation mAP and epoch, epochs done, seconds per epoch, resumed from).
    """
    from deephash_cli.backbones import BACKBONES, build_backbone, resolve_device
    from deephash_cli.datasets import DATASETS, SPLIT_MODES, limit_per_class as limit, load_dataset, stratified_split
    from deephash_cli.hashing import TrainingData
    from deephash_cli.extract import make_transform

    if backbone == "pixels":
        raise DeephashError("the pixels backbone has nothing to fine-tune; pick a CNN (e.g. --backbone mobilenet_v2)")
    BACKBONES.get(backbone)
    DATASETS.get(dataset)
    if split not in SPLIT_MODES:
        raise DeephashError(f"unknown --split '{split}'; valid names: {', '.join(SPLIT_MODES)}")
    options.check()
    if dim <= 0:
        raise DeephashError(f"--dim must be positive, got {dim}")
    if lr_backbone < 0:
        raise DeephashError(f"--lr-backbone must be ≥ 0 (0 freezes the backbone's weights), got {lr_backbone}")
    if eval_batch_size <= 0:
        raise DeephashError(f"--eval-batch-size must be positive, got {eval_batch_size}")
    # The loss is built once the classes are known (the margin loss has one β per class); checked here first.
    _objective(objective, loss=loss, margin=margin, bits=bits, method=method, hash_options=hash_options,
               loss_options=loss_options)
    mean_rgb, std_rgb = tuple(mean), tuple(std)
    init_model = None
    if init is not None:
        # The initial model fixes backbone and preprocessing, exactly as for extract --model.
        init_model, init_arch = load_for_extract(init, backbone=backbone, weights=weights, image_size=image_size,
                                                 mean=mean, std=std)
        backbone, image_size = init_arch["backbone"], int(init_arch["image_size"])
        mean_rgb, std_rgb = tuple(init_arch["mean"]), tuple(init_arch["std"])
    image_size = image_size or 224
    eval_transform = make_transform(image_size, mean_rgb, std_rgb)
    train_transform = make_transform(image_size, mean_rgb, std_rgb, train=True)
    context = distributed.from_env()
    if options.miner is not None:
        distributed.check_batch(context, options.classes_per_batch * options.samples_per_class,
                                "the P×K batch (--classes-per-batch × --samples-per-class)")
    torch_device = resolve_device(device)

    # The test split of a dataset without one is extract's (--split-seed = extract --seed), whatever the training
    # seed: extract --model then tests on images this run never trained on.
    data = load_dataset(dataset, data_dir, split=split, test_fraction=test_fraction, seed=split_seed)
    out_dim = bits if objective == "hash" else dim
    train_all = limit(data.train, limit_per_class)
    try:
        keep, held = stratified_split(train_all.labels, val_fraction, options.seed)
    except DeephashError as err:
        raise DeephashError(f"--val-fraction {val_fraction}: {err}") from None
    train_source, val_source = train_all.subset(keep), train_all.subset(held)
    training = TrainingData(len(data.class_names), np.asarray(train_source.labels), options.seed)
    built = _objective(objective, loss=loss, margin=margin, bits=bits, method=method, hash_options=hash_options,
                       loss_options=loss_options, data=training)
    # The architecture keys of the objective (as before the Objective existed, so checkpoints still resume).
    extra = ({"method": method, "bits": bits, "produces": "codes"} if objective == "hash" else
             {**built.record, "produces": "embeddings"})

    # Everything that shapes the result; --resume refuses a checkpoint whose fingerprint differs.
    fingerprint = json.loads(json.dumps({
        "objective": objective, "dataset": dataset, "data_dir": data_dir, "limit_per_class": limit_per_class,
        # Only present for the class-disjoint split, so checkpoints written before the option existed still resume.
        **({"split": split} if split != "official" else {}),
        "test_fraction": test_fraction, "items": {"train": len(train_source), "val": len(val_source)},
        # Checkpoints made when the test split followed --seed resume as before when the two agree.
        **({"split_seed": split_seed} if data.split_info.get("test_split") == "stratified" and
           split_seed != options.seed else {}),
        "backbone": backbone, "weights": weights,
        "weights_sha256": artifacts.sha256_file(weights) if weights not in ("default", "none") else None,
        # Only present with --init, so checkpoints written before the option existed still resume.
        **({"init": str(init), "init_sha256": artifacts.sha256_file(init)} if init is not None else {}),
        "image_size": image_size, "mean": mean_rgb, "std": std_rgb, "head": head, "dim": out_dim,
        "hidden": hidden, "hash_options": getattr(hash_options, "__dict__", None) if objective == "hash" else None,
        **extra, "val_fraction": val_fraction, "lr_backbone": lr_backbone, "freeze_bn": freeze_bn, "amp": amp,
        **{k: v for k, v in options.__dict__.items() if k not in ("epochs", "early_stopping", "margin")
           # without a schedule the schedule keys stay out, so checkpoints made before they existed still resume
           and not (k in ("lr_milestones", "lr_gamma") and not options.lr_milestones)}}))
    checkpoint = None
    if resume and output.exists():
        checkpoint = read_resume(output, fingerprint)
    else:
        artifacts.check_output(output, force)

    context = distributed.init(context, torch_device)
    try:
        return _train(output, context=context, data=data, train_source=train_source, val_source=val_source,
                      build=((lambda: build_backbone(backbone, weights)) if init_model is None else
                             (lambda: (init_model.backbone, BACKBONES.get(backbone)))),
                      init_head=init_model.head if init_model is not None else None, parent=init,
                      head=head, out_dim=out_dim, hidden=hidden,
                      objective=built, training=training, options=options, lr_backbone=lr_backbone,
                      freeze_bn=freeze_bn, amp=amp, workers=workers, eval_batch_size=eval_batch_size,
                      image_size=image_size, transforms=(train_transform, eval_transform), checkpoint=checkpoint,
                      memory_check=memory_check, fingerprint=fingerprint,
                      architecture={"type": "finetuned", "backbone": backbone, "weights": weights,
                                    **({"init": str(init)} if init is not None else {}),
                                    "image_size": image_size, "mean": list(mean_rgb), "std": list(std_rgb),
                                    "freeze_bn": freeze_bn, "objective": objective, **extra, "dataset": dataset,
                                    "val_fraction": val_fraction, "seed": options.seed})
    finally:
        distributed.shutdown(context)


def _train(output: Path, *, context: distributed.DistContext, data: Any, train_source: ImageSource,
           val_source: ImageSource, build: Callable, init_head: Head | None, parent: Path | None, head: str,
           out_dim: int, hidden: int, objective: Objective, training: Any, options: TrainOptions, lr_backbone: float, freeze_bn: bool, amp: bool, workers: int,
           eval_batch_size: int, image_size: int, transforms: tuple[Callable, Callable],
           checkpoint: Checkpoint | None, fingerprint: dict[str, Any], architecture: dict[str, Any],
           memory_check: bool = True) -> dict[str, Any]:
    """Build the network, wrap it for DDP when distributed, and run ``train.fit`` with the image hooks."""
    from deephash_cli.train_stages import _progress_fit
    from deephash_cli.ui import stderr_console, warn

    device = context.device
    train_transform, eval_transform = transforms
    torch.manual_seed(options.seed)  # the head's initial weights
    cnn, spec = build()
    net = FinetuneModel(cnn, Head(head, spec.dim, out_dim, hidden, objective.head_output), freeze_bn).to(device)
    continued = init_head is not None and init_head.architecture() == net.head.architecture()
    if continued:
        net.head = init_head.to(device)  # --init with the same head: continue it (standardiser included)
    if memory_check and not context.enabled:  # (one process; each of several would measure its own share)
        from deephash_cli.memory import check_step_fits

        per_step = items_per_step(options, objective.loss, len(train_source))
        check_step_fits(net, per_step, image_size, device, amp=amp,
                        hint="lower --classes-per-batch, --samples-per-class or --image-size" if options.miner
                        else "lower --batch-size or --image-size")
    if not continued and checkpoint is None:
        rng = np.random.default_rng(options.seed)
        sample = np.sort(rng.choice(len(train_source), min(len(train_source), STANDARDIZER_SAMPLE), replace=False))
        net.head.fit_standardizer(embed_source(net.backbone, train_source.subset(sample), eval_transform, image_size,
                                               batch_size=eval_batch_size, workers=workers,
                                               context=context).to(device))
    forward: nn.Module = net
    # FTDE infers its codes from the current outputs of every training image (no augmentation).
    training.outputs = lambda: embed_source(net, train_source, eval_transform, image_size, batch_size=eval_batch_size,
                                            workers=workers, context=context)
    if context.enabled:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        elif context.is_main and any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                                     for m in net.train().modules()):
            warn("on CPU (Gloo) PyTorch has no SyncBatchNorm: BatchNorm layers in training mode normalise with each "
                 "process's shard, so the result differs slightly from one process (use --freeze-bn and "
                 "--head linear for equality)")
        forward = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    groups = [{"params": list(net.backbone.parameters()), "lr": lr_backbone},
              {"params": list(net.head.parameters()), "lr": options.lr}]

    ahead: dict[str, Iterator[tuple[np.ndarray, torch.Tensor]]] = {}

    def plan_epoch(epoch: int, planned: list[torch.Tensor]) -> None:
        """With --workers > 0, start decoding this epoch's training images in worker processes."""
        if workers > 0:
            parts = []
            for rows in planned:
                part = distributed.shard(len(rows), context)
                parts.append((rows.numpy()[part], part.start))
            ahead["batches"] = prefetched_batches(EpochImages(train_source, train_transform, options.seed, epoch,
                                                              parts), workers)

    def embed_rows(rows: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """Embeddings (B, d) of training items ``rows``: this rank's shard computed, the rest gathered."""
        rows_np = rows.cpu().numpy()
        part = distributed.shard(len(rows_np), context)
        if "batches" in ahead:
            planned_rows, images = next(ahead["batches"])
            if not np.array_equal(planned_rows, rows_np[part]):
                raise RuntimeError(f"prefetched images of step {step} are for other rows")  # a bug, not bad input
        else:
            seeds = [item_seed(options.seed, epoch, step, j) for j in range(part.start, part.stop)]
            images = load_train_batch(train_source, rows_np[part], train_transform, seeds)
        local = forward(images.to(device, non_blocking=True))
        return distributed.gather_rows(local, len(rows_np), context)

    def validate(model: nn.Module) -> float:
        outputs = embed_source(model, val_source, eval_transform, image_size, batch_size=eval_batch_size,
                               workers=workers, context=context)
        return objective.score(outputs, val_source.labels)

    config = {"stage": "finetune", "fingerprint": fingerprint, **fingerprint, "epochs": options.epochs,
              "early_stopping": options.early_stopping, "device": str(device), "world_size": context.world_size,
              "eval_batch_size": eval_batch_size, "class_names": data.class_names, "split": data.split_info}
    resumed_from = checkpoint.epoch if checkpoint is not None else 0

    def save(state: Checkpoint) -> None:
        """Rewrite the model artifact atomically: best-so-far model, history and the full checkpoint."""
        seconds = [row["seconds"] for row in state.best.history]
        summary = {"best_val_map": state.best.best_score, "best_epoch": state.best.best_epoch,
                   "epochs_done": state.epoch, "stopped_early": state.stopped,
                   "seconds_per_epoch": float(np.mean(seconds)) if seconds else None}
        json_state, arrays = checkpoint_arrays(state)
        with artifacts.ArtifactWriter(output, kind="model", class_names=data.class_names,
                                      config={**config, **summary}, parent=parent, force=True) as writer:
            writer.write_model({**architecture, "head": net.head.architecture(), "feature_dim": spec.dim},
                               {name: t.detach().cpu().numpy() for name, t in state.best.best_state.items()})
            writer.write_history(state.best.history)
            writer.write_checkpoint(json_state, arrays)

    hooks = dict(embed_rows=embed_rows, parameters=groups, amp=amp, resume=checkpoint,
                 on_checkpoint=save if context.is_main else None, plan_epoch=plan_epoch)
    train_y = torch.as_tensor(train_source.labels, device=device)
    if context.is_main:
        if checkpoint is not None:
            stderr_console().print(f"resuming {output} after epoch {checkpoint.epoch}")
        result = _progress_fit(f"finetune {architecture['backbone']}", net, objective.loss, None, train_y, options,
                               validate, objective.schedule, **hooks)
    else:
        result = fit(net, objective.loss, None, train_y, options, validate=validate, before_epoch=objective.schedule,
                     **hooks)
    seconds = [row["seconds"] for row in result.history]
    return {"best_val_map": result.best_score, "best_epoch": result.best_epoch, "epochs_done": len(result.history),
            "resumed_from": resumed_from, "seconds_per_epoch": float(np.mean(seconds)) if seconds else None,
            "world_size": context.world_size, "rank": context.rank}
