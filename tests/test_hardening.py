"""Hostile and damaged inputs (issue 15): decompression bombs, concurrent records, malformed sidecars, damaged
HDF5 files in a report, doctored CIFAR metadata, tiny t-SNE subsamples, empty class folders.

Every case ends in one `error:` line (status 2), a warning, or a skipped-and-listed file: never a traceback.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from deephash_cli import artifacts, datasets, records
from deephash_cli.artifacts import read_artifact
from deephash_cli.datasets import CorruptImageError, load_dataset, set_max_image_pixels
from deephash_cli.errors import DeephashError
from deephash_cli.records import add_record, read_records, read_records_checked, sidecar_path
from deephash_cli.tsne import stratified_subsample
from tests.conftest import invoke, write_features

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def png_declaring(width: int, height: int) -> bytes:
    """A 69-byte PNG whose header declares ``width`` × ``height`` pixels (its data is one pixel: PIL opens it)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)  # IHDR CRC
    return bytes(data)


def image_folder(root: Path, classes=("cat", "dog"), n_train=3, n_test=2, size=(12, 12)) -> Path:
    """ROOT/{train,test}/<class>/<i>.png of random pixels."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


PIXELS = ["--backbone", "pixels", "--image-size", "8", "--mean", "0.5", "--std", "0.25"]


@pytest.fixture
def pixel_limit():
    """Restores PIL's limit after a test that changes it."""
    yield
    set_max_image_pixels(datasets.DEFAULT_MAX_IMAGE_PIXELS)


# --------------------------------------------------------------------------- #2 decompression bombs


def test_image_over_the_pixel_limit_is_named_in_a_worker_and_skipped_with_skip_corrupt(runner, tmp_path):
    root = image_folder(tmp_path / "imgs")
    (root / "train" / "dog" / "bomb.png").write_bytes(png_declaring(20000, 10000))  # 2.2× PIL's limit: raises
    out = tmp_path / "f.h5"
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", root, *PIXELS, "--workers", "1",
                    "-o", out)
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("error: ") and "bomb.png: cannot decode image" in last
    assert "Traceback" not in result.output and "DecompressionBomb" not in result.output
    assert not out.exists()
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", root, *PIXELS, "--workers", "1",
                    "--skip-corrupt", "-o", out)
    assert result.exit_code == 0, result.output
    assert "skipped 1 undecodable" in result.stderr and "bomb.png" in result.stderr
    art = read_artifact(out)
    assert len(art.split("train")) == 6 and art.attrs["extraction"].count("bomb.png") == 1


def test_pixel_limit_is_exact_settable_and_can_be_lifted(tmp_path, pixel_limit):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path)  # 1,600 pixels
    assert datasets._open_image(path).size == (40, 40)
    set_max_image_pixels(1000)  # 1,600 lies between the limit and twice it, where PIL itself only warns
    assert datasets.max_image_pixels() == 1000
    with pytest.raises(CorruptImageError, match=r"big\.png: cannot decode image \(1,600 pixels exceed the limit "
                                                r"of 1,000 .*--max-image-pixels"):
        datasets._open_image(path)
    try:
        datasets._open_image(path)
    except CorruptImageError as err:
        assert err.path == str(path) and err.reason.startswith("1,600 pixels exceed the limit of 1,000")
    set_max_image_pixels(2000)
    assert datasets._open_image(path).size == (40, 40)
    set_max_image_pixels(None)
    assert datasets.max_image_pixels() is None
    (tmp_path / "bomb.png").write_bytes(png_declaring(20000, 10000))
    with pytest.raises(CorruptImageError, match="truncated"):  # no guard: it fails on its missing data instead
        datasets._open_image(tmp_path / "bomb.png")
    for bad in (0, -5, 2.5, True):
        with pytest.raises(DeephashError, match="--max-image-pixels must be a positive whole number"):
            set_max_image_pixels(bad)


def test_finetune_names_an_image_over_the_pixel_limit(runner, tmp_path):
    root = image_folder(tmp_path / "imgs", classes=("a", "b"), n_train=4, n_test=1)
    (root / "train" / "b" / "bomb.png").write_bytes(png_declaring(20000, 10000))
    out = tmp_path / "m.h5"
    result = invoke(runner, "finetune", "--dataset", "imagefolder", "--data-dir", root, "--weights", "none",
                    "--image-size", "16", "--classes-per-batch", "2", "--samples-per-class", "2", "--val-fraction",
                    "0.25", "--dim", "4", "--epochs", "1", "--device", "cpu", "-o", out)
    assert result.exit_code == 2, result.output
    assert "bomb.png: cannot decode image" in result.stderr and "Traceback" not in result.output
    assert not out.exists()


