"""Inference runtimes (extract --runtime): ONNX Runtime float32 equals eager to float tolerance, int8 stays close,
and the CLI records the runtime; errors name the valid runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from deephash_cli.runtimes import RUNTIMES, build_runtime
from tests.conftest import invoke

pytest.importorskip("onnxruntime")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    """A small CNN with BatchNorm, ReLU6, depthwise convolutions and global pooling, like the backbones."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, width_mult=0.35)
    model.classifier = torch.nn.Identity()
    with torch.no_grad():  # realistic BatchNorm statistics, so activations are not degenerate
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None
        model.train()(torch.randn(32, 3, 32, 32))
    return model.eval()


def test_registry_lists_the_runtimes():
    assert RUNTIMES.names() == ["eager", "onnx", "int8"]


def test_onnx_equals_eager_to_float_tolerance_for_any_batch_size(network):
    runtime = build_runtime("onnx", network, torch.zeros(2, 3, 32, 32))
    for n in (1, 5, 16):
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            expected, found = network(x), runtime(x)
        assert found.dtype == torch.float32 and found.shape == expected.shape
        assert torch.allclose(found, expected, rtol=1e-4, atol=5e-5 * float(expected.abs().max()))


def test_int8_is_close_to_eager_and_needs_calibration():
    """On a well-conditioned CNN (the random MobileNet's activations are too heavy-tailed for 8 bits; the real
    backbone's mAP under int8 is measured in benchmarks/bench_runtime.py)."""
    from deephash_cli.errors import DeephashError

    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.rand(16, 3, 32, 32, generator=generator) * 2 - 1 for _ in range(4)]
    runtime = build_runtime("int8", network, torch.zeros(2, 3, 32, 32), lambda: iter(calibration))
    x = torch.rand(16, 3, 32, 32, generator=generator) * 2 - 1
    with torch.inference_mode():
        expected, found = network(x), runtime(x)
    assert not torch.equal(found, expected)  # it is quantised
    cosine = torch.nn.functional.cosine_similarity(found, expected)
    assert float(cosine.min()) > 0.99, cosine
    with pytest.raises(DeephashError, match="calibration"):
        build_runtime("int8", network, torch.zeros(2, 3, 32, 32), None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, network) -> Path:
    """ROOT/data/{train,test}/<class>/*.png (3 colours) and ROOT/small.pth (the full classifier's state_dict)."""
    import torchvision

    root = tmp_path_factory.mktemp("runtimes")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for c, colour in enumerate([(220, 40, 40), (40, 200, 60), (40, 60, 220)]):
            (root / "data" / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 50, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / "data" / split / f"c{c}" / f"{i}.png")
    full = torchvision.models.mobilenet_v2(weights=None)
    torch.manual_seed(0)
    with torch.no_grad():
        for module in full.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None
        full.train()(torch.randn(16, 3, 32, 32))
    torch.save(full.eval().state_dict(), root / "weights.pth")
    return root


def _extract(runner, folder: Path, runtime: str, out: Path):
    return invoke(runner, "extract", "--dataset", "imagefolder", "--data-dir", str(folder / "data"), "--backbone",
                  "mobilenet_v2", "--weights", str(folder / "weights.pth"), "--image-size", "32", "--device", "cpu",
                  "--workers", "0", "--runtime", runtime, "--calibration-images", "8", "-o", str(out))


def test_extract_runtime_onnx_matches_eager_and_is_recorded(runner, folder, tmp_path):
    outputs = {}
    for runtime in ("eager", "onnx", "int8"):
        outputs[runtime] = tmp_path / f"{runtime}.h5"
        result = _extract(runner, folder, runtime, outputs[runtime])
        assert result.exit_code == 0, result.output
    with h5py.File(outputs["eager"]) as e, h5py.File(outputs["onnx"]) as o, h5py.File(outputs["int8"]) as q:
        for split in ("train", "test"):
            reference = e[split]["features"][:]
            np.testing.assert_allclose(o[split]["features"][:], reference, rtol=1e-4,
                                       atol=5e-5 * float(np.abs(reference).max()))
            np.testing.assert_array_equal(o[split]["labels"][:], e[split]["labels"][:])
            assert not np.array_equal(q[split]["features"][:], reference)
        configs = {name: json.loads(f.attrs["config"]) for name, f in (("eager", e), ("onnx", o), ("int8", q))}
    assert "runtime" not in configs["eager"]  # eager artifacts stay as they were
    assert configs["onnx"]["runtime"] == "onnx" and "calibration_images" not in configs["onnx"]
    assert configs["int8"]["runtime"] == "int8" and configs["int8"]["calibration_images"] == 8


def test_unknown_runtime_lists_the_valid_ones(runner, folder, tmp_path):
    result = _extract(runner, folder, "tensorrt", tmp_path / "x.h5")
    assert result.exit_code == 2
    assert "unknown runtime 'tensorrt'; valid names: eager, onnx, int8" in result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_search_encodes_queries_with_onnx_like_eager_and_refuses_int8(runner, tmp_path):
    from tests.test_search import extract, make_folder, run_ok, search_json

    data = make_folder(tmp_path / "imgs", per_class=(12, 3))
    features = extract(runner, data, tmp_path / "f.h5")
    run_ok(runner, "train-triplet", features, "--dim", "8", "--epochs", "2", "--classes-per-batch", "4",
           "--samples-per-class", "4", "--save-model", tmp_path / "t.model.h5", "-o", tmp_path / "e.h5")
    run_ok(runner, "index", tmp_path / "e.h5", "-o", tmp_path / "i.h5")
    eager = search_json(runner, tmp_path / "i.h5", data / "test", "-k", "5")
    onnx = search_json(runner, tmp_path / "i.h5", data / "test", "-k", "5", "--runtime", "onnx")
    assert len(eager) == len(onnx) == 12
    for a, b in zip(eager, onnx):
        assert [r["name"] for r in a["results"]] == [r["name"] for r in b["results"]]
        assert [r["distance"] for r in b["results"]] == pytest.approx([r["distance"] for r in a["results"]],
                                                                      rel=1e-4, abs=1e-5)
    result = invoke(runner, "search", tmp_path / "i.h5", data / "test", "--runtime", "int8")
    assert result.exit_code == 2
    assert "--runtime int8 is for extract (it calibrates on training images); search with eager or onnx" \
        in result.stderr
