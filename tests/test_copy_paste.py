"""Rare-class copy-paste (data/copy_paste.py) and its settings in a training run."""
import math

import pytest
import torch

from engine_helpers import tiny_config
from urbanseg.data.copy_paste import CopyPaste
from urbanseg.engine.train import train


def _batch(count=3, size=(6, 8)):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, *size, generator=generator)
    masks = torch.randint(0, 5, (count, *size), generator=generator)
    return images, masks


def test_every_image_takes_the_chosen_classes_of_the_one_before():
    images, masks = _batch()
    out_images, out_masks = CopyPaste([1, 3], probability=1.0)(images.clone(), masks.clone())
    for index in range(3):
        source = (index - 1) % 3
        for y in range(6):
            for x in range(8):
                pasted = masks[source, y, x].item() in (1, 3)
                origin = source if pasted else index
                assert out_masks[index, y, x] == masks[origin, y, x]
                assert torch.equal(out_images[index, :, y, x], images[origin, :, y, x])
    # an image whose own pixels were replaced still gave its original pixels to the next one
    assert any(masks[0, y, x].item() not in (1, 3) and masks[2, y, x].item() in (1, 3)
               for y in range(6) for x in range(8))


def test_nothing_is_pasted_without_the_classes_or_the_chance():
    images, masks = _batch()
    for paste in (CopyPaste([1, 3], probability=0.0), CopyPaste([7], probability=1.0),
                  CopyPaste([], probability=1.0)):
        out_images, out_masks = paste(images.clone(), masks.clone())
        assert torch.equal(out_images, images) and torch.equal(out_masks, masks)
    one_image = images[:1].clone(), masks[:1].clone()
    out_image, out_mask = CopyPaste([1], probability=1.0)(*one_image)
    assert torch.equal(out_image, images[:1]) and torch.equal(out_mask, masks[:1])


def test_the_probability_is_per_image():
    torch.manual_seed(0)
    images, masks = _batch(count=400, size=(2, 2))
    masks[:] = 1  # every source has the class, so an image changes exactly when it was chosen
    images[1:] += 1.0  # no two neighbours are equal
    out_images, _ = CopyPaste([1], probability=0.3)(images.clone(), masks)
    changed = (out_images != images).flatten(1).any(1).float().mean().item()
    assert 0.22 < changed < 0.38
    with pytest.raises(ValueError, match="probability"):
        CopyPaste([1], probability=1.5)


def test_training_with_copy_paste(cityscapes_root, tmp_path, monkeypatch):
    pasted_batches = []
    original = CopyPaste.__call__

    def spy(self, images, masks):
        pasted_batches.append((len(images), self.class_ids.tolist(), self.probability))
        return original(self, images, masks)

    monkeypatch.setattr(CopyPaste, "__call__", spy)
    cfg = tiny_config(cityscapes_root, "trainer.max_steps=3", "trainer.accumulate=2", "data.copy_paste=0.5",
                      "data.copy_paste_classes=[pole, traffic sign, person]")
    result = train(cfg, tmp_path / "run")
    assert result["step"] == 3 and math.isfinite(result["metrics"]["loss"])
    # every micro-batch of every step; pole, traffic sign and person are 5, 7 and 11 of the 19 classes
    assert pasted_batches == [(4, [5, 7, 11], 0.5)] * 6
    for overrides, message in (
        (["data.copy_paste=2"], "data.copy_paste: expected a probability in"),
        (["data.copy_paste=0.5", "data.batch_size=1", "data.copy_paste_classes=[pole]"],
         "data.copy_paste: pastes between the images of a batch"),
        (["data.copy_paste=0.5"], "data.copy_paste_classes: name the classes to paste"),
        (["data.copy_paste=0.5", "data.copy_paste_classes=[pole, lamppost]"],
         "data.copy_paste_classes: 'lamppost' is not a class of this dataset"),
    ):
        with pytest.raises(ValueError, match=message):
            train(tiny_config(cityscapes_root, "trainer.max_steps=3", *overrides), tmp_path / "bad")
        assert not (tmp_path / "bad").exists()  # refused before anything was written
