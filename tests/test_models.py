"""Every entry of MODELS gets the same forward/backward test (small encoders keep it fast)."""
import pytest
import torch

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
    with pytest.raises(ValueError, match="model.options.upsampling"):
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
    with pytest.raises(ValueError, match="model.encoder_weights: 'nope.pth' is neither 'imagenet' nor an existing"):
        create_model("unet", 3, encoder="resnet18", encoder_weights="nope.pth")


def test_registry_errors_name_the_key():
    with pytest.raises(ValueError, match="model.name: unknown model 'unet3d'"):
        create_model("unet3d", 3)
    with pytest.raises(ValueError, match="model.encoder: 'resnet9000' does not work with unet"):
        create_model("unet", 3, encoder="resnet9000")
    with pytest.raises(ValueError, match="model: unet_scratch does not take these options"):
        create_model("unet_scratch", 3, depth=7)


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
    assert all(not list(block.parameters()) for block in unet.decoder.blocks[-removed:])  # no block past 1/stride
    assert len(unet.decoder.blocks) == 5 and len(list(unet.decoder.blocks[-removed - 1].parameters())) > 0
    # smp's default channels, less those of the removed blocks
    default = create_model("unet", 5, encoder="resnet18", decoder_stride=stride).model
    assert default.segmentation_head[0].in_channels == {2: 32, 4: 64}[stride]


def test_unet_decoder_stride_errors_name_the_key():
    with pytest.raises(ValueError, match=r"model.options.decoder_channels: with decoder_stride 2 give one entry per "
                                         r"decoder block down to 1/2 resolution \(4 for encoder_depth 5\), got 5"):
        create_model("unet", 3, encoder="resnet18", decoder_channels=[64, 32, 32, 16, 16], decoder_stride=2)
    with pytest.raises(ValueError, match="model.options.decoder_stride: expected one of 1, 2, 4, 8, got 3"):
        create_model("unet", 3, encoder="resnet18", decoder_stride=3)
    with pytest.raises(ValueError, match="model.options.decoder_stride: 8 leaves no decoder block with encoder_depth 3"):
        create_model("unet", 3, encoder="resnet18", encoder_depth=3, decoder_channels=[16, 8, 8], decoder_stride=8)
    with pytest.raises(ValueError, match="model.options.decoder_stride: only unet supports it, not fpn"):
        create_model("fpn", 3, encoder="resnet18", decoder_stride=2)
