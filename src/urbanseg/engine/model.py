"""A model built from the `model` section of a config (the registry does the rest)."""
from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from ..models import create_model


def build_model(cfg: ModelConfig, num_classes: int, pretrained: bool = True) -> nn.Module:
    """`pretrained=False` skips `model.encoder_weights`: for a model whose weights come from a
    checkpoint next (resuming, loading for use), fetching them first would be wasted, or fail offline."""
    return create_model(cfg.name, num_classes, encoder=cfg.encoder,
                        encoder_weights=cfg.encoder_weights if pretrained else None, **cfg.options)
