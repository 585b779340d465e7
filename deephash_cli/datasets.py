"""Image datasets as (train, test) pairs of indexable sources: digits, CIFAR-10, image folders, and the published
benchmarks CUB-200-2011, Stanford Dogs, Stanford Online Products and In-shop Clothes (their lists are read by
:mod:`deephash_cli.published_datasets`).

Every source yields ``(PIL.Image RGB, label int, index int)`` where ``index`` is the item's
position in the source dataset (stored in artifacts so every row can be traced back).

Every dataset comes with its official split, or the class-disjoint one of the metric-learning literature
(``load_dataset(..., split="classes")``, :func:`class_disjoint`).
"""

from __future__ import annotations

import io
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from deephash_cli.errors import DeephashError
from deephash_cli.published_datasets import READERS as PUBLISHED_READERS, Listing
from deephash_cli.registry import Registry

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS  # PIL's decompression-bomb guard: 89,478,485 (≈ 9459²)


def set_max_image_pixels(limit: int | None) -> None:
    """Refuse images with more than ``limit`` pixels (None: no limit) when image folders are decoded.

    This is PIL's decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``, default 89,478,485),
    made exact: PIL only warns between the limit and twice the limit, deephash refuses every image
    over it as undecodable (a CorruptImageError naming the file; skipped with ``--skip-corrupt``).
    The setting is process-wide and inherited by DataLoader workers (forked after it is made).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise DeephashError(f"--max-image-pixels must be a positive whole number, got {limit}")
    Image.MAX_IMAGE_PIXELS = limit


def max_image_pixels() -> int | None:
    """The current limit of :func:`set_max_image_pixels` (None: no limit)."""
    return Image.MAX_IMAGE_PIXELS


class CorruptImageError(DeephashError):
    """An image file that does not decode; carries its path and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: cannot decode image ({reason})")
        self.path = path
        self.reason = reason


@dataclass
class ImageSource:
    """An indexable list of images: ``load(i) -> PIL RGB image``; labels and dataset indices."""

    labels: np.ndarray  # (n,) int64
    index: np.ndarray  # (n,) int64, position in the source dataset
    load: Callable[[int], Image.Image]
    describe: Callable[[int], str]  # a human name for item i (a path, or "cifar10 train #i")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, rows: np.ndarray) -> "ImageSource":
        """The items at ``rows`` (positions in this source), keeping their dataset indices."""
        rows = np.asarray(rows, dtype=np.int64)
        load, describe = self.load, self.describe
        return ImageSource(self.labels[rows], self.index[rows], lambda i: load(int(rows[i])),
                           lambda i: describe(int(rows[i])))


@dataclass
class DatasetSplits:
    """The train and test sources of a dataset and how the split was made.

    ``test`` is None for a dataset whose evaluation splits have other names: In-shop's ``query`` and
    ``gallery`` are in ``extra``. :meth:`sources` lists every split in order.
    """

    name: str
    class_names: list[str]
    train: ImageSource
    test: ImageSource | None
    split_info: dict  # e.g. {"test_split": "predefined"} or {"test_split": "stratified", "seed": 0, ...}
    extra: dict[str, ImageSource] = field(default_factory=dict)

    def sources(self) -> dict[str, ImageSource]:
        """{split name: source}: train, test (when there is one), then the extra splits."""
        return {"train": self.train, **({"test": self.test} if self.test is not None else {}), **self.extra}


DATASETS: Registry[Callable[..., DatasetSplits]] = Registry("dataset")

#: ``--split``: the dataset's own split, or the class-disjoint one (see :func:`class_disjoint`).
SPLIT_MODES = ("official", "classes")


