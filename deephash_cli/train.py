"""The training loop shared by train-triplet and train-hash: one readable loop, no framework.

Two ways to form triplets, both giving the loss index triplets over the rows of one batch:
- random (``miner=None``): each epoch draws ``triplets_per_epoch`` fresh seeded triplets from the
  whole train split; each step embeds the items its ``batch_size`` triplets touch.
- mined: a seeded P×K batch sampler; the miner picks triplets inside each batch.

Model selection and early stopping use a validation score (higher is better, e.g. validation
mAP) computed by a caller-supplied function after every epoch; the best epoch's weights are
kept. Nothing here reads or writes files or prints: progress goes through ``on_step``/``on_epoch``.

Fine-tuning (``deephash finetune``) runs the same loop with four optional hooks: ``embed_rows``
(images instead of feature rows, possibly sharded over distributed ranks), ``parameters``
(optimizer parameter groups, e.g. a lower backbone learning rate), ``amp`` (CUDA mixed precision)
and ``resume``/``on_checkpoint`` (a :class:`Checkpoint` after every epoch; continuing from one
gives bitwise the same result as an uninterrupted run on CPU).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from deephash_cli.errors import DeephashError
from deephash_cli.miners import MINERS, embedding_collapse
from deephash_cli.samplers import PKBatchSampler, random_triplets

OPTIMIZERS = ("adam", "sgd")


@dataclass
class TrainOptions:
    """Options of one training run (see ``deephash train-triplet --help``)."""

    epochs: int = 20
    batch_size: int = 256  # random mode: triplets per step; mined mode: P*K is the batch
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    early_stopping: int | None = None  # epochs without validation improvement before stopping
    miner: str | None = None  # None: random triplets
    classes_per_batch: int = 10
    samples_per_class: int = 25
    triplets_per_epoch: int | None = None  # random mode; default: one per training item
    lr_milestones: tuple[int, ...] = ()  # step decay: after each of these epochs, learning rates × lr_gamma
    lr_gamma: float = 0.1

    def check(self) -> None:
        """Raise DeephashError for impossible values."""
        if self.epochs <= 0:
            raise DeephashError(f"--epochs must be positive, got {self.epochs}")
        if self.batch_size <= 0:
            raise DeephashError(f"--batch-size must be positive, got {self.batch_size}")
        if not self.lr > 0:
            raise DeephashError(f"--lr must be positive, got {self.lr}")
        if not self.weight_decay >= 0:
            raise DeephashError(f"--weight-decay must be ≥ 0, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise DeephashError(f"unknown optimizer '{self.optimizer}'; valid names: {', '.join(OPTIMIZERS)}")
        if self.early_stopping is not None and self.early_stopping <= 0:
            raise DeephashError(f"--early-stopping must be positive, got {self.early_stopping}")
        if self.miner is not None:
            MINERS.get(self.miner)
        milestones = list(self.lr_milestones)
        if any(m <= 0 for m in milestones) or milestones != sorted(set(milestones)):
            raise DeephashError(f"--lr-milestones must be increasing positive epochs, got "
                                f"{','.join(map(str, milestones))}")
        if not 0 < self.lr_gamma <= 1:
            raise DeephashError(f"--lr-gamma must lie in (0, 1], got {self.lr_gamma}")


def lr_factor(epoch: int, milestones: tuple[int, ...] | list[int], gamma: float) -> float:
    """The learning-rate multiplier of ``epoch`` (1-based): gamma to the number of milestones already passed.

    Milestone m means: epochs 1..m train at the base rates, epoch m+1 onwards at base × gamma.
    A pure function of the epoch, so a resumed run uses the same rates as an uninterrupted one.
    """
    return gamma ** sum(1 for m in milestones if epoch > m)


@dataclass
class FitResult:
    """The best model's state, its epoch and score, and the per-epoch history."""

    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_score: float
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Checkpoint:
    """The loop's whole state after a completed epoch: continuing from it repeats the rest of the run.

    ``model``/``optimizer``/``scaler`` are the state_dicts of the running model, optimizer and
    GradScaler; ``generator`` and ``torch_rng`` the states of the loop's triplet/miner generator
    and of torch's global RNG; ``best`` the best-so-far state, epoch, score and the history.
    ``stopped``: early stopping ended the run. ``loss``: the state_dict of the loss (its learnable
    parameters, e.g. the margin loss's β; empty for the others). Serialised without pickle by ``finetune``.
    """

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    generator: torch.Tensor
    torch_rng: torch.Tensor
    best: FitResult
    epochs_without_improvement: int = 0
    stopped: bool = False
    loss: dict[str, torch.Tensor] = field(default_factory=dict)


