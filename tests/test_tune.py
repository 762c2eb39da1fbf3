"""`urbanseg tune`: the search space is checked before any trial; trials are ordinary runs trained by
the real loop, whose evaluation hook feeds Optuna's pruner; studies resume, survive Ctrl-C and
take several processes on one journal file; the study folder holds best.yaml, trials.csv, figures."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from engine_helpers import REPO, tiny_overrides
from urbanseg.cli import main
from urbanseg.config import load_config
from urbanseg.data.synth import write_dataset
from urbanseg.engine import train as train_module
from urbanseg.engine.checkpoint import load_checkpoint
from urbanseg.errors import ConfigError
from urbanseg.experiments import space as space_module
from urbanseg.experiments import tune as tune_module
from urbanseg.experiments.space import load_space, suggest, values_of

optuna = pytest.importorskip("optuna")

SPACE = "optim.lr: {log_float: [1e-3, 3e-2]}\nmodel.options.base_channels: {choice: [4, 8]}\n"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_dataset(root, {"train": 4, "val": 2}, size=(32, 64), seed=3)
    return root


def tiny(root, steps: int = 4) -> list[str]:
    """Overrides of a study's base config: 4-channel U-Net, 32x64 crops, an evaluation every 2 steps."""
    return tiny_overrides(root, "data.crop=[32, 64]", f"trainer.max_steps={steps}", "trainer.eval_every=2",
                          "trainer.sample_images=0", "trainer.log_every=2")


def tune_args(tmp_path, scenes, trials: int, *extra: str, space: str = SPACE) -> list[str]:
    (tmp_path / "space.yaml").write_text(space)
    (tmp_path / "recipe.yaml").write_text("{}\n")  # the defaults; the overrides below make them tiny
    return ["tune", "--config", str(tmp_path / "recipe.yaml"), "--space", str(tmp_path / "space.yaml"),
            "--trials", str(trials), "--study", "s",
            "--run-dir", str(tmp_path / "study"), *extra, *tiny(scenes)]


def csv_rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def study_trials(tmp_path):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study" / "journal.log")))
    return optuna.load_study(study_name="s", storage=storage).get_trials()


@pytest.mark.parametrize("space, message", [
    ("optim.lrr: {log_float: [1e-4, 1e-2]}", "optim.lrr: unknown key"),
    ("optim.lr: {log_float: [1e-2, 1e-4]}", "optim.lr: expected low < high, got [0.01, 0.0001]"),
    ("optim.lr: {log_float: [0, 1e-2]}", "optim.lr: a log range needs low > 0"),
    ("optim.lr: {uniform: [0, 1]}", "optim.lr: expected one of {float: ..., log_float: ..., int: ..."),
    ("data.batch_size: {int: [2, 9], step: 2}", "data.batch_size: high - low (7) is not a multiple of step 2"),
    ("data.batch_size: {choice: [2, four]}", "data.batch_size=four gives an invalid config "
                                            "(data.batch_size: expected int, got 'four')"),
    ("model.name: {choice: [unet_scratch, unet_nope]}", "model.name: unknown model 'unet_nope'"),
    ("trainer.accumulate: {int: [0, 2]}", "trainer.accumulate: expected at least 1, got 0"),
    ("trainer.max_steps: {int: [-5, 3]}", "trainer.max_steps: expected at least 1 (or null), got -5"),
    ("optim.lr: [1e-3\n", "not valid YAML (expected ',' or ']', but got '<stream end>' at line 2, column 1)"),
])
def test_a_bad_space_fails_before_any_trial_naming_the_key(tmp_path, scenes, capsys, space, message):
    assert main(tune_args(tmp_path, scenes, 2, space=space)) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"urbanseg: error: {tmp_path / 'space.yaml'}: ") and message in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "study").exists()  # no study folder, no trial