# --------------------------------------------------------------------------- splitting


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of positions ``0..n-1`` into (kept, held_out), ``fraction`` held out per class.

    Every class keeps at least one item on each side; a class too small for that raises.
    """
    if not 0.0 < fraction < 1.0:
        raise DeephashError(f"split fraction must lie strictly between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        n_held = int(round(fraction * len(members)))
        if n_held == 0 or n_held == len(members):
            raise DeephashError(f"class {cls} has {len(members)} items: a fraction of {fraction} leaves one side "
                                f"of the split without any item of it")
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def limit_per_class(source: ImageSource, limit: int | None) -> ImageSource:
    """The first ``limit`` items of each class (in dataset order), for quick subsets."""
    if limit is None:
        return source
    if limit <= 0:
        raise DeephashError(f"--limit-per-class must be positive, got {limit}")
    rows = np.concatenate([np.flatnonzero(source.labels == c)[:limit] for c in np.unique(source.labels)])
    return source.subset(np.sort(rows))


# --------------------------------------------------------------------------- digits


@DATASETS.register("digits")
def load_digits(data_dir: str | None = None, *, test_fraction: float = 0.2, seed: int = 0) -> DatasetSplits:
    """scikit-learn's handwritten digits: 1,797 grey 8×8 images, 10 classes; ships with scikit-learn.

    There is no predefined test split, so a stratified seeded one is made (``test_fraction``).
    Pixel values 0..16 are scaled to 0..255 and the images replicated to RGB.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # (n, 8, 8)
    labels = bunch.target.astype(np.int64)
    train_rows, test_rows = stratified_split(labels, test_fraction, seed)
    full = ImageSource(labels, np.arange(len(labels), dtype=np.int64),
                       lambda i: Image.fromarray(images[i], mode="L").convert("RGB"),
                       lambda i: f"digits #{i}")
    return DatasetSplits("digits", [str(d) for d in range(10)], full.subset(train_rows), full.subset(test_rows),
                         {"test_split": "stratified", "test_fraction": test_fraction, "seed": seed})


