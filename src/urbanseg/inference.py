"""Predictor: a trained model plus the exact preprocessing it was validated with.

    predictor = urbanseg.load("runs/demo/checkpoints/best.pt")
    labels = predictor.predict("street.png")            # HxW uint8 class indices
    probs = predictor.predict_proba(image_array)         # CxHxW float32, sums to 1 per pixel

Whole-image or sliding-window inference (window = the training crop, overlapping by a third),
optionally averaged over horizontal flips and several scales, optionally refined by a dense CRF
(`crf=True` or a `urbanseg.crf.DenseCRF`; the `crf` extra); probabilities always come back at
the input image's own resolution. Checkpoints are read with `weights_only=True`.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import Config
from .crf import DenseCRF, as_crf
from .data.io import read_image
from .data.labels import LabelSet
from .data.preset import Preset
from .engine.checkpoint import load_model
from .engine.precision import pick_device, pick_precision
from .errors import ConfigError

ImageInput = Union[str, os.PathLike, np.ndarray, Image.Image]


class TorchBackend:
    """A PyTorch model on a device, run through the one forward path (`Precision.forward`)."""

    name = "pytorch"

    def __init__(self, model: torch.nn.Module, device: str = "auto", precision: str = "auto"):
        self.device = pick_device(device)
        self.precision = pick_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        if self.precision.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images on `self.device` -> float32 logits (N, C, H, W)."""
        return self.precision.forward(self.model, images)


class Predictor:
    """A backend (PyTorch, or ONNX Runtime for an exported model), the labels it predicts and the
    preprocessing preset it was trained with. `config` is the run's config when the file has one;
    `crf` (None, True for DeepLab's parameters, or a DenseCRF) refines every prediction."""

    def __init__(self, backend: Callable[[torch.Tensor], torch.Tensor], labels: LabelSet, preset: Preset = Preset(),
                 config: Optional[Config] = None, crf: Union[None, bool, DenseCRF] = None):
        self.backend = backend
        self.device = getattr(backend, "device", torch.device("cpu"))
        self.labels = labels
        self.preset = preset
        self.config = config
        self.window = preset.window  # (h, w) of sliding windows; may be changed
        self.crf = crf

    @property
    def crf(self) -> Optional[DenseCRF]:
        """The dense CRF applied by `predict_proba` (and so `predict`), or None; may be changed."""
        return self._crf

    @crf.setter
    def crf(self, value: Union[None, bool, DenseCRF]) -> None:
        self._crf = as_crf(value)  # fails now, not at the first image, when pydensecrf2 is missing

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], device: str = "auto", precision: str = "auto") -> "Predictor":
        loaded = load_model(path)
        return cls(TorchBackend(loaded.model, device, precision), loaded.labels, loaded.preset, loaded.config)

    # ------------------------------------------------------------------ public API
    def predict(self, image: ImageInput, **options) -> np.ndarray:
        """HxW uint8 class indices (see `predict_proba` for the options)."""
        return self.predict_proba(image, **options).argmax(axis=0).astype(np.uint8)

    def predict_proba(self, image: ImageInput, mode: str = "whole", scales: Sequence[float] = (1.0,),
                      flip: bool = False) -> np.ndarray:
        """CxHxW class probabilities at the image's resolution.

        mode: "whole" (one forward pass per scale) or "slide" (overlapping windows of the
        training crop size); scales: relative to the validation size the model was trained for;
        flip: also predict the mirrored image. Probabilities of all passes are averaged, then
        refined by `self.crf` when it is set.
        """
        array = as_rgb_array(image)
        probs = self.network_proba(array, mode, scales, flip)
        return self.crf.refine(array, probs) if self.crf is not None else probs

    @torch.no_grad()
    def network_proba(self, image: ImageInput, mode: str = "whole", scales: Sequence[float] = (1.0,),
                      flip: bool = False) -> np.ndarray:
        """`predict_proba` without the CRF: the network's probabilities, averaged over the passes."""
        if mode not in ("whole", "slide"):
            raise ConfigError(f"mode: expected 'whole' or 'slide', got '{mode}'")
        array = as_rgb_array(image)
        height, width = array.shape[:2]
        # a copy only when the array is read-only or strided (from_numpy warns on read-only arrays)
        x = torch.from_numpy(np.require(array, requirements=["C", "W"])).to(self.device).permute(2, 0, 1)[None].float()
        x = self.preset.normalize(x)
        base = self.preset.input_size or (height, width)
        total = torch.zeros(1, self.labels.num_classes, height, width, device=self.device)
        passes = 0
        for scale in scales:
            size = (max(1, round(base[0] * scale)), max(1, round(base[1] * scale)))
            scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if size != (height, width) else x
            for flipped in ((False, True) if flip else (False,)):
                inp = scaled.flip(-1) if flipped else scaled
                logits = self._slide(inp) if mode == "slide" else self._forward(inp)
                if flipped:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != (height, width):
                    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
                total += logits.softmax(dim=1)
                passes += 1
        return (total / passes)[0].cpu().numpy()

    # ------------------------------------------------------------------ internals
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backend(x)

    def _slide(self, x: torch.Tensor, overlap: float = 1 / 3) -> torch.Tensor:
        """Logits averaged over overlapping windows; an image that fits one window is one pass."""
        height, width = x.shape[-2:]
        win_h, win_w = self.window or (height, width)
        win_h, win_w = min(win_h, height), min(win_w, width)
        logits = torch.zeros(1, self.labels.num_classes, height, width, device=x.device)
        counts = torch.zeros(1, 1, height, width, device=x.device)
        for top in window_starts(height, win_h, overlap):
            for left in window_starts(width, win_w, overlap):
                logits[..., top:top + win_h, left:left + win_w] += self._forward(x[..., top:top + win_h, left:left + win_w])
                counts[..., top:top + win_h, left:left + win_w] += 1
        return logits / counts


