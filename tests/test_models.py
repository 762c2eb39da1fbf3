"""Every entry of MODELS gets the same forward/backward and channels-last tests (small encoders keep
them fast). Pretrained weights without a network: test_models_weights.py."""
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from urbanseg.errors import ConfigError
from urbanseg.models import MODELS, create_model

SMALL = {
    "unet_scratch": {"base_channels": 8},
    "fcn_resnet50": {},
    "danet": {"encoder": "resnet18"},
    "segformer": {"encoder": "mit_b0"},
    "dpt": {"encoder": "tu-resnet18"},
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward_at_any_size(name):
    torch.manual_seed(0)
    model = create_model(name, 5, **SMALL.get(name, {"encoder": "resnet18"}))
    x = torch.randn(2, 3, 50, 70)  # sides not divisible by 16 or 32: padded and cropped back
    logits = model(x)
    assert logits.shape == (2, 5, 50, 70)
    logits.square().mean().backward()
    # (pspnet and dpt leave some encoder stages unused, so not every parameter gets a gradient)
    reached = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters()]
    assert sum(reached) > 0.5 * len(reached)


@pytest.mark.parametrize("encoder", ["mit_b0", "efficientnet-b0", "tu-resnet18", "mobilenet_v2"])
def test_smp_encoders(encoder):
    model = create_model("unet", 3, encoder=encoder, encoder_weights=None)
    assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3, 64, 96)


def test_unet_scratch_options():
    model = create_model("unet_scratch", 4, base_channels=4, dropout=0.2, upsampling="bilinear").eval()
    assert model(torch.randn(1, 3, 33, 47)).shape == (1, 4, 33, 47)
    assert any(isinstance(m, torch.nn.Dropout2d) for m in model.modules())
    with pytest.raises(ConfigError, match="model.options.upsampling"):
        create_model("unet_scratch", 4, upsampling="nearest")


def test_danet_on_efficientnet():
    model = create_model("danet", 4, encoder="efficientnet-b3")
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4, 64, 64)


def test_local_encoder_weights(tmp_path):
    from safetensors.torch import save_file

    source = create_model("unet", 3, encoder="resnet18")
    state = {k: v.contiguous() for k, v in source.model.encoder.state_dict().items()}
    save_file(state, str(tmp_path / "enc.safetensors"))
    torch.save(state, tmp_path / "enc.pth")
    for file in ("enc.safetensors", "enc.pth"):
        model = create_model("unet", 3, encoder="resnet18", encoder_weights=str(tmp_path / file))
        assert torch.equal(model.model.encoder.conv1.weight, source.model.encoder.conv1.weight)
    with pytest.raises(ConfigError, match="model.encoder_weights: 'nope.pth' is neither 'imagenet' nor an existing"):
        create_model("unet", 3, encoder="resnet18", encoder_weights="nope.pth")


def test_registry_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.name: unknown model 'unet3d'"):
        create_model("unet3d", 3)
    with pytest.raises(ConfigError, match="model.encoder: 'resnet9000' does not work with unet"):
        create_model("unet", 3, encoder="resnet9000")
    with pytest.raises(ConfigError, match="model.encoder: 'tu-resnet9000' does not work with danet"):
        create_model("danet", 3, encoder="tu-resnet9000")
    with pytest.raises(ConfigError, match=r"^model.options: unet_scratch does not take option 'depth' "
                                          r"\(it takes base_channels, dropout, upsampling\)$"):
        create_model("unet_scratch", 3, depth=7)
    with pytest.raises(ConfigError, match="^model.encoder: unet_scratch does not take option 'encoder'"):
        create_model("unet_scratch", 3, encoder="resnet18")
    with pytest.raises(ConfigError, match="^model.options: danet does not take option 'depth'"):
        create_model("danet", 3, encoder="resnet18", depth=3)


def test_smp_options_are_checked_against_the_smp_class():
    with pytest.raises(ConfigError, match=r"^model.options: fpn does not take option 'decoder_chanels' \(it takes "
                                          r"encoder_depth, decoder_pyramid_channels, .*upsampling\)$"):
        create_model("fpn", 3, encoder="resnet18", decoder_chanels=[8])
    with pytest.raises(ConfigError, match=r"^model.options: unet does not take options 'activation', 'aux_params' "
                                          r"\(it takes .*decoder_interpolation, decoder_stride\)$"):
        create_model("unet", 3, encoder="resnet18", activation="softmax", aux_params={"classes": 3})  # not logits
    with pytest.raises(ConfigError, match=r"^model.options: unet with decoder_stride 2 does not take option "
                                          r"'decoder_attention_type' \(it takes encoder_depth, decoder_channels, "
                                          r"decoder_interpolation\)$"):
        create_model("unet", 3, encoder="resnet18", decoder_stride=2, decoder_attention_type="scse")
    with pytest.raises(ConfigError, match="^model.options: unet with encoder 'resnet18' and options decoder_channels: "):
        create_model("unet", 3, encoder="resnet18", decoder_channels=[8, 8])  # smp's own check, 5 expected


