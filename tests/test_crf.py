"""Dense CRF refinement (urbanseg.crf): on a case built to need it, through Predictor, evaluate and predict."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from urbanseg.cli import main
from urbanseg.config import DataConfig
from urbanseg.crf import DenseCRF, as_crf, crf_from_options
from urbanseg.data import build_dataset
from urbanseg.data.io import read_image, read_mask
from urbanseg.data.labels import folder_label_set
from urbanseg.errors import ConfigError
from urbanseg.inference import Predictor, load

COLOURS = np.array([[200, 60, 40], [40, 160, 60], [50, 70, 210]], np.uint8)


def blurred_case(seed: int, height: int = 48, width: int = 64):
    """Three flat-coloured regions with sharp edges (a slanted border and a disc), and the kind of
    probabilities a network gives there: the one-hot truth at 1/8 resolution, upsampled, blurred and
    noisy, so its argmax is wrong along the edges. Returns (image, probabilities, truth)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    truth = np.zeros((height, width), np.uint8)
    truth[y > 0.35 * height + 0.25 * x] = 1
    truth[(x - 0.7 * width) ** 2 + (y - 0.3 * height) ** 2 < (0.18 * height) ** 2] = 2
    image = np.clip(COLOURS[truth] + rng.normal(0, 3, (height, width, 3)), 0, 255).astype(np.uint8)
    onehot = np.eye(3, dtype=np.float32)[truth]
    coarse = cv2.resize(cv2.resize(onehot, (width // 8, height // 8), interpolation=cv2.INTER_AREA), (width, height))
    noisy = cv2.GaussianBlur(coarse, (0, 0), 2) + rng.normal(0, 0.15, coarse.shape)
    probs = np.clip(noisy, 0.01, None).transpose(2, 0, 1).astype(np.float32)
    return image, probs / probs.sum(axis=0), truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refine_gives_valid_probabilities_and_snaps_labels_to_image_edges(seed):
    image, probs, truth = blurred_case(seed)
    before = (probs.argmax(axis=0) == truth).mean()
    assert before < 0.97  # the case needs a CRF: the blurred map is wrong along the edges

    refined = DenseCRF().refine(image, probs)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    assert refined.min() >= 0 and np.allclose(refined.sum(axis=0), 1, atol=1e-4)
    labels = refined.argmax(axis=0)
    assert set(np.unique(labels)) <= {0, 1, 2}
    after = (labels == truth).mean()
    assert after >= before + 0.03 and after > 0.99


def test_refine_reads_non_contiguous_inputs_like_contiguous_ones():
    image, probs, _ = blurred_case(0)
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    crf = DenseCRF(iterations=3)
    expected = crf.refine(image, probs)
    assert np.array_equal(crf.refine(rgba, probs[:, ::-1][:, ::-1]), expected)  # strided, negative steps
    assert np.allclose(crf.refine(image, probs.astype(np.float64)), expected, atol=1e-5)  # float64


def test_parameters_are_validated_by_name():
    assert DenseCRF().to_dict() == {"iterations": 10, "smoothness_weight": 3.0, "smoothness_xy": 1.0,
                                    "appearance_weight": 4.0, "appearance_xy": 67.0, "appearance_rgb": 3.0}
    with pytest.raises(ConfigError, match=r"^crf\.iterations: expected a whole number >= 1, got 0$"):
        DenseCRF(iterations=0)
    with pytest.raises(ConfigError, match=r"^crf\.iterations: expected a whole number >= 1, got 2\.5$"):
        DenseCRF(iterations=2.5)
    with pytest.raises(ConfigError, match=r"^crf\.appearance_xy: expected a positive number, got -1$"):
        DenseCRF(appearance_xy=-1)
    with pytest.raises(ConfigError, match=r"^crf\.smoothness_weight: expected a positive number, got 0$"):
        DenseCRF(smoothness_weight=0)
    with pytest.raises(ConfigError, match=r"^crf\.appearance_rgb: expected a number, got 'x'$"):
        DenseCRF(appearance_rgb="x")
    with pytest.raises(ConfigError, match=r"^crf\.smoothness_xy: expected a number, got nan$"):
        DenseCRF(smoothness_xy=float("nan"))

    crf = DenseCRF.from_text(" iterations=5, appearance_xy=40 ")
    assert crf == DenseCRF(iterations=5, appearance_xy=40) and isinstance(crf.iterations, int)
    with pytest.raises(ConfigError, match=r"^--crf-params: expected KEY=VALUE pairs with KEY one of iterations, .*got 'bi_w=4'$"):
        DenseCRF.from_text("bi_w=4")
    with pytest.raises(ConfigError, match=r"^--crf-params: expected KEY=VALUE .*got 'iterations'$"):
        DenseCRF.from_text("iterations")
    with pytest.raises(ConfigError, match=r"^--crf-params: iterations: expected a number, got 'ten'$"):
        DenseCRF.from_text("iterations=ten")
    with pytest.raises(ConfigError, match=r"^crf\.iterations: expected a whole number >= 1, got 0"):
        DenseCRF.from_text("iterations=0")

    assert crf_from_options(False, None) is None and crf_from_options(True, None) == DenseCRF()
    assert crf_from_options(True, "iterations=2") == DenseCRF(iterations=2)
    with pytest.raises(ConfigError, match=r"^--crf-params: only meaningful with --crf$"):
        crf_from_options(False, "iterations=2")
    assert as_crf(None) is None and as_crf(False) is None and as_crf(True) == DenseCRF()
    with pytest.raises(ConfigError, match=r"^crf: expected None, True or a urbanseg.crf.DenseCRF, got dict$"):
        as_crf({"iterations": 3})
    image, probs, _ = blurred_case(0)
    with pytest.raises(ConfigError, match=r"^crf: expected a 48x64x3 uint8 RGB image for 3x48x64 probabilities, got uint8 64x48x3$"):
        DenseCRF().refine(image.transpose(1, 0, 2), probs)


def without_pydensecrf(monkeypatch):
    """Make `import pydensecrf...` fail as it does when the extra is not installed."""
    for name in [m for m in sys.modules if m == "pydensecrf" or m.startswith("pydensecrf.")] + ["pydensecrf"]:
        monkeypatch.setitem(sys.modules, name, None)


def test_without_the_extra_crf_fails_with_one_line_saying_how_to_install(monkeypatch, tiny_checkpoint, cityscapes_root,
                                                                         tmp_path, capsys):
    without_pydensecrf(monkeypatch)
    expected = ('--crf: needs pydensecrf2, which is not installed: pip install "urbanseg[crf]" '
                '(it builds from source; needs a C++ compiler such as g++)')
    with pytest.raises(ConfigError) as error:
        as_crf(True)
    assert str(error.value) == expected
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load(tiny_checkpoint, device="cpu", crf=True)
    predictor = load(tiny_checkpoint, device="cpu")  # everything else works without the package
    assert predictor.crf is None and predictor.predict(np.zeros((64, 128, 3), np.uint8)).shape == (64, 128)

    images = str(cityscapes_root / "leftImg8bit" / "val")
    assert main(["predict", str(tiny_checkpoint), images, "--out", str(tmp_path / "out"), "--crf"]) == 2
    assert main(["evaluate", str(tiny_checkpoint), "--data-root", str(cityscapes_root), "--out", str(tmp_path / "ev"),
                 "--crf"]) == 2
    assert capsys.readouterr().err == f"urbanseg: error: {expected}\n" * 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "ev").exists()  # failed before any work


def test_importing_urbanseg_does_not_import_pydensecrf():
    code = "import sys, urbanseg.inference, urbanseg.evaluation, urbanseg.cli; assert 'pydensecrf' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


class FixedLogits:
    """A stand-in backend: the same logits whatever the input (as many images as asked for)."""

    device = torch.device("cpu")

    def __init__(self, logits: np.ndarray):
        self.logits = torch.from_numpy(logits)[None]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(images.shape[0], -1, -1, -1)


def test_predictor_applies_the_crf_after_test_time_augmentation():
    image, probs, truth = blurred_case(1)
    predictor = Predictor(FixedLogits(np.log(probs)), folder_label_set(["red", "green", "blue"]), crf=True)
    assert predictor.crf == DenseCRF()
    for flip in (True, False):
        plain = predictor.network_proba(image, flip=flip)  # the averaged passes, before the CRF
        assert np.allclose(plain, probs if not flip else (probs + probs[:, :, ::-1]) / 2, atol=1e-5)
        refined = predictor.predict_proba(image, flip=flip)
        assert np.array_equal(refined, DenseCRF().refine(image, plain))
        assert np.array_equal(predictor.predict(image, flip=flip), refined.argmax(axis=0).astype(np.uint8))
    assert (predictor.predict(image) == truth).mean() > 0.99

    predictor.crf = DenseCRF(iterations=2)  # settable; None turns it off
    assert np.array_equal(predictor.predict_proba(image), DenseCRF(iterations=2).refine(image, plain))
    predictor.crf = None
    assert np.allclose(predictor.predict_proba(image), probs, atol=1e-5)
    with pytest.raises(ConfigError, match="^crf: expected None, True or a urbanseg.crf.DenseCRF, got str$"):
        predictor.crf = "deeplab"


def test_load_passes_the_crf_through(tiny_checkpoint, cityscapes_root):
    import urbanseg

    crf = DenseCRF(iterations=3)
    predictor = urbanseg.load(tiny_checkpoint, device="cpu", crf=crf)
    assert predictor.crf is crf
    image = read_image(sorted((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))[0])
    assert np.array_equal(predictor.predict_proba(image), crf.refine(image, predictor.network_proba(image)))


def by_hand(predictor, root, crf: DenseCRF | None):
    """Pixel accuracy and the confusion matrix of the predictor (plus CRF) on val, counted here."""
    dataset = build_dataset(DataConfig(root=str(root)), "val")
    n = dataset.labels.num_classes
    matrix = np.zeros((n, n), np.int64)
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        probs = predictor.network_proba(image)
        pred = (crf.refine(image, probs) if crf else probs).argmax(axis=0)
        valid = mask != dataset.labels.ignore_index
        np.add.at(matrix, (mask[valid], pred[valid]), 1)
    return np.trace(matrix) / matrix.sum(), matrix


def test_evaluate_crf_reports_metrics_with_and_without_it(tiny_checkpoint, cityscapes_root, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_checkpoint), "--data-root", str(cityscapes_root), "--out", str(out),
                 "--device", "cpu", "--crf", "--crf-params", "iterations=5,appearance_xy=20"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    crf = DenseCRF(iterations=5, appearance_xy=20)
    assert metrics["settings"]["crf"] == crf.to_dict()

    predictor = load(tiny_checkpoint, device="cpu")
    for result, refine in ((metrics, None), (metrics["crf"], crf)):
        accuracy, matrix = by_hand(predictor, cityscapes_root, refine)
        assert result["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert np.array_equal(np.array(result["confusion_matrix"])[:, :matrix.shape[1]], matrix)
    assert metrics["crf"]["confusion_matrix"] != metrics["confusion_matrix"]  # the CRF changed something
    for key in ("miou", "category_miou", "mean_accuracy", "fw_iou", "iiou"):
        assert key in metrics["crf"]

    # the printed comparison: without, with and the change in points, e.g. for mIoU
    row = re.search(r"^mIoU +(\S+) +(\S+) +(\S+)$", printed.split("dense CRF")[1], flags=re.M)
    without, with_crf, change = (float(v) for v in row.groups())
    assert without == pytest.approx(metrics["miou"] * 100, abs=0.006)
    assert with_crf == pytest.approx(metrics["crf"]["miou"] * 100, abs=0.006)
    assert change == pytest.approx(with_crf - without, abs=0.011)
    assert "pixel accuracy" in printed.split("dense CRF")[1]

    assert main(["evaluate", "--predictions", str(out), "--data-root", str(cityscapes_root), "--crf"]) == 2
    assert "--crf: needs a checkpoint or .onnx model" in capsys.readouterr().err


def test_predict_crf_writes_refined_outputs(tiny_checkpoint, cityscapes_root, tmp_path, capsys):
    images = sorted((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))[:2]
    out = tmp_path / "pred"
    assert main(["predict", str(tiny_checkpoint), *map(str, images), "--out", str(out), "--device", "cpu",
                 "--format", "trainids,probs,color", "--crf", "--crf-params", "iterations=3"]) == 0
    assert "wrote 6 files for 2 of 2 images" in capsys.readouterr().out
    predictor = load(tiny_checkpoint, device="cpu", crf=DenseCRF(iterations=3))
    for path in images:
        image = read_image(path)
        refined = predictor.predict_proba(image)
        assert np.array_equal(read_mask(out / f"{path.stem}_trainIds.png"), refined.argmax(axis=0))
        saved = np.load(out / f"{path.stem}_probs.npy")
        assert saved.shape == refined.shape and np.allclose(saved.sum(axis=0), 1, atol=1e-2)
        assert (out / f"{path.stem}_color.png").exists()

    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    helped = " ".join(capsys.readouterr().out.split())
    defaults = dict(re.findall(r"(\w+)=([\d.]+)", helped.split("default DeepLab v2's:")[1]))
    assert {k: float(v) for k, v in defaults.items()} == DenseCRF().to_dict()  # the help states the real defaults