def window_starts(length: int, window: int, overlap: float = 1 / 3) -> list[int]:
    """Start offsets of windows covering `length`, overlapping by about `overlap`, the last one
    flush with the end (sliding-window inference, and fixed-size ONNX graphs on larger inputs)."""
    if length <= window:
        return [0]
    stride = max(1, math.ceil(window * (1 - overlap)))
    return [min(i * stride, length - window) for i in range(math.ceil((length - window) / stride) + 1)]


def as_rgb_array(image: ImageInput) -> np.ndarray:
    """HxWx3 uint8 RGB from a path, a PIL image or an array."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ConfigError(f"image: expected HxWx3 RGB, got an array of shape {array.shape}")
    if array.dtype != np.uint8:
        raise ConfigError(f"image: expected uint8 values, got {array.dtype}")
    return array[..., :3]


BACKENDS = ("auto", "pytorch", "onnxruntime", "openvino")


def load(path: Union[str, os.PathLike], device: str = "auto", precision: str = "auto",
         backend: str = "auto", crf: Union[None, bool, DenseCRF] = None) -> Predictor:
    """The Predictor of a checkpoint (`.pt`, PyTorch) or an exported model (`.onnx`, ONNX Runtime,
    or OpenVINO with `backend="openvino"`): `urbanseg.load("best.pt").predict(image)`; all give
    the same API. `precision` applies to PyTorch and OpenVINO (an ONNX Runtime graph computes in
    the precision it was exported with). `crf`: see `Predictor`."""
    crf = as_crf(crf)  # a missing pydensecrf2 is reported before the model is read
    if backend not in BACKENDS:
        raise ConfigError(f"backend: expected one of {', '.join(BACKENDS)}, got '{backend}'")
    exported = str(path).lower().endswith(".onnx")
    if backend == "pytorch" and exported:
        raise ConfigError(f"backend: pytorch runs checkpoints (.pt); {path} is an exported model")
    if backend in ("onnxruntime", "openvino") and not exported:
        raise ConfigError(f"backend: {backend} runs exported models (.onnx); {path} is not one "
                          "(`urbanseg export` makes one)")
    # imported here: ONNX Runtime and OpenVINO are optional extras (`pip install urbanseg[deploy]`)
    if exported and backend == "openvino":
        from .openvino_model import load_openvino

        predictor = load_openvino(path, device, precision)
    elif exported:
        from .onnx_model import load_onnx

        predictor = load_onnx(path, device)
    else:
        predictor = Predictor.from_checkpoint(path, device, precision)
    predictor.crf = crf
    return predictor
