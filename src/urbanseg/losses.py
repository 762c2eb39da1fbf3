"""Segmentation losses, all ignore-aware and finite on batches where every pixel is ignored.

`build_loss(cfg, ignore_index, class_weights)` returns a weighted sum of terms
(`{ce: 1.0, dice: 1.0}`; cross-entropy and Dice together run as one fused term); class weights
for cross-entropy can be computed from training label frequencies with `class_weights_from_counts`
(ENet's inverse log frequency or median frequency).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .errors import ConfigError


class CrossEntropy(nn.Module):
    """Cross-entropy with ignore index, class weights and label smoothing; the weighted mean over
    valid pixels (0 when there are none, instead of PyTorch's NaN)."""

    def __init__(self, ignore_index: int = 255, weight: Optional[torch.Tensor] = None, label_smoothing: float = 0.0):
        super().__init__()
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_pixel = F.cross_entropy(
            logits.float(), target, weight=self.weight, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, reduction="none",
        )
        valid = target != self.ignore_index
        if self.weight is None:
            denominator = valid.sum()
        else:
            denominator = self.weight[target.clamp(max=len(self.weight) - 1)][valid].sum()
        return per_pixel.sum() / denominator.clamp(min=1e-12) if valid.any() else per_pixel.sum() * 0.0


class DiceLoss(nn.Module):
    """1 - mean soft Dice over the classes present in the (valid part of the) batch."""

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0):
        super().__init__()
        self.ignore_index, self.smooth = ignore_index, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        probs = logits.float().softmax(dim=1)
        valid = target != self.ignore_index
        safe = target.masked_fill(~valid, 0)
        # per-class sums without a one-hot tensor (N x C x H x W int64 would cost more than the model)
        p_true = probs.gather(1, safe.unsqueeze(1)).squeeze(1)[valid]
        classes = safe[valid]
        intersection = torch.zeros(num_classes, device=logits.device).index_add(0, classes, p_true)
        truth = torch.bincount(classes, minlength=num_classes).float()
        predicted = (probs * valid.unsqueeze(1)).sum(dim=(0, 2, 3))
        dice = (2 * intersection + self.smooth) / (predicted + truth + self.smooth)
        present = truth > 0
        if not present.any():
            return probs.sum() * 0.0
        return (1 - dice)[present].mean()


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): -(1 - p_t)^gamma * log p_t, mean over valid pixels."""

    def __init__(self, ignore_index: int = 255, gamma: float = 2.0, weight: Optional[torch.Tensor] = None):
        super().__init__()
        self.ignore_index, self.gamma = ignore_index, gamma
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        safe = target.masked_fill(~valid, 0)
        log_p = logits.float().log_softmax(dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is not None:
            loss = loss * self.weight[safe]
        return loss[valid].sum() / valid.sum().clamp(min=1)


class OhemCrossEntropy(nn.Module):
    """Online hard example mining: cross-entropy over the pixels whose true-class probability is
    below `threshold`, but at least the `min_kept` hardest valid pixels."""

    def __init__(self, ignore_index: int = 255, threshold: float = 0.7, min_kept: int = 100_000,
                 weight: Optional[torch.Tensor] = None):
        super().__init__()
        self.ignore_index, self.threshold, self.min_kept = ignore_index, threshold, min_kept
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_pixel = F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=self.ignore_index,
                                    reduction="none").flatten()
        valid = (target != self.ignore_index).flatten()
        losses = per_pixel[valid]
        if losses.numel() == 0:
            return per_pixel.sum() * 0.0
        hard = losses > -math.log(self.threshold)
        if hard.sum() < min(self.min_kept, losses.numel()):
            return losses.topk(min(self.min_kept, losses.numel())).values.mean()
        return losses[hard].mean()


class CrossEntropyDice(nn.Module):
    """`w_ce * CrossEntropy + w_dice * DiceLoss` (same values, same gradients) with one softmax and a
    hand-written backward. The two terms computed apart cost 2.5 passes over the logits each, and
    converting the channels-last logits of the model to float and back again took as long as a
    third of the network's backward pass on a CPU (128x256 crops, 19 classes)."""

    def __init__(self, ignore_index: int = 255, weight: Optional[torch.Tensor] = None,
                 ce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.ignore_index, self.ce_weight, self.dice_weight, self.smooth = ignore_index, ce_weight, dice_weight, smooth
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.weight is not None else torch.ones(logits.shape[1], device=logits.device)
        return _CrossEntropyDice.apply(logits, target, weight, self.ignore_index, self.ce_weight, self.dice_weight,
                                       self.smooth)


class _CrossEntropyDice(torch.autograd.Function):
    """With p = softmax(z), y the target and v the valid-pixel mask:
    CE = -sum_i v_i w_yi log p_i,yi / sum_i v_i w_yi;  Dice = mean over present classes c of
    1 - (2 I_c + s) / (P_c + T_c + s), I_c = sum_{i: yi=c} v_i p_ic, P_c = sum_i v_i p_ic, T_c = #{i: yi=c}.
    dLoss/dp_ic = v_i (a_c [yi=c] + b_c) for Dice, and dLoss/dz_i = p_i * (g_i - <p_i, g_i>) through
    the softmax; CE contributes w_yi (p_i - onehot_yi) / sum v w.

    Works on one row of class scores per pixel: for the channels-last logits the engine's models
    give, that is a view, so the softmax runs along contiguous memory and the class sums are
    matrix-vector products or sums over rows. Rows of ignored pixels are zeroed in the saved
    probabilities, so no later pass over all classes needs the mask. Forward and backward of a
    batch of 8 at 176x240 with 11 classes took 16 ms against 31-34 ms when computed on the 4-d
    tensor (fp32, channels-last, 2 CPU threads, on both of the project's CPU kinds)."""

    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, ce_weight, dice_weight, smooth):
        batch, num_classes, height, width = logits.shape
        rows = logits.permute(0, 2, 3, 1).reshape(-1, num_classes).float()
        flat_target = target.reshape(-1)
        is_valid = flat_target != ignore_index
        safe = flat_target.masked_fill(~is_valid, 0)
        valid = is_valid.float()
        # softmax by hand: PyTorch's along a short last dim took 5x as long on an AVX-512 CPU
        row_max = rows.amax(dim=1, keepdim=True)
        probs = (rows - row_max).exp_()
        norm = probs @ torch.ones(num_classes, device=rows.device)
        probs.mul_((valid / norm).unsqueeze(1))  # ignored pixels' rows zeroed
        log_p_true = rows.gather(1, safe.unsqueeze(1)).squeeze(1) - row_max.squeeze(1) - norm.log()
        p_true = log_p_true.exp() * valid
        pixel_weight = weight[safe] * valid
        weight_sum = pixel_weight.sum().clamp(min=1e-12)
        ce = -(pixel_weight * log_p_true).sum() / weight_sum

        # per-class sums over every pixel, accumulated in float64: one by one in float32 a count stops
        # at 2^24 (a large batch of Cityscapes crops has more road pixels than that)
        sums = torch.zeros(2, num_classes, dtype=torch.float64, device=rows.device)
        sums[0].index_add_(0, safe, p_true.double())
        sums[1].index_add_(0, safe, valid.double())
        intersection, truth = sums.float()
        predicted = probs.sum(dim=0)  # ignored rows are zero; BLAS's float32 `valid @ probs` stalls at 2^23
        denominator = predicted + truth + smooth
        present = (truth > 0).float()
        n_present = present.sum().clamp(min=1)
        dice = (((1 - (2 * intersection + smooth) / denominator) * present).sum() / n_present)

        own_class = -2 / denominator * present / n_present  # a_c
        every_pixel = (2 * intersection + smooth) / denominator ** 2 * present / n_present  # b_c
        ctx.save_for_backward(probs, safe, pixel_weight / weight_sum, own_class, every_pixel, p_true)
        ctx.ce_weight, ctx.dice_weight, ctx.dtype = ce_weight, dice_weight, logits.dtype
        ctx.shape = (batch, height, width, num_classes)
        return ce_weight * ce + dice_weight * dice

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        probs, safe, ce_scale, own_class, every_pixel, p_true = ctx.saved_tensors
        ce_scale = ctx.ce_weight * ce_scale  # 0 on ignored pixels, as are p_true and their probs
        dice_every = ctx.dice_weight * every_pixel
        own = own_class[safe] * p_true  # <p_i, g_i> of Dice, without its every-pixel part
        per_pixel = ce_scale - ctx.dice_weight * own - probs @ dice_every
        grad = (dice_every * grad_output).expand_as(probs) + (per_pixel * grad_output).unsqueeze(1)
        grad.mul_(probs)
        on_target = (ctx.dice_weight * own - ce_scale) * grad_output
        grad.scatter_add_(1, safe.unsqueeze(1), on_target.unsqueeze(1))
        return grad.view(ctx.shape).permute(0, 3, 1, 2).to(ctx.dtype), None, None, None, None, None, None


