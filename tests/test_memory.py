"""The fine-tuning memory pre-flight (deephash_cli/memory.py): what autograd keeps, against hand counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from deephash_cli import memory
from deephash_cli.train import TrainOptions, items_per_step
from tests.conftest import invoke
from tests.test_finetune import args, workspace  # noqa: F401 (the module fixture)


def test_saved_bytes_of_a_conv_relu_match_a_hand_count():
    # Conv2d keeps its input (for the weight's gradient) and ReLU its output; the weight is a parameter.
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.ReLU())
    for n, side in ((1, 8), (3, 8), (2, 12)):
        assert memory.saved_bytes(net, torch.zeros(n, 3, side, side)) == 4 * n * side * side * (3 + 5)
    assert memory.bytes_per_image(net, 8, torch.device("cpu")) == (4 * 8 * 8 * 8, 0)


def test_the_probe_leaves_the_model_and_the_generators_alone():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU()).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    per_image, fixed = memory.bytes_per_image(net, 10, torch.device("cpu"))
    assert per_image > 0 and fixed >= 0
    assert not net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_items_per_step_follows_the_batch_kind():
    labels_only = nn.Module()
    labels_only.uses_triplets = False
    mined = TrainOptions(miner="semihard", classes_per_batch=4, samples_per_class=5, batch_size=64)
    assert items_per_step(mined, nn.Module(), 1000) == 20
    random = TrainOptions(miner=None, batch_size=64)
    assert items_per_step(random, nn.Module(), 1000) == 192
    assert items_per_step(random, labels_only, 1000) == 64
    assert items_per_step(random, nn.Module(), 100) == 100


def test_a_step_that_cannot_fit_is_refused_before_training(workspace, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    out = tmp_path / "m.h5"
    result = invoke(CliRunner(), *args(workspace, "--epochs", "1", "-o", str(out)))
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "a training step of 6 images at 16 px keeps about" in line and "more than the 0.0 GiB" in line
    assert "lower --classes-per-batch, --samples-per-class or --image-size" in line and len(line.splitlines()) == 1
    assert not out.exists()
    result = invoke(CliRunner(), *args(workspace, "--epochs", "1", "-o", str(out), "--no-memory-check"))
    assert result.exit_code == 0, result.output
    assert out.exists()


def test_unknown_available_memory_skips_the_check(monkeypatch):
    monkeypatch.setattr(memory, "_MEMINFO", memory.Path("/nonexistent/meminfo"))
    assert memory.available_bytes(torch.device("cpu")) is None
    memory.check_step_fits(nn.Linear(2, 2), 10**9, 8, torch.device("cpu"), hint="x")  # nothing measured, no error


@pytest.mark.skipif(not memory._MEMINFO.exists(), reason="Linux /proc/meminfo")
def test_available_memory_is_read_from_meminfo():
    assert memory.available_bytes(torch.device("cpu")) > 0


def test_a_network_with_batchnorm_in_training_mode_is_measured():
    # BatchNorm in training mode refuses one item: the probe uses 2 and 4 (an mlp head's BatchNorm1d always trains).
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 8), nn.BatchNorm1d(8))
    per_image, fixed = memory.bytes_per_image(net, 4, torch.device("cpu"))
    assert per_image >= 4 * (3 * 4 * 4 + 8)  # at least Linear's input and BatchNorm's input, float32


def test_finetune_with_training_batchnorm_passes_the_check(workspace, tmp_path):  # noqa: F811
    # The mlp head's BatchNorm1d and --no-freeze-bn train with batch statistics during the probe too.
    out = tmp_path / "mlp.h5"
    result = invoke(CliRunner(), *args(workspace, "--epochs", "1", "--head", "mlp", "--no-freeze-bn", "-o", str(out)))
    assert result.exit_code == 0, result.output
    assert out.exists()