# --------------------------------------------------------------------------- CIFAR-10


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python batches without running arbitrary code.

    The batches are dicts of bytes/str/lists/ints and one numpy array; only the globals numpy
    needs to rebuild an array are allowed, anything else is refused. So a doctored batch file
    cannot execute code the way plain ``pickle.load`` (used by torchvision's reader) would.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _unpickle_dict(path: Path, what: str) -> dict:
    """The dict pickled in ``path`` (restricted unpickler, bytes keys decoded); anything else is a DeephashError."""
    try:
        with open(path, "rb") as handle:
            entry = _ArrayOnlyUnpickler(io.BufferedReader(handle), encoding="latin1").load()
    except OSError as err:
        raise DeephashError(f"{path}: cannot read {what} ({err.strerror or err})") from None
    except Exception as err:  # noqa: BLE001 - a doctored pickle can raise anything; all mean "not a CIFAR file"
        raise DeephashError(f"{path}: not a CIFAR-10 {what} ({type(err).__name__}: {err})") from None
    if not isinstance(entry, dict):
        raise DeephashError(f"{path}: not a CIFAR-10 {what} (expected a dict, found {type(entry).__name__})")
    try:
        return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}
    except Exception as err:  # noqa: BLE001 - unhashable or odd keys
        raise DeephashError(f"{path}: not a CIFAR-10 {what} ({type(err).__name__}: {err})") from None


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images (n, 32, 32, 3) uint8 HWC and labels (n,) int64."""
    entry = _unpickle_dict(path, "python batch")
    if "data" not in entry or ("labels" not in entry and "fine_labels" not in entry):
        raise DeephashError(f"{path}: CIFAR batch without 'data' and 'labels'")
    try:
        data = np.asarray(entry["data"])
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")))
    except Exception as err:  # noqa: BLE001 - ragged lists and the like
        raise DeephashError(f"{path}: CIFAR batch 'data'/'labels' are not arrays ({type(err).__name__}: {err})") \
            from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or data.shape[0] != labels.shape[0]:
        raise DeephashError(f"{path}: expected data (n, 3072) and n labels, found {data.shape} and {labels.shape}")
    if data.size and (data.dtype.kind not in "iu" or data.min() < 0 or data.max() > 255):
        raise DeephashError(f"{path}: expected pixel values 0..255 in 'data', found {data.dtype}"
                            + (f" {data.min()}..{data.max()}" if data.dtype.kind in "iuf" else ""))
    if labels.size and labels.dtype.kind not in "iu":
        raise DeephashError(f"{path}: expected integer labels, found {labels.dtype}")
    images = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int64)


def read_cifar_meta(path: Path) -> list[str]:
    """The class names of a CIFAR-10 ``batches.meta`` (its ``label_names``: a non-empty list of strings)."""
    meta = _unpickle_dict(path, "batches.meta")
    names = meta.get("label_names")
    if names is None:
        raise DeephashError(f"{path}: expected 'label_names' in CIFAR-10 batches.meta, found keys "
                            f"{sorted(map(str, meta))[:10]}")
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise DeephashError(f"{path}: expected 'label_names' to be a non-empty list of strings, found "
                            f"{type(names).__name__}" + (f" of {sorted({type(n).__name__ for n in names})}"
                                                         if isinstance(names, (list, tuple)) and names else ""))
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = ["test_batch"]


def _find_cifar_folder(data_dir: Path) -> Path | None:
    for candidate in (data_dir / CIFAR10_FOLDER, data_dir):
        if all((candidate / name).exists() for name in CIFAR10_TRAIN + CIFAR10_TEST + ["batches.meta"]):
            return candidate
    return None


@DATASETS.register("cifar10")
def load_cifar10(data_dir: str | None = None, *, download: bool = True, **_: object) -> DatasetSplits:
    """CIFAR-10 (python version): 50,000 train / 10,000 test 32×32 colour images, 10 classes.

    Looks for ``cifar-10-batches-py`` in ``data_dir`` (default ``./data``); when absent and
    ``download`` is set, torchvision downloads and checksums it there. The batches are then read
    with a restricted unpickler (numpy arrays only).
    """
    root = Path(data_dir or "data")
    folder = _find_cifar_folder(root)
    if folder is None and download:
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(root), train=True, download=True)
        except Exception as err:  # noqa: BLE001 - any network/IO failure means "not available"
            raise DeephashError(f"CIFAR-10 not found in {root} and the download failed ({type(err).__name__}: "
                                f"{err}); pass --data-dir with a {CIFAR10_FOLDER} folder, or use --dataset "
                                f"imagefolder for a folder of JPEGs") from None
        folder = _find_cifar_folder(root)
    if folder is None:
        raise DeephashError(f"CIFAR-10 not found in {root}: expected {CIFAR10_FOLDER}/ with "
                            f"{', '.join(CIFAR10_TRAIN + CIFAR10_TEST)} and batches.meta")
    class_names = read_cifar_meta(folder / "batches.meta")

    def source(names: Sequence[str], split: str) -> ImageSource:
        parts = [read_cifar_batch(folder / name) for name in names]
        for name, (_, part_labels) in zip(names, parts):
            if len(part_labels) and not 0 <= part_labels.min() <= part_labels.max() < len(class_names):
                raise DeephashError(f"{folder / name}: labels must lie in 0..{len(class_names) - 1} (the "
                                    f"{len(class_names)} label_names of batches.meta), found "
                                    f"{part_labels.min()}..{part_labels.max()}")
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return ImageSource(labels, np.arange(len(labels), dtype=np.int64), lambda i: Image.fromarray(images[i]),
                           lambda i: f"cifar10 {split} #{i}")

    return DatasetSplits("cifar10", class_names, source(CIFAR10_TRAIN, "train"), source(CIFAR10_TEST, "test"),
                         {"test_split": "predefined"})


# --------------------------------------------------------------------------- image folders


def _list_images(folder: Path) -> dict[str, list[Path]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    return {c: sorted(p for p in (folder / c).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            for c in classes}


def _open_image(path: Path) -> Image.Image:
    """``path`` decoded as RGB; any decoding failure, and an image over the pixel limit, is a CorruptImageError."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between the limit and twice the limit: the limit is the limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        limit = Image.MAX_IMAGE_PIXELS
        raise CorruptImageError(str(path), f"{_bomb_size(err)} pixels exceed the limit of {limit:,} "
                                           f"(decompression-bomb guard; --max-image-pixels raises it)") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise CorruptImageError(str(path), str(err) or type(err).__name__) from None
    except Exception as err:  # noqa: BLE001 - PIL's plugins raise anything (SyntaxError, struct.error, ...) on bad files
        raise CorruptImageError(str(path), f"{type(err).__name__}: {err}") from None


