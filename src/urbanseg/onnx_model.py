"""The exported-model format, its one owner: an ONNX graph that describes itself, run by ONNX Runtime.

    predictor = urbanseg.load("model.onnx")     # same API as a checkpoint's Predictor
    labels = predictor.predict("street.png")

An urbanseg .onnx file is a plain ONNX model (input `images`: N x 3 x H x W float32 RGB,
normalised with the preset; output `logits`: N x C x H x W float32) whose `metadata_props` hold
JSON values under these keys, so no side file is needed to use it:

    urbanseg.format     {"name": "urbanseg-onnx", "version": FORMAT_VERSION}
    urbanseg.version    the urbanseg that wrote it (`urbanseg.__version__`)
    urbanseg.labels     `LabelSet.to_dict()`: class names, palette, ignore index, label-id tables
    urbanseg.preset     `Preset.to_dict()`: normalisation, input size, sliding window, pad multiple
    urbanseg.config     `Config.to_dict()` of the training run (evaluate rebuilds its class set)
    urbanseg.export     how the graph was made: size, dynamic, min_size, opset, precision

A graph exported with a fixed size (H, W) takes any batch but only that size, so its preset's
`input_size` and `window` are set to it (whole mode and sliding windows then feed it exactly
that). Other shapes (multi-scale TTA, images smaller than the window) are served by padding
bottom/right up to the size (reflect, or zeros when too small to reflect) and, when larger,
by averaging overlapping windows of the size, then cropping the logits back (`OnnxBackend`).
A dynamic graph gets its input padded to the model's multiple as `PadToMultiple` does in
PyTorch, so ONNX Runtime computes exactly what the checkpoint computes at any size.

Needs the `deploy` extra (onnx, onnxruntime); runs on the CPU, or CUDA with onnxruntime-gpu.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .config import Config, from_dict
from .data.labels import LabelSet
from .data.preset import Preset
from .errors import CheckpointError, ConfigError
from .inference import Predictor, window_starts
from .models.padding import PadToMultiple

try:  # the optional extra: a one-line message instead of a traceback when it is missing
    import onnx
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state
except ImportError as _missing:
    raise ConfigError(f"{_missing.name}: not installed; exporting and running .onnx models needs "
                      f'`pip install "urbanseg[deploy]"`') from None

# What ONNX Runtime raises for a file or a run it cannot handle (its classes share no base but Exception).
ORT_ERRORS = tuple(getattr(_ort_state, name) for name in (
    "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "RuntimeException", "InvalidProtobuf", "NotImplemented",
    "InvalidGraph", "EPFail") if hasattr(_ort_state, name))

FORMAT = "urbanseg-onnx"
FORMAT_VERSION = 1
INPUT, OUTPUT = "images", "logits"
KEYS = ("urbanseg.format", "urbanseg.version", "urbanseg.labels", "urbanseg.preset", "urbanseg.config",
        "urbanseg.export")
Size = tuple[int, int]


@dataclass(frozen=True)
class ExportInfo:
    """How a graph was made: what `OnnxBackend` needs to feed it any image."""

    size: Size  # (height, width) it was exported (and checked) at
    dynamic: bool  # any height and width, else only `size` (any batch either way)
    min_size: int = 0  # the model pads to at least this (PadToMultiple.min_size), besides preset.pad_multiple
    opset: int = 0
    precision: str = "fp32"  # fp32 | int8

    def to_dict(self) -> dict:
        return {"size": list(self.size), "dynamic": self.dynamic, "min_size": self.min_size, "opset": self.opset,
                "precision": self.precision, "input": INPUT, "output": OUTPUT,
                "layout": "NCHW float32 RGB normalised with the preset (x / 255 - mean) / std"}

    @classmethod
    def from_dict(cls, data: dict) -> "ExportInfo":
        return cls(size=(int(data["size"][0]), int(data["size"][1])), dynamic=bool(data["dynamic"]),
                   min_size=int(data["min_size"]), opset=int(data["opset"]), precision=str(data["precision"]))


@dataclass(frozen=True)
class Metadata:
    labels: LabelSet
    preset: Preset
    config: Optional[Config]
    export: ExportInfo
    urbanseg_version: str


def served_preset(preset: Preset, export: ExportInfo) -> Preset:
    """The preset an exported graph is used with: a fixed-size graph is fed exactly its size."""
    return preset if export.dynamic else replace(preset, input_size=export.size, window=export.size)


def write_metadata(model: "onnx.ModelProto", labels: LabelSet, preset: Preset, config: Optional[Config],
                   export: ExportInfo) -> None:
    """Store everything `read_metadata` needs in `model.metadata_props` (in place, replacing ours)."""
    values = {"urbanseg.format": {"name": FORMAT, "version": FORMAT_VERSION}, "urbanseg.version": __version__,
              "urbanseg.labels": labels.to_dict(), "urbanseg.preset": served_preset(preset, export).to_dict(),
              "urbanseg.config": config.to_dict() if config is not None else None,
              "urbanseg.export": export.to_dict()}
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in KEYS]
    del model.metadata_props[:]
    for key, value in kept + [(k, json.dumps(v)) for k, v in values.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(source: Union["onnx.ModelProto", Mapping[str, str]], path: Union[str, os.PathLike]) -> Metadata:
    """The metadata of a model proto or of a session's `custom_metadata_map`; a file without it
    (exported by another tool) or written by a newer urbanseg fails naming `path`."""
    props = {p.key: p.value for p in source.metadata_props} if hasattr(source, "metadata_props") else dict(source)
    if "urbanseg.format" not in props:
        raise CheckpointError(f"{path}: an ONNX model without urbanseg metadata (export models with `urbanseg export`)")
    try:
        values = {key: json.loads(props[key]) for key in KEYS}
        fmt = values["urbanseg.format"]
        if fmt.get("name") != FORMAT or fmt.get("version") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: exported model format {fmt.get('name')} version {fmt.get('version')}, "
                                  f"this urbanseg reads {FORMAT} version {FORMAT_VERSION}")
        config = values["urbanseg.config"]
        return Metadata(LabelSet.from_dict(values["urbanseg.labels"]), Preset.from_dict(values["urbanseg.preset"]),
                        from_dict(config) if config is not None else None,
                        ExportInfo.from_dict(values["urbanseg.export"]), str(values["urbanseg.version"]))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path}: unreadable urbanseg metadata ({error.__class__.__name__}: {error})") from None


def available_cores() -> int:
    """CPU cores this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def session(model: Union[str, os.PathLike, bytes], device: str = "auto", quiet: bool = False) -> "ort.InferenceSession":
    """An ONNX Runtime session with all graph optimisations and one intra-op thread per available
    core; CUDA first when onnxruntime-gpu provides it and the device is not 'cpu'. `quiet`: no
    log lines of its own (for callers that report failures themselves)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device: expected auto, cpu or cuda, got '{device}'")
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not cuda:
        raise ConfigError("device: 'cuda' requested but ONNX Runtime has no CUDAExecutionProvider "
                          "(install onnxruntime-gpu)")
    providers = (["CUDAExecutionProvider"] if cuda and device != "cpu" else []) + ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = available_cores()
    if quiet:
        options.log_severity_level = 4  # fatal only
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=providers)


class OnnxBackend:
    """A Predictor backend running an exported graph: torch tensors in and out, NumPy inside.

    Shapes the graph cannot take are made to fit here (see the module docstring), so the
    Predictor's whole / slide / flip / multi-scale modes all work on any exported model.
    """

    name = "onnxruntime"

    def __init__(self, sess: "ort.InferenceSession", export: ExportInfo, pad_multiple: int = 1):
        self.session = sess
        self.device = torch.device("cpu")  # inputs and outputs cross as NumPy arrays on the host
        self.export = export
        # a dynamic graph sees what the PyTorch model's own PadToMultiple would feed its network
        self._padded = PadToMultiple(self.run, pad_multiple, export.min_size) if export.dynamic else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> float32 logits (N, C, H, W)."""
        images = images.detach().float().cpu()
        if self._padded is not None:
            return self._padded(images)
        return self._fixed(images)

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """One session run on exactly these images."""
        array = np.ascontiguousarray(images.numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: array})[0])

    def _fixed(self, images: torch.Tensor) -> torch.Tensor:
        """Pad up to the graph's size, average logits over overlapping windows of it when the
        image is larger, crop back: exact when the image has the graph's size."""
        height, width = images.shape[-2:]
        win_h, win_w = self.export.size
        if (height, width) == (win_h, win_w):
            return self.run(images)
        pad_h, pad_w = max(win_h - height, 0), max(win_w - width, 0)
        if pad_h or pad_w:
            mode = "reflect" if height > pad_h and width > pad_w else "constant"
            images = F.pad(images, (0, pad_w, 0, pad_h), mode=mode)
        full_h, full_w = images.shape[-2:]
        logits: Optional[torch.Tensor] = None
        counts = torch.zeros(1, 1, full_h, full_w)
        for top in window_starts(full_h, win_h):
            for left in window_starts(full_w, win_w):
                out = self.run(images[..., top:top + win_h, left:left + win_w])
                if logits is None:
                    logits = torch.zeros(out.shape[0], out.shape[1], full_h, full_w)
                logits[..., top:top + win_h, left:left + win_w] += out
                counts[..., top:top + win_h, left:left + win_w] += 1
        return (logits / counts)[..., :height, :width]


def load_onnx(path: Union[str, os.PathLike], device: str = "auto") -> Predictor:
    """The Predictor of an exported model (`urbanseg.load("model.onnx")` calls this): the same API
    and preprocessing as the checkpoint it came from, run by ONNX Runtime."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: exported model not found")
    try:
        sess = session(path, device)
    except ORT_ERRORS as error:  # not ONNX at all, truncated, or ops this ONNX Runtime lacks
        first = (str(error).strip().splitlines() or [error.__class__.__name__])[0]
        raise CheckpointError(f"{path}: not a readable ONNX model ({first})") from None
    meta = read_metadata(sess.get_modelmeta().custom_metadata_map, path)
    return Predictor(OnnxBackend(sess, meta.export, meta.preset.pad_multiple), meta.labels, meta.preset, meta.config)
