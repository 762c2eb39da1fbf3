"""The model registry: `MODELS = {name: builder}` and `create_model(name, num_classes, **kwargs)`.

Every model maps an (N, 3, H, W) float image batch to (N, num_classes, H, W) logits at the input
size, whatever H and W are. Adding a model is one line here (plus its file if it is our own).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional

from torch import nn

from .danet import DANet
from .fcn import FCNResNet50
from .padding import PadToMultiple
from .unet import UNet
from .unet_stride import decoder_channels_for_build, stop_decoder_early
from .weights import load_local_weights

SMP_ARCHITECTURES = (
    "unet", "unetplusplus", "manet", "linknet", "fpn", "pspnet", "deeplabv3", "deeplabv3plus",
    "pan", "upernet", "segformer", "dpt",
)
DEFAULT_ENCODERS = {"segformer": "mit_b0", "dpt": "tu-vit_base_patch16_224.augreg_in21k"}
MIN_INPUT = {"pan": 128}  # PAN's feature pyramid attention pools its 1/16 map three more times


def unet_scratch(num_classes: int, base_channels: int = 64, dropout: float = 0.0, upsampling: str = "transpose") -> nn.Module:
    return PadToMultiple(UNet(num_classes, 3, base_channels, dropout, upsampling), UNet.multiple)


def fcn_resnet50(num_classes: int, encoder_weights: Optional[str] = None) -> nn.Module:
    return FCNResNet50(num_classes, encoder_weights)


def danet(num_classes: int, encoder: str = "resnet50", encoder_weights: Optional[str] = None, **options) -> nn.Module:
    local = encoder_weights not in (None, "imagenet")
    model = DANet(num_classes, encoder, None if local else encoder_weights, **options)
    if local:
        load_local_weights(model.encoder, encoder_weights, "model.encoder_weights")
    return model


def smp_model(arch: str, num_classes: int, encoder: Optional[str] = None, encoder_weights: Optional[str] = None,
              **options) -> nn.Module:
    """Any segmentation-models-pytorch architecture with any of its encoders (incl. `tu-<timm name>`).

    U-Net also takes `decoder_stride: 2`, `4` or `8` (ours, not smp's): see unet_stride.py.
    """
    import segmentation_models_pytorch as smp

    encoder = encoder or DEFAULT_ENCODERS.get(arch, "resnet34")
    local = encoder_weights not in (None, "imagenet")
    decoder_stride = options.pop("decoder_stride", 1)
    if decoder_stride != 1:
        if arch != "unet":
            raise ValueError(f"model.options.decoder_stride: only unet supports it, not {arch}")
        options["decoder_channels"] = decoder_channels_for_build(options, decoder_stride)
    try:
        model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None if local else encoder_weights,
                                 classes=num_classes, **options)
    except (KeyError, ValueError) as error:
        raise ValueError(f"model.encoder: '{encoder}' does not work with {arch} ({error})") from None
    except TypeError as error:
        raise ValueError(f"model.options: {error}") from None
    if decoder_stride != 1:
        stop_decoder_early(model, decoder_stride)
    if local:
        load_local_weights(model.encoder, encoder_weights, "model.encoder_weights")
    return PadToMultiple(model, int(getattr(model.encoder, "output_stride", 32)), MIN_INPUT.get(arch, 0))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet_scratch": unet_scratch,
    "fcn_resnet50": fcn_resnet50,
    "danet": danet,
    **{arch: partial(smp_model, arch) for arch in SMP_ARCHITECTURES},
}


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build model `name`; keyword arguments go to its builder (None values are left out)."""
    if name not in MODELS:
        raise ValueError(f"model.name: unknown model '{name}' (expected one of {', '.join(MODELS)})")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return MODELS[name](num_classes, **kwargs)
    except TypeError as error:
        raise ValueError(f"model: {name} does not take these options ({error})") from None
