"""Losses against values computed by hand (numpy) on tiny tensors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from urbanseg.config import LossConfig
from urbanseg.losses import (
    CrossEntropy, DiceLoss, FocalLoss, OhemCrossEntropy, build_loss, class_weights_from_counts,
)

# one image, 3 classes, 1x4 pixels; targets: 0, 2, ignore, 1
LOGITS = torch.tensor([[[[2.0, 0.0, 1.0, -1.0]], [[0.5, 1.0, 0.0, 2.0]], [[-1.0, 3.0, 0.5, 0.0]]]])
TARGET = torch.tensor([[[0, 2, 255, 1]]])


def _softmax():
    z = LOGITS[0, :, 0, :].numpy().T  # pixels x classes
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _p_true():
    p = _softmax()
    return np.array([p[0, 0], p[1, 2], p[3, 1]])  # valid pixels only


def test_cross_entropy_by_hand():
    expected = -np.log(_p_true()).mean()
    assert CrossEntropy()(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    w = torch.tensor([1.0, 2.0, 0.5])
    weighted = -(1.0 * np.log(_p_true()[0]) + 0.5 * np.log(_p_true()[1]) + 2.0 * np.log(_p_true()[2])) / 3.5
    assert CrossEntropy(weight=w)(LOGITS, TARGET).item() == pytest.approx(weighted, rel=1e-6)
    smooth = CrossEntropy(label_smoothing=0.1)(LOGITS, TARGET)
    assert smooth.item() == pytest.approx(F.cross_entropy(LOGITS, TARGET, ignore_index=255, label_smoothing=0.1).item())


def test_focal_by_hand():
    p = _p_true()
    expected = (-((1 - p) ** 2) * np.log(p)).mean()
    assert FocalLoss(gamma=2.0)(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    assert FocalLoss(gamma=0.0)(LOGITS, TARGET).item() == pytest.approx(CrossEntropy()(LOGITS, TARGET).item(), rel=1e-6)


def test_dice_by_hand():
    p = _softmax()[[0, 1, 3]]  # valid pixels
    g = np.eye(3)[[0, 2, 1]]
    dice = (2 * (p * g).sum(0) + 1) / (p.sum(0) + g.sum(0) + 1)
    assert DiceLoss()(LOGITS, TARGET).item() == pytest.approx((1 - dice).mean(), rel=1e-6)


def test_ohem_keeps_hard_pixels():
    losses = -np.log(_p_true())
    threshold = 0.8  # pixels whose true-class probability is below 0.8
    hard = losses[_p_true() < threshold]
    assert 0 < hard.size < 3
    ohem = OhemCrossEntropy(threshold=threshold, min_kept=1)(LOGITS, TARGET)
    assert ohem.item() == pytest.approx(hard.mean(), rel=1e-6)
    top2 = np.sort(losses)[-2:].mean()  # min_kept larger than the hard set: the hardest 2
    assert OhemCrossEntropy(threshold=0.01, min_kept=2)(LOGITS, TARGET).item() == pytest.approx(top2, rel=1e-6)


@pytest.mark.parametrize("term", ["ce", "dice", "focal", "ohem", "ce+dice"])
def test_all_ignored_batch_is_finite_and_has_zero_gradient(term):
    loss_fn = build_loss(LossConfig(terms={name: 1.0 for name in term.split("+")}), class_weights=[1.0, 2.0, 3.0])
    logits = LOGITS.clone().requires_grad_(True)
    loss = loss_fn(logits, torch.full_like(TARGET, 255))
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_weighted_sum_and_unknown_term():
    both = build_loss(LossConfig(terms={"ce": 1.0, "dice": 0.5}))(LOGITS, TARGET)
    assert both.item() == pytest.approx(CrossEntropy()(LOGITS, TARGET).item() + 0.5 * DiceLoss()(LOGITS, TARGET).item())
    with pytest.raises(ValueError, match="loss.terms.lovasz: unknown loss"):
        build_loss(LossConfig(terms={"lovasz": 1.0}))


def test_class_weights_formulas():
    pixels = np.array([900, 90, 10, 0])
    image_pixels = np.array([1000, 500, 100, 0])
    enet = class_weights_from_counts(pixels, image_pixels, "enet")
    share = pixels / pixels.sum()
    expected = 1 / np.log(1.02 + share[:3])
    np.testing.assert_allclose(enet[:3], expected)
    assert enet[3] == pytest.approx(expected.max())  # absent class: the largest weight seen
    median = class_weights_from_counts(pixels, image_pixels, "median")
    freq = pixels[:3] / image_pixels[:3]  # 0.9, 0.18, 0.1
    np.testing.assert_allclose(median[:3], np.median(freq) / freq)
    with pytest.raises(ValueError, match="loss.class_weights"):
        class_weights_from_counts(pixels, image_pixels, "inverse")
    assert math.isclose(enet[0], 1 / math.log(1.02 + 0.9))


@pytest.mark.parametrize("ignore_some", [True, False])
def test_fused_ce_dice_equals_the_sum_of_its_terms(ignore_some):
    """CrossEntropyDice has its own backward: values and gradients must equal the two terms' sum,
    also for channels-last logits in fp32 and bf16 (what the model gives under autocast), absent
    classes and an upstream gradient other than 1."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7) * 3
    target = torch.randint(0, 4, (2, 6, 7))  # class 4 absent
    if ignore_some:
        target[:, :2] = 255
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5])
    fused = build_loss(LossConfig(terms={"ce": 0.7, "dice": 1.3}), class_weights=weight.tolist())
    assert "ce+dice" in fused.terms

    def value_and_grad(loss_fn, x):
        x = x.detach().requires_grad_(True)
        loss = loss_fn(x, target)
        (2.5 * loss).backward()
        return loss.detach(), x.grad

    def separate(x, t):
        return 0.7 * CrossEntropy(weight=weight)(x, t) + 1.3 * DiceLoss()(x, t)

    expected, expected_grad = value_and_grad(separate, logits)
    got, got_grad = value_and_grad(fused, logits)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(got_grad, expected_grad, atol=1e-6)

    channels_last = logits.contiguous(memory_format=torch.channels_last)
    got, got_grad = value_and_grad(fused, channels_last)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(got_grad, expected_grad, atol=1e-6)

    half = logits.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    expected, expected_grad = value_and_grad(lambda x, t: separate(x.float(), t), half)
    got, got_grad = value_and_grad(fused, half)
    assert got_grad.dtype == torch.bfloat16
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(got_grad.float(), expected_grad.float(), atol=1e-3)


