"""Hostile conditions and hand-edited artifacts (issue 15, second part): a full disk or file size limit, SIGTERM,
outputs that cannot be written, two options naming one file, doctored artifact fields, mixed image sizes for
the pixels backbone, dangling symlinks, and what the help, the evaluation table and the training log show.

Every case ends in one `error:` line (status 2, or 143 for SIGTERM) with no temp file left, or in a clean
result: never a traceback, an internal error or a crash.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from deephash_cli import artifacts, errors, train_stages
from deephash_cli.artifacts import ArtifactWriter, Split, read_artifact, sha256_file
from deephash_cli.errors import DeephashError, Terminated
from tests.conftest import invoke, write_features

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def temp_files(folder: Path) -> list[Path]:
    """Leftover temp files of interrupted writes (``.NAME.XXXXXXXX.tmp``) anywhere under ``folder``."""
    return [p for p in folder.rglob(".*") if p.name.endswith(".tmp")]


def one_error_line(result, status: int = 2) -> str:
    """The single `error:` line a failed command printed (after any progress bars)."""
    assert result.exit_code == status, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert sum(line.startswith("error:") for line in lines) == 1
    return lines[-1]


def run_cli(args, *, cwd: Path, limit_bytes: int | None = None, env_extra=None, stdin=None, timeout=600):
    """``python -m deephash_cli ARGS`` in a fresh process (this checkout's code), optionally under a file size
    limit (RLIMIT_FSIZE, as `ulimit -f`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env_extra or {})}

    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "deephash_cli", *map(str, args)], cwd=cwd, env=env, stdin=stdin,
                          capture_output=True, timeout=timeout, preexec_fn=limit)


def error_lines(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode(errors="replace").replace("\r", "\n").splitlines()
            if line.startswith("error:")]


@pytest.fixture
def model_file(runner, tmp_path, features_file):
    """A small mlp hash model trained on the synthetic features."""
    out = tmp_path / "hash.model.h5"
    result = invoke(runner, "train-hash", features_file, "--bits", "8", "--hidden", "16", "--epochs", "1", "-o", out)
    assert result.exit_code == 0, result.output
    return out


def codes_file(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with ArtifactWriter(path, kind="codes", class_names=["a", "b"], config={}, command="pytest") as writer:
        for name, n in (("train", 20), ("test", 6)):
            writer.write_split(name, Split(np.arange(n) % 2, np.arange(n),
                                           codes=rng.integers(0, 256, (n, 1), dtype=np.uint8), bits=8))
    return path


# --------------------------------------------------------------------------- #1 disk full / file size limit


def test_extract_under_a_file_size_limit_is_one_error_without_crash_or_temp_file(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"TMPDIR": str(tmpdir)}
    for output in ("new.h5", "-"):
        result = run_cli(["extract", "--dataset", "digits", "--workers", "0", "-o", output], cwd=tmp_path,
                         limit_bytes=500 * 1024, env_extra=env)
        assert result.returncode == 2, result.stderr.decode()[-2000:]  # was 139: a segfault at exit
        lines = error_lines(result.stderr)
        assert len(lines) == 1, result.stderr.decode()[-2000:]
        assert "file size limit" in lines[0] and ("new.h5" in lines[0] or "stdout" in lines[0])
        assert b"Traceback" not in result.stderr and b"internal error" not in result.stderr
    assert not (tmp_path / "new.h5").exists() and not temp_files(tmp_path)
    assert not list(tmpdir.glob("deephash-stream-*"))  # the stream's temp folder is gone too


WRITER_SCRIPT = """
import sys, numpy as np
from deephash_cli.artifacts import ArtifactWriter, Split
from deephash_cli.errors import DeephashError
try:
    with ArtifactWriter(sys.argv[1], kind="features", class_names=["a", "b"], config={"x": 1},
                        command="test") as writer:
        split = writer.create_split("train", 4000, dim=64, paths=True)
        for start in range(0, 4000, 500):
            rows = np.arange(start, start + 500)
            split.write(np.ones((500, 64), np.float32), rows % 2, rows, [f"item{i}" for i in rows])
        writer.write_history([{"epoch": 1, "loss": 0.5}])
except DeephashError as err:
    print("error:", err)
    sys.exit(2)
"""


@pytest.mark.parametrize("limit_bytes", [1024, 8 * 1024, 100 * 1024, 900 * 1024])
def test_artifact_writer_at_any_stage_of_a_full_disk_fails_cleanly(tmp_path, limit_bytes):
    """The limit is hit while creating the file, its metadata, the data or on close: always a DeephashError,
    never a failed HDF5 close that crashes the interpreter at exit (HDF5 2.0)."""
    script = tmp_path / "write.py"
    script.write_text(WRITER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "out.h5")], cwd=tmp_path, env=env,
                            capture_output=True, timeout=300,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes)))
    assert result.returncode == 2, (result.returncode, result.stderr.decode()[-2000:])
    assert b"out.h5: write failed: file size limit exceeded" in result.stdout
    assert result.stderr == b""  # no "Exception ignored" from h5py, no traceback
    assert not (tmp_path / "out.h5").exists() and not temp_files(tmp_path)