def make_miner(name: str, loss_fn: nn.Module):
    """The miner ``name`` measuring the loss's own :class:`~deephash_cli.distances.Distance` (``loss_fn.distance``;
    the miner's default, FaceNet's, for a loss without one). Its window uses ``loss_fn.margin`` at every step
    (see :func:`fit`), so distance and margin reach loss and miner from one place. Distance-weighted sampling
    always measures plain distances on the unit sphere (its density needs them)."""
    import inspect

    miner_class = MINERS.get(name)
    distance = getattr(loss_fn, "distance", None)
    if distance is not None and "distance" in inspect.signature(miner_class.__init__).parameters:
        return miner_class(distance=distance)
    return miner_class()


def make_optimizer(parameters, options: TrainOptions) -> torch.optim.Optimizer:
    """Adam, or SGD with Nesterov momentum 0.9."""
    if options.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=options.lr, weight_decay=options.weight_decay)
    return torch.optim.SGD(parameters, lr=options.lr, momentum=0.9, nesterov=True, weight_decay=options.weight_decay)


def _check_finite(value: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(value):
        raise DeephashError(f"training diverged: loss is {float(value.detach())} at epoch {epoch}, step {step} "
                            f"(lower --lr, or check the features); no model was written")


def batch_kind(options: TrainOptions, loss_fn: nn.Module) -> str:
    """How :func:`fit` forms a step's batch: ``pk`` (a P×K batch, when a miner is named), ``items``
    (``batch_size`` shuffled items, for losses that read only labels) or ``triplets`` (``batch_size``
    fresh random triplets, their distinct items embedded once)."""
    if options.miner:
        return "pk"
    return "items" if not getattr(loss_fn, "uses_triplets", True) else "triplets"


def items_per_step(options: TrainOptions, loss_fn: nn.Module, n_items: int) -> int:
    """The most training items one step of :func:`fit` embeds (of ``n_items``)."""
    per_step = {"pk": options.classes_per_batch * options.samples_per_class, "items": options.batch_size,
                "triplets": 3 * options.batch_size}[batch_kind(options, loss_fn)]
    return min(per_step, n_items)


def fit(model: nn.Module, loss_fn: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
        options: TrainOptions, *, validate: Callable[[nn.Module], float],
        before_epoch: Callable[[int], dict[str, float]] | None = None,
        on_step: Callable[[int, float], None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        warn: Callable[[str], None] | None = None,
        embed_rows: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
        parameters: Any = None, amp: bool = False, resume: Checkpoint | None = None,
        on_checkpoint: Callable[[Checkpoint], None] | None = None,
        plan_epoch: Callable[[int, list[torch.Tensor]], None] | None = None) -> FitResult:
    """Train ``model`` with ``loss_fn`` on (train_x (n, d), train_y (n,)); keep the best validation epoch.

    ``before_epoch(epoch)`` may change schedule-driven attributes (e.g. DTSH's α, λ) and returns
    them for the history. ``options.lr_milestones`` multiply every group's learning rate by
    ``options.lr_gamma`` after each milestone epoch (logged as ``lr_factor``). ``on_step(items,
    loss)`` and ``on_epoch(row)`` report progress.

    Fine-tuning hooks: ``embed_rows(rows, epoch, step)`` returns the embeddings (with gradient)
    of training items ``rows`` instead of ``model(train_x[rows])`` (``train_x`` may then be None);
    ``parameters``: what the optimizer trains (default ``model.parameters()``; parameter groups
    may set their own ``lr``); the loss's own learnable parameters (``loss_fn.parameter_groups()``,
    e.g. the margin loss's β with its learning rate) are added to them; ``amp``: autocast the
    forward pass to float16 and scale the loss with a GradScaler (CUDA only); ``resume``: continue
    after the checkpoint's epoch; ``on_checkpoint(checkpoint)``: called after every epoch;
    ``plan_epoch(epoch, rows_per_step)``: called before each epoch's first step with the rows every
    step will ask ``embed_rows`` for, in order (so images can be decoded ahead, in other processes).
    """
    options.check()
    device = train_y.device
    amp = amp and device.type == "cuda"
    torch.manual_seed(options.seed)
    generator = torch.Generator(device="cpu").manual_seed(options.seed)
    labels_np = train_y.cpu().numpy()
    loss_fn.to(device)
    # Losses that read only labels (classification, pairwise, central similarity) take whole batches: P×K
    # batches when a miner is named (nothing is mined), otherwise shuffled batches of batch_size items.
    uses_triplets = getattr(loss_fn, "uses_triplets", True)
    kind = batch_kind(options, loss_fn)
    miner = make_miner(options.miner, loss_fn) if kind == "pk" and uses_triplets else None
    sampler = None
    if kind == "pk":
        sampler = PKBatchSampler(labels_np, options.classes_per_batch, options.samples_per_class, seed=options.seed)
    triplets_per_epoch = options.triplets_per_epoch or len(labels_np)
    groups = list(model.parameters() if parameters is None else parameters)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    optimizer = make_optimizer(groups + list(getattr(loss_fn, "parameter_groups", list)()), options)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # before a checkpoint's (decayed) rates load
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    reduction_override = "positive_mean" if miner is not None and miner.positive_mean else None
    if embed_rows is None:
        def embed_rows(rows: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
            return model(train_x[rows])

    best = FitResult(best_state=copy.deepcopy(model.state_dict()), best_epoch=0, best_score=-math.inf)
    epochs_without_improvement, stopped, first_epoch = 0, False, 1
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        scaler.load_state_dict(resume.scaler)
        generator.set_state(resume.generator)
        torch.set_rng_state(resume.torch_rng)
        if resume.loss:
            loss_fn.load_state_dict(resume.loss)
        best = resume.best
        epochs_without_improvement, stopped, first_epoch = (resume.epochs_without_improvement, resume.stopped,
                                                              resume.epoch + 1)
    collapse_warned = False
    for epoch in range(first_epoch, options.epochs + 1):
        if stopped:
            break
        start = time.perf_counter()  # the schedule's work (FTDE's code inference) counts as the epoch's
        schedule = before_epoch(epoch) if before_epoch else {}
        if options.lr_milestones:
            factor = lr_factor(epoch, options.lr_milestones, options.lr_gamma)
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base_lr * factor
            schedule = {**schedule, "lr_factor": factor}
        model.train()
        loss_sum, active_sum, steps = 0.0, 0.0, 0

        if sampler is not None:
            sampler.set_epoch(epoch)
            planned = [(torch.as_tensor(batch, dtype=torch.long), None) for batch in sampler]
        elif kind == "items":
            # Every training item once per epoch, in a fresh seeded order, batch_size items a step.
            order = torch.randperm(len(labels_np), generator=generator)
            planned = [(order[i:i + options.batch_size], None) for i in range(0, len(order), options.batch_size)]
        else:
            # Fresh random triplets over the whole train split, consumed batch_size at a time; each touched
            # item is embedded once and the triplets re-indexed into that batch.
            a_all, p_all, n_all = random_triplets(labels_np, triplets_per_epoch, generator)
            batches = [(a_all[i:i + options.batch_size], p_all[i:i + options.batch_size],
                        n_all[i:i + options.batch_size]) for i in range(0, len(a_all), options.batch_size)]
            planned = [torch.unique(torch.cat([torch.as_tensor(t, dtype=torch.long) for t in batch]),
                                    return_inverse=True) for batch in batches]
        if plan_epoch is not None:
            plan_epoch(epoch, [rows for rows, _ in planned])
        for step, (rows, inverse) in enumerate(planned, 1):
            rows = rows.to(device)
            triplets = None
            if inverse is not None:
                triplets = inverse.view(3, -1).to(device).unbind(0)
            with torch.autocast(device.type, enabled=amp):
                embeddings = embed_rows(rows, epoch, step)
            embeddings = embeddings.float()  # mining and losses in float32 even under autocast
            batch_labels = train_y[rows]
            if miner is not None:
                # The loss's margin, read every step: schedules may change it (DTSH's α).
                triplets = miner(embeddings, batch_labels, margin=float(getattr(loss_fn, "margin", 0.0) or 0.0),
                                 generator=generator)
                if not collapse_warned and warn is not None and embedding_collapse(embeddings.detach()):
                    warn(f"epoch {epoch}: embeddings collapsed (all pairwise distances ≈ 0), a known failure of "
                         f"hard mining; try --miner semihard or a lower --lr")
                    collapse_warned = True
            extra = {"rows": rows} if getattr(loss_fn, "uses_rows", False) else {}  # FTDE: the rows' inferred codes
            loss = loss_fn(embeddings, batch_labels, triplets, reduction=reduction_override, **extra)
            _check_finite(loss, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # without amp: loss.backward() and optimizer.step()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += float(loss.detach())
            active_sum += float(loss_fn.last_active_fraction)
            steps += 1
            if on_step is not None:
                on_step(len(rows), float(loss.detach()))

        train_seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            score = float(validate(model))
        row = {"epoch": epoch, "loss": loss_sum / max(steps, 1), "active_fraction": active_sum / max(steps, 1),
               "val_map": score, "seconds": train_seconds,
               "seconds_with_validation": time.perf_counter() - start, **schedule,
               **getattr(loss_fn, "summary", dict)()}
        best.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if score > best.best_score:
            best.best_score, best.best_epoch = score, epoch
            best.best_state = copy.deepcopy(model.state_dict())
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
            stopped = bool(options.early_stopping and epochs_without_improvement >= options.early_stopping)
        if on_checkpoint is not None:
            on_checkpoint(Checkpoint(epoch, model.state_dict(), optimizer.state_dict(), scaler.state_dict(),
                                     generator.get_state(), torch.get_rng_state(), best,
                                     epochs_without_improvement, stopped,
                                     {k: v.detach().clone() for k, v in loss_fn.state_dict().items()}))
    model.load_state_dict(best.best_state)
    return best


def embed(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Model outputs for all rows of ``x`` in eval mode, batched, without gradients."""
    model.eval()
    with torch.no_grad():
        if not len(x):
            return model(x)  # (0, output dim): an empty split keeps its width
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def as_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy array as a tensor on ``device`` (shares memory on CPU)."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)
