"""Label statistics, rare-class sampling weights and the sharded sampler (engine/data.py)."""
import math

import numpy as np
import pytest
import torch

from engine_helpers import tiny_config
from urbanseg.engine.data import ShardedSampler, build_train_val, label_statistics, rare_class_weights
from urbanseg.engine.train import train


def test_label_statistics_match_each_mask(cityscapes_root):
    train_set, _ = build_train_val(tiny_config(cityscapes_root).data)
    pixel_counts, image_pixels, presence = label_statistics(train_set)
    n = train_set.labels.num_classes
    expected_counts, expected_presence = np.zeros(n, np.int64), []
    for index in range(len(train_set)):
        mask = np.asarray(train_set.load(index)[1])
        values = np.unique(mask[mask < n])
        expected_presence.append(np.isin(np.arange(n), values))
        expected_counts += np.array([(mask == c).sum() for c in range(n)])
    assert np.array_equal(presence, np.array(expected_presence))
    assert np.array_equal(pixel_counts, expected_counts)
    assert np.array_equal(image_pixels, presence.sum(0) * 64 * 128)


def test_rare_class_weights_by_hand():
    pixel_counts = np.array([900, 90, 10, 0])  # class 3 never occurs
    presence = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0], [1, 1, 1, 0]], bool)
    temperature = 0.1
    class_p = np.exp(np.array([0.1, 0.91, 0.99]) / temperature)
    class_p /= class_p.sum()
    images_with = [4, 2, 2]
    expected = np.array([
        class_p[0] / 4 + class_p[1] / 2,
        class_p[0] / 4 + class_p[2] / 2,
        class_p[0] / 4,
        class_p[0] / 4 + class_p[1] / 2 + class_p[2] / 2,
    ])
    assert sum(images_with) == presence[:, :3].sum()
    weights = rare_class_weights(pixel_counts, presence, temperature)
    assert weights == pytest.approx(expected / expected.sum(), rel=1e-9)
    assert weights.sum() == pytest.approx(1.0)
    assert rare_class_weights(pixel_counts, presence, 1e4) == pytest.approx(
        np.array([1 / 4 + 1 / 2, 1 / 4 + 1 / 2, 1 / 4, 1 / 4 + 1 / 2 + 1 / 2]) / 3, rel=1e-3)  # classes equally likely
    with pytest.raises(ValueError, match="data.rare_class_sampling: expected a temperature > 0"):
        rare_class_weights(pixel_counts, presence, 0.0)


def test_weighted_sampler_draws_in_proportion_and_resumes():
    weights = np.array([0.5, 0.0, 0.3, 0.2])
    sampler = ShardedSampler(4, weights=weights, seed=3)
    draws = []
    for epoch in range(3000):
        sampler.set_epoch(epoch)
        draws += list(sampler)
    frequency = np.bincount(draws, minlength=4) / len(draws)
    assert frequency[1] == 0 and frequency == pytest.approx(weights, abs=0.02)

    sampler.set_epoch(7)
    epoch_7 = list(sampler)
    sampler.set_epoch(7, start=2)
    assert list(sampler) == epoch_7[2:] and len(sampler) == 2  # resumable mid-epoch, same draws
    ranks = [ShardedSampler(4, rank, 2, weights=weights, seed=3) for rank in (0, 1)]
    for rank in ranks:
        rank.set_epoch(7)
    assert [i for pair in zip(*map(list, ranks)) for i in pair] == epoch_7  # two ranks share one epoch


def test_training_with_rare_class_sampling(cityscapes_root, tmp_path):
    cfg = tiny_config(cityscapes_root, "trainer.max_steps=3", "data.rare_class_sampling=0.05",
                      "loss.class_weights=enet")
    result = train(cfg, tmp_path / "run")
    assert result["step"] == 3 and math.isfinite(result["metrics"]["loss"])
    bad = tiny_config(cityscapes_root, "trainer.max_steps=3", "data.rare_class_sampling=-1")
    with pytest.raises(ValueError, match="data.rare_class_sampling"):
        train(bad, tmp_path / "bad")


def test_repeated_draws_get_their_own_augmentation_seed():
    sampler = ShardedSampler(3, weights=np.array([1.0, 0.0, 0.0]), seed=1, seeded=True)
    pairs = list(sampler)
    assert [index for index, _ in pairs] == [0, 0, 0] and len({seed for _, seed in pairs}) == 3


def test_rare_class_weights_without_any_label_are_uniform():
    weights = rare_class_weights(np.zeros(3), np.zeros((4, 3), bool), 0.01)
    assert weights == pytest.approx(np.full(4, 0.25))
