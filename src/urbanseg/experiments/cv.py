"""`urbanseg cv`: grouped k-fold cross-validation built on `engine.train.train` and `evaluation`.

    urbanseg cv --config FILE --folds 4 --run-dir runs/cv          # every fold, then the summary
    urbanseg cv --config FILE --folds 4 --run-dir runs/cv --fold 2  # one fold (one machine / array job)
    urbanseg cv --config FILE --folds 4 --run-dir runs/cv --summarize

Run directory:

    folds.json                  K, group mode, seed; each fold's held-out groups and sample names
    fold-I/                     an ordinary run (config.yaml, checkpoints/, metrics.csv, report.html)
      train.txt, val.txt        the fold's sample lists (`data.train_samples` / `data.val_samples`)
      fold_result.json          written last: the fold is finished (its best.pt evaluated)
    cv_summary.json, .md        per fold and mean +- std; the validation split and the fold ensemble
    cv_class_iou.png            per-class IoU across folds

A fold's run trains on the other folds' images and validates on its own (`val_split` = the
training split, restricted by `val.txt`); its config is saved like any run's, so
`urbanseg train --resume DIR/fold-I` works too. A fold is finished when `fold_result.json`
exists (written atomically after training and evaluation); a fold with `checkpoints/last.pt` and
no result was interrupted and is resumed at its step; anything else starts afresh. Ctrl-C at any
point leaves a state that the same command continues.

The fold metrics are those of each fold's best checkpoint on its held-out images at full label
resolution (as `urbanseg evaluate` scores), not the run's validation during training, which may
be downscaled (`data.val_resize`) or cut short (`trainer.eval_batches`).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from ..config import Config, DataConfig, first_difference
from ..data import SegmentationDataset, build_dataset
from ..data.sample_lists import restrict_to_list, write_sample_list
from ..engine.checkpoint import load_checkpoint, resume_config
from ..engine.train import train
from ..ensemble import ensemble_predictor
from ..errors import ConfigError, DataError
from ..evaluation import evaluate_predictor
from ..files import write_json
from ..inference import load
from ..metrics import json_safe
from ..report import write_run_figures
from .cv_summary import write_summary
from .folds import Fold, assign_folds, group_samples

FOLDS_FILE = "folds.json"
RESULT_FILE = "fold_result.json"
# --group -> the dataset whose samples carry that group, and what its groups are called in messages
GROUP_MODES = {"city": ("cityscapes", "cities"), "sequence": ("camvid", "sequences"),
               "pattern": ("folder", "groups (data.group_pattern)"), "none": (None, "images")}


@dataclasses.dataclass
class CVPlan:
    folds: list[Fold]
    group: str
    seed: int

    @property
    def k(self) -> int:
        return len(self.folds)


def default_group(data: DataConfig) -> str:
    """The dataset's own grouping: city, sequence, data.group_pattern, or none."""
    return {"cityscapes": "city", "camvid": "sequence"}.get(
        data.dataset, "pattern" if data.group_pattern else "none")


def check_group(group: str, data: DataConfig) -> None:
    if group not in GROUP_MODES:
        raise ConfigError(f"--group: expected one of {', '.join(GROUP_MODES)}, got '{group}'")
    dataset = GROUP_MODES[group][0]
    if dataset is not None and dataset != data.dataset:
        raise ConfigError(f"--group: '{group}' groups {dataset} images, but data.dataset is '{data.dataset}' "
                          f"(its own grouping is '{default_group(data)}'; 'none' splits by image)")
    if group == "pattern" and not data.group_pattern:
        raise ConfigError("--group: 'pattern' groups by data.group_pattern, which is not set")


def training_split(cfg: Config) -> SegmentationDataset:
    """The images cross-validation divides: the training split (within `data.train_samples` if set)."""
    dataset = build_dataset(cfg.data, cfg.data.train_split)
    return restrict_to_list(dataset, cfg.data.train_samples) if cfg.data.train_samples else dataset


