"""`urbanseg export`: a checkpoint to a self-describing ONNX model, checked against PyTorch.

    urbanseg export runs/demo/checkpoints/best.pt --out model.onnx             # fixed size, fp32
    urbanseg export best.pt --out model.onnx --dynamic                         # any height and width
    urbanseg export best.pt --out model.onnx --quantize int8 --calibration train --calibration-images 32

The graph comes from PyTorch's own exporter, `torch.onnx.export(dynamo=True)` (torch.export
then ONNX Script): it exports every registry model at a fixed size, while the TorchScript-based
exporter fails on the adaptive pooling of pspnet and upernet. With `--dynamic`, pspnet and
upernet still fail (their pooling bins are computed from the traced size), which the
self-check below finds and reports as a one-line error.

Before the file is written, the graph checks itself: the same images (from the checkpoint's
validation split when its data is on this machine, else generated street scenes), resized to
the export size, go through PyTorch eager fp32 and through ONNX Runtime; when the predicted
classes agree on fewer than 99.9% of pixels, nothing is written (a previous file stays as it
was) and the error says by how much. The numbers go to `export.json` beside the model.
INT8 (`quantize_int8`) is ONNX Runtime's static QDQ quantisation, calibrated on real images.

Runs on the CPU; needs the `deploy` extra (onnx, onnxruntime, onnxscript).
"""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError, OutputError

try:  # the optional extra (onnxscript is what torch.onnx's exporter translates with): one line when missing
    import onnx
    import onnxruntime
    import onnxscript  # noqa: F401
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
except ImportError as _missing:
    raise ConfigError(f"{_missing.name}: not installed; exporting and running .onnx models needs "
                      f'`pip install "urbanseg[deploy]"`') from None

from . import __version__
from .config import Config
from .data import build_dataset
from .data.dataset import SegmentationDataset
from .data.io import list_images, read_image
from .data.preset import Preset
from .data.synth import render_scene
from .engine.checkpoint import load_model
from .evaluation import evaluate_predictor
from .files import atomic_write, write_json
from .inference import TorchBackend
from .metrics import json_safe
from .onnx_model import ORT_ERRORS, ExportInfo, OnnxBackend, load_onnx, read_metadata, session, write_metadata

Size = tuple[int, int]
CHECK_IMAGES = 8  # images compared between PyTorch and ONNX Runtime
CALIBRATION_IMAGES = 32
MIN_AGREEMENT = 0.999  # of pixels whose predicted class must agree, fp32 graph vs PyTorch
MIN_OPSET = 18  # the dynamo exporter's lowest; asking for less silently gives 18 or fails to convert


