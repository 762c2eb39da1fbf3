"""Evaluation fidelity: urbanseg's numbers equal the official cityscapesscripts evaluation."""
import importlib
import json

import numpy as np
import pytest

from urbanseg.cli import main
from urbanseg.data import Cityscapes
from urbanseg.data.io import read_mask, write_png
from urbanseg.evaluation import evaluate_prediction_files


def _noisy_predictions(root, out, seed=0):
    """Plausible but imperfect labelIds predictions: the truth with blocks of random wrong ids,
    some void ids, and some instances erased."""
    rng = np.random.default_rng(seed)
    valid_ids = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    files = []
    for label in sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png")):
        truth = read_mask(label)
        pred = truth.copy()
        for _ in range(12):
            y, x = rng.integers(0, truth.shape[0] - 8), rng.integers(0, truth.shape[1] - 8)
            # also void ids and ignored vehicle ids (caravan 29, trailer 30), which the official
            # script treats specially in category iIoU
            pred[y:y + rng.integers(2, 12), x:x + rng.integers(2, 24)] = rng.choice(valid_ids + [0, 4, 29, 30])
        pred[rng.random(truth.shape) < 0.02] = rng.choice(valid_ids)
        stem = label.name[: -len("_gtFine_labelIds.png")]
        files.append(out / f"{stem}_leftImg8bit_pred.png")
        write_png(files[-1], pred)
    return files


@pytest.fixture
def official(monkeypatch, tmp_path):
    monkeypatch.setenv("CITYSCAPES_EXPORT_DIR", str(tmp_path))
    # cityscapesscripts 2.3.0 still calls np.in1d, which NumPy 2.4 removed; np.isin is its successor
    monkeypatch.setattr(np, "in1d", lambda a, b, invert=False: np.isin(a, b, invert=invert).ravel(), raising=False)
    module = importlib.import_module("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    module.args.quiet = True
    module.args.JSONOutput = False
    return module


def test_class_and_category_iou_and_iiou_equal_the_official_script(cityscapes_root, tmp_path, official):
    predictions = _noisy_predictions(cityscapes_root, tmp_path / "pred")
    truths = sorted((cityscapes_root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    theirs = official.evaluateImgLists([str(p) for p in predictions], [str(t) for t in truths], official.args)

    ours = evaluate_prediction_files(tmp_path / "pred", Cityscapes(cityscapes_root, "val"), progress=False)
    assert ours["miou"] == pytest.approx(theirs["averageScoreClasses"], abs=1e-6)
    assert ours["category_miou"] == pytest.approx(theirs["averageScoreCategories"], abs=1e-6)
    assert ours["iiou"] == pytest.approx(theirs["averageScoreInstClasses"], abs=1e-6)
    assert ours["category_iiou"] == pytest.approx(theirs["averageScoreInstCategories"], abs=1e-6)
    for name, row in ours["per_class"].items():
        reference = theirs["classScores"][name]
        assert (np.isnan(reference) and np.isnan(row["iou"])) or row["iou"] == pytest.approx(reference, abs=1e-6)
    for name, value in ours["per_category"].items():
        assert value == pytest.approx(theirs["categoryScores"][name], abs=1e-6)


def test_evaluate_predictions_from_the_command_line(cityscapes_root, tmp_path, capsys):
    _noisy_predictions(cityscapes_root, tmp_path / "pred", seed=1)
    code = main(["evaluate", "--predictions", str(tmp_path / "pred"), "--data-root", str(cityscapes_root),
                 "--split", "val", "--out", str(tmp_path / "eval")])
    assert code == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "category mIoU" in out and "road" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"miou", "category_miou", "pixel_accuracy", "mean_accuracy", "per_class", "confusion_matrix",
            "settings"} <= set(metrics)
    assert metrics["settings"]["resolution"] == [64, 128] and metrics["settings"]["images"] == 5
    assert set(metrics["per_class"]["road"]) >= {"iou", "precision", "recall", "f1"}
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000
    assert (tmp_path / "eval" / "class_iou.png").stat().st_size > 1000


def test_bad_prediction_files_are_named(cityscapes_root, tmp_path, capsys):
    files = _noisy_predictions(cityscapes_root, tmp_path / "pred")
    write_png(files[0], read_mask(files[0])[:10])
    assert main(["evaluate", "--predictions", str(tmp_path / "pred"), "--data-root", str(cityscapes_root)]) == 2
    assert f"{files[0]}: size 128x10 differs from the ground truth" in capsys.readouterr().err
    files[0].unlink()
    assert main(["evaluate", "--predictions", str(tmp_path / "pred"), "--data-root", str(cityscapes_root)]) == 2
    assert "no prediction frankfurt_000000_000019*.png" in capsys.readouterr().err
    assert main(["evaluate", "--data-root", str(cityscapes_root)]) == 2
    assert "give either a checkpoint or --predictions" in capsys.readouterr().err


def test_partly_missing_instance_files_are_an_error(cityscapes_copy, tmp_path, capsys):
    _noisy_predictions(cityscapes_copy, tmp_path / "pred")
    instance = sorted((cityscapes_copy / "gtFine" / "val").rglob("*_instanceIds.png"))[1]
    instance.unlink()
    assert main(["evaluate", "--predictions", str(tmp_path / "pred"), "--data-root", str(cityscapes_copy)]) == 2
    assert f"{instance}: missing, while other images have instance ids" in capsys.readouterr().err
    for other in (cityscapes_copy / "gtFine" / "val").rglob("*_instanceIds.png"):
        other.unlink()
    metrics = evaluate_prediction_files(tmp_path / "pred", Cityscapes(cityscapes_copy, "val"), progress=False)
    assert "iiou" not in metrics and 0 < metrics["miou"] < 1
