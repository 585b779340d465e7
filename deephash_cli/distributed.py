"""Data-parallel fine-tuning under ``torchrun``: one process per device, each embedding a shard of every batch.

``torchrun --nproc_per_node N deephash finetune ...`` starts N processes with ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK`` (and the rendezvous address) in their environment; :func:`from_env`
reads them and :func:`init` joins the process group (NCCL on CUDA, Gloo on CPU). Every rank
builds the same model, sampler and generators from the same seed, so all ranks agree on every
batch; rank ``r`` loads and embeds only its slice of the batch (``np.array_split`` order).

Why the result equals a single process with the same global batch
------------------------------------------------------------------
Batch-level miners and the losses need the whole batch, so :func:`gather_rows` all-gathers
the embeddings: every rank then holds the same ``(B, d)`` matrix (bitwise: all_gather copies),
mines the same triplets with the same generator state and computes the same loss ``L``. Only
the rank's own rows carry gradient, and that gradient is multiplied by the world size ``W``
(``x.detach() + (x - x.detach()) * W``: the value is exactly ``x``). So rank ``r`` computes
``W · Σ_{i∈S_r} ∂L/∂e_i · ∂e_i/∂θ``, and DistributedDataParallel's all-reduce *averages* these
over ranks: ``(1/W) Σ_r W Σ_{i∈S_r} ... = Σ_i ∂L/∂e_i · ∂e_i/∂θ``, the single-process gradient.
This needs each embedding ``e_i`` to depend on its own image only, which holds when BatchNorm
layers use fixed statistics (``--freeze-bn``, or BN-free heads); with BatchNorm in training
mode, CUDA runs convert it to SyncBatchNorm, while on CPU (Gloo) PyTorch has no SyncBatchNorm
and each rank normalises with its shard's statistics (warned; results then differ slightly).
Validation is sharded the same way and gathered, so model selection is identical on all ranks.
Only rank 0 writes artifacts.

``extract`` under torchrun needs no process group: it reads the layout with :func:`from_env` (each rank
extracts shard RANK/WORLD_SIZE, see :mod:`deephash_cli.shards`) and its GPU with :func:`select_device`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from deephash_cli.errors import DeephashError


@dataclass
class DistContext:
    """Where this process sits in the job: world size, global rank, rank on its node, device."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        """True when running as one of several torchrun processes."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints progress and writes artifacts."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DeephashError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def from_env() -> DistContext:
    """The job layout torchrun put in the environment (a plain run: world size 1, rank 0)."""
    world, rank, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise DeephashError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistContext(world, rank, local)


def check_batch(context: DistContext, batch: int, what: str) -> None:
    """Every rank gets an equal shard: the global batch must be a multiple of the world size."""
    if batch % context.world_size:
        raise DeephashError(f"{what} = {batch} is not divisible by the world size {context.world_size}; each "
                            f"process embeds an equal shard of every batch (choose a batch that is a multiple "
                            f"of --nproc_per_node × --nnodes)")


def select_device(context: DistContext, device: torch.device) -> torch.device:
    """This process's device: under torchrun on CUDA, GPU ``LOCAL_RANK`` (modulo the GPUs present), made the
    current CUDA device; otherwise ``device`` unchanged. Needs no process group (``extract`` uses it alone)."""
    if context.enabled and device.type == "cuda":
        device = torch.device("cuda", context.local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    return device


def init(context: DistContext, device: torch.device) -> DistContext:
    """Join the process group (NCCL for CUDA, Gloo for CPU) and pick this rank's device."""
    if not context.enabled:
        return DistContext(1, 0, 0, device)
    import torch.distributed as dist

    device = select_device(context, device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() != context.world_size:
        raise DeephashError(f"process group has {dist.get_world_size()} ranks but WORLD_SIZE is "
                            f"{context.world_size}")
    return DistContext(context.world_size, context.rank, context.local_rank, device)


def shutdown(context: DistContext) -> None:
    """Leave the process group (no-op for single-process runs)."""
    if context.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def shard(n: int, context: DistContext) -> slice:
    """This rank's slice of ``n`` batch positions (``np.array_split`` order: rank 0 first)."""
    bounds = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(n), context.world_size)])
    return slice(int(bounds[context.rank]), int(bounds[context.rank + 1]))


def gather_rows(local: torch.Tensor, n: int, context: DistContext) -> torch.Tensor:
    """All ranks' rows ``(n, d)`` in batch order; only this rank's rows keep their gradient, times the
    world size, so DDP's gradient average equals the single-process gradient (see the module doc)."""
    if not context.enabled:
        return local
    import torch.distributed as dist

    sizes = [len(part) for part in np.array_split(np.arange(n), context.world_size)]
    width = max(sizes)
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[:len(local)] = local.detach()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    parts = [part[:size] for part, size in zip(parts, sizes)]
    if local.requires_grad:
        parts[context.rank] = local.detach() + (local - local.detach()) * context.world_size
    return torch.cat(parts)
