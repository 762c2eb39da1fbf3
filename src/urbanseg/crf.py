"""Dense CRF refinement: the fully connected CRF of Krähenbühl and Koltun (NeurIPS 2011) on softmax output.

    crf = DenseCRF()                                    # DeepLab's parameters
    refined = crf.refine(image, probs)                  # HxWx3 uint8 RGB, CxHxW -> CxHxW probabilities
    predictor = urbanseg.load("best.pt", crf=DenseCRF(iterations=5))

A network's probabilities are blurry at object borders (they are upsampled from feature maps at
1/4 to 1/32 of the image's resolution); the CRF pulls each pixel towards the labels of pixels that are near it (smoothness
kernel) and near it *and* of similar colour (appearance kernel), so borders snap to image edges.
Inference is pydensecrf's mean field over a permutohedral lattice, linear in the pixels.

pydensecrf2 (module `pydensecrf`) is an optional extra that builds from source, so it is imported
only when a CRF is used: `pip install "urbanseg[crf]"`, with a C++ compiler (e.g. g++) present.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional, Union

import numpy as np

from .errors import ConfigError

INSTALL = ('--crf: needs pydensecrf2, which is not installed: pip install "urbanseg[crf]" '
           '(it builds from source; needs a C++ compiler such as g++)')


def require():
    """pydensecrf's `densecrf` module, or a one-line ConfigError saying how to install it."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise ConfigError(INSTALL) from None
    return dcrf


@dataclass(frozen=True)
class DenseCRF:
    """The CRF's parameters; `refine` applies it.

    Defaults are DeepLab v2's (ResNet-101, PASCAL VOC 2012) as released with deeplab-public-ver2
    and reproduced in kazuto1011/deeplab-pytorch configs/voc12.yaml (CRF: ITER_MAX 10, POS_W 3,
    POS_XY_STD 1, BI_W 4, BI_XY_STD 67, BI_RGB_STD 3). Names map to DeepLab's / the paper's:

        iterations         ITER_MAX     mean-field steps
        smoothness_weight  POS_W        w2: weight of the position-only (Gaussian) kernel
        smoothness_xy      POS_XY_STD   theta_gamma: its spatial standard deviation, pixels
        appearance_weight  BI_W         w1: weight of the position + colour (bilateral) kernel
        appearance_xy      BI_XY_STD    theta_alpha: its spatial standard deviation, pixels
        appearance_rgb     BI_RGB_STD   theta_beta: its colour standard deviation, 0..255 units

    The spatial deviations are in pixels and were tuned on PASCAL's ~500x375 images; for much
    larger images a proportionally larger `appearance_xy` may do better (measure with
    `evaluate --crf`, which reports the metrics with and without it).

    Cost: memory and time grow with pixels x classes. Mean field keeps several float32 CxN arrays
    (unary, Q, scratch) plus the two lattices, so one 1024x2048 Cityscapes image with 19 classes
    peaks at about 2 GB and takes about 14 s for 10 iterations on one CPU core (measured on the
    2-core development machine; noisier images build bigger lattices and take longer);
    `iterations=5` about halves the time.
    """

    iterations: int = 10
    smoothness_weight: float = 3.0
    smoothness_xy: float = 1.0
    appearance_weight: float = 4.0
    appearance_xy: float = 67.0
    appearance_rgb: float = 3.0

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ConfigError(f"crf.{item.name}: expected a number, got {value!r}")
        if self.iterations != int(self.iterations) or self.iterations < 1:
            raise ConfigError(f"crf.iterations: expected a whole number >= 1, got {self.iterations:g}")
        object.__setattr__(self, "iterations", int(self.iterations))
        for item in fields(self)[1:]:
            if getattr(self, item.name) <= 0:
                raise ConfigError(f"crf.{item.name}: expected a positive number, got {getattr(self, item.name)}")

    @classmethod
    def from_text(cls, text: str) -> "DenseCRF":
        """`iterations=5,appearance_xy=40` (the `--crf-params` option) -> DenseCRF; keys not named keep
        their defaults."""
        names = [item.name for item in fields(cls)]
        values: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            key, sep, value = (s.strip() for s in part.partition("="))
            if not sep or key not in names:
                raise ConfigError(f"--crf-params: expected KEY=VALUE pairs with KEY one of {', '.join(names)}, "
                                  f"got '{part}'")
            try:
                values[key] = float(value)
            except ValueError:
                raise ConfigError(f"--crf-params: {key}: expected a number, got '{value}'") from None
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def refine(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """CxHxW float32 probabilities after mean-field inference (each pixel sums to 1), from the
        HxWx3 uint8 RGB image and the network's CxHxW probabilities at the same resolution."""
        dcrf = require()
        from pydensecrf.utils import unary_from_softmax

        num_classes, height, width = probs.shape
        if image.shape[:2] != (height, width) or image.ndim != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
            raise ConfigError(f"crf: expected a {height}x{width}x3 uint8 RGB image for {num_classes}x{height}x{width} "
                              f"probabilities, got {image.dtype} {'x'.join(map(str, image.shape))}")
        # pydensecrf reads raw buffers: float32 and uint8, C-contiguous, or it raises / misreads
        unary = np.ascontiguousarray(unary_from_softmax(probs), dtype=np.float32)  # -log p, p clipped at 1e-5
        rgb = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        crf = dcrf.DenseCRF2D(width, height, num_classes)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=self.smoothness_xy, compat=self.smoothness_weight)
        crf.addPairwiseBilateral(sxy=self.appearance_xy, srgb=self.appearance_rgb, rgbim=rgb,
                                 compat=self.appearance_weight)
        q = np.asarray(crf.inference(self.iterations), dtype=np.float32)
        return q.reshape(num_classes, height, width)


def as_crf(value: Union[None, bool, DenseCRF]) -> Optional[DenseCRF]:
    """What `Predictor(crf=...)` accepts: None / False (no CRF), True (DeepLab's parameters) or a
    DenseCRF. A CRF needs pydensecrf2, checked here so a run fails before any image is processed."""
    if value is None or value is False:
        return None
    crf = DenseCRF() if value is True else value
    if not isinstance(crf, DenseCRF):
        raise ConfigError(f"crf: expected None, True or a urbanseg.crf.DenseCRF, got {type(value).__name__}")
    require()
    return crf


def crf_from_options(enabled: bool, params: Optional[str]) -> Optional[DenseCRF]:
    """The DenseCRF that `--crf` and `--crf-params KEY=VALUE,...` ask for, or None without `--crf`."""
    if not enabled:
        if params:
            raise ConfigError("--crf-params: only meaningful with --crf")
        return None
    return as_crf(DenseCRF.from_text(params or ""))