def test_storage_errors_are_recognised_from_errno_or_message():
    assert "no space left" in artifacts.storage_error(OSError(28, "No space left on device"))
    assert "file size limit" in artifacts.storage_error(RuntimeError("write failed ... errno = 27, error message"))
    assert "file size limit" in artifacts.storage_error(
        RuntimeError("unable to resize file </torch_1_2_0> to the right size: File too large (27)"))
    assert artifacts.storage_error(OSError(2, "No such file")) is None
    assert artifacts.storage_error(ValueError("errno = 28")) is None


def test_a_full_disk_outside_artifacts_is_one_error_line_not_an_internal_error(runner, features_file, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", "/data/report.png")

    monkeypatch.setattr(train_stages, "prepare_splits", full)
    result = invoke(runner, "train-hash", features_file, "-o", features_file.with_name("h.h5"))
    assert one_error_line(result) == "error: /data/report.png: write failed: no space left on device"


# --------------------------------------------------------------------------- #3 failures while opening the output


def test_input_deleted_during_training_still_writes_the_output_with_the_hash_read(runner, tmp_path, monkeypatch):
    features = write_features(tmp_path / "f.h5")
    digest = sha256_file(features)
    original = train_stages._progress_fit

    def deleting(*args, **kwargs):
        features.unlink()  # the input goes away while the stage trains
        return original(*args, **kwargs)

    monkeypatch.setattr(train_stages, "_progress_fit", deleting)
    out = tmp_path / "h.model.h5"
    result = invoke(runner, "train-hash", features, "--bits", "8", "--epochs", "1", "-o", out)
    assert result.exit_code == 0, result.output
    header = artifacts.read_header(out)
    assert header["parent_sha256"] == digest and header["parent"] == str(features)
    assert not temp_files(tmp_path)


def test_a_failure_opening_the_temp_file_leaves_no_temp_file(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("cannot open")

    monkeypatch.setattr(artifacts.h5py, "File", broken)
    with pytest.raises(OSError, match="cannot open"):
        with ArtifactWriter(tmp_path / "a.h5", kind="features", class_names=["a"], config={}):
            pass
    assert not temp_files(tmp_path) and not (tmp_path / "a.h5").exists()


def test_a_vanished_parent_is_named_and_leaves_no_temp_file(tmp_path):
    with pytest.raises(DeephashError, match=r"gone\.h5: no such file \(the input vanished\)"):
        with ArtifactWriter(tmp_path / "a.h5", kind="features", class_names=["a"], config={},
                            parent=tmp_path / "gone.h5"):
            pass
    assert not temp_files(tmp_path)


def test_an_output_name_that_is_not_utf8_is_refused_before_training(runner, tmp_path, features_file, monkeypatch):
    monkeypatch.setattr(train_stages, "_progress_fit", lambda *a, **k: pytest.fail("trained before checking"))
    out = tmp_path / os.fsdecode(b"\xff.h5")
    result = invoke(runner, "train-hash", features_file, "-o", out)
    line = one_error_line(result)
    assert "not valid UTF-8" in line and "\\xff.h5" in line
    assert not temp_files(tmp_path) and not out.exists()


def test_a_command_line_that_is_not_utf8_is_stored_escaped(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["deephash", "extract", "--data-dir", os.fsdecode(b"/data/\xfe")])
    with ArtifactWriter(tmp_path / "a.h5", kind="features", class_names=["a"], config={}) as writer:
        writer.write_split("train", Split(np.zeros(1, np.int64), np.zeros(1, np.int64),
                                          features=np.zeros((1, 2), np.float32)))
    assert artifacts.read_header(tmp_path / "a.h5")["command"] == "deephash extract --data-dir '/data/\\xfe'"


def test_image_and_class_folder_names_that_are_not_utf8_are_stored_escaped(runner, tmp_path):
    root = tmp_path / "imgs"
    for cls in ("a", os.fsdecode(b"b\xfe")):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / "train" / cls / f"{i}.png")
    (root / "train" / "a" / "0.png").rename(root / "train" / "a" / os.fsdecode(b"\xff.png"))
    out = tmp_path / "f.h5"
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", root, "--test-fraction", "0.25",
                    "-o", out)
    assert result.exit_code == 0, result.output
    art = read_artifact(out)
    assert art.class_names == ["a", "b\\xfe"]
    names = [name for split in art.splits.values() for name in split.names()]
    assert "train/a/\\xff.png" in names and "train/b\\xfe/0.png" in names