def export_onnx(checkpoint: Union[str, os.PathLike], out: Union[str, os.PathLike], size: Optional[Size] = None,
                dynamic: bool = False, opset: Optional[int] = None,
                check_images: Optional[Sequence[np.ndarray]] = None) -> dict:
    """Export `checkpoint` to `out` (.onnx) with urbanseg metadata, check it against PyTorch and
    write `export.json` beside it; returns that report.

    size: (height, width) to export (and check) at; default: the preset's input size, else its
    sliding window, else the validation images' size. dynamic: any batch, height and width
    (else any batch at `size` only). check_images: HxWx3 uint8 RGB images to compare on
    (default: up to 8 of the validation split, else generated scenes).
    """
    out, started = Path(out), time.perf_counter()
    if opset is not None and opset < MIN_OPSET:
        raise ConfigError(f"--opset: the exporter (torch.onnx, dynamo) writes opset {MIN_OPSET} or newer, got {opset}")
    loaded = load_model(checkpoint)
    model, config = loaded.model, loaded.config
    size = check_size(size) if size is not None else default_size(loaded.preset, config, checkpoint)
    multiple, min_size = int(getattr(model, "multiple", 1)), int(getattr(model, "min_size", 0))
    preset = dataclasses.replace(loaded.preset, pad_multiple=multiple)
    proto = export_graph(model, config.model.name, size, dynamic, opset)
    info = ExportInfo(size, dynamic, min_size, graph_opset(proto), "fp32")
    write_metadata(proto, loaded.labels, preset, config, info)
    data = serialize(proto, out)
    exported = time.perf_counter()

    if check_images is None:
        check_images, source = validation_images(config, size, CHECK_IMAGES)
    else:
        source = "given images"
    inputs = [model_input(image, preset, size) for image in check_images]
    if dynamic:  # a dynamic graph must also be right at a size it was not traced at
        other = (size[0] * 3 // 4 + 1, size[1] * 5 // 4 + 1)
        inputs += [model_input(image, preset, other) for image in check_images[:2]]
    try:
        candidate = OnnxBackend(session(data, "cpu", quiet=True), info, multiple)
        stats = compare(TorchBackend(model, "cpu", "fp32"), candidate, inputs)
    except ORT_ERRORS as error:  # e.g. pspnet's pooling bins, frozen at the traced size, at another size
        how = ("with dynamic sizes ", "; export at a fixed --size") if dynamic else ("", "")
        raise ConfigError(f"model.name: {config.model.name} cannot be exported {how[0]}(ONNX Runtime: "
                          f"{first_line(error)}){how[1]}") from None
    if stats["argmax_agreement"] < MIN_AGREEMENT:
        raise OutputError(f"{out}: not written: ONNX Runtime and PyTorch predict the same class on only "
                          f"{stats['argmax_agreement']:.2%} of pixels (needs {MIN_AGREEMENT:.1%}; max |logit "
                          f"difference| {stats['max_abs_logit_diff']:.3g})")
    atomic_write(out, lambda handle: handle.write(data), durable=True)
    report = {
        "checkpoint": str(checkpoint), "onnx": str(out), "format": "urbanseg-onnx", "urbanseg_version": __version__,
        "model": config.model.name, "encoder": config.model.encoder, "classes": loaded.labels.num_classes,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}, onnx {onnx.__version__}",
        "onnxruntime": onnxruntime.__version__, "opset": info.opset, "size": list(size), "dynamic": dynamic,
        "file_bytes": out.stat().st_size,
        "check": {"images": len(check_images), "source": source, "threshold": MIN_AGREEMENT,
                  "sizes": sorted({tuple(x.shape[-2:]) for x in inputs}),
                  **{k: stats[k] for k in ("max_abs_logit_diff", "argmax_agreement")}},
        "timings": {"export_s": round(exported - started, 3), "check_s": round(time.perf_counter() - exported, 3),
                    "pytorch_ms_per_image": stats["reference_ms"], "onnxruntime_ms_per_image": stats["candidate_ms"]},
    }
    write_json(report_path(out), json_safe(report))
    return report


