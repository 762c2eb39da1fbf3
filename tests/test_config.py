import pytest
import yaml

from urbanseg.config import Config, ConfigError, first_difference, load_config, save_config


def test_yaml_and_overrides_are_typed(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {name: unet, encoder: resnet18}\noptim: {lr: 1e-3}\ntrainer: {max_epochs: 5}\n")
    cfg = load_config(path, ["trainer.max_epochs=3", "optim.lr=0.01", "data.crop=[64, 128]", "loss.terms={ce: 1, dice: 0.5}"])
    assert cfg.model.name == "unet" and cfg.model.encoder == "resnet18"
    assert cfg.trainer.max_epochs == 3 and cfg.optim.lr == 0.01 and isinstance(cfg.optim.lr, float)
    assert cfg.data.crop == [64, 128]
    assert cfg.loss.terms == {"ce": 1.0, "dice": 0.5}
    assert load_config(path).optim.lr == 1e-3  # YAML's '1e-3' is a string; floats accept it


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.max_epoch=3"], "trainer.max_epoch: unknown key"),
        (["trainer.max_epochs=three"], "trainer.max_epochs: expected int or null, got 'three'"),
        (["optim.nesterov=maybe"], "optim.nesterov: expected bool, got 'maybe'"),
        (["data.crop=[64, x]"], r"data.crop: expected a list of int or null, got \[64, 'x'\]"),
        (["data.resolution_schedule=null"],
         r"data.resolution_schedule: expected a list of \{start, resize, crop\}, got None"),
        (["modle.name=unet"], "modle: unknown key"),
        (["trainer=5"], "trainer: expected a mapping"),
        (["trainer.max_epochs"], "trainer.max_epochs: expected an override of the form key.sub=value"),
    ],
)
def test_bad_keys_and_types_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(expected ',' or '\]', but got '<stream end>' "
                                          r"at line 2, column 1\)$"):
        load_config(bad)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.options={base_channels: 8}", "data.classes={flat: [road, sidewalk]}"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["options"] == {"base_channels": 8}
    assert Config() == load_config(None)


def test_first_difference_names_the_dotted_key():
    a, b = load_config(None).to_dict(), load_config(None, ["model.options={decoder_stride: 2}"]).to_dict()
    assert first_difference(a, a) is None
    assert first_difference(a, b) == ("model.options.decoder_stride", None, 2)
    flat = {"optim.lr": 0.01, "model.options": {"depth": 4}}
    assert first_difference(flat, {**flat, "optim.lr": 0.05}) == ("optim.lr", 0.01, 0.05)
    assert first_difference(flat, {"optim.lr": 0.01}) == ("model.options", {"depth": 4}, None)