# --------------------------------------------------------------------------- #5 SIGTERM


def _wait_for(path: Path, text: str, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        assert process.poll() is None, path.read_text(errors="replace")
        time.sleep(0.2)
    pytest.fail(f"'{text}' never appeared in {path}")


@pytest.mark.parametrize("streamed", [False, True])
def test_sigterm_cleans_up_and_exits_143(tmp_path, streamed):
    features = write_features(tmp_path / "f.h5", n_train=60)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    err = tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir)}
    source = "-" if streamed else features
    with open(err, "wb") as stderr, open(features, "rb") as stdin:
        process = subprocess.Popen([sys.executable, "-m", "deephash_cli", "train-triplet", str(source),
                                    "--epochs", "100000", "--margin", "0.2", "-o", str(tmp_path / "emb.h5")],
                                   cwd=tmp_path, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr)
        try:
            _wait_for(err, "epoch 1:", process)
            if streamed:
                assert list(tmpdir.glob("deephash-stream-*"))  # the stdin spool exists while it trains
            process.send_signal(signal.SIGTERM)
            status = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = err.read_text(errors="replace")
    assert status == 143, text[-2000:]
    assert error_lines(err.read_bytes()) == ["error: terminated (SIGTERM); unfinished outputs were removed"]
    assert "Traceback" not in text
    assert not (tmp_path / "emb.h5").exists() and not temp_files(tmp_path)
    assert not list(tmpdir.glob("deephash-stream-*"))  # the stdin spool is gone


def test_a_signal_inside_an_hdf5_write_callback_waits_for_a_safe_point():
    write = artifacts._GuardedFile.write

    class Frame:
        f_code = write.__code__

    errors.on_signal(signal.SIGTERM, Frame())  # deferred: raising inside HDF5's callback would break HDF5
    with pytest.raises(Terminated):
        errors.raise_pending()
    errors.raise_pending()  # raised once
    with pytest.raises(Terminated):
        errors.on_signal(signal.SIGTERM, None)
    with pytest.raises(KeyboardInterrupt):
        errors.on_signal(signal.SIGINT, None)


def test_a_pending_signal_discards_the_output_being_written(tmp_path):
    class Frame:
        f_code = artifacts._GuardedFile.write.__code__

    with pytest.raises(Terminated):
        with ArtifactWriter(tmp_path / "a.h5", kind="features", class_names=["a"], config={}) as writer:
            errors.on_signal(signal.SIGTERM, Frame())
            writer.write_split("train", Split(np.zeros(1, np.int64), np.zeros(1, np.int64),
                                              features=np.zeros((1, 2), np.float32)))
    assert not (tmp_path / "a.h5").exists() and not temp_files(tmp_path)


# --------------------------------------------------------------------------- #7 two outputs, one file


def test_output_and_save_model_naming_one_file_are_refused_up_front(runner, tmp_path, features_file, monkeypatch):
    monkeypatch.setattr(train_stages, "_progress_fit", lambda *a, **k: pytest.fail("trained before checking"))
    out = tmp_path / "same.h5"
    for other in (out, tmp_path / "." / "same.h5"):
        result = invoke(runner, "train-triplet", features_file, "-o", out, "--save-model", other)
        assert "--output and --save-model name the same file" in one_error_line(result)
    assert not out.exists() and not temp_files(tmp_path)


