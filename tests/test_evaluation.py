"""Evaluation fidelity: urbanseg's numbers equal the official cityscapesscripts evaluation."""
import importlib
import json

import numpy as np
import pytest

from urbanseg.cli import main
from urbanseg.data import Cityscapes
from urbanseg.data.io import read_mask, write_png
from urbanseg.errors import DataError
from urbanseg.evaluation import evaluate_prediction_files
from urbanseg.metrics import json_safe


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


def test_numbers_do_not_depend_on_the_worker_count(cityscapes_root, tmp_path):
    _noisy_predictions(cityscapes_root, tmp_path / "pred", seed=2)
    dataset = Cityscapes(cityscapes_root, "val")
    one = evaluate_prediction_files(tmp_path / "pred", dataset, progress=False, workers=1)
    three = evaluate_prediction_files(tmp_path / "pred", dataset, progress=False, workers=3)
    assert "iiou" in one and json_safe(one) == json_safe(three)


def test_each_bad_prediction_file_is_named_in_sample_order(cityscapes_root, tmp_path):
    files = _noisy_predictions(cityscapes_root, tmp_path / "pred")
    dataset = Cityscapes(cityscapes_root, "val")

    def error(workers=2):
        with pytest.raises(DataError) as caught:
            evaluate_prediction_files(tmp_path / "pred", dataset, progress=False, workers=workers)
        return str(caught.value)

    write_png(files[1], np.stack([read_mask(files[1])] * 3, axis=-1))
    files[3].unlink()
    # with several workers, later images fail too, but the first failing sample is the one reported
    assert error() == error(workers=1) == f"{files[1]}: expected a single-channel labelIds image"
    write_png(files[1], np.full((64, 128), 200, np.uint8))
    assert error() == f"{files[1]}: unknown label values [200] for label set 'cityscapes'"
    write_png(files[1], np.full((64, 128), 7, np.uint8))
    missing = dataset.samples[3]
    assert error() == f"{tmp_path / 'pred'}: no prediction {missing.name}*.png for {missing.mask}"
    write_png(files[3], np.full((64, 128), 7, np.uint8))
    duplicate = tmp_path / "pred" / "sub" / f"{dataset.samples[4].name}_copy.png"
    write_png(duplicate, np.full((64, 128), 7, np.uint8))
    assert f"several predictions match {dataset.samples[4].name}*.png" in error()
    duplicate.unlink()
    assert 0 < evaluate_prediction_files(tmp_path / "pred", dataset, progress=False)["miou"] < 1


def test_a_bad_instance_file_is_named(cityscapes_copy, tmp_path):
    _noisy_predictions(cityscapes_copy, tmp_path / "pred")
    instance = sorted((cityscapes_copy / "gtFine" / "val").rglob("*_instanceIds.png"))[2]
    write_png(instance, read_mask(instance)[:20])
    with pytest.raises(DataError, match=f"{instance}: prediction shape \\(64, 128\\) differs from instance ids"):
        evaluate_prediction_files(tmp_path / "pred", Cityscapes(cityscapes_copy, "val"), progress=False)
    write_png(instance, np.full((64, 128), 7001, np.uint16))  # an 'instance' of road, which has none
    with pytest.raises(DataError, match=f"{instance}: instance id 7001: label id 7 is not an instance class"):
        evaluate_prediction_files(tmp_path / "pred", Cityscapes(cityscapes_copy, "val"), progress=False)
