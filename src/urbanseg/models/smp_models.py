"""segmentation-models-pytorch's architectures with any of its encoders (incl. `tu-<timm name>`),
as one registry builder that checks the recipe's `model.options` against the smp class before
building, so that a typo is a one-line error naming the option instead of a TypeError from deep
inside smp (or, for smp's own encoders, an option silently ignored: smp passes unknown keyword
arguments on to `tu-` encoders only).
"""
from __future__ import annotations

import inspect
from typing import Callable, Iterable, Optional, Sequence

import segmentation_models_pytorch as smp
import timm
from torch import nn

from ..errors import ConfigError
from .padding import PadToMultiple
from .unet_decoder import removed_blocks, strided_unet
from .weights import check_weights_spec, encoder_download, fetching, load_local_weights, smp_weights

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet": smp.Unet, "unetplusplus": smp.UnetPlusPlus, "manet": smp.MAnet, "linknet": smp.Linknet,
    "fpn": smp.FPN, "pspnet": smp.PSPNet, "deeplabv3": smp.DeepLabV3, "deeplabv3plus": smp.DeepLabV3Plus,
    "pan": smp.PAN, "upernet": smp.UPerNet, "segformer": smp.Segformer, "dpt": smp.DPT,
}
DEFAULT_ENCODERS = {"segformer": "mit_b0", "dpt": "tu-vit_base_patch16_224.augreg_in21k"}
MIN_INPUT = {"pan": 128}  # PAN's feature pyramid attention pools its 1/16 map three more times
# Builder arguments that are not `model.options`: the encoder, its weights and the number of
# classes come from model.encoder, model.encoder_weights and the dataset (under smp's names or
# ours); `decoder_stride` is handled before the builder is picked; in_channels, activation and
# aux_params would break the registry's contract (3-channel images in, one logits tensor out).
NOT_OPTIONS = ("encoder_name", "encoder", "encoder_weights", "classes", "num_classes", "decoder_stride",
               "in_channels", "activation", "aux_params")


def option_names(function: Callable[..., object], skip: Iterable[str] = NOT_OPTIONS) -> list[str]:
    """The named keyword arguments of `function` (or of a class's `__init__`), less `skip`."""
    parameters = inspect.signature(function).parameters.values()
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in keyword and p.name not in ("self", *skip)]


def unknown_options(model: str, unknown: Sequence[str], allowed: Sequence[str]) -> ConfigError:
    """The error for options `model` does not take. `encoder` and `encoder_weights` have their own keys."""
    key = f"model.{unknown[0]}" if unknown[0] in ("encoder", "encoder_weights") else "model.options"
    names = ", ".join(f"'{name}'" for name in unknown)
    return ConfigError(f"{key}: {model} does not take option{'s' if len(unknown) > 1 else ''} {names} "
                       f"(it takes {', '.join(allowed) or 'none'})")


def check_options(model: str, options: dict, allowed: Sequence[str]) -> None:
    """Before building, so that the builder's own errors are about values, not names."""
    unknown = [name for name in options if name not in allowed]
    if unknown:
        raise unknown_options(model, unknown, allowed)


def check_encoder(encoder: str, model: str) -> None:
    """`encoder` names one of smp's encoders or, as `tu-<name>`, a timm model."""
    if encoder.startswith("tu-"):
        known = timm.is_model(encoder[3:])
    else:  # smp translates its deprecated `timm-` names itself
        known = encoder in smp.encoders.encoders or encoder.startswith("timm-")
    if not known:
        raise ConfigError(f"model.encoder: '{encoder}' does not work with {model} (it is neither one of "
                          f"segmentation-models-pytorch's encoders nor tu-<a timm model>)")


def smp_model(arch: str, num_classes: int, encoder: Optional[str] = None, encoder_weights: Optional[str] = None,
              **options) -> nn.Module:
    """Any smp architecture; `options` are the smp class's keyword arguments (see its docstring).

    U-Net also takes `decoder_stride: 2`, `4` or `8` (ours, not smp's): the decoder stops at that
    fraction of the input resolution, see unet_decoder.py.
    """
    encoder = encoder or DEFAULT_ENCODERS.get(arch, "resnet34")
    check_weights_spec(encoder_weights)
    decoder_stride = options.pop("decoder_stride", 1)
    if decoder_stride != 1 and arch != "unet":
        raise ConfigError(f"model.options.decoder_stride: only unet supports it, not {arch}")
    removed_blocks(decoder_stride, options.get("encoder_depth", 5))  # checks the stride before anything else
    if decoder_stride == 1:
        build: Callable[..., nn.Module] = ARCHITECTURES[arch]
        check_options(arch, options, option_names(build) + (["decoder_stride"] if arch == "unet" else []))
    else:
        build = strided_unet
        check_options(f"unet with decoder_stride {decoder_stride}", options, option_names(build))
    check_encoder(encoder, arch)
    download = encoder_download(encoder) if encoder_weights == "imagenet" else None
    weights = smp_weights(encoder, encoder_weights)
    try:
        with fetching(download):
            if decoder_stride == 1:
                model = build(encoder_name=encoder, encoder_weights=weights, classes=num_classes, **options)
            else:
                model = build(num_classes, encoder, weights, decoder_stride, **options)
    except ConfigError:
        raise
    except (KeyError, ValueError) as error:  # smp's checks of encoder/architecture/option combinations
        if not options:
            raise ConfigError(f"model.encoder: '{encoder}' does not work with {arch} ({error})") from None
        raise ConfigError(f"model.options: {arch} with encoder '{encoder}' and options "
                          f"{', '.join(options)}: {error}") from None
    if encoder_weights not in (None, "imagenet"):
        load_local_weights(model.encoder, encoder_weights)
    return PadToMultiple(model, int(getattr(model.encoder, "output_stride", 32)), MIN_INPUT.get(arch, 0))
