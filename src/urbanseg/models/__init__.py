"""The model registry: `MODELS = {name: builder}` and `create_model(name, num_classes, **kwargs)`.

Every model maps an (N, 3, H, W) float image batch to (N, num_classes, H, W) logits at the input
size, whatever H and W are. Adding a model is one line here (plus its file if it is our own).
Errors a user can cause (unknown names or options, unavailable weights) are `ConfigError`s whose
message starts with the config key; any other exception from a builder is a bug.

segmentation-models-pytorch and timm are imported at module level: on top of torch and
torchvision, which this package needs anyway, they add ~0.5-1 s to the import, and almost every
recipe builds an smp model.
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import Callable, Optional

from torch import nn

from ..errors import ConfigError
from .danet import DANet
from .fcn import IMAGENET_WEIGHTS, FCNResNet50
from .padding import PadToMultiple
from .smp_models import ARCHITECTURES, check_encoder, smp_model, unknown_options
from .unet import UNet
from .weights import check_weights_spec, encoder_download, fetching, load_local_weights, smp_weights, url_download


def unet_scratch(num_classes: int, base_channels: int = 64, dropout: float = 0.0, upsampling: str = "transpose") -> nn.Module:
    """Our U-Net (unet.py), padded to multiples of 16 so any input size works."""
    return PadToMultiple(UNet(num_classes, 3, base_channels, dropout, upsampling), UNet.multiple)


def fcn_resnet50(num_classes: int, encoder_weights: Optional[str] = None) -> nn.Module:
    """FCN on torchvision's ResNet-50 (fcn.py); `imagenet` weights come through torch.hub."""
    check_weights_spec(encoder_weights)
    imagenet = encoder_weights == "imagenet"
    with fetching(url_download("resnet50 (torchvision)", IMAGENET_WEIGHTS.url) if imagenet else None):
        return FCNResNet50(num_classes, encoder_weights)


def danet(num_classes: int, encoder: str = "resnet50", encoder_weights: Optional[str] = None,
          output_stride: int = 16, dropout: float = 0.1) -> nn.Module:
    """DANet (danet.py) on any smp encoder; `imagenet` weights come through smp's `get_encoder`."""
    check_weights_spec(encoder_weights)
    check_encoder(encoder, "danet")
    with fetching(encoder_download(encoder) if encoder_weights == "imagenet" else None):
        model = DANet(num_classes, encoder, smp_weights(encoder, encoder_weights), output_stride, dropout)
    if encoder_weights not in (None, "imagenet"):
        load_local_weights(model.encoder, encoder_weights)
    return model


MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet_scratch": unet_scratch,
    "fcn_resnet50": fcn_resnet50,
    "danet": danet,
    **{arch: partial(smp_model, arch) for arch in ARCHITECTURES},
}


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build model `name`; keyword arguments go to its builder (None values are left out).

    The arguments are checked against the builder's signature before the call, so that a
    TypeError from inside a builder stays what it is, a bug, with its traceback.
    """
    if name not in MODELS:
        raise ConfigError(f"model.name: unknown model '{name}' (expected one of {', '.join(MODELS)})")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    builder = MODELS[name]
    signature = inspect.signature(builder)
    try:
        signature.bind(num_classes, **kwargs)
    except TypeError:
        allowed = list(signature.parameters)[1:]  # after num_classes
        unknown = [option for option in kwargs if option not in allowed]
        if not unknown:
            raise
        raise unknown_options(name, unknown, allowed) from None
    return builder(num_classes, **kwargs)
