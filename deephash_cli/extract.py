"""Feature extraction: deterministic preprocessing, batched inference, chunks out.

``extract_chunks`` yields ``(features (b, d) float32, labels (b,) int64, index (b,) int64)`` per
batch so the caller can write them to disk as they come and memory stays flat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from deephash_cli.datasets import CorruptImageError, ImageSource
from deephash_cli.errors import DeephashError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                   train: bool = False) -> Callable:
    """Test-time: resize the short side to ``image_size``, centre-crop, scale to [0,1], normalise.

    ``train=True`` (fine-tuning) adds random resized crop (scale 0.5–1) and horizontal flip;
    evaluation never uses random augmentation.
    """
    from torchvision import transforms as T

    if any(s <= 0 for s in std):
        raise DeephashError(f"--std values must be positive, got {tuple(std)}")
    if image_size <= 0:
        raise DeephashError(f"--image-size must be positive, got {image_size}")
    if train:
        geometry = [T.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True), T.RandomHorizontalFlip()]
    else:
        geometry = [T.Resize(image_size, antialias=True), T.CenterCrop(image_size)]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(mean, std)])


class TransformedImages(Dataset):
    """An ImageSource as a torch Dataset: (image tensor, label, index, ok, description, reason).

    A corrupt image comes back as a zero tensor with ok=False; the caller decides whether that
    is fatal (the default) or skipped. Raising inside a DataLoader worker would lose the path.
    """

    def __init__(self, source: ImageSource, transform: Callable, image_size: int) -> None:
        self.source, self.transform, self.image_size = source, transform, image_size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        label, index = int(self.source.labels[i]), int(self.source.index[i])
        try:
            return self.transform(self.source.load(i)), label, index, True, "", ""
        except CorruptImageError as err:
            return torch.zeros(3, self.image_size, self.image_size), label, index, False, err.path, err.reason


def image_batches(source: ImageSource, transform: Callable, image_size: int, *,
                  batch_size: int) -> Iterator[torch.Tensor]:
    """``source``'s images, preprocessed, in batches ``(b, 3, s, s)`` (undecodable ones left out)."""
    dataset = TransformedImages(source, transform, image_size)
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = [item[0] for item in items if item[3]]
        if images:
            yield torch.stack(images)


@dataclass
class ExtractStats:
    """What happened during an extraction run."""

    images: int = 0
    skipped: list[str] | None = None
    seconds: float = 0.0


def extract_chunks(model: nn.Module, source: ImageSource, transform: Callable, image_size: int, *,
                   batch_size: int = 128, device: torch.device = torch.device("cpu"), workers: int = 0,
                   skip_corrupt: bool = False, stats: ExtractStats | None = None,
                   on_batch: Callable[[int], None] | None = None
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Run ``model`` over ``source`` in order; yield float32 feature chunks with labels and indices.

    Corrupt images raise CorruptImageError naming the file, or with ``skip_corrupt`` are left
    out and listed in ``stats.skipped``. ``on_batch(n)`` is called after each batch (progress).
    """
    if batch_size <= 0:
        raise DeephashError(f"--batch-size must be positive, got {batch_size}")
    if workers < 0:
        raise DeephashError(f"--workers must be ≥ 0, got {workers}")
    stats = stats if stats is not None else ExtractStats()
    stats.skipped = stats.skipped if stats.skipped is not None else []
    loader = DataLoader(TransformedImages(source, transform, image_size), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    model = model.to(device).eval()
    with torch.inference_mode():
        for images, labels, index, ok, paths, reasons in loader:
            if not bool(ok.all()):
                bad = [p for p, good in zip(paths, ok.tolist()) if not good]
                if not skip_corrupt:
                    reason = next(r for r, good in zip(reasons, ok.tolist()) if not good)
                    raise CorruptImageError(bad[0], f"{reason}; pass --skip-corrupt to leave such files out")
                stats.skipped.extend(bad)
                images, labels, index = images[ok], labels[ok], index[ok]
            if len(labels):
                features = model(images.to(device, non_blocking=True)).float().flatten(1).cpu().numpy()
                if not np.isfinite(features).all():
                    raise DeephashError("the backbone produced NaN or infinite features; check --weights, "
                                        "--mean/--std and the images")
                stats.images += len(labels)
                yield features, labels.numpy().astype(np.int64), index.numpy().astype(np.int64)
            if on_batch is not None:
                on_batch(len(ok))