def quantize_int8(fp32_onnx: Union[str, os.PathLike], out: Union[str, os.PathLike],
                  calibration_images: Sequence[np.ndarray], labelled: Optional[SegmentationDataset] = None,
                  check_images: Optional[Sequence[np.ndarray]] = None) -> dict:
    """ONNX Runtime static INT8 quantisation (QDQ, per-channel weights, uint8 activations calibrated
    by min/max over `calibration_images`) of an exported fp32 model, written with its metadata to
    `out`. Reports the size, the class agreement with fp32 on `check_images` (default: the
    calibration images) and, with a `labelled` dataset, the mIoU of both models on it."""
    fp32_onnx, out, started = Path(fp32_onnx), Path(out), time.perf_counter()
    if not calibration_images:
        raise ConfigError("--calibration: no calibration images")
    meta = read_metadata(onnx.load(str(fp32_onnx), load_external_data=False), fp32_onnx)
    size, preset = meta.export.size, meta.preset
    reader = _Calibration([model_input(image, preset, size).numpy() for image in calibration_images])
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        source, preprocess = prepare_for_quantization(fp32_onnx, os.path.join(tmp, "prepared.onnx"))
        quantized = os.path.join(tmp, "int8.onnx")
        quantize_static(source, quantized, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        proto = onnx.load(quantized)
    info = dataclasses.replace(meta.export, precision="int8", opset=graph_opset(proto))
    write_metadata(proto, meta.labels, preset, meta.config, info)
    atomic_write(out, lambda handle: handle.write(serialize(proto, out)), durable=True)
    quantized_at = time.perf_counter()
    fp32, int8 = load_onnx(fp32_onnx, "cpu"), load_onnx(out, "cpu")
    images = check_images if check_images is not None else calibration_images
    stats = compare(fp32.backend, int8.backend, [model_input(image, preset, size) for image in images])
    report = {"onnx": str(out), "file_bytes": out.stat().st_size, "fp32_file_bytes": fp32_onnx.stat().st_size,
              "method": "onnxruntime quantize_static: QDQ, per-channel int8 weights, uint8 activations, min/max",
              "preprocess": preprocess, "calibration_images": len(calibration_images),
              "check_images": len(images), "argmax_agreement_with_fp32": stats["argmax_agreement"],
              "max_abs_logit_diff": stats["max_abs_logit_diff"],
              "timings": {"quantize_s": round(quantized_at - started, 3), "fp32_ms_per_image": stats["reference_ms"],
                          "int8_ms_per_image": stats["candidate_ms"]}}
    if labelled is not None:
        report["miou"] = {"images": len(labelled), "fp32": evaluate_predictor(fp32, labelled, progress=False)["miou"],
                          "int8": evaluate_predictor(int8, labelled, progress=False)["miou"]}
    return report


def export_command(checkpoint: Union[str, os.PathLike], out: Union[str, os.PathLike], size: Optional[Size] = None,
                   dynamic: bool = False, opset: Optional[int] = None, quantize: Optional[str] = None,
                   calibration: Optional[str] = None, calibration_images: int = CALIBRATION_IMAGES) -> dict:
    """Everything `urbanseg export` does: export and check; with `quantize="int8"` also
    `<out stem>.int8.onnx`, calibrated on `calibration` (a folder of images, or a split of the
    checkpoint's dataset; default its training split), its numbers added to export.json."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out: expected a file name ending in .onnx, got '{out}'")
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize: expected int8, got '{quantize}'")
    if quantize is None and calibration is not None:
        raise ConfigError("--calibration: only used with --quantize int8")
    if calibration_images < 1:
        raise ConfigError(f"--calibration-images: expected a positive number, got {calibration_images}")
    if size is not None and dynamic:
        raise ConfigError("--size: a --dynamic model takes any size; give one or the other")
    config = load_model(checkpoint).config if quantize else None  # fail on a bad checkpoint before exporting
    if config is not None:  # find the calibration images before the (slow) export
        calib, calib_source = calibration_set(config, calibration, calibration_images)
    report = export_onnx(checkpoint, out, size, dynamic, opset)
    if config is None:
        return report
    check, _ = validation_images(config, tuple(report["size"]), CHECK_IMAGES)
    labelled = local_dataset(config, config.data.val_split)
    report["int8"] = quantize_int8(out, out.with_name(out.stem + ".int8.onnx"), calib, labelled, check)
    report["int8"]["calibration"] = calib_source
    write_json(report_path(out), json_safe(report))
    return report


def format_summary(report: dict) -> str:
    """The lines `urbanseg export` prints."""
    check, times = report["check"], report["timings"]
    shape = "dynamic size" if report["dynamic"] else "x".join(map(str, report["size"]))
    lines = [f"wrote {report['onnx']} ({report['model']}, {shape}, opset {report['opset']}, "
             f"{report['file_bytes'] / 1e6:.1f} MB)",
             f"checked on {check['images']} {check['source']}: classes agree on {check['argmax_agreement']:.3%} of "
             f"pixels, max |logit difference| {check['max_abs_logit_diff']:.2g}; "
             f"{times['onnxruntime_ms_per_image']:.0f} ms/image (PyTorch {times['pytorch_ms_per_image']:.0f})"]
    if "int8" in report:
        q = report["int8"]
        miou = f"; mIoU {q['miou']['fp32']:.4f} -> {q['miou']['int8']:.4f}" if "miou" in q else ""
        lines.append(f"wrote {q['onnx']} (int8, {q['file_bytes'] / 1e6:.1f} MB, calibrated on "
                     f"{q['calibration_images']} {q['calibration']}): classes agree with fp32 on "
                     f"{q['argmax_agreement_with_fp32']:.2%} of pixels{miou}; "
                     f"{q['timings']['int8_ms_per_image']:.0f} ms/image")
    lines.append(f"report: {report_path(Path(report['onnx']))}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- the graph
def export_graph(model: torch.nn.Module, name: str, size: Size, dynamic: bool,
                 opset: Optional[int]) -> onnx.ModelProto:
    """The ONNX graph of `model` (batch always dynamic: traced at 2, since a batch of 1 would be
    frozen into some reshapes). A dynamic graph is traced at a size its PadToMultiple must pad,
    so that the padding, with size-dependent amounts, stays in the graph."""
    height, width = size
    multiple = int(getattr(model, "multiple", 1))
    if dynamic and multiple > 1 and height % multiple == 0 and width % multiple == 0:
        height, width = height + 1, width + 1
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    try:
        program = torch.onnx.export(model.eval(), (torch.randn(2, 3, height, width),), dynamo=True, verbose=False,
                                    opset_version=opset, input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=(axes,))
        return program.model_proto
    except Exception as error:  # the exporter's many error classes; the innermost says what failed
        raise ConfigError(f"model.name: {name} cannot be exported to ONNX ({root_cause(error)})") from None


def prepare_for_quantization(fp32_onnx: Path, prepared: str) -> tuple[str, str]:
    """ONNX Runtime's recommended first step (shape inference, then graph fusion) written to
    `prepared`: the model to quantise and what was done. ONNX's own shape inference covers our
    graphs; ORT's symbolic one gives up on dynamic ones, leaving debug files in the working folder."""
    try:
        quant_pre_process(str(fp32_onnx), prepared, skip_symbolic_shape=True)
        return prepared, "quant_pre_process"
    except Exception as error:  # an optional step: the graph is then quantised as exported
        return str(fp32_onnx), f"skipped ({first_line(error)})"


def graph_opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def serialize(proto: onnx.ModelProto, out: Path) -> bytes:
    try:
        return proto.SerializeToString()
    except ValueError as error:  # protobuf's 2 GB limit
        raise OutputError(f"{out}: not written ({first_line(error)})") from None


def compare(reference: Callable[[torch.Tensor], torch.Tensor], candidate: Callable[[torch.Tensor], torch.Tensor],
            inputs: Sequence[torch.Tensor]) -> dict:
    """Max |logit difference|, the share of pixels whose argmax agrees, and ms per image of each."""
    worst, agree, pixels, times = 0.0, 0, 0, [0.0, 0.0]
    with torch.no_grad():
        for backend in (reference, candidate):  # first runs allocate and plan: not what a user waits for
            backend(inputs[0])
        for x in inputs:
            outputs = []
            for k, backend in enumerate((reference, candidate)):
                start = time.perf_counter()
                outputs.append(backend(x).float())
                times[k] += time.perf_counter() - start
            a, b = outputs
            worst = max(worst, float((a - b).abs().max()))
            agree += int((a.argmax(1) == b.argmax(1)).sum())
            pixels += a.shape[0] * a.shape[2] * a.shape[3]
    reference_ms, candidate_ms = (round(1000 * t / len(inputs), 2) for t in times)
    return {"max_abs_logit_diff": worst, "argmax_agreement": agree / pixels, "reference_ms": reference_ms,
            "candidate_ms": candidate_ms}


def model_input(image: np.ndarray, preset: Preset, size: Size) -> torch.Tensor:
    """(1, 3, h, w) normalised input of an HxWx3 uint8 image, resized as the Predictor resizes."""
    x = preset.normalize(torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)[None].float())
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False) if tuple(x.shape[-2:]) != size else x