def test_fused_ce_dice_is_exact_for_confident_wrong_logits():
    logits = torch.tensor([[[[200.0]], [[-200.0]]]])  # p(class 1) underflows to 0 in float32
    target = torch.tensor([[[1]]])
    fused = build_loss(LossConfig(terms={"ce": 1.0, "dice": 1.0}))
    dice = 1 - (0 + 1) / (0 + 1 + 1)  # no probability on the true class; smooth 1
    assert fused(logits, target).item() == pytest.approx(400.0 + dice, rel=1e-6)


def test_fused_ce_dice_counts_classes_past_float32_integers():
    """A class can cover more than 2^24 pixels of a batch (road in 32 Cityscapes crops at
    1024x2048), past which adding 1 to a float32 count changes nothing: Dice must still see them all."""
    pixels = 2**24 + 2**22
    logits = torch.zeros(1, 2, 1, pixels).contiguous(memory_format=torch.channels_last)
    logits[:, 0] = math.log(3)  # p = 0.75 for the true class everywhere
    target = torch.zeros(1, 1, pixels, dtype=torch.long)
    fused = build_loss(LossConfig(terms={"ce": 1.0, "dice": 1.0}))
    dice = 1 - (2 * 0.75 * pixels + 1) / (0.75 * pixels + pixels + 1)  # I = P = 3N/4, T = N; smooth 1
    assert fused(logits, target).item() == pytest.approx(-math.log(0.75) + dice, rel=1e-5)
