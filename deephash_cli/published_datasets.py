"""The file lists of published retrieval benchmarks, read as published: CUB-200-2011, Stanford Dogs, Stanford
Online Products and In-shop Clothes.

Each reader takes the dataset's folder (``--data-dir``), reads the benchmark's own list files, checks them
against each other and against the image files, and returns a :class:`Listing`: per official split the image
paths (relative to the folder, POSIX separators) and 0-based labels, and the class names. Nothing is
downloaded. A wrong layout is a DeephashError naming the file that is missing or the line that is wrong.

Layouts (``ROOT`` is ``--data-dir``):

* ``cub200`` (CUB-200-2011, ``CUB_200_2011.tgz``): ``ROOT/images.txt`` (``<image id> <path>``),
  ``ROOT/image_class_labels.txt`` (``<image id> <class id>``), ``ROOT/train_test_split.txt``
  (``<image id> <1 train | 0 test>``), ``ROOT/classes.txt`` (``<class id> <name>``), images under
  ``ROOT/images/``. Ids start at 1. An image's folder must be its class's name (``001.Black_footed_Albatross``).
* ``dogs`` (Stanford Dogs, ``images.tar`` + ``lists.tar``): ``train_list.mat`` and ``test_list.mat`` (MATLAB
  files with ``file_list``, ``labels`` 1..120) in ``ROOT/lists/`` or ``ROOT/``; images under ``ROOT/Images/``
  (``<wnid>-<breed>/<file>.jpg``). A class is named by its folder; every label must keep to one folder.
* ``sop`` (Stanford Online Products): ``ROOT/Ebay_train.txt`` and ``ROOT/Ebay_test.txt``, a header line
  ``image_id class_id super_class_id path`` then one image a line; images at ``ROOT/<path>``
  (``bicycle_final/111085122871_0.JPG``). Classes (products) are named ``<super-class folder>/<class id>``.
* ``inshop`` (In-shop Clothes Retrieval): ``list_eval_partition.txt`` in ``ROOT/`` or ``ROOT/Eval/``: a line
  with the image count, a header ``image_name item_id evaluation_status``, then ``<path> <item id>
  <train|query|gallery>``; images at ``ROOT/<path>`` or ``ROOT/Img/<path>`` (``img/WOMEN/.../id_00000001/
  02_1_front.jpg``). Classes are the item ids; an image's folder must be its item id.

Labels number the classes in the order of their ids (CUB, Dogs: the published ids; SOP: class_id; In-shop:
item ids sorted). An item's dataset index is its position in the published lists (CUB: image id − 1; Dogs and
SOP: the train list, then the test list; In-shop: the order of list_eval_partition.txt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from deephash_cli.errors import DeephashError


@dataclass
class Listing:
    """A benchmark as its list files describe it.

    ``splits``: split name -> (image paths relative to ``root``, labels (n,) int64 in 0..len(class_names)-1,
    dataset indices (n,) int64); ``root``: ``--data-dir``; ``info``: which list files were read.
    """

    class_names: list[str]
    splits: dict[str, tuple[list[str], np.ndarray, np.ndarray]]
    root: Path
    info: dict = field(default_factory=dict)


def _require(path: Path, dataset: str, layout: str) -> Path:
    if not path.is_file():
        raise DeephashError(f"{path}: missing; --dataset {dataset} expects {layout}")
    return path


def _first_file(candidates: list[Path], dataset: str, layout: str) -> Path:
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DeephashError(f"{candidates[0]}: missing (nor {', '.join(str(c) for c in candidates[1:])}); "
                        f"--dataset {dataset} expects {layout}")


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of every non-blank line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DeephashError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DeephashError(f"{path}: cannot read ({err.strerror or err})") from None
    return [(number, line.split()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _id_table(path: Path, columns: int, what: str, convert: Callable[[str], object] = int) -> dict[int, object]:
    """``<id> <value>`` lines as {id: value}; a malformed line or a repeated id names the line."""
    table: dict[int, object] = {}
    for number, fields in _lines(path):
        if len(fields) != columns:
            raise DeephashError(f"{path}:{number}: expected '{what}', found {' '.join(fields)[:80]!r}")
        try:
            key, value = int(fields[0]), convert(fields[1])
        except ValueError:
            raise DeephashError(f"{path}:{number}: expected '{what}', found {' '.join(fields)[:80]!r}") from None
        if key in table:
            raise DeephashError(f"{path}:{number}: id {key} is listed twice")
        table[key] = value
    if not table:
        raise DeephashError(f"{path}: no entries")
    return table


def _check_images_exist(base: Path, paths: list[str], listed_in: Path) -> None:
    """Every listed image must be a file: the first absent one is named, with the count."""
    missing = [p for p in paths if not (base / p).is_file()]
    if missing:
        more = f" ({len(missing)} of {len(paths)} listed images are absent)" if len(missing) > 1 else ""
        raise DeephashError(f"{base / missing[0]}: listed in {listed_in} but absent{more}")


def _relative(path: str, where: str) -> str:
    """A listed path as a clean relative POSIX path; absolute paths and '..' are refused."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise DeephashError(f"{where}: image path {path!r} must be relative to the dataset folder, without '..'")
    return pure.as_posix()


