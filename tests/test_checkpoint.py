"""The checkpoint format (engine/checkpoint.py): round trips for every model, resume rules, bad files, full disks."""
import errno
import re
import os

import numpy as np
import pytest
import torch

from engine_helpers import tiny_overrides
from urbanseg.cli import main
from urbanseg.config import Config, ModelConfig
from urbanseg.data.labels import LabelSet, camvid_label_set, cityscapes_label_set, folder_label_set
from urbanseg.data.preset import Preset
from urbanseg.engine.checkpoint import Checkpoint, load_checkpoint, load_model, save_checkpoint
from urbanseg.engine.model import build_model
from urbanseg.errors import CheckpointError
from urbanseg.inference import Predictor
from urbanseg.models import MODELS

# small variants of each registry entry (random init, no download)
SMALL = {"unet_scratch": (None, {"base_channels": 4}), "fcn_resnet50": (None, {}), "danet": ("resnet18", {}),
         "segformer": ("mit_b0", {}), "dpt": ("tu-resnet18", {})}


def _config(name: str) -> Config:
    encoder, options = SMALL.get(name, ("resnet18", {}))
    return Config(model=ModelConfig(name=name, encoder=encoder, options=options))


@pytest.mark.parametrize("labels", [cityscapes_label_set("official"), cityscapes_label_set({"flat": ["road", "sidewalk"]}),
                                    camvid_label_set(), folder_label_set(["a", "b"], 200, [[1, 2, 3], [4, 5, 6]])],
                         ids=["cityscapes", "merged", "camvid", "folder"])
def test_label_sets_survive_the_round_trip(labels):
    again = LabelSet.from_dict(labels.to_dict())
    assert again == labels
    raw = np.arange(256, dtype=np.uint8).reshape(16, 16)
    known = labels.known_raw[raw]
    np.testing.assert_array_equal(again.raw_to_train[raw[known]], labels.raw_to_train[raw[known]])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_saves_and_loads_to_identical_logits(name, tmp_path):
    torch.manual_seed(0)
    cfg = _config(name)
    labels = camvid_label_set()
    model = build_model(cfg.model, labels.num_classes).eval()
    preset = Preset(input_size=(48, 64), window=(48, 64))
    save_checkpoint(tmp_path / "m.pt", Checkpoint(cfg.to_dict(), labels, preset, model.state_dict()))
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.labels == labels and loaded.preset == preset and loaded.config == cfg
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["unet_scratch", "unet"])
def test_predictor_from_a_checkpoint_equals_the_model_on_the_preset_input(name, tmp_path):
    torch.manual_seed(0)
    cfg = _config(name)
    labels = camvid_label_set()
    model = build_model(cfg.model, labels.num_classes).eval()
    preset = Preset(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    save_checkpoint(tmp_path / "m.pt", Checkpoint(cfg.to_dict(), labels, preset, model.state_dict()))
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    probs = Predictor.from_checkpoint(tmp_path / "m.pt", device="cpu", precision="fp32").predict_proba(image)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - torch.tensor(preset.mean).view(1, 3, 1, 1)) \
        / torch.tensor(preset.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(x).softmax(dim=1)[0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_ema_weights_are_what_load_model_returns(tmp_path):
    cfg = _config("unet_scratch")
    labels = camvid_label_set()
    model = build_model(cfg.model, labels.num_classes)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "m.pt", Checkpoint(cfg.to_dict(), labels, Preset(), model.state_dict(), ema=ema))
    loaded = load_model(tmp_path / "m.pt").model.state_dict()
    assert all(torch.equal(loaded[k], ema[k]) for k in ema)


def test_foreign_older_and_newer_files_fail_naming_the_file(tmp_path):
    good = Checkpoint(_config("unet_scratch").to_dict(), camvid_label_set(), Preset(), {})
    save_checkpoint(tmp_path / "good.pt", good)
    state = torch.load(tmp_path / "good.pt", weights_only=True)
    cases = {
        "garbage.pt": (b"not a checkpoint", "not a readable urbanseg checkpoint"),
        "foreign.pt": ({"state_dict": {}}, "not an urbanseg checkpoint (no 'urbanseg-checkpoint' format marker"),
        "older.pt": ({"model": {}, "config": {}, "labels": {}}, "written by an older urbanseg (no format version"),
        "newer.pt": ({**state, "version": 99}, "checkpoint format version 99, this urbanseg reads version 1"),
        "partial.pt": ({k: v for k, v in state.items() if k != "preset"}, "incomplete checkpoint (missing preset)"),
    }
    for name, (content, message) in cases.items():
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError, match=re.escape(message)) as caught:
            load_checkpoint(tmp_path / name)
        assert str(caught.value).startswith(str(tmp_path / name))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_refuses_a_changed_model_and_takes_a_longer_schedule(cityscapes_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides(cityscapes_root, "trainer.max_steps=2"), "--run-dir", str(run)]) == 0
    before = (run / "checkpoints" / "last.pt").read_bytes()
    for override, message in (("model.options={base_channels: 8}", "model.options.base_channels: the run in"),
                              ("model.name=unet", "model.name: the run in"),
                              ("data.classes=all", "data.classes: the run in")):
        capsys.readouterr()
        assert main(["train", "--resume", str(run), override]) == 2
        err = capsys.readouterr().err
        assert message in err and "was trained with" in err and len(err.strip().splitlines()) == 1
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert main(["train", "--resume", str(run), "trainer.max_steps=3", "trainer.eval_every=3", "data.workers=0"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt").training["progress"]["step"] == 3


def test_a_full_disk_stops_training_with_one_line_and_keeps_the_last_checkpoint(cityscapes_root, tmp_path,
                                                                                monkeypatch, capsys):
    """The checkpoint write fails as on a full disk: one line naming the file and the cause, no
    temporary file left behind, the previous last.pt untouched, a non-zero exit."""
    import urbanseg.files

    real_fsync, writes = os.fsync, []

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")  # the temporary file being written
        if ".last.pt." in name:
            writes.append(name)
            if len(writes) == 2:  # last.pt at step 2 goes through, last.pt at step 4 finds the disk full
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(urbanseg.files.os, "fsync", fsync)
    run = tmp_path / "run"
    code = main(["train", *tiny_overrides(cityscapes_root, "trainer.max_steps=4", "trainer.save_every=2",
                                          "trainer.eval_every=4", "trainer.sample_images=0"), "--run-dir", str(run)])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar's lines
    last = run / "checkpoints" / "last.pt"
    assert err == (f"urbanseg: error: {last}: not written (no space left on device); "
                   f"the previous last.pt is intact")
    assert load_checkpoint(last).training["progress"]["step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