# --------------------------------------------------------------------------- #6 concurrent records

WRITER = textwrap.dedent("""
    import sys
    from deephash_cli.records import add_record
    artifact, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for i in range(count):
        add_record(artifact, {"setting": {"protocol": "splits", "distance": f"w{worker}-{i}"}, "map": 0.5,
                              "knn_accuracy": 0.5})
""")


def _record(name: str) -> dict:
    return {"setting": {"protocol": "splits", "distance": name}, "map": 0.5, "knn_accuracy": 0.5}


def test_concurrent_add_record_processes_keep_every_record(tmp_path):
    artifact = tmp_path / "a.h5"
    artifact.write_bytes(b"stand-in")
    workers, count = 4, 25
    processes = [subprocess.Popen([sys.executable, "-c", WRITER, str(artifact), str(w), str(count)], cwd=ROOT,
                                  stderr=subprocess.PIPE, text=True) for w in range(workers)]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    recorded = {r["setting"]["distance"] for r in read_records(artifact)}
    assert recorded == {f"w{w}-{i}" for w in range(workers) for i in range(count)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.h5.evals.json.lock", "a.h5", "a.h5.evals.json"]


def test_lock_fallback_without_fcntl_keeps_every_record_and_removes_its_file(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "fcntl", None, raising=False)
    artifact = tmp_path / "a.h5"

    def write(worker: int) -> None:
        for i in range(15):
            add_record(artifact, _record(f"t{worker}-{i}"))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(read_records(artifact)) == 60
    assert not records.lock_path(sidecar_path(artifact)).exists()


def test_lock_fallback_waits_for_a_live_lock_and_replaces_a_stale_one(tmp_path, monkeypatch):
    import os
    import time

    monkeypatch.setattr(records, "fcntl", None, raising=False)
    lock = tmp_path / ".x.lock"
    events = []

    def contender() -> None:
        with records._exclusive(lock):
            events.append("contender")

    with records._exclusive(lock):
        thread = threading.Thread(target=contender)
        thread.start()
        time.sleep(0.3)
        events.append("holder done")
    thread.join(timeout=30)
    assert events == ["holder done", "contender"] and not lock.exists()
    lock.write_text("")
    old = time.time() - 3600
    os.utime(lock, (old, old))  # a killed writer's leftover
    with records._exclusive(lock):
        assert lock.stat().st_mtime > old
    assert not lock.exists()


# --------------------------------------------------------------------------- #9 malformed records

GOOD = {"setting": {"protocol": "splits", "distance": "euclidean"}, "map": 0.75, "knn_accuracy": 0.5,
        "precision_at": {"100": 0.25}, "selection": "test vs train", "command": "deephash evaluate",
        "recorded": "2026-01-01T00:00:00Z", "artifact_sha256": "0" * 64}
BAD = [
    (["not", "a", "record"], "expected a JSON object, found a JSON array"),
    ({"map": 0.5, "knn_accuracy": 0.5}, "no 'setting'"),
    ({**GOOD, "setting": "splits"}, "'setting' is a JSON string, expected an object"),
    ({**GOOD, "setting": {"distance": "cosine"}}, "'setting' has no 'protocol'"),
    ({**GOOD, "setting": {"protocol": "splits", "distance": 3}}, "'setting.distance' is a JSON number"),
    ({**GOOD, "map": "0.9"}, "'map' is a JSON string, expected a number"),
    ({**GOOD, "map": True}, "'map' is a JSON boolean, expected a number"),
    ({k: v for k, v in GOOD.items() if k != "knn_accuracy"}, "no 'knn_accuracy'"),
    ({**GOOD, "precision_at": [0.1]}, "'precision_at' is a JSON array, expected an object of numbers"),
    ({**GOOD, "precision_at": {"100": None}}, "'precision_at.100' is a JSON null, expected a number"),
    ({**GOOD, "selection": 7}, "'selection' is a JSON number, expected a string"),
]


def _sidecar(artifact: Path, entries: list) -> Path:
    path = sidecar_path(artifact)
    path.write_text(json.dumps(entries))
    return path


def test_malformed_record_entries_are_skipped_with_their_reason(tmp_path):
    artifact = tmp_path / "a.h5"
    _sidecar(artifact, [GOOD, *[entry for entry, _ in BAD], {**GOOD, "setting": {**GOOD["setting"], "seed": 1}}])
    good, bad = read_records_checked(artifact)
    assert len(good) == 2 and good[0] == GOOD
    assert [position for position, _ in bad] == list(range(2, 2 + len(BAD)))
    for (_, reason), (_, expected) in zip(bad, BAD):
        assert reason.startswith(expected)
    assert read_records(artifact) == good
    # A sidecar that is not a list stays an error naming it.
    sidecar_path(artifact).write_text('{"setting": {}}')
    with pytest.raises(DeephashError, match=r"a\.h5\.evals\.json: expected a JSON list of evaluation results, "
                                            r"found a JSON object"):
        read_records_checked(artifact)


def test_add_record_keeps_malformed_entries_untouched(tmp_path):
    artifact = tmp_path / "a.h5"
    _sidecar(artifact, [BAD[0][0], BAD[1][0], BAD[5][0], GOOD])
    add_record(artifact, {**GOOD, "map": 0.9})  # same setting as GOOD and as the malformed BAD[5]: replaces both
    entries = json.loads(sidecar_path(artifact).read_text())
    assert entries == [BAD[0][0], BAD[1][0], {**GOOD, "map": 0.9}]


def test_info_and_report_survive_malformed_records(runner, tmp_path):
    features = write_features(tmp_path / "f.h5")
    assert invoke(runner, "evaluate", features, "--record").exit_code == 0
    entries = json.loads(sidecar_path(features).read_text())
    _sidecar(features, [*entries, {**entries[0], "map": "high", "setting": {"protocol": "pooled",
                                                                             "distance": "cosine"}},
                        {"setting": {"distance": "cosine"}}])
    info = invoke(runner, "info", features)
    assert info.exit_code == 0, info.output
    assert info.stdout.count("splits/euclidean: mAP") == 1 and "pooled/cosine" not in info.stdout
    assert "skipped entry 2 of" in info.stdout and "'map' is a JSON string, expected a number" in info.stdout
    result = invoke(runner, "report", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "warning: skipped f.h5.evals.json: entry 2 skipped: 'map' is a JSON string, expected a number",
        "warning: skipped f.h5.evals.json: entry 3 skipped: 'setting' has no 'protocol'"]
    text = (tmp_path / "report.md").read_text()
    skipped = text.split("## Skipped")[1]
    assert "- `f.h5.evals.json`: entry 2 skipped: 'map' is a JSON string, expected a number" in skipped
    assert f"| {entries[0]['map']:.4f} |" in text and "pooled/cosine" not in text


# --------------------------------------------------------------------------- #4 damaged artifacts in a report


def test_report_lists_an_hdf5_file_with_zeroed_internal_bytes_under_skipped(runner, tmp_path):
    good = write_features(tmp_path / "good.h5")
    damaged = bytearray(write_features(tmp_path / "damaged.h5").read_bytes())
    damaged[64:128] = bytes(64)  # past the superblock: h5py opens it, then fails deep inside (KeyError here)
    (tmp_path / "damaged.h5").write_bytes(bytes(damaged))
    result = invoke(runner, "report", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: skipped damaged.h5: ") and "Traceback" not in result.output
    text = (tmp_path / "report.md").read_text()
    assert "`good.h5`" in text and "- `damaged.h5`: " in text.split("## Skipped")[1]
    assert good.exists()


@pytest.mark.parametrize("error", [KeyError("Unable to synchronously open object (bad object header)"),
                                   OSError("Can't synchronously read data (bad global heap collection signature)"),
                                   RuntimeError("Unable to synchronously check link existence (wrong B-tree)")])
def test_report_skips_any_error_of_one_file(runner, tmp_path, monkeypatch, error):
    write_features(tmp_path / "good.h5")
    write_features(tmp_path / "odd.h5")
    read_summary = artifacts.read_summary

    def failing(path, *args, **kwargs):
        if Path(path).name == "odd.h5":
            raise error
        return read_summary(path, *args, **kwargs)

    monkeypatch.setattr(artifacts, "read_summary", failing)
    result = invoke(runner, "report", tmp_path)
    assert result.exit_code == 0, result.output
    reason = f"unreadable ({type(error).__name__}: {error})"
    assert result.stderr == f"warning: skipped odd.h5: {reason}\n"
    assert f"- `odd.h5`: {reason}" in (tmp_path / "report.md").read_text()


def test_report_skips_a_sidecar_that_cannot_be_read(runner, tmp_path, monkeypatch):
    features = write_features(tmp_path / "f.h5")
    assert invoke(runner, "evaluate", features, "--record").exit_code == 0

    def broken(artifact):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(records, "read_records_checked", broken)
    result = invoke(runner, "report", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stderr == "warning: skipped f.h5.evals.json: unreadable (PermissionError: [Errno 13] Permission " \
                            "denied)\n"
    assert "`f.h5`" in (tmp_path / "report.md").read_text()


# --------------------------------------------------------------------------- #10 doctored CIFAR metadata


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _tiny_cifar(root: Path, meta=None, labels=None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, size=(2, 3072), dtype=np.uint8),
                 "labels": labels if labels is not None else [0, 9]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    if isinstance(meta, bytes):
        (folder / "batches.meta").write_bytes(meta)
    else:
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


NAMES = [f"c{i}" for i in range(10)]


@pytest.mark.parametrize("meta, message", [
    (["airplane"] * 10, "not a CIFAR-10 batches.meta (expected a dict, found list)"),
    ({"num_cases_per_batch": 2}, "expected 'label_names' in CIFAR-10 batches.meta, found keys ['num_cases_per_batch"),
    ({"label_names": "airplane"}, "expected 'label_names' to be a non-empty list of strings, found str"),
    ({"label_names": [1, 2, 3]}, "expected 'label_names' to be a non-empty list of strings, found list of ['int']"),
    ({"label_names": []}, "expected 'label_names' to be a non-empty list of strings, found list"),
    ({"label_names": Evil()}, "not a CIFAR-10 batches.meta (UnpicklingError: refusing to load global "
                              "__builtin__.print)"),
    (b"\x80\x02}q\x00(X", "not a CIFAR-10 batches.meta ("),
    ({("a", "b"): NAMES, "label_names": NAMES, 3: 4, b"\xff": 1, "x": {}}, None),  # odd keys are fine
])
def test_malformed_cifar_meta_is_one_error_naming_the_file(runner, tmp_path, meta, message):
    _tiny_cifar(tmp_path / "data", meta)
    out = tmp_path / "c.h5"
    result = invoke(runner, "extract", "--dataset", "cifar10", "--data-dir", tmp_path / "data", "--backbone",
                    "pixels", "--mean", "0", "--std", "1", "-o", out)
    if message is None:
        assert result.exit_code == 0, result.output
        assert read_artifact(out).class_names == NAMES
        return
    assert result.exit_code == 2, result.output
    meta_path = tmp_path / "data" / "cifar-10-batches-py" / "batches.meta"
    assert result.stderr.startswith(f"error: {meta_path}: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "pwned" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("labels, message", [
    ([0, 10], "labels must lie in 0..9 (the 10 label_names of batches.meta), found 0..10"),
    (["a", "b"], "expected integer labels, found <U1"),
    ([[0], [1, 2]], "CIFAR batch 'data'/'labels' are not arrays (ValueError"),
])
def test_malformed_cifar_batch_is_one_error_naming_the_file(runner, tmp_path, labels, message):
    _tiny_cifar(tmp_path / "data", {"label_names": NAMES}, labels=labels)
    result = invoke(runner, "extract", "--dataset", "cifar10", "--data-dir", tmp_path / "data", "--backbone",
                    "pixels", "--mean", "0", "--std", "1", "-o", tmp_path / "c.h5")
    assert result.exit_code == 2, result.output
    assert "data_batch_1: " in result.stderr and message in result.stderr


# --------------------------------------------------------------------------- #14 t-SNE subsample size


def test_max_points_below_the_number_of_classes_takes_one_point_of_the_largest_classes():
    labels = np.repeat(np.arange(10), [5, 30, 5, 20, 5, 5, 5, 10, 5, 5])
    rows = stratified_subsample(labels, 3, seed=0)
    assert len(rows) == 3 and sorted(labels[rows].tolist()) == [1, 3, 7]
    ties = np.repeat(np.arange(10), 4)
    picks = {tuple(sorted(ties[stratified_subsample(ties, 4, seed=s)])) for s in range(20)}
    assert all(len(set(p)) == 4 for p in picks) and len(picks) > 1  # the seed breaks ties
    assert np.array_equal(stratified_subsample(ties, 4, seed=3), stratified_subsample(ties, 4, seed=3))


def test_many_small_classes_never_push_the_sample_over_max_points():
    labels = np.concatenate([np.zeros(1000, int), np.arange(1, 10)])  # one big class, nine singletons
    rows = stratified_subsample(labels, 12, seed=0)
    assert len(rows) == 12 and np.bincount(labels[rows]).tolist() == [3] + [1] * 9


@settings(max_examples=150, deadline=None)
@given(counts=st.lists(st.integers(1, 60), min_size=1, max_size=15), max_points=st.integers(1, 200),
       seed=st.integers(0, 2**16))
def test_subsample_size_is_exactly_min_n_max_points(counts, max_points, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    rows = stratified_subsample(labels, max_points, seed)
    assert len(rows) == min(len(labels), max_points) and len(np.unique(rows)) == len(rows)
    assert np.all(np.diff(rows) > 0) and rows.min() >= 0 and rows.max() < len(labels)
    present = len(np.unique(labels[rows]))
    assert present == min(len(counts), max_points)  # every class when it fits, else one point per class shown


def test_plot_tsne_honours_max_points_below_the_number_of_classes(runner, tmp_path):
    features = write_features(tmp_path / "f.h5", n_train=10, n_test=5, n_classes=8)
    result = invoke(runner, "plot-tsne", features, "-o", tmp_path / "t.png", "--max-points", "5", "--perplexity",
                    "2")
    assert result.exit_code == 0, result.output
    assert "t-SNE of 5 points" in result.stderr


# --------------------------------------------------------------------------- #16 empty class folders


def test_class_folder_empty_everywhere_is_left_out_with_a_warning(runner, tmp_path):
    root = image_folder(tmp_path / "imgs")
    (root / "train" / "bird").mkdir()
    (root / "test" / "bird").mkdir()
    (root / "train" / "bird" / "notes.txt").write_text("not an image")
    out = tmp_path / "f.h5"
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", root, *PIXELS, "--workers", "0",
                    "-o", out)
    assert result.exit_code == 0, result.output
    assert (f"warning: left out 1 class folder without images: {root / 'train' / 'bird'}, {root / 'test' / 'bird'}"
            in result.stderr)
    art = read_artifact(out)
    assert art.class_names == ["cat", "dog"] and art.config["split_left_out_empty"] == ["bird"]


def test_empty_class_folders_without_a_test_folder_are_left_out(tmp_path, capsys):
    root = tmp_path / "flat"
    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "empty").mkdir()
    data = load_dataset("imagefolder", str(root), test_fraction=0.4, seed=3)
    assert data.class_names == ["a", "b"] and len(data.train) + len(data.test) == 10
    assert data.split_info["left_out_empty"] == [".ipynb_checkpoints", "empty"]
    assert "left out 2 class folders without images" in capsys.readouterr().err


def test_empty_test_class_folder_of_a_class_with_training_images_is_fine(runner, tmp_path):
    root = image_folder(tmp_path / "imgs")
    for path in (root / "test" / "dog").iterdir():
        path.unlink()
    out = tmp_path / "f.h5"
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", root, *PIXELS, "--workers", "0",
                    "-o", out)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    art = read_artifact(out)
    assert art.class_names == ["cat", "dog"] and art.split("test").labels.tolist() == [0, 0]