def plan_folds(cfg: Config, run_dir: Path, folds: int, group: Optional[str] = None, seed: int = 0,
               check_recipe: bool = True) -> CVPlan:
    """The folds saved in `run_dir/folds.json`, or a new grouped assignment saved there.

    A saved assignment made with another K, group mode or seed, or for other training images, is
    an error: reassigning would mix folds of two assignments in one run directory. So is, with
    `check_recipe`, a recipe that differs from the one the folds were planned with (beyond the
    keys that may differ between machines, `MACHINE_KEYS`): the summary averages the folds as one
    recipe's."""
    group = group or default_group(cfg.data)
    check_group(group, cfg.data)
    path = run_dir / FOLDS_FILE
    samples = training_split(cfg).samples
    names = [sample.name for sample in samples]
    if path.exists():
        plan = _saved_plan(path, names, folds, group, seed)
        if check_recipe:
            _check_same_recipe(path, cfg)
        return plan
    by_group = group_samples(names, ["" if group == "none" else s.group for s in samples])
    plan = CVPlan(assign_folds(by_group, folds, seed, GROUP_MODES[group][1]), group, seed)
    write_json(path, {"folds": folds, "group": group, "seed": seed, "dataset": cfg.data.dataset,
                      "split": cfg.data.train_split, "images": len(names), "recipe": recipe_of(cfg),
                      "assignment": [fold.to_dict() for fold in plan.folds]})
    return plan


# config keys that may differ between the machines (or runs) training the folds of one CV
MACHINE_KEYS = frozenset({"data.root", "data.cache", "data.workers", "data.val_batch_size", "trainer.device",
                          "trainer.log_every", "trainer.sample_images"})


def recipe_of(cfg: Config) -> dict:
    """The config as dotted keys, less `MACHINE_KEYS`: what every fold of one CV must share."""
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and prefix.count(".") < 1:  # sections and their keys, not option dicts
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        elif prefix not in MACHINE_KEYS:
            flat[prefix] = value

    walk("", cfg.to_dict())
    return flat


def _check_same_recipe(path: Path, cfg: Config) -> None:
    saved = json.loads(path.read_text()).get("recipe")
    if saved is None:  # folds.json written before urbanseg recorded the recipe
        return
    current = json.loads(json.dumps(recipe_of(cfg)))  # as JSON reads it back (tuples -> lists)
    changed = first_difference(saved, current)
    if changed is not None:
        key, before, now = changed
        raise ConfigError(f"{path}: the folds were planned with {key} = {before!r}, this run has {now!r}; "
                          f"every fold must train the same recipe (use another --run-dir for another one)")


def _saved_plan(path: Path, names: list[str], folds: int, group: str, seed: int) -> CVPlan:
    try:
        saved = json.loads(path.read_text())
        plan = CVPlan([Fold(f["fold"], tuple(f["groups"]), tuple(f["samples"])) for f in saved["assignment"]],
                      saved["group"], saved["seed"])
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: unreadable fold assignment ({error.__class__.__name__}: {error})") from None
    asked, kept = (folds, group, seed), (saved["folds"], plan.group, plan.seed)
    if asked != kept:
        describe = "{} folds grouped by {} with seed {}".format
        raise ConfigError(f"{path}: holds {describe(*kept)}, not {describe(*asked)}; use those, or another "
                          f"--run-dir for a new assignment")
    assigned = {name for fold in plan.folds for name in fold.samples}
    extra, gone = sorted(set(names) - assigned), sorted(assigned - set(names))
    if extra or gone:
        example = f"'{extra[0]}' is new" if extra else f"'{gone[0]}' is gone"
        raise ConfigError(f"{path}: was made for other training images ({example}); use another --run-dir "
                          f"for the current data")
    return plan


def fold_dir(run_dir: Path, index: int) -> Path:
    return run_dir / f"fold-{index}"