def test_search_grid_and_html_page_naming_one_file_are_refused(runner, tmp_path):
    result = invoke(runner, "search", tmp_path / "none.index.h5", "--queries", tmp_path / "q.h5",
                    "--grid", tmp_path / "page" / "index.html", "--html", tmp_path / "page")
    assert "--grid and --html name the same file" in one_error_line(result)


# --------------------------------------------------------------------------- #8 hand-edited artifact fields


def _set(path: str, value):
    def mutate(f):
        group, _, name = path.rpartition("/")
        f[group or "/"].attrs[name] = value
    return mutate


def _replace(path: str, value):
    def mutate(f):
        del f[path]
        f[path] = value
    return mutate


def _architecture(**changes):
    def mutate(f):
        architecture = json.loads(f["model"].attrs["architecture"])
        architecture.update(changes)
        f["model"].attrs["architecture"] = json.dumps(architecture)
    return mutate


FEATURE_CASES = [
    ("format_version-string", _set("format_version", "two"), "attribute 'format_version' must be an integer, found "
                                                             "the string 'two'"),
    ("format_version-float", _set("format_version", 2.5), "attribute 'format_version' must be an integer, found the "
                                                          "number 2.5"),
    ("index-bytes", _replace("train/index", np.array([b"x"] * 40)), "/train/index: expected (n,) int64, found (40,) |S1"),
    ("class_names-scalar", _replace("class_names", "cat"), "/class_names: expected (c,) UTF-8 strings, found ()"),
    ("class_names-ints", _replace("class_names", np.arange(4)), "/class_names: expected (c,) UTF-8 strings, found (4,) "
                                                                "int64"),
    ("split-is-a-dataset", _replace("test", np.zeros(3)), "/test: expected a group (a split"),
    ("config-deep-json", _set("config", "[" * 200_000 + "]" * 200_000), "attribute 'config' holds JSON nested too "
                                                                        "deeply"),
    ("config-json-list", _set("config", "[1, 2]"), "attribute 'config' must be a JSON object, found a JSON list"),
    ("features-float64-overflow", _replace("test/features", np.full((40, 16), 1e300)),
     "/test/features: 40 rows hold values beyond float32's range"),
]


@pytest.mark.parametrize("name, mutate, message", FEATURE_CASES, ids=[c[0] for c in FEATURE_CASES])
def test_hand_edited_features_fields_are_named(runner, tmp_path, features_file, name, mutate, message):
    with h5py.File(features_file, "r+") as f:
        mutate(f)
    result = invoke(runner, "evaluate", features_file)
    assert message in one_error_line(result)
    assert invoke(runner, "info", features_file).exit_code in (0, 2)  # never an internal error


CODES_CASES = [
    ("bits-string", _set("train/codes/bits", "8"), "/train/codes: attribute 'bits' must be an integer, found the "
                                                   "string '8'"),
    ("bits-float", _set("train/codes/bits", 8.5), "/train/codes: attribute 'bits' must be an integer, found the number "
                                                  "8.5"),
]


@pytest.mark.parametrize("name, mutate, message", CODES_CASES, ids=[c[0] for c in CODES_CASES])
def test_hand_edited_codes_fields_are_named(runner, tmp_path, name, mutate, message):
    path = codes_file(tmp_path / "c.h5")
    with h5py.File(path, "r+") as f:
        mutate(f)
    assert message in one_error_line(invoke(runner, "evaluate", path))
    assert invoke(runner, "info", path).exit_code in (0, 2)


