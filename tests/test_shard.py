"""Sharded extraction (`extract --shard K/N`, torchrun ranks) and `deephash merge`: merged shards equal one
process bit for bit, in any argument order, for features, embeddings and codes; one test per documented error;
indexes over merged shards (or a shard plus `index --add` of the others) answer like one process's."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
from typer.testing import CliRunner

from deephash_cli import shards
from deephash_cli.artifacts import ArtifactWriter, read_artifact
from deephash_cli.errors import DeephashError
from tests.conftest import invoke, write_features
from tests.test_extract import _image_folder

# Root attributes a merged file may not share with a one-process run (docs/scale.md): when and how it was
# made, the extraction timings (summed over shards) and the shards it was merged from.
PROVENANCE = {"created", "command", "extraction", "merged_from"}
DIGITS = ("--dataset", "digits", "--backbone", "pixels", "--limit-per-class", "2", "--batch-size", "3")


pytestmark = pytest.mark.usefixtures("one_thread")


def ok(*args):
    result = invoke(CliRunner(), *args)
    assert result.exit_code == 0, result.output
    return result


def refused(runner, *args) -> str:
    """The one error line of a refused command (exit status 2)."""
    result = invoke(runner, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def datasets(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: out.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset)
                          else None)
    return out


def attrs(path) -> dict:
    with h5py.File(path, "r") as handle:
        return {key: handle.attrs[key] for key in handle.attrs}


def assert_same_as_one_process(merged, single) -> None:
    """Every dataset bitwise (dtype, shape, bytes) and every root attribute equal except PROVENANCE."""
    a, b = datasets(merged), datasets(single)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        if a[name].dtype == object:
            assert a[name].tolist() == b[name].tolist(), name
        else:
            assert a[name].tobytes() == b[name].tobytes(), name
    with h5py.File(merged, "r") as m, h5py.File(single, "r") as s:
        for group in ("train", "test"):
            for name in m[group]:
                assert dict(m[group][name].attrs) == dict(s[group][name].attrs)
    merged_attrs, single_attrs = attrs(merged), attrs(single)
    assert set(merged_attrs) - PROVENANCE == set(single_attrs) - PROVENANCE
    for key in set(single_attrs) - PROVENANCE:
        assert merged_attrs[key] == single_attrs[key], key
    assert json.loads(merged_attrs["config"]) == json.loads(single_attrs["config"])


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """An image folder (6 train, 4 test images), a mobilenet_v3_small state_dict and a one-process run."""
    root = tmp_path_factory.mktemp("cnn")
    _image_folder(root / "imgs")
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), root / "w.pth")
    args = ("--dataset", "imagefolder", "--data-dir", root / "imgs", "--backbone", "mobilenet_v3_small", "--weights",
            root / "w.pth", "--image-size", "32", "--batch-size", "2", "--workers", "0", "--device", "cpu")
    ok("extract", *args, "-o", root / "single.h5")
    return root, args


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Digits, 2 images per class and split (20 + 20), batches of 3: one run and 3 uneven shards (3, 2, 2
    batches), the shards in their own folder."""
    root = tmp_path_factory.mktemp("digits")
    ok("extract", *DIGITS, "-o", root / "single.h5")
    (root / "parts").mkdir()
    for k in range(3):
        ok("extract", *DIGITS, "--shard", f"{k}/3", "-o", root / "parts" / "d.h5")
    return root, [root / "parts" / f"d.shard-{k:05d}-of-00003.h5" for k in range(3)]


# --------------------------------------------------------------------------- slicing


