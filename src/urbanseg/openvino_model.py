"""Exported models run by OpenVINO instead of ONNX Runtime: the same .onnx file, the same Predictor.

    predictor = urbanseg.load("model.onnx", backend="openvino")              # precision: the CPU's best
    predictor = urbanseg.load("model.onnx", backend="openvino", precision="fp32")

Why a second runtime: on CPUs with native bf16 (AVX-512 BF16 / AMX), OpenVINO's CPU plugin runs
fp32 graphs in bf16 by default, which in `benchmarks/inference_speed.py` made it the fastest path
that keeps >= 99.5% argmax agreement with PyTorch fp32 (see docs/benchmarks.md). On CPUs without
native bf16 its default is f32, and ONNX Runtime fp32 was as fast or faster there.

precision: "auto" keeps the plugin's default (bf16 where native, else f32), "fp32" asks for f32
arithmetic, "bf16" for bf16 (emulated, hence slow, on CPUs without it). An int8 (QDQ) graph from
`urbanseg export --quantize int8` runs in int8 either way. The metadata is the exported file's own
(`onnx_model.read_metadata`; OpenVINO exposes ONNX `metadata_props` as the model's "framework"
runtime info), and shapes the graph cannot take are fitted as for ONNX Runtime (`OnnxBackend`).

Needs the `openvino` extra (`pip install "urbanseg[openvino]"`); runs on the CPU only.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .errors import CheckpointError, ConfigError
from .inference import Predictor
from .onnx_model import INPUT, OUTPUT, ExportInfo, OnnxBackend, available_cores, read_metadata

try:  # the optional extra: a one-line message instead of a traceback when it is missing
    import openvino as ov
except ImportError:
    raise ConfigError('openvino: not installed; the OpenVINO backend needs `pip install "urbanseg[openvino]"`') from None

PRECISIONS = {"auto": None, "fp32": "f32", "bf16": "bf16"}  # urbanseg's names -> INFERENCE_PRECISION_HINT


class OpenVinoBackend(OnnxBackend):
    """A Predictor backend running an exported graph compiled by OpenVINO for the CPU.

    One infer request per thread (a request is not safe to share between threads; `urbanseg
    serve --workers N` runs N threads), all on one compiled model.
    """

    name = "openvino"

    def __init__(self, compiled: "ov.CompiledModel", export: ExportInfo, pad_multiple: int = 1):
        super().__init__(None, export, pad_multiple)
        self.compiled = compiled
        self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # what it computes in: f32, bf16
        self._requests = threading.local()

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """One inference on exactly these images."""
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        array = np.ascontiguousarray(images.numpy(), dtype=np.float32)
        result = request.infer({INPUT: array})
        return torch.from_numpy(np.array(result[self.compiled.output(OUTPUT)], dtype=np.float32))


def load_openvino(path: Union[str, os.PathLike], device: str = "auto", precision: str = "auto") -> Predictor:
    """The Predictor of an exported model run by OpenVINO on the CPU (`urbanseg.load(path,
    backend="openvino")` calls this)."""
    path = Path(path)
    if device not in ("auto", "cpu"):
        raise ConfigError(f"device: the OpenVINO backend runs on the CPU here, got '{device}' "
                          "(use the onnxruntime backend with onnxruntime-gpu for CUDA)")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)} for the OpenVINO backend, got '{precision}'")
    if not path.is_file():
        raise CheckpointError(f"{path}: exported model not found")
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except RuntimeError as error:  # not ONNX, truncated, or ops OpenVINO lacks
        first = (str(error).strip().splitlines() or [error.__class__.__name__])[0]
        raise CheckpointError(f"{path}: not a model OpenVINO can read ({first})") from None
    info = model.get_rt_info()
    framework = info["framework"] if "framework" in info else {}
    meta = read_metadata({key: value.astype(str) for key, value in framework.items()}, path)
    settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": available_cores()}
    if PRECISIONS[precision] is not None:
        settings["INFERENCE_PRECISION_HINT"] = PRECISIONS[precision]
    compiled = core.compile_model(model, "CPU", settings)
    return Predictor(OpenVinoBackend(compiled, meta.export, meta.preset.pad_multiple), meta.labels, meta.preset,
                     meta.config)