MODEL_CASES = [
    ("architecture-list", _set("model/architecture", "[1, 2]"), "attribute 'architecture' must be a JSON object, "
                                                                "found a JSON list"),
    ("in_dim-string", _architecture(in_dim="16"), "architecture field 'in_dim' must be an integer, found the string "
                                                  "'16'"),
    ("in_dim-huge", _architecture(in_dim=2 ** 40), "architecture field 'in_dim' is 1099511627776 but parameter "
                                                   "'input_mean' has shape (16,)"),
    ("hidden-huge", _architecture(hidden=2 ** 40), "needs"),
    ("out_dim-boolean", _architecture(out_dim=True), "architecture field 'out_dim' must be an integer, found the "
                                                     "boolean True"),
    ("head-number", _architecture(head=5), "architecture field 'head' must be a string"),
    ("input-string", _architecture(input="features"), "architecture field 'input' must be a JSON object"),
    ("val_fraction-string", _architecture(val_fraction="0.1"), "architecture field 'val_fraction' must be a number"),
    ("nested-parameter-group", lambda f: f["model/parameters"].create_group("extra").create_dataset("x", data=[1]),
     "/model/parameters/extra: expected a dataset (one tensor; parameters hold no groups)"),
]


@pytest.mark.parametrize("name, mutate, message", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_hand_edited_model_fields_are_named(runner, tmp_path, features_file, model_file, name, mutate, message):
    with h5py.File(model_file, "r+") as f:
        mutate(f)
    result = invoke(runner, "encode", features_file, "--model", model_file, "-o", tmp_path / "codes.h5")
    line = one_error_line(result)
    assert message in line and str(model_file) in line
    assert invoke(runner, "info", model_file).exit_code in (0, 2)


def test_a_missing_head_field_is_named_before_building(tmp_path, model_file):
    with h5py.File(model_file, "r+") as f:
        _architecture()(f)
        architecture = json.loads(f["model"].attrs["architecture"])
        del architecture["out_dim"]
        f["model"].attrs["architecture"] = json.dumps(architecture)
    with pytest.raises(DeephashError, match="architecture lacks field 'out_dim'"):
        train_stages.load_model(model_file)


# --------------------------------------------------------------------------- #11 unwritable outputs, checked first


def test_an_output_name_too_long_is_refused_before_training(runner, tmp_path, features_file, monkeypatch):
    out = tmp_path / ("b" * 297 + ".h5")
    original = train_stages._progress_fit
    monkeypatch.setattr(train_stages, "_progress_fit", lambda *a, **k: pytest.fail("trained before checking"))
    result = invoke(runner, "train-hash", features_file, "-o", out)
    assert "the file name is 300 bytes long; the file system allows at most 255" in one_error_line(result)
    monkeypatch.setattr(train_stages, "_progress_fit", original)
    fits = tmp_path / ("a" * 250 + ".h5")  # 254 bytes: fine, though its temp file's name must be shortened
    result = invoke(runner, "train-hash", features_file, "--bits", "8", "--epochs", "1", "-o", fits)
    assert result.exit_code == 0, result.output
    assert fits.exists() and not temp_files(tmp_path)


def test_an_unwritable_output_folder_is_refused_before_training(runner, tmp_path, features_file, monkeypatch):
    folder = tmp_path / "readonly"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(artifacts.os, "access", lambda path, mode: False if Path(path) == folder
                        else real_access(path, mode))
    monkeypatch.setattr(train_stages, "_progress_fit", lambda *a, **k: pytest.fail("trained before checking"))
    result = invoke(runner, "train-hash", features_file, "-o", folder / "h.h5")
    assert one_error_line(result) == f"error: output folder {folder} is not writable (permission denied)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_folder_is_refused(runner, tmp_path, features_file):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = invoke(runner, "train-hash", features_file, "-o", folder / "h.h5")
        assert "is not writable" in one_error_line(result)
    finally:
        folder.chmod(0o755)


# --------------------------------------------------------------------------- #12 option ranges


@pytest.mark.parametrize("args, message", [
    (["--method", "dtsh", "--alpha", "-1"], "--alpha must be positive, got -1.0"),
    (["--ranking-margin", "-2"], "--ranking-margin must be positive, got -2.0"),
    (["--weight-decay", "-1"], "--weight-decay must be ≥ 0, got -1.0"),
    (["--method", "dtsh", "--lambda", "-0.5"], "--lambda must be ≥ 0, got -0.5"),
    (["--method", "dtsh", "--lam-warmup", "-1"], "--lam-warmup must be ≥ 0 epochs, got -1"),
])
def test_train_hash_option_ranges(runner, tmp_path, features_file, args, message):
    result = invoke(runner, "train-hash", features_file, *args, "-o", tmp_path / "h.h5")
    assert one_error_line(result) == f"error: {message}"


def test_finetune_checks_its_hash_options_before_any_work(runner, tmp_path):
    result = invoke(runner, "finetune", "--objective", "hash", "--ranking-margin", "0", "-o", tmp_path / "m.h5")
    assert one_error_line(result) == "error: --ranking-margin must be positive, got 0.0"


# --------------------------------------------------------------------------- #13 pixels and mixed image sizes


def test_pixels_refuses_mixed_image_sizes_without_image_size(runner, tmp_path):
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / "train" / cls / f"{i}.png")
    Image.new("RGB", (1, 1)).save(root / "train" / "a" / "00.png")  # sorts first
    args = ["extract", "--dataset", "imagefolder", "--data-dir", root, "--test-fraction", "0.4"]
    result = invoke(runner, *args, "-o", tmp_path / "f.h5")
    line = one_error_line(result)
    assert "00.png is 1×1" in line and "is 8×8" in line and "--image-size" in line
    assert not (tmp_path / "f.h5").exists()
    result = invoke(runner, *args, "--image-size", "8", "-o", tmp_path / "f.h5")
    assert result.exit_code == 0, result.output
    assert read_artifact(tmp_path / "f.h5").split("train").features.shape[1] == 3 * 8 * 8
    (root / "train" / "a" / "00.png").unlink()
    result = invoke(runner, *args, "-o", tmp_path / "g.h5")  # one size: the native size, as before
    assert result.exit_code == 0, result.output
    assert read_artifact(tmp_path / "g.h5").config["image_size"] == 8


