"""Optimisers: SGD, Adam, AdamW, with no weight decay on norm layers and biases by default."""
from __future__ import annotations

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam", "adamw")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def parameter_groups(model: nn.Module, weight_decay: float, exclude_norm_and_bias: bool = True) -> list[dict]:
    """Two groups: decayed weights, and norm parameters plus biases with weight_decay 0."""
    if not exclude_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(module, _NORMS) or name == "bias" or param.ndim <= 1:
                no_decay.append(param)
            else:
                decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay, cfg.no_decay_norm_and_bias)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    raise ValueError(f"optim.name: unknown optimizer '{cfg.name}' (expected one of {', '.join(OPTIMIZERS)})")