def _bomb_size(err: Exception) -> str:
    """The pixel count in PIL's decompression-bomb message ('Image size (N pixels) exceeds ...'), formatted."""
    words = str(err).replace("(", " ").split()
    count = next((words[i - 1] for i, word in enumerate(words) if word == "pixels)" and i > 0), None)
    return f"{int(count):,}" if count is not None and count.isdigit() else "its"


@DATASETS.register("imagefolder")
def load_imagefolder(data_dir: str | None = None, *, test_fraction: float = 0.2, seed: int = 0,
                     **_: object) -> DatasetSplits:
    """Images in ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (CUB-200, Stanford Dogs, CIFAR JPEGs).

    Without ``ROOT/test``, the classes are read from ``ROOT/train/<class>`` or else ``ROOT/<class>``
    and a stratified, seeded split (``test_fraction``, ``seed``) is made and recorded. Classes are
    sorted by name; files by path. The index of an item is its position in that sorted listing
    (train files first, then test files).

    Empty class folders: a class without images anywhere (an empty ``train/<class>`` and an empty or
    absent ``test/<class>``, or an empty ``ROOT/<class>``) is left out with a warning naming its
    folders, and recorded in the split info as ``left_out_empty``. An empty ``test/<class>`` for a
    class with training images is fine (the class just has no test items). An empty
    ``train/<class>`` whose ``test/<class>`` has images is refused: such a class cannot be learnt
    or retrieved from the training split.
    """
    if data_dir is None:
        raise DeephashError("--dataset imagefolder needs --data-dir ROOT")
    root = Path(data_dir)
    if not root.is_dir():
        raise DeephashError(f"{root}: no such folder")
    train_dir = root / "train" if (root / "train").is_dir() else root
    train_files = _list_images(train_dir)
    test_files = _list_images(root / "test") if (root / "test").is_dir() else None
    if not any(train_files.values()) and not any((test_files or {}).values()):
        raise DeephashError(f"{train_dir}: no class folders with images ({', '.join(IMAGE_EXTENSIONS)})")
    empty = sorted(c for c in set(train_files) | set(test_files or {})
                   if not train_files.get(c) and not (test_files or {}).get(c))
    if empty:
        from deephash_cli.ui import warn

        folders = [str(folder / c) for c in empty for folder, files in ((train_dir, train_files),
                                                                         (root / "test", test_files or {}))
                   if c in files]
        warn(f"left out {len(empty)} class folder{'s' if len(empty) > 1 else ''} without images: "
             f"{', '.join(folders[:10])}{', …' if len(folders) > 10 else ''}")
        train_files = {c: files for c, files in train_files.items() if c not in empty}
        test_files = None if test_files is None else {c: f for c, f in test_files.items() if c not in empty}
    if test_files is not None and sorted(test_files) != sorted(train_files):
        raise DeephashError(f"{root}: train and test hold different class folders "
                            f"({sorted(set(train_files) ^ set(test_files))[:5]} differ)")
    untrained = [c for c in sorted(train_files) if not train_files[c]]
    if untrained:
        raise DeephashError(f"{train_dir / untrained[0]}: no images ({', '.join(IMAGE_EXTENSIONS)}), but "
                            f"{root / 'test' / untrained[0]} has {len((test_files or {})[untrained[0]])}; every class "
                            f"needs training images (add them, or remove both folders)"
                            + (f" ({len(untrained)} such classes: {', '.join(untrained[:5])})"
                               if len(untrained) > 1 else ""))
    class_names = sorted(train_files)
    left_out = {"left_out_empty": empty} if empty else {}

    def flatten(files: dict[str, list[Path]]) -> tuple[list[Path], np.ndarray]:
        paths = [p for c in class_names for p in files[c]]
        labels = np.array([i for i, c in enumerate(class_names) for _ in files[c]], dtype=np.int64)
        return paths, labels

    train_paths, train_labels = flatten(train_files)
    if test_files is None:
        everything = ImageSource(train_labels, np.arange(len(train_paths), dtype=np.int64),
                                 lambda i: _open_image(train_paths[i]), lambda i: str(train_paths[i]))
        train_rows, test_rows = stratified_split(train_labels, test_fraction, seed)
        return DatasetSplits("imagefolder", class_names, everything.subset(train_rows), everything.subset(test_rows),
                             {"test_split": "stratified", "test_fraction": test_fraction, "seed": seed,
                              "root": str(root), **left_out})
    test_paths, test_labels = flatten(test_files)
    offset = len(train_paths)
    train = ImageSource(train_labels, np.arange(offset, dtype=np.int64), lambda i: _open_image(train_paths[i]),
                        lambda i: str(train_paths[i]))
    test = ImageSource(test_labels, np.arange(offset, offset + len(test_paths), dtype=np.int64),
                       lambda i: _open_image(test_paths[i]), lambda i: str(test_paths[i]))
    return DatasetSplits("imagefolder", class_names, train, test,
                         {"test_split": "predefined", "root": str(root), **left_out})


