"""Model ensembles as one Predictor: the class probabilities of several checkpoints, averaged.

    predictor = ensemble_predictor(["runs/cv/fold-0/checkpoints/best.pt", "runs/cv/fold-1/checkpoints/best.pt"])
    labels = predictor.predict("street.png")

`EnsembleBackend` is a Predictor backend like `inference.TorchBackend`: it takes (N, 3, H, W)
normalised images and returns "logits", here the log of the members' mean softmax. The
Predictor's softmax of those gives back exactly the averaged probabilities, so sliding windows,
flips and scales work on an ensemble as on one model. The members must predict the same classes
from the same preprocessing (one preset resizes and normalises the image for all of them).
"""
from __future__ import annotations

import os
from typing import Callable, Sequence, Union

import torch

from .engine.checkpoint import load_model
from .errors import CheckpointError
from .inference import Predictor, TorchBackend


class EnsembleBackend:
    """Members' softmax averaged, returned as log-probabilities (float32, (N, C, H, W))."""

    name = "ensemble"

    def __init__(self, members: Sequence[Callable[[torch.Tensor], torch.Tensor]]):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.device = getattr(self.members[0], "device", torch.device("cpu"))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        mean = sum(member(images).float().softmax(dim=1) for member in self.members) / len(self.members)
        # a probability of exactly 0 would give -inf, which bilinear resizing turns into NaN
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


def ensemble_predictor(checkpoints: Sequence[Union[str, os.PathLike]], device: str = "auto",
                       precision: str = "auto") -> Predictor:
    """One Predictor averaging the probabilities of `checkpoints` (the first one's config is kept)."""
    if not checkpoints:
        raise CheckpointError("ensemble: no checkpoints given")
    loaded = [load_model(path) for path in checkpoints]
    first = loaded[0]
    for path, member in zip(checkpoints[1:], loaded[1:]):
        if member.labels.to_dict() != first.labels.to_dict():
            raise CheckpointError(f"{path}: predicts other classes than {checkpoints[0]}; an ensemble needs "
                                  f"members with one label set")
        if member.preset.to_dict() != first.preset.to_dict():
            raise CheckpointError(f"{path}: preprocessing {member.preset.to_dict()} differs from "
                                  f"{checkpoints[0]}'s {first.preset.to_dict()}; an ensemble needs one preset")
    backend = EnsembleBackend([TorchBackend(member.model, device, precision) for member in loaded])
    return Predictor(backend, first.labels, first.preset, first.config)
