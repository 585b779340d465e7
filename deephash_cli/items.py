"""Item identity: the name every artifact row carries, and opening that item's image again.

Names are stable strings a person can follow back to a picture (format_version 2, ``/<split>/paths``):

* ``imagefolder`` and the published benchmarks (``cub200``, ``dogs``, ``sop``, ``inshop``): the file's path
  relative to ``--data-dir`` (``train/cat/0001.jpg``, ``images/001.Black_footed_Albatross/...jpg``, POSIX
  separators);
* ``cifar10``: ``cifar10/<official split>/<position in that split's batches>`` (``cifar10/train/123``; also
  under ``--split classes``, where an item of the test batch can sit in the train split);
* ``digits``: ``digits/<position in scikit-learn's order>``.

``ItemImages`` opens items by name for thumbnails (``search --grid``/``--html``), given the dataset and the
data folder the names are relative to.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from deephash_cli.errors import DeephashError
from deephash_cli.published_datasets import READERS

#: Datasets whose items are image files named by their path relative to the data folder.
FILE_DATASETS = ("imagefolder", *READERS)


def item_name(dataset: str, split: str, index: int, description: str, root: str | os.PathLike[str] | None) -> str:
    """The stable name of one item (see the module docstring); ``description`` is ``ImageSource.describe(i)``."""
    if dataset in FILE_DATASETS:
        if root is None:
            return Path(description).as_posix()
        return Path(os.path.relpath(description, root)).as_posix()
    if dataset == "cifar10":
        origin, _, position = description.removeprefix("cifar10 ").partition(" #")  # "cifar10 test #12"
        if origin in ("train", "test") and position.isdigit():
            return f"cifar10/{origin}/{position}"
        return f"cifar10/{split}/{int(index)}"
    return f"{dataset}/{int(index)}"


def names_by_index(dataset: str, split: str, source, root: str | os.PathLike[str] | None) -> dict[int, str]:
    """{dataset index: name} for every item of an ``ImageSource`` (extract looks chunks up in it)."""
    return {int(source.index[i]): item_name(dataset, split, int(source.index[i]), source.describe(i), root)
            for i in range(len(source))}


class ItemImages:
    """Open indexed items' images by (dataset, data root, name); built-in datasets are loaded once and cached."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str | None], dict[tuple[str, int], tuple[object, int]]] = {}

    def open(self, dataset: str | None, root: str | None, name: str) -> Image.Image:
        """The RGB image of item ``name``; a DeephashError naming the file (or dataset) when it cannot be had."""
        if dataset in FILE_DATASETS or (dataset is None and root is not None):
            path = Path(root) / name if root is not None and not os.path.isabs(name) else Path(name)
            from deephash_cli.datasets import _open_image

            if not path.is_file():
                raise DeephashError(f"{path}: no such image file")
            return _open_image(path)
        if dataset in ("cifar10", "digits"):
            parts = name.split("/")
            try:
                index = int(parts[-1])
            except ValueError:
                raise DeephashError(f"item name '{name}' is not <dataset>/[<split>/]<index>") from None
            split = parts[1] if len(parts) == 3 else None
            table = self._table(dataset, root)
            for key in ((split, index), (None, index)):
                if key in table:
                    source, row = table[key]
                    return source.load(row)  # type: ignore[attr-defined]
            raise DeephashError(f"item '{name}' is not in {dataset} at {root}")
        raise DeephashError(f"cannot open items of dataset '{dataset}' (no image files recorded)")

    def _table(self, dataset: str, root: str | None) -> dict[tuple[str | None, int], tuple[object, int]]:
        key = (dataset, root)
        if key not in self._loaded:
            from deephash_cli.datasets import load_dataset

            options = {"download": False} if dataset == "cifar10" else {}
            data = load_dataset(dataset, root, **options)
            table: dict[tuple[str | None, int], tuple[object, int]] = {}
            for split, source in data.sources().items():
                for row, index in enumerate(np.asarray(source.index).tolist()):
                    table[(split, int(index))] = (source, row)
                    table.setdefault((None, int(index)), (source, row))
            self._loaded[key] = table
        return self._loaded[key]
