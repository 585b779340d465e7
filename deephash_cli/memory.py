"""Will a training step fit in memory?  A pre-flight check before fine-tuning.

Backpropagation keeps every layer's activations of the whole batch until the backward pass, so a
fine-tuning step needs memory in proportion to images per step × image side²: MobileNetV2 at 224 px
with a 10×25 P×K batch needed more than 17 GB and was killed by the kernel's OOM killer, after
minutes of setup and without a word from us (docs/hashing.md, issue 12).  :func:`check_step_fits`
measures, before training, what autograd saves for backward per image (a forward pass of 2 and of
4 blank images through a copy of the network: the model, its BatchNorm statistics and the random
number generators are untouched) and refuses a step that would exceed the memory available now.

The measure counts the tensors autograd keeps (distinct storages, parameters excluded), which is
most of a step's peak; gradients, optimizer state and the backward pass's transient buffers come
on top, so the check only catches steps that cannot fit, not every one that will not.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from deephash_cli.errors import DeephashError

__all__ = ["saved_bytes", "bytes_per_image", "available_bytes", "check_step_fits"]

_MEMINFO = Path("/proc/meminfo")


def saved_bytes(module: nn.Module, images: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward in ``module(images)`` (parameters
    excluded: they are held anyway)."""
    held = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in held:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(images)
    return sum(saved.values())


def bytes_per_image(module: nn.Module, image_size: int, device: torch.device, amp: bool = False) -> tuple[int, int]:
    """(bytes per image, fixed bytes) that autograd saves in a training forward pass at ``image_size``:
    the slope and intercept between blank batches of 2 and 4 images (BatchNorm in training mode needs
    more than one), on a copy of ``module`` in training mode (the module and the random number
    generators are left as they were)."""
    probe = copy.deepcopy(module).train()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
        two, four = (saved_bytes(probe, torch.zeros(n, 3, image_size, image_size, device=device)) for n in (2, 4))
    per_image = max(0, (four - two) // 2)
    return per_image, max(0, two - 2 * per_image)


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can use now: free device memory on CUDA, MemAvailable of /proc/meminfo
    on Linux CPUs; None where neither is known (the check is then skipped)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_step_fits(module: nn.Module, images_per_step: int, image_size: int, device: torch.device, *,
                    amp: bool = False, hint: str) -> None:
    """A one-line DeephashError when ``images_per_step`` images at ``image_size`` px would make autograd
    keep more than the memory available; ``hint`` names the options that shrink the step."""
    available = available_bytes(device)
    if available is None:
        return
    per_image, fixed = bytes_per_image(module, image_size, device, amp)
    needed = fixed + per_image * images_per_step
    if needed > available:
        raise DeephashError(
            f"a training step of {images_per_step} images at {image_size} px keeps about {needed / 2**30:.1f} GiB "
            f"for backward ({per_image / 2**20:.1f} MiB per image, measured), more than the "
            f"{available / 2**30:.1f} GiB of {'device ' if device.type == 'cuda' else ''}memory available; "
            f"{hint}, or pass --no-memory-check to try anyway")
