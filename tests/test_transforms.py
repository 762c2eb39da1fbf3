import numpy as np
import torch

from urbanseg.data.preset import IMAGENET_MEAN, IMAGENET_STD
from urbanseg.data.transforms import AugmentConfig, eval_transform, train_transform


def _mask(rng, values=(0, 3, 7, 18)):
    # blocky masks: many edges, where interpolation would invent in-between values
    small = rng.choice(np.array(values, np.uint8), size=(12, 24))
    return np.kron(small, np.ones((8, 8), np.uint8))


def test_train_masks_never_gain_values():
    rng = np.random.default_rng(0)
    cfg = AugmentConfig(resize=(80, 160), scale=(0.5, 2.0), crop=(64, 128), rotate=15, color_jitter=0.3, blur=0.5)
    transform = train_transform(cfg, ignore_index=255)
    for _ in range(40):
        image = rng.integers(0, 255, (96, 192, 3), dtype=np.uint8)
        mask = _mask(rng)
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (3, 64, 128) and out_image.dtype == torch.float32
        assert out_mask.shape == (64, 128) and out_mask.dtype == torch.int64
        assert set(out_mask.unique().tolist()) <= {0, 3, 7, 18, 255}


def test_crop_larger_than_image_pads_mask_with_ignore():
    transform = train_transform(AugmentConfig(scale=(1.0, 1.0), crop=(64, 64), hflip=0, color_jitter=0), ignore_index=255)
    image = np.full((32, 32, 3), 128, np.uint8)
    _, mask = transform(image, np.zeros((32, 32), np.uint8))
    assert (mask == 255).sum() == 64 * 64 - 32 * 32 and (mask == 0).sum() == 32 * 32


def test_eval_transform_only_resizes_and_normalises():
    rng = np.random.default_rng(1)
    image, mask = rng.integers(0, 255, (96, 192, 3), dtype=np.uint8), _mask(rng)
    out_image, out_mask = eval_transform()(image, mask)
    expected = (image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out_image.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out_mask.numpy(), mask)
    small_image, small_mask = eval_transform((48, 96))(image, mask)
    assert small_image.shape == (3, 48, 96)
    np.testing.assert_array_equal(small_mask.numpy(), mask[::2, ::2])