# --------------------------------------------------------------------------- #15 dangling symlinks


def test_a_dangling_symlink_at_the_output_is_not_replaced_without_force(runner, tmp_path, features_file):
    link = tmp_path / "out.h5"
    link.symlink_to(tmp_path / "missing" / "target.h5")
    result = invoke(runner, "train-hash", features_file, "--bits", "8", "--epochs", "1", "-o", link)
    assert "out.h5 exists (a symbolic link to a missing file); pass --force" in one_error_line(result)
    assert link.is_symlink()
    result = invoke(runner, "plot-tsne", features_file, "-o", link)
    assert "exists (a symbolic link to a missing file)" in one_error_line(result)
    result = invoke(runner, "train-hash", features_file, "--bits", "8", "--epochs", "1", "-o", link, "--force")
    assert result.exit_code == 0, result.output
    assert not link.is_symlink() and read_artifact(link).kind == "model"


def test_writer_treats_a_symlink_appearing_while_writing_as_existing(tmp_path):
    out = tmp_path / "a.h5"
    with pytest.raises(DeephashError, match="appeared while writing"):
        with ArtifactWriter(out, kind="features", class_names=["a"], config={}) as writer:
            writer.write_split("train", Split(np.zeros(1, np.int64), np.zeros(1, np.int64),
                                              features=np.zeros((1, 2), np.float32)))
            out.symlink_to(tmp_path / "nowhere")
    assert out.is_symlink() and not temp_files(tmp_path)


# --------------------------------------------------------------------------- #16 messages, help, table, logs


def test_float64_features_beyond_float32_give_no_runtime_warning(runner, tmp_path, features_file):
    with h5py.File(features_file, "r+") as f:
        x = f["train/features"][()].astype(np.float64)
        x[3, 2] = 1e300
        del f["train/features"]
        f["train/features"] = x
    result = run_cli(["evaluate", features_file], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        f"error: {features_file}:/train/features: 1 rows hold values beyond float32's range (±3.4e38; first at "
        f"row 3, float64)"]


def test_an_empty_train_split_is_called_empty(runner, tmp_path):
    path = tmp_path / "e.h5"
    with ArtifactWriter(path, kind="features", class_names=["a", "b"], config={}) as writer:
        writer.write_split("train", Split(np.zeros(0, np.int64), np.zeros(0, np.int64),
                                          features=np.zeros((0, 4), np.float32)))
        writer.write_split("test", Split(np.arange(4) % 2, np.arange(4), features=np.ones((4, 4), np.float32)))
    for command in ("train-triplet", "train-hash"):
        result = invoke(runner, command, path, "-o", tmp_path / f"{command}.h5")
        assert one_error_line(result) == f"error: {path}: the train split is empty; training needs items of at " \
                                         f"least two classes"


