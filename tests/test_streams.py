"""Chaining commands through pipes: '-' inputs from stdin, '-o -' outputs to stdout, and their errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deephash_cli.artifacts import HDF5_SIGNATURE, read_artifact, sha256_file
from tests.conftest import invoke

FAST = ["--epochs", "2", "--hidden", "16", "--device", "cpu"]
DEEPHASH = Path(sys.executable).with_name("deephash")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(runner, *args, stdin: bytes | None = None):
    from deephash_cli.cli import app

    return runner.invoke(app, [str(a) for a in args], input=stdin, catch_exceptions=False)


def test_stdin_input_records_dash_parent_with_the_streamed_bytes_hash(runner, tmp_path, features_file):
    data = features_file.read_bytes()
    out = tmp_path / "emb.h5"
    result = _run(runner, "train-triplet", "-", "-o", out, "--margin", "0.2", "--dim", "8", *FAST, stdin=data)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    art = read_artifact(out)
    assert art.attrs["parent"] == "-"
    assert art.attrs["parent_sha256"] == hashlib.sha256(data).hexdigest()
    assert {name: len(split) for name, split in art.splits.items()} == {"train": 144, "val": 16, "test": 40}
    # Same numbers as reading the file directly: streaming changes nothing but provenance.
    direct = tmp_path / "direct.h5"
    assert invoke(runner, "train-triplet", features_file, "-o", direct, "--margin", "0.2", "--dim", "8",
                  *FAST).exit_code == 0
    np.testing.assert_array_equal(read_artifact(direct).split("test").features, art.split("test").features)


def test_output_to_stdout_is_the_artifact_and_nothing_else(runner, tmp_path, features_file):
    result = invoke(runner, "train-triplet", features_file, "-o", "-", "--margin", "0.2", "--dim", "8", *FAST)
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes.startswith(HDF5_SIGNATURE)
    saved = tmp_path / "streamed.h5"
    saved.write_bytes(result.stdout_bytes)
    art = read_artifact(saved)
    assert art.kind == "embeddings" and art.split("test").features.shape == (40, 8)
    assert art.attrs["parent"] == str(features_file)  # absolute: a streamed child has no folder
    assert art.attrs["parent_sha256"] == sha256_file(features_file)
    assert "chosen margin" in result.stderr
    assert not list(tmp_path.glob(".*tmp"))


def test_save_model_to_stdout_and_encode_with_model_from_stdin(runner, tmp_path, features_file):
    emb = tmp_path / "emb.h5"
    result = invoke(runner, "train-triplet", features_file, "-o", emb, "--save-model", "-", "--margin", "0.2",
                    "--dim", "8", *FAST)
    assert result.exit_code == 0, result.stderr
    model_bytes = result.stdout_bytes
    assert model_bytes.startswith(HDF5_SIGNATURE) and emb.exists()
    out = tmp_path / "re-encoded.h5"
    encoded = _run(runner, "encode", features_file, "--model", "-", "-o", out, stdin=model_bytes)
    assert encoded.exit_code == 0, encoded.output
    art = read_artifact(out)
    # The model from stdin reproduces the embeddings train-triplet wrote, split by split.
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(art.split(split).features, read_artifact(emb).split(split).features, atol=1e-6)
    assert art.config["model"] == "-" and art.config["model_sha256"] == hashlib.sha256(model_bytes).hexdigest()


def test_train_hash_to_stdout_then_encode_matches_file_route(runner, tmp_path, features_file):
    streamed = invoke(runner, "train-hash", features_file, "-o", "-", "--bits", "8", *FAST)
    assert streamed.exit_code == 0, streamed.stderr
    model_file = tmp_path / "h.model.h5"
    assert invoke(runner, "train-hash", features_file, "-o", model_file, "--bits", "8", *FAST).exit_code == 0
    via_pipe, via_file = tmp_path / "a.h5", tmp_path / "b.h5"
    assert _run(runner, "encode", features_file, "--model", "-", "-o", via_pipe,
                stdin=streamed.stdout_bytes).exit_code == 0
    assert invoke(runner, "encode", features_file, "--model", model_file, "-o", via_file).exit_code == 0
    a, b = read_artifact(via_pipe), read_artifact(via_file)
    assert a.kind == "codes" and a.split("test").codes.shape == (40, 1)
    np.testing.assert_array_equal(a.split("test").codes, b.split("test").codes)


def test_evaluate_and_info_read_stdin(runner, features_file):
    data = features_file.read_bytes()
    piped = json.loads(_run(runner, "evaluate", "-", "--json", stdin=data).stdout)
    direct = json.loads(invoke(runner, "evaluate", features_file, "--json").stdout)
    assert piped["map"] == pytest.approx(direct["map"]) and piped["knn_accuracy"] == direct["knn_accuracy"]
    assert piped["file"] == "-" and piped["queries"] == 40 and piped["database"] == 160
    info = json.loads(_run(runner, "info", "-", "--json", stdin=data).stdout)
    assert info["file"] == "-" and info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["splits"]["train"]["shape"] == [160, 16]


def test_plot_tsne_streams_png_and_has_a_default_output(runner, tmp_path, features_file, monkeypatch):
    import sklearn.manifold  # noqa: F401 - load its OpenMP runtime so the limit below reaches it
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # t-SNE's OpenMP threads crawl on a busy machine
        result = invoke(runner, "plot-tsne", features_file, "-o", "-", "--max-points", "40", "--perplexity", "5")
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes.startswith(PNG_SIGNATURE)
    # The derived default, refused before any work when it exists.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "features.tsne-val.png").write_bytes(b"old")
    result = invoke(runner, "plot-tsne", features_file, "--split", "val")
    assert result.exit_code == 2
    assert result.stderr == f"error: {os.path.join('artifacts', 'features.tsne-val.png')} exists; pass --force to " \
                            f"overwrite it\n"


def test_default_output_for_stdin_is_named_after_its_hash_and_never_overwritten(runner, tmp_path, features_file,
                                                                              monkeypatch):
    data = features_file.read_bytes()
    monkeypatch.chdir(tmp_path)
    args = ["train-hash", "-", "--bits", "8", *FAST]
    expected = Path("artifacts") / f"stdin-{hashlib.sha256(data).hexdigest()[:8]}.hash-triplet-ranking-8.model.h5"
    first = _run(runner, *args, stdin=data)
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == str(expected) and expected.exists()
    again = _run(runner, *args, stdin=data)
    assert again.exit_code == 2 and f"{expected} exists; pass --force to overwrite it" in again.stderr


@pytest.mark.parametrize("args, stdin, message", [
    (["train-triplet", "-", "-o", "{tmp}/e.h5"], b"garbage bytes, not HDF5",
     "error: stdin: not an HDF5 file (expected a deephash artifact"),
    (["evaluate", "-"], b"", "error: stdin: empty (expected a deephash artifact streamed on stdin)"),
    (["encode", "-", "--model", "-", "-o", "{tmp}/c.h5"], "features",
     "error: stdin can feed only one input ('-' given twice)"),
    (["train-triplet", "{features}", "-o", "-", "--save-model", "-"], None,
     "error: stdout can carry only one output ('-' given for two outputs)"),
    (["evaluate", "-", "--record"], "features", "error: --record stores the result next to the artifact file"),
])
def test_stream_errors(runner, tmp_path, features_file, args, stdin, message):
    args = [a.format(tmp=tmp_path, features=features_file) for a in args]
    data = features_file.read_bytes() if stdin == "features" else stdin
    result = _run(runner, *args, stdin=data)
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert result.stdout_bytes == b""
    assert not [p for p in tmp_path.iterdir() if p.name not in ("features.h5",)]


def test_non_artifact_hdf5_on_stdin_is_named_stdin(runner, tmp_path):
    import h5py

    with h5py.File(tmp_path / "plain.h5", "w") as handle:
        handle["x"] = np.arange(3)
    result = _run(runner, "info", "-", stdin=(tmp_path / "plain.h5").read_bytes())
    assert result.exit_code == 2
    assert result.stderr.startswith("error: stdin: not a deephash artifact (expected attribute format='deephash'")


# --------------------------------------------------------------------------- real shell pipes


def _shell(script: str, cwd: Path, tmpdir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmpdir), "DH": str(DEEPHASH)}
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def shell_dirs(tmp_path):
    if not DEEPHASH.exists():
        pytest.skip(f"console script {DEEPHASH} not installed")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    return tmp_path, scratch


def test_real_pipe_extract_into_train_triplet(shell_dirs):
    cwd, scratch = shell_dirs
    # tee keeps a copy of the streamed features so the recorded parent hash can be checked.
    result = _shell('set -o pipefail; "$DH" extract --dataset digits --limit-per-class 20 -o - | tee streamed.h5 | '
                    '"$DH" train-triplet - -o emb.h5 --epochs 1 --margin 0.2 --dim 8 --hidden 16 --device cpu',
                    cwd, scratch)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "emb.h5"
    art = read_artifact(cwd / "emb.h5")
    # digits, 20 per class per split: train 200 -> 180 train + 20 val (10%, stratified), test 200.
    assert {name: len(split) for name, split in art.splits.items()} == {"train": 180, "val": 20, "test": 200}
    assert np.bincount(art.split("val").labels).tolist() == [2] * 10
    assert art.attrs["parent"] == "-"
    assert art.attrs["parent_sha256"] == sha256_file(cwd / "streamed.h5")
    assert art.config["source"]["dataset"] == "digits" and art.config["input"]["dim"] == 3 * 8 * 8
    assert not list(scratch.glob("deephash-stream-*"))


def test_real_pipe_broken_by_the_reader(shell_dirs):
    cwd, scratch = shell_dirs
    # `head -c 0` exits at once; pipes here buffer over 1 MB, so a reader that quits after 100 bytes could
    # still let the whole small artifact through. The producer must fail with one line, no traceback.
    result = _shell('"$DH" extract --dataset digits --limit-per-class 5 -o - 2> producer.err | head -c 0; '
                    'echo "${PIPESTATUS[0]}" > producer.rc', cwd, scratch)
    assert result.returncode == 0
    assert (cwd / "producer.rc").read_text().strip() == "2"
    errors = [line for line in (cwd / "producer.err").read_text().splitlines() if line.startswith("error:")]
    assert errors == ["error: stdout: broken pipe, the reading command exited before the artifact was fully "
                      "written"]
    assert "Traceback" not in (cwd / "producer.err").read_text()
    assert "Exception ignored" not in (cwd / "producer.err").read_text()
    assert not list(scratch.glob("deephash-stream-*"))