# --------------------------------------------------------------------------- published benchmarks


def _from_listing(name: str, listing: Listing) -> DatasetSplits:
    """A :class:`Listing` as image sources (files opened lazily, as image folders are)."""
    sources = {}
    for split, (relative, labels, index) in listing.splits.items():
        paths = [listing.root / p for p in relative]
        sources[split] = ImageSource(labels, index, lambda i, paths=paths: _open_image(paths[i]),
                                     lambda i, paths=paths: str(paths[i]))
    train = sources.pop("train")
    test = sources.pop("test", None)
    return DatasetSplits(name, listing.class_names, train, test,
                         {"test_split": "predefined", "root": str(listing.root), **listing.info}, sources)


def _register_published(name: str) -> None:
    reader = PUBLISHED_READERS[name]

    def load(data_dir: str | None = None, **_: object) -> DatasetSplits:
        if data_dir is None:
            raise DeephashError(f"--dataset {name} needs --data-dir (the folder of its list files); nothing is "
                                f"downloaded")
        root = Path(data_dir)
        if not root.is_dir():
            raise DeephashError(f"{root}: no such folder")
        return _from_listing(name, reader(root))

    load.__doc__ = reader.__doc__
    DATASETS.register(name)(load)


for _name in PUBLISHED_READERS:
    _register_published(_name)


# --------------------------------------------------------------------------- class-disjoint split


