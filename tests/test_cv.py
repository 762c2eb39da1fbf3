"""`urbanseg cv`: grouped fold assignment, sample lists, the fold ensemble, a 2-fold run end to end,
and resuming an interrupted cross-validation without redoing a finished fold."""
import json
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_helpers import tiny_config, tiny_overrides
from urbanseg.cli import main
from urbanseg.config import load_config
from urbanseg.data import build_dataset
from urbanseg.data.io import write_png
from urbanseg.data.preset import Preset
from urbanseg.data.sample_lists import restrict_to_list, write_sample_list
from urbanseg.data.synth import write_dataset
from urbanseg.engine import train as train_module
from urbanseg.engine.checkpoint import load_checkpoint, save_checkpoint
from urbanseg.ensemble import EnsembleBackend, ensemble_predictor
from urbanseg.errors import CheckpointError, ConfigError, DataError
from urbanseg.experiments import cv as cv_module
from urbanseg.experiments.cv import plan_folds, run_cv, summarize
from urbanseg.experiments.folds import assign_folds
from urbanseg.inference import Predictor

TINY_RUN = ("trainer.max_steps=4", "trainer.eval_every=2", "trainer.sample_images=0")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads; on a shared 2-core machine they only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- grouping (pure, and on generated data)
@pytest.mark.parametrize("folds", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_whole_groups_go_to_one_fold_with_balanced_image_counts(folds, seed):
    rng = np.random.default_rng(folds * 10 + seed)
    sizes = rng.integers(1, 30, size=11)
    by_group = {f"city{g}": [f"city{g}_{i:03d}" for i in range(n)] for g, n in enumerate(sizes)}
    assigned = assign_folds(by_group, folds, seed)
    assert assign_folds(by_group, folds, seed) == assigned  # deterministic for a seed
    groups = [g for fold in assigned for g in fold.groups]
    assert sorted(groups) == sorted(by_group)  # each group in exactly one fold
    for fold in assigned:
        assert sorted(fold.samples) == sorted(n for g in fold.groups for n in by_group[g])
    counts = [len(fold.samples) for fold in assigned]
    assert sum(counts) == sizes.sum()
    # largest first into the emptiest fold: the fullest fold exceeds the emptiest by at most the
    # smallest group it holds (else that group would have gone elsewhere), so by at most one group
    fullest = assigned[int(np.argmax(counts))]
    assert max(counts) - min(counts) <= min(len(by_group[g]) for g in fullest.groups)


def test_fewer_groups_than_folds_names_both_numbers():
    with pytest.raises(ConfigError, match=r"--folds: 5 folds need at least 5 cities, but the training split has only 4"):
        assign_folds({c: [c] for c in "abcd"}, 5, kind="cities")


def _uneven_cities(root: Path) -> Path:
    """A generated tree with 10 training images in 4 cities (3, 3, 2, 2) and 2 validation images."""
    write_dataset(root, {"train": 10, "val": 2}, size=(32, 64), seed=3)
    return root


def test_cityscapes_folds_keep_each_city_in_one_fold(tmp_path):
    root = _uneven_cities(tmp_path / "data")
    city_of = {p.name.replace("_leftImg8bit.png", ""): p.parent.name
               for p in (root / "leftImg8bit" / "train").rglob("*_leftImg8bit.png")}
    assert Counter(city_of.values()) == {"aachen": 3, "bochum": 3, "bremen": 2, "cologne": 2}
    cfg = tiny_config(root)
    plan = plan_folds(cfg, tmp_path / "cv", 3, seed=4)
    saved = json.loads((tmp_path / "cv" / "folds.json").read_text())
    assert (saved["folds"], saved["group"], saved["seed"]) == (3, "city", 4)
    assert [f["samples"] for f in saved["assignment"]] == [list(f.samples) for f in plan.folds]
    cities = [{city_of[name] for name in f["samples"]} for f in saved["assignment"]]
    assert all(a.isdisjoint(b) for i, a in enumerate(cities) for b in cities[i + 1:])  # no city in two folds
    assert sorted(len(f["samples"]) for f in saved["assignment"]) == [3, 3, 4]  # the best these cities allow
    assert [set(f["groups"]) for f in saved["assignment"]] == cities

    # re-runs reuse the assignment; another K, group mode or seed is refused, naming folds.json
    assert plan_folds(cfg, tmp_path / "cv", 3, seed=4).folds == plan.folds
    for folds, group, seed in ((2, None, 4), (3, "none", 4), (3, None, 5)):
        with pytest.raises(ConfigError, match=rf"folds\.json: holds 3 folds grouped by city with seed 4, not {folds} "
                                              rf"folds grouped by {group or 'city'} with seed {seed}; use those"):
            plan_folds(cfg, tmp_path / "cv", folds, group, seed)
    with pytest.raises(ConfigError, match="--folds: 5 folds need at least 5 cities, but the training split has only 4"):
        plan_folds(cfg, tmp_path / "other", 5)
    none = plan_folds(cfg, tmp_path / "by-image", 3, group="none")  # plain k-fold: 4 + 3 + 3 images
    assert sorted(len(f.samples) for f in none.folds) == [3, 3, 4]
    with pytest.raises(ConfigError, match="--group: 'sequence' groups camvid images, but data.dataset is 'cityscapes'"):
        plan_folds(cfg, tmp_path / "wrong", 2, group="sequence")
    with pytest.raises(ConfigError, match=r"--fold: expected 0 to 2 \(--folds 3\), got 3"):
        run_cv(cfg, tmp_path / "cv", 3, seed=4, fold=3)
    with pytest.raises(ConfigError, match=r"--summarize: folds 0, 1, 2 of .* are not finished .*fold-0"):
        summarize(cfg, tmp_path / "cv", plan)

    # one recipe for every fold: a changed training setting is refused, a machine's own paths are not
    other = tiny_config(root, "optim.lr=0.05")
    with pytest.raises(ConfigError, match=r"folds\.json: the folds were planned with optim\.lr = 0\.01, this run has "
                                          r"0\.05; every fold must train the same recipe"):
        plan_folds(other, tmp_path / "cv", 3, seed=4)
    moved = tiny_config(root, "data.workers=1", f"data.cache={tmp_path / 'cache'}")
    assert plan_folds(moved, tmp_path / "cv", 3, seed=4).folds == plan.folds
    assert plan_folds(other, tmp_path / "cv", 3, seed=4, check_recipe=False).folds == plan.folds  # --summarize

    # a mistyped --fold or an early --summarize writes no folds.json that would lock the run directory
    for kwargs in ({"fold": 5}, {"summarize_only": True}):
        with pytest.raises(ConfigError, match="^--fold: expected 0 to 2|^--summarize: .* holds no folds.json"):
            run_cv(cfg, tmp_path / "fresh", 3, **kwargs)
        assert not (tmp_path / "fresh").exists()


def _png_pairs(images: Path, masks: Path, names, rng):
    for name in names:
        write_png(images / f"{name}.png", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
        write_png(masks / f"{name}.png", rng.integers(0, 3, (8, 8), dtype=np.uint8))


def test_camvid_sequences_and_folder_patterns_are_groups(tmp_path):
    rng = np.random.default_rng(0)
    camvid = tmp_path / "CamVid"
    _png_pairs(camvid / "train", camvid / "trainannot", ["0001TP_006690", "0001TP_006720", "Seq05VD_f00000",
                                                          "0016E5_00390", "0006R0_f01800"], rng)
    cfg = load_config(None, ["data.dataset=camvid", f"data.root={camvid}"])
    groups = {s.name: s.group for s in build_dataset(cfg.data, "train").samples}
    assert groups == {"0001TP_006690": "0001TP", "0001TP_006720": "0001TP", "Seq05VD_f00000": "Seq05VD",
                      "0016E5_00390": "0016E5", "0006R0_f01800": "0006R0"}
    plan = plan_folds(cfg, tmp_path / "cv-camvid", 2)
    assert plan.group == "sequence"
    assert any(set(f.groups) >= {"0001TP"} and {"0001TP_006690", "0001TP_006720"} <= set(f.samples)
               for f in plan.folds)

    mine = tmp_path / "mine"
    _png_pairs(mine / "train" / "images", mine / "train" / "masks", ["drive1_0001", "drive1_0002", "drive2_0001"], rng)
    folder = ["data.dataset=folder", f"data.root={mine}", "data.class_names=[a, b, c]"]
    cfg = load_config(None, [*folder, "data.group_pattern=^(drive\\d+)_"])
    assert [s.group for s in build_dataset(cfg.data, "train").samples] == ["drive1", "drive1", "drive2"]
    assert plan_folds(cfg, tmp_path / "cv-folder", 2).group == "pattern"
    whole = load_config(None, [*folder, "data.group_pattern=drive\\d"])  # no capture group: the whole match
    assert [s.group for s in build_dataset(whole.data, "train").samples] == ["drive1", "drive1", "drive2"]
    assert plan_folds(load_config(None, folder), tmp_path / "cv-plain", 3).group == "none"
    with pytest.raises(DataError, match=r"drive1_0001\.png: name 'drive1_0001' does not match data.group_pattern 'x_'"):
        build_dataset(load_config(None, [*folder, "data.group_pattern=x_"]).data, "train")
    with pytest.raises(ConfigError, match="data.group_pattern: not a valid regular expression"):
        build_dataset(load_config(None, [*folder, "data.group_pattern=(drive"]).data, "train")
    with pytest.raises(ConfigError, match="data.group_pattern: only the folder dataset reads it"):
        build_dataset(load_config(None, ["data.group_pattern=x"]).data, "train")


def test_sample_lists_restrict_a_split_and_name_what_is_missing(cityscapes_root, tmp_path):
    dataset = build_dataset(tiny_config(cityscapes_root).data, "train")
    names = [s.name for s in dataset.samples]
    listed = write_sample_list(tmp_path / "some.txt", [names[3], names[0]])
    assert [s.name for s in restrict_to_list(dataset, listed).samples] == [names[0], names[3]]
    write_sample_list(tmp_path / "bad.txt", [names[1], "nowhere_000000_000000"])
    with pytest.raises(DataError, match=r"bad\.txt: names 'nowhere_000000_000000', which the split does not hold"):
        restrict_to_list(build_dataset(tiny_config(cityscapes_root).data, "train"), tmp_path / "bad.txt")


# ---------------------------------------------------------------- the fold ensemble
class _Fixed:
    """A stand-in model returning fixed logits whatever the input (resized to it)."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(self.logits, size=images.shape[-2:], mode="nearest").expand(
            len(images), -1, -1, -1)


def test_ensemble_backend_gives_the_predictor_the_averaged_probabilities(tiny_checkpoint):
    labels = load_checkpoint(tiny_checkpoint).labels
    gen = torch.Generator().manual_seed(0)
    members = [_Fixed(torch.randn(1, labels.num_classes, 4, 8, generator=gen) * 3) for _ in range(3)]
    predictor = Predictor(EnsembleBackend(members), labels, Preset())
    image = np.zeros((4, 8, 3), np.uint8)
    expected = torch.stack([m.logits.softmax(1) for m in members]).mean(0)[0].numpy()
    np.testing.assert_allclose(predictor.predict_proba(image), expected, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(image, mode="slide", flip=True).sum(0), 1.0, atol=1e-5)


def test_ensemble_of_checkpoints_needs_one_label_set_and_preset(tiny_checkpoint, tmp_path):
    checkpoint = load_checkpoint(tiny_checkpoint)
    other = tmp_path / "other.pt"
    checkpoint.preset = Preset(mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    save_checkpoint(other, checkpoint)
    with pytest.raises(CheckpointError, match=r"other\.pt: preprocessing .* differs from .*best\.pt's"):
        ensemble_predictor([tiny_checkpoint, other], device="cpu")
    pair = ensemble_predictor([tiny_checkpoint, tiny_checkpoint], device="cpu")
    single = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    np.testing.assert_allclose(pair.predict_proba(image), single.predict_proba(image), atol=1e-5)


# ---------------------------------------------------------------- end to end
def _empty_recipe(folder: Path) -> Path:
    """A recipe file that sets nothing: the defaults plus the command's overrides."""
    (folder / "recipe.yaml").write_text("{}\n")
    return folder / "recipe.yaml"


def _miou(matrix: np.ndarray) -> float:
    tp = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


@pytest.mark.slow
def test_two_fold_cv_end_to_end(cityscapes_root, tmp_path, capsys):
    run = tmp_path / "cv"
    code = main(["cv", "--config", str(_empty_recipe(tmp_path)), "--folds", "2", "--run-dir", str(run),
                 *tiny_overrides(cityscapes_root, *TINY_RUN)])
    out = capsys.readouterr().out
    assert code == 0 and "fold ensemble on val: mIoU" in out and "cv_summary.md" in out

    every = sorted(p.name[: -len("_leftImg8bit.png")] for p in (cityscapes_root / "leftImg8bit" / "train").rglob("*.png"))
    summary = json.loads((run / "cv_summary.json").read_text())
    results = [json.loads((run / f"fold-{i}" / "fold_result.json").read_text()) for i in range(2)]
    for i, result in enumerate(results):
        fold = run / f"fold-{i}"
        train_names, val_names = ((fold / f"{s}.txt").read_text().split() for s in ("train", "val"))
        assert sorted(train_names + val_names) == every and not set(train_names) & set(val_names)
        assert {n.split("_")[0] for n in train_names}.isdisjoint({n.split("_")[0] for n in val_names})
        config = load_config(fold / "config.yaml")  # an ordinary run of an ordinary config
        assert (config.data.train_split, config.data.val_split) == ("train", "train")
        assert Path(config.data.val_samples) == (fold / "val.txt").resolve()
        assert result["images"] == len(val_names) == 4
        assert sum(result["heldout"]["per_class"][c]["pixels"] for c in result["heldout"]["per_class"]) > 0
        assert (fold / "checkpoints" / "best.pt").exists() and (fold / "report.html").exists()
        best_step = load_checkpoint(fold / "checkpoints" / "best.pt").training["progress"]["step"]
        assert result["step"] == best_step and result["steps_trained"] == 4  # the scored checkpoint's step
        assert summary["heldout"]["per_fold"][i]["miou"] == pytest.approx(result["heldout"]["miou"])
    held = [r["heldout"]["miou"] for r in results]
    assert summary["heldout"]["mean"]["miou"] == pytest.approx(statistics.mean(held))
    assert summary["heldout"]["std"]["miou"] == pytest.approx(statistics.stdev(held))
    road = [r["heldout"]["per_class"]["road"]["iou"] for r in results]
    assert summary["heldout"]["std"]["per_class_iou"]["road"] == pytest.approx(statistics.stdev(road))
    val_acc = [r["val"]["pixel_accuracy"] for r in results]
    assert summary["val"]["mean"]["pixel_accuracy"] == pytest.approx(statistics.mean(val_acc))

    # the ensemble row: the two best checkpoints' probabilities averaged, scored here by hand
    members = [Predictor.from_checkpoint(run / f"fold-{i}" / "checkpoints" / "best.pt", device="cpu") for i in range(2)]
    val_set = build_dataset(tiny_config(cityscapes_root).data, "val")
    matrix = np.zeros((19, 19), np.int64)
    for index in range(len(val_set)):
        image, mask = val_set.load(index)
        pred = np.mean([m.predict_proba(image) for m in members], axis=0).argmax(0)
        keep = mask != 255
        np.add.at(matrix, (mask[keep].astype(int), pred[keep]), 1)
    assert summary["val"]["ensemble"]["miou"] == pytest.approx(_miou(matrix), abs=1e-9)
    assert summary["val"]["images"] == len(val_set) == 5
    text = (run / "cv_summary.md").read_text()
    assert "| mean ± std |" in text and "| ensemble of 2 folds |" in text and "| road |" in text
    assert (run / "cv_class_iou.png").stat().st_size > 0

    # --summarize only collects; a second full run trains nothing
    assert main(["cv", "--config", str(_empty_recipe(tmp_path)), "--folds", "2", "--run-dir", str(run), "--summarize",
                 *tiny_overrides(cityscapes_root)]) == 0
    assert json.loads((run / "cv_summary.json").read_text())["heldout"] == summary["heldout"]


@pytest.mark.slow
def test_interrupted_cv_resumes_without_redoing_a_finished_fold(cityscapes_root, tmp_path, monkeypatch, capsys):
    run = tmp_path / "cv"
    cfg = tiny_config(cityscapes_root, *TINY_RUN)
    assert run_cv(cfg, run, 2, fold=0) is None  # fold 0 finished; fold 1 not started: no summary yet
    finished = {p: p.stat().st_mtime_ns for p in (run / "fold-0").rglob("*") if p.is_file()}

    # fold 1 is interrupted twice: before its first checkpoint, then just after the one at step 2
    real_save = train_module.save_training_checkpoint

    def interrupt_before_saving(s, name):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_training_checkpoint", interrupt_before_saving)
    args = ["cv", "--config", str(_empty_recipe(tmp_path)), "--folds", "2", "--run-dir", str(run),
            *tiny_overrides(cityscapes_root, *TINY_RUN)]
    assert main(args) == 130
    assert "interrupted; the same command continues where it stopped" in capsys.readouterr().err
    assert (run / "fold-1" / "config.yaml").exists() and not (run / "fold-1" / "checkpoints" / "last.pt").exists()

    def interrupt_after_step_2(s, name):
        real_save(s, name)
        if name == "last.pt" and s.progress.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_training_checkpoint", interrupt_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_cv(cfg, run, 2)
    assert load_checkpoint(run / "fold-1" / "checkpoints" / "last.pt").training["progress"]["step"] == 2
    assert not (run / "fold-1" / "fold_result.json").exists()

    monkeypatch.setattr(train_module, "save_training_checkpoint", real_save)
    calls = []
    real_train = cv_module.train
    monkeypatch.setattr(cv_module, "train", lambda c, d, resume=False: calls.append((Path(d).name, resume))
                        or real_train(c, d, resume=resume))
    summary = run_cv(cfg, run, 2, fold=1)  # the last fold to finish writes the summary
    assert calls == [("fold-1", True)]  # fold 0 not trained again, fold 1 resumed
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not one file of fold 0 rewritten
    steps = [int(line.split(",")[0]) for line in (run / "fold-1" / "metrics.csv").read_text().splitlines()[1:]
             if ",train," in line]
    assert steps == [1, 2, 3, 4]  # no step trained twice, none lost
    assert load_checkpoint(run / "fold-1" / "checkpoints" / "last.pt").training["progress"]["step"] == 4
    assert [r["fold"] for r in summary["heldout"]["per_fold"]] == [0, 1]
