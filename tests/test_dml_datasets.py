"""The published benchmarks' readers on tiny fixtures written in their official layouts (a few generated images),
the class-disjoint split of every dataset, and one test per documented error."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deephash_cli.artifacts import read_artifact
from deephash_cli.datasets import load_dataset
from deephash_cli.errors import DeephashError
from deephash_cli.items import ItemImages
from tests.conftest import invoke
from tests.test_extract import _write_tiny_cifar


def _image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(path)


def _lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


# --------------------------------------------------------------------------- CUB-200-2011

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross", "004.Groove_billed_Ani"]


def write_cub(root, per_class=3):
    """CUB_200_2011 as published: images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/."""
    images, labels, split = [], [], []
    image_id = 0
    for class_id, name in enumerate(CUB_CLASSES, 1):
        for k in range(per_class):
            image_id += 1
            relative = f"{name}/{name.split('.')[1]}_{k:04d}_{700000 + image_id}.jpg"
            _image(root / "images" / relative, image_id)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {int(k < 2)}")
    _lines(root / "images.txt", images)
    _lines(root / "image_class_labels.txt", labels)
    _lines(root / "train_test_split.txt", split)
    _lines(root / "classes.txt", [f"{i} {name}" for i, name in enumerate(CUB_CLASSES, 1)])
    return root


def test_cub200_official_split_as_published(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011")
    data = load_dataset("cub200", str(root))
    assert data.class_names == CUB_CLASSES
    assert len(data.train) == 8 and len(data.test) == 4
    np.testing.assert_array_equal(data.train.labels, [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(data.test.index, [2, 5, 8, 11])  # image id - 1
    assert data.train.describe(0) == str(root / "images" / "001.Black_footed_Albatross" /
                                         "Black_footed_Albatross_0000_700001.jpg")
    assert data.train.load(0).size == (8, 8)


def test_cub200_class_disjoint_split_pools_every_image_of_the_first_half_of_the_classes(tmp_path):
    data = load_dataset("cub200", str(write_cub(tmp_path / "CUB_200_2011")), split="classes")
    np.testing.assert_array_equal(data.train.labels, [0, 0, 1, 1, 0, 1])  # train images first, then test ones
    np.testing.assert_array_equal(np.sort(data.train.index), [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(np.sort(data.test.index), [6, 7, 8, 9, 10, 11])
    assert set(data.test.labels.tolist()) == {2, 3}
    assert data.split_info["test_split"] == "classes" and data.split_info["train_classes"] == "0..1"


@pytest.mark.parametrize("name", ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"])
def test_cub200_missing_list_file_is_named(tmp_path, name):
    root = write_cub(tmp_path / "CUB_200_2011")
    (root / name).unlink()
    with pytest.raises(DeephashError, match=rf"{name}: missing; --dataset cub200 expects"):
        load_dataset("cub200", str(root))


def test_cub200_missing_images_folder_is_named(tmp_path):
    import shutil

    root = write_cub(tmp_path / "CUB_200_2011")
    shutil.rmtree(root / "images")
    with pytest.raises(DeephashError, match=r"CUB_200_2011/images: missing; --dataset cub200 expects"):
        load_dataset("cub200", str(root))


def test_cub200_label_file_disagreeing_with_the_image_list(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011")
    text = (root / "image_class_labels.txt").read_text().replace("1 1\n", "1 2\n", 1)  # image 1 sits in 001.*
    (root / "image_class_labels.txt").write_text(text)
    with pytest.raises(DeephashError, match=r"image_class_labels.txt: disagrees with .*images.txt: image 1 "
                                            r"\(001.Black_footed_Albatross/.*\) is labelled class 2"):
        load_dataset("cub200", str(root))
    (root / "image_class_labels.txt").write_text(text.replace("1 2\n", "", 1))  # image 1 without a label
    with pytest.raises(DeephashError, match=r"image_class_labels.txt: disagrees with .*images.txt: image id 1 "):
        load_dataset("cub200", str(root))


def test_cub200_image_listed_but_absent(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011")
    missing = root / "images" / "003.Sooty_Albatross" / "Sooty_Albatross_0001_700008.jpg"
    missing.unlink()
    with pytest.raises(DeephashError, match=rf"{missing}: listed in .*images.txt but absent"):
        load_dataset("cub200", str(root))


def test_cub200_malformed_line_and_no_data_dir(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011")
    with open(root / "train_test_split.txt", "a") as handle:
        handle.write("13 yes\n")
    with pytest.raises(DeephashError, match=r"train_test_split.txt:13: expected '<image id> <is_training_image"):
        load_dataset("cub200", str(root))
    with pytest.raises(DeephashError, match="needs --data-dir"):
        load_dataset("cub200", None)


# --------------------------------------------------------------------------- Stanford Dogs

DOG_FOLDERS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog", "n02086079-Pekinese"]


def _savemat(path, files, labels):
    from scipy.io import savemat

    file_list = np.empty((len(files), 1), dtype=object)
    for i, name in enumerate(files):
        file_list[i, 0] = np.array([name])
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"file_list": file_list, "annotation_list": file_list,
                        "labels": np.array(labels, dtype=np.float64).reshape(-1, 1)})


def write_dogs(root, in_lists_folder=True):
    """Stanford Dogs as published: Images/<wnid>-<breed>/<wnid>_<n>.jpg and train_list.mat / test_list.mat."""
    lists = {"train": ([], []), "test": ([], [])}
    for label, folder in enumerate(DOG_FOLDERS, 1):
        for k in range(3):
            name = f"{folder}/{folder.split('-')[0]}_{k + 1}.jpg"
            _image(root / "Images" / name, label * 10 + k)
            files, labels = lists["train" if k < 2 else "test"]
            files.append(name)
            labels.append(label)
    where = root / "lists" if in_lists_folder else root
    for split, (files, labels) in lists.items():
        _savemat(where / f"{split}_list.mat", files, labels)
    return root


@pytest.mark.parametrize("in_lists_folder", [True, False])
def test_dogs_official_split_from_the_mat_lists(tmp_path, in_lists_folder):
    root = write_dogs(tmp_path / "dogs", in_lists_folder)
    data = load_dataset("dogs", str(root))
    assert data.class_names == DOG_FOLDERS
    assert len(data.train) == 8 and len(data.test) == 4
    np.testing.assert_array_equal(data.test.labels, [0, 1, 2, 3])
    np.testing.assert_array_equal(data.test.index, [8, 9, 10, 11])  # the train list first, then the test list
    assert data.test.describe(0).endswith("Images/n02085620-Chihuahua/n02085620_3.jpg")
    classes = load_dataset("dogs", str(root), split="classes")
    assert set(classes.train.labels.tolist()) == {0, 1} and len(classes.train) == 6 and len(classes.test) == 6


def test_dogs_errors(tmp_path):
    root = write_dogs(tmp_path / "dogs")
    (root / "lists" / "test_list.mat").unlink()
    with pytest.raises(DeephashError, match=r"lists/test_list.mat: missing \(nor .*test_list.mat\); --dataset dogs"):
        load_dataset("dogs", str(root))
    root = write_dogs(tmp_path / "dogs2")
    files = [f"{DOG_FOLDERS[0]}/n02085620_1.jpg", f"{DOG_FOLDERS[1]}/n02085782_1.jpg"]
    _savemat(root / "lists" / "train_list.mat", files, [1, 1])  # one label, two breeds
    with pytest.raises(DeephashError, match=r"train_list.mat: labels disagree with the file list: entry 2 "):
        load_dataset("dogs", str(root))
    root = write_dogs(tmp_path / "dogs3")
    (root / "Images" / DOG_FOLDERS[2] / "n02085936_3.jpg").unlink()
    with pytest.raises(DeephashError, match=r"n02085936_3.jpg: listed in .*test_list.mat but absent"):
        load_dataset("dogs", str(root))


# --------------------------------------------------------------------------- Stanford Online Products


def write_sop(root):
    """Stanford_Online_Products as published: Ebay_train.txt / Ebay_test.txt with their header, <super>_final/."""
    header = "image_id class_id super_class_id path"
    rows = {"train": [], "test": []}
    image_id = 0
    for class_id, (super_id, folder) in enumerate([(1, "bicycle_final"), (1, "bicycle_final"), (2, "chair_final"),
                                                   (1, "bicycle_final"), (2, "chair_final"), (2, "chair_final")], 1):
        for k in range(2):
            image_id += 1
            relative = f"{folder}/{111085122800 + class_id}_{k}.JPG"
            _image(root / relative, image_id)
            rows["train" if class_id <= 3 else "test"].append(f"{image_id} {class_id} {super_id} {relative}")
    for split, lines in rows.items():
        _lines(root / f"Ebay_{split}.txt", [header, *lines])
    return root


def test_sop_official_split_is_its_class_disjoint_split(tmp_path):
    root = write_sop(tmp_path / "Stanford_Online_Products")
    data = load_dataset("sop", str(root))
    assert data.class_names == ["bicycle_final/1", "bicycle_final/2", "chair_final/3", "bicycle_final/4",
                                "chair_final/5", "chair_final/6"]
    np.testing.assert_array_equal(data.train.labels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(data.test.index, [6, 7, 8, 9, 10, 11])
    classes = load_dataset("sop", str(root), split="classes")
    np.testing.assert_array_equal(classes.train.index, data.train.index)
    np.testing.assert_array_equal(classes.test.index, data.test.index)
    assert classes.split_info["class_disjoint"] == "the official split"


def test_sop_errors(tmp_path):
    root = write_sop(tmp_path / "sop")
    (root / "Ebay_test.txt").unlink()
    with pytest.raises(DeephashError, match=r"Ebay_test.txt: missing; --dataset sop expects"):
        load_dataset("sop", str(root))
    root = write_sop(tmp_path / "sop2")
    text = (root / "Ebay_train.txt").read_text().replace("2 1 1 bicycle", "2 1 2 bicycle")
    (root / "Ebay_train.txt").write_text(text)  # class 1 now in two super-classes
    with pytest.raises(DeephashError, match=r"Ebay_train.txt:3: class 1 has super_class_id 2, elsewhere 1"):
        load_dataset("sop", str(root))
    root = write_sop(tmp_path / "sop3")
    (root / "Ebay_train.txt").write_text((root / "Ebay_train.txt").read_text().replace("image_id ", "id ", 1))
    with pytest.raises(DeephashError, match=r"Ebay_train.txt:1: expected the header 'image_id class_id"):
        load_dataset("sop", str(root))
    root = write_sop(tmp_path / "sop4")
    (root / "chair_final" / "111085122805_1.JPG").unlink()
    with pytest.raises(DeephashError, match=r"111085122805_1.JPG: listed in .*Ebay_test.txt but absent"):
        load_dataset("sop", str(root))


# --------------------------------------------------------------------------- In-shop Clothes


def write_inshop(root, eval_folder=True, img_folder=True):
    """In-shop Clothes Retrieval Benchmark as published: Eval/list_eval_partition.txt (count line, header line,
    then '<img/...> <item id> <train|query|gallery>' padded with spaces) and Img/img/<...>/<item id>/*.jpg."""
    rows = []
    for n, (item, statuses) in enumerate([("id_00000001", ["train", "train"]), ("id_00000002", ["train", "train"]),
                                          ("id_00000007", ["query", "gallery", "gallery"]),
                                          ("id_00000008", ["query", "query", "gallery"])]):
        for k, status in enumerate(statuses):
            relative = f"img/WOMEN/Dresses/{item}/{k + 1:02d}_{k + 1}_front.jpg"
            _image((root / "Img" if img_folder else root) / relative, n * 10 + k)
            rows.append(f"{relative}          {item}   {status}")
    _lines((root / "Eval" if eval_folder else root) / "list_eval_partition.txt",
           [str(len(rows)), "image_name item_id evaluation_status", *rows])
    return root


@pytest.mark.parametrize("eval_folder, img_folder", [(True, True), (False, False)])
def test_inshop_train_query_gallery(tmp_path, eval_folder, img_folder):
    root = write_inshop(tmp_path / "inshop", eval_folder, img_folder)
    data = load_dataset("inshop", str(root))
    assert data.test is None and list(data.sources()) == ["train", "query", "gallery"]
    assert data.class_names == ["id_00000001", "id_00000002", "id_00000007", "id_00000008"]
    np.testing.assert_array_equal(data.extra["query"].labels, [2, 3, 3])
    np.testing.assert_array_equal(data.extra["gallery"].index, [5, 6, 9])  # order of list_eval_partition.txt
    prefix = "Img/" if img_folder else ""
    assert data.extra["query"].describe(0) == str(root / f"{prefix}img/WOMEN/Dresses/id_00000007/01_1_front.jpg")
    classes = load_dataset("inshop", str(root), split="classes")
    assert list(classes.sources()) == ["train", "query", "gallery"]


def test_inshop_errors(tmp_path):
    root = write_inshop(tmp_path / "a")
    (root / "Eval" / "list_eval_partition.txt").unlink()
    with pytest.raises(DeephashError, match=r"list_eval_partition.txt: missing \(nor .*Eval/list_eval_partition.txt"):
        load_dataset("inshop", str(root))
    root = write_inshop(tmp_path / "b")
    listing = root / "Eval" / "list_eval_partition.txt"
    listing.write_text(listing.read_text().replace("id_00000008   query", "id_00000009   query", 1))
    with pytest.raises(DeephashError, match=r"list_eval_partition.txt:10: item_id id_00000009 disagrees with the "
                                            r"image path img/WOMEN/Dresses/id_00000008/"):
        load_dataset("inshop", str(root))
    root = write_inshop(tmp_path / "c")
    listing = root / "Eval" / "list_eval_partition.txt"
    listing.write_text(listing.read_text().replace("10\n", "11\n", 1))
    with pytest.raises(DeephashError, match=r"list_eval_partition.txt:1: declares 11 images but lists 10"):
        load_dataset("inshop", str(root))
    root = write_inshop(tmp_path / "d")
    (root / "Img" / "img" / "WOMEN" / "Dresses" / "id_00000002" / "02_2_front.jpg").unlink()
    with pytest.raises(DeephashError, match=r"02_2_front.jpg: listed in .*list_eval_partition.txt but absent"):
        load_dataset("inshop", str(root))


# --------------------------------------------------------------------------- through the CLI


def test_extract_cub200_names_items_by_their_path_and_opens_them_again(runner, tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011")
    out = tmp_path / "cub.h5"
    result = invoke(runner, "extract", "--dataset", "cub200", "--data-dir", root, "--backbone", "pixels", "-o", out)
    assert result.exit_code == 0, result.output
    art = read_artifact(out)
    assert art.config["split"] == "official" and len(art.split("train")) == 8
    name = art.split("test").paths[0]
    assert name == "images/001.Black_footed_Albatross/Black_footed_Albatross_0002_700003.jpg"
    opened = np.asarray(ItemImages().open("cub200", str(root), name))
    np.testing.assert_array_equal(opened, np.asarray(Image.open(root / name).convert("RGB")))


def test_extract_inshop_writes_query_and_gallery_and_within_evaluates_query_against_gallery(runner, tmp_path):
    root = write_inshop(tmp_path / "inshop")
    out = tmp_path / "inshop.h5"
    result = invoke(runner, "extract", "--dataset", "inshop", "--data-dir", root, "--backbone", "pixels", "-o", out)
    assert result.exit_code == 0, result.output
    art = read_artifact(out)
    assert list(art.splits) == ["train", "query", "gallery"]
    assert art.split("query").paths[0] == "Img/img/WOMEN/Dresses/id_00000007/01_1_front.jpg"
    report = invoke(runner, "evaluate", out, "--protocol", "within", "--metric", "recall@1,map@r", "--json")
    assert report.exit_code == 0, report.output
    import json

    result = json.loads(report.stdout)
    assert result["queries"] == 3 and result["database"] == 3 and result["selection"] == "query (3) against gallery (3)"


def test_cifar10_class_split_numbers_test_batch_items_after_the_train_batches(runner, tmp_path):
    _write_tiny_cifar(tmp_path / "data", n_train_per_batch=6, n_test=10)
    data = load_dataset("cifar10", str(tmp_path / "data"), split="classes", download=False)
    assert set(data.train.labels.tolist()) <= {0, 1, 2, 3, 4} and set(data.test.labels.tolist()) <= {5, 6, 7, 8, 9}
    assert len(data.train) + len(data.test) == 40
    everything = np.concatenate([data.train.index, data.test.index])
    assert len(set(everything.tolist())) == 40 and everything.max() >= 30  # test batch item i -> 30 + i here
    out, full, resplit = tmp_path / "c.h5", tmp_path / "full.h5", tmp_path / "re.h5"
    for args, path in (([], full), (["--split", "classes"], out)):
        result = invoke(runner, "extract", "--dataset", "cifar10", "--data-dir", tmp_path / "data", "--backbone",
                        "pixels", *args, "-o", path)
        assert result.exit_code == 0, result.output
    assert invoke(runner, "split-classes", full, "-o", resplit).exit_code == 0
    extracted, again = read_artifact(out), read_artifact(resplit)
    for split in ("train", "test"):
        a, b = extracted.split(split), again.split(split)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.index, b.index)
        np.testing.assert_array_equal(a.features, b.features)
        assert list(a.paths) == list(b.paths)
    test_paths = set(extracted.split("test").paths) | set(extracted.split("train").paths)
    assert any(p.startswith("cifar10/test/") for p in test_paths) and any(p.startswith("cifar10/train/")
                                                                          for p in test_paths)


def test_split_classes_refusals(runner, tmp_path):
    root = write_sop(tmp_path / "sop")
    out = tmp_path / "sop.h5"
    assert invoke(runner, "extract", "--dataset", "sop", "--data-dir", root, "--backbone", "pixels", "-o",
                  out).exit_code == 0
    result = invoke(runner, "split-classes", out, "-o", tmp_path / "x.h5")
    assert result.exit_code == 2 and "already class-disjoint" in result.stderr
    result = invoke(runner, "extract", "--dataset", "digits", "--split", "halves", "-o", tmp_path / "d.h5")
    assert result.exit_code == 2 and "unknown --split 'halves'; valid names: official, classes" in result.stderr