# --------------------------------------------------------------------------- CUB-200-2011


CUB_LAYOUT = ("images.txt, image_class_labels.txt, train_test_split.txt, classes.txt and images/ in --data-dir "
              "(the CUB_200_2011 folder)")


def read_cub200(root: Path) -> Listing:
    """CUB-200-2011: 11,788 images of 200 bird species; official split 5,994 train / 5,794 test."""
    files = {name: _require(root / name, "cub200", CUB_LAYOUT)
             for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")}
    _images_folder(root, ("images",), "cub200", CUB_LAYOUT)
    images = _id_table(files["images.txt"], 2, "<image id> <path>", str)
    classes = _id_table(files["classes.txt"], 2, "<class id> <name>", str)
    labels = _id_table(files["image_class_labels.txt"], 2, "<image id> <class id>")
    is_train = _id_table(files["train_test_split.txt"], 2, "<image id> <is_training_image 0|1>")
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
        extra = sorted(set(table) - set(images))
        lacking = sorted(set(images) - set(table))
        if extra or lacking:
            detail = (f"image id {extra[0]} is not in images.txt" if extra else
                      f"image id {lacking[0]} ({images[lacking[0]]}) has no entry")
            raise DeephashError(f"{files[name]}: disagrees with {files['images.txt']}: {detail}"
                                f" ({len(extra) + len(lacking)} ids differ)")
    bad_flag = next((i for i, flag in is_train.items() if flag not in (0, 1)), None)
    if bad_flag is not None:
        raise DeephashError(f"{files['train_test_split.txt']}: image {bad_flag} has is_training_image "
                            f"{is_train[bad_flag]}, expected 0 or 1")
    class_ids = sorted(classes)
    unknown = next((i for i in sorted(labels) if labels[i] not in classes), None)
    if unknown is not None:
        raise DeephashError(f"{files['image_class_labels.txt']}: image {unknown} has class {labels[unknown]}, "
                            f"which {files['classes.txt']} does not list")
    order = sorted(images)
    paths = [_relative(str(images[i]), f"{files['images.txt']} (image {i})") for i in order]
    for image_id, path in zip(order, paths):
        folder = PurePosixPath(path).parts[0] if len(PurePosixPath(path).parts) > 1 else None
        expected = classes[labels[image_id]]
        if folder is not None and folder != expected:
            raise DeephashError(f"{files['image_class_labels.txt']}: disagrees with {files['images.txt']}: image "
                                f"{image_id} ({path}) is labelled class {labels[image_id]} ({expected})")
    position = {class_id: k for k, class_id in enumerate(class_ids)}
    label_array = np.array([position[labels[i]] for i in order], dtype=np.int64)
    index = np.arange(len(order), dtype=np.int64)
    train = np.array([is_train[i] == 1 for i in order])
    full_paths = [f"images/{p}" for p in paths]
    _check_images_exist(root, full_paths, files["images.txt"])
    splits = {}
    for name, rows in (("train", np.flatnonzero(train)), ("test", np.flatnonzero(~train))):
        splits[name] = ([full_paths[r] for r in rows], label_array[rows], index[rows])
    return Listing([str(classes[c]) for c in class_ids], splits, root,
                   {"lists": ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"]})


# --------------------------------------------------------------------------- Stanford Dogs


DOGS_LAYOUT = "train_list.mat and test_list.mat in --data-dir/lists (or --data-dir) and the images in Images/"


def _read_mat_list(path: Path) -> tuple[list[str], np.ndarray]:
    """``file_list`` and ``labels`` of a Stanford Dogs list file."""
    try:
        from scipy.io import loadmat
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        raise DeephashError(f"{path}: reading .mat lists needs scipy (pip install scipy)") from None
    try:
        content = loadmat(str(path))
    except Exception as err:  # noqa: BLE001 - scipy raises many types for non-MATLAB files
        raise DeephashError(f"{path}: not a MATLAB list file ({type(err).__name__}: {err})") from None
    for key in ("file_list", "labels"):
        if key not in content:
            raise DeephashError(f"{path}: no '{key}' (found {', '.join(k for k in content if not k.startswith('__'))})")
    try:
        files = [str(np.asarray(entry).reshape(-1)[0]) for entry in np.asarray(content["file_list"]).reshape(-1)]
        labels = np.asarray(content["labels"]).reshape(-1)
    except (IndexError, ValueError, TypeError) as err:
        raise DeephashError(f"{path}: 'file_list' is not a list of file names ({err})") from None
    if len(files) != len(labels):
        raise DeephashError(f"{path}: {len(files)} files but {len(labels)} labels")
    if labels.size and (not np.all(np.isfinite(labels.astype(np.float64)))
                        or np.any(labels != np.round(labels)) or labels.min() < 1):
        raise DeephashError(f"{path}: 'labels' must be whole numbers from 1")
    return files, labels.astype(np.int64)


def _images_folder(root: Path, names: tuple[str, ...], dataset: str, layout: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DeephashError(f"{root / names[0]}: missing; --dataset {dataset} expects {layout}")


def read_dogs(root: Path) -> Listing:
    """Stanford Dogs: 20,580 images of 120 breeds; official split 12,000 train (100 per class) / 8,580 test."""
    lists = {name: _first_file([root / "lists" / f"{name}_list.mat", root / f"{name}_list.mat"], "dogs",
                               DOGS_LAYOUT) for name in ("train", "test")}
    images = _images_folder(root, ("Images", "images"), "dogs", DOGS_LAYOUT)
    parsed = {name: _read_mat_list(path) for name, path in lists.items()}
    folder_of: dict[int, str] = {}
    label_of: dict[str, int] = {}
    for name, (files, labels) in parsed.items():
        for position, (file, label) in enumerate(zip(files, labels.tolist())):
            relative = _relative(file, f"{lists[name]} (entry {position + 1})")
            parts = PurePosixPath(relative).parts
            if len(parts) != 2:
                raise DeephashError(f"{lists[name]}: entry {position + 1} ({file}) is not <breed folder>/<file>")
            folder = parts[0]
            if folder_of.setdefault(label, folder) != folder or label_of.setdefault(folder, label) != label:
                other = folder_of[label] if folder_of[label] != folder else f"label {label_of[folder]}"
                raise DeephashError(f"{lists[name]}: labels disagree with the file list: entry {position + 1} "
                                    f"({file}) has label {label}, but {other} has it too")
    class_ids = sorted(folder_of)
    position = {label: k for k, label in enumerate(class_ids)}
    splits, offset = {}, 0
    for name, (files, labels) in parsed.items():
        relative = [f"{images.name}/{_relative(f, str(lists[name]))}" for f in files]
        _check_images_exist(root, relative, lists[name])
        splits[name] = (relative, np.array([position[int(label)] for label in labels], dtype=np.int64),
                        np.arange(offset, offset + len(files), dtype=np.int64))
        offset += len(files)
    return Listing([folder_of[label] for label in class_ids], splits, root,
                   {"lists": [lists[name].relative_to(root).as_posix() for name in ("train", "test")]})


# --------------------------------------------------------------------------- Stanford Online Products


SOP_LAYOUT = "Ebay_train.txt and Ebay_test.txt in --data-dir (the Stanford_Online_Products folder)"
SOP_HEADER = ["image_id", "class_id", "super_class_id", "path"]


def read_sop(root: Path) -> Listing:
    """Stanford Online Products: 120,053 images of 22,634 products (12 super-classes); official split 59,551
    images of 11,318 products / 60,502 of the other 11,316 (already class-disjoint)."""
    files = {name: _require(root / f"Ebay_{name}.txt", "sop", SOP_LAYOUT) for name in ("train", "test")}
    entries: dict[str, list[tuple[int, int, str]]] = {}
    super_of: dict[int, int] = {}
    folder_of_super: dict[int, str] = {}
    seen_ids: dict[int, str] = {}
    for name, path in files.items():
        lines = _lines(path)
        if not lines or lines[0][1] != SOP_HEADER:
            found = " ".join(lines[0][1])[:80] if lines else "an empty file"
            raise DeephashError(f"{path}:1: expected the header '{' '.join(SOP_HEADER)}', found {found!r}")
        rows = []
        for number, fields in lines[1:]:
            if len(fields) != 4:
                raise DeephashError(f"{path}:{number}: expected '{' '.join(SOP_HEADER)}', found "
                                    f"{' '.join(fields)[:80]!r}")
            try:
                image_id, class_id, super_id = int(fields[0]), int(fields[1]), int(fields[2])
            except ValueError:
                raise DeephashError(f"{path}:{number}: image_id, class_id and super_class_id must be whole "
                                    f"numbers, found {' '.join(fields[:3])!r}") from None
            relative = _relative(fields[3], f"{path}:{number}")
            if image_id in seen_ids:
                raise DeephashError(f"{path}:{number}: image_id {image_id} is also listed in {seen_ids[image_id]}")
            seen_ids[image_id] = f"{path.name}:{number}"
            if super_of.setdefault(class_id, super_id) != super_id:
                raise DeephashError(f"{path}:{number}: class {class_id} has super_class_id {super_id}, elsewhere "
                                    f"{super_of[class_id]}")
            folder = PurePosixPath(relative).parts[0]
            if folder_of_super.setdefault(super_id, folder) != folder:
                raise DeephashError(f"{path}:{number}: super_class_id {super_id} disagrees with the image path "
                                    f"({relative}: folder {folder}, elsewhere {folder_of_super[super_id]})")
            rows.append((image_id, class_id, relative))
        if not rows:
            raise DeephashError(f"{path}: no images listed")
        entries[name] = rows
    class_ids = sorted(super_of)
    position = {class_id: k for k, class_id in enumerate(class_ids)}
    splits, offset = {}, 0
    for name, rows in entries.items():
        relative = [r[2] for r in rows]
        _check_images_exist(root, relative, files[name])
        splits[name] = (relative, np.array([position[r[1]] for r in rows], dtype=np.int64),
                        np.arange(offset, offset + len(rows), dtype=np.int64))
        offset += len(rows)
    names = [f"{folder_of_super[super_of[c]]}/{c}" for c in class_ids]
    return Listing(names, splits, root, {"lists": ["Ebay_train.txt", "Ebay_test.txt"]})


# --------------------------------------------------------------------------- In-shop Clothes


INSHOP_LAYOUT = ("list_eval_partition.txt in --data-dir (or --data-dir/Eval) and the images it lists (img/...) "
                 "in --data-dir (or --data-dir/Img)")
INSHOP_HEADER = ["image_name", "item_id", "evaluation_status"]
INSHOP_SPLITS = ("train", "query", "gallery")


def read_inshop(root: Path) -> Listing:
    """In-shop Clothes Retrieval: 52,712 images of 7,982 items; official split 25,882 train images of 3,997
    items, and 14,218 query / 12,612 gallery images of the other 3,985 items (already class-disjoint)."""
    path = _first_file([root / "list_eval_partition.txt", root / "Eval" / "list_eval_partition.txt"], "inshop",
                       INSHOP_LAYOUT)
    lines = _lines(path)
    if len(lines) < 2 or len(lines[0][1]) != 1 or not lines[0][1][0].isdigit():
        raise DeephashError(f"{path}:1: expected the image count on the first line, found "
                            f"{' '.join(lines[0][1])[:80] if lines else 'an empty file'!r}")
    if lines[1][1] != INSHOP_HEADER:
        raise DeephashError(f"{path}:2: expected the header '{' '.join(INSHOP_HEADER)}', found "
                            f"{' '.join(lines[1][1])[:80]!r}")
    rows: list[tuple[str, str, str]] = []
    seen: dict[str, int] = {}
    for number, fields in lines[2:]:
        if len(fields) != 3:
            raise DeephashError(f"{path}:{number}: expected '{' '.join(INSHOP_HEADER)}', found "
                                f"{' '.join(fields)[:80]!r}")
        relative, item, status = _relative(fields[0], f"{path}:{number}"), fields[1], fields[2]
        if status not in INSHOP_SPLITS:
            raise DeephashError(f"{path}:{number}: evaluation_status {status!r}, expected train, query or gallery")
        parent = PurePosixPath(relative).parent.name
        if parent != item:
            raise DeephashError(f"{path}:{number}: item_id {item} disagrees with the image path {relative} (folder "
                                f"{parent})")
        if relative in seen:
            raise DeephashError(f"{path}:{number}: {relative} is also listed on line {seen[relative]}")
        seen[relative] = number
        rows.append((relative, item, status))
    if not rows:
        raise DeephashError(f"{path}: no images listed")
    declared = int(lines[0][1][0])
    if declared != len(rows):
        raise DeephashError(f"{path}:1: declares {declared} images but lists {len(rows)}")
    # The images sit next to the list (ROOT/img/...) or, as the benchmark ships them, in ROOT/Img/img/...
    prefix = "Img/" if not (root / rows[0][0]).is_file() and (root / "Img" / rows[0][0]).is_file() else ""
    items = sorted({item for _, item, _ in rows})
    position = {item: k for k, item in enumerate(items)}
    splits = {}
    for name in INSHOP_SPLITS:
        rows_of = [k for k, row in enumerate(rows) if row[2] == name]
        relative = [prefix + rows[k][0] for k in rows_of]
        if not relative:
            raise DeephashError(f"{path}: no image has evaluation_status {name}")
        _check_images_exist(root, relative, path)
        splits[name] = (relative, np.array([position[rows[k][1]] for k in rows_of], dtype=np.int64),
                        np.array(rows_of, dtype=np.int64))
    return Listing(items, splits, root, {"lists": [path.relative_to(root).as_posix()]})


READERS: dict[str, Callable[[Path], Listing]] = {
    "cub200": read_cub200,
    "dogs": read_dogs,
    "sop": read_sop,
    "inshop": read_inshop,
}