class WeightedSum(nn.Module):
    def __init__(self, terms: Dict[str, nn.Module], weights: Dict[str, float]):
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * term(logits, target) for name, term in self.terms.items())


LOSSES = ("ce", "dice", "focal", "ohem")


def build_loss(cfg, ignore_index: int = 255, class_weights: Optional[Sequence[float]] = None) -> nn.Module:
    """The loss of a `LossConfig`; `class_weights` (resolved from cfg.class_weights) go to CE, focal and OHEM."""
    if not cfg.terms:
        raise ConfigError("loss.terms: at least one loss term is needed")
    weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
    terms, weights = {}, dict(cfg.terms)
    if "ce" in cfg.terms and "dice" in cfg.terms and not cfg.label_smoothing:  # the same sum, computed faster
        terms["ce+dice"] = CrossEntropyDice(ignore_index, weight, weights.pop("ce"), weights.pop("dice"))
        weights["ce+dice"] = 1.0
    for name in cfg.terms:
        if name in ("ce", "dice") and "ce+dice" in terms:
            continue
        if name == "ce":
            terms[name] = CrossEntropy(ignore_index, weight, cfg.label_smoothing)
        elif name == "dice":
            terms[name] = DiceLoss(ignore_index)
        elif name == "focal":
            terms[name] = FocalLoss(ignore_index, cfg.focal_gamma, weight)
        elif name == "ohem":
            terms[name] = OhemCrossEntropy(ignore_index, cfg.ohem_threshold, cfg.ohem_min_kept, weight)
        else:
            raise ConfigError(f"loss.terms.{name}: unknown loss (expected one of {', '.join(LOSSES)})")
    return WeightedSum(terms, weights)