# ---------------------------------------------------------------------- sizes and images
def check_size(size: Sequence[int]) -> Size:
    if len(size) != 2 or min(size) < 8:
        raise ConfigError(f"--size: expected HEIGHTxWIDTH of at least 8x8, got {'x'.join(map(str, size))}")
    return int(size[0]), int(size[1])


def default_size(preset: Preset, config: Config, checkpoint: Union[str, os.PathLike]) -> Size:
    """The preset's input size, else its window, else the size of the validation images."""
    if preset.input_size or preset.window:
        return preset.input_size or preset.window
    dataset = local_dataset(config, config.data.val_split)
    if dataset is None or not len(dataset):
        raise ConfigError(f"--size: {checkpoint} has no input size or window and its validation data "
                          f"({config.data.root}) is not here; give --size HEIGHTxWIDTH or --dynamic")
    return tuple(read_image(dataset.samples[0].image).shape[:2])


def local_dataset(config: Config, split: str) -> Optional[SegmentationDataset]:
    """`split` of the checkpoint's dataset when its root is on this machine (read directly, not
    through the training cache, which exporting must not fill), else None."""
    if not Path(config.data.root).is_dir():
        return None
    return build_dataset(dataclasses.replace(config.data, cache=None), split)


def validation_images(config: Config, size: Size, count: int) -> tuple[list[np.ndarray], str]:
    """Up to `count` images spread over the validation split, else generated scenes at `size`."""
    try:
        dataset = local_dataset(config, config.data.val_split)
    except DataError:  # the root is there but the split is not: fall back like a missing root
        dataset = None
    if dataset is not None and len(dataset):
        picks = sorted({round(i) for i in np.linspace(0, len(dataset) - 1, min(count, len(dataset)))})
        images = [read_image(dataset.samples[i].image) for i in picks]
        return images, f"images of the {config.data.val_split} split of {config.data.root}"
    return [render_scene(seed, max(size[0], 32), max(size[1], 32))["image"] for seed in range(count)], \
        "generated street scenes"