def test_an_empty_test_split_is_kept_empty_by_training(runner, tmp_path):
    path = tmp_path / "e.h5"
    x, y = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2
    with ArtifactWriter(path, kind="features", class_names=["a", "b"], config={}) as writer:
        writer.write_split("train", Split(y, np.arange(40), features=x))
        writer.write_split("test", Split(np.zeros(0, np.int64), np.zeros(0, np.int64),
                                         features=np.zeros((0, 4), np.float32)))
    result = invoke(runner, "train-triplet", path, "--epochs", "1", "--margin", "0.2", "--dim", "8",
                    "-o", tmp_path / "emb.h5")
    assert result.exit_code == 0, result.output
    assert read_artifact(tmp_path / "emb.h5").split("test").features.shape == (0, 8)


def test_query_split_missing_names_the_split_and_those_present(runner, tmp_path, features_file):
    result = invoke(runner, "evaluate", features_file, "--query-split", "val")
    assert one_error_line(result) == f"error: {features_file}: --query-split val: no split 'val' (splits present: " \
                                     f"train, test)"
    result = invoke(runner, "evaluate", features_file, "--database-split", "val")
    assert "--database-split val names no split of it (splits present: train, test)" in one_error_line(result)


def test_help_shows_colons_literally_and_no_bool_types(runner):
    result = invoke(runner, "train-hash", "--help")
    assert result.exit_code == 0
    assert "START:END:EVERY" in result.stdout and "🔚" not in result.stdout
    result = invoke(runner, "--help")
    assert result.exit_code == 0 and "<bool>" not in result.stdout
    assert "<bool>" not in invoke(runner, "train-triplet", "--help").stdout


def test_command_summaries_are_whole_sentences(runner):
    from deephash_cli.cli import app

    for info in app.registered_commands:
        summary = info.help.split("\n\n")[0]
        assert "\n" not in summary and summary.endswith(("." , ")")), info.name
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", invoke(runner, "--help").stdout))
    assert "or --add newly extracted items to one." in text and "as a table (stdout), JSON lines" in text


@pytest.mark.parametrize("metric, shown, hidden", [
    ("map", ["mAP@all (expected)"], ["kNN accuracy", "precision@"]),
    ("knn", ["kNN accuracy (k=10)"], ["mAP@all", "precision@"]),
    ("precision@5,map@10", ["precision@5", "mAP@10"], ["mAP@all", "kNN accuracy"]),
])
def test_evaluate_reports_only_the_metrics_asked(runner, features_file, metric, shown, hidden):
    result = invoke(runner, "evaluate", features_file, "--metric", metric)
    assert result.exit_code == 0, result.output
    assert all(text in result.stderr for text in shown) and not any(text in result.stderr for text in hidden)
    assert "queries / database" in result.stderr
    data = json.loads(invoke(runner, "evaluate", features_file, "--metric", metric, "--json").stdout)
    assert data["metrics"] == metric.split(",")
    assert isinstance(data["map"], float) and isinstance(data["knn_accuracy"], float)  # kept for records, info, report


def test_recorded_evaluation_of_one_metric_is_read_by_info_and_report(runner, tmp_path, features_file):
    assert invoke(runner, "evaluate", features_file, "--metric", "knn", "--record").exit_code == 0
    info = invoke(runner, "info", features_file)
    assert info.exit_code == 0 and "kNN" in info.stdout
    report = invoke(runner, "report", tmp_path, "-o", tmp_path / "r.md")
    assert report.exit_code == 0, report.output


def test_training_prints_one_compact_line_per_epoch(runner, tmp_path, features_file):
    result = invoke(runner, "train-triplet", features_file, "--epochs", "2", "--margin", "0.2",
                    "-o", tmp_path / "emb.h5")
    assert result.exit_code == 0, result.output
    epochs = [line for line in result.stderr.splitlines() if re.search(r" epoch \d+:", line)]
    assert len(epochs) == 2 and "train_stages.py" not in result.stderr
    for n, line in enumerate(epochs, 1):
        assert re.fullmatch(rf"facenet margin 0\.2 epoch {n}: loss \S+, active \S+, val mAP \S+, \S+ s", line), line
