"""`data.input_scale`: the model sees images smaller than the labels it is trained and validated against."""
import math

import numpy as np
import pytest
import torch

from engine_helpers import tiny_config
from urbanseg.config import DataConfig, LossConfig
from urbanseg.data.copy_paste import CopyPaste
from urbanseg.data.preset import IMAGENET_MEAN, IMAGENET_STD, preset_for
from urbanseg.data.transforms import AugmentConfig, eval_transform, train_transform
from urbanseg.engine.checkpoint import load_checkpoint
from urbanseg.engine.train import train
from urbanseg.errors import ConfigError
from urbanseg.losses import build_loss


def _normalised(image: np.ndarray) -> np.ndarray:
    return (image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)


def _pooled(image: np.ndarray) -> np.ndarray:
    """2x2 block means: what shrinking by half with area averaging gives."""
    height, width = image.shape[:2]
    return image.reshape(height // 2, 2, width // 2, 2, 3).astype(np.float64).mean(axis=(1, 3))


def test_training_shrinks_the_image_and_keeps_the_labels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 128, 3), dtype=np.uint8)
    mask = rng.integers(0, 19, (64, 128), dtype=np.uint8)
    cfg = AugmentConfig(scale=(1.0, 1.0), crop=(64, 128), hflip=0.0, color_jitter=0.0, input_scale=0.5)
    out_image, out_mask = train_transform(cfg)(image, mask)
    assert out_image.shape == (3, 32, 64) and out_mask.shape == (64, 128)
    np.testing.assert_array_equal(out_mask.numpy(), mask)  # every label pixel kept, a one-pixel pole too
    np.testing.assert_allclose(out_image.permute(1, 2, 0).numpy(), _normalised(_pooled(image)), atol=0.02)
    # with random scales and flips, the image is half its labels' size every time
    cfg = AugmentConfig(scale=(0.5, 1.5), crop=(48, 96), rotate=10, input_scale=0.5)
    for seed in range(5):
        out_image, out_mask = train_transform(cfg)(image, mask, seed)
        assert out_image.shape == (3, 24, 48) and out_mask.shape == (48, 96)


def test_validation_shrinks_the_image_after_resizing_both():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (96, 192, 3), dtype=np.uint8)
    mask = rng.integers(0, 19, (96, 192), dtype=np.uint8)
    out_image, out_mask = eval_transform(None, input_scale=0.5)(image, mask)
    np.testing.assert_array_equal(out_mask.numpy(), mask)
    np.testing.assert_allclose(out_image.permute(1, 2, 0).numpy(), _normalised(_pooled(image)), atol=0.02)
    out_image, out_mask = eval_transform((48, 96), input_scale=0.25)(image, mask)
    assert out_image.shape == (3, 12, 24)
    np.testing.assert_array_equal(out_mask.numpy(), mask[::2, ::2])


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "half", True])
def test_an_input_scale_outside_0_to_1_is_refused(value):
    with pytest.raises(ConfigError, match=r"data.input_scale: expected a number in \(0, 1\]"):
        train_transform(AugmentConfig(input_scale=value))
    with pytest.raises(ConfigError, match="data.input_scale"):
        eval_transform(None, input_scale=value)


def test_the_loss_scores_logits_upsampled_to_the_labels():
    # logits constant over the image are the same after any upsampling: cross-entropy is then
    # -log softmax(logits)[target] averaged over the labels' valid pixels, at the labels' size
    class_logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    logits = class_logits[:, :, None, None].expand(2, 3, 4, 6).clone().requires_grad_(True)
    target = torch.randint(0, 3, (2, 8, 12), generator=torch.Generator().manual_seed(0))
    target[0, :2] = 255
    log_p = class_logits.log_softmax(dim=1)
    valid = target != 255
    expected = -torch.stack([log_p[n][target[n][valid[n]]].sum() for n in range(2)]).sum() / valid.sum()
    loss = build_loss(LossConfig(terms={"ce": 1.0}))(logits, target)
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)
    loss.backward()
    assert logits.grad.shape == (2, 3, 4, 6) and logits.grad.abs().sum() > 0
    fused = build_loss(LossConfig(terms={"ce": 1.0, "dice": 1.0}))(logits, target)
    apart = build_loss(LossConfig(terms={"ce": 1.0, "dice": 1.0}, label_smoothing=1e-12))(logits, target)
    assert math.isclose(fused.item(), apart.item(), rel_tol=1e-4)


def test_copy_paste_pastes_image_pixels_where_half_their_labels_are_pasted():
    images = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])
    masks = torch.zeros(2, 4, 4, dtype=torch.int64)
    masks[0, :2, :2] = 1  # a whole image pixel of class 1: pasted
    masks[0, 0, 2:] = 1  # half an image pixel: pasted
    masks[0, 2, 0] = 1  # a quarter of one: its labels are pasted, its image pixel not
    out_images, out_masks = CopyPaste([1], probability=1.0)(images.clone(), masks.clone())
    assert out_images[1, 0].tolist() == [[0.0, 0.0], [1.0, 1.0]]
    assert torch.equal(out_masks[1], masks[0])


def test_the_preset_gives_the_models_input_size():
    data = DataConfig(crop=[352, 480], val_resize=[360, 480], input_scale=0.5)
    preset = preset_for(data)
    assert preset.input_size == (180, 240) and preset.window == (176, 240)
    with pytest.raises(ConfigError, match="data.input_scale: set data.val_resize"):
        preset_for(DataConfig(input_scale=0.5, val_resize=None, load_size=None))


def test_training_at_half_the_labels_resolution(cityscapes_root, tmp_path):
    cfg = tiny_config(cityscapes_root, "trainer.max_steps=3", "trainer.eval_every=3", "data.input_scale=0.5",
                      "data.val_resize=[64, 128]", "data.copy_paste=0.5", "data.copy_paste_classes=[road]")
    result = train(cfg, tmp_path / "run")
    assert result["step"] == 3 and math.isfinite(result["metrics"]["loss"])
    assert result["metrics"]["images"] == 5  # validated on every image, against its 64x128 labels
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt").preset.input_size == (32, 64)
    with pytest.raises(ConfigError, match="data.input_scale: expected"):
        train(tiny_config(cityscapes_root, "trainer.max_steps=3", "data.input_scale=2"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before anything was written
