"""Load pretrained weights from a local file (for machines without a network)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def load_local_weights(module: nn.Module, path: str, key: str) -> None:
    """Load a state dict from `.safetensors` or a torch file (never executing pickled code)."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{key}: '{path}' is neither 'imagenet' nor an existing weights file")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # unpickling errors vary by torch version
            raise ValueError(f"{key}: {path} is not a loadable weights file ({error.__class__.__name__})") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    own = module.state_dict()
    matching = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not matching:
        raise ValueError(f"{key}: no tensor in {path} matches the encoder's parameters")
    module.load_state_dict(matching, strict=False)