def fold_config(cfg: Config, plan: CVPlan, index: int, directory: Path) -> Config:
    """`cfg` training on every fold but `index` and validating on fold `index` (lists written to `directory`)."""
    held_out = set(plan.folds[index].samples)
    train_names = sorted(name for fold in plan.folds for name in fold.samples if name not in held_out)
    train_list, val_list = directory.resolve() / "train.txt", directory.resolve() / "val.txt"
    write_sample_list(train_list, train_names)
    write_sample_list(val_list, plan.folds[index].samples)
    fold_cfg = copy.deepcopy(cfg)
    fold_cfg.data.val_split = cfg.data.train_split
    fold_cfg.data.train_samples, fold_cfg.data.val_samples = str(train_list), str(val_list)
    return fold_cfg


def fold_finished(run_dir: Path, index: int) -> bool:
    return (fold_dir(run_dir, index) / RESULT_FILE).exists()


def run_fold(cfg: Config, run_dir: Path, plan: CVPlan, index: int) -> Optional[dict]:
    """Train fold `index` (resuming an interrupted run), then evaluate its best checkpoint on its
    held-out images and on the separate validation split; returns the saved result (None on the
    non-main processes of a torchrun launch)."""
    directory = fold_dir(run_dir, index)
    if fold_finished(run_dir, index):
        tqdm.write(f"fold {index}: finished earlier, skipped ({directory / RESULT_FILE})")
        return json.loads((directory / RESULT_FILE).read_text())
    resume = (directory / "checkpoints" / "last.pt").exists()
    if resume:
        tqdm.write(f"fold {index}: resuming the interrupted run in {directory}")
        fold_cfg = resume_config(directory)
    else:
        # interrupted before its first checkpoint: start again (config.yaml and metrics.csv are
        # rewritten by train; drop the stale TensorBoard events of the lost steps)
        shutil.rmtree(directory / "tensorboard", ignore_errors=True)
        tqdm.write(f"fold {index}: training on {sum(len(f.samples) for f in plan.folds) - len(plan.folds[index].samples)} "
                   f"images, holding out {len(plan.folds[index].samples)} ({', '.join(plan.folds[index].groups[:4])}"
                   f"{', ...' if len(plan.folds[index].groups) > 4 else ''})")
        fold_cfg = fold_config(cfg, plan, index, directory)
    outcome = train(fold_cfg, directory, resume=resume)
    if not outcome["main_process"]:
        return None
    write_run_figures(directory)
    best = Path(outcome["best"])
    predictor = load(best, device=fold_cfg.trainer.device)
    held_out = _full_resolution(fold_cfg.data, fold_cfg.data.val_split, fold_cfg.data.val_samples)
    result = {"fold": index, "groups": list(plan.folds[index].groups), "images": len(held_out),
              "step": load_checkpoint(best).training["progress"]["step"], "steps_trained": outcome["step"],
              "checkpoint": str(best.relative_to(directory)),
              "heldout": evaluate_predictor(predictor, held_out)}
    val, reason = separate_val(cfg)
    if val is not None:
        result["val"] = evaluate_predictor(predictor, val)
    else:
        tqdm.write(f"fold {index}: no separate validation split to score ({reason})")
    write_json(directory / RESULT_FILE, json_safe(result))
    tqdm.write(f"fold {index}: held-out mIoU {result['heldout']['miou']:.4f}"
               + (f", {cfg.data.val_split} mIoU {result['val']['miou']:.4f}" if val is not None else ""))
    return result


def _full_resolution(data: DataConfig, split: str, samples: Optional[str]) -> SegmentationDataset:
    """A split as evaluation scores it: at the labels' own resolution, no transform."""
    dataset = build_dataset(dataclasses.replace(data, load_size=None), split)
    return restrict_to_list(dataset, samples) if samples else dataset


