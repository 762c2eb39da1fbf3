"""Segmentation losses, all ignore-aware and finite on batches where every pixel is ignored.

`build_loss(cfg, num_classes, ignore_index, class_weights)` returns a weighted sum of terms
(`{ce: 1.0, dice: 1.0}`); class weights for cross-entropy can be computed from training label
frequencies with `class_weights_from_counts` (ENet's inverse log frequency or median frequency).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


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
        raise ValueError("loss.terms: at least one loss term is needed")
    weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
    terms = {}
    for name in cfg.terms:
        if name == "ce":
            terms[name] = CrossEntropy(ignore_index, weight, cfg.label_smoothing)
        elif name == "dice":
            terms[name] = DiceLoss(ignore_index)
        elif name == "focal":
            terms[name] = FocalLoss(ignore_index, cfg.focal_gamma, weight)
        elif name == "ohem":
            terms[name] = OhemCrossEntropy(ignore_index, cfg.ohem_threshold, cfg.ohem_min_kept, weight)
        else:
            raise ValueError(f"loss.terms.{name}: unknown loss (expected one of {', '.join(LOSSES)})")
    return WeightedSum(terms, cfg.terms)


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
        raise ValueError(f"loss.class_weights: expected auto, enet, median or a list, got '{method}'")
    absent = counts == 0
    if absent.any() and (~absent).any():
        weights[absent] = weights[~absent].max()
    return [float(w) for w in weights]