def pooled_indices(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The dataset indices of ``parts`` pooled one after the other, kept unique: a part whose indices overlap
    those before it (CIFAR-10 numbers its train and test batches from 0 each) is shifted past them (CIFAR-10's
    test item ``i`` becomes ``50000 + i``, as image folders number train files first, then test files)."""
    out: list[np.ndarray] = []
    seen_max = -1
    for part in parts:
        part = np.asarray(part, dtype=np.int64)
        shift = 0
        if out and len(part) and np.isin(part, np.concatenate(out)).any():
            shift = seen_max + 1 - int(part.min())
        out.append(part + shift)
        if len(part):
            seen_max = max(seen_max, int(out[-1].max()))
    return out


def class_cut(n_classes: int) -> int:
    """Classes ``0..cut-1`` train, ``cut..n_classes-1`` test in the class-disjoint split: ``cut = C // 2``."""
    if n_classes < 2:
        raise DeephashError(f"--split classes needs at least 2 classes, found {n_classes}")
    return n_classes // 2


def concat_sources(parts: Sequence[ImageSource]) -> ImageSource:
    """One source holding ``parts`` one after the other, dataset indices kept unique (:func:`pooled_indices`)."""
    index = pooled_indices([part.index for part in parts])
    labels = [np.asarray(part.labels, dtype=np.int64) for part in parts]
    loads = [part.load for part in parts]
    describes = [part.describe for part in parts]
    offsets = np.cumsum([0] + [len(part) for part in parts])[:-1].tolist()
    bounds = np.array(offsets[1:], dtype=np.int64)

    def locate(i: int) -> tuple[int, int]:
        k = int(np.searchsorted(bounds, i, side="right"))
        return k, i - offsets[k]

    def load(i: int) -> Image.Image:
        k, row = locate(i)
        return loads[k](row)

    def describe(i: int) -> str:
        k, row = locate(i)
        return describes[k](row)

    empty = np.zeros(0, dtype=np.int64)
    return ImageSource(np.concatenate(labels) if labels else empty, np.concatenate(index) if index else empty,
                       load, describe)


def class_disjoint(data: DatasetSplits) -> DatasetSplits:
    """The class-disjoint split of the metric-learning literature: train on the first half of the classes,
    retrieve among the images of the other half.

    When the official split already has no class on both sides (Stanford Online Products, In-shop) it is that
    split, unchanged. Otherwise every image of the dataset (its train and test parts pooled, in that order) of
    the first ``C // 2`` classes (class ids 0..C//2−1, ``C`` = number of classes) goes to ``train`` and the rest
    to ``test``: CUB-200-2011 classes 1–100 / 101–200, Stanford Dogs 60 / 60, CIFAR-10 0–4 / 5–9.
    """
    parts = data.sources()
    train_classes = set(np.unique(data.train.labels).tolist())
    held_classes = set().union(*(np.unique(s.labels).tolist() for name, s in parts.items() if name != "train"))
    if not train_classes & held_classes:
        return DatasetSplits(data.name, data.class_names, data.train, data.test,
                             {**data.split_info, "class_disjoint": "the official split"}, dict(data.extra))
    n_classes = len(data.class_names)
    cut = class_cut(n_classes)
    pooled = concat_sources(list(parts.values()))
    train_rows = np.flatnonzero(pooled.labels < cut)
    test_rows = np.flatnonzero(pooled.labels >= cut)
    info = {**{k: v for k, v in data.split_info.items() if k != "test_split"}, "test_split": "classes",
            "pooled_from": data.split_info.get("test_split"),
            "train_classes": f"0..{cut - 1}", "test_classes": f"{cut}..{n_classes - 1}"}
    return DatasetSplits(data.name, data.class_names, pooled.subset(train_rows), pooled.subset(test_rows), info)


def load_dataset(name: str, data_dir: str | None, *, split: str = "official", **options: object) -> DatasetSplits:
    """The dataset registered as ``name`` (digits, cifar10, imagefolder, cub200, dogs, sop, inshop) with its
    official split or (``split="classes"``) the class-disjoint one of :func:`class_disjoint`."""
    if split not in SPLIT_MODES:
        raise DeephashError(f"unknown --split '{split}'; valid names: {', '.join(SPLIT_MODES)}")
    data = DATASETS.get(name)(data_dir, **options)
    return class_disjoint(data) if split == "classes" else data