def separate_val(cfg: Config) -> tuple[Optional[SegmentationDataset], str]:
    """The validation split the folds do not touch (`data.val_split`), or None and why not."""
    data = cfg.data
    if data.val_split == data.train_split:
        return None, f"data.val_split is the training split '{data.train_split}'"
    try:
        return _full_resolution(data, data.val_split, data.val_samples), ""
    except (DataError, ConfigError) as error:
        return None, f"data.val_split '{data.val_split}' not read ({error})"


def summarize(cfg: Config, run_dir: Path, plan: CVPlan) -> dict:
    """Collect the finished folds into cv_summary.json / .md and the per-class figure, with the
    fold ensemble (averaged probabilities of the K best checkpoints) on the validation split."""
    missing = [i for i in range(plan.k) if not fold_finished(run_dir, i)]
    if missing:
        listed = ", ".join(map(str, missing))
        raise ConfigError(f"--summarize: fold{'s' if len(missing) > 1 else ''} {listed} of {run_dir} "
                          f"{'are' if len(missing) > 1 else 'is'} not finished (no {fold_dir(run_dir, missing[0]) / RESULT_FILE}); "
                          f"run them first, e.g. with --fold {missing[0]}")
    results = [json.loads((fold_dir(run_dir, i) / RESULT_FILE).read_text()) for i in range(plan.k)]
    checkpoints = [fold_dir(run_dir, i) / r["checkpoint"] for i, r in enumerate(results)]
    val, reason = separate_val(cfg)
    ensemble = None
    if val is not None:
        if any("val" not in r for r in results):
            raise ConfigError(f"{run_dir}: some folds were finished without a validation split; "
                              f"remove their {RESULT_FILE} to evaluate them again")
        tqdm.write(f"fold ensemble of {plan.k} models on {cfg.data.val_split}")
        ensemble = json_safe(evaluate_predictor(ensemble_predictor(checkpoints, cfg.trainer.device), val))
    context = {"run_dir": str(run_dir), "folds": plan.k, "group": plan.group, "seed": plan.seed,
               "dataset": cfg.data.dataset, "val_split": cfg.data.val_split if val is not None else None,
               "val_images": len(val) if val is not None else 0, "val_skipped": reason or None}
    return write_summary(run_dir, context, results, ensemble, checkpoints[0])


def run_cv(cfg: Config, run_dir: str | Path, folds: int, group: Optional[str] = None, seed: int = 0,
           fold: Optional[int] = None, summarize_only: bool = False) -> Optional[dict]:
    """Everything `urbanseg cv` does. Trains fold `fold` (or every fold not finished yet), then
    summarizes when all folds are finished; returns the summary, or None when folds remain
    (another process trains them) or on non-main torchrun processes."""
    run_dir = Path(run_dir)
    if fold is not None and not 0 <= fold < folds:  # before folds.json is written: nothing to undo
        raise ConfigError(f"--fold: expected 0 to {folds - 1} (--folds {folds}), got {fold}")
    if summarize_only and not (run_dir / FOLDS_FILE).exists():
        raise ConfigError(f"--summarize: {run_dir} holds no {FOLDS_FILE}; train the folds first")
    plan = plan_folds(cfg, run_dir, folds, group, seed, check_recipe=not summarize_only)
    if not summarize_only:
        # under torchrun every process trains every fold (None: not the main one, which evaluates)
        main = [run_fold(cfg, run_dir, plan, index) is not None
                for index in ([fold] if fold is not None else range(plan.k))]
        if not all(main):
            return None
        if not all(fold_finished(run_dir, i) for i in range(plan.k)):
            remaining = [i for i in range(plan.k) if not fold_finished(run_dir, i)]
            tqdm.write(f"folds {', '.join(map(str, remaining))} not finished yet; the last one to finish "
                       f"writes the summary (or run with --summarize)")
            return None
    return summarize(cfg, run_dir, plan)
