"""Metrics against a hand-counted confusion matrix and against the official Cityscapes script."""
import math

import numpy as np
import pytest
import torch

from urbanseg.metrics import (CITYSCAPES_AVG_INSTANCE_SIZE, ConfusionMatrix, InstanceStats, json_safe, pair_counts,
                              summarize)

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


def test_add_pairs_counts_like_update_on_mapped_maps():
    rng = np.random.default_rng(1)
    lut = np.full(256, 255, np.uint8)
    lut[[3, 4, 5, 9]] = [0, 1, 2, 1]  # raw 9 merges into class 1; every other raw value is void
    truth = rng.choice(np.array([0, 3, 4, 5, 9], np.uint8), size=(40, 50))
    pred = rng.choice(np.array([0, 3, 4, 5, 9, 200], np.uint8), size=(40, 50))
    pairs = pair_counts(truth, pred)
    assert pairs.shape == (256, 256) and pairs.sum() == truth.size
    assert pairs[3, 200] == np.sum((truth == 3) & (pred == 200))
    expected, ours = ConfusionMatrix(3), ConfusionMatrix(3)
    expected.update(torch.from_numpy(lut[pred]), torch.from_numpy(lut[truth]))
    ours.add_pairs(pairs, lut)
    assert ours.matrix.tolist() == expected.matrix.tolist()
    assert ours.matrix[:, 3].sum() > 0  # void predictions on valid truth: the 'no class' column
    lut[9] = 7  # a class the matrix does not have
    with pytest.raises(ValueError, match="ground-truth class index 7 outside 0..2"):
        ours.add_pairs(pairs, lut)


def _official_instance_counts(pred, instances):
    """cityscapesscripts' per-instance loop (weighted tp and fn of classes and of categories)."""
    from urbanseg.data.labels import CITYSCAPES_BY_ID

    categories = {"human": [24, 25], "vehicle": [26, 27, 28, 29, 30, 31, 32, 33]}
    classes, cats = {}, {}
    for inst in np.unique(instances[instances > 1000]):
        label = CITYSCAPES_BY_ID[int(inst) // 1000]
        if label.ignore_in_eval:
            continue
        mask = instances == inst
        size = mask.sum()
        weight = CITYSCAPES_AVG_INSTANCE_SIZE[label.name] / size
        tp = np.sum(pred[mask] == label.id)
        tp_fn = classes.setdefault(label.name, [0.0, 0.0])
        tp_fn[0] += tp * weight
        tp_fn[1] += (size - tp) * weight
        cat_tp = np.sum(np.isin(pred[mask], categories[label.category]))
        tp_fn = cats.setdefault(label.category, [0.0, 0.0])
        tp_fn[0] += cat_tp * weight
        tp_fn[1] += (size - cat_tp) * weight
    return classes, cats


def _random_instance_image(rng, shape=(48, 64)):
    instances = rng.choice(np.array([7, 11, 26, 24], np.uint16), size=shape)
    for inst in (24001, 24002, 25001, 26001, 26005, 29001, 33001):  # 29: caravan, ignored
        y, x = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        instances[y:y + rng.integers(2, 12), x:x + rng.integers(2, 16)] = inst
    truth = np.where(instances > 1000, instances // 1000, instances).astype(np.uint8)
    pred = truth.copy()
    noise = rng.random(shape) < 0.3
    pred[noise] = rng.choice(np.array([0, 7, 24, 25, 26, 27, 29, 30, 33], np.uint8), size=noise.sum())
    return truth, pred, instances


def test_instance_stats_equal_the_official_per_instance_loop():
    rng = np.random.default_rng(2)
    stats = InstanceStats()
    expected_classes, expected_categories = {}, {}
    for _ in range(3):
        truth, pred, instances = _random_instance_image(rng)
        stats.update(pred, instances, truth)
        classes, categories = _official_instance_counts(pred, instances)
        for ours, theirs in ((expected_classes, classes), (expected_categories, categories)):
            for name, (tp, fn) in theirs.items():
                total = ours.setdefault(name, [0.0, 0.0])
                total[0] += tp
                total[1] += fn
    ids = {"person": 24, "rider": 25, "car": 26, "bicycle": 33}
    assert set(expected_classes) == set(ids)  # the caravan instance is ignored
    for name, (tp, fn) in expected_classes.items():
        assert stats.class_tp[ids[name]] == pytest.approx(tp, rel=1e-12)
        assert stats.class_fn[ids[name]] == pytest.approx(fn, rel=1e-12)
    for k, name in enumerate(stats.tables.categories):
        assert stats.category_tp[k] == pytest.approx(expected_categories[name][0], rel=1e-12)
        assert stats.category_fn[k] == pytest.approx(expected_categories[name][1], rel=1e-12)


def test_instance_stats_of_separate_images_merge_to_the_same_numbers():
    rng = np.random.default_rng(3)
    images = [_random_instance_image(rng) for _ in range(4)]
    whole, merged = InstanceStats(), InstanceStats()
    for truth, pred, instances in images:
        whole.update(pred, instances, truth)
        part = InstanceStats()
        part.count_pairs(pair_counts(truth, pred))
        part.count_instances(pred, instances)
        merged.merge(part)
    # caravan (29) and trailer (30) predictions on non-vehicle truth: vehicle false positives
    vehicle = merged.tables.categories.index("vehicle")
    on_other_truth = sum(np.sum(np.isin(p, [29, 30]) & np.isin(t, [7, 11, 24, 25])) for t, p, _ in images)
    assert merged.category_extra_fp[vehicle] == on_other_truth > 0
    for name in ("class_tp", "class_fn", "category_tp", "category_fn", "category_extra_fp"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-12)