def class_weights_from_counts(pixel_counts: np.ndarray, image_pixels: np.ndarray, method: str = "enet") -> list[float]:
    """Class weights from label statistics of the training set.

    `pixel_counts[c]`: pixels of class c; `image_pixels[c]`: total pixels of the images containing c.
    enet: w_c = 1 / ln(1.02 + p_c) with p_c the class's share of all labelled pixels (Paszke et al. 2016);
    median: w_c = median(f) / f_c with f_c = pixel_counts[c] / image_pixels[c] (Eigen & Fergus 2015).
    Classes that never occur get the largest weight seen, so they are not ignored outright.
    """
    counts = pixel_counts.astype(np.float64)
    if method in ("enet", "auto"):
        weights = 1.0 / np.log(1.02 + counts / max(counts.sum(), 1.0))
    elif method == "median":
        present = image_pixels > 0
        freq = np.where(present, counts / np.maximum(image_pixels, 1), 0.0)
        observed = freq[freq > 0]
        median = np.median(observed) if observed.size else 1.0
        weights = np.where(freq > 0, median / np.maximum(freq, 1e-12), 0.0)
    else:
        raise ConfigError(f"loss.class_weights: expected auto, enet, median or a list, got '{method}'")
    absent = counts == 0
    if absent.any() and (~absent).any():
        weights[absent] = weights[~absent].max()
    return [float(w) for w in weights]