def test_shards_are_contiguous_whole_batches_covering_each_split_once():
    for n in (0, 1, 7, 20, 1000):
        for batch in (1, 3, 128):
            for count in (1, 2, 3, 8):
                ranges = [shards.rows(n, batch, shards.Shard(k, count)) for k in range(count)]
                assert ranges[0][0] == 0 and ranges[-1][1] == n
                assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
                assert all(start % batch == 0 or start == n for start, _ in ranges)
                sizes = [-(-(stop - start) // batch) for start, stop in ranges]
                assert max(sizes) - min(sizes) <= 1
    assert shards.output_path(Path("out/f.h5"), shards.Shard(3, 8)) == Path("out/f.shard-00003-of-00008.h5")
    assert shards.output_path(Path("f"), shards.Shard(0, 1)) == Path("f.shard-00000-of-00001.h5")


# --------------------------------------------------------------------------- merged == one process


def test_two_cnn_shards_merge_to_the_one_process_artifact(runner, cnn):
    root, args = cnn
    for k in (0, 1):
        result = invoke(runner, "extract", *args, "--shard", f"{k}/2", "-o", root / "f.h5")
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == str(root / f"f.shard-0000{k}-of-00002.h5")
    shard0 = read_artifact(root / "f.shard-00000-of-00002.h5")
    assert shard0.config["shard"] == {"index": 0, "count": 2, "rows": {"train": [0, 4], "test": [0, 2]},
                                      "total": {"train": 6, "test": 4}}
    assert len(shard0.split("train")) == 4 and len(shard0.split("test")) == 2
    result = invoke(runner, "merge", root / "f.shard-00000-of-00002.h5", root / "f.shard-00001-of-00002.h5", "-o",
                    root / "merged.h5")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(root / "merged.h5") and "merged 2 shards" in result.stderr
    assert_same_as_one_process(root / "merged.h5", root / "single.h5")
    merged_from = json.loads(attrs(root / "merged.h5")["merged_from"])
    assert [entry["shard"] for entry in merged_from] == ["0/2", "1/2"]
    info = json.loads(ok("info", root / "merged.h5", "--json").stdout)
    assert info["key_config"]["merged_from"] == "2 shards"
    assert json.loads(ok("info", root / "f.shard-00001-of-00002.h5", "--json").stdout)["key_config"]["shard"] == "1/2"


def test_three_uneven_shards_in_any_order_merge_to_the_one_process_artifact(runner, digits):
    root, parts = digits
    assert [read_artifact(p).config["shard"]["rows"]["train"] for p in parts] == [[0, 9], [9, 15], [15, 20]]
    for order, name in (((0, 1, 2), "a.h5"), ((2, 0, 1), "b.h5"), ((1, 2, 0), "c.h5")):
        result = invoke(runner, "merge", *[parts[k] for k in order], "-o", root / name)
        assert result.exit_code == 0, result.output
        assert_same_as_one_process(root / name, root / "single.h5")
    assert datasets(root / "a.h5").keys() == datasets(root / "b.h5").keys()
    # merged_from names the shards as parents are named (absolute paths stay absolute), shard 0 first
    assert [e["artifact"] for e in json.loads(attrs(root / "b.h5")["merged_from"])] == [str(p) for p in parts]


def _finetuned_model(path, weights, produces: str) -> None:
    """A `finetune`-shaped model artifact without training: mobilenet_v3_small + a linear head."""
    from deephash_cli.backbones import build_backbone
    from deephash_cli.finetune import FinetuneModel
    from deephash_cli.heads import Head, state_arrays

    torch.manual_seed(1)
    backbone, spec = build_backbone("mobilenet_v3_small", str(weights))
    head = Head("linear", spec.dim, 16, output="tanh" if produces == "codes" else "normalized")
    model = FinetuneModel(backbone, head, freeze_bn=True)
    architecture = {"type": "finetuned", "backbone": "mobilenet_v3_small", "weights": str(weights),
                    "image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "freeze_bn": True,
                    "produces": produces, "head": head.architecture(), "feature_dim": spec.dim}
    with ArtifactWriter(path, kind="model", class_names=["cat", "dog"], config={"stage": "finetune"},
                        command="pytest") as writer:
        writer.write_model(architecture, state_arrays(model))


@pytest.mark.parametrize("produces", ["codes", "embeddings"])
def test_shards_of_extract_model_merge_to_the_one_process_artifact(cnn, produces, monkeypatch):
    root, _ = cnn
    monkeypatch.chdir(root)  # relative paths: the model is recorded relative to each artifact's folder
    model = f"{produces}.model.h5"
    _finetuned_model(model, root / "w.pth", produces)
    args = ("--dataset", "imagefolder", "--data-dir", root / "imgs", "--model", model, "--batch-size", "1",
            "--workers", "0", "--device", "cpu")
    ok("extract", *args, "-o", f"{produces}.single.h5")
    (root / produces).mkdir()
    for k in range(3):  # shards in a subfolder, merged next to the one-process run
        ok("extract", *args, "--shard", f"{k}/3", "-o", f"{produces}/s.h5")
    parts = sorted(root.glob(f"{produces}/s.shard-*.h5"))
    assert read_artifact(parts[0]).config["model"] == f"../{produces}.model.h5"
    ok("merge", *[p.relative_to(root) for p in parts], "-o", f"{produces}.merged.h5")
    merged = read_artifact(f"{produces}.merged.h5")
    assert merged.kind == produces and merged.config["model"] == model and merged.attrs["parent"] == model
    assert_same_as_one_process(f"{produces}.merged.h5", f"{produces}.single.h5")
    # index --add accepts the other shards: one encoder (the model's SHA-256), whatever the shard; in database
    # order, shard 0 plus the others added hold the merged artifact's items in its order
    ok("index", parts[0], "-o", f"{produces}.index.h5", "--tie-order", "database")
    for part in parts[1:]:
        ok("index", f"{produces}.index.h5", "--add", part, "--splits", "train")
    ok("index", f"{produces}.merged.h5", "-o", f"{produces}.merged.index.h5", "--tie-order", "database")
    runner = CliRunner()
    assert _search(runner, f"{produces}.index.h5", f"{produces}.single.h5") == \
        _search(runner, f"{produces}.merged.index.h5", f"{produces}.single.h5")


def test_a_rerun_shard_has_the_same_bytes(runner, cnn):
    root, args = cnn
    ok("extract", *args, "--shard", "1/2", "-o", root / "again.h5")
    before = datasets(root / "again.shard-00001-of-00002.h5")
    assert "exists; pass --force" in refused(runner, "extract", *args, "--shard", "1/2", "-o", root / "again.h5")
    ok("extract", *args, "--shard", "1/2", "-o", root / "again.h5", "--force")
    after = datasets(root / "again.shard-00001-of-00002.h5")
    for name in ("train/features", "test/features", "train/labels", "train/index"):
        assert after[name].tobytes() == before[name].tobytes(), name
    assert after["test/paths"].tolist() == before["test/paths"].tolist()


def test_under_torchrun_each_rank_extracts_its_shard_into_its_own_file(runner, digits, monkeypatch, tmp_path):
    root, parts = digits
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    result = invoke(runner, "extract", *DIGITS, "-o", tmp_path / "d.h5")
    assert result.exit_code == 0, result.output
    written = tmp_path / "d.shard-00002-of-00003.h5"
    assert result.stdout.strip() == str(written) and not (tmp_path / "d.h5").exists()
    assert read_artifact(written).config["shard"] == read_artifact(parts[2]).config["shard"]
    assert datasets(written)["train/features"].tobytes() == datasets(parts[2])["train/features"].tobytes()
    assert "drop --shard" in refused(runner, "extract", *DIGITS, "--shard", "0/3", "-o", tmp_path / "x.h5")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("text, message", [
    ("3/2", "--shard 3/2: K must lie in 0..1 (shards are numbered from 0), got 3"),
    ("2/2", "--shard 2/2: K must lie in 0..1"),
    ("-1/2", "--shard -1/2: K must lie in 0..1"),
    ("x/2", "--shard x/2: expected K/N, two whole numbers such as 0/4"),
    ("1", "--shard 1: expected K/N"),
    ("0/0", "--shard 0/0: N must be ≥ 1, got 0"),
])
def test_bad_shard_strings_are_one_line(runner, tmp_path, text, message):
    assert message in refused(runner, "extract", *DIGITS, "--shard", text, "-o", tmp_path / "o.h5")
    assert list(tmp_path.iterdir()) == []


def test_random_weights_cannot_be_sharded(runner, tmp_path):
    line = refused(runner, "extract", "--backbone", "resnet18", "--weights", "none", "--shard", "0/2", "-o",
                   tmp_path / "o.h5")
    assert "each shard would draw its own random resnet18 weights" in line


def test_missing_shard(runner, digits, tmp_path):
    _, parts = digits
    line = refused(runner, "merge", parts[2], parts[0], "-o", tmp_path / "m.h5")
    assert "incomplete set of 3 shards: missing 1/3 (found 2 of 3: 0, 2)" in line
    assert not (tmp_path / "m.h5").exists()


def test_duplicated_shard(runner, digits, tmp_path):
    root, parts = digits
    copy = tmp_path / "copy.h5"
    copy.write_bytes(parts[1].read_bytes())
    line = refused(runner, "merge", *parts, copy, "-o", tmp_path / "m.h5")
    assert f"shard 1/3 given twice: {parts[1]} and {copy}" in line
    assert not (tmp_path / "m.h5").exists()


def test_shards_of_a_different_n(runner, digits, tmp_path):
    _, parts = digits
    ok("extract", *DIGITS, "--shard", "1/2", "-o", tmp_path / "two.h5")
    other = tmp_path / "two.shard-00001-of-00002.h5"
    line = refused(runner, "merge", parts[0], other, parts[1], parts[2], "-o", tmp_path / "m.h5")
    assert f"{other} is shard 1/2 but {parts[0]} is shard 0/3: shards of different N (expected N=3, found N=2)" \
        in line


@pytest.mark.parametrize("extra, named", [
    (("--mean", "0.5"), "mean: [0.485, 0.456, 0.406] vs [0.5, 0.5, 0.5]"),
    (("--image-size", "6"), "image_size: 8 vs 6"),
    (("--seed", "1"), "split_seed: 0 vs 1"),
    (("--limit-per-class", "3"), "limit_per_class: 2 vs 3"),
])
def test_shards_made_with_other_settings(runner, digits, tmp_path, extra, named):
    _, parts = digits
    ok("extract", *DIGITS, *extra, "--shard", "1/3", "-o", tmp_path / "other.h5")
    other = tmp_path / "other.shard-00001-of-00003.h5"
    line = refused(runner, "merge", parts[0], other, parts[2], "-o", tmp_path / "m.h5")
    assert f"{other} was made with other settings than {parts[0]}: " in line and named in line
    assert not (tmp_path / "m.h5").exists()


def test_an_artifact_that_is_not_a_shard(runner, digits, tmp_path):
    root, parts = digits
    line = refused(runner, "merge", parts[0], root / "single.h5", "-o", tmp_path / "m.h5")
    assert f"{root / 'single.h5'}: not a shard (made by extract without --shard)" in line
    other = write_features(tmp_path / "blobs.h5")
    assert f"{other}: not a shard (made by 'test')" in refused(runner, "merge", *parts, other, "-o", tmp_path / "m.h5")
    assert "is one of the shards being merged" in refused(runner, "merge", *parts, "-o", parts[0], "--force")
    (tmp_path / "m.h5").write_bytes(b"keep")
    assert "exists; pass --force" in refused(runner, "merge", *parts, "-o", tmp_path / "m.h5")
    assert (tmp_path / "m.h5").read_bytes() == b"keep"


def test_a_shard_whose_rows_do_not_add_up_is_refused(digits, tmp_path):
    _, parts = digits
    from deephash_cli.artifacts import read_summary

    files = [shards.ShardFile(str(p), read_summary(p)) for p in parts]
    files[1].summary["splits"]["train"]["rows"] -= 1  # as if rows were lost
    with pytest.raises(DeephashError, match=r"split train holds 5 rows and 0 skipped images, but shard 1/3 "
                                            r"covers rows 9..14 \(6 images\)"):
        shards.plan_merge(files)


# --------------------------------------------------------------------------- indexes


def _search(runner, index, queries):
    result = invoke(runner, "search", index, "--queries", queries, "--query-split", "test", "-k", "5", "--json")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.strip().splitlines()]


def test_indexes_of_merged_shards_answer_like_one_process(runner, digits, tmp_path):
    root, parts = digits
    ok("merge", *parts, "-o", tmp_path / "merged.h5")
    ok("index", root / "single.h5", "-o", tmp_path / "single.index.h5", "--tie-order", "database")
    ok("index", tmp_path / "merged.h5", "-o", tmp_path / "merged.index.h5", "--tie-order", "database")
    reference = _search(runner, tmp_path / "single.index.h5", root / "single.h5")
    assert _search(runner, tmp_path / "merged.index.h5", root / "single.h5") == reference
    # Shuffled (the default): the same items get the same seeded order, so the same answers too.
    ok("index", root / "single.h5", "-o", tmp_path / "single.shuffled.h5")
    ok("index", tmp_path / "merged.h5", "-o", tmp_path / "merged.shuffled.h5")
    assert _search(runner, tmp_path / "merged.shuffled.h5", root / "single.h5") == \
        _search(runner, tmp_path / "single.shuffled.h5", root / "single.h5")
    # Shard 0's index, then the other shards' train splits added: the same items in the same order.
    ok("index", parts[0], "-o", tmp_path / "grown.index.h5", "--tie-order", "database")
    for part in parts[1:]:
        ok("index", tmp_path / "grown.index.h5", "--add", part, "--splits", "train")
    assert _search(runner, tmp_path / "grown.index.h5", root / "single.h5") == reference
