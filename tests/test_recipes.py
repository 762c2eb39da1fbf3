"""Every recipe under configs/ loads as is and builds its model, optimizer and batch augmentation."""
from pathlib import Path

import pytest
import torch

from urbanseg.config import load_config
from urbanseg.data.copy_paste import copy_paste_for
from urbanseg.data.labels import camvid_label_set, cityscapes_label_set
from urbanseg.engine.model import build_model
from urbanseg.optim import build_optimizer
from urbanseg.schedules import LRSchedule

RECIPES = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))


def test_there_are_recipes_for_every_seed_system():
    names = {p.name.split("_")[0] for p in RECIPES}
    assert {"unet-scratch", "unet", "fcn", "danet", "deeplabv3plus"} <= names
    assert any(p.stem.endswith("_cpu") for p in RECIPES)


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_builds(recipe):
    cfg = load_config(recipe, ["model.encoder_weights=null"])  # no downloads here
    labels = camvid_label_set() if cfg.data.dataset == "camvid" else cityscapes_label_set(cfg.data.classes)
    num_classes = labels.num_classes
    copy_paste_for(cfg.data, labels)  # names only classes of the dataset
    model = build_model(cfg.model, num_classes)
    optimizer = build_optimizer(cfg.optim, model)
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, total_steps=1000, steps_per_epoch=10)
    assert 0 <= schedule.lr(0) <= cfg.optim.lr and optimizer.param_groups
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 128)).shape == (1, num_classes, 64, 128)