def test_type_errors_inside_builders_stay_bugs(monkeypatch):
    def broken(num_classes: int, width: int = 8):
        raise TypeError("a bug inside the builder")

    monkeypatch.setitem(MODELS, "broken", broken)
    with pytest.raises(TypeError, match="a bug inside the builder"):
        create_model("broken", 3, width=4)


@pytest.mark.parametrize("stride, channels", [(2, [32, 16, 16, 8]), (4, [32, 16, 8])])
def test_unet_decoder_stride_predicts_at_a_fraction_of_the_resolution(stride, channels):
    torch.manual_seed(0)
    model = create_model("unet", 5, encoder="resnet18", decoder_channels=channels, decoder_stride=stride).eval()
    unet = model.model
    head_out = {}
    unet.segmentation_head[0].register_forward_hook(lambda module, args, out: head_out.update(logits=out))
    x = torch.randn(2, 3, 50, 70)  # padded to 64x96
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 5, 50, 70)
    assert head_out["logits"].shape == (2, 5, 64 // stride, 96 // stride)  # the head sees 1/stride of the padded input
    upsampled = torch.nn.functional.interpolate(head_out["logits"], size=(64, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, upsampled[..., :50, :70])
    assert unet.segmentation_head[0].in_channels == 8
    removed = {2: 1, 4: 2}[stride]
    assert len(unet.decoder.blocks) == 5 - removed  # no block past 1/stride
    # smp's default channels, less those of the removed blocks
    default = create_model("unet", 5, encoder="resnet18", decoder_stride=stride).model
    assert default.segmentation_head[0].in_channels == {2: 32, 4: 64}[stride]


def test_unet_decoder_stride_is_smps_unet_less_its_last_blocks():
    """Same parameter names and shapes as smp's Unet less the removed block (so checkpoints of the
    former smp-patching implementation load), and the same outputs as smp's blocks computing by hand."""
    torch.manual_seed(0)
    reference = smp.Unet("resnet18", encoder_weights=None, classes=5, decoder_channels=[32, 16, 16, 8, 8]).eval()
    kept = {k: v for k, v in reference.state_dict().items() if not k.startswith("decoder.blocks.4.")}
    unet = create_model("unet", 5, encoder="resnet18", decoder_channels=[32, 16, 16, 8], decoder_stride=2).model.eval()
    assert {k: v.shape for k, v in unet.state_dict().items()} == {k: v.shape for k, v in kept.items()}
    unet.load_state_dict(kept)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = reference.encoder(x)
        y = features[-1]
        for block, skip in zip(reference.decoder.blocks[:4], reversed(features[:-1])):
            y = block(y, *skip.shape[-2:], skip_connection=skip)
        expected = F.interpolate(reference.segmentation_head[0](y), scale_factor=2, mode="bilinear", align_corners=False)
        torch.testing.assert_close(unet(x), expected)


def test_unet_decoder_stride_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"model.options.decoder_channels: with decoder_stride 2 give one entry per "
                                         r"decoder block down to 1/2 resolution \(4 for encoder_depth 5\), got 5"):
        create_model("unet", 3, encoder="resnet18", decoder_channels=[64, 32, 32, 16, 16], decoder_stride=2)
    with pytest.raises(ConfigError, match="model.options.decoder_stride: expected one of 1, 2, 4, 8, got 3"):
        create_model("unet", 3, encoder="resnet18", decoder_stride=3)
    with pytest.raises(ConfigError, match="model.options.decoder_stride: 8 leaves no decoder block with encoder_depth 3"):
        create_model("unet", 3, encoder="resnet18", encoder_depth=3, decoder_channels=[16, 8, 8], decoder_stride=8)
    with pytest.raises(ConfigError, match="model.options.decoder_stride: only unet supports it, not fpn"):
        create_model("fpn", 3, encoder="resnet18", decoder_stride=2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_channels_last_gives_the_same_logits(name):
    """Training runs channels-last on CPU (trainer.channels_last); eval logits must not change with it."""
    torch.manual_seed(0)
    model = create_model(name, 5, **SMALL.get(name, {"encoder": "resnet18"})).eval()
    x = torch.randn(2, 3, 50, 70)
    with torch.no_grad():
        contiguous = model(x)
        model.to(memory_format=torch.channels_last)
        channels_last = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, contiguous, rtol=1e-4, atol=1e-4)
