"""Inference runtimes: how a network's forward pass is executed when extracting or encoding queries.

``eager`` is PyTorch itself, the exact reference. ``onnx`` exports the network to ONNX (in memory)
and runs it with ONNX Runtime's CPU kernels, float32 throughout: the same function, summed in another
order (differences of ~1e-5 relative). ``int8`` additionally quantises it with ONNX Runtime's static
post-training quantisation (weights per output channel, activations per tensor, QDQ format),
calibrated on images the caller supplies (``extract`` uses a fixed sample of the training split).

Each runtime is a factory ``(module, example, calibration) -> nn.Module``; the result takes and
returns float32 CPU tensors like the original, so ``extract_chunks`` and the query encoder use it
unchanged. The ONNX runtimes need the optional extra ``pip install 'deephash[onnx]'``.
benchmarks/bench_runtime.py measures images/second and the mAP difference of each against eager.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from deephash_cli.errors import DeephashError
from deephash_cli.registry import Registry

Calibration = Callable[[], Iterable[torch.Tensor]]
RuntimeFactory = Callable[[nn.Module, torch.Tensor, "Calibration | None"], nn.Module]

RUNTIMES: Registry[RuntimeFactory] = Registry("runtime")

# Runtimes that cannot reproduce their weights from the recorded options alone (int8 depends on its
# calibration images): an index's query encoder falls back to float for them.
NEEDS_CALIBRATION = ("int8",)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise DeephashError("this runtime needs ONNX Runtime: pip install 'deephash[onnx]' (onnxruntime, onnx)"
                            ) from None
    return onnxruntime


def export_onnx(module: nn.Module, example: torch.Tensor) -> bytes:
    """``module`` (eval mode, CPU) as an ONNX model with a dynamic batch dimension."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export's, which needs onnxscript
        # and minutes more here; both give the same graph for these CNNs.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module.eval().cpu(), (example.cpu(),), buffer, input_names=["images"],
                              output_names=["outputs"], dynamic_axes={"images": {0: "batch"}, "outputs": {0: "batch"}},
                              opset_version=17, dynamo=False)
        except Exception as err:  # noqa: BLE001 - the exporter raises many types
            raise DeephashError(f"cannot export the network to ONNX ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}); use --runtime eager") from None
    return buffer.getvalue()


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind an ``nn.Module`` face: float32 CPU tensor in, tensor out."""

    def __init__(self, model: bytes, threads: int) -> None:
        super().__init__()
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # as many as torch uses, the recorded torch_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.device.type != "cpu":
            raise DeephashError("the onnx and int8 runtimes run on the CPU; use --runtime eager with --device cuda")
        array = np.ascontiguousarray(images.detach().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


@RUNTIMES.register("eager")
def eager(module: nn.Module, example: torch.Tensor, calibration: Calibration | None = None) -> nn.Module:
    """PyTorch's own forward pass: the reference every other runtime is measured against."""
    return module


@RUNTIMES.register("onnx")
def onnx(module: nn.Module, example: torch.Tensor, calibration: Calibration | None = None) -> nn.Module:
    """ONNX Runtime, float32."""
    _onnxruntime()
    return OnnxModule(export_onnx(module, example), torch.get_num_threads())


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over our calibration batches."""

    def __init__(self, batches: Iterable[torch.Tensor], input_name: str) -> None:
        self._batches: Iterator[torch.Tensor] = iter(batches)
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: np.ascontiguousarray(batch.numpy(), dtype=np.float32)}

    def rewind(self) -> None:  # pragma: no cover - only called by some calibration methods
        raise NotImplementedError


@RUNTIMES.register("int8")
def int8(module: nn.Module, example: torch.Tensor, calibration: Calibration | None = None) -> nn.Module:
    """ONNX Runtime with static int8 quantisation calibrated on ``calibration()``'s batches (MinMax)."""
    _onnxruntime()
    if calibration is None:
        raise DeephashError("the int8 runtime needs calibration images")
    try:
        from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise DeephashError("the int8 runtime needs the onnx package: pip install 'deephash[onnx]'") from None
    model = export_onnx(module, example)
    with tempfile.TemporaryDirectory(prefix="deephash-int8-") as folder:
        plain, prepared, quantised = (os.path.join(folder, name) for name in ("m.onnx", "p.onnx", "q.onnx"))
        with open(plain, "wb") as handle:
            handle.write(model)
        quant_pre_process(plain, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, quantised, _Reader(calibration(), "images"), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        with open(quantised, "rb") as handle:
            model = handle.read()
    return OnnxModule(model, torch.get_num_threads())


def build_runtime(name: str, module: nn.Module, example: torch.Tensor,
                  calibration: Calibration | None = None) -> nn.Module:
    """``module`` executed by runtime ``name`` (an unknown name lists the valid ones)."""
    factory = RUNTIMES.get(name)
    return factory(module.eval(), example, calibration)