def test_empty_train_class_folder_with_test_images_is_refused(runner, tmp_path):
    root = image_folder(tmp_path / "imgs")
    for path in (root / "train" / "dog").iterdir():
        path.unlink()
    out = tmp_path / "f.h5"
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", root, *PIXELS, "-o", out)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {root / 'train' / 'dog'}: no images (") and \
        f"but {root / 'test' / 'dog'} has 2; every class needs training images" in result.stderr
    assert not out.exists()


def test_max_image_pixels_option_refuses_and_lifts_the_limit(runner, tmp_path):
    root = image_folder(tmp_path / "imgs")
    big = root / "train" / "dog" / "big.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(big)  # 1,600 pixels
    out = tmp_path / "f.h5"
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", root, *PIXELS,
                    "--max-image-pixels", "1000", "-o", out)
    assert result.exit_code == 2
    assert "big.png: cannot decode image (1,600 pixels exceed the limit of 1,000" in result.stderr
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", root, *PIXELS,
                    "--max-image-pixels", "0", "-o", out)
    assert result.exit_code == 0, result.output
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", root, *PIXELS,
                    "--max-image-pixels", "-5", "-o", tmp_path / "g.h5")
    assert result.exit_code == 2 and "--max-image-pixels must be ≥ 0" in result.stderr