def calibration_set(config: Config, calibration: Optional[str], count: int) -> tuple[list[np.ndarray], str]:
    """Up to `count` images (spread evenly) of a folder, or of a split of the checkpoint's dataset
    (default: its training split). No silent fallback to generated scenes: calibrating a real
    model on them would give ranges that do not fit its images."""
    name = calibration or config.data.train_split
    if calibration is not None and Path(calibration).is_dir():
        files, source = list_images(calibration), f"images of {calibration}"
    else:
        try:
            dataset = local_dataset(config, name)
        except (ConfigError, DataError) as error:  # an unknown split name, a split missing on disk
            raise ConfigError(f"--calibration: '{name}' is neither a folder nor a usable split of the checkpoint's "
                              f"dataset ({error})") from None
        if dataset is None:
            raise ConfigError(f"--calibration: '{name}' is not a folder, and the checkpoint's data root "
                              f"{config.data.root} is not on this machine; give a folder of images")
        files, source = [s.image for s in dataset.samples], f"images of the {name} split of {config.data.root}"
    if not files:
        raise ConfigError(f"--calibration: no images in {calibration or name}")
    picks = sorted({round(i) for i in np.linspace(0, len(files) - 1, min(count, len(files)))})
    return [read_image(files[i]) for i in picks], source


class _Calibration(CalibrationDataReader):
    """Feeds the calibration inputs one by one, as ONNX Runtime's calibrator asks for them."""

    def __init__(self, inputs: Sequence[np.ndarray]):
        self._inputs = iter(inputs)

    def get_next(self) -> Optional[dict]:
        x = next(self._inputs, None)
        return None if x is None else {"images": x}


def report_path(out: Path) -> Path:
    return out.parent / "export.json"


def first_line(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # the exporter colours its messages
    return (text.splitlines() or [error.__class__.__name__])[0][:300]


def root_cause(error: BaseException) -> str:
    """The innermost exception's type and first line: the exporter wraps the real reason
    (an op without ONNX function, a data-dependent branch) in 'step 1/3 failed' errors."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{error.__class__.__name__}: {first_line(error)}"
