"""deephash finetune end to end on a tiny image folder: artifact, extract --model, resume, torchrun/DDP, errors.

The backbone is MobileNetV2 at 16 px from a "calibrated" random init (BatchNorm statistics measured on
random images, so frozen BN behaves like pretrained BN), 3 classes × 8 train images.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deephash_cli.artifacts import read_artifact, read_checkpoint, sha256_file
from tests.conftest import invoke

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """ROOT/data/{train,test}/class{0,1,2}/*.png and ROOT/calibrated.pth (a full mobilenet_v2 state_dict)."""
    import torchvision

    root = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 3)):
        for c, colour in enumerate(COLOURS):
            folder = root / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (12, 12, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 16, 16))
    torch.save(model.state_dict(), root / "calibrated.pth")
    return root


def args(root: Path, *extra: str) -> list[str]:
    """A finetune command line on the tiny folder: P×K = 3×2 (even, so 2 processes split it)."""
    return ["finetune", "--dataset", "imagefolder", "--data-dir", str(root / "data"), "--weights",
            str(root / "calibrated.pth"), "--image-size", "16", "--classes-per-batch", "3", "--samples-per-class",
            "2", "--val-fraction", "0.25", "--dim", "8", "--lr-backbone", "1e-3", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def reference(workspace) -> Path:
    """An uninterrupted 2-epoch triplet run (the reference for resume, DDP and extract)."""
    from typer.testing import CliRunner

    out = workspace / "reference.model.h5"
    result = invoke(CliRunner(), *args(workspace, "--epochs", "2", "-o", str(out)))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    return out


def _parameters(path: Path) -> dict[str, np.ndarray]:
    return read_artifact(path).parameters


def test_model_artifact_holds_backbone_head_and_a_checkpoint(reference):
    artifact = read_artifact(reference)
    architecture = artifact.model_attrs
    assert architecture["type"] == "finetuned" and architecture["backbone"] == "mobilenet_v2"
    assert architecture["image_size"] == 16 and architecture["head"]["out_dim"] == 8
    assert architecture["produces"] == "embeddings" and architecture["freeze_bn"] is True
    assert any(name.startswith("backbone.features.") for name in artifact.parameters)
    assert "head.input_mean" in artifact.parameters and "head.net.weight" in artifact.parameters
    assert [row["epoch"] for row in artifact.history] == [1, 2]
    state, arrays = read_checkpoint(reference)
    assert state["epoch"] == 2 and state["optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert {"rng/generator", "rng/torch"} <= set(arrays)
    assert any(name.startswith("optimizer/") and name.endswith("exp_avg") for name in arrays)
    assert artifact.config["best_epoch"] == state["best_epoch"] in (1, 2)


def test_extract_with_the_model_embeds_every_split_like_the_model(runner, workspace, reference):
    from deephash_cli.extract import make_transform
    from deephash_cli.finetune import load_finetuned

    out = workspace / "embeddings.h5"
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", workspace / "data", "--model",
                    reference, "--device", "cpu", "--workers", "0", "-o", out)
    assert result.exit_code == 0, result.output
    art = read_artifact(out)
    assert art.kind == "embeddings" and art.split("train").features.shape == (24, 8)
    assert art.split("test").features.shape == (9, 8)
    np.testing.assert_allclose(np.linalg.norm(art.split("test").features, axis=1), 1.0, atol=1e-5)
    model, arch = load_finetuned(reference)
    transform = make_transform(16, arch["mean"], arch["std"])
    image = Image.open(workspace / "data" / "test" / "class1" / "0.png").convert("RGB")
    with torch.no_grad():
        expected = model(transform(image)[None]).numpy()[0]
    np.testing.assert_allclose(art.split("test").features[3], expected, atol=1e-5)
    report = json.loads(invoke(runner, "evaluate", out, "--json").stdout)
    assert report["database"] == 24 and 0 < report["map"] <= 1
    clash = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", workspace / "data", "--model",
                   reference, "--image-size", "32", "-o", workspace / "clash.h5")
    assert clash.exit_code == 2 and "--image-size 32 (the model's is 16)" in clash.stderr


def test_resume_after_a_kill_ends_exactly_like_the_uninterrupted_run(runner, workspace, reference, monkeypatch):
    from deephash_cli import finetune

    out = workspace / "killed.model.h5"
    original = finetune.item_seed

    def killed_in_epoch_two(seed, epoch, step, position):
        if epoch == 2 and step == 2:
            raise KeyboardInterrupt
        return original(seed, epoch, step, position)

    monkeypatch.setattr(finetune, "item_seed", killed_in_epoch_two)
    result = invoke(runner, *args(workspace, "--epochs", "2", "-o", str(out)))
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert read_checkpoint(out)[0]["epoch"] == 1  # the last completed epoch
    monkeypatch.setattr(finetune, "item_seed", original)
    result = invoke(runner, *args(workspace, "--epochs", "2", "-o", str(out), "--resume"))
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stderr
    expected, resumed = _parameters(reference), _parameters(out)
    assert expected.keys() == resumed.keys()
    for name in expected:
        np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)
    _, expected_ckpt = read_checkpoint(reference)
    _, resumed_ckpt = read_checkpoint(out)
    for name in expected_ckpt:
        np.testing.assert_array_equal(resumed_ckpt[name], expected_ckpt[name], err_msg=name)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rows]  # noqa: E731
    assert strip(read_artifact(out).history) == strip(read_artifact(reference).history)


def test_resume_with_another_configuration_names_the_keys(runner, workspace, reference):
    before = reference.read_bytes()
    result = invoke(runner, *args(workspace, "--epochs", "3", "-o", str(reference), "--resume", "--lr", "0.01",
                                  "--dim", "4"))
    assert result.exit_code == 2
    assert "another configuration: dim 8 (checkpoint) vs 4 (now); lr 0.001 (checkpoint) vs 0.01 (now)" in result.stderr
    assert reference.read_bytes() == before


def test_step_decay_is_logged_and_part_of_the_configuration(runner, workspace, reference, tmp_path):
    out = tmp_path / "decay.model.h5"
    result = invoke(runner, *args(workspace, "--epochs", "2", "--lr-milestones", "1", "--lr-gamma", "0.5",
                                  "-o", str(out)))
    assert result.exit_code == 0, result.output
    assert [row["lr_factor"] for row in read_artifact(out).history] == [1.0, 0.5]
    state, _ = read_checkpoint(out)
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == pytest.approx([5e-4, 5e-4])
    # A run without a schedule fingerprints no schedule keys; adding one on --resume is a change of config.
    copy = tmp_path / "copy.model.h5"
    copy.write_bytes(reference.read_bytes())
    result = invoke(runner, *args(workspace, "--epochs", "3", "--lr-milestones", "2", "-o", str(copy), "--resume"))
    assert result.exit_code == 2 and "lr_milestones None (checkpoint) vs [2] (now)" in result.stderr


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Smooth and slow enough not to be chaotic: the random backbone's gradients are huge, and with a larger
# backbone lr the float noise of batch-size-dependent conv kernels (a shard of 3 vs a batch of 6) grows
# exponentially. SGD (not Adam) so that a wrongly scaled gradient would show.
DDP_ARGS = ("--epochs", "2", "--optimizer", "sgd", "--lr", "1e-3", "--lr-backbone", "1e-7", "--loss", "hoffer",
            "--miner", "all")


def test_torchrun_two_cpu_processes_match_one_process(runner, workspace):
    single, out = workspace / "single.model.h5", workspace / "ddp.model.h5"
    assert invoke(runner, *args(workspace, *DDP_ARGS, "-o", str(single))).exit_code == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "deephash_cli",
               *args(workspace, *DDP_ARGS, "-o", str(out))]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(out)  # only rank 0 prints and writes
    artifact = read_artifact(out)
    assert artifact.config["world_size"] == 2
    expected = _parameters(single)
    initial = torch.load(workspace / "calibrated.pth", weights_only=True)
    largest_update = max(float(np.abs(expected[f"backbone.{k}"] - v.numpy()).max()) for k, v in initial.items()
                         if f"backbone.{k}" in expected and v.is_floating_point())
    assert largest_update > 5e-5  # the backbone did train
    for name, value in artifact.parameters.items():
        tolerance = 0.01 * largest_update if name.startswith("backbone.") else 1e-4
        np.testing.assert_allclose(value, expected[name], rtol=0, atol=tolerance, err_msg=name)
    for got, want in zip(artifact.history, read_artifact(single).history, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
        assert got["val_map"] == pytest.approx(want["val_map"], abs=1e-6)
    assert [p.name for p in workspace.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_hash_objective_and_extract_writes_codes(runner, workspace):
    model, codes = workspace / "hash.model.h5", workspace / "codes.h5"
    result = invoke(runner, *args(workspace, "--objective", "hash", "--bits", "12", "--epochs", "1", "-o",
                                  str(model)))
    assert result.exit_code == 0, result.output
    assert read_artifact(model).model_attrs["produces"] == "codes"
    result = invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", workspace / "data", "--model", model,
                    "--device", "cpu", "--workers", "0", "-o", codes)
    assert result.exit_code == 0, result.output
    art = read_artifact(codes)
    assert art.kind == "codes" and art.split("test").bits == 12 and art.split("test").codes.shape == (9, 2)
    assert json.loads(invoke(runner, "evaluate", codes, "--json").stdout)["distance"] == "hamming"


def test_world_size_that_does_not_divide_the_batch(runner, workspace, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = workspace / "never.h5"
    result = invoke(runner, *args(workspace, "--samples-per-class", "3", "-o", str(out)))
    assert result.exit_code == 2
    assert "the P×K batch (--classes-per-batch × --samples-per-class) = 9 is not divisible by the world size 2" \
        in result.stderr
    assert not out.exists()


def test_undecodable_image_is_named_and_nothing_is_written(runner, workspace, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(workspace / "data", data)
    (data / "train" / "class2" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "m.h5"
    result = invoke(runner, *args(workspace, "--data-dir", str(data), "-o", str(out)))
    assert result.exit_code == 2
    assert "broken.png: cannot decode image" in result.stderr and not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--backbone", "resnet18"], "does not fit backbone resnet18"),
    (["--backbone", "pixels"], "the pixels backbone has nothing to fine-tune"),
    (["--margin", "0.1,0.2"], "fine-tuning trains one model, give one margin"),
    (["--objective", "retrieval"], "unknown objective 'retrieval'"),
])
def test_bad_options(runner, workspace, tmp_path, extra, message):
    out = tmp_path / "m.h5"
    result = invoke(runner, *args(workspace, "-o", str(out)), *extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and not out.exists()


def _without_weights(arguments: list[str]) -> list[str]:
    """args() without --weights: with --init the initial model carries the weights."""
    i = arguments.index("--weights")
    return arguments[:i] + arguments[i + 2:]


def test_init_continues_the_models_backbone_and_head(runner, workspace, reference, tmp_path):
    """Same objective and head: both are loaded; with frozen rates nothing moves, and the parent is recorded."""
    out = tmp_path / "continued.model.h5"
    result = invoke(runner, *_without_weights(args(workspace, "--init", str(reference), "--epochs", "1",
                                                   "--lr-backbone", "0", "--lr", "1e-12", "-o", str(out))))
    assert result.exit_code == 0, result.output
    start, got = _parameters(reference), _parameters(out)
    assert set(start) == set(got)
    for name, value in start.items():
        if name.startswith("backbone."):
            np.testing.assert_array_equal(got[name], value, err_msg=name)  # learning rate 0: untouched
        else:
            np.testing.assert_allclose(got[name], value, atol=1e-6, err_msg=name)  # the head went on, not anew
    artifact = read_artifact(out)
    assert artifact.model_attrs["init"] == str(reference)
    assert artifact.config["init_sha256"] == artifact.attrs["parent_sha256"] == sha256_file(reference)
    assert (out.parent / artifact.attrs["parent"]).resolve() == reference.resolve()


def test_init_with_another_objective_keeps_the_backbone_and_builds_a_new_head(runner, workspace, reference,
                                                                             tmp_path):
    out = tmp_path / "hash.model.h5"
    result = invoke(runner, *_without_weights(args(workspace, "--init", str(reference), "--objective", "hash",
                                                   "--bits", "8", "--epochs", "1", "--lr-backbone", "0",
                                                   "-o", str(out))))
    assert result.exit_code == 0, result.output
    start, got = _parameters(reference), _parameters(out)
    for name, value in start.items():
        if name.startswith("backbone."):
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert got["head.net.weight"].shape == (8, start["head.net.weight"].shape[1])
    assert read_artifact(out).model_attrs["produces"] == "codes"


@pytest.mark.parametrize("extra, message", [
    (["--image-size", "32"], "fixes the backbone and preprocessing; drop --image-size 32"),
    (["--weights", "none"], "drop --weights"),
])
def test_init_rejects_contradicting_options(runner, workspace, reference, tmp_path, extra, message):
    out = tmp_path / "m.h5"
    result = invoke(runner, *_without_weights(args(workspace, "--init", str(reference), "-o", str(out))), *extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and not out.exists()


def test_init_from_a_head_model_is_refused(runner, workspace, tmp_path):
    """A head trained on features has no backbone to start from."""
    from deephash_cli.artifacts import ArtifactWriter

    head_model = tmp_path / "head.model.h5"
    with ArtifactWriter(head_model, kind="model", class_names=["a"], config={"stage": "train-triplet"}) as writer:
        writer.write_model({"type": "head", "head": "linear", "in_dim": 4, "out_dim": 2},
                           {"net.weight": np.zeros((2, 4), np.float32)})
    out = tmp_path / "m.h5"
    result = invoke(runner, *_without_weights(args(workspace, "--init", str(head_model), "-o", str(out))))
    assert result.exit_code == 2, result.output
    assert "expected a fine-tuned model" in result.stderr and not out.exists()


def test_info_describes_the_backbone_and_the_head(runner, reference):
    result = invoke(runner, "info", reference)
    assert result.exit_code == 0, result.output
    assert "model: fine-tuned mobilenet_v2 at 16 px + linear head 1280→8 (hidden 512, output normalized, " \
           "produces embeddings)" in result.stdout


def test_training_images_decoded_by_workers_give_the_same_model(runner, workspace, reference, tmp_path):
    """--workers 2 decodes each step's batch in other processes, ahead: every parameter equals the reference's."""
    out = tmp_path / "workers.model.h5"
    result = invoke(runner, *args(workspace, "--epochs", "2", "--workers", "2", "-o", str(out)))
    assert result.exit_code == 0, result.output
    expected, found = _parameters(reference), _parameters(out)
    assert expected.keys() == found.keys()
    for name in expected:
        np.testing.assert_array_equal(found[name], expected[name], err_msg=name)
    assert [row["val_map"] for row in read_artifact(out).history] == \
        [row["val_map"] for row in read_artifact(reference).history]


def test_prefetched_steps_equal_main_process_loading_and_name_a_broken_file(workspace, tmp_path):
    import shutil

    from deephash_cli.datasets import CorruptImageError, load_dataset
    from deephash_cli.extract import make_transform
    from deephash_cli.finetune import EpochImages, item_seed, load_train_batch, prefetched_batches

    data = tmp_path / "data"
    shutil.copytree(workspace / "data", data)
    source = load_dataset("imagefolder", str(data)).train
    transform = make_transform(16, (0.5,) * 3, (0.5,) * 3, train=True)
    parts = [(np.array([3, 0, 7]), 0), (np.array([1, 12]), 4)]
    steps = list(prefetched_batches(EpochImages(source, transform, 5, 2, parts), workers=2))
    for step, ((rows, start), (got_rows, images)) in enumerate(zip(parts, steps), 1):
        seeds = [item_seed(5, 2, step, start + j) for j in range(len(rows))]
        np.testing.assert_array_equal(got_rows, rows)
        assert torch.equal(images, load_train_batch(source, rows, transform, seeds))
    broken = data / "train" / "class1" / "0.png"
    broken.write_bytes(b"\x89PNG not really")
    bad = EpochImages(load_dataset("imagefolder", str(data)).train, transform, 5, 2,
                      [(np.arange(len(source)), 0)])
    with pytest.raises(CorruptImageError, match="0.png: cannot decode image"):
        list(prefetched_batches(bad, workers=1))


def test_seeds_runs_equal_single_seed_runs(runner, workspace, tmp_path):
    from deephash_cli.artifacts import read_header
    from tests.conftest import assert_bitwise_equal

    result = invoke(runner, *args(workspace, "--epochs", "1", "--seeds", "0,1", "-o", str(tmp_path / "ft.model.h5")))
    assert result.exit_code == 0, result.output
    seeded = [tmp_path / "ft.seed0.model.h5", tmp_path / "ft.seed1.model.h5"]
    assert result.stdout.splitlines() == [str(p) for p in seeded]
    alone = tmp_path / "alone.model.h5"
    assert invoke(runner, *args(workspace, "--epochs", "1", "--seed", "1", "-o", str(alone))).exit_code == 0
    assert assert_bitwise_equal(seeded[1], alone) > 100  # backbone, head, optimizer state, RNG states
    header = read_header(seeded[1])
    assert header["config"]["seed"] == 1 and "--seed 1" in header["command"] and "--seeds" not in header["command"]
    both = invoke(runner, *args(workspace, "--seed", "1", "--seeds", "0,1", "-o", str(tmp_path / "x.h5")))
    assert both.exit_code == 2 and both.stderr.startswith("error: --seed and --seeds exclude each other")


def test_the_test_split_of_a_dataset_without_one_does_not_follow_the_training_seed(runner, workspace, tmp_path):
    import shutil

    from deephash_cli.artifacts import read_header

    data = tmp_path / "data"
    shutil.copytree(workspace / "data" / "train", data / "train")  # no test/: a stratified split, as extract's
    base = [*args(workspace, "--data-dir", str(data), "--epochs", "1", "--test-fraction", "0.25")]
    assert invoke(runner, *base, "--seed", "3", "-o", str(tmp_path / "a.model.h5")).exit_code == 0
    config = read_header(tmp_path / "a.model.h5")["config"]
    assert config["split"]["seed"] == 0 and config["fingerprint"]["split_seed"] == 0  # extract's default split
    assert invoke(runner, *base, "--seed", "3", "--split-seed", "3", "-o", str(tmp_path / "b.model.h5")).exit_code == 0
    config = read_header(tmp_path / "b.model.h5")["config"]
    assert config["split"]["seed"] == 3 and "split_seed" not in config["fingerprint"]  # old checkpoints resume


@pytest.mark.parametrize("method, extra", [("ftde", ["--ftde-every", "2"]), ("hashnet", ["--continuation", "1:4:1"])])
def test_hash_methods_with_state_and_schedules_resume_exactly(runner, workspace, tmp_path, method, extra):
    """FTDE's inferred codes (a buffer of the loss) and HashNet's β ramp continue after --resume as if uninterrupted."""
    common = args(workspace, "--objective", "hash", "--method", method, "--bits", "8", *extra)
    full, part = tmp_path / "full.model.h5", tmp_path / "part.model.h5"
    assert invoke(runner, *common, "--epochs", "3", "-o", str(full)).exit_code == 0
    assert invoke(runner, *common, "--epochs", "2", "-o", str(part)).exit_code == 0
    resumed = invoke(runner, *common, "--epochs", "3", "-o", str(part), "--resume")
    assert resumed.exit_code == 0, resumed.output
    _, expected = read_checkpoint(full)
    _, found = read_checkpoint(part)
    if method == "ftde":
        assert "loss/codes" in found and set(np.unique(found["loss/codes"])) <= {-1.0, 1.0}
    for name in expected:
        np.testing.assert_array_equal(found[name], expected[name], err_msg=name)
    history = read_artifact(part).history
    if method == "hashnet":
        assert [row["beta"] for row in history] == [1, 2, 4]
    else:
        assert [row["epoch"] for row in history if "ftde_satisfied" in row] == [1, 3]