def test_space_values_round_trip_through_optuna(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("optim.lr: {log_float: [1e-4, 1e-2]}\ndata.crop: {choice: [[32, 64], [64, 128]]}\n"
                    "data.batch_size: {int: [2, 8], step: 2}\nmodel.encoder: {choice: [resnet18, null]}\n")
    space = load_space(path)
    assert space.params[0].low == 1e-4 and space.params[0].high == 1e-2  # 1e-4 is a string in YAML
    trial = optuna.trial.FixedTrial({"optim.lr": 3e-3, "data.crop": "[64, 128]", "data.batch_size": 6,
                                     "model.encoder": None})
    values = suggest(trial, space)
    assert values == {"optim.lr": 3e-3, "data.crop": [64, 128], "data.batch_size": 6, "model.encoder": None}
    assert values_of(trial.params, space) == values
    cfg = space_module.config_with(load_config(None), values)
    assert cfg.data.crop == [64, 128] and cfg.optim.lr == 3e-3 and cfg.data.batch_size == 6


@pytest.mark.slow
def test_a_tiny_study_writes_best_yaml_trials_csv_and_figures(tmp_path, scenes, capsys):
    assert main(tune_args(tmp_path, scenes, 3, "--pruner", "none")) == 0
    study = tmp_path / "study"
    rows = csv_rows(study / "trials.csv")
    assert [r["number"] for r in rows] == ["0", "1", "2"] and {r["state"] for r in rows} == {"complete"}
    for row in rows:  # each trial is an ordinary run; its value is the best val mIoU it logged
        run = study / f"trial-{row['number']}"
        logged = [float(r["miou"]) for r in csv_rows(run / "metrics.csv") if r["split"] == "val"]
        assert len(logged) == 2 and float(row["val/mIoU"]) == pytest.approx(max(logged), abs=1e-5)
        assert load_config(run / "config.yaml").optim.lr == pytest.approx(float(row["optim.lr"]))
        assert (run / "checkpoints" / "best.pt").exists()
    best = max(rows, key=lambda r: float(r["val/mIoU"]))
    best_cfg = load_config(study / "best.yaml")
    assert best_cfg.to_dict() == load_config(study / f"trial-{best['number']}" / "config.yaml").to_dict()
    assert f"best: trial {best['number']}" in capsys.readouterr().out
    for name in ("optimization_history", "param_importances", "intermediate_values"):
        assert (study / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_the_pruner_stops_a_worse_trial_through_the_training_loops_hook(tmp_path, scenes, monkeypatch):
    """Median pruner (Optuna's defaults: from the 6th trial on): five trials score 0.5 at every
    evaluation, the sixth 0.1; it is pruned at its first evaluation, and its run stops there."""
    current = {}
    real_train, real_validate = tune_module.train, train_module.validate

    def train_noting_the_trial(cfg, run_dir, **kwargs):
        current["bad"] = run_dir.name == "trial-5"
        return real_train(cfg, run_dir, **kwargs)

    def validate_scored(*args, **kwargs):
        return {**real_validate(*args, **kwargs), "miou": 0.1 if current["bad"] else 0.5}

    monkeypatch.setattr(tune_module, "train", train_noting_the_trial)
    monkeypatch.setattr(train_module, "validate", validate_scored)
    assert main(tune_args(tmp_path, scenes, 6, "--pruner", "median")) == 0
    states = [t.state.name for t in study_trials(tmp_path)]
    assert states == ["COMPLETE"] * 5 + ["PRUNED"]
    pruned = tmp_path / "study" / "trial-5"
    assert load_checkpoint(pruned / "checkpoints" / "last.pt").training["progress"]["step"] == 2  # of 4
    assert max(int(r["step"]) for r in csv_rows(pruned / "metrics.csv")) == 2
    row = csv_rows(tmp_path / "study" / "trials.csv")[5]
    assert row["state"] == "pruned" and row["last_step"] == "2" and float(row["val/mIoU"]) == 0.1


def test_pruned_trials_leave_consistent_runs_and_no_best_yaml(tmp_path, scenes, monkeypatch, capsys):
    """A pruner that prunes everything (the real loop and hook): checkpoints and the log stop at
    the first evaluation, nothing complete means no best.yaml yet, with a note instead of a crash."""
    monkeypatch.setattr(tune_module, "make_pruner", lambda optuna, name: optuna.pruners.ThresholdPruner(lower=2.0))
    assert main(tune_args(tmp_path, scenes, 2)) == 0
    assert [t.state.name for t in study_trials(tmp_path)] == ["PRUNED", "PRUNED"]
    out = capsys.readouterr().out
    assert "trial 1 pruned at step 2" in out and "none complete" in out
    assert "note: figures/param_importances.png: needs at least 2 complete trials" in out
    assert not (tmp_path / "study" / "best.yaml").exists()
    run = tmp_path / "study" / "trial-1"
    assert load_checkpoint(run / "checkpoints" / "last.pt").training["progress"]["step"] == 2
    assert (run / "val_metrics.json").exists() and (tmp_path / "study" / "figures" / "intermediate_values.png").exists()


@pytest.mark.slow
def test_ctrl_c_then_the_same_command_resumes_without_redoing_trials(tmp_path, scenes, monkeypatch, capsys):
    real_train = tune_module.train

    def interrupted_in_trial_1(cfg, run_dir, on_evaluation=None, **kwargs):
        def hook(step, metrics):
            on_evaluation(step, metrics)
            if run_dir.name == "trial-1":
                raise KeyboardInterrupt  # Ctrl-C inside the training loop, after the first evaluation
        return real_train(cfg, run_dir, on_evaluation=hook, **kwargs)

    monkeypatch.setattr(tune_module, "train", interrupted_in_trial_1)
    assert main(tune_args(tmp_path, scenes, 2, "--pruner", "none")) == 130
    assert "interrupted" in capsys.readouterr().err
    rows = csv_rows(tmp_path / "study" / "trials.csv")  # written so far, kept
    assert [(r["number"], r["state"]) for r in rows] == [("0", "complete"), ("1", "fail")]
    assert rows[1]["note"].startswith("interrupted") and (tmp_path / "study" / "best.yaml").exists()
    monkeypatch.setattr(tune_module, "train", real_train)

    first = (tmp_path / "study" / "trial-0" / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert main(tune_args(tmp_path, scenes, 2, "--pruner", "none")) == 0  # the failed trial does not count
    assert "1 of 2 trials finished" in capsys.readouterr().out
    assert main(tune_args(tmp_path, scenes, 3, "--pruner", "none")) == 0  # then one more
    assert "2 of 3 trials finished" in capsys.readouterr().out
    trials = study_trials(tmp_path)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert (tmp_path / "study" / "trial-0" / "checkpoints" / "last.pt").stat().st_mtime_ns == first  # not redone
    assert len(csv_rows(tmp_path / "study" / "trials.csv")) == 4
    assert main(tune_args(tmp_path, scenes, 3)) == 0  # already there: nothing starts
    assert "nothing to start" in capsys.readouterr().out and len(study_trials(tmp_path)) == 4


@pytest.mark.slow
def test_two_processes_share_one_journal_file(tmp_path, scenes):
    """N finished trials in total, each trained once in its own run directory, none lost."""
    n = 4
    args = tune_args(tmp_path, scenes, n, "--pruner", "none", "--storage", str(tmp_path / "shared.journal"))
    args[args.index("trainer.max_steps=4")] = "trainer.max_steps=12"  # long enough for the two to overlap
    env = dict(os.environ, OMP_NUM_THREADS="1")
    processes = [subprocess.Popen([sys.executable, "-m", "urbanseg", *args, "--seed", str(seed)], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-2000:]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "shared.journal")))
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    finished = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(finished) == n
    # the only other trials are ones a process asked for at the very moment the study was full: never run
    assert all(t.user_attrs["error"].startswith("not run") for t in trials if t.state.name != "COMPLETE")
    ran = [line.split()[1] for out, _ in outputs for line in out.splitlines() if line.endswith(")")
           and " complete: " in line]
    assert sorted(ran, key=int) == [str(t.number) for t in finished]  # each finished trial ran in one process only
    for t in finished:
        run = tmp_path / "study" / f"trial-{t.number}"
        assert load_checkpoint(run / "checkpoints" / "last.pt").training["progress"]["step"] == 12
    assert len(csv_rows(tmp_path / "study" / "trials.csv")) == len(trials)


def other_process(tmp_path):
    """The study as another process sees it (its own storage object on the same journal file)."""
    return optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study" / "journal.log"))))


def test_trials_running_elsewhere_count_and_those_of_dead_processes_do_not(tmp_path, scenes, capsys):
    (tmp_path / "study").mkdir()
    study = optuna.create_study(study_name="s", direction="maximize", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study" / "journal.log"))))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = study.ask()  # a trial of a process on this machine that was killed outright (kill -9)
    dead.set_user_attr("host", __import__("socket").gethostname())
    dead.set_user_attr("pid", gone.pid)
    study.ask()  # a trial running in another process (or on another machine)
    assert main(tune_args(tmp_path, scenes, 2, "--pruner", "none")) == 0
    out = capsys.readouterr().out
    assert f"trial 0: its process {gone.pid} is gone; marked failed" in out
    assert "0 of 2 trials finished, 1 running elsewhere" in out
    # this process ran one trial: with the one running elsewhere, that makes 2
    assert [t.state.name for t in study_trials(tmp_path)] == ["FAIL", "RUNNING", "COMPLETE"]


def test_a_trial_asked_when_the_study_is_full_does_not_run(tmp_path, scenes, monkeypatch):
    """Two processes may ask for a trial at the same moment after the count was checked: the one
    beyond --trials is marked failed with a note, trains nothing, and its process stops."""
    real_train = tune_module.train

    def train_while_another_process_starts_one(cfg, run_dir, on_evaluation=None, **kwargs):
        other_process(tmp_path).ask()
        return real_train(cfg, run_dir, on_evaluation=on_evaluation, **kwargs)

    monkeypatch.setattr(tune_module, "train", train_while_another_process_starts_one)
    # no count after each trial: the next trial is asked as if the other process's had not been seen
    monkeypatch.setattr(optuna.study, "MaxTrialsCallback", lambda n, states: lambda study, trial: None)
    assert main(tune_args(tmp_path, scenes, 2, "--pruner", "none")) == 0
    trials = study_trials(tmp_path)
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING", "FAIL"]
    assert trials[2].user_attrs["error"].startswith("not run") and not (tmp_path / "study" / "trial-2").exists()


def test_a_database_url_as_storage(tmp_path, scenes, capsys):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    assert main(tune_args(tmp_path, scenes, 1, "--pruner", "none", "--storage", url)) == 0
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] and not (tmp_path / "study" / "journal.log").exists()
    capsys.readouterr()
    assert main(tune_args(tmp_path, scenes, 1, "--storage", "nosuchdb://host/db")) == 2
    error = capsys.readouterr().err
    assert error.startswith("urbanseg: error: --storage: ") and "nosuchdb://host/db" in error
    assert len(error.strip().splitlines()) == 1


def test_a_study_keeps_its_metric_and_space(tmp_path, scenes, capsys):
    assert main(tune_args(tmp_path, scenes, 1, "--pruner", "none")) == 0
    assert main(tune_args(tmp_path, scenes, 2, "--metric", "val/loss")) == 2
    assert "--metric: study 's' tunes val/mIoU, not val/loss" in capsys.readouterr().err
    assert main(tune_args(tmp_path, scenes, 2, space="optim.lr: {log_float: [1e-3, 1e-2]}")) == 2
    assert "differs from the space study 's' was started with" in capsys.readouterr().err
    assert len(study_trials(tmp_path)) == 1


def test_a_process_that_finds_the_study_half_written_completes_it(tmp_path):
    """Two processes starting one study at once: the first has created it and written its metric but
    not yet its space when the second opens it. The second must write the space, not refuse."""
    (tmp_path / "space.yaml").write_text(SPACE)
    space = load_space(tmp_path / "space.yaml")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    first = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    first.set_user_attr("metric", "val/mIoU")  # ... and the first process has not got further
    study = tune_module._open_study(optuna, "s", storage, "val/mIoU", "none", space)
    assert study.user_attrs == {"metric": "val/mIoU", "space": space.spec()}
    other = tmp_path / "other.yaml"
    other.write_text("optim.lr: {log_float: [1e-3, 1e-2]}\n")
    with pytest.raises(ConfigError, match="differs from the space study 's' was started with"):
        tune_module._open_study(optuna, "s", storage, "val/mIoU", "none", load_space(other))
